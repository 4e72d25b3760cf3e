//! Moving files in and out of the guest as tar streams.

use std::io::Write;
use std::path::{Path, PathBuf};

use agent_protocol::{write_frame, DataReader, DataWriter, Frame, Message, Stream};

use super::deadline::DeadlineIo;
use super::unpack::{unpack, ArtifactBudget, UnpackError, Unpacked};
use super::{AgentSession, SessionError, REPLY_TIMEOUT, WRITE_TIMEOUT};

/// One host file or directory and where it goes, relative to the target.
#[derive(Clone, Debug)]
pub struct FileEntry {
    pub host: PathBuf,
    pub guest: PathBuf,
}

/// What a finished transfer moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    pub entries: u64,
    pub bytes: u64,
}

impl AgentSession {
    /// Copies `entries` into the guest under `target` (created if missing).
    /// Directories are copied recursively.
    pub fn put_files(
        &mut self,
        target: &str,
        entries: &[FileEntry],
    ) -> Result<Transferred, SessionError> {
        self.put_tar(target, |out| {
            let mut tar = tar::Builder::new(out);
            tar.follow_symlinks(false);
            // The agent unpacks plain entries only (see pipeline/files.rs).
            tar.sparse(false);
            for entry in entries {
                if entry.host.is_dir() {
                    tar.append_dir_all(&entry.guest, &entry.host)?;
                } else {
                    tar.append_path_with_name(&entry.host, &entry.guest)?;
                }
            }
            tar.finish()
        })
    }

    /// Streams a tar archive, produced by `write`, into the guest and unpacks
    /// it under `target`. Nothing is buffered whole: `write` writes straight
    /// into data frames. The copy ends with an error at the session deadline,
    /// or when the guest takes no data for [`WRITE_TIMEOUT`].
    pub fn put_tar(
        &mut self,
        target: &str,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Transferred, SessionError> {
        self.send(Message::PutFiles {
            target: target.to_string(),
        })?;
        {
            let w = self.writer.lock().map_err(|_| SessionError::Closed)?;
            let mut io = DeadlineIo::new(&w, self.deadline, Some(WRITE_TIMEOUT));
            let sent = (|| {
                let mut frames = DataWriter::new(&mut io, Stream::Tar);
                write(&mut frames)?;
                frames.flush()?;
                write_frame(&mut io, &Frame::Control(Message::TarEnd))
                    .map_err(std::io::Error::other)
            })();
            // The error from inside the tar writer is wrapped beyond
            // recognition; the adapter knows whether a limit ended it.
            if let Err(e) = sent {
                return Err(io.expired().map(SessionError::from).unwrap_or(e.into()));
            }
        }
        self.files_done()
    }

    /// Fetches the paths under `base` matching `patterns` into `dest`,
    /// charging `budget` (see [`super::unpack`] for what is refused).
    ///
    /// Refused entries are listed in the result, as is a stop on reaching
    /// the budget. In that case the connection is hung up (the rest of the
    /// stream could be gigabytes of a sparse file) and the session is no
    /// longer usable; a job is over by then anyway.
    pub fn get_files(
        &mut self,
        base: &str,
        patterns: &[String],
        dest: &Path,
        budget: &mut ArtifactBudget,
    ) -> Result<Unpacked, SessionError> {
        self.send(Message::GetFiles {
            base: base.to_string(),
            patterns: patterns.to_vec(),
        })?;
        std::fs::create_dir_all(dest)?;
        let mut io = DeadlineIo::new(&self.reader, self.deadline, Some(REPLY_TIMEOUT));
        let mut stream = DataReader::new(&mut io, Stream::Tar, Message::TarEnd);
        let unpacked = unpack(&mut stream, dest, budget);
        let (ended, peer_error) = (stream.ended(), stream.peer_error().map(str::to_string));
        if unpacked.hung_up() || (!ended && peer_error.is_none()) {
            // Out of step with the agent: no FilesDone can be told apart
            // from the rest of the stream. Nothing more goes over this socket.
            let _ = self.reader.shutdown(std::net::Shutdown::Both);
            if unpacked.hung_up() {
                return Ok(unpacked);
            }
            if let Some(why) = io.expired() {
                return Err(why.into());
            }
            return Err(match unpacked.error {
                Some(UnpackError::Stream(e)) => SessionError::from(e),
                _ => SessionError::Closed,
            });
        }
        if let Some(message) = peer_error {
            return Err(SessionError::Agent(message));
        }
        self.files_done()?;
        Ok(unpacked)
    }

    fn files_done(&mut self) -> Result<Transferred, SessionError> {
        match self.reply(REPLY_TIMEOUT)? {
            Message::FilesDone { entries, bytes } => Ok(Transferred { entries, bytes }),
            Message::Error { message } => Err(SessionError::Agent(message)),
            other => Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }
}
