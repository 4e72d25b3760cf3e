//! Command-line interface: argument parsing and the commands themselves.

mod doctor;
mod exec;
mod image;
mod listing;
mod out_dir;
mod report;
mod shell;
mod test;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::pipeline::parse_duration;
use runner_machine::images::{ImageKind, Images};
use runner_machine::kvm::KvmBackend;
use runner_machine::select::{auto_selection, default_backend, qemu_backend, AutoPick};
use runner_machine::snapshots::SnapshotStore;
use runner_machine::{Backend, VmSpec};

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

/// A failed command: what to print and which exit code to use.
pub struct Failure {
    pub error: anyhow::Error,
    pub code: i32,
}

impl Failure {
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            error: error.into(),
            code,
        }
    }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The best backend this host runs well (`runner doctor` explains it).
    Auto,
    /// QEMU: with KVM acceleration where KVM runs guest ring 0 natively,
    /// with software emulation (TCG) elsewhere.
    Qemu,
    /// The built-in KVM VMM; needs KVM with hardware virtualization.
    Kvm,
}

impl BackendChoice {
    /// The backend; `cold` turns the kvm backend's warm start off.
    pub fn backend(self, cold: bool) -> anyhow::Result<Box<dyn Backend>> {
        let kvm = || {
            let store = (!cold).then(SnapshotStore::open);
            let probe = std::sync::Arc::new(crate::session::SessionProbe);
            Box::new(KvmBackend::with_snapshots(store.flatten(), probe)) as Box<dyn Backend>
        };
        match self {
            BackendChoice::Auto => match auto_selection().pick {
                AutoPick::Kvm => Ok(kvm()),
                AutoPick::QemuTcg => Ok(default_backend()?),
            },
            BackendChoice::Qemu => Ok(qemu_backend()?),
            BackendChoice::Kvm => Ok(kvm()),
        }
    }
}

/// `--cold`, for the commands that boot VMs.
#[derive(Args, Clone, Debug)]
pub struct ColdArg {
    /// Boot every VM from its kernel. Without it the kvm backend restores
    /// jobs from a snapshot of a booted guest, made on first use and cached
    /// in ~/.cache/runner/snapshots (QEMU always boots).
    #[arg(long, env = "RUNNER_COLD", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub cold: bool,
}

/// The VM every command boots.
#[derive(Args, Clone, Debug)]
pub struct VmArgs {
    /// Kernel: a path, or `default` (built by kernels/build.sh on first use).
    #[arg(long, default_value = "default", env = "RUNNER_KERNEL")]
    pub kernel: String,
    /// Root file system: a path, or `minimal` / `debian` (built on first use).
    #[arg(long, default_value = "minimal", env = "RUNNER_ROOTFS")]
    pub rootfs: String,
    #[arg(long, value_enum, default_value = "auto", env = "RUNNER_BACKEND")]
    pub backend: BackendChoice,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// How long the guest may take to become ready (e.g. `60s`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub boot_timeout: Duration,
    #[command(flatten)]
    pub cold: ColdArg,
}

impl VmArgs {
    pub fn spec(&self, name: &str) -> anyhow::Result<VmSpec> {
        let images = Images::from_env();
        let cwd = std::env::current_dir()?;
        let kernel = crate::pipeline::parse_image_ref(ImageKind::Kernel, &self.kernel, &cwd)
            .map_err(anyhow::Error::msg)?;
        let rootfs = crate::pipeline::parse_image_ref(ImageKind::Rootfs, &self.rootfs, &cwd)
            .map_err(anyhow::Error::msg)?;
        let kernel = images.kernel(&kernel)?;
        let rootfs = images.rootfs(&rootfs)?;
        Ok(VmSpec {
            name: name.to_string(),
            kernel,
            rootfs,
            vcpus: self.vcpus,
            memory_mib: self.memory,
            boot_timeout: self.boot_timeout,
            serial_log_limit: Some(runner_machine::DEFAULT_SERIAL_LOG_LIMIT),
            network: Default::default(),
        })
    }

    pub fn backend(&self) -> anyhow::Result<Box<dyn Backend>> {
        self.backend.backend(self.cold.cold)
    }
}
