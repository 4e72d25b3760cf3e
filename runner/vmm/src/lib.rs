//! The built-in KVM microVM monitor.
