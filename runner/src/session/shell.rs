//! The host half of the agent's `shell` exchange: an interactive shell on
//! a pty in the guest. The caller's thread reads the terminal's output;
//! keystrokes, window sizes and hang-up go through a [`ShellControl`] from
//! other threads.

use agent_protocol::{ExitStatus, Frame, Message, ShellRequest, Stream, WindowSize, CHUNK_SIZE};

use super::{write_locked, AgentSession, SessionError, SharedWriter};

/// The capability an agent offers when it can open shells.
const CAPABILITY: &str = "shell";

/// Sends input to the shell running on a session, from any thread.
#[derive(Clone)]
pub struct ShellControl(SharedWriter);

impl ShellControl {
    /// What the user typed, as it came from their terminal.
    pub fn input(&self, bytes: &[u8]) -> Result<(), SessionError> {
        for chunk in bytes.chunks(CHUNK_SIZE) {
            self.send(Frame::Data(Stream::Stdin, chunk.to_vec()))?;
        }
        Ok(())
    }

    /// The user's window changed size.
    pub fn resize(&self, size: WindowSize) -> Result<(), SessionError> {
        self.send(Frame::Control(Message::Resize(size)))
    }

    /// The user's terminal went away: the agent hangs the shell's up.
    pub fn hang_up(&self) -> Result<(), SessionError> {
        self.send(Frame::Control(Message::StdinEof))
    }

    fn send(&self, frame: Frame) -> Result<(), SessionError> {
        let w = self.0.lock().map_err(|_| SessionError::Closed)?;
        let result = write_locked(&w, &frame, None);
        if result.is_err() {
            // Part of a frame may be on the wire: nothing after it could be
            // understood. Ending the connection also ends the output loop.
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        result
    }
}

impl AgentSession {
    /// Whether the agent can open interactive shells.
    pub fn can_open_shells(&self) -> bool {
        self.capabilities.iter().any(|c| c == CAPABILITY)
    }

    /// A handle for sending input to the shell that [`Self::shell`] runs.
    pub fn shell_control(&self) -> ShellControl {
        ShellControl(self.writer.clone())
    }

    /// Opens an interactive shell in the guest and passes its terminal's
    /// output to `on_output` until it exits. There is no time limit but
    /// the session's deadline: a person decides when a shell ends. Input
    /// goes through [`Self::shell_control`]; stop sending it before this
    /// session is used for anything else.
    pub fn shell(
        &mut self,
        request: ShellRequest,
        on_output: &mut dyn FnMut(&[u8]),
    ) -> Result<ExitStatus, SessionError> {
        if !self.can_open_shells() {
            return Err(SessionError::Incompatible(format!(
                "the guest agent ({}) cannot open shells; rebuild the rootfs with this runner",
                self.agent
            )));
        }
        self.send(Message::Shell(request))?;
        let result = loop {
            match self.next_frame(self.deadline, None) {
                // A terminal has one output stream; take either.
                Ok(Frame::Data(Stream::Stdout | Stream::Stderr, bytes)) => on_output(&bytes),
                Ok(Frame::Control(Message::Exited(status))) => break Ok(status),
                Ok(Frame::Control(Message::Error { message })) => {
                    break Err(SessionError::Agent(message))
                }
                Ok(other) => break Err(SessionError::Unexpected(format!("{other:?}"))),
                Err(e) => break Err(e),
            }
        };
        // A frame another thread is writing is finished before this
        // returns, so the next request starts on a frame boundary.
        drop(self.writer.lock());
        result
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use agent_protocol::{read_frame, write_frame, PROTOCOL_VERSION};

    use super::*;

    /// A fake agent: answers Hello with `capabilities`, then runs `serve`.
    fn session_with(
        capabilities: &[&str],
        serve: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> (AgentSession, std::thread::JoinHandle<()>) {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let capabilities: Vec<String> = capabilities.iter().map(|c| c.to_string()).collect();
        let agent_thread = std::thread::spawn(move || {
            let _hello = read_frame(&mut agent).unwrap();
            let hello = Message::Hello {
                version: PROTOCOL_VERSION,
                capabilities,
                who: "fake agent".into(),
            };
            write_frame(&mut agent, &Frame::Control(hello)).unwrap();
            serve(&mut agent);
        });
        (AgentSession::handshake(host).unwrap(), agent_thread)
    }

    #[test]
    fn output_and_input_travel_and_the_exit_status_ends_the_shell() {
        let (mut session, agent) = session_with(&["exec", "shell"], |agent| {
            let Some(Frame::Control(Message::Shell(request))) = read_frame(agent).unwrap() else {
                panic!("expected a shell request");
            };
            assert_eq!(request.size, WindowSize { rows: 5, cols: 7 });
            write_frame(agent, &Frame::Data(Stream::Stdout, b"$ ".to_vec())).unwrap();
            // Echo the input and the resize back as output.
            let Some(Frame::Data(Stream::Stdin, typed)) = read_frame(agent).unwrap() else {
                panic!("expected keystrokes");
            };
            let resized = read_frame(agent).unwrap();
            let echo = format!("{} {resized:?}", String::from_utf8_lossy(&typed));
            write_frame(agent, &Frame::Data(Stream::Stdout, echo.into_bytes())).unwrap();
            let exited = ExitStatus {
                code: Some(3),
                ..Default::default()
            };
            write_frame(agent, &Frame::Control(Message::Exited(exited))).unwrap();
        });
        let control = session.shell_control();
        let mut output = Vec::new();
        let request = ShellRequest {
            size: WindowSize { rows: 5, cols: 7 },
            ..Default::default()
        };
        let status = session
            .shell(request, &mut |bytes| {
                if bytes == b"$ " {
                    control.input(b"exit 3\r").unwrap();
                    control.resize(WindowSize { rows: 9, cols: 11 }).unwrap();
                }
                output.extend_from_slice(bytes);
            })
            .unwrap();
        assert_eq!(status.code, Some(3));
        agent.join().unwrap();
        let output = String::from_utf8(output).unwrap();
        assert!(output.contains("exit 3"), "{output}");
        assert!(output.contains("rows: 9, cols: 11"), "{output}");
    }

    #[test]
    fn an_agent_without_shells_is_refused_before_anything_is_sent() {
        let (mut session, agent) = session_with(&["exec"], |agent| {
            // Nothing may arrive: the next read sees the host hang up.
            assert!(read_frame(agent).unwrap().is_none());
        });
        let err = session
            .shell(ShellRequest::default(), &mut |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("rebuild the rootfs"), "{err}");
        drop(session);
        agent.join().unwrap();
    }
}
