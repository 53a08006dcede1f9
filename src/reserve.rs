//! [`Reserve`]: the lifecycle — `ensure`, `release`, `status` — over one home directory.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use camino::{Utf8Path, Utf8PathBuf};

use crate::decision::{Condition, Observed, Plan, decide};
use crate::error::{Error, Operation, Result};
use crate::{DirLock, HostFs, ReserveConfig, Space, Strategy};

/// How many bytes `ensure` writes between two progress reports on the write path.
pub const WRITE_CHUNK_BYTES: u64 = 32 << 20;

/// How often an `EINTR` is retried before it is reported.
const EINTR_RETRIES: usize = 64;

/// What `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    },
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
pub enum Released {
    /// The reserve was removed, giving back the bytes it really held.
    Released {
        /// Bytes the reserve held (`st_blocks * 512` before the unlink).
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

/// A progress callback for long allocations: `(bytes done, bytes to do)`.
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

/// A structural disk reserve in one home directory.
///
/// ```
/// use disk_reserve::{Ensured, Released, Reserve, ReserveConfig, SimFs};
/// let fs = SimFs::with_home(1 << 30, "/srv/app");
/// let reserve = Reserve::new(fs.clone(), "/srv/app", ReserveConfig::default()).unwrap();
/// assert!(matches!(reserve.ensure().unwrap(), Ensured::Created { .. }));
/// assert!(matches!(reserve.ensure().unwrap(), Ensured::Present { .. }));
/// assert_eq!(reserve.release().unwrap(), Released::Released { freed_bytes: 64 << 20 });
/// ```
pub struct Reserve<F: HostFs> {
    fs: F,
    home: Utf8PathBuf,
    path: Utf8PathBuf,
    config: ReserveConfig,
    progress: Option<Arc<ProgressFn>>,
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
        let name = config.file_name_str();
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(Error::InvalidFileName {
                name: name.to_owned(),
            });
        }
        let path = home.join(name);
        Ok(Reserve {
            fs,
            home,
            path,
            config,
            progress: None,
        })
    }

    /// Calls `report(done, total)` after each chunk the write path writes.
    pub fn on_progress(mut self, report: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(report));
        self
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
    /// A complete reserve costs one `lstat` (plus one `statvfs` when the size is a
    /// share of the filesystem) and takes no lock. Otherwise, under an exclusive lock on
    /// the home directory, it shrinks an oversized reserve, and creates or completes a
    /// missing, partial or sparse one when the free space allows it without going below
    /// the headroom; when it does not, it changes nothing and returns
    /// [`Ensured::Deferred`].
    ///
    /// # Errors
    /// The home is missing or not a directory; something not a regular file is at the
    /// reserve path (left untouched); the size is 0 or larger than the filesystem; the
    /// filesystem is read-only or refuses permission; an I/O error. After an error the
    /// reserve is as it was found: a file this call created is removed, a file it grew
    /// is cut back to its old length.
    pub fn ensure(&self) -> Result<Ensured> {
        let early_space = if self.config.needs_total() {
            Some(self.space()?)
        } else {
            None
        };
        let (size, headroom) = self.resolve_sizes(early_space)?;
        let observed = self.observe()?;
        if let Plan::Nothing = decide(observed, size, headroom, None) {
            tracing::debug!(path = %self.path, allocated_bytes = observed.allocated_bytes(), outcome = "present", "reserve is complete");
            return Ok(Ensured::Present {
                allocated_bytes: observed.allocated_bytes(),
            });
        }

        let _lock = self.lock_home()?;
        let mut shrunk_from = None;
        loop {
            let observed = self.observe()?;
            let mut plan = decide(observed, size, headroom, None);
            if plan == Plan::NeedSpace {
                let space = self.space()?;
                self.check_fits(size, space)?;
                plan = decide(observed, size, headroom, Some(space));
            }
            match plan {
                Plan::Nothing => {
                    let allocated_bytes = observed.allocated_bytes();
                    return Ok(match shrunk_from {
                        Some(from_len) => {
                            tracing::info!(path = %self.path, from_len, size_bytes = size, allocated_bytes, outcome = "shrunk", "shrank reserve to its configured size");
                            Ensured::Shrunk {
                                from_len,
                                allocated_bytes,
                            }
                        }
                        None => Ensured::Present { allocated_bytes },
                    });
                }
                Plan::Refuse(kind) => {
                    return Err(Error::NotARegularFile {
                        path: self.path.clone(),
                        kind,
                    });
                }
                Plan::Shrink { from_len } => {
                    self.truncate(size)?;
                    self.sync_file()?;
                    shrunk_from.get_or_insert(from_len);
                }
                Plan::NeedSpace => unreachable!("free space was read above"),
                Plan::Defer {
                    free_bytes,
                    needed_bytes,
                } => {
                    tracing::warn!(
                        path = %self.path, free_bytes, needed_bytes, size_bytes = size, headroom_bytes = headroom,
                        outcome = "deferred",
                        "not enough free space to lay down the disk reserve without going below the headroom; deferring"
                    );
                    return Ok(Ensured::Deferred {
                        free_bytes,
                        needed_bytes,
                    });
                }
                Plan::Create | Plan::Replace { .. } | Plan::Extend { .. } | Plan::Refill { .. } => {
                    let allocated_bytes = self.fill(plan, size)?;
                    let outcome = if matches!(plan, Plan::Create | Plan::Replace { .. }) {
                        Ensured::Created { allocated_bytes }
                    } else {
                        Ensured::ToppedUp {
                            from_allocated_bytes: observed.allocated_bytes(),
                            allocated_bytes,
                        }
                    };
                    tracing::info!(path = %self.path, size_bytes = size, allocated_bytes, outcome = outcome.as_str(), "disk reserve laid down");
                    return Ok(outcome);
                }
            }
        }
    }

    /// Removes the reserve, giving its blocks back to the filesystem (rule 8).
    ///
    /// Needs no free space, no new inode and no `statvfs`: it is what an operator runs on
    /// a full disk. No reserve is not an error: it returns [`Released::Absent`].
    ///
    /// # Errors
    /// The home is missing or not a directory; something not a regular file is at the
    /// reserve path (left untouched); `unlink` failed (read-only, permission, `EBUSY`…).
    pub fn release(&self) -> Result<Released> {
        let _lock = self.lock_home()?;
        let freed_bytes = match self.observe()? {
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
            Observed::Regular {
                allocated_bytes, ..
            } => allocated_bytes,
            // Rule 7: the file's other names keep its blocks; removing this name frees
            // nothing, and it is all release may do to it.
            Observed::HardLinked { links } => {
                tracing::warn!(path = %self.path, links, "the reserve path is a hard link to a file with other names: removing only this name, which frees nothing");
                0
            }
        };
        self.fs
            .remove_file(&self.path)
            .map_err(|e| self.err(Operation::Remove, e))?;
        // Best effort: at zero free some filesystems cannot commit the directory yet; the
        // unlink itself has happened and the space is back.
        if let Err(error) = self.fs.sync_dir(&self.home) {
            tracing::warn!(path = %self.home, %error, "could not sync the home directory after releasing the reserve");
        }
        tracing::info!(path = %self.path, freed_bytes, outcome = "released", "disk reserve released");
        Ok(Released::Released { freed_bytes })
    }

    /// Reads the reserve's state, the free space, and what `ensure` would do. Changes
    /// nothing and takes no lock.
    ///
    /// # Errors
    /// The home is missing or not a directory; `lstat` or `statvfs` failed.
    pub fn status(&self) -> Result<Status> {
        let space = self.space()?;
        let (size_bytes, headroom_bytes) = self.resolve_sizes(Some(space))?;
        let observed = self.observe()?;
        Ok(Status {
            observed,
            condition: observed.condition(size_bytes),
            size_bytes,
            headroom_bytes,
            space,
            plan: decide(observed, size_bytes, headroom_bytes, Some(space)),
        })
    }

    /// The operator hint for this home, naming the bytes the reserve really holds now
    /// (see [`out_of_space_hint`](crate::out_of_space_hint)).
    pub fn out_of_space_hint(&self) -> String {
        let held = self.observe().ok().map(Observed::allocated_bytes);
        crate::out_of_space_hint(&self.home, held)
    }

    /// Allocates the reserve according to `plan`; on any failure restores what it found.
    fn fill(&self, plan: Plan, size: u64) -> Result<u64> {
        let from = match plan {
            Plan::Replace { links } => {
                // Rule 7: the file at the path has other names (a database, a hard-link
                // backup): never write it. Unlink this one name — the others keep the
                // data — and lay down a fresh reserve in its place.
                tracing::warn!(path = %self.path, links, "the reserve path is a hard link to a file with other names; replacing the name with a fresh reserve and leaving the file's data to its other names");
                self.fs
                    .remove_file(&self.path)
                    .map_err(|e| self.err(Operation::Remove, e))?;
                self.fs
                    .create_file(&self.path)
                    .map_err(|e| self.err(Operation::Create, e))?;
                0
            }
            Plan::Create => {
                self.fs
                    .create_file(&self.path)
                    .map_err(|e| self.err(Operation::Create, e))?;
                0
            }
            Plan::Refill { .. } => 0,
            Plan::Extend { from_len } => from_len,
            _ => unreachable!("fill is only called for allocating plans"),
        };
        let plan = match plan {
            // From here on a replacement is a file this call created.
            Plan::Replace { .. } => Plan::Create,
            other => other,
        };
        match self.fill_from(plan, from, size) {
            Ok(allocated_bytes) => Ok(allocated_bytes),
            Err(error) => {
                self.roll_back(plan);
                Err(error)
            }
        }
    }

    fn fill_from(&self, plan: Plan, from: u64, size: u64) -> Result<u64> {
        if let Plan::Refill { .. } = plan {
            self.truncate(0)?;
        }
        let strategy = self.config.strategy_kind();
        let write_from = match strategy {
            Strategy::Write => Some(from),
            Strategy::Fallocate | Strategy::Auto => {
                match retry_eintr(|| self.fs.allocate(&self.path, from, size - from)) {
                    Ok(()) => {
                        let allocated = self.observe()?.allocated_bytes();
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
            self.write_range(start, size)?;
            // XFS keeps speculative preallocation past the end of a file written through
            // several open/close cycles (the write path opens it once per chunk): a
            // 128 MiB reserve held 249 MiB until XFS trimmed it minutes later, eating into
            // the headroom. Setting the length it already has gives those blocks back;
            // elsewhere it changes nothing.
            self.truncate(size)?;
        }
        self.sync_file()?;
        if plan == Plan::Create {
            self.fs
                .sync_dir(&self.home)
                .map_err(|e| self.err(Operation::SyncDir, e))?;
        }
        Ok(self.observe()?.allocated_bytes())
    }

    fn write_range(&self, start: u64, end: u64) -> Result<()> {
        let mut pos = start;
        while pos < end {
            let len = WRITE_CHUNK_BYTES.min(end - pos);
            retry_eintr(|| self.fs.write_fill(&self.path, pos, len))
                .map_err(|e| self.err(Operation::Write, e))?;
            pos += len;
            if let Some(report) = &self.progress {
                report(pos - start, end - start);
            }
        }
        Ok(())
    }

    /// Rule 5: undo a failed fill. Failures here are logged; the caller reports the
    /// error that caused the rollback.
    fn roll_back(&self, plan: Plan) {
        let result = match plan {
            Plan::Create => self
                .fs
                .remove_file(&self.path)
                .and_then(|()| self.fs.sync_dir(&self.home)),
            Plan::Refill { from_len } => self
                .fs
                .set_len(&self.path, 0)
                .and_then(|()| self.fs.set_len(&self.path, from_len)),
            Plan::Extend { from_len } => self.fs.set_len(&self.path, from_len),
            _ => Ok(()),
        };
        match result {
            Ok(()) => {
                tracing::debug!(path = %self.path, "rolled back a failed ensure");
            }
            Err(error) => {
                tracing::error!(path = %self.path, %error, "could not roll back a failed ensure");
            }
        }
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

    fn check_fits(&self, size: u64, space: Space) -> Result<()> {
        if size > space.total_bytes {
            return Err(Error::SizeExceedsFilesystem {
                path: self.path.clone(),
                size_bytes: size,
                total_bytes: space.total_bytes,
            });
        }
        Ok(())
    }

    fn observe(&self) -> Result<Observed> {
        self.fs
            .probe(&self.path)
            .map(Observed::from_probe)
            .map_err(|e| self.home_err(Operation::Probe, &self.path, e))
    }

    fn space(&self) -> Result<Space> {
        self.fs
            .space(&self.home)
            .map_err(|e| self.home_err(Operation::ReadSpace, &self.home, e))
    }

    fn lock_home(&self) -> Result<DirLock> {
        retry_eintr(|| self.fs.lock_dir(&self.home))
            .map_err(|e| self.home_err(Operation::Lock, &self.home, e))
    }

    fn truncate(&self, len: u64) -> Result<()> {
        self.fs
            .set_len(&self.path, len)
            .map_err(|e| self.err(Operation::Truncate, e))
    }

    fn sync_file(&self) -> Result<()> {
        self.fs
            .sync_file(&self.path)
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
