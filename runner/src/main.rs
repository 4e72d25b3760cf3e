//! The `runner` command line. Errors end here: one line on stderr and an exit
//! code, never a panic or a backtrace.

use clap::Parser;

fn main() {
    runner_machine::programs::this_is_the_runner();
    runner::cli::init_logging();
    let cli = runner::cli::Cli::parse();
    let code = match runner::cli::run(cli) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("runner: {:#}", failure.error);
            failure.code
        }
    };
    std::process::exit(code);
}
