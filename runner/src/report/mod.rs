//! Reporters, each fed the run's one event stream ([`stream`]): the
//! console for people at a terminal or reading a CI log, JSON lines for
//! tools (`events`), the JUnit file for CI systems and a one-file HTML
//! page (`html`) for people after the run.

pub mod console;
pub mod events;
pub mod html;
pub mod junit;

pub mod atomic_file;
pub mod stream;
pub mod text;

pub use console::{ConsoleMode, ConsoleOptions, ConsoleReporter};
pub use events::JsonEvents;
pub use html::HtmlReporter;
pub use junit::{JunitError, JunitOptions, JunitReporter};
pub use stream::{OutputStream, ReportError, Reporter, Reporters, RunEvent, Written};
pub use text::clean_text;

#[cfg(test)]
mod artifact_notes_tests;
#[cfg(test)]
mod imported_tests;
