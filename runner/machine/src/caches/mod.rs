//! Cache volumes (`cache:` in a pipeline): per key, an ext4 image that a
//! job gets as an extra disk, copy-on-write, and that its writes are
//! merged back into as a new version when it ends well. `docs/caches.md`
//! describes the layout, the scopes, the locking and the export format.
//!
//! The host treats every image as opaque blocks written by a hostile
//! guest: it copies, reflinks and punches holes, and never mounts or
//! parses one (the one check is ext4's magic on the empty images it makes
//! itself).
//!
//! - [`CacheStore::checkout`] gives a job its base (its key's newest
//!   version, a fallback's, or an empty file system) and a fresh layer;
//! - [`CacheStore::commit`] merges the layer's written ranges into a new
//!   version, renamed into place whole; [`CacheStore::discard`] drops it;
//! - `list`, `prune`, `clear`, `export` and `import` are `runner cache`.

mod blocks;
mod empty;
mod error;
mod layout;
mod manage;
mod meta;
mod store;
mod transfer;

pub use error::CacheError;
pub use layout::Scope;
pub use manage::{Cleared, Evictable, Listed, Pruned};
pub use store::{CacheRequest, CacheStore, Checkout, Committed, Found, DIR_ENV};
pub use transfer::{Exported, Imported};

#[cfg(test)]
mod tests;
