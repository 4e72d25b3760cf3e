//! runner: the host side. The modules follow the data:
//!
//! pipeline (YAML) → plan (jobs × matrix) → scheduler (one fresh VM per job)
//! → backend (qemu | kvm) → session (the guest agent) → results → report
//! (JUnit, console). `images` finds or builds what a VM boots from.

pub mod backend;
pub mod cli;
/// Fuzz entry points; built for `fuzz/` and for this crate's tests only.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod grants;
pub mod image_cache;
pub mod images;
pub mod interrupt;
pub mod pipeline;
pub mod plan;
pub mod process;
pub mod report;
pub mod results;
pub mod scheduler;
pub mod session;
pub mod shard;
pub mod terminal;
pub mod test_reports;
pub mod trusted_cache;
