//! The `disk-reserve` command line: `ensure`, `release` and `status` of a structural disk
//! reserve, thin over the library. The contract it keeps (arguments, exit statuses, JSON
//! fields) is in `disk-reserve --help`.

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
