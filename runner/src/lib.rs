//! runner: the host side. The modules follow the data:
//!
//! pipeline (YAML) → plan (jobs × matrix) → scheduler (one fresh VM per job,
//! from the machine: `runner_machine`) → session (the guest agent) →
//! results → report (JUnit, console, HTML). `grants` is what the operator
//! allows; `cli` is the edge.

pub mod cli;
/// Fuzz entry points; built for `fuzz/` and for this crate's tests only.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod grants;
pub mod imported;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod results;
pub mod scheduler;
pub mod session;
pub mod shard;
pub mod terminal;
