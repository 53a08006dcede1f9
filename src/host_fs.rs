//! [`HostFs`]: the one trait between the reserve lifecycle and a filesystem.
//!
//! Every method takes `&self` and concrete [`Utf8Path`] arguments and returns an
//! [`io::Result`] whose error keeps the raw errno (`io::Error::from_raw_os_error`), so
//! callers and the [`is_out_of_space`](crate::is_out_of_space) classifier can tell
//! `ENOSPC` from `EDQUOT` from `EIO`. The trait is object-safe: `&dyn HostFs` works, and
//! so does a `mockall` mock.
//!
//! Two implementations ship with the crate: [`RealFs`](crate::RealFs) (the kernel, through
//! `libc`) and [`SimFs`](crate::SimFs) (a bounded in-memory filesystem with fault
//! injection). Operations never follow a symbolic link at the last component of a path.

use std::fmt;
use std::io;

use camino::Utf8Path;

/// What kind of thing a path names, as `lstat(2)` reports it (links are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
}

impl FileKind {
    /// A short lower-case name for messages: `"regular file"`, `"symlink"`, …
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Regular => "regular file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::BlockDevice => "block device",
            FileKind::CharDevice => "character device",
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `lstat(2)` says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The kind of thing at the path.
    pub kind: FileKind,
    /// The length in bytes (`st_size`).
    pub len: u64,
    /// Bytes really allocated on disk: `st_blocks * 512`. A sparse file has fewer
    /// allocated bytes than its length.
    pub allocated_bytes: u64,
    /// The number of names (hard links) the inode has (`st_nlink`). A regular file with
    /// more than one is never written by the lifecycle: its other names hold its data.
    pub links: u64,
}

/// Space on the filesystem holding a path, as `statvfs(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still allocate: `f_bavail * f_frsize`.
    pub free_bytes: u64,
    /// Size of the filesystem: `f_blocks * f_frsize`.
    pub total_bytes: u64,
    /// The allocation unit (`f_frsize`): a file's blocks come in multiples of it, so
    /// allocating `n` bytes takes `n` rounded up to it.
    pub block_bytes: u64,
}

impl Space {
    /// `bytes` rounded up to the allocation unit (saturating; a unit of 0 counts as 1).
    pub fn round_up(&self, bytes: u64) -> u64 {
        let unit = self.block_bytes.max(1);
        bytes.div_ceil(unit).saturating_mul(unit)
    }
}

/// An exclusive lock on a directory, released when dropped.
///
/// Backends build one with [`DirLock::new`] around whatever keeps their lock alive
/// (an open descriptor holding `flock(LOCK_EX)`, a guard of an in-memory lock table…).
pub struct DirLock {
    _guard: Box<dyn Send + Sync>,
}

impl DirLock {
    /// Wraps the value that holds the lock; dropping the `DirLock` drops it.
    pub fn new<G: Send + Sync + 'static>(guard: G) -> Self {
        DirLock {
            _guard: Box::new(guard),
        }
    }

    /// A lock that holds nothing, for mocks and single-threaded tests.
    pub fn detached() -> Self {
        DirLock::new(())
    }
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirLock").finish_non_exhaustive()
    }
}

/// The operations the reserve lifecycle needs from a filesystem, and no more.
///
/// Contract shared by every implementation (the conformance suite in
/// `tests/conformance.rs` holds [`RealFs`](crate::RealFs) and [`SimFs`](crate::SimFs) to it):
///
/// * Errors carry the kernel's errno: `ENOENT` for a missing path or parent, `ENOTDIR`
///   when a parent component is not a directory, `ENOSPC` when the filesystem is full,
///   `EDQUOT` past a quota, `EROFS` on a read-only filesystem, `EOPNOTSUPP` when
///   [`allocate`](HostFs::allocate) is not supported.
/// * Methods that open a file (`allocate`, `write_fill`, `set_len`, `sync_file`) never
///   follow a symlink at the last component (`ELOOP`), never block on a fifo or socket
///   (`ENXIO`), fail on a directory with `EISDIR`, and fail with `EINVAL` on anything
///   else that is not a regular file (devices).
/// * [`allocate`](HostFs::allocate) of an empty range is `EINVAL`, as `fallocate(2)` says.
pub trait HostFs: Send + Sync + fmt::Debug {
    /// Free and total bytes of the filesystem holding `path` (`statvfs(2)`).
    ///
    /// # Errors
    /// `ENOENT`/`ENOTDIR` when `path` cannot be resolved, or whatever `statvfs` returns.
    fn space(&self, path: &Utf8Path) -> io::Result<Space>;

    /// `lstat(2)` of `path`: `Ok(None)` when nothing is there (`ENOENT`).
    ///
    /// # Errors
    /// `ENOTDIR` when a parent component is not a directory, or whatever `lstat` returns.
    fn probe(&self, path: &Utf8Path) -> io::Result<Option<Probe>>;

    /// Creates an empty regular file at `path` (`O_CREAT | O_EXCL | O_NOFOLLOW`).
    ///
    /// # Errors
    /// `EEXIST` if anything (even a dangling symlink) is at `path`; `ENOENT` if the parent
    /// is missing; `ENOSPC` if no inode or block can be had; `EROFS`, `EACCES`.
    fn create_file(&self, path: &Utf8Path) -> io::Result<()>;

    /// Allocates blocks for `[offset, offset + len)` of the regular file at `path`,
    /// extending its length if needed (`fallocate(2)` with mode 0).
    ///
    /// The default body returns `EOPNOTSUPP`, for backends without allocation.
    ///
    /// # Errors
    /// `EOPNOTSUPP`/`ENOSYS` when unsupported, `ENOSPC`, `EDQUOT`, `EINTR`, `EIO`…
    fn allocate(&self, path: &Utf8Path, offset: u64, len: u64) -> io::Result<()> {
        let _ = (path, offset, len);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Writes `len` bytes of the incompressible [pattern](crate::pattern) at `offset` of
    /// the regular file at `path`, so every written block really takes space even under
    /// compression or dedup. On error, a prefix of the range may have been written.
    ///
    /// # Errors
    /// `ENOSPC`, `EDQUOT`, `EIO`, `EFBIG`…
    fn write_fill(&self, path: &Utf8Path, offset: u64, len: u64) -> io::Result<()>;

    /// Sets the length of the regular file at `path` (`ftruncate(2)`): shrinking frees
    /// the blocks past `len`; growing adds a hole and allocates nothing.
    ///
    /// # Errors
    /// `EFBIG`, `EROFS`, `EIO`…
    fn set_len(&self, path: &Utf8Path, len: u64) -> io::Result<()>;

    /// `fsync(2)` of the regular file at `path`.
    ///
    /// # Errors
    /// `EIO` when the data could not be made durable.
    fn sync_file(&self, path: &Utf8Path) -> io::Result<()>;

    /// `fsync(2)` of the directory at `dir`, making creations and removals in it durable.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`, `EIO`.
    fn sync_dir(&self, dir: &Utf8Path) -> io::Result<()>;

    /// `unlink(2)` of `path` (a symlink is removed, not followed). Needs no free space.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR` for a directory, `EROFS`, `EACCES`, `EBUSY`.
    fn remove_file(&self, path: &Utf8Path) -> io::Result<()>;

    /// Takes an exclusive lock on the directory `dir` (`flock(LOCK_EX)` on the directory
    /// itself: no new file, no free space needed), blocking until it is had.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`, `EACCES`, `EINTR`.
    fn lock_dir(&self, dir: &Utf8Path) -> io::Result<DirLock>;
}

/// Forwarding so a `&F`, `Box<F>` or `Arc<F>` can stand where a backend is expected.
macro_rules! forward_host_fs {
    ($($ty:ty),*) => {$(
        impl<F: HostFs + ?Sized> HostFs for $ty {
            fn space(&self, path: &Utf8Path) -> io::Result<Space> {
                (**self).space(path)
            }
            fn probe(&self, path: &Utf8Path) -> io::Result<Option<Probe>> {
                (**self).probe(path)
            }
            fn create_file(&self, path: &Utf8Path) -> io::Result<()> {
                (**self).create_file(path)
            }
            fn allocate(&self, path: &Utf8Path, offset: u64, len: u64) -> io::Result<()> {
                (**self).allocate(path, offset, len)
            }
            fn write_fill(&self, path: &Utf8Path, offset: u64, len: u64) -> io::Result<()> {
                (**self).write_fill(path, offset, len)
            }
            fn set_len(&self, path: &Utf8Path, len: u64) -> io::Result<()> {
                (**self).set_len(path, len)
            }
            fn sync_file(&self, path: &Utf8Path) -> io::Result<()> {
                (**self).sync_file(path)
            }
            fn sync_dir(&self, dir: &Utf8Path) -> io::Result<()> {
                (**self).sync_dir(dir)
            }
            fn remove_file(&self, path: &Utf8Path) -> io::Result<()> {
                (**self).remove_file(path)
            }
            fn lock_dir(&self, dir: &Utf8Path) -> io::Result<DirLock> {
                (**self).lock_dir(dir)
            }
        }
    )*};
}

forward_host_fs!(&F, Box<F>, std::sync::Arc<F>);
