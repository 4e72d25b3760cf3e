//! How a command fails: the error to print and the exit code.

/// A failed command: what to print and which exit code to use.
pub struct Failure {
    pub error: anyhow::Error,
    pub code: i32,
}

impl Failure {
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            error: error.into(),
            code,
        }
    }
}
