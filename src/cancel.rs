//! [`CancelToken`]: how a caller stops a running `ensure` (rule 14).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A flag a caller sets to stop a running [`Reserve::ensure`](crate::Reserve::ensure).
///
/// Clones share one flag: keep one, give one to the reserve with
/// [`Reserve::cancel_token`](crate::Reserve::cancel_token), and call
/// [`cancel`](CancelToken::cancel) from anywhere — another thread, a signal handler's
/// thread, a timeout. `ensure` looks at it between write chunks and while it waits for
/// the home's lock; it then rolls back what it did (rule 5) and returns
/// [`Error::Cancelled`](crate::Error::Cancelled). A single `fallocate` call is not
/// interrupted; it is short next to the write path.
///
/// ```
/// use disk_reserve::{CancelToken, Error, Reserve, ReserveConfig, SimFs};
///
/// let fs = SimFs::with_home(1 << 30, "/srv/app");
/// let token = CancelToken::new();
/// let reserve = Reserve::new(fs.clone(), "/srv/app", ReserveConfig::default())?
///     .cancel_token(token.clone());
/// token.cancel(); // e.g. from a SIGINT handler's thread
/// assert!(matches!(reserve.ensure(), Err(Error::Cancelled { .. })));
/// assert_eq!(fs.lookup("/srv/app/.reserve")?, None); // nothing left behind
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Asks every call holding this token to stop at its next check. Cannot be undone.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](CancelToken::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
