//! [`SimFs`]: a bounded, in-memory [`HostFs`] with fault injection, for tests.
//!
//! Directories and files are reached through handles, as on the kernel: a
//! [`DirHandle`] keeps its directory's inode whatever its path becomes, a [`FileHandle`]
//! its file's, and an unlinked file keeps its blocks until its last handle is dropped.
//!
//! The simulator puts code on the disks that are hard to make for real: one with zero bytes
//! free, one past its quota, one where `fallocate` is not supported or allocates nothing,
//! one that is read-only, one whose files share blocks with a snapshot or a reflink copy
//! ([`SimFs::snapshot_file`], [`SimFs::reflink`]), one whose frees show late
//! ([`SimFs::set_late_frees`]), one that writes the block holding a file's end when the
//! file grows, as btrfs does ([`SimFs::set_eof_block_zeroing`]), one whose operations fail with a chosen errno on the Nth call,
//! one that other writers fill between any two calls, and one that crashes and forgets
//! whatever was not fsynced ([`SimFs::crash`]) or keeps a seeded part of it
//! ([`SimFs::crash_torn`]). It returns the errnos the Linux kernel returns.
//!
//! Memory does not grow with simulated sizes: a file is a length, a set of allocated
//! block ranges and the blocks a caller wrote with [`FileHandle::write_at`], so a 1 PiB
//! disk holding a 1 TiB fallocated file costs a few hundred bytes, and written bytes cost
//! what they are (rounded to whole blocks). Blocks allocated by
//! [`allocate`](FileHandle::allocate) or written by [`write_fill`](FileHandle::write_fill)
//! read back as zeros: the fill pattern is not kept. `SimFs` is a cheap [`Clone`] handle: clones share one filesystem, and it is
//! `Send + Sync`, so threads can race on it.
//!
//! # Examples
//!
//! A disk with 0 bytes free, in one line; unlink still works there:
//!
//! ```
//! use disk_reserve::{HostFs, OpenOptions, SimFs};
//!
//! let fs = SimFs::with_home(1 << 30, "/srv/app");
//! fs.write_file("/srv/app/.reserve", 64 << 20)?;
//! fs.set_free(0)?; // this disk has 0 bytes free
//!
//! let home = fs.open_dir("/srv/app".into())?;
//! let reserve = home.open_file(".reserve", OpenOptions::write())?;
//! let err = reserve.write_fill(64 << 20, 4096).unwrap_err();
//! assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
//! drop(reserve);
//! home.remove_file(".reserve")?;
//! assert_eq!(fs.free_bytes(), 64 << 20);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A fault plan: the second `fsync` of a file fails with `EIO`. As on Linux after a
//! writeback error, the bytes it should have written are dropped: they read back, but no
//! later sync makes them durable unless they are written again.
//!
//! ```
//! use disk_reserve::{HostFs, OpenOptions, SimFs, SimOp};
//!
//! let fs = SimFs::with_home(1 << 20, "/data");
//! fs.fail_nth(SimOp::SyncFile, 2, libc::EIO);
//! let file = fs.open_dir("/data".into())?.open_file("f", OpenOptions::create_new())?;
//! file.sync_all()?;
//! let err = file.sync_all().unwrap_err();
//! assert_eq!(err.raw_os_error(), Some(libc::EIO));
//! file.sync_all()?; // the plan fired once and is gone
//! assert_eq!(fs.calls(SimOp::SyncFile), 3);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A crash: what was not fsynced is lost.
//!
//! ```
//! use disk_reserve::{HostFs, OpenOptions, SimFs};
//!
//! let fs = SimFs::with_home(1 << 20, "/data");
//! let data = fs.open_dir("/data".into())?;
//! let kept = data.open_file("kept", OpenOptions::create_new())?;
//! kept.allocate(0, 8192)?;
//! kept.sync_all()?;
//! data.sync()?;
//! data.open_file("lost", OpenOptions::create_new())?; // its directory is never synced
//!
//! fs.crash();
//! assert_eq!(fs.lookup("/data/kept")?.map(|p| p.allocated_bytes), Some(8192));
//! assert_eq!(fs.lookup("/data/lost")?, None);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A home that moves: a handle stays with the directory it opened.
//!
//! ```
//! use disk_reserve::{HostFs, OpenOptions, SimFs};
//!
//! let fs = SimFs::with_home(1 << 20, "/releases/v1");
//! fs.mkdir_all("/releases/v2")?;
//! fs.symlink("/current", "/releases/v1")?;
//! let home = fs.open_dir("/current".into())?;
//! fs.remove("/current")?;
//! fs.symlink("/current", "/releases/v2")?; // the deploy flips the link
//! home.open_file("f", OpenOptions::create_new())?;
//! assert!(fs.lookup("/releases/v1/f")?.is_some());
//! assert!(fs.lookup("/releases/v2/f")?.is_none());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Not modelled
//!
//! Permissions and ownership (no `EACCES`), inode limits, timestamps, the fill pattern
//! (reads of [`write_fill`](FileHandle::write_fill)'s blocks give zeros), tears inside a
//! block ([`crash`](SimFs::crash) keeps a file exactly as it was at its last sync;
//! [`crash_torn`](SimFs::crash_torn) tears at block granularity), directories' own blocks
//! (directories and symlinks take no space), and directories' link counts (1, as btrfs reports them). A
//! trailing `/` in a setup path is treated as a trailing `/.`.
//!
//! Free space is exactly capacity minus files' blocks minus other writers. Real
//! filesystems, measured by `cli/tests/real_mount.rs`, also spend and hold back space the
//! simulator does not count: metadata (ext2's indirect blocks, which `st_blocks`
//! includes; btrfs' checksums and extent items, and a metadata reserve that makes data
//! writes fail with about 1.7 MiB of a 512 MiB filesystem still counted free), space
//! freed late (btrfs returns freed extents at a transaction commit, XFS frees an unlinked
//! file's blocks in a background worker), and space kept on purpose (btrfs keeps a
//! truncated preallocated extent whole; XFS preallocates past the end of a file being
//! written). Outcomes and the reserve's state agree with the kernel on ext4, XFS, btrfs,
//! ext2 and tmpfs; free space agrees to within these effects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use camino::{Utf8Path, Utf8PathBuf};

use crate::host_fs::{
    DirEntry, DirHandle, DirLock, FileHandle, FileKind, FsKind, HostFs, OpenOptions, Probe, Space,
    check_name,
};

mod data;
mod handles;
mod state;

use data::*;
use handles::*;
use state::*;

/// Block size of [`SimFs::new`], the common one on Linux filesystems.
const DEFAULT_BLOCK_SIZE: u64 = 4096;
/// Symlinks followed in one path resolution before `ELOOP` (the kernel's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: u32 = 40;
/// Longest path, terminating NUL included (`PATH_MAX`).
const PATH_MAX: usize = 4096;
/// Longest path component (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// Largest file length or offset (`off_t` is signed).
const MAX_FILE_BYTES: u64 = i64::MAX as u64;
/// The `f_type` [`DirHandle::fs_kind`] of a `SimFs` reports ("SIMF"): a filesystem that
/// can share extents.
const SIM_MAGIC: u64 = 0x5349_4D46;
/// Inode number of `/`.
const ROOT_INO: u64 = 1;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The [`HostFs`], [`DirHandle`] and [`FileHandle`] operations, for fault plans
/// ([`SimFs::fail_nth`]) and call counts ([`SimFs::calls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum SimOp {
    /// [`HostFs::open_dir`].
    OpenDir,
    /// [`DirHandle::space`].
    Space,
    /// [`DirHandle::probe`] and [`FileHandle::probe`].
    Probe,
    /// [`DirHandle::open_file`] (creating or not).
    OpenFile,
    /// [`FileHandle::allocate`].
    Allocate,
    /// [`FileHandle::write_fill`].
    WriteFill,
    /// [`FileHandle::set_len`].
    SetLen,
    /// [`FileHandle::sync_all`].
    SyncFile,
    /// [`DirHandle::sync`].
    SyncDir,
    /// [`DirHandle::remove_file`].
    RemoveFile,
    /// [`DirHandle::rename`].
    Rename,
    /// [`DirHandle::link`].
    Link,
    /// [`DirHandle::try_lock`].
    LockDir,
    /// [`FileHandle::read_at`].
    ReadAt,
    /// [`FileHandle::write_at`].
    WriteAt,
    /// [`FileHandle::sync_data`].
    SyncData,
    /// [`DirHandle::create_dir`].
    CreateDir,
    /// [`DirHandle::remove_dir`].
    RemoveDir,
    /// [`DirHandle::read_dir`].
    ReadDir,
    /// [`DirHandle::open_subdir`].
    OpenSubdir,
}

impl SimOp {
    /// Every operation, in declaration order.
    pub const ALL: &'static [SimOp] = &[
        SimOp::OpenDir,
        SimOp::Space,
        SimOp::Probe,
        SimOp::OpenFile,
        SimOp::Allocate,
        SimOp::WriteFill,
        SimOp::SetLen,
        SimOp::SyncFile,
        SimOp::SyncDir,
        SimOp::RemoveFile,
        SimOp::Rename,
        SimOp::Link,
        SimOp::LockDir,
        SimOp::ReadAt,
        SimOp::WriteAt,
        SimOp::SyncData,
        SimOp::CreateDir,
        SimOp::RemoveDir,
        SimOp::ReadDir,
        SimOp::OpenSubdir,
    ];
}

/// How many [`SimOp`]s there are.
const OP_COUNT: usize = SimOp::ALL.len();

/// What [`FileHandle::allocate`] does on a [`SimFs`] ([`SimFs::set_allocate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum AllocateMode {
    /// `fallocate` allocates blocks, all or nothing (ext4, XFS, btrfs, tmpfs).
    #[default]
    Supported,
    /// `fallocate` fails with `errno` after the usual argument checks: `EOPNOTSUPP`
    /// (ext2, many FUSE filesystems) or `ENOSYS` (old kernels, some FUSE daemons).
    Unsupported {
        /// The errno every allocation returns.
        errno: i32,
    },
    /// `fallocate` succeeds and extends the length but allocates nothing, so the file
    /// stays sparse (ZFS).
    NoBlocks,
}

/// The largest extents a [`SimFs`] keeps whole ([`SimFs::set_whole_extents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WholeExtents {
    /// The most bytes a sync puts in one extent of written data.
    pub written_bytes: u64,
    /// The most bytes [`FileHandle::allocate`] puts in one extent.
    pub allocated_bytes: u64,
}

impl WholeExtents {
    /// btrfs: written extents of up to 128 MiB (`BTRFS_MAX_EXTENT_SIZE`), `fallocate`
    /// extents of up to 256 MiB.
    pub const BTRFS: WholeExtents = WholeExtents {
        written_bytes: 128 << 20,
        allocated_bytes: 256 << 20,
    };

    /// btrfs mounted with `compress` or `compress-force`: written data goes in extents
    /// of at most 128 KiB (`BTRFS_MAX_UNCOMPRESSED`), `fallocate` extents as without.
    pub const BTRFS_COMPRESSED: WholeExtents = WholeExtents {
        written_bytes: 128 << 10,
        allocated_bytes: 256 << 20,
    };
}

/// What a [`SimFs`] holds at one moment ([`SimFs::snapshot`]): every live path with what
/// [`DirHandle::probe`] says of it, and the bytes other writers hold.
///
/// Compare two snapshots to assert that an operation changed nothing but one path:
///
/// ```
/// use disk_reserve::{HostFs, OpenOptions, SimFs};
///
/// let fs = SimFs::with_home(1 << 20, "/data");
/// fs.write_file("/data/db", 4096)?;
/// let before = fs.snapshot();
/// let data = fs.open_dir("/data".into())?;
/// data.open_file(".reserve", OpenOptions::create_new())?.allocate(0, 65536)?;
/// assert_eq!(fs.snapshot().without("/data/.reserve"), before);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSnapshot {
    /// Every path reachable from `/` (included), with its `lstat`.
    pub entries: BTreeMap<Utf8PathBuf, Probe>,
    /// The regular files a snapshot ([`SimFs::snapshot_file`]) or a reflink copy
    /// ([`SimFs::reflink`]) shares blocks with, with the bytes shared; files sharing none
    /// are not listed.
    pub shared_bytes: BTreeMap<Utf8PathBuf, u64>,
    /// Bytes held by other writers ([`SimFs::eat`]).
    pub other_writers_bytes: u64,
}

impl SimSnapshot {
    /// This snapshot without `path` and anything under it.
    pub fn without(mut self, path: impl AsRef<Utf8Path>) -> Self {
        let path = path.as_ref();
        self.entries.retain(|p, _| !p.starts_with(path));
        self
    }

    /// Bytes of the file at `path` a snapshot shares (0 when none or not there).
    pub fn shared_bytes_of(&self, path: impl AsRef<Utf8Path>) -> u64 {
        self.shared_bytes.get(path.as_ref()).copied().unwrap_or(0)
    }

    /// What the snapshot says of `path`, if it was there.
    pub fn get(&self, path: impl AsRef<Utf8Path>) -> Option<&Probe> {
        self.entries.get(path.as_ref())
    }
}

/// A bounded, in-memory, thread-safe filesystem implementing [`HostFs`].
///
/// See the [module documentation](self) for examples. Clones share one filesystem.
///
/// Three groups of methods:
///
/// * [`HostFs`], [`DirHandle`] and [`FileHandle`] methods: the code under test. They
///   count calls, apply scheduled space changes and fault plans, follow the kernel's
///   errnos, and only become durable when synced.
/// * Setup methods ([`mkdir_all`](SimFs::mkdir_all), [`write_file`](SimFs::write_file),
///   [`remove`](SimFs::remove)…): the test's own hands. No fault injection, no call
///   counting, no read-only check; durable at once.
/// * Knobs and inspection ([`set_free`](SimFs::set_free), [`fail_nth`](SimFs::fail_nth),
///   [`crash`](SimFs::crash), [`snapshot`](SimFs::snapshot)…).
#[derive(Clone)]
pub struct SimFs {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when a directory lock is released or the lock table is emptied.
    lock_released: Condvar,
    /// Calls left before the planned actor's turn ([`SimFs::interleave`]; 0: none).
    /// Read on every call outside the state lock, so an idle plan costs one load.
    turn_countdown: AtomicU32,
    /// The planned actor.
    turn: Mutex<Option<Actor>>,
}

impl Inner {
    fn state(&self) -> StateGuard<'_> {
        StateGuard(self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Another actor's turn in the middle of a call ([`SimFs::interleave`]).
type Actor = Box<dyn FnOnce() + Send>;

impl SimFs {
    /// An empty filesystem of `capacity_bytes` with 4096-byte blocks; only `/` exists.
    ///
    /// ```
    /// let fs = disk_reserve::SimFs::new(1 << 20);
    /// assert_eq!(fs.free_bytes(), 1 << 20);
    /// ```
    pub fn new(capacity_bytes: u64) -> Self {
        SimFs::with_block_size(capacity_bytes, DEFAULT_BLOCK_SIZE)
    }

    /// An empty filesystem of `capacity_bytes` with blocks of `block_size` bytes.
    ///
    /// ```
    /// use disk_reserve::SimFs;
    ///
    /// let fs = SimFs::with_block_size(1 << 20, 65536);
    /// fs.write_file("/one-byte", 1)?;
    /// assert_eq!(fs.used_bytes(), 65536);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `block_size` is not a power of two.
    pub fn with_block_size(capacity_bytes: u64, block_size: u64) -> Self {
        assert!(
            block_size.is_power_of_two(),
            "SimFs block size must be a power of two, got {block_size}"
        );
        SimFs {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(capacity_bytes, block_size)),
                lock_released: Condvar::new(),
                turn_countdown: AtomicU32::new(0),
                turn: Mutex::new(None),
            }),
        }
    }

    /// An empty filesystem of `capacity_bytes` holding the directory `home` and its
    /// parents: the one-line setup for a test.
    ///
    /// ```
    /// use disk_reserve::{FileKind, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 30, "/srv/app");
    /// assert_eq!(fs.lookup("/srv/app")?.unwrap().kind, FileKind::Directory);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `home` is not an absolute path.
    pub fn with_home(capacity_bytes: u64, home: impl AsRef<Utf8Path>) -> Self {
        let fs = SimFs::new(capacity_bytes);
        let home = home.as_ref();
        if let Err(err) = fs.mkdir_all(home) {
            panic!("SimFs::with_home({home:?}): {err}");
        }
        fs
    }

    fn state(&self) -> StateGuard<'_> {
        self.inner.state()
    }

    /// The state for a [`HostFs`], [`DirHandle`] or [`FileHandle`] call: first, if its
    /// turn has come, the actor planned with [`interleave`](SimFs::interleave) runs,
    /// outside the state lock.
    fn call_state(&self) -> StateGuard<'_> {
        if self.inner.turn_countdown.load(Ordering::Acquire) != 0 {
            self.count_down_turn();
        }
        self.state()
    }

    #[cold]
    fn count_down_turn(&self) {
        let left =
            self.inner
                .turn_countdown
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if left == Ok(1) {
            let actor = self
                .inner
                .turn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(actor) = actor {
                actor();
            }
        }
    }

    /// The state after the prelude every [`HostFs`] call goes through.
    fn begin(&self, op: SimOp, names: &[&str]) -> io::Result<StateGuard<'_>> {
        let mut state = self.call_state();
        state.begin(op, names)?;
        Ok(state)
    }

    // ---- knobs ----

    /// Makes other writers hold exactly enough that `free_bytes` bytes are free, rounded
    /// down to a whole block: "this disk has 0 bytes free".
    ///
    /// ```
    /// let fs = disk_reserve::SimFs::new(1 << 20);
    /// fs.set_free(10_000)?;
    /// assert_eq!(fs.free_bytes(), 8192);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// `ENOSPC` if files (and blocks only snapshots hold) already use more than
    /// `capacity - free_bytes`; nothing changes.
    pub fn set_free(&self, free_bytes: u64) -> io::Result<()> {
        let mut state = self.state();
        let free = free_bytes / state.block_size * state.block_size;
        // What snapshots alone hold stays held; frees not shown yet are taken as shown
        // (the figure given is the settled one).
        let held = state.file_bytes().saturating_add(state.pinned());
        let other_writers = state
            .capacity
            .checked_sub(free)
            .and_then(|room| room.checked_sub(held))
            .ok_or_else(|| errno(libc::ENOSPC))?;
        state.other_writers = other_writers;
        state.pending_free = 0;
        Ok(())
    }

    /// Other writers take up to `bytes` (no more than is free); returns what they took.
    pub fn eat(&self, bytes: u64) -> u64 {
        self.state().eat(bytes)
    }

    /// Other writers free up to `bytes` of what they hold; returns what they freed.
    pub fn free_external(&self, bytes: u64) -> u64 {
        self.state().free_external(bytes)
    }

    /// Queues space changes by other writers: before each later [`HostFs`] call, one delta
    /// is taken from the queue and applied (positive: [`eat`](SimFs::eat) that many bytes;
    /// negative: [`free_external`](SimFs::free_external) them). Appends to what is queued.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// // Someone fills the disk between the second call and the third.
    /// fs.schedule_space_changes([0, 0, i64::MAX]);
    /// let data = fs.open_dir("/data".into())?;
    /// assert_eq!(data.space()?.free_bytes, 1 << 20);
    /// data.open_file("f", OpenOptions::create_new())?;
    /// assert_eq!(fs.free_bytes(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn schedule_space_changes(&self, deltas: impl IntoIterator<Item = i64>) {
        self.state().space_changes.extend(deltas);
    }

    /// Sets (or with `None` removes) a quota on the bytes files allocate; allocations
    /// past it fail with `EDQUOT`. Other writers' bytes do not count, and
    /// [`DirHandle::space`] does not show the quota, like `statvfs`.
    pub fn set_quota(&self, quota_bytes: Option<u64>) {
        self.state().quota = quota_bytes;
    }

    /// Makes frees show late, as XFS and btrfs do: blocks a truncate or an unlink gives
    /// back are free for allocation at once, but [`DirHandle::space`] shows them only
    /// after a [`DirHandle::sync_fs`] (unless
    /// [`set_sync_fs_shows_late_frees(false)`](SimFs::set_sync_fs_shows_late_frees), as
    /// on XFS) or from its second call on (the first only starts the worker that accounts
    /// them, as on XFS).
    ///
    /// ```
    /// use disk_reserve::{HostFs, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// fs.write_file("/data/filler", 1 << 19)?;
    /// fs.set_late_frees(true);
    /// let data = fs.open_dir("/data".into())?;
    /// data.remove_file("filler")?;
    /// assert_eq!(data.space()?.free_bytes, 1 << 19); // not yet
    /// assert_eq!(data.space()?.free_bytes, 1 << 20); // the second look shows it
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_late_frees(&self, late: bool) {
        let mut state = self.state();
        state.late_frees = late;
        if !late {
            state.pending_free = 0;
        }
    }

    /// With late frees on ([`set_late_frees`](SimFs::set_late_frees)), whether
    /// [`DirHandle::sync_fs`] shows the frees still pending: `true` (the default) as on
    /// btrfs, whose transaction commit accounts them; `false` as on XFS, where `syncfs`
    /// does not wait for the background worker that frees an unlinked file's blocks, so
    /// only a later `statvfs` shows them (the first one kicks the worker). Measured on
    /// Linux 6.18: right after the last handle of an unlinked 8 MiB file closed and
    /// `syncfs` returned, `statfs` showed 0–60 KiB of it free (three runs).
    ///
    /// ```
    /// use disk_reserve::{HostFs, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// fs.write_file("/data/filler", 1 << 19)?;
    /// fs.set_late_frees(true);
    /// fs.set_sync_fs_shows_late_frees(false); // XFS
    /// let data = fs.open_dir("/data".into())?;
    /// data.remove_file("filler")?;
    /// data.sync_fs()?;
    /// assert_eq!(data.space()?.free_bytes, 1 << 19); // syncfs did not show it
    /// assert_eq!(data.space()?.free_bytes, 1 << 20); // a second look does
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_sync_fs_shows_late_frees(&self, shown: bool) {
        self.state().sync_fs_shows_late_frees = shown;
    }

    /// Makes [`DirHandle::space`] show data written with [`FileHandle::write_at`] or
    /// [`FileHandle::write_fill`] only after the next [`DirHandle::sync_fs`], as btrfs
    /// does: it counts written data in `statvfs` at a transaction commit, which `fsync`
    /// does not force (64 MiB written and `fsync`ed showed as 0 bytes taken until a
    /// `syncfs`, Linux 6.18). The blocks are taken all the same: a write past the free
    /// space still fails with `ENOSPC`. Space `allocate` takes shows at once; cutting or
    /// deleting data not shown yet changes nothing `space` shows; a crash shows
    /// everything. Off by default (ext4, XFS, tmpfs).
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// fs.set_late_writes(true);
    /// let data = fs.open_dir("/data".into())?;
    /// let file = data.open_file("log", OpenOptions::create_new())?;
    /// file.write_fill(0, 1 << 19)?;
    /// file.sync_all()?;
    /// assert_eq!(data.space()?.free_bytes, 1 << 20); // not shown yet
    /// data.sync_fs()?;
    /// assert_eq!(data.space()?.free_bytes, 1 << 19);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_late_writes(&self, late: bool) {
        let mut state = self.state();
        state.late_writes = late;
        if !late {
            state.unshown_writes = 0;
        }
    }

    /// Makes an extension of a file whose length ends inside a block write zeros over
    /// the rest of that block, allocating it if it was a hole, as btrfs does
    /// (`btrfs_truncate_block`): a `set_len` that grows the file, and a write or an
    /// `allocate` that starts past its end. ext4, XFS and tmpfs leave the hole (the
    /// default). It matters where the block is then shared: a snapshot taken after it
    /// holds a block the file's owner did not write.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// fs.set_eof_block_zeroing(true);
    /// let data = fs.open_dir("/data".into())?;
    /// let file = data.open_file("sparse", OpenOptions::create_new())?;
    /// file.set_len(5000)?; // from 0: no block to zero
    /// assert_eq!(file.probe()?.allocated_bytes, 0);
    /// file.set_len(20_000)?; // 5000 ends inside block 1: it is written
    /// assert_eq!(file.probe()?.allocated_bytes, 4096);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_eof_block_zeroing(&self, on: bool) {
        self.state().eof_block_zeroing = on;
    }

    /// Keeps files' blocks in whole extents, as btrfs does: an extent is freed only when
    /// no block of it is in use any more, and a write into a block a sync already wrote
    /// takes a new block (copy-on-write). `None` (the default) is ext4, XFS and tmpfs:
    /// every block is freed as its file lets go of it, and a write goes in place.
    ///
    /// With it on, a sync puts each run of adjacent blocks written since the last one
    /// into extents of at most [`WholeExtents::written_bytes`] (btrfs's delayed
    /// allocation makes one extent of appends synced once, one per sync of appends
    /// synced one by one), and [`FileHandle::allocate`] reserves extents of at most
    /// [`WholeExtents::allocated_bytes`], unwritten. Then:
    ///
    /// * cutting blocks off with `set_len` frees nothing while the rest of their extent
    ///   is the file's (a 16 MiB file written in one go and cut to 8 MiB still holds
    ///   16 MiB; so does a 16 MiB `fallocate`d one);
    /// * rewriting blocks of a written extent takes new blocks while the old ones stay
    ///   held by the rest of their extent (rewriting the middle 8 MiB of that file takes
    ///   8 MiB; rewriting all of it takes none once it is done, but needs the room while
    ///   it runs, so a rewrite in place on a full disk fails with `ENOSPC` and changes
    ///   nothing); a write into an `allocate`d block goes in place the first time;
    /// * deleting the file frees everything (as late as [`set_late_frees`] says).
    ///
    /// Each of these was measured on btrfs (Linux 6.18; the mount matrix's
    /// `whole_extents` test compares it). Not modelled: btrfs also ends an extent at its
    /// block group (about a tenth of a small filesystem) and may cut a large write into
    /// smaller extents at writeback, so its extents can be smaller than the most this
    /// sets; a block both an extent and a snapshot or reflink copy hold is counted by
    /// the snapshot or copy alone.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs, WholeExtents};
    ///
    /// let fs = SimFs::with_home(64 << 20, "/data");
    /// fs.set_whole_extents(Some(WholeExtents::BTRFS));
    /// let data = fs.open_dir("/data".into())?;
    /// let file = data.open_file("log", OpenOptions::create_new())?;
    /// file.write_all_at(0, &vec![7; 16 << 20])?;
    /// file.sync_all()?; // one 16 MiB extent
    /// let free = fs.free_bytes();
    /// file.set_len(8 << 20)?;
    /// assert_eq!(fs.free_bytes(), free); // the extent is still in use: nothing freed
    /// file.write_all_at(0, &vec![9; 4 << 20])?;
    /// assert_eq!(fs.free_bytes(), free - (4 << 20)); // copied on write
    /// drop(file);
    /// data.remove_file("log")?;
    /// assert_eq!(fs.free_bytes(), 64 << 20);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// [`set_late_frees`]: SimFs::set_late_frees
    pub fn set_whole_extents(&self, extents: Option<WholeExtents>) {
        let mut state = self.state();
        let block_size = state.block_size;
        let blocks = |bytes: u64| (bytes / block_size).max(1);
        state.whole_extents = extents.map(|e| (blocks(e.written_bytes), blocks(e.allocated_bytes)));
        if extents.is_none() {
            // Without extents every block the files let go of is free.
            for node in state.nodes.values_mut() {
                if let Node::Regular { live, durable } = node {
                    live.disk = None;
                    durable.disk = None;
                }
            }
        }
    }

    /// Takes a snapshot of the file at `path` (a btrfs snapshot, a reflink copy kept
    /// elsewhere): its blocks are now shared, so [`FileHandle::shared_bytes`] counts them,
    /// a write into one takes a new block (copy-on-write: the snapshot keeps the old one,
    /// and without room the write fails with `ENOSPC`), and deleting or truncating the
    /// file does not give them back until [`drop_snapshots`](SimFs::drop_snapshots).
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`; `EINVAL` if `path` is not a regular file.
    pub fn snapshot_file(&self, path: impl AsRef<Utf8Path>) -> io::Result<()> {
        let mut state = self.state();
        let ino = state
            .resolve(path.as_ref(), false)?
            .ino
            .ok_or_else(|| errno(libc::ENOENT))?;
        let held = state.snapshots.get(&ino).copied().unwrap_or(0);
        let (taken, left_behind) = match state.node_mut(ino) {
            Node::Regular { live, durable } => {
                // What the last snapshot holds that the file no longer has stays held.
                let left_behind = held - live.shared.block_count().min(held);
                live.shared.clone_from(&live.blocks);
                durable.shared = durable.blocks.intersection(&live.shared);
                (live.shared.block_count(), left_behind)
            }
            _ => return Err(errno(libc::EINVAL)),
        };
        state.snapshot_only_blocks += left_behind;
        state.snapshots.insert(ino, taken);
        Ok(())
    }

    /// Makes `to` a reflink copy of the regular file at `from`, durably, as
    /// `cp --reflink=always` (`FICLONE`) does on XFS or btrfs: a new file with the same
    /// length and bytes whose blocks are `from`'s, so it takes no space. Both files'
    /// [`FileHandle::shared_bytes`] count the blocks they share; deleting or truncating
    /// one gives back only the blocks the other does not share; writing to a shared block
    /// of either copies it first (copy-on-write: only the written blocks, `ENOSPC` or
    /// `EDQUOT` when the copies do not fit). A copy of a copy shares with both.
    ///
    /// Like XFS, not like btrfs: btrfs keeps a whole extent while any copy points into
    /// it (a file whose copy was partly rewritten still shares, and gives back, all of
    /// it or nothing), and XFS does not share unwritten (fallocated, never written)
    /// extents at all (the copy gets holes); the simulator shares every allocated block,
    /// block by block.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// fs.write_file("/data/a", 64 << 10)?;
    /// fs.reflink("/data/a", "/data/b")?;
    /// assert_eq!(fs.free_bytes(), (1 << 20) - (64 << 10)); // the copy took nothing
    /// assert_eq!(fs.shared_bytes_of("/data/b"), 64 << 10);
    ///
    /// // Writing one block of the copy copies that block only.
    /// let b = fs.open_dir("/data".into())?.open_file("b", OpenOptions::write())?;
    /// b.write_fill(0, 4096)?;
    /// assert_eq!(b.shared_bytes()?, Some(60 << 10));
    /// assert_eq!(fs.free_bytes(), (1 << 20) - (68 << 10));
    /// drop(b);
    ///
    /// // Deleting `a` gives back only the block `b` no longer shares.
    /// fs.remove("/data/a")?;
    /// assert_eq!(fs.free_bytes(), (1 << 20) - (64 << 10));
    /// assert_eq!(fs.shared_bytes_of("/data/b"), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// A file both snapshotted ([`snapshot_file`](SimFs::snapshot_file)) and copied
    /// counts its blocks twice once the snapshot and the copy both outlive it (not
    /// modelled).
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR` for either path; `EINVAL` if `from` is not a regular file;
    /// `EEXIST` if `to` is taken.
    pub fn reflink(&self, from: impl AsRef<Utf8Path>, to: impl AsRef<Utf8Path>) -> io::Result<()> {
        let mut state = self.state();
        let source = state
            .resolve(from.as_ref(), true)?
            .ino
            .ok_or_else(|| errno(libc::ENOENT))?;
        let mut data = match state.node(source) {
            Node::Regular { live, .. } => live.clone(),
            _ => return Err(errno(libc::EINVAL)),
        };
        data.shared = Extents::default();
        // The copy's blocks are the source's extents' (the clone group counts them).
        data.disk = None;
        let (parent, name) = state.free_entry(to.as_ref())?;
        let blocks = data.blocks.clone();
        let node = Node::Regular {
            live: data.clone(),
            durable: data,
        };
        let copy = state.link_new(parent, name, node, true);
        // The copy joins every group the source's blocks are in; the source's own blocks
        // start a new group of the two.
        let mut own = blocks;
        for members in state.clones.values_mut() {
            if let Some(in_group) = members.get(&source).cloned() {
                for (start, end) in in_group.ranges() {
                    own.remove(start, end);
                }
                members.insert(copy, in_group);
            }
        }
        if own.block_count() > 0 {
            let group = state.next_clone_group;
            state.next_clone_group += 1;
            state
                .clones
                .insert(group, BTreeMap::from([(source, own.clone()), (copy, own)]));
        }
        Ok(())
    }

    /// Deletes every snapshot: blocks only they held are free again, no file shares any.
    pub fn drop_snapshots(&self) {
        let mut state = self.state();
        state.snapshots.clear();
        state.snapshot_only_blocks = 0;
        for node in state.nodes.values_mut() {
            if let Node::Regular { live, durable } = node {
                live.shared = Extents::default();
                durable.shared = Extents::default();
            }
        }
    }

    /// Chooses what [`FileHandle::allocate`] does.
    pub fn set_allocate(&self, mode: AllocateMode) {
        self.state().allocate_mode = mode;
    }

    /// Makes the filesystem read-only (or writable again): creating or opening a file for
    /// writing, `allocate`, `write_fill`, `set_len`, `remove_file`, `rename` and `link`
    /// fail with `EROFS` where the kernel would; the other operations work.
    pub fn set_read_only(&self, read_only: bool) {
        self.state().read_only = read_only;
    }

    /// Makes the `n`-th next call of `op` (1-based, counting from now) fail with `errno`
    /// and have no effect — but for a failed [`sync_all`](FileHandle::sync_all) or
    /// [`sync_data`](FileHandle::sync_data), which drops the bytes it should have written
    /// from writeback, as Linux does. Several plans may be pending; when two fall on the same call,
    /// the one made first gives the errno and both are used up.
    ///
    /// ```
    /// use disk_reserve::{HostFs, SimFs, SimOp};
    ///
    /// let fs = SimFs::new(1 << 20);
    /// let root = fs.open_dir("/".into()).unwrap();
    /// fs.fail_nth(SimOp::Probe, 2, libc::EIO);
    /// assert!(root.probe("x").is_ok());
    /// assert_eq!(root.probe("x").unwrap_err().raw_os_error(), Some(libc::EIO));
    /// assert!(root.probe("x").is_ok());
    /// ```
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn fail_nth(&self, op: SimOp, n: u32, errno: i32) {
        assert!(n >= 1, "SimFs::fail_nth counts calls from 1");
        self.state().faults.push(Fault {
            op,
            name: None,
            calls_left: n,
            errno,
        });
    }

    /// Makes the `n`-th next call of `op` on `name` (1-based, counting from now) fail with
    /// `errno` and have no effect: "the third write to `wal` fails with `EIO`". Calls on
    /// other names are not counted. A call is on `name` when it is: a [`DirHandle`] call
    /// given `name` (either of [`rename`](DirHandle::rename)'s or
    /// [`link`](DirHandle::link)'s two), a [`FileHandle`] call on a handle opened by
    /// `name` (whatever the file is called since), or [`HostFs::open_dir`] of the path
    /// `name`.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs, SimOp};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// let data = fs.open_dir("/data".into())?;
    /// fs.fail_nth_on(SimOp::WriteAt, "wal", 2, libc::EIO);
    /// let other = data.open_file("other", OpenOptions::create_new())?;
    /// let wal = data.open_file("wal", OpenOptions::append())?;
    /// wal.write_at(0, b"one")?;
    /// other.write_at(0, b"not counted")?;
    /// assert_eq!(wal.write_at(0, b"two").unwrap_err().raw_os_error(), Some(libc::EIO));
    /// wal.write_at(0, b"three")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn fail_nth_on(&self, op: SimOp, name: &str, n: u32, errno: i32) {
        assert!(n >= 1, "SimFs::fail_nth_on counts calls from 1");
        self.state().faults.push(Fault {
            op,
            name: Some(name.to_owned()),
            calls_left: n,
            errno,
        });
    }

    /// Makes the next call of `op` fail with `errno`: `fail_nth(op, 1, errno)`.
    pub fn fail_next(&self, op: SimOp, errno: i32) {
        self.fail_nth(op, 1, errno);
    }

    /// How many times `op` was called since the filesystem was made, failed calls included
    /// (not those a power cut stopped: they never reached the filesystem).
    pub fn calls(&self, op: SimOp) -> u64 {
        self.state().calls[op as usize]
    }

    /// Simulates a power cut: every directory goes back to the entries it had at its last
    /// [`sync`](DirHandle::sync) and every file to its length, blocks and bytes at its last
    /// [`sync_all`](FileHandle::sync_all) or [`sync_data`](FileHandle::sync_data) (setup
    /// methods count as synced). A created but unsynced file or directory vanishes, an
    /// unlinked or renamed but unsynced one comes back, unsynced growth and bytes are lost.
    ///
    /// This is deliberately pessimistic: on ext4 and XFS a journal commit often makes
    /// earlier directory changes durable along with a later `fsync` of a file; here only a
    /// sync of the directory itself does. Code that survives these crashes follows the
    /// rules the ALICE and CrashMonkey studies found applications breaking. Every directory
    /// lock is dropped; guards still held release nothing. Frees not shown yet
    /// ([`set_late_frees`](SimFs::set_late_frees)) show at once: the filesystem mounted
    /// again counts what its disk holds.
    pub fn crash(&self) {
        self.state().crash();
        self.inner.lock_released.notify_all();
    }

    /// A power cut that tears, from `seed`: besides what [`crash`](SimFs::crash) keeps,
    /// some of what was not synced made it to the disk, as the kernel's writeback and
    /// journal commits may have written it on their own. The same seed on the same
    /// history gives the same disk; print the seed of a failing crash test to replay it.
    ///
    /// What it generates:
    ///
    /// * Each file not shortened since its last sync keeps a seeded prefix, in block
    ///   order, of the blocks whose allocation or bytes changed since (none, some, or
    ///   all), over its synced blocks; its length is the live one when every changed
    ///   block is kept, else either the start of the first block not kept (within the
    ///   synced and the live length) or the live length with the live allocation, the
    ///   metadata having reached the disk before the data (as ext4's `data=writeback`
    ///   and XFS allow). So an appended record can come back cut at a block boundary,
    ///   or with its length but the synced bytes (zeros where the file was new) in the
    ///   blocks not kept; a block is never left unallocated under the length unless the
    ///   live file had a hole there.
    /// * A file shortened since its sync comes back whole as synced or as live.
    /// * Unsynced directory changes are kept or dropped in groups: every change naming
    ///   one inode (its create, its unlink, both names of a rename) goes together, and a
    ///   rename over a name joins the two inodes' groups. Each inode so ends up with the
    ///   names it had at the last sync or the live ones, never both: a directory never
    ///   appears twice or inside itself.
    ///
    /// What it does not generate: a tear inside a block (a sector), bytes that were
    /// never written (garbage in a block allocated but not written), and the orders a
    /// journal forbids: groups are independent, so a later change can be kept while an
    /// earlier one is dropped, which ext4's and XFS's journals (committing in order)
    /// would not allow, but a filesystem without one, such as ext2, might.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// let data = fs.open_dir("/data".into())?;
    /// let log = data.open_file("log", OpenOptions::create_new())?;
    /// log.sync_all()?;
    /// data.sync()?;
    /// log.write_all_at(0, &[7; 3 * 4096])?; // three blocks, never synced
    ///
    /// let seed = 42;
    /// fs.crash_torn(seed);
    /// let log = fs.open_dir("/data".into())?.open_file("log", OpenOptions::read())?;
    /// let mut bytes = vec![0; 3 * 4096];
    /// let len = log.read_at(0, &mut bytes)?;
    /// assert!(len.is_multiple_of(4096), "seed {seed}: cut at a block boundary, if at all");
    /// // A prefix of the blocks written, then zeros (blocks the length covers, not the data).
    /// let written = bytes.iter().take_while(|&&b| b == 7).count();
    /// assert!(written.is_multiple_of(4096), "seed {seed}");
    /// assert!(bytes[written..len].iter().all(|&b| b == 0), "seed {seed}");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn crash_torn(&self, seed: u64) {
        self.state().crash_torn(seed);
        self.inner.lock_released.notify_all();
    }

    /// Plans a power cut: the `n`-th next call of any operation (1-based) crashes the
    /// filesystem as [`crash`](SimFs::crash) does instead of running, and fails with `EIO`;
    /// handles opened before it fail with `EIO` from then on, as a dead process's would.
    /// `0` cancels the plan.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// let dir = fs.open_dir("/data".into())?;
    /// fs.crash_after(2);
    /// let file = dir.open_file("f", OpenOptions::create_new())?; // call 1 runs
    /// assert_eq!(file.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO)); // call 2: power cut
    /// assert_eq!(fs.lookup("/data/f")?, None); // the directory was never synced
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn crash_after(&self, n: u32) {
        let mut state = self.state();
        state.crash_countdown = n;
        state.crash_seed = None;
    }

    /// Plans a torn power cut: as [`crash_after`](SimFs::crash_after), but the cut is a
    /// [`crash_torn`](SimFs::crash_torn) from `seed`. `n == 0` cancels the plan.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/data");
    /// let file = fs.open_dir("/data".into())?.open_file("f", OpenOptions::create_new())?;
    /// fs.crash_torn_after(2, 7);
    /// file.write_all_at(0, &[1; 8192])?; // call 1 runs
    /// assert!(file.sync_data().is_err()); // call 2: a torn power cut from seed 7
    /// assert_eq!(fs.crashes(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn crash_torn_after(&self, n: u32, seed: u64) {
        let mut state = self.state();
        state.crash_countdown = n;
        state.crash_seed = (n > 0).then_some(seed);
    }

    /// How many power cuts ([`crash`](SimFs::crash), [`crash_after`](SimFs::crash_after))
    /// this filesystem has been through.
    pub fn crashes(&self) -> u64 {
        self.state().generation
    }

    /// The largest `free_bytes` a [`DirHandle::space`] call returned since the last call
    /// of this method, if any.
    pub fn take_max_free_reported(&self) -> Option<u64> {
        std::mem::take(&mut self.state().max_free_reported).checked_sub(1)
    }

    // ---- setup ----

    /// Creates the directory `path` and its missing parents, like `mkdir -p`.
    ///
    /// # Errors
    /// `EINVAL` for a relative path, `EEXIST` if `path` is something other than a
    /// directory, `ENOTDIR` if a parent is.
    pub fn mkdir_all(&self, path: impl AsRef<Utf8Path>) -> io::Result<()> {
        self.state().mkdir_all(path.as_ref())
    }

    /// Creates a dense regular file of `len` bytes: every block is allocated.
    ///
    /// # Errors
    /// `EEXIST` if `path` is taken, `ENOENT`/`ENOTDIR` for the parent, `ENOSPC` or
    /// `EDQUOT` if the blocks do not fit (nothing is created), `EFBIG`.
    pub fn write_file(&self, path: impl AsRef<Utf8Path>, len: u64) -> io::Result<()> {
        let mut state = self.state();
        let (parent, name) = state.free_entry(path.as_ref())?;
        let blocks = checked_end(0, len)?.div_ceil(state.block_size);
        let (budget, out_of_space) = state.allocation_budget();
        if blocks > budget {
            return Err(errno(out_of_space));
        }
        let mut data = FileData {
            len,
            ..FileData::default()
        };
        data.blocks.insert(0, blocks);
        if let Some((written_max, _)) = state.whole_extents {
            let blocks = data.blocks.clone();
            data.disk_mut().close(&blocks, written_max);
        }
        let node = Node::Regular {
            live: data.clone(),
            durable: data,
        };
        state.link_new(parent, name, node, true);
        Ok(())
    }

    /// Creates a sparse regular file of `len` bytes: nothing is allocated.
    ///
    /// # Errors
    /// `EEXIST` if `path` is taken, `ENOENT`/`ENOTDIR` for the parent, `EFBIG`.
    pub fn write_sparse(&self, path: impl AsRef<Utf8Path>, len: u64) -> io::Result<()> {
        let len = checked_end(0, len)?;
        let data = FileData {
            len,
            ..FileData::default()
        };
        let node = Node::Regular {
            live: data.clone(),
            durable: data,
        };
        self.state().setup_create(path.as_ref(), node).map(drop)
    }

    /// Creates a symbolic link at `path` pointing to `target` (absolute or relative,
    /// dangling or not).
    ///
    /// # Errors
    /// `EEXIST` if `path` is taken, `ENOENT` for an empty target or a missing parent,
    /// `ENAMETOOLONG`.
    pub fn symlink(
        &self,
        path: impl AsRef<Utf8Path>,
        target: impl AsRef<Utf8Path>,
    ) -> io::Result<()> {
        let target = target.as_ref().as_str();
        if target.is_empty() {
            return Err(errno(libc::ENOENT));
        }
        if target.len() >= PATH_MAX {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let node = Node::Symlink {
            target: target.to_owned(),
        };
        self.state().setup_create(path.as_ref(), node).map(drop)
    }

    /// Creates a named pipe at `path`.
    ///
    /// # Errors
    /// As [`mknod`](SimFs::mknod).
    pub fn mkfifo(&self, path: impl AsRef<Utf8Path>) -> io::Result<()> {
        self.mknod(path, FileKind::Fifo)
    }

    /// Creates a Unix domain socket at `path`.
    ///
    /// # Errors
    /// As [`mknod`](SimFs::mknod).
    pub fn mksocket(&self, path: impl AsRef<Utf8Path>) -> io::Result<()> {
        self.mknod(path, FileKind::Socket)
    }

    /// Creates a special file (or an empty regular file) of `kind` at `path`, like
    /// `mknod(2)`.
    ///
    /// # Errors
    /// `EINVAL` for a directory or symlink kind, `EEXIST` if `path` is taken,
    /// `ENOENT`/`ENOTDIR` for the parent.
    pub fn mknod(&self, path: impl AsRef<Utf8Path>, kind: FileKind) -> io::Result<()> {
        let node = match kind {
            FileKind::Regular => Node::Regular {
                live: FileData::default(),
                durable: FileData::default(),
            },
            FileKind::Directory | FileKind::Symlink => return Err(errno(libc::EINVAL)),
            special => Node::Special(special),
        };
        self.state().setup_create(path.as_ref(), node).map(drop)
    }

    /// Gives the regular file at `existing` a second name `new`, like `link(2)` (no link is
    /// followed), durably: both names then share one inode, its length and its blocks.
    ///
    /// # Errors
    /// `ENOENT` if `existing` is missing, `EPERM` if it is a directory, `EEXIST` if `new`
    /// is taken, `ENOENT`/`ENOTDIR` for `new`'s parent.
    pub fn hard_link(
        &self,
        existing: impl AsRef<Utf8Path>,
        new: impl AsRef<Utf8Path>,
    ) -> io::Result<()> {
        let mut state = self.state();
        let ino = state
            .resolve(existing.as_ref(), false)?
            .ino
            .ok_or_else(|| errno(libc::ENOENT))?;
        if let Node::Directory { .. } = state.node(ino) {
            return Err(errno(libc::EPERM));
        }
        let (parent, name) = state.free_entry(new.as_ref())?;
        if let Node::Directory { live, durable } = state.node_mut(parent) {
            live.insert(name.clone(), ino);
            durable.insert(name, ino);
        }
        Ok(())
    }

    /// Moves whatever is at `from` to `to` (any two directories), durably, like `mv` on
    /// one filesystem followed by a sync of both directories: a release directory
    /// renamed, a home moved aside. As with a directory sync, whatever else changed in
    /// the two directories is durable too, and a name they had only at their last sync
    /// is gone. Handles opened before keep working on what they opened.
    ///
    /// # Errors
    /// `ENOENT` if `from` is missing, `EEXIST` if `to` is taken (by anything but what
    /// `from` names: then nothing happens, as `rename(2)` does), `EINVAL` if `to` is
    /// inside `from` (spelt through a symlink or `..` too) or either ends in `.`/`..` or
    /// is `/`.
    pub fn rename(&self, from: impl AsRef<Utf8Path>, to: impl AsRef<Utf8Path>) -> io::Result<()> {
        self.state().rename_path(from.as_ref(), to.as_ref())
    }

    /// Plans a deploy in the middle of a call: just before the `n`-th next call of any
    /// operation (1-based), the directory `from` is moved to `to` and a new, empty
    /// directory takes its place at `from` — a release directory switched, a home moved
    /// aside. Handles opened before keep working on the moved directory, as on the kernel.
    /// `0` cancels the plan. Returns nothing; [`moves`](SimFs::moves) counts the moves done.
    ///
    /// ```
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/srv/app");
    /// let home = fs.open_dir("/srv/app".into())?;
    /// fs.move_after(1, "/srv/app", "/srv/app.old");
    /// home.open_file("f", OpenOptions::create_new())?; // the move happens first
    /// assert!(fs.lookup("/srv/app.old/f")?.is_some());
    /// assert!(fs.lookup("/srv/app/f")?.is_none());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn move_after(&self, n: u32, from: impl AsRef<Utf8Path>, to: impl AsRef<Utf8Path>) {
        let mut state = self.state();
        state.pending_move = (n > 0).then(|| (n, from.as_ref().to_owned(), to.as_ref().to_owned()));
    }

    /// Plans another actor's turn in the middle of a call: just before the `n`-th next
    /// call (1-based) the simulator counts (every [`HostFs`], [`DirHandle`] and
    /// [`FileHandle`] operation but `sync_fs`, as for [`move_after`](SimFs::move_after)),
    /// on the thread making that call and before anything of the call happens (counting,
    /// fault plans, a planned power cut or move), `actor` runs once — a second
    /// process's whole `ensure` between two syscalls of the first, or a writer filling
    /// the disk — then the call goes on. It runs outside the simulator's lock, so it may
    /// call this filesystem itself; its own calls do not count toward the plan. Unlike
    /// two threads, the interleaving is the same on every run, so a failing test
    /// replays exactly.
    ///
    /// `0` cancels the plan (dropping `actor`); a new plan replaces an earlier one. A
    /// panic in `actor` unwinds through the call it interrupted.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use disk_reserve::{HostFs, OpenOptions, SimFs};
    ///
    /// let fs = SimFs::with_home(1 << 20, "/srv/app");
    /// let home = fs.open_dir("/srv/app".into())?;
    /// let other = fs.clone();
    /// let seen = Arc::new(Mutex::new(None));
    /// let seen_by_actor = Arc::clone(&seen);
    /// fs.interleave(2, move || {
    ///     // Another process takes the name between our probe and our create.
    ///     other.write_file("/srv/app/f", 10).unwrap();
    ///     *seen_by_actor.lock().unwrap() = Some(other.used_bytes());
    /// });
    /// assert!(home.probe("f")?.is_none()); // call 1
    /// let error = home.open_file("f", OpenOptions::create_new()).unwrap_err(); // call 2
    /// assert_eq!(error.raw_os_error(), Some(libc::EEXIST));
    /// assert_eq!(*seen.lock().unwrap(), Some(4096));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn interleave(&self, n: u32, actor: impl FnOnce() + Send + 'static) {
        let mut turn = self
            .inner
            .turn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *turn = (n > 0).then(|| Box::new(actor) as Actor);
        self.inner.turn_countdown.store(n, Ordering::Release);
    }

    /// How many moves planned with [`move_after`](SimFs::move_after) have happened.
    pub fn moves(&self) -> u64 {
        self.state().moves
    }

    /// What `lstat(path)` says now, without counting a call or firing a fault: the test's
    /// own eyes. `Ok(None)` when nothing is there.
    ///
    /// # Errors
    /// `ENOTDIR`, `ELOOP`, `EINVAL` for a relative path.
    pub fn lookup(&self, path: impl AsRef<Utf8Path>) -> io::Result<Option<Probe>> {
        let state = self.state();
        match state.resolve(path.as_ref(), false) {
            Ok(lookup) => Ok(lookup.ino.map(|ino| state.probe_ino(ino))),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Removes whatever is at `path` (a directory must be empty), durably, freeing a
    /// file's blocks when it was its last name.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`, `ENOTEMPTY` for a non-empty directory, `EBUSY` for `/`,
    /// `EINVAL` for a path ending in `.` or `..`.
    pub fn remove(&self, path: impl AsRef<Utf8Path>) -> io::Result<()> {
        let mut state = self.state();
        let path = path.as_ref().as_str();
        let trimmed = path.trim_end_matches('/');
        let lookup = state.resolve(
            Utf8Path::new(if trimmed.is_empty() { path } else { trimmed }),
            false,
        )?;
        let removed = lookup.ino;
        let (parent, name) = match (lookup.entry, lookup.ino) {
            (None, Some(ROOT_INO)) => return Err(errno(libc::EBUSY)),
            (None, _) => return Err(errno(libc::EINVAL)),
            (Some(_), None) => return Err(errno(libc::ENOENT)),
            (Some(entry), Some(ino)) => {
                if let Node::Directory { live, .. } = state.node(ino)
                    && !live.is_empty()
                {
                    return Err(errno(libc::ENOTEMPTY));
                }
                (entry.0, entry.1.to_owned())
            }
        };
        if let Node::Directory { live, durable } = state.node_mut(parent) {
            live.remove(&name);
            durable.remove(&name);
        }
        // A file's last name: its blocks go back (late, with late frees; a snapshot's
        // share stays held).
        if let Some(ino) = removed
            && matches!(state.node(ino), Node::Regular { .. })
            && state.links(ino) == 0
            && !state.open_files.contains_key(&ino)
        {
            state.free_file(ino);
        }
        state.collect_garbage();
        Ok(())
    }

    // ---- inspection ----

    /// Bytes free: capacity minus what files and other writers use.
    pub fn free_bytes(&self) -> u64 {
        self.state().free_bytes()
    }

    /// Bytes used: files' allocated blocks plus what other writers hold.
    pub fn used_bytes(&self) -> u64 {
        self.state().used_bytes()
    }

    /// Bytes freed but not yet shown by [`DirHandle::space`] ([`SimFs::set_late_frees`]).
    pub fn pending_free_bytes(&self) -> u64 {
        self.state().pending_bytes()
    }

    /// Bytes of the regular file at `path` a snapshot shares ([`SimFs::snapshot_file`]);
    /// 0 for anything else or nothing.
    pub fn shared_bytes_of(&self, path: impl AsRef<Utf8Path>) -> u64 {
        let state = self.state();
        match state.resolve(path.as_ref(), false) {
            Ok(Lookup { ino: Some(ino), .. }) => state.shared_blocks(ino) * state.block_size,
            _ => 0,
        }
    }

    /// Bytes only snapshots still hold ([`SimFs::snapshot_file`]).
    pub fn pinned_bytes(&self) -> u64 {
        self.state().pinned()
    }

    /// Size of the filesystem in bytes.
    pub fn capacity(&self) -> u64 {
        self.state().capacity
    }

    /// Size of one block in bytes.
    pub fn block_size(&self) -> u64 {
        self.state().block_size
    }

    /// Every live path and what other writers hold, for comparing states.
    pub fn snapshot(&self) -> SimSnapshot {
        self.state().snapshot()
    }

    /// What [`snapshot`](SimFs::snapshot) lists, without building it: `visit` gets every
    /// live path (depth first, names in order), its `lstat` and the bytes a snapshot or
    /// a reflink copy shares with it, from one reused buffer. For checks that run after every step.
    pub fn for_each_entry(&self, mut visit: impl FnMut(&str, &Probe, u64)) {
        let state = self.state();
        // Room for the scenario's deepest paths, so the buffer is not grown name by name.
        let mut path = String::with_capacity(128);
        path.push('/');
        state.walk(ROOT_INO, &mut path, &mut visit);
    }

    /// A number that moves whenever the filesystem may have changed: two equal readings
    /// mean nothing changed in between, so what was read of it then still holds. Every
    /// call through [`HostFs`] and its handles moves it (each is counted,
    /// [`calls`](SimFs::calls)), and so does every knob and crash; reads such as
    /// [`free_bytes`](SimFs::free_bytes), [`snapshot`](SimFs::snapshot) and
    /// [`for_each_entry`](SimFs::for_each_entry) do not. For checks after every step
    /// that can skip looking again.
    ///
    /// ```
    /// let fs = disk_reserve::SimFs::with_home(1 << 20, "/home");
    /// let seen = fs.changes();
    /// assert_eq!(fs.free_bytes(), 1 << 20);
    /// assert_eq!(fs.changes(), seen, "a read changes nothing");
    /// fs.write_file("/home/f", 4096)?;
    /// assert_ne!(fs.changes(), seen);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn changes(&self) -> u64 {
        self.state().changes
    }

    /// Bytes other writers hold ([`SimFs::eat`]), as [`SimSnapshot`] says.
    pub fn other_writers_bytes(&self) -> u64 {
        self.state().other_writers
    }

    /// Every operation's call count ([`calls`](SimFs::calls)), indexed as
    /// [`SimOp::ALL`], under one lock.
    pub fn all_calls(&self) -> [u64; SimOp::ALL.len()] {
        self.state().calls
    }
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("SimFs")
            .field("capacity_bytes", &state.capacity)
            .field("used_bytes", &state.used_bytes())
            .field("free_bytes", &state.free_bytes())
            .field("entries", &state.nodes.len())
            .finish_non_exhaustive()
    }
}

impl HostFs for SimFs {
    fn open_dir(&self, path: &Utf8Path) -> io::Result<Box<dyn DirHandle>> {
        let state = self.begin(SimOp::OpenDir, &[path.as_str()])?;
        let ino = state
            .resolve(path, true)?
            .ino
            .ok_or_else(|| errno(libc::ENOENT))?;
        if !matches!(state.node(ino), Node::Directory { .. }) {
            return Err(errno(libc::ENOTDIR));
        }
        let generation = state.generation;
        drop(state);
        Ok(Box::new(SimDir {
            fs: self.clone(),
            ino,
            generation,
        }))
    }
}
