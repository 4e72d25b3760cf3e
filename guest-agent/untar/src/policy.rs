//! What each caller allows: the one place where the three policies differ.
//!
//! | | [`Policy::ARTIFACTS`] | [`Policy::OCI_LAYER`] | [`Policy::WORKSPACE`] |
//! |---|---|---|---|
//! | stream from | the guest (hostile) | an image's layer (hostile) | the host (trusted) |
//! | absolute names | refused | read from the root (`/etc` is `etc`) | refused |
//! | through a symlink | never | never | only if it resolves inside |
//! | symlink entries | relative, no `..`, downward only | any target | resolving inside only |
//! | hard links | copied (charged to the budget) | linked | linked |
//! | fifos | refused | created | refused |
//! | in the way of an entry | a file or symlink is replaced, a directory refuses it | anything is replaced (layers overlay) | as artifacts |
//! | modes on disk | `& 0o755`, owner rw(x) added | `& 0o777`, owner rw(x) added | as sent (`& 0o7777`) |
//! | mtimes | not applied | applied | applied |
//! | the archive root's mode | ignored | ignored | applied to the destination |
//! | a refused entry | noted, the rest unpacked | stops the layer | stops the copy |
//!
//! The same everywhere: no `..` in a name or a hard link's target; nothing
//! created outside the destination; files opened with `O_EXCL|O_NOFOLLOW`
//! after whatever was in their way is removed; hard links only to regular
//! files inside; device nodes refused; owners never applied (the OCI
//! caller records them, to be given inside a build's user namespace);
//! bytes and entries charged to a [`Budget`](crate::Budget) from the
//! headers before anything is written, and the raw stream metered and its
//! extension headers capped (see `stream.rs`).

/// What an absolute entry name means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbsoluteNames {
    Refuse,
    /// Relative to the destination: image layers name files from `/`.
    FromRoot,
}

/// Whether an existing symlink may be walked through on the way to an
/// entry (a parent directory of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traverse {
    Never,
    /// When its real location (all links resolved) is a directory inside
    /// the destination: a guest's `/lib -> usr/lib` when files go to `/`.
    InsideRoot,
}

/// Which symlink entries are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symlinks {
    /// Relative targets of normal components only, at least one: any chain
    /// of such links only ever descends, whatever a reader follows later.
    Downward,
    /// Targets that stay inside lexically from the link's real directory
    /// and, once everything is unpacked, really resolve inside.
    InsideRoot,
    /// Any target: never followed while unpacking ([`Traverse::Never`]),
    /// and meant for inside a VM.
    Anywhere,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardLinks {
    /// A copy of the file: the reader of the destination sees no shared
    /// inode, and the copy's bytes are charged.
    Copy,
    Link,
}

/// What an entry may replace when something is already at its path (from
/// an earlier entry, an earlier stream, or before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Files, symlinks and fifos; a directory in the way refuses the entry.
    NonDirectories,
    /// Anything, directories with what is below them: a layer overlays the
    /// ones below it.
    Anything,
}

/// What a refused entry does to the rest of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRefusal {
    /// Noted in [`Unpacked::refused`](crate::Unpacked), the rest unpacked.
    Note,
    Stop,
}

/// One caller's configuration of the engine. The fields are the only ways
/// the callers differ; see the module table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub absolute_names: AbsoluteNames,
    pub traverse: Traverse,
    pub symlinks: Symlinks,
    pub hard_links: HardLinks,
    pub fifos: bool,
    pub replace: Replace,
    /// Mode bits kept from a header.
    pub mode_mask: u32,
    /// Owner read and write (and search, for directories) are always added,
    /// so that the unpacking user can fill and later remove what it made.
    pub owner_access: bool,
    pub mtimes: bool,
    /// A directory entry for the archive's root (`./`) sets the
    /// destination's mode.
    pub root_mode: bool,
    pub on_refusal: OnRefusal,
}

impl Policy {
    /// Artifacts and test reports a guest sends to the host: only data
    /// comes out, no privileges and no way to point a reader elsewhere.
    pub const ARTIFACTS: Policy = Policy {
        absolute_names: AbsoluteNames::Refuse,
        traverse: Traverse::Never,
        symlinks: Symlinks::Downward,
        hard_links: HardLinks::Copy,
        fifos: false,
        replace: Replace::NonDirectories,
        mode_mask: 0o755,
        owner_access: true,
        mtimes: false,
        root_mode: false,
        on_refusal: OnRefusal::Note,
    };

    /// An OCI image layer, unpacked by an unprivileged build user into a
    /// tree that becomes a VM's root: a file system as the layer says,
    /// except device nodes, setuid bits and owners (recorded by the caller).
    pub const OCI_LAYER: Policy = Policy {
        absolute_names: AbsoluteNames::FromRoot,
        traverse: Traverse::Never,
        symlinks: Symlinks::Anywhere,
        hard_links: HardLinks::Link,
        fifos: true,
        replace: Replace::Anything,
        mode_mask: 0o777,
        owner_access: true,
        mtimes: true,
        root_mode: false,
        on_refusal: OnRefusal::Stop,
    };

    /// The host's files copied into the guest by the agent (root in a
    /// throwaway VM): as sent, but never outside the target directory.
    pub const WORKSPACE: Policy = Policy {
        absolute_names: AbsoluteNames::Refuse,
        traverse: Traverse::InsideRoot,
        symlinks: Symlinks::InsideRoot,
        hard_links: HardLinks::Link,
        fifos: false,
        replace: Replace::NonDirectories,
        mode_mask: 0o7777,
        owner_access: false,
        mtimes: true,
        root_mode: true,
        on_refusal: OnRefusal::Stop,
    };

    pub(crate) fn file_mode(&self, mode: u32) -> u32 {
        mode & self.mode_mask | if self.owner_access { 0o600 } else { 0 }
    }

    pub(crate) fn dir_mode(&self, mode: u32) -> u32 {
        mode & self.mode_mask | if self.owner_access { 0o700 } else { 0 }
    }
}
