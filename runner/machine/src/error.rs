//! Why a VM did not come up.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Setup(String),
    #[error("the VM exited during boot ({status})")]
    Exited {
        status: String,
        serial_tail: Vec<String>,
    },
    #[error("the guest agent did not answer within {timeout:?}{}",
        .last_error.as_ref().map(|e| format!(" (last attempt: {e})")).unwrap_or_default())]
    Timeout {
        timeout: Duration,
        last_error: Option<String>,
        serial_tail: Vec<String>,
    },
    #[error("interrupted")]
    Interrupted,
}

impl BootError {
    /// The last console lines, for reports.
    pub fn serial_tail(&self) -> &[String] {
        match self {
            BootError::Exited { serial_tail, .. } | BootError::Timeout { serial_tail, .. } => {
                serial_tail
            }
            _ => &[],
        }
    }
}
