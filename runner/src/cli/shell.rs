//! `runner shell`: an interactive shell in a fresh VM, destroyed when the
//! shell exits. With `PIPELINE JOB`, the VM is that job's (image, size,
//! env, files, workdir) and no step runs.
//!
//! Exit codes: the shell's own (128+N if it died of signal N), 2 for usage
//! errors (no terminal, an unknown job), 125 when the VM failed, 130 after
//! SIGINT/SIGTERM/SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_protocol::ShellRequest;
use anyhow::{anyhow, Context};
use clap::Args;

use super::exec::{exit_code, VM_FAILED};
use super::failure::Failure;
use super::vm_args::{BackendChoice, ColdArg};
use crate::grants::{GrantArgs, Grants};
use crate::pipeline::parse_duration;
use crate::pipeline::{files, host_scope, FileEntry, Image, Network, Pipeline, GUEST_WORKSPACE};
use crate::plan::Plan;
use crate::session::wait_for_agent;
use runner_machine::images::{ImageKind, Images};
use runner_machine::{VmSpec, DEFAULT_SERIAL_LOG_LIMIT};

#[derive(Args)]
pub struct ShellArgs {
    /// A pipeline file: boot the VM of JOB in it, with the job's image,
    /// size, env, files and workdir, and run none of its steps.
    pipeline: Option<PathBuf>,
    /// The job, by the name `runner test --list` shows.
    job: Option<String>,
    /// Kernel: a path, or `default`. Default: the job's, else RUNNER_KERNEL
    /// or `default`.
    #[arg(long)]
    kernel: Option<String>,
    /// Root file system: a path, or `minimal` / `debian`. Default: the
    /// job's, else RUNNER_ROOTFS or `minimal`.
    #[arg(long, visible_alias = "image")]
    rootfs: Option<String>,
    #[arg(long, value_enum, default_value = "auto", env = "RUNNER_BACKEND")]
    backend: BackendChoice,
    #[command(flatten)]
    cold: ColdArg,
    /// Virtual CPUs (default: the job's, else 1).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB (default: the job's, else 256).
    #[arg(long)]
    memory: Option<u32>,
    /// How long the guest may take to become ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    boot_timeout: Duration,
    /// Copy this directory into the guest's /workspace first (minus what
    /// git ignores, as `runner test` copies a workspace) and start there.
    /// Without a pipeline only: a job copies its own `files`.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Extra environment for the shell.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory in the guest (default: the job's workdir, else
    /// /workspace with --workspace, else /).
    #[arg(long)]
    cwd: Option<String>,
    /// What a job may reach beyond its clean room, as for `runner test`.
    #[command(flatten)]
    grants: GrantArgs,
}

/// What the shell's VM gets, from a job or from the flags.
struct Setup {
    /// Shown in the banner and logs.
    what: String,
    image: Image,
    vcpus: u32,
    memory_mib: u32,
    files: Vec<files::CollectedFile>,
    env: Vec<(String, String)>,
    cwd: String,
    /// The job's `network`; none for a shell without a pipeline.
    network: Network,
}

pub fn run(args: ShellArgs) -> Result<i32, Failure> {
    let usage = |e: anyhow::Error| Failure::new(2, e);
    let grants = args.grants.resolve().map_err(|e| usage(anyhow!(e)))?;
    let setup = match &args.pipeline {
        Some(pipeline) => from_job(&args, pipeline, &grants),
        None => from_flags(&args),
    }
    .map_err(usage)?;
    // Before images are resolved (perhaps built): that could take minutes.
    if !crate::terminal::stdin_is_terminal() {
        return Err(usage(anyhow!(
            "runner shell needs a terminal on stdin; to run commands without one, use `runner exec`"
        )));
    }
    let spec = vm_spec(&args, &setup, &grants).map_err(usage)?;
    if spec.network.is_on() {
        runner_machine::network::passt::locate().map_err(|e| usage(anyhow::Error::msg(e)))?;
    }
    let backend = args.backend.backend(args.cold.cold).map_err(usage)?;
    runner_machine::vm_dir::sweep_stale_in_temp();

    let fail = |e: anyhow::Error| Failure::new(VM_FAILED, e);
    // Dropping `vm` destroys it, on every way out of this function; its
    // processes die with the runner even on SIGKILL (PR_SET_PDEATHSIG).
    let mut vm = backend.start(&spec).map_err(|e| fail(e.into()))?;
    let mut session = wait_for_agent(vm.as_mut(), spec.boot_timeout).map_err(|e| {
        let tail = e.serial_tail().join("\n");
        fail(match tail.is_empty() {
            true => anyhow!("booting the VM: {e}"),
            false => anyhow!("booting the VM: {e}\nlast console lines:\n{tail}"),
        })
    })?;
    if spec.network.is_on() {
        session
            .configure_network(&runner_machine::network::guest_config())
            .map_err(|e| fail(anyhow!("configuring the guest's network: {e}")))?;
    }
    if !setup.files.is_empty() {
        session
            .put_tar("/", |out| {
                files::write_tar(&setup.files, out)
                    .map(|_| ())
                    .map_err(std::io::Error::other)
            })
            .map_err(|e| fail(anyhow!("copying files into the guest: {e}")))?;
    }
    eprintln!(
        "runner: shell in {} ({}, {} vCPU, {} MiB) at {}; `exit` or Ctrl-D leaves and destroys the VM",
        setup.what,
        backend.name(),
        spec.vcpus,
        spec.memory_mib,
        setup.cwd
    );
    let request = ShellRequest {
        env: setup.env,
        cwd: Some(setup.cwd),
        ..Default::default()
    };
    let result = crate::terminal::run_shell(&mut session, request);
    if runner_machine::interrupt::is_interrupted() {
        return Err(Failure::new(130, anyhow!("interrupted")));
    }
    match result {
        Ok(status) => {
            if let Some(message) = &status.error {
                eprintln!("runner: {message}");
            }
            Ok(exit_code(&status))
        }
        Err(e) => {
            let report = runner_machine::vm_state_report(vm.as_mut());
            Err(fail(anyhow!("the shell's connection broke: {e}; {report}")))
        }
    }
}

/// `runner shell PIPELINE JOB`: the job's VM and environment.
fn from_job(args: &ShellArgs, path: &Path, grants: &Grants) -> anyhow::Result<Setup> {
    if args.workspace.is_some() {
        anyhow::bail!(
            "--workspace is for a shell without a pipeline; a job copies its own `files`"
        );
    }
    let pipeline = Pipeline::load(path)?;
    let plan = Plan::new(&pipeline);
    let names = || {
        let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
        names.join(", ")
    };
    let Some(name) = args.job.as_deref() else {
        anyhow::bail!(
            "runner shell {} JOB: name the job; the jobs are: {}",
            path.display(),
            names()
        );
    };
    let Some(job) = plan.job(name) else {
        anyhow::bail!(
            "{}: no job `{name}`; the jobs are: {}",
            path.display(),
            names()
        );
    };
    // The job's own asks, as `runner test` checks them; the flags of this
    // command (--kernel, --rootfs) are the operator's.
    let single = Plan {
        jobs: vec![job.clone()],
        ..plan.clone()
    };
    grants.check_plan(&single).map_err(anyhow::Error::msg)?;
    if !job.services.is_empty() {
        // Said, not hidden: a command that reaches `db` fails here.
        let names: Vec<&str> = job.services.iter().map(|s| s.name.as_str()).collect();
        eprintln!(
            "runner: note: `runner shell` does not start the job's services ({});              `runner test --debug-on-failure` opens a shell with them running",
            names.join(", ")
        );
    }
    let collected = if grants.host_files {
        files::collect(&job.files).map_err(anyhow::Error::from)
    } else {
        host_scope::collect_within(&job.files, &plan.workspace).map_err(anyhow::Error::from)
    }
    .context("collecting the job's files")?;
    let mut env: Vec<(String, String)> = job
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(parse_env(&args.env)?);
    Ok(Setup {
        what: format!("the VM of job `{}`", job.name),
        image: job.image.clone(),
        vcpus: job.vcpus,
        memory_mib: job.memory_mib.try_into().unwrap_or(u32::MAX),
        files: collected,
        env,
        cwd: args.cwd.clone().unwrap_or_else(|| job.workdir.clone()),
        network: job.network.clone(),
    })
}

/// `runner shell [--workspace DIR]`: a fresh VM as the flags describe it.
fn from_flags(args: &ShellArgs) -> anyhow::Result<Setup> {
    let (files, default_cwd) = match &args.workspace {
        Some(dir) => {
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("--workspace {}", dir.display()))?;
            if !dir.is_dir() {
                anyhow::bail!("--workspace {}: not a directory", dir.display());
            }
            let collected = files::collect(&[FileEntry::workspace(&dir)])
                .with_context(|| format!("collecting --workspace {}", dir.display()))?;
            (collected, GUEST_WORKSPACE.to_string())
        }
        None => (Vec::new(), "/".to_string()),
    };
    Ok(Setup {
        what: "a fresh VM".into(),
        image: Image::default(),
        vcpus: 1,
        memory_mib: 256,
        files,
        env: parse_env(&args.env)?,
        cwd: args.cwd.clone().unwrap_or(default_cwd),
        network: Network::default(),
    })
}

/// The VM spec: the setup's image and size, overridden by the flags.
fn vm_spec(args: &ShellArgs, setup: &Setup, grants: &Grants) -> anyhow::Result<VmSpec> {
    let cwd = std::env::current_dir()?;
    let parse = |kind, text: &str| {
        crate::pipeline::parse_image_ref(kind, text, &cwd).map_err(anyhow::Error::msg)
    };
    let kernel = match &args.kernel {
        Some(text) => parse(ImageKind::Kernel, text)?,
        None => setup.image.kernel.clone(),
    };
    let rootfs = match &args.rootfs {
        Some(text) => parse(ImageKind::Rootfs, text)?,
        None => setup.image.rootfs.clone(),
    };
    let images = Images::from_env().with_limits(grants.build_limits());
    Ok(VmSpec {
        name: "shell".into(),
        kernel: images.kernel(&kernel)?,
        rootfs: images.rootfs(&rootfs)?,
        vcpus: args.vcpus.unwrap_or(setup.vcpus),
        memory_mib: args.memory.unwrap_or(setup.memory_mib),
        boot_timeout: args.boot_timeout,
        serial_log_limit: Some(DEFAULT_SERIAL_LOG_LIMIT),
        network: grants.nic(&setup.network),
        segment: None,
        prepare: None,
        caches: Vec::new(),
    })
}

fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow!("--env takes KEY=VALUE, got `{kv}`")),
        })
        .collect()
}
