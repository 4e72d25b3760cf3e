//! One error type for every caller: each message is one line, naming the
//! entry it is about.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why one entry was not unpacked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the name contains `..`")]
    ParentDir,
    #[error("absolute names are not allowed")]
    Absolute,
    #[error("bad entry name: {0}")]
    BadName(String),
    #[error("{0} is a symlink, and nothing is written through one")]
    ThroughSymlink(String),
    #[error(
        "it would be written through the symlink {0}, which leads outside the target directory"
    )]
    ThroughOutsideSymlink(String),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("a directory of that name is in the way")]
    DirectoryInTheWay,
    #[error("symlink to {0} is its own directory: a loop")]
    SymlinkLoop(String),
    #[error(
        "symlink to {0} leads out of its directory (only relative targets without `..` are kept)"
    )]
    SymlinkNotDownward(String),
    #[error("symlink to {0} leads outside the target directory")]
    SymlinkLeadsOut(String),
    #[error("symlink resolves to {0}, outside the target directory")]
    SymlinkResolvesOutside(String),
    #[error("link without a target")]
    LinkWithoutTarget,
    #[error("bad link target: {0}")]
    BadLinkTarget(String),
    #[error("hard link target: {0}")]
    HardLinkTarget(Box<Refusal>),
    #[error("hard link to the target directory itself")]
    HardLinkToRoot,
    #[error("hard link to itself")]
    HardLinkToItself,
    #[error("hard link to {0}, which was not unpacked")]
    HardLinkMissing(String),
    #[error("hard link to {0}, which is not a regular file inside the target directory")]
    HardLinkNotFile(String),
    #[error(
        "device node refused (a VM gets its /dev from its kernel; a node could name a host device)"
    )]
    DeviceNode,
    #[error("fifos are not unpacked")]
    Fifo,
    #[error("unsupported tar entry type {0}")]
    Unsupported(String),
    /// A caller's own rule (an OCI owner beyond the build's ids).
    #[error("{0}")]
    Caller(String),
}

/// An entry, by its name in the archive, and why it was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub entry: String,
    pub why: Refusal,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.entry, self.why)
    }
}

/// What ran out of a [`Budget`](crate::Budget).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("{entry}: more than {max} entries")]
    Entries { entry: String, max: u64 },
    #[error("{entry}: its {size} bytes would take the total past the limit of {max} bytes")]
    Bytes { entry: String, size: u64, max: u64 },
    /// Raw bytes beyond what the entries' sizes and the framing explain:
    /// padding for ever, or a decompression bomb's tail.
    #[error("the stream is larger than its entries' sizes and the limits allow")]
    Stream,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry refused by the policy (or by the caller's own rule).
    #[error("{0}")]
    Refused(Refused),
    /// The budget ran out; the rest of the stream was not read.
    #[error("limit reached: {0}")]
    OverBudget(OverBudget),
    /// The stream is not a valid tar archive, or it broke off.
    #[error("bad tar stream: {0}")]
    Stream(io::Error),
    /// The destination could not be written (disk full, permissions).
    #[error("writing {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        // Not `source`: the message says it (anyhow would print it twice).
        cause: io::Error,
    },
}

impl Error {
    pub(crate) fn write(path: impl Into<PathBuf>, cause: io::Error) -> Error {
        Error::Write {
            path: path.into(),
            cause,
        }
    }
}

/// How placing one entry failed: refused (the policy decides what
/// follows), or an error that ends the unpacking.
#[derive(Debug)]
pub(crate) enum Fail {
    Refused(Refusal),
    Fatal(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        match e {
            // A refusal reported by a helper is the current entry's.
            Error::Refused(r) => Fail::Refused(r.why),
            other => Fail::Fatal(other),
        }
    }
}

impl From<Refusal> for Fail {
    fn from(r: Refusal) -> Self {
        Fail::Refused(r)
    }
}
