//! `runner-agent`: the in-guest agent binary (see the library for the protocol side).
//!
//! Usage: `runner-agent [--vsock-port N | --listen-unix PATH]`. Without
//! arguments it listens on AF_VSOCK port `agent_protocol::AGENT_PORT`.

use std::io::Write;
use std::path::PathBuf;

use guest_agent::{console, listener, pid1, reaper};

enum Listen {
    Vsock(u32),
    Unix(PathBuf),
}

const USAGE: &str = "usage: runner-agent [--vsock-port N | --listen-unix PATH]";

fn parse_args() -> Result<Listen, String> {
    let mut listen = Listen::Vsock(agent_protocol::AGENT_PORT);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen-unix" => {
                let path = args.next().ok_or("--listen-unix needs a path")?;
                listen = Listen::Unix(PathBuf::from(path));
            }
            "--vsock-port" => {
                let port = args.next().ok_or("--vsock-port needs a number")?;
                let port = port.parse().map_err(|_| format!("bad port {port:?}"))?;
                listen = Listen::Vsock(port);
            }
            "--help" | "-h" => return Err(USAGE.to_string()),
            "--version" => return Err(guest_agent::describe_agent()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(listen)
}

fn main() {
    let pid1 = pid1::is_pid1();
    if pid1 {
        pid1::setup();
    }
    pid1::ensure_std_fds();
    // Start reaping before anything else: as PID 1 there may already be
    // orphans from runner-init.
    reaper::global();

    let listen = match parse_args() {
        Ok(listen) => listen,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "{message}");
            if pid1 {
                // An init must not exit; serve the default port instead.
                Listen::Vsock(agent_protocol::AGENT_PORT)
            } else {
                std::process::exit(2);
            }
        }
    };
    match listen {
        Listen::Vsock(port) => match listener::bind_vsock(port) {
            Ok(socket) => {
                console!("ready on vsock port {port}");
                listener::serve_vsock(socket)
            }
            Err(e) => {
                console!("cannot listen on vsock port {port}: {e}");
                if pid1 {
                    // Power off so the host sees the failure at once instead
                    // of waiting for a connection that can never come.
                    pid1::power_off();
                }
                std::process::exit(1);
            }
        },
        Listen::Unix(path) => match listener::bind_unix(&path) {
            Ok(socket) => {
                console!("ready on unix socket {}", path.display());
                listener::serve_unix(socket)
            }
            Err(e) => {
                console!("cannot listen on {}: {e}", path.display());
                std::process::exit(1);
            }
        },
    }
}
