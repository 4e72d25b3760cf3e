//! Unpacking tar streams nobody vouches for: one engine, one policy per
//! caller.
//!
//! Three places unpack tar streams: the host unpacks the artifacts and test
//! reports a guest sends (hostile: pipelines come from pull requests), the
//! OCI image unpacker applies an image's layers (hostile too), and the
//! guest agent unpacks the files the host copies in. They differ on
//! purpose in a few ways, each a field of [`Policy`] (its module has the
//! table); everything else is one code path:
//!
//! * names are resolved without `..`, and without walking through a
//!   symlink unless the policy allows it and it resolves inside;
//! * the tar crate's own `unpack` is never used: it restores setuid bits
//!   and owners, creates device nodes and writes whatever size a header
//!   claims;
//! * every entry is charged to a [`Budget`] (bytes, entries) before it is
//!   written, the raw stream is metered and its extension headers capped,
//!   so neither disk nor memory follows a hostile header;
//! * a refusal is one line naming the entry ([`Error`]).
//!
//! What is truly a caller's own stays with the caller, through a
//! [`Visitor`]: OCI whiteouts and the owners list, the artifact report's
//! notes, the agent's framing.

mod budget;
mod error;
#[cfg(any(test, feature = "forge"))]
pub mod forge;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod path;
mod policy;
mod stream;
mod tree;
mod unpack;

pub use budget::{Budget, Limits};
pub use error::{Error, OverBudget, Refusal, Refused};
pub use path::relative_parts;
pub use policy::{AbsoluteNames, HardLinks, OnRefusal, Policy, Replace, Symlinks, Traverse};
pub use stream::MAX_EXTENSION;
pub use tree::Tree;
pub use unpack::{unpack, Entry, NoVisitor, Unpacked, Unpacker, Visitor};

#[cfg(test)]
mod tests;
