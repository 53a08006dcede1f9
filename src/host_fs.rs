//! [`HostFs`], [`DirHandle`] and [`FileHandle`]: the capability-style interface between
//! code and a filesystem.
//!
//! A backend opens a directory **once** ([`HostFs::open_dir`]) and hands back a handle;
//! every later operation is a method on that handle taking a single name relative to it
//! (`openat`, `fstatat`, `unlinkat`, `renameat`, `linkat`, `flock`, `fsync`,
//! `fstatvfs` on its descriptor). A file, once opened ([`DirHandle::open_file`], never
//! following a symlink at the name), is a handle too: every later call goes to that one
//! descriptor (`fstat`, `fallocate`, `pwrite`, `ftruncate`, `fsync`). Renaming or
//! re-pointing the directory, or swapping the file, between two calls therefore cannot
//! redirect any of them — the property `cap-std` and the `*at` system calls give.
//!
//! The same handles are a general file API for storage code — positional and appending
//! reads and writes ([`FileHandle::read_at`], [`FileHandle::write_at`]), `set_len`,
//! `sync_all`/`sync_data`, rename, link, remove, `mkdir`/`rmdir`, `read_dir`, subdirectory
//! handles — and [`File`](crate::File) adds a cursor for `io::Read`/`Write`/`Seek`. A
//! write-ahead log written once against them runs on the kernel and, in tests, on a full,
//! failing or crashing [`SimFs`](crate::SimFs).
//!
//! Every method returns an [`io::Result`] whose error keeps the raw errno
//! (`io::Error::from_raw_os_error`), so callers and the
//! [`is_out_of_space`](crate::is_out_of_space) classifier can tell `ENOSPC` from `EDQUOT`
//! from `EIO`. The traits are object-safe (`&dyn HostFs`, `Box<dyn DirHandle>`) and
//! `Send + Sync`.
//!
//! Two implementations ship with the crate: [`RealFs`](crate::RealFs) (the kernel, through
//! `libc`) and [`SimFs`](crate::SimFs) (a bounded in-memory filesystem with fault
//! injection). `tests/conformance.rs` runs one suite of test bodies on both.
//!
//! ```
//! use disk_reserve::{HostFs, OpenOptions, SimFs};
//!
//! let fs = SimFs::with_home(1 << 30, "/srv/app");
//! let home = fs.open_dir("/srv/app".into())?;        // resolved once
//! let file = home.open_file("wal", OpenOptions::create_new())?;
//! file.allocate(0, 1 << 20)?;
//! file.sync_all()?;
//! home.sync()?;                                      // the new name is durable
//! assert_eq!(home.probe("wal")?.map(|p| p.allocated_bytes), Some(1 << 20));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io;

use camino::Utf8Path;

/// What kind of thing a name is, as `lstat(2)` reports it (links are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// What `lstat(2)` / `fstat(2)` says about a name or an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The kind of thing it is.
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

/// Space on the filesystem holding a directory, as `fstatvfs(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still allocate: `f_bavail * f_frsize`.
    pub free_bytes: u64,
    /// Size of the filesystem: `f_blocks * f_frsize`.
    pub total_bytes: u64,
    /// The allocation unit (`f_frsize`): a file's blocks come in multiples of it, so
    /// allocating `n` bytes takes `n` rounded up to it.
    pub block_bytes: u64,
    /// The most an unprivileged writer can ever use: the size less what is kept for root,
    /// `(f_blocks - (f_bfree - f_bavail)) * f_frsize`. A reserve plus its headroom that
    /// does not fit in it can never be laid down.
    pub usable_bytes: u64,
    /// Whether the filesystem is mounted read-only (`ST_RDONLY`).
    pub read_only: bool,
    /// Inodes an unprivileged writer may still create (`f_favail`), when the filesystem
    /// counts them (`None` when it reports no inode limit, as btrfs does).
    pub free_inodes: Option<u64>,
}

impl Space {
    /// A writable filesystem of `total_bytes` with `free_bytes` free in units of
    /// `block_bytes`, all of it usable by anyone, with no inode limit: for tests and mocks.
    pub fn plain(free_bytes: u64, total_bytes: u64, block_bytes: u64) -> Space {
        Space {
            free_bytes,
            total_bytes,
            block_bytes,
            usable_bytes: total_bytes,
            read_only: false,
            free_inodes: None,
        }
    }

    /// `bytes` rounded up to the allocation unit (saturating; a unit of 0 counts as 1).
    pub fn round_up(&self, bytes: u64) -> u64 {
        let unit = self.block_bytes.max(1);
        bytes.div_ceil(unit).saturating_mul(unit)
    }
}

/// What kind of filesystem holds a directory (`fstatfs(2)`'s `f_type`), as far as the
/// reserve cares: whether a file's blocks can be shared with another file or a snapshot
/// (so `st_blocks` overstates what deleting it gives back), and whether the filesystem is
/// a network or layered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsKind {
    /// ext2, ext3, ext4: blocks are never shared.
    Ext,
    /// XFS: reflink copies (`cp -a` makes them) share extents.
    Xfs,
    /// btrfs: reflink copies and snapshots share extents.
    Btrfs,
    /// tmpfs: memory; nothing shared.
    Tmpfs,
    /// overlayfs: a file in a lower layer is not freed by deleting it.
    Overlay,
    /// NFS: space is the server's.
    Nfs,
    /// CIFS/SMB: space is the server's.
    Cifs,
    /// ZFS: copy-on-write; `fallocate` may allocate nothing.
    Zfs,
    /// A FUSE filesystem.
    Fuse,
    /// Anything else, with its `f_type` magic number.
    Other(u64),
}

impl FsKind {
    /// The kind for an `f_type` magic number.
    pub fn from_magic(magic: u64) -> FsKind {
        match magic {
            0xEF53 => FsKind::Ext,
            0x5846_5342 => FsKind::Xfs,
            0x9123_683E => FsKind::Btrfs,
            0x0102_1994 => FsKind::Tmpfs,
            0x794C_7630 => FsKind::Overlay,
            0x6969 => FsKind::Nfs,
            0xFF53_4D42 | 0xFE53_4D42 => FsKind::Cifs,
            0x2FC1_2FC1 => FsKind::Zfs,
            0x6573_5546 => FsKind::Fuse,
            other => FsKind::Other(other),
        }
    }

    /// Whether a file's extents may be shared with another file or a snapshot, so that
    /// its releasable bytes must be read from its extent map (`FIEMAP`): XFS, btrfs, and
    /// filesystems this crate does not know.
    pub fn may_share_extents(self) -> bool {
        matches!(self, FsKind::Xfs | FsKind::Btrfs | FsKind::Other(_))
    }

    /// A short name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext => "ext2/3/4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Tmpfs => "tmpfs",
            FsKind::Overlay => "overlayfs",
            FsKind::Nfs => "nfs",
            FsKind::Cifs => "cifs",
            FsKind::Zfs => "zfs",
            FsKind::Fuse => "fuse",
            FsKind::Other(_) => "other",
        }
    }
}

/// How [`DirHandle::open_file`] opens a file, as `open(2)`'s flags (and `std`'s
/// `OpenOptions`) say. A symlink at the name is never followed (`ELOOP`), a fifo or socket
/// never blocks (`ENXIO`), a directory is `EISDIR`, a device `EINVAL`: only regular files
/// are opened.
///
/// The access mode: `read` and `write` (or `append`) together are `O_RDWR`; `write` or
/// `append` alone `O_WRONLY`, where [`read_at`](FileHandle::read_at) is `EBADF`; anything
/// else `O_RDONLY`, where writes are `EBADF`.
///
/// ```
/// use disk_reserve::OpenOptions;
///
/// // A log: created if missing, every write at its end.
/// let log = OpenOptions::append();
/// // A file rewritten from scratch, then read back through the same handle.
/// let scratch = OpenOptions { truncate: true, ..OpenOptions::create() };
/// # let _ = (log, scratch);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOptions {
    /// Open for reading too when writing (`O_RDWR`); a handle opened for neither reading
    /// nor writing is read-only (`O_RDONLY`), which is enough for `fstat` and `fsync` and
    /// works on a read-only filesystem.
    pub read: bool,
    /// Open for writing (`O_WRONLY`, or `O_RDWR` with `read`).
    pub write: bool,
    /// Every write goes to the end of the file, wherever the caller asked (`O_APPEND`;
    /// implies `write`). As on Linux, [`write_at`](FileHandle::write_at)'s offset is
    /// ignored then.
    pub append: bool,
    /// Create the file if it is missing (`O_CREAT`, mode `0600`).
    pub create: bool,
    /// Create the file and fail with `EEXIST` if anything — even a dangling symlink — is
    /// at the name (`O_CREAT | O_EXCL`).
    pub create_new: bool,
    /// Cut the file to length 0 on opening (`O_TRUNC`; needs `write`).
    pub truncate: bool,
}

impl OpenOptions {
    /// An existing file, read-only.
    pub const fn read() -> Self {
        OpenOptions {
            read: true,
            write: false,
            append: false,
            create: false,
            create_new: false,
            truncate: false,
        }
    }

    /// An existing file, for writing only.
    pub const fn write() -> Self {
        OpenOptions {
            read: false,
            write: true,
            ..OpenOptions::read()
        }
    }

    /// An existing file, for reading and writing.
    pub const fn read_write() -> Self {
        OpenOptions {
            write: true,
            ..OpenOptions::read()
        }
    }

    /// A file for reading and writing, created if missing, kept as it is otherwise.
    pub const fn create() -> Self {
        OpenOptions {
            create: true,
            ..OpenOptions::read_write()
        }
    }

    /// A file for reading and appending, created if missing: every write at its end.
    pub const fn append() -> Self {
        OpenOptions {
            append: true,
            ..OpenOptions::create()
        }
    }

    /// A new file, for writing: `EEXIST` if the name is taken.
    pub const fn create_new() -> Self {
        OpenOptions {
            create_new: true,
            ..OpenOptions::write()
        }
    }

    /// Whether the handle may write: `write` or `append`.
    pub const fn writes(&self) -> bool {
        self.write || self.append
    }

    /// Whether the handle may read: `read`, or not writing at all (`O_RDONLY`).
    pub const fn reads(&self) -> bool {
        self.read || !self.writes()
    }
}

/// One name in a directory, as [`DirHandle::read_dir`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirEntry {
    /// The name, one component.
    pub name: String,
    /// What the name is (a symlink is not followed).
    pub kind: FileKind,
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

/// `EINVAL` unless `name` is one path component: not empty, not `.` or `..`, no `/` and
/// no NUL. Every [`DirHandle`] method checks its names with it before anything else.
///
/// # Errors
/// `EINVAL` as above; `ENAMETOOLONG` past 255 bytes (`NAME_MAX`).
pub fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.bytes().any(|b| b == b'/' || b == 0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if name.len() > 255 {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(())
}

/// A filesystem: where directory handles come from.
///
/// Contract shared by every implementation (the conformance suite in
/// `tests/conformance.rs` holds [`RealFs`](crate::RealFs) and [`SimFs`](crate::SimFs) to
/// it): errors carry the kernel's errno — `ENOENT` for a missing name, `ENOTDIR` when a
/// path component is not a directory, `ENOSPC` when the filesystem is full, `EDQUOT` past
/// a quota, `EROFS` on a read-only filesystem, `EOPNOTSUPP` when
/// [`allocate`](FileHandle::allocate) is not supported, `EINVAL` for a name that is not
/// one component ([`check_name`]).
///
/// # Three implementations, and a fourth for tests
///
/// * [`RealFs`](crate::RealFs): the kernel (Linux).
/// * [`SimFs`](crate::SimFs): a bounded in-memory disk with the kernel's errnos, quotas,
///   faults per operation and per name ([`SimFs::fail_nth`](crate::SimFs::fail_nth)),
///   call counters ([`SimFs::calls`](crate::SimFs::calls)) and power cuts
///   ([`SimFs::crash_after`](crate::SimFs::crash_after),
///   [`SimFs::crash_torn`](crate::SimFs::crash_torn)).
/// * With the `mock` feature, `MockHostFs`, `MockDirHandle` and `MockFileHandle`,
///   generated from these traits by [`mockall::automock`](https://docs.rs/mockall): for an
///   error no filesystem gives on demand, or an exact order of calls. Each
///   `expect_<method>()` scripts one method:
///
/// ```
/// # #[cfg(feature = "mock")] {
/// use disk_reserve::{MockDirHandle, MockHostFs, HostFs};
///
/// let mut dir = MockDirHandle::new();
/// dir.expect_sync_fs()
///     .returning(|| Err(std::io::Error::from_raw_os_error(libc::EIO)));
/// let mut fs = MockHostFs::new();
/// fs.expect_open_dir().return_once(move |_| Ok(Box::new(dir)));
/// let dir = fs.open_dir("/srv/app".into()).unwrap();
/// assert_eq!(dir.sync_fs().unwrap_err().raw_os_error(), Some(libc::EIO));
/// # }
/// ```
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait HostFs: Send + Sync + fmt::Debug {
    /// Opens the directory at `path` (`open(O_RDONLY | O_DIRECTORY)`), following
    /// symlinks anywhere in the path the caller gave: the directory is resolved here,
    /// once, and every operation on the handle stays in it even if the path is later
    /// renamed or re-pointed.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR` (the path or a component is not a directory), `EACCES`,
    /// `ELOOP`, `ENAMETOOLONG`, `EINVAL` for a relative path on [`SimFs`](crate::SimFs).
    fn open_dir(&self, path: &Utf8Path) -> io::Result<Box<dyn DirHandle>>;
}

/// An open directory: every method takes a single name relative to it.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait DirHandle: Send + Sync + fmt::Debug {
    /// Free and total bytes of the filesystem holding this directory (`fstatvfs(2)`).
    ///
    /// # Errors
    /// Whatever `fstatvfs` returns (`EIO`).
    fn space(&self) -> io::Result<Space>;

    /// `fstatat(2)` of `name` without following a symlink: `Ok(None)` when nothing is
    /// there (`ENOENT`).
    ///
    /// # Errors
    /// `EINVAL` for a bad name, whatever `fstatat` returns.
    fn probe(&self, name: &str) -> io::Result<Option<Probe>>;

    /// Opens the regular file `name` as `options` say (see [`OpenOptions`]).
    ///
    /// # Errors
    /// `ENOENT`; `EEXIST` with `create_new`; `ELOOP` for a symlink, `EISDIR`, `ENXIO`
    /// for a fifo or socket, `EINVAL` for a device; `ENOSPC` when no inode can be had;
    /// `EROFS` when writing or creating on a read-only filesystem; `EACCES`.
    fn open_file(&self, name: &str, options: OpenOptions) -> io::Result<Box<dyn FileHandle>>;

    /// `unlinkat(2)` of `name` (a symlink is removed, not followed). Needs no free space.
    /// A file's blocks are freed with its last name and last open handle.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR` for a directory, `EROFS`, `EACCES`, `EBUSY`.
    fn remove_file(&self, name: &str) -> io::Result<()>;

    /// `renameat(2)` of `from` to `to` in this directory, atomically replacing a file at
    /// `to`.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR` (a file over a directory), `ENOTDIR`, `EROFS`, `EACCES`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// `linkat(2)`: gives the file `existing` a second name `new` (no link followed).
    ///
    /// # Errors
    /// `ENOENT`, `EEXIST`, `EPERM` for a directory, `EROFS`, `ENOSPC`.
    fn link(&self, existing: &str, new: &str) -> io::Result<()>;

    /// `mkdirat(2)`: creates the empty directory `name` (mode `0777` less the umask). The
    /// new name is durable once this directory is [synced](DirHandle::sync). The default
    /// body returns `EOPNOTSUPP`.
    ///
    /// # Errors
    /// `EEXIST` when anything — even a dangling symlink — is at the name; `ENOENT` in a
    /// removed directory; `ENOSPC`, `EDQUOT`, `EROFS`, `EACCES`.
    fn create_dir(&self, name: &str) -> io::Result<()> {
        let _ = name;
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Creates the directory `path` and every missing directory above it, relative to
    /// this one (`mkdir -p`, `std::fs::create_dir_all`): `path` is one or more names
    /// joined by `/` (`"segments/2024/01"`). A directory already at a name is walked into
    /// and kept, so calling it again succeeds and changes nothing.
    ///
    /// No symlink is followed at any component, created or walked: each step is
    /// [`create_dir`](DirHandle::create_dir) then [`open_subdir`](DirHandle::open_subdir)
    /// of one name, which refuse a symlink even to a directory. As with `create_dir`, a
    /// new directory's name is durable once its parent is [synced](DirHandle::sync);
    /// nothing is synced here. On error, the directories made before it stay.
    ///
    /// The body is provided, built on `create_dir`, `probe` and `open_subdir`; a backend
    /// has nothing to add.
    ///
    /// # Errors
    /// `EINVAL` for a path that is empty, absolute, or has an empty, `.` or `..`
    /// component (as [`check_name`] for each); `EEXIST` when the last component is taken
    /// by anything not a directory (a file, a symlink, even one to a directory);
    /// `ENOTDIR` when an earlier component is; whatever `create_dir` returns (`ENOSPC`,
    /// `EDQUOT`, `EROFS`, `ENOENT` in a removed directory, `EACCES`).
    fn create_dir_all(&self, path: &Utf8Path) -> io::Result<()> {
        let names: Vec<&str> = path.as_str().split('/').collect();
        for name in &names {
            check_name(name)?;
        }
        let (first, rest) = names.split_first().expect("split gives one name at least");
        create_dir_step(self, first, rest.is_empty())?;
        let Some((_, before_last)) = rest.split_last() else {
            return Ok(());
        };
        let mut dir = self.open_subdir(first)?;
        for name in before_last {
            create_dir_step(&*dir, name, false)?;
            dir = dir.open_subdir(name)?;
        }
        create_dir_step(&*dir, rest[rest.len() - 1], true)
    }

    /// `unlinkat(2)` with `AT_REMOVEDIR`: removes the empty directory `name` (a symlink
    /// is not followed). The default body returns `EOPNOTSUPP`.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR` for anything not a directory, `ENOTEMPTY`, `EROFS`, `EACCES`,
    /// `EBUSY`.
    fn remove_dir(&self, name: &str) -> io::Result<()> {
        let _ = name;
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Every name in this directory but `.` and `..`, with its kind, in no particular
    /// order (compare as a set). The default body returns `EOPNOTSUPP`.
    ///
    /// A removed directory lists as empty (`getdents(2)` says `ENOENT` there, and
    /// `readdir(3)` ends the listing on it).
    ///
    /// # Errors
    /// `EIO`, `ENOMEM`…; `EILSEQ` on [`RealFs`](crate::RealFs) for a name that is not UTF-8.
    fn read_dir(&self) -> io::Result<Vec<DirEntry>> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Opens the subdirectory `name` as a handle of its own
    /// (`openat(O_DIRECTORY | O_NOFOLLOW)`): a symlink at the name is not followed. The
    /// default body returns `EOPNOTSUPP`.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR` for anything not a directory — a symlink too, even to a
    /// directory (Linux checks `O_DIRECTORY` before `O_NOFOLLOW`'s `ELOOP`) — `EACCES`.
    fn open_subdir(&self, name: &str) -> io::Result<Box<dyn DirHandle>> {
        let _ = name;
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// The kind of filesystem holding this directory (`fstatfs(2)`'s `f_type`). The
    /// default body says [`FsKind::Other`]`(0)`.
    ///
    /// # Errors
    /// Whatever `fstatfs` returns.
    fn fs_kind(&self) -> io::Result<FsKind> {
        Ok(FsKind::Other(0))
    }

    /// Whether the regular file `name` lives in a lower, read-only layer of an overlay
    /// filesystem (a container image's layer): deleting it through the overlay only hides
    /// it and frees nothing. The default body says `false`.
    ///
    /// # Errors
    /// Whatever reading the mount table or the upper layer returns.
    fn in_lower_layer(&self, name: &str) -> io::Result<bool> {
        let _ = name;
        Ok(false)
    }

    /// Asks the filesystem to make pending work visible — `syncfs(2)`: btrfs frees
    /// unlinked extents at the transaction commit it forces. Like `syncfs(2)`, it also
    /// makes every file's data and every directory change on the filesystem durable
    /// (`SimFs` does too). The default body does nothing.
    ///
    /// # Errors
    /// `EIO`.
    fn sync_fs(&self) -> io::Result<()> {
        Ok(())
    }

    /// `fsync(2)` of the directory, making creations, renames and removals in it durable.
    ///
    /// # Errors
    /// `EIO`.
    fn sync(&self) -> io::Result<()>;

    /// Tries to take an exclusive lock on this directory (`flock(LOCK_EX | LOCK_NB)` on a
    /// fresh open of the directory itself: no new file, no free space needed). `Ok(None)`
    /// when another holder has it; callers poll, so a wait can be cancelled.
    ///
    /// # Errors
    /// `ENOLCK`, `EIO`, whatever `flock` returns other than `EWOULDBLOCK`.
    fn try_lock(&self) -> io::Result<Option<DirLock>>;

    /// Takes the exclusive lock, waiting for it at most `wait`: `Ok(None)` when another
    /// holder still has it then. Callers wait in slices so that a cancel can interrupt the
    /// wait between two. The default body polls [`try_lock`](DirHandle::try_lock) every
    /// millisecond; a backend that can be woken when the lock is released does better.
    ///
    /// # Errors
    /// As [`try_lock`](DirHandle::try_lock).
    fn lock_within(&self, wait: std::time::Duration) -> io::Result<Option<DirLock>> {
        let started = std::time::Instant::now();
        loop {
            if let Some(lock) = self.try_lock()? {
                return Ok(Some(lock));
            }
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(1)));
        }
    }
}

/// One step of [`DirHandle::create_dir_all`]: `mkdir` of `name` in `parent`, keeping a
/// directory already there; anything else there is `EEXIST` when `name` is the last
/// component and `ENOTDIR` when the walk must go on through it.
fn create_dir_step<D: DirHandle + ?Sized>(parent: &D, name: &str, last: bool) -> io::Result<()> {
    match parent.create_dir(name) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match parent.probe(name)? {
            Some(Probe {
                kind: FileKind::Directory,
                ..
            }) => Ok(()),
            _ => Err(io::Error::from_raw_os_error(if last {
                libc::EEXIST
            } else {
                libc::ENOTDIR
            })),
        },
        other => other,
    }
}

/// An open regular file: every call goes to the one descriptor it was opened as.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait FileHandle: Send + Sync + fmt::Debug {
    /// `fstat(2)` of the open file.
    ///
    /// # Errors
    /// `EIO`.
    fn probe(&self) -> io::Result<Probe>;

    /// Allocates blocks for `[offset, offset + len)`, extending the length if needed
    /// (`fallocate(2)` with mode 0). The default body returns `EOPNOTSUPP`, for backends
    /// without allocation.
    ///
    /// # Errors
    /// `EOPNOTSUPP`/`ENOSYS` when unsupported, `EINVAL` for an empty range, `EBADF` when
    /// not opened for writing, `ENOSPC`, `EDQUOT`, `EINTR`, `EIO`…
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Writes `len` bytes of the incompressible [pattern](crate::pattern) at `offset`, so
    /// every written block really takes space even under compression or dedup. On error,
    /// a prefix of the range may have been written.
    ///
    /// # Errors
    /// `EBADF` when not opened for writing, `ENOSPC`, `EDQUOT`, `EIO`, `EFBIG`…
    fn write_fill(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Reads up to `buf.len()` bytes at `offset` (`pread(2)`), returning how many were
    /// read (0 at the end of the file; fewer than asked only at the end). Needs no free
    /// space. The default body returns `EOPNOTSUPP`, for backends that keep no file
    /// contents.
    ///
    /// # Errors
    /// `EBADF` when opened for writing only, `EINVAL` when the offset or the end is past
    /// `i64::MAX`, `EOPNOTSUPP` when unsupported, `EIO`…
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let _ = (offset, buf);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Writes up to `buf.len()` bytes at `offset` (one `pwrite(2)`; at the end of the
    /// file instead when opened with [`append`](OpenOptions::append)), returning how many
    /// were written. As on the kernel, a write that runs out of space part-way returns
    /// the short count of what it did write; the next one fails with `ENOSPC` or `EDQUOT`.
    /// [`write_all_at`](FileHandle::write_all_at) loops over it. The default body
    /// returns `EOPNOTSUPP`, as [`read_at`](FileHandle::read_at).
    ///
    /// # Errors
    /// `EOPNOTSUPP` when unsupported, `EBADF` when not opened for writing, `ENOSPC`,
    /// `EDQUOT` when not a byte could be written, `EINVAL` when the offset or the end is
    /// past `i64::MAX`, `EFBIG` past the filesystem's largest file, `EIO`…
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        let _ = (offset, buf);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Writes all of `buf` at `offset`, calling [`write_at`](FileHandle::write_at) until
    /// it is done and retrying `EINTR`. On error, a prefix of `buf` may have been written.
    ///
    /// # Errors
    /// As `write_at`; `EIO` when a write makes no progress.
    fn write_all_at(&self, mut offset: u64, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(offset, buf) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                Ok(n) => {
                    buf = &buf[n..];
                    offset = offset.saturating_add(n as u64);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sets the length (`ftruncate(2)`): shrinking frees the blocks past `len`; growing
    /// adds a hole and allocates nothing.
    ///
    /// # Errors
    /// `EBADF`/`EINVAL` when not opened for writing, `EFBIG`, `EPERM`, `EIO`…
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Bytes of the file's extents that are shared with another file or a snapshot
    /// (`FIEMAP`, `FIEMAP_EXTENT_SHARED`): deleting the file does not give them back.
    /// `None` when the filesystem cannot say (no `FIEMAP`); the default body says `None`.
    ///
    /// # Errors
    /// Whatever `ioctl(FS_IOC_FIEMAP)` returns other than "not supported".
    fn shared_bytes(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }

    /// Marks the file "no dump" (`FS_NODUMP_FL`, what `chattr +d` sets): backup tools that
    /// honour it (dump, and restic, borg and rsync when asked) skip it. `Ok(false)` when
    /// the filesystem has no such flag; the default body says so.
    ///
    /// # Errors
    /// Whatever `ioctl(FS_IOC_SETFLAGS)` returns other than "not supported".
    fn set_no_dump(&self) -> io::Result<bool> {
        Ok(false)
    }

    /// `fsync(2)`: the file's data and length are durable when it returns.
    ///
    /// # Errors
    /// `EIO` when the data could not be made durable.
    fn sync_all(&self) -> io::Result<()>;

    /// `fdatasync(2)`: the file's data, and its length when it grew, are durable when it
    /// returns (other metadata such as timestamps may not be). The default body calls
    /// [`sync_all`](FileHandle::sync_all).
    ///
    /// # Errors
    /// `EIO` when the data could not be made durable.
    fn sync_data(&self) -> io::Result<()> {
        self.sync_all()
    }
}

/// Forwarding so a `&F`, `Box<F>` or `Arc<F>` can stand where a backend is expected.
macro_rules! forward_host_fs {
    ($($ty:ty),*) => {$(
        impl<F: HostFs + ?Sized> HostFs for $ty {
            fn open_dir(&self, path: &Utf8Path) -> io::Result<Box<dyn DirHandle>> {
                (**self).open_dir(path)
            }
        }
    )*};
}

forward_host_fs!(&F, Box<F>, std::sync::Arc<F>);
