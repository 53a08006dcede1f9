//! A `\r`-updated progress line on stderr for long allocations (the write path), shown
//! only when stderr is a terminal and the output is not JSON.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use super::report::{escape_controls, natural};

/// The progress line of one allocation.
#[derive(Debug)]
pub struct Progress {
    path: String,
    drawn: AtomicBool,
    ended: AtomicBool,
}

impl Progress {
    /// A progress line for `path`, or `None` when stderr is not a terminal or `json` is
    /// set (nothing extra is printed then).
    pub fn for_terminal(path: &str, json: bool) -> Option<Progress> {
        (!json && io::stderr().is_terminal()).then(|| Progress {
            path: escape_controls(path).into_owned(),
            drawn: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        })
    }

    /// Redraws the line: `allocating PATH: 512 MiB of 1 GiB (50%)`.
    pub fn update(&self, done: u64, total: u64) {
        let percent = if total == 0 {
            100
        } else {
            u128::from(done) * 100 / u128::from(total)
        };
        let mut stderr = io::stderr().lock();
        // `\x1b[K` clears what a longer previous line left behind.
        let _ = write!(
            stderr,
            "\rallocating {}: {} of {} ({percent}%)\x1b[K",
            self.path,
            natural(done),
            natural(total)
        );
        self.drawn.store(true, Ordering::Relaxed);
        if done >= total {
            let _ = writeln!(stderr);
            self.ended.store(true, Ordering::Relaxed);
        }
        let _ = stderr.flush();
    }

    /// Ends a line that an error interrupted, so the next message starts on its own line.
    pub fn finish(&self) {
        if self.drawn.load(Ordering::Relaxed) && !self.ended.load(Ordering::Relaxed) {
            let _ = writeln!(io::stderr().lock());
        }
    }
}
