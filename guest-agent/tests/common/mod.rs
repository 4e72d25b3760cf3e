//! A minimal host side of the agent protocol for the tests: it talks the
//! real wire protocol to the real agent code over a Unix socket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use agent_protocol::{
    read_frame, write_frame, Command, DataReader, DataWriter, ExecRequest, ExitStatus, Frame,
    Message, Stream, PROTOCOL_VERSION,
};
use guest_agent::{serve_connection, ConnectionEnd};

pub struct Client {
    pub stream: UnixStream,
}

/// A fresh agent connection served in a thread, not yet past Hello.
pub fn connect_raw() -> (Client, JoinHandle<ConnectionEnd>) {
    let (host, agent) = UnixStream::pair().expect("socketpair");
    let server = std::thread::spawn(move || serve_connection(agent));
    host.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (Client { stream: host }, server)
}

/// A connection that has completed the handshake.
pub fn connect() -> (Client, JoinHandle<ConnectionEnd>) {
    let (mut client, server) = connect_raw();
    let reply = client.hello(PROTOCOL_VERSION);
    assert!(
        matches!(reply, Message::Hello { version, .. } if version == PROTOCOL_VERSION),
        "{reply:?}"
    );
    (client, server)
}

pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl ExecOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub fn script(text: &str) -> ExecRequest {
    ExecRequest {
        command: Command::Script {
            script: text.to_string(),
            shell: String::new(),
        },
        ..Default::default()
    }
}

pub fn argv(args: &[&str]) -> ExecRequest {
    ExecRequest {
        command: Command::Argv(args.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

impl Client {
    pub fn hello(&mut self, version: u32) -> Message {
        self.send(Message::Hello {
            version,
            capabilities: vec![],
            who: "test host".into(),
        });
        self.recv_control()
    }

    pub fn send(&mut self, msg: Message) {
        write_frame(&mut self.stream, &Frame::Control(msg)).expect("send");
    }

    pub fn send_data(&mut self, stream: Stream, bytes: &[u8]) {
        write_frame(&mut self.stream, &Frame::Data(stream, bytes.to_vec())).expect("send data");
    }

    pub fn recv(&mut self) -> Option<Frame> {
        read_frame(&mut self.stream).expect("frame")
    }

    pub fn recv_control(&mut self) -> Message {
        match self.recv() {
            Some(Frame::Control(msg)) => msg,
            other => panic!("expected a control frame, got {other:?}"),
        }
    }

    /// Reads output frames until `Exited`, calling `on_data` for each chunk.
    pub fn collect_exec(&mut self, mut on_data: impl FnMut(Stream, &[u8])) -> ExitStatus {
        loop {
            match self.recv() {
                Some(Frame::Data(s, bytes)) => {
                    assert!(bytes.len() <= agent_protocol::CHUNK_SIZE);
                    on_data(s, &bytes)
                }
                Some(Frame::Control(Message::Exited(status))) => return status,
                other => panic!("unexpected frame during exec: {other:?}"),
            }
        }
    }

    pub fn exec(&mut self, req: ExecRequest) -> ExecOutput {
        self.send(Message::Exec(req));
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = self.collect_exec(|s, bytes| match s {
            Stream::Stdout => stdout.extend_from_slice(bytes),
            Stream::Stderr => stderr.extend_from_slice(bytes),
            other => panic!("agent sent {other:?} data"),
        });
        ExecOutput {
            stdout,
            stderr,
            status,
        }
    }

    /// Sends a tar stream for `put-files` and returns the agent's answer.
    pub fn put_tar(&mut self, target: &str, tar: &[u8]) -> Message {
        self.send(Message::PutFiles {
            target: target.to_string(),
        });
        {
            let mut w = DataWriter::new(&mut self.stream, Stream::Tar);
            w.write_all(tar).unwrap();
            w.flush().unwrap();
        }
        self.send(Message::TarEnd);
        self.recv_control()
    }

    /// Runs `get-files`; Ok(tar bytes, FilesDone) or Err(the agent's Error message).
    pub fn get_tar(&mut self, base: &str, patterns: &[&str]) -> Result<(Vec<u8>, Message), String> {
        self.send(Message::GetFiles {
            base: base.to_string(),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
        });
        let mut tar = Vec::new();
        let read =
            DataReader::new(&mut self.stream, Stream::Tar, Message::TarEnd).read_to_end(&mut tar);
        match read {
            Ok(_) => Ok((tar, self.recv_control())),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn ping(&mut self, nonce: u64) -> Message {
        self.send(Message::Ping { nonce });
        self.recv_control()
    }
}
