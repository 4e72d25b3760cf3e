//! Forged archives, as a hostile guest would send them: straight into the
//! unpacker, and through a real [`AgentSession`] talking to a fake agent.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use agent_protocol::{read_frame, write_frame, DataWriter, Frame, Message, Stream};
use safe_untar::forge::Forge;
use tar::EntryType;

use super::*;
use crate::session::{AgentSession, SessionError};

const GIB: u64 = 1 << 30;

/// What a hostile guest might try, a sample (the whole list is in
/// safe-untar's tests), plus a few honest entries.
fn hostile_archive(outside: &Path) -> Vec<u8> {
    let mut tar = Forge::default();
    tar.file("ok.txt", 0o644, "hello");
    tar.file("../escape.txt", 0o644, "out");
    tar.file(&format!("{}/absolute.txt", outside.display()), 0o644, "out");
    tar.file("suid", 0o4777, "#!/bin/sh\n");
    tar.symlink("up", "../outside");
    tar.entry("null", EntryType::Char, 0o666, "", b"");
    tar.file("pre/x.txt", 0o644, "through a symlink already there");
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

fn check_hostile_result(dirs: &Dirs, unpacked: &Unpacked) {
    assert!(unpacked.error.is_none(), "{:?}", unpacked.error);
    let refused: Vec<String> = unpacked.refused.iter().map(|r| r.to_string()).collect();
    let outside = dirs.outside.display();
    let expected = [
        "refused: ../escape.txt: the name contains `..`".to_string(),
        format!("refused: {outside}/absolute.txt: absolute names are not allowed"),
        "refused: up: symlink to ../outside leads out of its directory (only relative targets without `..` are kept)".to_string(),
        format!("refused: null: {}", safe_untar::Refusal::DeviceNode),
        "refused: pre/x.txt: pre is a symlink, and nothing is written through one".to_string(),
    ];
    assert_eq!(refused, expected);
    assert_eq!(unpacked.entries, 2);
    assert_eq!(
        fs::read_to_string(dirs.dest.join("ok.txt")).unwrap(),
        "hello"
    );
    let mode = fs::metadata(dirs.dest.join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    let mut names: Vec<_> = fs::read_dir(&dirs.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"]);
    assert!(!dirs.dest.parent().unwrap().join("escape.txt").exists());
}

#[test]
fn artifacts_are_unpacked_by_the_artifacts_policy() {
    let dirs = dirs();
    let mut budget = ArtifactBudget::new(ArtifactLimits::default());
    let unpacked = unpack(
        hostile_archive(&dirs.outside).as_slice(),
        &dirs.dest,
        &mut budget,
    );
    check_hostile_result(&dirs, &unpacked);
}

#[test]
fn a_huge_sparse_file_stops_the_transfer_at_the_job_s_limit() {
    let dirs = dirs();
    let mut tar = Forge::default();
    tar.huge("big", 50 * GIB);
    let mut budget = ArtifactBudget::new(ArtifactLimits::default());
    let unpacked = unpack(tar.0.as_slice(), &dirs.dest, &mut budget);
    assert!(unpacked.hung_up());
    assert_eq!(
        unpacked.error.map(|e| e.to_string()),
        Some(format!(
            "artifact limit reached: big: its {} bytes would take the total past the limit of {GIB} bytes",
            50 * GIB
        ))
    );
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
    for i in 0..40 {
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
