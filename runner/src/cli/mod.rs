//! Command-line interface: argument parsing and the commands themselves.

mod cache;
mod doctor;
mod exec;
mod failure;
mod image;
mod listing;
mod out_dir;
mod report;
mod shell;
mod snapshot;
mod test;
mod vm_args;

use clap::{Parser, Subcommand};

pub use failure::Failure;

#[derive(Parser)]
#[command(name = "runner", version, about = "Run CI jobs in disposable microVMs")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a fresh VM, run one command in it, stream its output and exit
    /// with its exit code (125 if the VM itself failed).
    Exec(exec::ExecArgs),
    /// Run a pipeline: one fresh VM per job, JUnit and a console report.
    Test(test::TestArgs),
    /// An interactive shell in a fresh VM (or in a pipeline job's VM),
    /// destroyed when the shell exits; exits with the shell's exit code.
    Shell(shell::ShellArgs),
    /// Build or locate guest images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// The jobs' cache volumes (`cache:`): list, prune, clear, export,
    /// import.
    Cache(cache::CacheArgs),
    /// The kvm backend's warm-start snapshots: prune them.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Work with JUnit reports.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Check what this host can run guests with (KVM, PVM, QEMU) and which
    /// backend `--backend auto` picks; exits 0 if that backend can work.
    Doctor,
    /// Internal: runs one VM's VMM or device servers (see
    /// `backend::vm_process`); started by the runner itself.
    #[command(name = "__vm-process", hide = true)]
    VmProcess,
    /// Internal: unpacks an OCI image's layers as the image build's
    /// unprivileged user (see `image_cache::oci`).
    #[command(name = "__unpack-oci", hide = true)]
    UnpackOci {
        source: std::path::PathBuf,
        dest: std::path::PathBuf,
        owners: std::path::PathBuf,
        limit: u64,
    },
    /// Internal: runs a program and ends every process it starts (see
    /// `process::keeper_main`).
    #[command(name = "__keeper", hide = true)]
    Keeper {
        #[arg(long)]
        limit: u64,
        #[arg(long, requires = "gid")]
        uid: Option<u32>,
        #[arg(long, requires = "uid")]
        gid: Option<u32>,
        #[arg(last = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
}

pub fn run(cli: Cli) -> Result<i32, Failure> {
    // A VM process has no terminal of its own to watch: the runner that
    // started it stops it.
    let command = match cli.command {
        Command::VmProcess => return Ok(runner_machine::vm_process::child::main()),
        Command::UnpackOci {
            source,
            dest,
            owners,
            limit,
        } => {
            return Ok(runner_machine::images::oci::unpack_main(
                &source, &dest, &owners, limit,
            ))
        }
        Command::Keeper {
            limit,
            uid,
            gid,
            argv,
        } => {
            let run_as = uid.zip(gid);
            let limit = std::time::Duration::from_secs(limit);
            return Ok(runner_machine::process::keeper_main(limit, run_as, &argv));
        }
        command => command,
    };
    if let Err(e) = runner_machine::interrupt::install() {
        return Err(Failure::new(
            1,
            anyhow::anyhow!("installing signal handlers: {e}"),
        ));
    }
    let result = match command {
        Command::Exec(args) => exec::run(args),
        Command::Image(cmd) => image::run(cmd),
        Command::Cache(args) => cache::run(args),
        Command::Snapshot(cmd) => snapshot::run(cmd),
        Command::Test(args) => test::run(args),
        Command::Shell(args) => shell::run(args),
        Command::Report(cmd) => report::run(cmd),
        Command::Doctor => doctor::run(),
        Command::VmProcess | Command::UnpackOci { .. } | Command::Keeper { .. } => {
            unreachable!("handled before the signal handlers")
        }
    };
    // Whatever broke after Ctrl-C broke because of it: say so, and use the
    // shell's code for death by SIGINT.
    if runner_machine::interrupt::is_interrupted() {
        return Err(Failure::new(130, anyhow::anyhow!("interrupted")));
    }
    result
}

/// `RUST_LOG` picks what is logged; warnings and errors by default.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
