//! `runner exec`: one command in one fresh VM.

use std::io::Write;
use std::time::Duration;

use agent_protocol::{Command, ExecRequest, Stream};
use anyhow::Context;
use clap::Args;

use super::{parse_duration, Failure, VmArgs};
use crate::backend::wait_for_agent;

/// Exit code when the VM, not the command, failed.
const VM_FAILED: i32 = 125;

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Extra environment for the command.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the guest.
    #[arg(long)]
    cwd: Option<String>,
    /// Kill the command (and everything it started) after this long.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Forward this process's stdin to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Run the single argument as a `/bin/sh -c` script.
    #[arg(long)]
    sh: bool,
    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

pub fn run(args: ExecArgs) -> Result<i32, Failure> {
    let request = request(&args).map_err(|e| Failure::new(2, e))?;
    crate::backend::vm_dir::sweep_stale_in_temp();
    let fail = |e: anyhow::Error| Failure::new(VM_FAILED, e);
    let started = std::time::Instant::now();
    let spec = args.vm.spec("exec").map_err(fail)?;
    let backend = args.vm.backend().map_err(fail)?;
    let mut vm = backend.start(&spec).map_err(|e| fail(e.into()))?;
    // One line saying what failed, then the console's last lines.
    let mut session = wait_for_agent(vm.as_mut(), spec.boot_timeout).map_err(|e| {
        let tail = e.serial_tail().join("\n");
        fail(match tail.is_empty() {
            true => anyhow::anyhow!("booting the VM: {e}"),
            false => anyhow::anyhow!("booting the VM: {e}\nlast console lines:\n{tail}"),
        })
    })?;
    // tests/bench/nested.sh reads this line (RUST_LOG=info).
    tracing::info!(
        "guest agent ready {} ms after VM set-up began",
        started.elapsed().as_millis()
    );

    let stdin: Option<Box<dyn std::io::Read + Send>> =
        args.interactive.then(|| Box::new(std::io::stdin()) as _);
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let status = session
        .exec(request, stdin, &mut |stream, bytes| {
            // Output is passed on as it comes; a closed stdout (a pipe into
            // `head`) must not stop the command.
            let _ = match stream {
                Stream::Stderr => err.write_all(bytes).and_then(|_| err.flush()),
                _ => out.write_all(bytes).and_then(|_| out.flush()),
            };
        })
        .context("running the command")
        .map_err(fail)?;
    if let Some(message) = &status.error {
        eprintln!("runner: {message}");
    } else if status.timed_out {
        eprintln!("runner: command {}", status.describe());
    }
    // A clean power-off lets the guest flush; a VM that ignores it is killed
    // when `vm` drops anyway.
    if session.shutdown().is_ok() && !vm.wait_exit(Duration::from_secs(10)) {
        tracing::warn!("the VM did not power off; killed it");
    }
    Ok(exit_code(&status))
}

fn request(args: &ExecArgs) -> anyhow::Result<ExecRequest> {
    let command = if args.sh {
        let [script] = args.command.as_slice() else {
            anyhow::bail!("--sh takes exactly one argument, the script");
        };
        Command::Script {
            script: script.clone(),
            shell: String::new(),
        }
    } else {
        Command::Argv(args.command.clone())
    };
    let env = args
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow::anyhow!("--env takes KEY=VALUE, got `{kv}`")),
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(ExecRequest {
        command,
        env,
        cwd: args.cwd.clone(),
        timeout_ms: args.timeout.map(|t| t.as_millis() as u64),
        stdin: args.interactive,
    })
}

/// The command's own code; like a shell, 128+N for death by signal N, and
/// like `timeout(1)`, 124 when it ran out of time.
fn exit_code(status: &agent_protocol::ExitStatus) -> i32 {
    if status.timed_out {
        return 124;
    }
    match (status.code, status.signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => VM_FAILED,
    }
}
