//! Reporters: the JUnit file for CI systems, the console and a one-file
//! HTML report (html/) for people.
//!
//! Both read [`crate::results::RunResults`]; the console also listens to
//! live events through [`RunObserver`] while the run is going.

pub mod console;
pub mod events;
pub mod html;
pub mod junit;

pub mod atomic_file;
pub mod stream;
pub mod text;

pub use console::{ConsoleMode, ConsoleOptions, ConsoleReporter};
pub use junit::{JunitError, JunitOptions};
pub use stream::{OutputStream, RunObserver};
pub use text::clean_text;

#[cfg(test)]
mod artifact_notes_tests;
#[cfg(test)]
mod test_reports_tests;
