//! runner: the host side. The modules follow the data: images and a VM spec
//! go to a backend, which boots a VM; a session talks to the guest agent.

pub mod backend;
pub mod cli;
pub mod images;
pub mod interrupt;
pub mod process;
pub mod session;
