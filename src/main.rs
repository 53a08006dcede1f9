//! The `disk-reserve` command line: `ensure`, `release` and `status` of a structural disk
//! reserve, thin over the library. The contract it keeps (arguments, exit statuses, JSON
//! fields) is in `disk-reserve --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    cli::logging::init();
    cli::command::run(args).into()
}
