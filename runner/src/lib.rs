//! runner: the host side.
pub mod pipeline;
