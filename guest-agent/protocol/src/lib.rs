//! Wire protocol shared by the runner host and the guest agent.
