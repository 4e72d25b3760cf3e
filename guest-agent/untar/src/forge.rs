//! Tar archives written by hand, as a hostile sender would: names and
//! types the tar crate's builder refuses (`..`, absolute names, device
//! nodes) can be forged. For tests and fuzz seeds (the `forge` feature).

use tar::EntryType;

#[derive(Default)]
pub struct Forge(pub Vec<u8>);

impl Forge {
    /// An entry whose name and link target (each at most 100 bytes) are
    /// written as given.
    pub fn entry(&mut self, name: &str, kind: EntryType, mode: u32, link: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        raw_names(&mut header, name, link);
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
    }

    /// A header claiming `size` bytes, with no content after it: what a
    /// sparse file announces before the first of its many zero bytes.
    pub fn huge(&mut self, name: &str, size: u64) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(size);
        header.set_mode(0o644);
        raw_names(&mut header, name, "");
        self.0.extend_from_slice(header.as_bytes());
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &str) {
        self.entry(name, EntryType::Regular, mode, "", data.as_bytes());
    }

    pub fn dir(&mut self, name: &str, mode: u32) {
        self.entry(name, EntryType::Directory, mode, "", b"");
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, EntryType::Symlink, 0o777, target, b"");
    }

    pub fn hard_link(&mut self, name: &str, target: &str) {
        self.entry(name, EntryType::Link, 0o644, target, b"");
    }

    /// The archive with its end-of-archive blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn raw_names(header: &mut tar::Header, name: &str, link: &str) {
    let old = header.as_old_mut();
    let name = &name.as_bytes()[..name.len().min(old.name.len())];
    let link = &link.as_bytes()[..link.len().min(old.linkname.len())];
    old.name[..name.len()].copy_from_slice(name);
    old.linkname[..link.len()].copy_from_slice(link);
    header.set_cksum();
}
