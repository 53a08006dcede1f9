//! The pieces of the command line, one concept per file.

pub mod args;
pub mod command;
pub mod exit;
pub mod failure;
pub mod interrupt;
pub mod lock_holder;
pub mod logging;
pub mod progress;
pub mod report;
pub mod size_arg;
