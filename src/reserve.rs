//! [`Reserve`]: the lifecycle — `ensure`, `release`, `status` — over one home directory.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};

use crate::decision::{Condition, Observed, Plan, decide, decide_early};
use crate::error::{Error, Operation, Result};
use crate::record::{Remembered, record_name};
use crate::{
    CancelToken, DirHandle, DirLock, FileHandle, HostFs, OpenOptions, ReserveConfig, Space,
    Strategy,
};

/// How many bytes `ensure` writes between two progress reports on the write path.
/// Not part of the stable API: public for tests that size a reserve in chunks.
#[doc(hidden)]
pub const WRITE_CHUNK_BYTES: u64 = 32 << 20;

/// How often an `EINTR` is retried before it is reported.
const EINTR_RETRIES: usize = 64;

/// How many times `ensure` re-reads a reserve that changed between looking at it and
/// opening it before it gives up with [`Error::Changed`].
const CHANGED_RETRIES: usize = 8;

/// The first and the longest pause between two tries of the home's lock.
const LOCK_POLL_FIRST: Duration = Duration::from_millis(1);
const LOCK_POLL_MAX: Duration = Duration::from_millis(50);
/// How long `ensure` and `release` wait at most for late frees to show.
const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// How long a wait for the lock lasts before it is logged.
const LOCK_WAIT_WARN: Duration = Duration::from_secs(1);

/// What `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ensured {
    /// The reserve was already complete; nothing was touched (no lock, no `statvfs`).
    Present {
        /// Bytes the reserve holds.
        allocated_bytes: u64,
    },
    /// There was no reserve; it was created.
    Created {
        /// Bytes the new reserve holds.
        allocated_bytes: u64,
    },
    /// A partial or sparse reserve was completed.
    ToppedUp {
        /// Bytes it held before.
        from_allocated_bytes: u64,
        /// Bytes it holds now.
        allocated_bytes: u64,
    },
    /// A reserve longer than configured was cut down to the size (rule 9).
    Shrunk {
        /// Its length before.
        from_len: u64,
        /// Bytes it holds now.
        allocated_bytes: u64,
    },
    /// Too little free space to allocate and keep the headroom; nothing was changed
    /// (rule 4). Try again once space has been freed.
    Deferred {
        /// Free bytes seen.
        free_bytes: u64,
        /// Free bytes needed: what was missing plus the headroom.
        needed_bytes: u64,
        /// Why: too little free space, a quota, or the allocation ran out of space.
        reason: DeferReason,
    },
}

/// Why `ensure` deferred: in every case "not now", never an error (rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum DeferReason {
    /// Free space (after flushing pending frees) is below what is missing plus the
    /// headroom.
    LowSpace,
    /// The allocation met `EDQUOT`: a quota `statvfs` does not show (btrfs qgroups, a
    /// project quota on another path). Rolled back.
    Quota,
    /// The allocation met `ENOSPC`: another writer took the space meanwhile, or the
    /// filesystem keeps back more than it said. Rolled back.
    RanOut,
}

impl DeferReason {
    /// The CLI contract's `reason`: `low_space`, `quota`, `ran_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::LowSpace => "low_space",
            DeferReason::Quota => "quota",
            DeferReason::RanOut => "ran_out",
        }
    }
}

impl Ensured {
    /// The outcome's name in the CLI contract: `present`, `created`, `topped_up`,
    /// `shrunk`, `deferred`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ensured::Present { .. } => "present",
            Ensured::Created { .. } => "created",
            Ensured::ToppedUp { .. } => "topped_up",
            Ensured::Shrunk { .. } => "shrunk",
            Ensured::Deferred { .. } => "deferred",
        }
    }

    /// Bytes the reserve holds after the call; `None` when deferred.
    pub fn allocated_bytes(&self) -> Option<u64> {
        match *self {
            Ensured::Present { allocated_bytes }
            | Ensured::Created { allocated_bytes }
            | Ensured::ToppedUp {
                allocated_bytes, ..
            }
            | Ensured::Shrunk {
                allocated_bytes, ..
            } => Some(allocated_bytes),
            Ensured::Deferred { .. } => None,
        }
    }
}

/// What `release` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Released {
    /// The reserve was removed (rule 8).
    Released {
        /// What removing it was expected to give back: its allocated bytes less those
        /// shared with another file or a snapshot (rule 1); 0 for a name of a file with
        /// other names.
        releasable_bytes: u64,
        /// What the filesystem's free space gained, measured after flushing pending frees
        /// (0 when the free space could not be read). Less than `releasable_bytes` when
        /// other writers took space meanwhile or the filesystem still holds the blocks.
        freed_bytes: u64,
    },
    /// There was no reserve.
    Absent,
}

impl Released {
    /// The outcome's name in the CLI contract: `released` or `absent`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Released::Released { .. } => "released",
            Released::Absent => "absent",
        }
    }
}

/// What `status` saw. Reading it changes nothing and takes no lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// What is at the reserve path.
    pub observed: Observed,
    /// Its condition against the configured size.
    pub condition: Condition,
    /// The configured size, resolved.
    pub size_bytes: u64,
    /// The configured headroom, resolved.
    pub headroom_bytes: u64,
    /// The filesystem's free and total bytes.
    pub space: Space,
    /// What an `ensure` would do now.
    pub plan: Plan,
}

/// What [`Reserve::ensure_report`] returns: the outcome and the figures its decision used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnsureReport {
    /// What `ensure` did.
    pub outcome: Ensured,
    /// The configured size, resolved.
    pub size_bytes: u64,
    /// The configured headroom, resolved.
    pub headroom_bytes: u64,
    /// The filesystem's space: for a deferral, what the decision saw; otherwise read on
    /// the same open home after the call acted.
    pub space: Space,
    /// Bytes the reserve holds after the call.
    pub allocated_bytes: u64,
}

/// One `ensure`'s result inside the crate: the outcome and the sizes and space it used.
struct Done {
    outcome: Ensured,
    size_bytes: u64,
    headroom_bytes: u64,
    space: Option<Space>,
}

/// A progress callback for long allocations: `(bytes done, bytes to do)`.
type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

/// A callback run once when a call has waited a second for the home's lock.
type LockWaitFn = dyn Fn() + Send + Sync;

/// The operator hint's wording: `(absolute reserve path, bytes it holds)`.
type HintFn = dyn Fn(&Utf8Path, Option<u64>) -> String + Send + Sync;

/// A structural disk reserve in one home directory.
///
/// Every call opens the home directory once and works relative to that open directory,
/// and on the reserve through one open descriptor (rule 13): renaming or re-pointing the
/// home, or swapping the file, during a call cannot redirect any of it.
///
/// ```
/// use disk_reserve::{Ensured, Released, Reserve, ReserveConfig, SimFs};
/// let fs = SimFs::with_home(1 << 30, "/srv/app");
/// let reserve = Reserve::new(fs.clone(), "/srv/app", ReserveConfig::default()).unwrap();
/// assert!(matches!(reserve.ensure().unwrap(), Ensured::Created { .. }));
/// assert!(matches!(reserve.ensure().unwrap(), Ensured::Present { .. }));
/// assert_eq!(
///     reserve.release().unwrap(),
///     Released::Released { releasable_bytes: 64 << 20, freed_bytes: 64 << 20 }
/// );
/// ```
///
/// # Blocking
///
/// Every call is synchronous and may block the calling thread: [`ensure`](Reserve::ensure)
/// and [`release`](Reserve::release) wait for the home's `flock` (held by another
/// `ensure`, as long as it takes unless [`lock_timeout`](Reserve::lock_timeout) bounds
/// it), `fsync` the reserve and the directory, write up to the whole size on a filesystem
/// without `fallocate`, and sleep up to [`settle_time`](Reserve::settle_time) waiting for
/// late frees; [`status`](Reserve::status) and
/// [`out_of_space_hint`](Reserve::out_of_space_hint) do a few metadata system calls, which
/// a slow or hung filesystem (NFS) can stretch. In an async runtime, run them on its
/// blocking pool — the reserve is `Send + Sync`, so share it in an `Arc`:
///
/// ```
/// use std::sync::Arc;
/// use disk_reserve::{RealFs, Reserve, ReserveConfig};
/// # let dir = tempfile::tempdir().unwrap();
/// # let home = dir.path().to_owned();
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let reserve = Arc::new(Reserve::new(RealFs::new(), home, ReserveConfig::with_size_bytes(1 << 20))?);
/// let ensured = tokio::task::spawn_blocking({
///     let reserve = Arc::clone(&reserve);
///     move || reserve.ensure()
/// })
/// .await
/// .expect("ensure panicked")?;
/// println!("disk reserve: {}", ensured.as_str());
/// # Ok::<(), disk_reserve::Error>(())
/// # }).unwrap();
/// ```
///
/// `examples/tokio_service.rs` is a whole service built this way.
pub struct Reserve<F: HostFs> {
    fs: F,
    home: Utf8PathBuf,
    name: String,
    path: Utf8PathBuf,
    config: ReserveConfig,
    progress: Option<Arc<ProgressFn>>,
    cancel: CancelToken,
    settle: Duration,
    lock_timeout: Option<Duration>,
    on_lock_wait: Option<Arc<LockWaitFn>>,
    hint: Option<Arc<HintFn>>,
    remember: bool,
}

impl<F: HostFs> fmt::Debug for Reserve<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reserve")
            .field("fs", &self.fs)
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What the extent map said of the reserve.
#[derive(Debug, Clone, Copy)]
enum Extents {
    /// This many bytes are shared with another file or a snapshot.
    Shared(u64),
    /// The filesystem cannot say (or never shares): `st_blocks` is the truth.
    Unknown,
    /// The file changed between the look and the open.
    Changed,
}

/// How a fill ended, when it did not fail.
#[derive(Debug, Clone, Copy)]
enum Filled {
    /// Laid down: the reserve holds this many bytes.
    Done(u64),
    /// The file changed between the look and the open: look again.
    Changed,
    /// The allocation met `ENOSPC` or `EDQUOT` and was rolled back.
    RanOut(DeferReason),
}

/// Whether opening the reserve failed because what is at the path is no longer what was
/// looked at: removed (`ENOENT`), or replaced by a symlink (`ELOOP`), a directory
/// (`EISDIR`), a fifo or socket (`ENXIO`) or a device (`EINVAL`). The caller looks again.
fn changed_since_looked(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT | libc::ELOOP | libc::EISDIR | libc::ENXIO | libc::EINVAL)
    )
}

/// `ENOSPC` → [`DeferReason::RanOut`], `EDQUOT` → [`DeferReason::Quota`].
fn out_of_space(error: &io::Error) -> Option<DeferReason> {
    match error.raw_os_error() {
        Some(libc::ENOSPC) => Some(DeferReason::RanOut),
        Some(libc::EDQUOT) => Some(DeferReason::Quota),
        _ => None,
    }
}

/// How to undo a fill that failed (rule 5).
#[derive(Debug, Clone, Copy)]
enum Undo {
    /// The call created the file: remove it.
    Remove,
    /// The call built a replacement beside the reserve: remove it.
    RemoveReplacement,
    /// The file was `from_len` long and its blocks were the reserve's own: cut it back.
    CutTo(u64),
}

impl<F: HostFs> Reserve<F> {
    /// A reserve at `home/<file name>` on `fs`. Touches nothing yet.
    ///
    /// # Errors
    /// [`Error::NonUtf8Path`] when `home` is not UTF-8, [`Error::InvalidFileName`] when
    /// the configured name is not a single path component.
    pub fn new(fs: F, home: impl AsRef<Path>, config: ReserveConfig) -> Result<Self> {
        let home = home.as_ref();
        let home = Utf8PathBuf::try_from(home.to_path_buf()).map_err(|_| Error::NonUtf8Path {
            path: home.to_path_buf(),
        })?;
        let name = config.file_name_str().to_owned();
        if crate::host_fs::check_name(&name).is_err() {
            return Err(Error::InvalidFileName { name });
        }
        let mut path = Utf8PathBuf::with_capacity(home.as_str().len() + 1 + name.len());
        path.push(&home);
        path.push(&name);
        Ok(Reserve {
            fs,
            home,
            name,
            path,
            config,
            progress: None,
            cancel: CancelToken::new(),
            settle: DEFAULT_SETTLE,
            lock_timeout: None,
            on_lock_wait: None,
            hint: None,
            remember: false,
        })
    }

    /// Calls `report(done, total)` after each chunk the write path writes.
    pub fn on_progress(mut self, report: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(report));
        self
    }

    /// Lets the caller stop a running `ensure` through `token` (rule 14): it stops
    /// between write chunks or while waiting for the lock, rolls back, and returns
    /// [`Error::Cancelled`].
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// How long, at most, `ensure` (on the way to a deferral, and reporting one after a
    /// rolled-back allocation) and `release` (measuring what it gave back) wait for frees
    /// the filesystem accounts late; default one second.
    /// Waiting stops as soon as the space is there, and early when the filesystem stops
    /// giving space back. `Duration::ZERO` still flushes and reads twice, without sleeping.
    pub fn settle_time(mut self, limit: Duration) -> Self {
        self.settle = limit;
        self
    }

    /// Bounds how long `ensure` and `release` wait for the home's lock (rule 8, 10):
    /// past `limit` they give up with [`Error::LockTimeout`], having changed nothing.
    /// `None` (the default) waits as long as it takes.
    pub fn lock_timeout(mut self, limit: Option<Duration>) -> Self {
        self.lock_timeout = limit;
        self
    }

    /// Calls `waiting()` once when a call has waited a second for the home's lock (held
    /// by another `ensure`, or by a program that `flock`s its home) — for telling the
    /// operator who holds it. Without one, the wait is logged as a warning.
    pub fn on_lock_wait(mut self, waiting: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_lock_wait = Some(Arc::new(waiting));
        self
    }

    /// Words the operator hint ([`out_of_space_hint`](Reserve::out_of_space_hint)) with
    /// `hint(reserve_path, held_bytes)`: the reserve's absolute path and the bytes it
    /// holds now (`None` or `Some(0)`: there is no reserve to delete) — for a program
    /// that ships its own command to release the reserve.
    ///
    /// ```
    /// use disk_reserve::{Reserve, ReserveConfig, SimFs};
    /// let fs = SimFs::with_home(1 << 30, "/srv/app");
    /// let reserve = Reserve::new(fs, "/srv/app", ReserveConfig::default())?
    ///     .out_of_space_hint_with(|_path, held| match held {
    ///         Some(bytes) if bytes > 0 => format!("hint: run `myapp release-reserve` to free {bytes} bytes"),
    ///         _ => "hint: the disk is full; free space by hand".to_owned(),
    ///     });
    /// assert_eq!(reserve.out_of_space_hint(), "hint: the disk is full; free space by hand");
    /// # Ok::<(), disk_reserve::Error>(())
    /// ```
    pub fn out_of_space_hint_with(
        mut self,
        hint: impl Fn(&Utf8Path, Option<u64>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.hint = Some(Arc::new(hint));
        self
    }

    /// After each `ensure` that succeeds (deferring included), keeps the configured size
    /// and headroom as the home's record (`<file name>.conf`, see [`Remembered`]), for a
    /// later call to find with [`remembered`](Reserve::remembered). Off by default. The
    /// record is written only when it changes; failing to write it (a full disk) is a
    /// warning, never the call's error.
    pub fn remember(mut self, on: bool) -> Self {
        self.remember = on;
        self
    }

    /// The size and headroom last kept for this home by an `ensure` with
    /// [`remember`](Reserve::remember) on; `None` when there is no record. Needs no free
    /// space, survives `release`.
    ///
    /// # Errors
    /// The home is missing or not a directory; the record cannot be read or is damaged
    /// (`InvalidData`); the backend keeps no file contents (`EOPNOTSUPP`, [`SimFs`](crate::SimFs)).
    pub fn remembered(&self) -> Result<Option<Remembered>> {
        let dir = self.open_home()?;
        let name = record_name(&self.name);
        crate::record::read(&*dir, &name)
            .map_err(|e| Error::io(Operation::ReadRecord, self.home.join(&name), e))
    }

    /// Keeps the configuration as the home's record when [`remember`](Reserve::remember)
    /// is on and it changed; best effort, under the home's lock.
    fn keep_record(&self, dir: &dyn DirHandle) {
        if !self.remember {
            return;
        }
        let name = record_name(&self.name);
        let record = Remembered::of(&self.config);
        if let Ok(Some(old)) = crate::record::read(dir, &name)
            && old == record
        {
            return;
        }
        let kept = self.lock_home(dir).and_then(|_lock| {
            crate::record::write(dir, &name, record)
                .map_err(|e| Error::io(Operation::Create, self.home.join(&name), e))
        });
        match kept {
            Ok(_) => {
                tracing::debug!(path = %self.home.join(&name), "kept the size and headroom for this home")
            }
            Err(error) => {
                tracing::warn!(%error, "could not keep the size and headroom for this home; a later ensure without a size will not know them")
            }
        }
    }

    /// The reserve file's path.
    pub fn path(&self) -> &Utf8Path {
        &self.path
    }

    /// The home directory.
    pub fn home(&self) -> &Utf8Path {
        &self.home
    }

    /// The configuration.
    pub fn config(&self) -> &ReserveConfig {
        &self.config
    }

    /// The filesystem backend.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// Makes the reserve exist, complete, at the configured size — or defers.
    ///
    /// A complete reserve costs opening the home, one `fstatat` (plus one `fstatvfs` when
    /// the size is a share of the filesystem) and takes no lock. Otherwise, under an
    /// exclusive lock on the home directory, it shrinks an oversized reserve, and creates
    /// or completes a missing, partial or sparse one when the free space allows it without
    /// going below the headroom; when it does not, it changes nothing and returns
    /// [`Ensured::Deferred`]. A file with other names at the path is never written: the
    /// name is replaced by a fresh reserve (rule 7).
    ///
    /// # Errors
    /// The home is missing or not a directory; something not a regular file is at the
    /// reserve path (left untouched); the size is 0 or larger than the filesystem; the
    /// filesystem is read-only or refuses permission; the call was cancelled; an I/O
    /// error. After an error the reserve is as it was found: a file this call created is
    /// removed, a file it grew is cut back to its old length.
    ///
    /// Blocks: it takes a `flock`, `fsync`s, may write the whole size and sleep up to the
    /// [`settle_time`](Reserve::settle_time); in async code call it from
    /// `spawn_blocking` (see [Blocking](Reserve#blocking)).
    pub fn ensure(&self) -> Result<Ensured> {
        let dir = self.open_home()?;
        let done = self.ensure_in(&*dir)?;
        self.keep_record(&*dir);
        Ok(done.outcome)
    }

    /// [`ensure`](Reserve::ensure), returning with the outcome the figures its decision
    /// used — for a report that must not contradict itself (a deferral shows the free
    /// space it deferred on, not one read later). The space of an outcome other than a
    /// deferral is read after the call acted, on the same open home directory: renaming
    /// or re-pointing the home meanwhile cannot make the report describe another one.
    /// After a call that laid down, topped up or cut the reserve, the space is read once
    /// the filesystem has committed it (`syncfs`, then reads until two agree, within the
    /// [`settle_time`](Reserve::settle_time)): btrfs counts written and allocated data
    /// in `statvfs` only at a transaction commit, which `fsync` does not force.
    ///
    /// # Errors
    /// As [`ensure`](Reserve::ensure); reading the free space afterwards may fail too.
    pub fn ensure_report(&self) -> Result<EnsureReport> {
        let dir = self.open_home()?;
        let done = self.ensure_in(&*dir)?;
        self.keep_record(&*dir);
        let space = match (done.outcome, done.space) {
            (Ensured::Deferred { .. }, Some(space)) => space,
            (Ensured::Present { .. }, _) => self.space(&*dir)?,
            // It changed the disk: btrfs shows what it took or gave back only once a
            // transaction commits, which `fsync` does not force (64 MiB written and synced
            // showed as 0 taken; a `fallocate` right after a `release` as 64 MiB too free).
            _ => self.steady_space(&*dir)?,
        };
        let allocated_bytes = match done.outcome.allocated_bytes() {
            Some(bytes) => bytes,
            None => self.observe(&*dir)?.allocated_bytes(),
        };
        Ok(EnsureReport {
            outcome: done.outcome,
            size_bytes: done.size_bytes,
            headroom_bytes: done.headroom_bytes,
            space,
            allocated_bytes,
        })
    }

    /// `ensure` in the home directory `dir`, opened once by the caller.
    fn ensure_in(&self, dir: &dyn DirHandle) -> Result<Done> {
        let early_space = if self.config.needs_total() {
            Some(self.space(dir)?)
        } else {
            None
        };
        let (size, headroom) = self.resolve_sizes(early_space)?;
        let done = |outcome, space| Done {
            outcome,
            size_bytes: size,
            headroom_bytes: headroom,
            space,
        };
        let observed = self.observe(dir)?;
        if let Some(Plan::Nothing) = decide_early(observed, size) {
            tracing::debug!(path = %self.path, allocated_bytes = observed.allocated_bytes(), outcome = "present", "reserve is complete");
            let outcome = Ensured::Present {
                allocated_bytes: observed.allocated_bytes(),
            };
            return Ok(done(outcome, early_space));
        }

        let _lock = self.lock_home(dir)?;
        self.tidy(dir);
        let mut shrunk_from = None;
        let mut last_space = early_space;
        for _ in 0..CHANGED_RETRIES {
            let observed = self.observe(dir)?;
            let early = decide_early(observed, size);
            let plan = if let Some(plan) = early {
                plan
            } else {
                let mut space = self.space(dir)?;
                // Before any space decision: a read-only filesystem is an error, never
                // "not now" (rule 4, 11).
                if space.read_only {
                    return Err(Error::ReadOnly {
                        op: Operation::Allocate,
                        path: self.path.clone(),
                        source: io::Error::from_raw_os_error(libc::EROFS),
                    });
                }
                self.check_fits(size, space)?;
                self.check_can_ever_fit(size, headroom, space)?;
                let mut plan = decide(observed, size, headroom, space);
                if let Plan::Defer { needed_bytes, .. } = plan {
                    // On the way to a deferral only: frees an unlink left pending (XFS's
                    // inode worker, btrfs's transaction) may be what is missing.
                    space = self.settled_space(dir, needed_bytes)?;
                    plan = decide(observed, size, headroom, space);
                }
                last_space = Some(space);
                plan
            };
            match plan {
                Plan::Nothing => {
                    let allocated_bytes = observed.allocated_bytes();
                    let outcome = match shrunk_from {
                        Some(from_len) => {
                            tracing::info!(path = %self.path, from_len, size_bytes = size, allocated_bytes, outcome = "shrunk", "shrank reserve to its configured size");
                            Ensured::Shrunk {
                                from_len,
                                allocated_bytes,
                            }
                        }
                        None => Ensured::Present { allocated_bytes },
                    };
                    return Ok(done(outcome, last_space));
                }
                Plan::Refuse(kind) => {
                    return Err(Error::NotARegularFile {
                        path: self.path.clone(),
                        kind,
                    });
                }
                Plan::Shrink { from_len } => {
                    let Some(file) = self.open_as_observed(dir, observed)? else {
                        continue;
                    };
                    self.truncate(&*file, size)?;
                    self.sync_file(&*file)?;
                    // As after a top-up: the name may not be durable yet (rule 6).
                    dir.sync().map_err(|e| self.err(Operation::SyncDir, e))?;
                    shrunk_from.get_or_insert(from_len);
                }
                Plan::Defer {
                    free_bytes,
                    needed_bytes,
                } => {
                    tracing::warn!(
                        path = %self.path, free_bytes, needed_bytes, size_bytes = size, headroom_bytes = headroom,
                        outcome = "deferred",
                        "not enough free space to lay down the disk reserve without going below the headroom; deferring"
                    );
                    let outcome = Ensured::Deferred {
                        free_bytes,
                        needed_bytes,
                        reason: DeferReason::LowSpace,
                    };
                    return Ok(done(outcome, last_space));
                }
                Plan::Create | Plan::Replace { .. } | Plan::Extend { .. } | Plan::Refill { .. } => {
                    let allocated_bytes = match self.fill(dir, plan, observed, size)? {
                        Filled::Done(allocated_bytes) => allocated_bytes,
                        Filled::Changed => continue,
                        Filled::RanOut(reason) => {
                            // Rolled back already: "not now", not an error (rule 4). The
                            // space is read once the rollback's frees show, that is once it
                            // stops moving: enough free space is not the test, since the
                            // report must count the blocks the rollback gave back (on XFS
                            // `syncfs` does not show them, a second `statvfs` does).
                            let needed_bytes =
                                observed.missing_bytes(size).saturating_add(headroom);
                            let space = self.steady_space(dir).ok().or(last_space);
                            let free_bytes = space.map_or(0, |s| s.free_bytes);
                            tracing::warn!(
                                path = %self.path, free_bytes, needed_bytes, reason = reason.as_str(),
                                outcome = "deferred",
                                "the allocation ran out of space or quota and was rolled back; deferring"
                            );
                            let outcome = Ensured::Deferred {
                                free_bytes,
                                needed_bytes,
                                reason,
                            };
                            return Ok(done(outcome, space));
                        }
                    };
                    let outcome = if matches!(plan, Plan::Create | Plan::Replace { .. }) {
                        Ensured::Created { allocated_bytes }
                    } else {
                        Ensured::ToppedUp {
                            from_allocated_bytes: observed.allocated_bytes(),
                            allocated_bytes,
                        }
                    };
                    tracing::info!(path = %self.path, size_bytes = size, allocated_bytes, outcome = outcome.as_str(), "disk reserve laid down");
                    return Ok(done(outcome, last_space));
                }
            }
        }
        Err(Error::Changed {
            path: self.path.clone(),
        })
    }

    /// Removes the reserve, giving its blocks back to the filesystem (rule 8).
    ///
    /// Needs no free space, no new inode and no `statvfs`: it is what an operator runs on
    /// a full disk. No reserve is not an error: it returns [`Released::Absent`]. A file
    /// with other names at the path loses only this name and frees nothing (rule 7).
    ///
    /// # Errors
    /// The home is missing or not a directory; something not a regular file is at the
    /// reserve path (left untouched); `unlink` failed (read-only, permission, `EBUSY`…).
    ///
    /// Blocks: it takes a `flock`, `fsync`s the home and sleeps up to the
    /// [`settle_time`](Reserve::settle_time) measuring what it gave back; in async code call
    /// it from `spawn_blocking` (see [Blocking](Reserve#blocking)).
    pub fn release(&self) -> Result<Released> {
        self.release_in(true)
    }

    /// [`release`](Reserve::release) without taking the home's lock: for an operator
    /// when the lock is held for good (a program that `flock`s its home as an instance
    /// lock, a hung `ensure`). Unlinking is still safe; what it gives up is the ordering
    /// with a concurrent `ensure`, which may be mid-write and then finish its reserve
    /// under another name's blocks or fail and roll back, and the tidying of a replacement
    /// an interrupted `ensure` left behind.
    ///
    /// # Errors
    /// As [`release`](Reserve::release), without [`Error::LockTimeout`].
    pub fn release_forced(&self) -> Result<Released> {
        self.release_in(false)
    }

    fn release_in(&self, lock: bool) -> Result<Released> {
        let dir = self.open_home()?;
        let _lock = if lock {
            let lock = self.lock_home(&*dir)?;
            self.tidy(&*dir);
            Some(lock)
        } else {
            None
        };
        let observed = self.observe(&*dir)?;
        let releasable_bytes = match observed {
            Observed::Absent => {
                tracing::debug!(path = %self.path, outcome = "absent", "no reserve to release");
                return Ok(Released::Absent);
            }
            Observed::Other(kind) => {
                return Err(Error::NotARegularFile {
                    path: self.path.clone(),
                    kind,
                });
            }
            // Rule 7: the file's other names keep its blocks; removing this name frees
            // nothing, and it is all release may do to it.
            Observed::HardLinked { links } => {
                tracing::warn!(path = %self.path, links, "the reserve path is a hard link to a file with other names: removing only this name, which frees nothing");
                0
            }
            Observed::Shared {
                allocated_bytes,
                releasable_bytes,
                ..
            } => {
                tracing::warn!(path = %self.path, allocated_bytes, releasable_bytes, "the reserve shares blocks with another file or a snapshot: removing it gives back only its own");
                releasable_bytes
            }
            Observed::Regular { .. } => observed.releasable_bytes(),
        };
        // The baseline of the measured gain, once earlier frees show, so the gain is this
        // release's own (seen on XFS: a file deleted just before counted 16 MiB into a
        // release that freed nothing). Reading it needs no free space.
        let before = self.steady_space(&*dir).ok();
        dir.remove_file(&self.name)
            .map_err(|e| self.err(Operation::Remove, e))?;
        // Best effort: at zero free some filesystems cannot commit the directory yet; the
        // unlink itself has happened and the space is back.
        if let Err(error) = dir.sync() {
            tracing::warn!(path = %self.home, %error, "could not sync the home directory after releasing the reserve");
        }
        let freed_bytes = match before {
            Some(before) => {
                let want = before.free_bytes.saturating_add(releasable_bytes);
                match self.settled_space(&*dir, want) {
                    Ok(after) => after.free_bytes.saturating_sub(before.free_bytes),
                    Err(_) => 0,
                }
            }
            None => 0,
        };
        tracing::info!(path = %self.path, releasable_bytes, freed_bytes, outcome = "released", "disk reserve released");
        Ok(Released::Released {
            releasable_bytes,
            freed_bytes,
        })
    }

    /// Reads the reserve's state, the free space, and what `ensure` would do. Changes
    /// nothing and takes no lock.
    ///
    /// # Errors
    /// The home is missing or not a directory; `fstatat` or `fstatvfs` failed.
    ///
    /// Blocks on system calls (no lock, no sleep); on a hung filesystem they can take
    /// long, so async code calls it from `spawn_blocking` too (see
    /// [Blocking](Reserve#blocking)).
    pub fn status(&self) -> Result<Status> {
        let dir = self.open_home()?;
        let space = self.space(&*dir)?;
        let (size_bytes, headroom_bytes) = self.resolve_sizes(Some(space))?;
        let observed = self.observe(&*dir)?;
        Ok(Status {
            observed,
            condition: observed.condition(size_bytes),
            size_bytes,
            headroom_bytes,
            space,
            plan: decide(observed, size_bytes, headroom_bytes, space),
        })
    }

    /// What `lstat` says of the reserve path now (`None` when nothing is there).
    ///
    /// # Errors
    /// The home is missing or not a directory; `fstatat` failed.
    pub fn probe(&self) -> Result<Option<crate::Probe>> {
        let dir = self.open_home()?;
        dir.probe(&self.name)
            .map_err(|e| self.err(Operation::Probe, e))
    }

    /// The free and total space of the home's filesystem now.
    ///
    /// # Errors
    /// The home is missing or not a directory; `fstatvfs` failed.
    pub fn space_now(&self) -> Result<Space> {
        let dir = self.open_home()?;
        self.space(&*dir)
    }

    /// The line telling an operator how to get room back, for a program to print when one
    /// of its errors [`is_out_of_space`](crate::is_out_of_space). It names the reserve's
    /// absolute path and the bytes it really holds now:
    ///
    /// ```
    /// use disk_reserve::{Reserve, ReserveConfig, SimFs};
    /// let fs = SimFs::with_home(1 << 30, "/srv/app");
    /// let reserve = Reserve::new(fs, "/srv/app", ReserveConfig::default())?;
    /// reserve.ensure()?;
    /// assert_eq!(
    ///     reserve.out_of_space_hint(),
    ///     "hint: the disk is full; delete the disk reserve /srv/app/.reserve to free 64.0 MiB for the cleanup"
    /// );
    /// # Ok::<(), disk_reserve::Error>(())
    /// ```
    ///
    /// A program that ships its own commands words it with
    /// [`out_of_space_hint_with`](Reserve::out_of_space_hint_with).
    pub fn out_of_space_hint(&self) -> String {
        let held = self
            .open_home()
            .and_then(|dir| self.observe(&*dir))
            .ok()
            .map(Observed::allocated_bytes);
        let path = self.absolute_path();
        match &self.hint {
            Some(hint) => hint(&path, held),
            None => crate::classify::default_hint(&path, held),
        }
    }

    /// The reserve's path made absolute against the working directory (as given when that
    /// cannot be read or the result is not UTF-8).
    fn absolute_path(&self) -> Utf8PathBuf {
        if self.path.is_absolute() {
            return self.path.clone();
        }
        std::path::absolute(&self.path)
            .ok()
            .and_then(|p| Utf8PathBuf::try_from(p).ok())
            .unwrap_or_else(|| self.path.clone())
    }

    /// Opens the existing reserve for writing and checks, on the open descriptor, that it
    /// is still what `observed` saw. `None` when it changed in between (another process
    /// swapped, linked, or cut it): the caller looks again.
    fn open_as_observed(
        &self,
        dir: &dyn DirHandle,
        observed: Observed,
    ) -> Result<Option<Box<dyn FileHandle>>> {
        let file = match dir.open_file(&self.name, OpenOptions::write()) {
            Ok(file) => file,
            Err(e) if changed_since_looked(&e) => return Ok(None),
            Err(e) => return Err(self.err(Operation::Open, e)),
        };
        let now = file.probe().map_err(|e| self.err(Operation::Probe, e))?;
        Ok((Observed::from_probe(Some(now)) == observed).then_some(file))
    }

    /// Allocates the reserve according to `plan`; on any failure restores what it found.
    /// `None` when the file changed before it could be opened.
    fn fill(
        &self,
        dir: &dyn DirHandle,
        plan: Plan,
        observed: Observed,
        size: u64,
    ) -> Result<Filled> {
        let (file, from, undo) = match plan {
            Plan::Create => {
                let file = match dir.open_file(&self.name, OpenOptions::create_new()) {
                    Ok(file) => file,
                    // No inode (or a quota on inodes): nothing was changed.
                    Err(e) if out_of_space(&e).is_some() => {
                        return Ok(Filled::RanOut(out_of_space(&e).expect("checked")));
                    }
                    Err(e) => return Err(self.err(Operation::Create, e)),
                };
                (file, 0, Undo::Remove)
            }
            Plan::Replace {
                links,
                shared_bytes,
            } => {
                // Rule 7: the file at the path has other names (a database, a hard-link
                // backup): never write it. A fresh reserve is built beside it and renamed
                // over the name — the other names keep the data, and a failure leaves the
                // name as it was.
                if links > 1 {
                    tracing::warn!(path = %self.path, links, "the reserve path is a hard link to a file with other names; replacing the name with a fresh reserve and leaving the file's data to its other names");
                } else {
                    tracing::warn!(path = %self.path, shared_bytes, "the reserve shares blocks with another file or a snapshot (a reflink copy, `cp -a` on XFS or btrfs); replacing it with a fresh reserve of its own");
                }
                let temp = self.temp_name();
                self.remove_stale_replacement(dir)?;
                let file = match dir.open_file(&temp, OpenOptions::create_new()) {
                    Ok(file) => file,
                    Err(e) if out_of_space(&e).is_some() => {
                        return Ok(Filled::RanOut(out_of_space(&e).expect("checked")));
                    }
                    Err(e) => return Err(Error::io(Operation::Create, self.home.join(&temp), e)),
                };
                (file, 0, Undo::RemoveReplacement)
            }
            Plan::Extend { from_len } | Plan::Refill { from_len } => {
                let Some(file) = self.open_as_observed(dir, observed)? else {
                    return Ok(Filled::Changed);
                };
                let from = if let Plan::Refill { .. } = plan {
                    0
                } else {
                    from_len
                };
                (file, from, Undo::CutTo(from_len))
            }
            _ => unreachable!("fill is only called for allocating plans"),
        };
        // Backups need not carry the reserve's bytes (a write-path reserve is incompressible
        // data): best effort, where the filesystem has the flag.
        if let Err(error) = file.set_no_dump() {
            tracing::debug!(path = %self.path, %error, "could not mark the reserve no-dump");
        }
        match self.fill_file(dir, &*file, plan, from, size) {
            Ok(allocated_bytes) => Ok(Filled::Done(allocated_bytes)),
            Err(error) => {
                let rolled_back = self.roll_back(dir, &*file, undo, plan);
                // ENOSPC or EDQUOT while allocating or writing: another writer, or a quota
                // statvfs did not show. Rolled back, so "not now" (rule 4); if the
                // rollback failed too, the error is reported as it is.
                let ran_out = match &error {
                    Error::Io {
                        op: Operation::Allocate | Operation::Write,
                        source,
                        ..
                    } => out_of_space(source),
                    _ => None,
                };
                match ran_out {
                    Some(reason) if rolled_back => Ok(Filled::RanOut(reason)),
                    _ => Err(error),
                }
            }
        }
    }

    /// The name a replacement reserve is built under before it is renamed over the
    /// reserve's name: `<name>.replacing`.
    fn temp_name(&self) -> String {
        const SUFFIX: &str = ".replacing";
        let mut temp = String::with_capacity(self.name.len() + SUFFIX.len());
        temp.push_str(&self.name);
        temp.push_str(SUFFIX);
        temp
    }

    /// Best effort, under the lock: removes a replacement an interrupted call left behind,
    /// so its blocks do not stay taken.
    fn tidy(&self, dir: &dyn DirHandle) {
        if let Err(error) = self.remove_stale_replacement(dir) {
            tracing::warn!(%error, "could not remove a replacement reserve left behind");
        }
    }

    /// Removes a replacement a crash left behind (only a regular file with one name: it
    /// can only be ours); anything else there is refused.
    fn remove_stale_replacement(&self, dir: &dyn DirHandle) -> Result<()> {
        let temp = self.temp_name();
        // The full path only names the replacement in an error or a log line: built then.
        let temp_path = || self.home.join(&temp);
        match dir
            .probe(&temp)
            .map_err(|e| Error::io(Operation::Probe, temp_path(), e))?
        {
            None => Ok(()),
            Some(p) if p.kind == crate::FileKind::Regular && p.links == 1 => {
                tracing::debug!(path = %temp_path(), "removing a replacement reserve an interrupted ensure left behind");
                dir.remove_file(&temp)
                    .map_err(|e| Error::io(Operation::Remove, temp_path(), e))
            }
            Some(p) => Err(Error::NotARegularFile {
                path: temp_path(),
                kind: p.kind,
            }),
        }
    }

    fn fill_file(
        &self,
        dir: &dyn DirHandle,
        file: &dyn FileHandle,
        plan: Plan,
        from: u64,
        size: u64,
    ) -> Result<u64> {
        self.check_cancel()?;
        if let Plan::Refill { .. } = plan {
            self.truncate(file, 0)?;
        }
        let strategy = self.config.strategy_kind();
        let write_from = match strategy {
            Strategy::Write => Some(from),
            Strategy::Fallocate | Strategy::Auto => {
                match retry_eintr(|| file.allocate(from, size - from)) {
                    Ok(()) => {
                        let allocated = self.allocated(file)?;
                        if allocated >= size {
                            None
                        } else if strategy == Strategy::Auto {
                            // Rule 2: fallocate "succeeded" without allocating (ZFS).
                            tracing::debug!(path = %self.path, allocated_bytes = allocated, size_bytes = size, "fallocate allocated no blocks; writing data");
                            Some(from)
                        } else {
                            return Err(Error::NotAllocated {
                                path: self.path.clone(),
                                allocated_bytes: allocated,
                                size_bytes: size,
                            });
                        }
                    }
                    Err(e) if strategy == Strategy::Auto && is_unsupported(&e) => {
                        tracing::debug!(path = %self.path, error = %e, "fallocate unsupported; writing data");
                        Some(from)
                    }
                    Err(e) => return Err(self.err(Operation::Allocate, e)),
                }
            }
        };
        if let Some(start) = write_from {
            self.write_range(file, start, size)?;
            // XFS keeps speculative preallocation past the end of a file being written: a
            // 128 MiB reserve held 249 MiB until XFS trimmed it minutes later, eating into
            // the headroom. Setting the length it already has gives those blocks back;
            // elsewhere it changes nothing. Housekeeping, so best effort (rule 2): fusefat
            // refuses it with EPERM after every byte was written.
            if let Err(error) = file.set_len(size) {
                tracing::debug!(path = %self.path, %error, "could not trim preallocation after writing; ignored");
            }
        }
        self.sync_file(file)?;
        let allocated = self.allocated(file)?;
        match plan {
            // A top-up syncs the home too: the name it completed may be one an earlier,
            // interrupted call created or renamed and never made durable (rule 6).
            Plan::Create | Plan::Extend { .. } | Plan::Refill { .. } => {
                dir.sync().map_err(|e| self.err(Operation::SyncDir, e))?;
            }
            Plan::Replace { .. } => {
                dir.rename(&self.temp_name(), &self.name)
                    .map_err(|e| self.err(Operation::Rename, e))?;
                // The name now holds the fresh reserve and the linked or shared file's
                // name is gone: there is nothing to go back to. A failed directory sync
                // only means a crash may bring the old name back (rule 6 allows the old
                // state), so it is a warning, not an error that would leave allocated
                // bytes behind.
                if let Err(error) = dir.sync() {
                    tracing::warn!(path = %self.home, %error, "could not sync the home directory after replacing a hard-linked or shared reserve; a crash may bring the old name back");
                }
            }
            _ => {}
        }
        Ok(allocated)
    }

    fn write_range(&self, file: &dyn FileHandle, start: u64, end: u64) -> Result<()> {
        let mut pos = start;
        while pos < end {
            self.check_cancel()?;
            let len = WRITE_CHUNK_BYTES.min(end - pos);
            retry_eintr(|| file.write_fill(pos, len)).map_err(|e| self.err(Operation::Write, e))?;
            pos += len;
            if let Some(report) = &self.progress {
                report(pos - start, end - start);
            }
        }
        Ok(())
    }

    /// Rule 5: undo a failed fill. Failures here are logged; the caller reports the
    /// error that caused the rollback.
    /// Whether it restored what it found.
    fn roll_back(
        &self,
        dir: &dyn DirHandle,
        file: &dyn FileHandle,
        undo: Undo,
        plan: Plan,
    ) -> bool {
        let result = match undo {
            Undo::Remove => dir.remove_file(&self.name).and_then(|()| dir.sync()),
            // Every step that can fail comes before the rename (a failed directory sync
            // after it is only a warning): the replacement is still under its own name.
            Undo::RemoveReplacement => dir.remove_file(&self.temp_name()).and_then(|()| dir.sync()),
            Undo::CutTo(from_len) => {
                let refill = matches!(plan, Plan::Refill { .. });
                let cut = if refill { file.set_len(0) } else { Ok(()) };
                cut.and_then(|()| file.set_len(from_len))
            }
        };
        match result {
            Ok(()) => {
                tracing::debug!(path = %self.path, "rolled back a failed ensure");
                true
            }
            Err(error) => {
                tracing::error!(path = %self.path, %error, "could not roll back a failed ensure");
                false
            }
        }
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            tracing::info!(path = %self.path, "ensure cancelled by the caller; rolling back");
            return Err(Error::Cancelled {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn resolve_sizes(&self, space: Option<Space>) -> Result<(u64, u64)> {
        let total = space.map_or(0, |s| s.total_bytes);
        let size = self.config.size_spec().resolve(total);
        if size == 0 {
            return Err(Error::ZeroSize {
                path: self.path.clone(),
            });
        }
        let headroom = self.config.headroom_spec().resolve(total);
        if let Some(space) = space {
            self.check_fits(size, space)?;
        }
        Ok((size, headroom))
    }

    /// A filesystem that reports no size at all (`f_blocks == 0`: some FUSE filesystems,
    /// fusefat on FAT32) cannot say: the allocation itself will.
    fn check_fits(&self, size: u64, space: Space) -> Result<()> {
        if space.total_bytes > 0 && size > space.total_bytes {
            return Err(Error::SizeExceedsFilesystem {
                path: self.path.clone(),
                size_bytes: size,
                total_bytes: space.total_bytes,
            });
        }
        Ok(())
    }

    /// Rule 4: a size plus headroom that can never fit in what an unprivileged writer can
    /// ever use is an error, not a deferral that would repeat forever.
    fn check_can_ever_fit(&self, size: u64, headroom: u64, space: Space) -> Result<()> {
        let needed = space.round_up(size).saturating_add(headroom);
        if space.total_bytes > 0 && needed > space.usable_bytes {
            return Err(Error::NeverFits {
                path: self.path.clone(),
                size_bytes: size,
                headroom_bytes: headroom,
                usable_bytes: space.usable_bytes,
            });
        }
        Ok(())
    }

    /// The free space once pending frees show: `syncfs` (btrfs frees at the commit it
    /// forces), then re-reads until `want` bytes are free, backing off while the figure
    /// still grows (XFS frees an unlinked file's blocks in a worker that a `statvfs` starts
    /// and does not wait for), for at most [`settle_time`](Reserve::settle_time).
    fn settled_space(&self, dir: &dyn DirHandle, want: u64) -> Result<Space> {
        if let Err(error) = dir.sync_fs() {
            tracing::debug!(path = %self.home, %error, "syncfs failed; reading the space anyway");
        }
        let mut space = self.space(dir)?;
        // A second read at once: the first may only have started the worker.
        if space.free_bytes < want {
            space = self.space(dir)?;
        }
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        // Until the space is there or the time is up: a filesystem may give space back
        // in steps with pauses between (seen on btrfs with compression).
        while space.free_bytes < want && started.elapsed() + pause <= self.settle {
            std::thread::sleep(pause);
            space = self.space(dir)?;
            pause = (pause * 4).min(Duration::from_millis(250));
        }
        Ok(space)
    }

    /// The free space once frees already made have shown: `syncfs`, then reads until two
    /// in a row agree, 1, 4, 16… ms apart (the first read may only have started XFS's
    /// worker), within [`settle_time`](Reserve::settle_time); with no time to wait, two
    /// reads at once.
    fn steady_space(&self, dir: &dyn DirHandle) -> Result<Space> {
        let _ = dir.sync_fs();
        let mut last = self.space(dir)?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if started.elapsed() + pause > self.settle {
                return self.space(dir);
            }
            std::thread::sleep(pause);
            let now = self.space(dir)?;
            if now.free_bytes == last.free_bytes {
                return Ok(now);
            }
            last = now;
            pause *= 4;
        }
    }

    /// Opens the home directory: once per call (rule 13).
    fn open_home(&self) -> Result<Box<dyn DirHandle>> {
        self.fs
            .open_dir(&self.home)
            .map_err(|e| self.home_err(Operation::OpenHome, &self.home, e))
    }

    /// What is at the reserve path, counting its shared blocks where the filesystem can
    /// share them (rule 1): `fstatat`, and on XFS, btrfs and unknown filesystems `open` +
    /// `FIEMAP` + `close`.
    fn observe(&self, dir: &dyn DirHandle) -> Result<Observed> {
        for _ in 0..CHANGED_RETRIES {
            let observed = dir
                .probe(&self.name)
                .map(Observed::from_probe)
                .map_err(|e| self.err(Operation::Probe, e))?;
            let Observed::Regular {
                len,
                allocated_bytes,
            } = observed
            else {
                return Ok(observed);
            };
            if allocated_bytes == 0 {
                return Ok(observed);
            }
            return match self.shared_bytes(dir)? {
                Extents::Shared(shared) if shared > 0 => Ok(Observed::Shared {
                    len,
                    allocated_bytes,
                    releasable_bytes: allocated_bytes.saturating_sub(shared),
                }),
                Extents::Shared(_) | Extents::Unknown => Ok(observed),
                // Replaced or removed between the look and the open: look again.
                Extents::Changed => continue,
            };
        }
        Err(Error::Changed {
            path: self.path.clone(),
        })
    }

    /// Bytes of the reserve shared with another file or a snapshot, where the filesystem
    /// can share and say so.
    fn shared_bytes(&self, dir: &dyn DirHandle) -> Result<Extents> {
        let kind = dir
            .fs_kind()
            .map_err(|e| Error::io(Operation::ReadSpace, self.home.clone(), e))?;
        if kind == crate::FsKind::Overlay {
            // A lower layer's file: deleting it through the overlay frees nothing.
            let lower = dir
                .in_lower_layer(&self.name)
                .map_err(|e| self.err(Operation::Probe, e))?;
            return Ok(if lower {
                Extents::Shared(u64::MAX)
            } else {
                Extents::Unknown
            });
        }
        if !kind.may_share_extents() {
            return Ok(Extents::Unknown);
        }
        let file = match dir.open_file(&self.name, OpenOptions::read()) {
            Ok(file) => file,
            Err(e) if changed_since_looked(&e) => return Ok(Extents::Changed),
            // Not readable (EACCES): whether its blocks are its own cannot be known, and
            // guessing "yes" would call a reserve that frees nothing present.
            Err(e) => return Err(self.err(Operation::Open, e)),
        };
        match file.shared_bytes() {
            Ok(Some(shared)) => Ok(Extents::Shared(shared)),
            Ok(None) => Ok(Extents::Unknown),
            Err(e) => Err(self.err(Operation::Probe, e)),
        }
    }

    fn allocated(&self, file: &dyn FileHandle) -> Result<u64> {
        file.probe()
            .map(|p| p.allocated_bytes)
            .map_err(|e| self.err(Operation::Probe, e))
    }

    fn space(&self, dir: &dyn DirHandle) -> Result<Space> {
        dir.space()
            .map_err(|e| Error::io(Operation::ReadSpace, self.home.clone(), e))
    }

    /// Takes the home's lock, polling so that a cancel interrupts the wait (rule 10, 14);
    /// a wait of more than a second is logged and reported to the lock-wait callback;
    /// past the lock timeout it gives up.
    fn lock_home(&self, dir: &dyn DirHandle) -> Result<DirLock> {
        let started = Instant::now();
        let mut pause = LOCK_POLL_FIRST;
        let mut warned = false;
        loop {
            self.check_cancel()?;
            // Never wait past the timeout in one go.
            let wait = match self.lock_timeout {
                Some(limit) => pause.min(limit.saturating_sub(started.elapsed())),
                None => pause,
            };
            match retry_eintr(|| dir.lock_within(wait)) {
                Ok(Some(lock)) => return Ok(lock),
                Ok(None) => {}
                Err(e) => return Err(Error::io(Operation::Lock, self.home.clone(), e)),
            }
            let waited = started.elapsed();
            if let Some(limit) = self.lock_timeout
                && waited >= limit
            {
                return Err(Error::LockTimeout {
                    path: self.home.clone(),
                    waited,
                });
            }
            if !warned && waited >= LOCK_WAIT_WARN {
                warned = true;
                match &self.on_lock_wait {
                    Some(waiting) => waiting(),
                    None => {
                        tracing::warn!(path = %self.home, "waiting for another process that holds the lock on the home directory");
                    }
                }
            }
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }

    fn truncate(&self, file: &dyn FileHandle, len: u64) -> Result<()> {
        file.set_len(len)
            .map_err(|e| self.err(Operation::Truncate, e))
    }

    fn sync_file(&self, file: &dyn FileHandle) -> Result<()> {
        file.sync_all()
            .map_err(|e| self.err(Operation::SyncFile, e))
    }

    /// An error on the reserve path.
    fn err(&self, op: Operation, source: io::Error) -> Error {
        Error::io(op, self.path.clone(), source)
    }

    /// An error where `ENOENT`/`ENOTDIR` mean the home itself is missing or not a
    /// directory.
    fn home_err(&self, op: Operation, path: &Utf8Path, source: io::Error) -> Error {
        match source.raw_os_error() {
            Some(libc::ENOENT) => Error::HomeMissing {
                path: self.home.clone(),
                source,
            },
            Some(libc::ENOTDIR) => Error::HomeNotDirectory {
                path: self.home.clone(),
                source,
            },
            _ => Error::io(op, path, source),
        }
    }
}

/// Rule 2: the only errors that send `ensure` to the write path.
fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == libc::EOPNOTSUPP || code == libc::ENOTSUP || code == libc::ENOSYS
    )
}

fn retry_eintr<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut tries = 0;
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted && tries < EINTR_RETRIES => {
                tries += 1;
            }
            other => return other,
        }
    }
}
