//! runner: the host side.
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod results;
