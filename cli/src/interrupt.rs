//! SIGINT, SIGTERM and SIGHUP during `ensure` (the CLI contract, rule 5 and 14): the first
//! one cancels the allocation through the library's [`CancelToken`], which rolls it back;
//! the command says so in one line and then dies by that same signal, re-raised with the
//! default handler, as shells (`wait` sees the signal, a script's Ctrl-C stops the script)
//! and systemd (a `SIGTERM` stop is clean) expect. Further signals while the rollback runs
//! are caught and ignored: a second Ctrl-C cannot leave half a reserve behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use disk_reserve::CancelToken;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// The signals that cancel an `ensure`.
const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// The signal handlers of one `ensure`; dropping it stops the watching thread (the
/// handlers stay, swallowing signals until the process ends or re-raises).
pub struct Interrupts {
    /// The first signal the watching thread saw (0: none yet).
    first: Arc<AtomicUsize>,
    /// The last signal the handler itself saw, set in the handler: no thread in between.
    last: Arc<AtomicUsize>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Interrupts {
    /// Catches SIGINT, SIGTERM and SIGHUP from now on; the first one cancels `token`.
    ///
    /// # Errors
    /// The handlers could not be installed (`sigaction` failed).
    pub fn watch(token: CancelToken) -> std::io::Result<Interrupts> {
        let last = Arc::new(AtomicUsize::new(0));
        for signal in SIGNALS {
            signal_hook::flag::register_usize(signal, Arc::clone(&last), signal as usize)?;
        }
        let mut signals = Signals::new(SIGNALS)?;
        let handle = signals.handle();
        let first = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&first);
        let thread = std::thread::spawn(move || {
            for signal in signals.forever() {
                // The first signal wins; the rest (a second Ctrl-C during the rollback)
                // are swallowed here.
                let _ =
                    seen.compare_exchange(0, signal as usize, Ordering::SeqCst, Ordering::SeqCst);
                token.cancel();
            }
        });
        Ok(Interrupts {
            first,
            last,
            handle,
            thread: Some(thread),
        })
    }

    /// The signal that interrupted the run, if one came: the first the watcher saw, or
    /// one that arrived too late for the watcher to cancel anything.
    pub fn caught(&self) -> Option<i32> {
        [&self.first, &self.last]
            .into_iter()
            .map(|signal| signal.load(Ordering::SeqCst))
            .find(|&signal| signal != 0)
            .and_then(|signal| i32::try_from(signal).ok())
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `SIGINT`, `SIGTERM`, `SIGHUP` for messages.
pub fn name(signal: i32) -> &'static str {
    signal_hook::low_level::signal_name(signal).unwrap_or("a signal")
}

/// Ends the process by `signal` with its default action, as if it had never been caught.
/// Should that fail, exits with the shells' code for it (128 + the signal).
pub fn die_by(signal: i32) -> ! {
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal)
}
