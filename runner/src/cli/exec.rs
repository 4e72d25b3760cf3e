//! `runner exec`: one command in one fresh VM.

use std::io::Write;
use std::time::Duration;

use agent_protocol::{Command, ExecRequest, Stream};
use clap::Args;

use super::failure::Failure;
use super::vm_args::VmArgs;
use crate::pipeline::parse_duration;
use crate::session::wait_for_agent;
use crate::session::SessionError;

/// Exit code when the VM, not the command, failed.
pub(super) const VM_FAILED: i32 = 125;
/// Exit code when the command ran out of time, as `timeout(1)` has it.
const TIMED_OUT: i32 = 124;
/// `--timeout` when none is given: a forgotten `sleep` or a guest that
/// never answers must not hold a CI machine for ever.
pub const DEFAULT_EXEC_TIMEOUT: &str = "10m";

/// A time limit, or none at all (`0` or `none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit(pub Option<Duration>);

/// `30s`, `5m` (see [`parse_duration`]); `0` or `none` for no limit.
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    match text.trim() {
        "0" | "none" => Ok(Limit(None)),
        other => parse_duration(other).map(|d| Limit(Some(d))),
    }
}

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
    /// Kill the command (and everything it started) after this long; exit
    /// code 124. `0` or `none` means no limit. If the guest does not stop the
    /// command, the host kills the VM 5s later. Booting has its own limit,
    /// --boot-timeout.
    #[arg(long, value_parser = parse_limit, default_value = DEFAULT_EXEC_TIMEOUT)]
    timeout: Limit,
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
    runner_machine::vm_dir::sweep_stale_in_temp();
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
    let result = session.exec(request, stdin, &mut |stream, bytes| {
        // Output is passed on as it comes; a closed stdout (a pipe into
        // `head`) must not stop the command.
        let _ = match stream {
            Stream::Stderr => err.write_all(bytes).and_then(|_| err.flush()),
            _ => out.write_all(bytes).and_then(|_| out.flush()),
        };
    });
    let status = match result {
        // The guest ignored the timeout; returning drops (kills) the VM.
        Err(e @ SessionError::ExecDeadline { .. }) => {
            eprintln!("runner: command timed out; {e}; killed the VM");
            return Ok(TIMED_OUT);
        }
        Err(e) => {
            let report = runner_machine::vm_state_report(vm.as_mut());
            return Err(fail(anyhow::anyhow!("running the command: {e}; {report}")));
        }
        Ok(status) => status,
    };
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
        timeout_ms: args
            .timeout
            .0
            .map(|t| t.as_millis().try_into().unwrap_or(u64::MAX)),
        stdin: args.interactive,
    })
}

/// The command's own code; like a shell, 128+N for death by signal N, and
/// like `timeout(1)`, 124 when it ran out of time.
pub(super) fn exit_code(status: &agent_protocol::ExitStatus) -> i32 {
    if status.timed_out {
        return TIMED_OUT;
    }
    match (status.code, status.signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => VM_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_none_and_zero_meaning_no_limit() {
        assert_eq!(parse_limit("30s"), Ok(Limit(Some(Duration::from_secs(30)))));
        assert_eq!(parse_limit("none"), Ok(Limit(None)));
        assert_eq!(parse_limit("0"), Ok(Limit(None)));
        assert_eq!(
            parse_limit(DEFAULT_EXEC_TIMEOUT),
            Ok(Limit(Some(Duration::from_secs(600))))
        );
        let err = parse_limit("soon").unwrap_err();
        assert!(err.contains("like `30s`"), "{err}");
    }

    #[test]
    fn the_default_timeout_reaches_the_agent() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            exec: ExecArgs,
        }
        let cli = Cli::try_parse_from(["exec", "--", "true"]).unwrap();
        assert_eq!(request(&cli.exec).unwrap().timeout_ms, Some(600_000));
        let cli = Cli::try_parse_from(["exec", "--timeout", "none", "--", "true"]).unwrap();
        assert_eq!(request(&cli.exec).unwrap().timeout_ms, None);
        assert!(Cli::try_parse_from(["exec", "--timeout", "soon", "--", "true"]).is_err());
    }
}
