//! What one report file gave: testcases and notes.

use crate::results::ImportedCase;

/// What one report file gave.
#[derive(Debug, Default)]
pub struct Imported {
    pub cases: Vec<ImportedCase>,
    /// Warnings about the file that are not worth a testcase.
    pub notes: Vec<String>,
}
