//! Forged archives, as a hostile guest would send them: straight into the
//! unpacker, and through a real [`AgentSession`] talking to a fake agent.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use agent_protocol::{read_frame, write_frame, DataWriter, Frame, Message, Stream};
use tar::EntryType;

use super::*;
use crate::session::{AgentSession, SessionError};

const GIB: u64 = 1 << 30;

/// A tar archive written by hand, so that names and types the tar crate's
/// builder would refuse (`..`, absolute names) can be forged.
#[derive(Default)]
struct Forge(Vec<u8>);

impl Forge {
    fn entry(&mut self, name: &str, kind: EntryType, mode: u32, link: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        self.raw_names(&mut header, name, link);
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
    }

    /// A header claiming `size` bytes, with no content after it: what a
    /// sparse file announces before the first of its many zero bytes.
    fn huge(&mut self, name: &str, size: u64) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(size);
        header.set_mode(0o644);
        self.raw_names(&mut header, name, "");
        self.0.extend_from_slice(header.as_bytes());
    }

    fn raw_names(&mut self, header: &mut tar::Header, name: &str, link: &str) {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
    }

    fn file(&mut self, name: &str, mode: u32, data: &str) {
        self.entry(name, EntryType::Regular, mode, "", data.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// Everything a hostile guest might try, plus a few honest entries.
fn hostile_archive(outside: &Path) -> Vec<u8> {
    let outside = outside.display().to_string();
    let mut tar = Forge::default();
    tar.entry("./", EntryType::Directory, 0o755, "", b"");
    tar.file("ok.txt", 0o644, "hello");
    tar.file("../escape.txt", 0o644, "out");
    tar.file(&format!("{outside}/absolute.txt"), 0o644, "out");
    tar.file("suid", 0o4777, "#!/bin/sh\n");
    tar.file("sgid-sticky", 0o3775, "x");
    tar.entry("shadow", EntryType::Symlink, 0o777, "/etc/shadow", b"");
    tar.entry("up", EntryType::Symlink, 0o777, "../outside", b"");
    tar.entry("loop", EntryType::Symlink, 0o777, ".", b"");
    tar.entry("sub", EntryType::Directory, 0o7777, "", b"");
    tar.entry("inner", EntryType::Symlink, 0o777, "sub", b"");
    tar.file("inner/through.txt", 0o644, "via link");
    tar.entry(
        "up/through.txt",
        EntryType::Regular,
        0o644,
        "",
        b"via refused link",
    );
    tar.entry("hard-out", EntryType::Link, 0o644, "../outside/secret", b"");
    tar.entry(
        "hard-abs",
        EntryType::Link,
        0o644,
        &format!("{outside}/secret"),
        b"",
    );
    tar.entry("hard-in", EntryType::Link, 0o644, "ok.txt", b"");
    tar.entry("null", EntryType::Char, 0o666, "", b"");
    tar.entry("disk", EntryType::Block, 0o666, "", b"");
    tar.entry("pipe", EntryType::Fifo, 0o666, "", b"");
    tar.file("pre/x.txt", 0o644, "through a symlink already there");
    tar.file("pre", 0o644, "replaces the symlink, not its target");
    tar.finish()
}

struct Dirs {
    _root: tempfile::TempDir,
    dest: std::path::PathBuf,
    outside: std::path::PathBuf,
}

/// `dest` and a sibling `outside` holding a secret; `dest/pre` is a symlink
/// to `outside`, as if something had left it there.
fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    let outside = root.path().join("outside");
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("pre")).unwrap();
    Dirs {
        _root: root,
        dest,
        outside,
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn assert_outside_untouched(dirs: &Dirs) {
    let mut names: Vec<_> = fs::read_dir(&dirs.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"]);
    assert_eq!(
        fs::read_to_string(dirs.outside.join("secret")).unwrap(),
        "secret"
    );
    assert!(!dirs.dest.parent().unwrap().join("escape.txt").exists());
}

fn check_hostile_result(dirs: &Dirs, unpacked: &Unpacked) {
    assert!(unpacked.error.is_none(), "{:?}", unpacked.error);
    let refused: Vec<String> = unpacked.refused.iter().map(|r| r.to_string()).collect();
    let outside = dirs.outside.display();
    let expected = [
        "refused: ../escape.txt: the name contains `..`".to_string(),
        format!("refused: {outside}/absolute.txt: absolute names are not allowed"),
        "refused: shadow: symlink to /etc/shadow leads out of its directory (only relative targets without `..` are kept)".to_string(),
        "refused: up: symlink to ../outside leads out of its directory (only relative targets without `..` are kept)".to_string(),
        "refused: loop: symlink to . is its own directory: a loop".to_string(),
        "refused: inner/through.txt: inner is a symlink, and nothing is written through one".to_string(),
        "refused: hard-out: hard link target: the name contains `..`".to_string(),
        "refused: hard-abs: hard link target: absolute names are not allowed".to_string(),
        "refused: null: device nodes are not copied out".to_string(),
        "refused: disk: device nodes are not copied out".to_string(),
        "refused: pipe: fifos are not copied out".to_string(),
        "refused: pre/x.txt: pre is a symlink, and nothing is written through one".to_string(),
    ];
    assert_eq!(refused, expected);

    let dest = &dirs.dest;
    assert_eq!(fs::read_to_string(dest.join("ok.txt")).unwrap(), "hello");
    // Setuid, setgid and sticky bits are gone, and so is group/other write.
    assert_eq!(mode(&dest.join("suid")), 0o755);
    assert_eq!(mode(&dest.join("sgid-sticky")), 0o755);
    assert_eq!(mode(&dest.join("sub")), 0o755);
    // The downward symlink is kept as a symlink.
    assert_eq!(fs::read_link(dest.join("inner")).unwrap(), Path::new("sub"));
    assert!(!dest.join("sub/through.txt").exists());
    // `up` was refused, so `up/` became a plain directory inside `dest`.
    assert!(fs::symlink_metadata(dest.join("up")).unwrap().is_dir());
    // A hard link inside is a copy.
    assert_eq!(fs::read_to_string(dest.join("hard-in")).unwrap(), "hello");
    // The old symlink `pre` was replaced by a file; its target is untouched.
    let pre = fs::symlink_metadata(dest.join("pre")).unwrap();
    assert!(pre.is_file());
    for name in [
        "shadow", "loop", "null", "disk", "pipe", "hard-out", "hard-abs",
    ] {
        assert!(fs::symlink_metadata(dest.join(name)).is_err(), "{name}");
    }
    assert_outside_untouched(dirs);
}

#[test]
fn hostile_entries_are_refused_and_the_rest_unpacked() {
    let dirs = dirs();
    let tar = hostile_archive(&dirs.outside);
    let mut budget = ArtifactBudget::new(ArtifactLimits::default());
    let unpacked = unpack(tar.as_slice(), &dirs.dest, &mut budget);
    check_hostile_result(&dirs, &unpacked);
    // ok.txt, suid, sgid-sticky, sub, inner, up/through.txt (+ its dir),
    // hard-in, pre.
    assert_eq!(unpacked.entries, 8);
}

#[test]
fn a_huge_sparse_file_is_refused_before_a_byte_is_written() {
    let dirs = dirs();
    let mut tar = Forge::default();
    tar.file("small.txt", 0o644, "small");
    tar.huge("big", 50 * GIB);
    // No content follows: had the unpacker tried to read it, it would have
    // failed with a stream error instead of the limit.
    let mut budget = ArtifactBudget::new(ArtifactLimits::default());
    let unpacked = unpack(tar.0.as_slice(), &dirs.dest, &mut budget);
    let error = unpacked.error.as_ref().expect("the limit");
    assert!(unpacked.hung_up());
    assert_eq!(
        error.to_string(),
        format!("artifact limit reached: big: its {} bytes would take the job past its {GIB} byte limit", 50 * GIB)
    );
    assert!(fs::symlink_metadata(dirs.dest.join("big")).is_err());
    assert!(dirs.dest.join("small.txt").exists());
}

/// A GNU long name of 8 MiB: the tar crate would read it whole into memory
/// before yielding the entry; the framing check stops it at its header.
#[test]
fn an_oversized_long_name_is_refused_unread() {
    let dirs = dirs();
    let mut tar = Forge::default();
    tar.file("first.txt", 0o644, "first");
    let long = vec![b'a'; 8 << 20];
    tar.entry("././@LongLink", EntryType::GNULongName, 0o644, "", &long);
    tar.file("after.txt", 0o644, "after");
    let mut budget = ArtifactBudget::new(ArtifactLimits::default());
    let unpacked = unpack(tar.finish().as_slice(), &dirs.dest, &mut budget);
    let error = unpacked.error.as_ref().expect("refused").to_string();
    assert!(
        error.contains("extension header ('L') of 8388608 bytes"),
        "{error}"
    );
    assert!(dirs.dest.join("first.txt").exists());
    assert!(!dirs.dest.join("after.txt").exists());
}

#[test]
fn too_many_entries_stop_the_transfer() {
    let dirs = dirs();
    let mut tar = Forge::default();
    for i in 0..20 {
        tar.file(&format!("f{i:02}"), 0o644, "x");
    }
    let limits = ArtifactLimits {
        max_bytes: GIB,
        max_entries: 5,
    };
    let mut budget = ArtifactBudget::new(limits);
    let unpacked = unpack(tar.finish().as_slice(), &dirs.dest, &mut budget);
    assert_eq!(
        unpacked.error.map(|e| e.to_string()).as_deref(),
        Some("artifact limit reached: f05: more than 5 entries")
    );
    assert_eq!(unpacked.entries, 5);
    assert!(!dirs.dest.join("f05").exists());
}

#[test]
fn the_budget_is_shared_by_a_job_s_transfers() {
    let dirs = dirs();
    let limits = ArtifactLimits {
        max_bytes: 8,
        max_entries: 100,
    };
    let mut budget = ArtifactBudget::new(limits);
    let mut first = Forge::default();
    first.file("a", 0o644, "12345");
    assert!(unpack(first.finish().as_slice(), &dirs.dest, &mut budget)
        .error
        .is_none());
    let mut second = Forge::default();
    second.file("b", 0o644, "12345");
    let unpacked = unpack(second.finish().as_slice(), &dirs.dest, &mut budget);
    assert!(unpacked.hung_up(), "{:?}", unpacked.error);
    assert!(!dirs.dest.join("b").exists());
}

/// A fake agent: answers Hello and Ping, and answers each `GetFiles` by its
/// first pattern: `missing` gets an error, anything else the archive stored
/// under that name, as `Tar` frames.
fn fake_agent(archives: Vec<(&'static str, Vec<u8>)>) -> UnixStream {
    let (host, mut agent) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        // Ends when the host hangs up or sends garbage.
        while let Ok(Some(Frame::Control(message))) = read_frame(&mut agent) {
            let reply = match message {
                Message::Hello { version, .. } => Message::Hello {
                    version,
                    capabilities: Vec::new(),
                    who: "fake agent".into(),
                },
                Message::Ping { nonce } => Message::Pong {
                    nonce,
                    uptime_ms: 1,
                },
                Message::GetFiles { patterns, .. } => {
                    let found = archives.iter().find(|(name, _)| *name == patterns[0]);
                    let Some((_, tar)) = found else {
                        let message = format!("pattern {:?} matched nothing", patterns[0]);
                        let _ =
                            write_frame(&mut agent, &Frame::Control(Message::Error { message }));
                        continue;
                    };
                    let mut frames = DataWriter::new(&mut agent, Stream::Tar);
                    if frames.write_all(tar).and_then(|_| frames.flush()).is_err() {
                        return;
                    }
                    let _ = write_frame(&mut agent, &Frame::Control(Message::TarEnd));
                    Message::FilesDone {
                        entries: 0,
                        bytes: tar.len() as u64,
                    }
                }
                _ => return,
            };
            if write_frame(&mut agent, &Frame::Control(reply)).is_err() {
                return;
            }
        }
    });
    host
}

#[test]
fn a_session_unpacks_forged_archives_safely() {
    let dirs = dirs();
    let mut huge = Forge::default();
    huge.huge("big", 50 * GIB);
    let mut many = Forge::default();
    for i in 0..20 {
        many.file(&format!("many/{i}"), 0o644, "");
    }
    let agent = fake_agent(vec![
        ("hostile", hostile_archive(&dirs.outside)),
        ("many", many.finish()),
        ("huge", huge.0),
    ]);
    let mut session = AgentSession::handshake(agent).unwrap();
    let limits = ArtifactLimits {
        max_bytes: GIB,
        max_entries: 30,
    };
    let mut budget = ArtifactBudget::new(limits);
    let mut get = |session: &mut AgentSession, pattern: &str| {
        session.get_files("/", &[pattern.to_string()], &dirs.dest, &mut budget)
    };

    let unpacked = get(&mut session, "hostile").unwrap();
    check_hostile_result(&dirs, &unpacked);

    // A missing artifact is the agent's error; the session stays in step.
    match get(&mut session, "missing") {
        Err(SessionError::Agent(message)) => {
            assert_eq!(message, "pattern \"missing\" matched nothing")
        }
        other => panic!("{other:?}"),
    }
    session.ping().unwrap();

    // Too many entries: stopped at the limit, and the connection hung up
    // rather than reading on.
    let unpacked = get(&mut session, "many").unwrap();
    assert!(unpacked.hung_up(), "{:?}", unpacked.error);
    assert!(session.ping().is_err());
}

#[test]
fn a_session_hangs_up_on_a_huge_file() {
    let dirs = dirs();
    let mut huge = Forge::default();
    huge.huge("big", 50 * GIB);
    let agent = fake_agent(vec![("huge", huge.0)]);
    let mut session = AgentSession::handshake(agent).unwrap();
    let mut budget = ArtifactBudget::new(ArtifactLimits::default());
    let unpacked = session
        .get_files("/", &["huge".to_string()], &dirs.dest, &mut budget)
        .unwrap();
    assert!(unpacked.hung_up());
    assert!(fs::symlink_metadata(dirs.dest.join("big")).is_err());
    assert!(session.ping().is_err());
}
