//! `runner report merge a.xml b.xml -o all.xml`: one JUnit file from the
//! reports of several shards (see `report::merge` for the rules).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::failure::Failure;
use crate::report::junit;
use crate::report::junit::merge::{self, MergeError};

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Join JUnit reports (e.g. of `--shard` runs) into one file. A test
    /// suite (job) found in two inputs is an error.
    Merge(MergeArgs),
}

#[derive(Args)]
pub struct MergeArgs {
    /// The reports to join, in order.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where the merged report goes.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(command: ReportCommand) -> Result<i32, Failure> {
    let ReportCommand::Merge(args) = command;
    let xml = merge::merge(&args.inputs).map_err(|e| {
        let code = match e {
            MergeError::Serialize(_) => 1,
            _ => 2,
        };
        Failure::new(code, e)
    })?;
    junit::write_xml(&xml, &args.output).map_err(|e| Failure::new(1, e))?;
    Ok(0)
}
