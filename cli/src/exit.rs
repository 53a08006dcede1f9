//! The exit statuses of the CLI contract.

use std::process::ExitCode;

/// How a run ends, as scripts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `0`: done (ensure present/created/topped up/shrunk; release; status).
    Done,
    /// `75` (`EX_TEMPFAIL`): ensure deferred for low space; nothing was changed.
    Deferred,
    /// `1`: an error, reported on stderr.
    Failed,
    /// `74` (`EX_IOERR`): the work was done but its report could not be written (stdout
    /// failed; a closed pipe is quiet).
    Unreported,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Deferred => 75,
            Exit::Failed => 1,
            Exit::Unreported => 74,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}
