//! The `disk-reserve` command line: `ensure`, `release` and `status` of a structural disk
//! reserve, thin over the library. The contract it keeps (arguments, exit statuses, JSON
//! fields) is in `disk-reserve --help`.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "the disk-reserve command runs on Linux only: the library's kernel backend (RealFs) is Linux-only"
);

mod args;
mod command;
mod exit;
mod failure;
mod interrupt;
mod lock_holder;
mod logging;
mod progress;
mod report;
mod size_arg;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = args::Cli::parse();
    logging::init();
    command::run(args).into()
}
