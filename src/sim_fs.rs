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
//! ([`SimFs::set_late_frees`]), one whose operations fail with a chosen errno on the Nth call,
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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use camino::{Utf8Path, Utf8PathBuf};

use crate::host_fs::{
    DirEntry, DirHandle, DirLock, FileHandle, FileKind, FsKind, HostFs, OpenOptions, Probe, Space,
    check_name,
};

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
}

/// Allocated blocks of one file: disjoint, non-adjacent `[start, end)` block ranges keyed
/// by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Extents(BTreeMap<u64, u64>);

impl Extents {
    fn block_count(&self) -> u64 {
        self.0.iter().map(|(start, end)| end - start).sum()
    }

    /// The unallocated ranges inside `[start, end)`, in order.
    fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut cursor = start;
        if let Some((_, &covered_to)) = self.0.range(..=start).next_back() {
            cursor = cursor.max(covered_to);
        }
        for (&range_start, &range_end) in self.0.range(start..end) {
            if range_start > cursor {
                gaps.push((cursor, range_start));
            }
            cursor = cursor.max(range_end);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        gaps
    }

    /// Marks `[start, end)` allocated, merging with touching ranges.
    fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut merged_start, mut merged_end) = (start, end);
        if let Some((&before_start, &before_end)) = self.0.range(..start).next_back()
            && before_end >= start
        {
            merged_start = before_start;
            merged_end = merged_end.max(before_end);
        }
        let absorbed: Vec<u64> = self.0.range(merged_start..=end).map(|(&s, _)| s).collect();
        for range_start in absorbed {
            if let Some(range_end) = self.0.remove(&range_start) {
                merged_end = merged_end.max(range_end);
            }
        }
        self.0.insert(merged_start, merged_end);
    }

    /// Frees every block at index `first_freed` or later.
    fn truncate(&mut self, first_freed: u64) {
        self.0.split_off(&first_freed);
        if let Some(mut last) = self.0.last_entry()
            && *last.get() > first_freed
        {
            *last.get_mut() = first_freed;
        }
    }

    /// The blocks in both `self` and `other`.
    fn intersection(&self, other: &Extents) -> Extents {
        let mut both = Extents::default();
        for (&start, &end) in &self.0 {
            let mut cursor = start;
            for (gap_start, gap_end) in other.gaps(start, end) {
                both.insert(cursor, gap_start);
                cursor = gap_end;
            }
            both.insert(cursor, end);
        }
        both
    }

    /// Forgets the blocks in `[start, end)`.
    fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let inside: Vec<(u64, u64)> = self
            .0
            .range(..end)
            .filter(|&(_, &range_end)| range_end > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (range_start, range_end) in inside {
            self.0.remove(&range_start);
            if range_start < start {
                self.0.insert(range_start, start);
            }
            if range_end > end {
                self.0.insert(end, range_end);
            }
        }
    }
}

/// Length, allocated blocks and written bytes of a regular file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FileData {
    len: u64,
    blocks: Extents,
    /// How many of its first blocks are shared with a snapshot ([`SimFs::snapshot_file`]):
    /// freeing them does not give space back.
    shared: u64,
    /// The bytes of the blocks a caller wrote with [`FileHandle::write_at`], by block
    /// index, each one block long; every other byte reads as zero. Only written blocks
    /// cost memory, never allocated ones, and a clone (a sync) shares them until one side
    /// writes again. Bytes past `len` in the last block are kept zero.
    data: BTreeMap<u64, Arc<Vec<u8>>>,
}

impl FileData {
    /// Copies `bytes` into the file at `offset`, block by block.
    fn store(&mut self, offset: u64, bytes: &[u8], block_size: u64) {
        let mut done = 0usize;
        while done < bytes.len() {
            let at = offset + done as u64;
            let (block, within) = (at / block_size, (at % block_size) as usize);
            let n = (block_size as usize - within).min(bytes.len() - done);
            let stored = self
                .data
                .entry(block)
                .or_insert_with(|| Arc::new(vec![0; block_size as usize]));
            Arc::make_mut(stored)[within..within + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
    }

    /// Makes this copy (the durable one) equal to `live`, reusing what it holds: a block
    /// that already shares live's bytes is left alone, a block whose bytes only this copy
    /// holds takes live's bytes in place, any other shares live's. So a file rewritten
    /// and synced in a loop costs two copies of each block it changes and no allocation;
    /// a block synced and never written again is held once.
    fn sync_from(&mut self, live: &FileData) {
        self.len = live.len;
        self.blocks.clone_from(&live.blocks);
        self.shared = live.shared;
        self.data.retain(|block, _| live.data.contains_key(block));
        for (&block, bytes) in &live.data {
            match self.data.get_mut(&block) {
                Some(mine) if Arc::ptr_eq(mine, bytes) => {}
                Some(mine) => match Arc::get_mut(mine) {
                    Some(own) => own.copy_from_slice(bytes),
                    None => *mine = Arc::clone(bytes),
                },
                None => {
                    self.data.insert(block, Arc::clone(bytes));
                }
            }
        }
    }

    /// Reads from `offset` into `buf`, up to the length: what was written, zeros elsewhere.
    fn load(&self, offset: u64, buf: &mut [u8], block_size: u64) -> usize {
        let available = self.len.saturating_sub(offset);
        let n = usize::try_from(available).map_or(buf.len(), |a| a.min(buf.len()));
        let buf = &mut buf[..n];
        buf.fill(0);
        let (first, last) = (
            offset / block_size,
            (offset + n as u64).div_ceil(block_size),
        );
        for (&block, bytes) in self.data.range(first..last) {
            let block_start = block * block_size;
            let from = offset.max(block_start);
            let to = (offset + n as u64).min(block_start + block_size);
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                &bytes[(from - block_start) as usize..(to - block_start) as usize],
            );
        }
        n
    }

    /// Forgets the written bytes in `[start, end)`: they read as zeros again.
    fn zero(&mut self, start: u64, end: u64, block_size: u64) {
        if start >= end {
            return;
        }
        let (first, last) = (start / block_size, end.div_ceil(block_size));
        let touched: Vec<u64> = self.data.range(first..last).map(|(&b, _)| b).collect();
        for block in touched {
            let block_start = block * block_size;
            let (from, to) = (start.max(block_start), end.min(block_start + block_size));
            if from == block_start && to == block_start + block_size {
                self.data.remove(&block);
            } else if let Some(bytes) = self.data.get_mut(&block) {
                Arc::make_mut(bytes)[(from - block_start) as usize..(to - block_start) as usize]
                    .fill(0);
            }
        }
    }
}

/// SplitMix64: the small seeded generator of [`SimFs::crash_torn`].
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=n`.
    fn up_to(&mut self, n: u64) -> u64 {
        match n.checked_add(1) {
            Some(bound) => self.next() % bound,
            None => self.next(),
        }
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// A file after a torn crash: the durable state `durable` with a seeded prefix (in block
/// order) of the blocks that differ in `live` written over it, and the length the writes
/// of those blocks left, or the live length and allocation. A file that lost blocks or length since its sync comes back whole,
/// as synced or as live: a truncation is one journalled step, and a mix of old and new
/// blocks after one is no state a disk can hold. (A file shortened and grown back since is
/// caught by [`State::shortened`] before this.)
fn torn_file(
    durable: &FileData,
    live: &FileData,
    block_size: u64,
    rng: &mut SplitMix64,
) -> FileData {
    if durable == live {
        return durable.clone();
    }
    let shrunk = live.len < durable.len
        || durable
            .blocks
            .0
            .iter()
            .any(|(&start, &end)| !live.blocks.gaps(start, end).is_empty());
    if shrunk {
        return if rng.coin() {
            live.clone()
        } else {
            durable.clone()
        };
    }
    // The blocks whose allocation or bytes differ, in order. Growth only: every block
    // `durable` has, `live` has too.
    let mut differing: Vec<u64> = Vec::new();
    for (&start, &end) in &live.blocks.0 {
        for (gap_start, gap_end) in durable.blocks.gaps(start, end) {
            differing.extend(gap_start..gap_end);
        }
    }
    let blocks_with_data = live.data.keys().chain(durable.data.keys()).copied();
    differing.extend(blocks_with_data.filter(|b| live.data.get(b) != durable.data.get(b)));
    differing.sort_unstable();
    differing.dedup();
    let kept = rng.up_to(differing.len() as u64) as usize;
    if kept == differing.len() {
        return live.clone();
    }
    let mut torn = durable.clone();
    for &block in &differing[..kept] {
        torn.blocks.insert(block, block + 1);
        match live.data.get(&block) {
            Some(bytes) => torn.data.insert(block, Arc::clone(bytes)),
            None => torn.data.remove(&block),
        };
    }
    // The length a write reached when it had written the kept blocks and not the next
    // (the start of the first block not kept, within the synced and the live length), or
    // the live length and allocation: the metadata reached the disk before the data, as
    // ext4's `data=writeback` and XFS allow; the blocks not kept then read as synced
    // (zeros where new). Never a hole the live file did not have.
    if rng.coin() {
        torn.len = live.len;
        torn.blocks = live.blocks.clone();
    } else {
        torn.len = (differing[kept] * block_size).clamp(durable.len, live.len);
    }
    // Bytes past the length of its last block read as zeros.
    let len = torn.len;
    torn.zero(len, len.next_multiple_of(block_size), block_size);
    torn
}

/// What a sync of a file with live state `live` leaves on the disk: `live`, but for the
/// blocks in `lost` (dropped by a failed sync), which keep their bytes in `durable`.
fn written_back(
    live: &FileData,
    durable: &FileData,
    lost: Option<&std::collections::BTreeSet<u64>>,
) -> FileData {
    let mut disk = live.clone();
    for &block in lost.into_iter().flatten() {
        match durable.data.get(&block) {
            Some(bytes) => disk.data.insert(block, Arc::clone(bytes)),
            None => disk.data.remove(&block),
        };
    }
    disk
}

/// One inode. Directories and files keep a live state and the state a crash returns to.
#[derive(Debug)]
enum Node {
    Directory {
        live: BTreeMap<String, u64>,
        durable: BTreeMap<String, u64>,
    },
    Regular {
        live: FileData,
        durable: FileData,
    },
    Symlink {
        target: String,
    },
    /// Fifos, sockets and devices: no content.
    Special(FileKind),
}

impl Node {
    fn kind(&self) -> FileKind {
        match self {
            Node::Directory { .. } => FileKind::Directory,
            Node::Regular { .. } => FileKind::Regular,
            Node::Symlink { .. } => FileKind::Symlink,
            Node::Special(kind) => *kind,
        }
    }

    fn probe(&self, block_size: u64, links: u64) -> Probe {
        let (len, allocated_bytes) = match self {
            Node::Regular { live, .. } => (live.len, live.blocks.block_count() * block_size),
            Node::Symlink { target } => (target.len() as u64, 0),
            Node::Directory { .. } | Node::Special(_) => (0, 0),
        };
        Probe {
            kind: self.kind(),
            len,
            allocated_bytes,
            links,
        }
    }
}

/// Where a path resolved to.
struct Lookup {
    /// The directory holding the last component and its name, or `None` when the path
    /// ends at `/`, `.` or `..` (then `ino` is that directory).
    entry: Option<(u64, String)>,
    /// The inode at the path, if any.
    ino: Option<u64>,
}

/// A pending fault plan: the `calls_left`-th next call of `op` (on `name`, when given)
/// fails with `errno`.
struct Fault {
    op: SimOp,
    name: Option<String>,
    calls_left: u32,
    errno: i32,
}

struct State {
    capacity: u64,
    block_size: u64,
    other_writers: u64,
    quota: Option<u64>,
    allocate_mode: AllocateMode,
    read_only: bool,
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    faults: Vec<Fault>,
    calls: [u64; OP_COUNT],
    /// Open file handles per inode: an unlinked file keeps its blocks until the last closes.
    open_files: HashMap<u64, usize>,
    /// Bumped by every crash: handles of an older generation fail with `EIO`.
    generation: u64,
    /// Calls left before a planned power cut ([`SimFs::crash_after`]; 0: none).
    crash_countdown: u32,
    /// The seed of a planned torn power cut ([`SimFs::crash_torn_after`]); `None`: a
    /// plain one.
    crash_seed: Option<u64>,
    /// The largest free space a `space` call returned since it was last taken, plus one.
    max_free_reported: u64,
    /// Frees show in `space` late ([`SimFs::set_late_frees`]).
    late_frees: bool,
    /// Bytes freed but not yet shown by `space`.
    pending_free: u64,
    /// Whether a `space` call has seen `pending_free` (the next one shows it).
    pending_seen: bool,
    /// Snapshots: inode → how many of its first blocks a snapshot holds
    /// ([`SimFs::snapshot_file`]). What the file no longer shares, the snapshot alone holds.
    snapshots: BTreeMap<u64, u64>,
    /// Reflink copies ([`SimFs::reflink`]): group → inode → the blocks of that file that
    /// are the group's blocks (at the same index in every member, as `FICLONE` makes
    /// them). A block is shared while two members have it; a file's blocks in no group
    /// are its own.
    clones: BTreeMap<u64, BTreeMap<u64, Extents>>,
    next_clone_group: u64,
    /// A planned move: calls left, from, to ([`SimFs::move_after`]).
    pending_move: Option<(u32, Utf8PathBuf, Utf8PathBuf)>,
    /// Planned moves done.
    moves: u64,
    space_changes: VecDeque<i64>,
    /// Held directory locks: directory inode → token of the holder.
    locks: HashMap<u64, u64>,
    next_lock_token: u64,
    /// Directories whose name was removed (`rmdir`, or a rename over them): their handles
    /// can no longer create or find anything, as the kernel's dead directories.
    removed_dirs: std::collections::HashSet<u64>,
    /// Files shortened since their last sync: a torn crash ([`SimFs::crash_torn`]) brings
    /// them back whole, as synced or as live.
    shortened: std::collections::BTreeSet<u64>,
    /// Per file, the blocks whose unsynced bytes a failed sync dropped: clean in the cache
    /// but never written, as Linux leaves pages after a writeback error. Later syncs do
    /// not write them; rewriting a block makes it dirty again.
    writeback_lost: BTreeMap<u64, std::collections::BTreeSet<u64>>,
}

/// Component of a path being resolved, borrowed from the path or a symlink's target.
enum Component<'a> {
    Root,
    Current,
    Parent,
    Normal(&'a str),
}

fn components(path: &str) -> impl Iterator<Item = Component<'_>> + '_ {
    let root = path.starts_with('/').then_some(Component::Root);
    let trailing_slash = (path.len() > 1 && path.ends_with('/')).then_some(Component::Current);
    let middle = path.split('/').filter(|c| !c.is_empty()).map(|c| match c {
        "." => Component::Current,
        ".." => Component::Parent,
        name => Component::Normal(name),
    });
    root.into_iter().chain(middle).chain(trailing_slash)
}

impl State {
    fn new(capacity: u64, block_size: u64) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT_INO,
            Node::Directory {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        );
        State {
            capacity,
            block_size,
            other_writers: 0,
            quota: None,
            allocate_mode: AllocateMode::Supported,
            read_only: false,
            nodes,
            next_ino: ROOT_INO + 1,
            faults: Vec::new(),
            calls: [0; OP_COUNT],
            open_files: HashMap::new(),
            generation: 0,
            crash_countdown: 0,
            crash_seed: None,
            max_free_reported: 0,
            pending_move: None,
            moves: 0,
            late_frees: false,
            pending_free: 0,
            pending_seen: false,
            snapshots: BTreeMap::new(),
            clones: BTreeMap::new(),
            next_clone_group: 0,
            space_changes: VecDeque::new(),
            locks: HashMap::new(),
            next_lock_token: 1,
            removed_dirs: std::collections::HashSet::new(),
            shortened: std::collections::BTreeSet::new(),
            writeback_lost: BTreeMap::new(),
        }
    }

    // ---- space ----

    fn file_bytes(&self) -> u64 {
        let blocks: u64 = self
            .nodes
            .values()
            .map(|node| match node {
                Node::Regular { live, .. } => live.blocks.block_count(),
                _ => 0,
            })
            .sum();
        let blocks = blocks.saturating_sub(self.clone_overlap_blocks());
        blocks.saturating_mul(self.block_size)
    }

    // ---- reflink copies ----

    /// The blocks of each member of clone group `group` that are still the group's: what
    /// the map says, as far as the file still has those blocks (a crash may have taken
    /// some back).
    fn clone_members(&self, group: u64) -> Vec<(u64, Extents)> {
        let Some(members) = self.clones.get(&group) else {
            return Vec::new();
        };
        members
            .iter()
            .filter_map(|(&ino, blocks)| match self.nodes.get(&ino) {
                Some(Node::Regular { live, .. }) => Some((ino, blocks.intersection(&live.blocks))),
                _ => None,
            })
            .collect()
    }

    /// Blocks files count more than once because reflink copies share them.
    fn clone_overlap_blocks(&self) -> u64 {
        let mut overlap = 0;
        for &group in self.clones.keys() {
            let members = self.clone_members(group);
            let mut union = Extents::default();
            for (_, blocks) in &members {
                overlap += blocks.block_count();
                for (&start, &end) in &blocks.0 {
                    union.insert(start, end);
                }
            }
            overlap -= union.block_count();
        }
        overlap
    }

    /// The blocks of `ino` another reflink copy also has.
    fn clone_shared(&self, ino: u64) -> Extents {
        let mut shared = Extents::default();
        for &group in self.clones.keys() {
            let members = self.clone_members(group);
            let Some((_, own)) = members.iter().find(|(member, _)| *member == ino) else {
                continue;
            };
            let mut others = Extents::default();
            for (_, blocks) in members.iter().filter(|(member, _)| *member != ino) {
                for (&start, &end) in &blocks.0 {
                    others.insert(start, end);
                }
            }
            for (&start, &end) in &own.intersection(&others).0 {
                shared.insert(start, end);
            }
        }
        shared
    }

    /// Blocks of `ino` shared with a snapshot or with a reflink copy: what `FIEMAP` flags
    /// `FIEMAP_EXTENT_SHARED`.
    fn shared_blocks(&self, ino: u64) -> u64 {
        let snapshot = match self.nodes.get(&ino) {
            Some(Node::Regular { live, .. }) => live.shared,
            _ => return 0,
        };
        let cloned = self.clone_shared(ino);
        let mut both = cloned.clone();
        both.truncate(snapshot);
        snapshot + cloned.block_count() - both.block_count()
    }

    /// `ino` stops pointing at its groups' blocks in `[first, last)`: from now on they
    /// are its own.
    fn leave_clone_groups(&mut self, ino: u64, first: u64, last: u64) {
        for members in self.clones.values_mut() {
            if let Some(blocks) = members.get_mut(&ino) {
                blocks.remove(first, last);
            }
        }
    }

    /// Copy-on-write before a write to `[first, last)` of `ino`: blocks another reflink
    /// copy shares get new blocks, taken from `budget`. `false` (nothing changed) when
    /// the budget does not cover them all.
    fn unshare_for_write(&mut self, ino: u64, first: u64, last: u64, budget: &mut u64) -> bool {
        if self.clones.is_empty() {
            return true;
        }
        let mut range = Extents::default();
        range.insert(first, last);
        let copied = self.clone_shared(ino).intersection(&range).block_count();
        if copied > *budget {
            return false;
        }
        *budget -= copied;
        self.leave_clone_groups(ino, first, last);
        true
    }

    /// Bytes only snapshots still hold: what each snapshot took less what its file (if
    /// it still exists) shares with it now.
    fn pinned(&self) -> u64 {
        let blocks: u64 = self
            .snapshots
            .iter()
            .map(|(ino, taken)| match self.nodes.get(ino) {
                Some(Node::Regular { live, .. }) => taken - live.shared.min(*taken),
                _ => *taken,
            })
            .sum();
        blocks * self.block_size
    }

    /// Bytes held: files' blocks, other writers, blocks only a snapshot still holds.
    fn held_bytes(&self) -> u64 {
        self.held_bytes_with(self.file_bytes())
    }

    /// [`held_bytes`](State::held_bytes) when files hold `file_bytes` (each walk over
    /// the inodes counts: callers that need both walk once).
    fn held_bytes_with(&self, file_bytes: u64) -> u64 {
        file_bytes
            .saturating_add(self.other_writers)
            .saturating_add(self.pinned())
    }

    /// Frees not yet shown, as far as nobody has allocated them since (an allocation
    /// makes them show: XFS flushes its worker before it says `ENOSPC`).
    fn pending_bytes(&self) -> u64 {
        self.pending_bytes_with(self.held_bytes())
    }

    /// [`pending_bytes`](State::pending_bytes) when `held` bytes are held.
    fn pending_bytes_with(&self, held: u64) -> u64 {
        self.pending_free.min(self.capacity.saturating_sub(held))
    }

    /// Bytes used as `statvfs` shows them: held, plus frees not yet shown.
    fn used_bytes(&self) -> u64 {
        let held = self.held_bytes();
        held.saturating_add(self.pending_bytes_with(held))
    }

    /// Free bytes as `statvfs` shows them.
    fn free_bytes(&self) -> u64 {
        self.capacity.saturating_sub(self.used_bytes())
    }

    /// Blocks files may still allocate, and the errno once they are gone: `ENOSPC` when
    /// free space is the tighter limit (checked first, like ext4), `EDQUOT` when the quota is.
    /// Frees not yet shown count as free: an allocation waits for them (XFS flushes its
    /// inode worker before it says `ENOSPC`).
    fn allocation_budget(&self) -> (u64, i32) {
        let file_bytes = self.file_bytes();
        let free_blocks = self
            .capacity
            .saturating_sub(self.held_bytes_with(file_bytes))
            / self.block_size;
        match self.quota {
            Some(quota) => {
                let quota_blocks = quota.saturating_sub(file_bytes) / self.block_size;
                if quota_blocks < free_blocks {
                    (quota_blocks, libc::EDQUOT)
                } else {
                    (free_blocks, libc::ENOSPC)
                }
            }
            None => (free_blocks, libc::ENOSPC),
        }
    }

    /// Blocks of `ino` from block `first_freed` on are freed: those shared with a snapshot
    /// stay held by it; with late frees on, the rest show in `space` only later.
    fn free_blocks_from(&mut self, ino: u64, first_freed: u64) {
        self.free_blocks_keeping_groups(ino, first_freed, false);
    }

    /// [`free_blocks_from`](State::free_blocks_from); with `keep_groups` the file stays
    /// a member of its reflink groups (its freed blocks no longer count, as a member's
    /// blocks count only as far as the file has them), so a crash that brings its
    /// blocks back finds them shared again, as the kernel does.
    fn free_blocks_keeping_groups(&mut self, ino: u64, first_freed: u64, keep_groups: bool) {
        let (block_size, late) = (self.block_size, self.late_frees);
        // Blocks another reflink copy keeps: freeing them here gives nothing back.
        let mut clone_kept = self.clone_shared(ino);
        clone_kept.remove(0, first_freed);
        let clone_kept = clone_kept.block_count();
        if !keep_groups {
            self.leave_clone_groups(ino, first_freed, u64::MAX);
        }
        let Node::Regular { live, .. } = self.node_mut(ino) else {
            return;
        };
        let before = live.blocks.block_count();
        live.blocks.truncate(first_freed);
        live.data.split_off(&first_freed);
        let after = live.blocks.block_count();
        let freed = before - after;
        let still_shared = live.shared.min(after);
        let shared_freed = (live.shared - still_shared).min(freed);
        live.shared = still_shared;
        if late {
            self.pending_free += (freed - shared_freed).saturating_sub(clone_kept) * block_size;
            self.pending_seen = false;
        }
    }

    /// A file loses its data (last name and last handle gone).
    fn free_file(&mut self, ino: u64) {
        // Nothing can write to it any more; only a crash can bring its blocks back (an
        // unlink whose directory was not synced), still shared with their other copies.
        self.free_blocks_keeping_groups(ino, 0, true);
        if let Node::Regular { live, .. } = self.node_mut(ino) {
            *live = FileData::default();
        }
    }

    /// A `statvfs`: the first one after a free only starts the worker that accounts it;
    /// the next shows it.
    fn read_space(&mut self) -> u64 {
        let free = self.free_bytes();
        if self.pending_free > 0 {
            if self.pending_seen {
                self.pending_free = 0;
                self.pending_seen = false;
                return self.free_bytes();
            }
            self.pending_seen = true;
        }
        free
    }

    /// Other writers take space as an allocation does: frees not shown yet count.
    fn eat(&mut self, bytes: u64) -> u64 {
        let taken = bytes.min(self.capacity.saturating_sub(self.held_bytes()));
        self.other_writers += taken;
        taken
    }

    fn free_external(&mut self, bytes: u64) -> u64 {
        let freed = bytes.min(self.other_writers);
        self.other_writers -= freed;
        freed
    }

    // ---- per-call prelude ----

    /// Counts the call, applies the next scheduled space change, fires a due fault plan.
    /// A call cut by a planned power cut, or made through a handle from before a crash,
    /// never reaches the filesystem: it is not counted and fires no fault.
    fn begin(&mut self, op: SimOp, names: &[&str]) -> io::Result<()> {
        self.maybe_move();
        if self.crash_countdown > 0 {
            self.crash_countdown -= 1;
            if self.crash_countdown == 0 {
                match self.crash_seed.take() {
                    Some(seed) => self.crash_torn(seed),
                    None => self.crash(),
                }
                return Err(errno(libc::EIO));
            }
        }
        self.calls[op as usize] += 1;
        if let Some(delta) = self.space_changes.pop_front() {
            if delta >= 0 {
                self.eat(delta.unsigned_abs());
            } else {
                self.free_external(delta.unsigned_abs());
            }
        }
        let mut fired = None;
        let applies =
            |f: &Fault| f.op == op && f.name.as_deref().is_none_or(|name| names.contains(&name));
        for fault in self.faults.iter_mut().filter(|f| applies(f)) {
            fault.calls_left -= 1;
            if fault.calls_left == 0 && fired.is_none() {
                fired = Some(fault.errno);
            }
        }
        self.faults.retain(|f| f.calls_left > 0);
        match fired {
            Some(code) => {
                tracing::debug!(?op, errno = code, "sim_fs: injected fault");
                Err(errno(code))
            }
            None => Ok(()),
        }
    }

    // ---- path resolution ----

    fn node(&self, ino: u64) -> &Node {
        &self.nodes[&ino]
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        self.nodes
            .get_mut(&ino)
            .expect("sim_fs: dangling inode number")
    }

    fn live_entries(&self, dir: u64) -> &BTreeMap<String, u64> {
        match self.node(dir) {
            Node::Directory { live, .. } => live,
            _ => unreachable!("sim_fs: resolution stack holds directories only"),
        }
    }

    /// Resolves `path` component by component, following intermediate symlinks, and the
    /// last one too when `follow_last`.
    fn resolve<'a>(&'a self, path: &'a Utf8Path, follow_last: bool) -> io::Result<Lookup> {
        let text = path.as_str();
        if text.is_empty() {
            return Err(errno(libc::ENOENT));
        }
        if text.contains('\0') || !text.starts_with('/') {
            return Err(errno(libc::EINVAL));
        }
        if text.len() >= PATH_MAX {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let mut pending: VecDeque<Component> = components(text).collect();
        let mut stack = vec![ROOT_INO];
        let mut hops = 0;
        while let Some(component) = pending.pop_front() {
            let is_last = pending.is_empty();
            let name = match component {
                Component::Root => {
                    stack.truncate(1);
                    continue;
                }
                Component::Current => continue,
                Component::Parent => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                Component::Normal(name) => name,
            };
            if name.len() > NAME_MAX {
                return Err(errno(libc::ENAMETOOLONG));
            }
            let dir = *stack.last().expect("resolution stack holds `/`");
            let Some(&ino) = self.live_entries(dir).get(name) else {
                if is_last {
                    return Ok(Lookup {
                        entry: Some((dir, name.to_owned())),
                        ino: None,
                    });
                }
                return Err(errno(libc::ENOENT));
            };
            match self.node(ino) {
                Node::Symlink { target } if !is_last || follow_last => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(errno(libc::ELOOP));
                    }
                    if target.is_empty() {
                        return Err(errno(libc::ENOENT));
                    }
                    for component in components(target).collect::<Vec<_>>().into_iter().rev() {
                        pending.push_front(component);
                    }
                }
                _ if is_last => {
                    return Ok(Lookup {
                        entry: Some((dir, name.to_owned())),
                        ino: Some(ino),
                    });
                }
                Node::Directory { .. } => stack.push(ino),
                _ => return Err(errno(libc::ENOTDIR)),
            }
        }
        Ok(Lookup {
            entry: None,
            ino: stack.last().copied(),
        })
    }

    fn file_mut(&mut self, ino: u64) -> &mut FileData {
        match self.node_mut(ino) {
            Node::Regular { live, .. } => live,
            _ => unreachable!("sim_fs: open_regular returned a non-regular inode"),
        }
    }

    // ---- inode table ----

    /// Adds `node` under `name` in `parent`, durable at once when `durable`.
    fn link_new(&mut self, parent: u64, name: String, node: Node, durable: bool) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        match self.node_mut(parent) {
            Node::Directory {
                live,
                durable: durable_entries,
            } => {
                if durable {
                    durable_entries.insert(name.clone(), ino);
                }
                live.insert(name, ino);
            }
            _ => unreachable!("sim_fs: parent is a directory"),
        }
        ino
    }

    /// `st_nlink` of `ino`: the live names of a file; 1 for a directory, as btrfs reports
    /// it (ext4 and XFS count `.` and each subdirectory's `..` too; nothing here uses a
    /// directory's count, and 1 is what tools read as "not counted").
    fn links(&self, ino: u64) -> u64 {
        match self.node(ino) {
            Node::Directory { .. } => 1,
            _ => self
                .nodes
                .values()
                .map(|node| match node {
                    Node::Directory { live, .. } => {
                        live.values().filter(|&&child| child == ino).count() as u64
                    }
                    _ => 0,
                })
                .sum(),
        }
    }

    /// What `lstat` says of `ino`.
    fn probe_ino(&self, ino: u64) -> Probe {
        self.node(ino).probe(self.block_size, self.links(ino))
    }

    /// Drops inodes no directory names, live or durable.
    fn collect_garbage(&mut self) {
        let mut reachable = std::collections::BTreeSet::from([ROOT_INO]);
        reachable.extend(self.open_files.keys().copied());
        let mut queue = vec![ROOT_INO];
        while let Some(ino) = queue.pop() {
            if let Some(Node::Directory { live, durable }) = self.nodes.get(&ino) {
                for &child in live.values().chain(durable.values()) {
                    if reachable.insert(child) {
                        queue.push(child);
                    }
                }
            }
        }
        self.nodes.retain(|ino, _| reachable.contains(ino));
    }

    /// The directory and name where something new can go at `path`: `EEXIST` if taken.
    fn free_entry(&self, path: &Utf8Path) -> io::Result<(u64, String)> {
        match self.resolve(path, false)? {
            Lookup {
                entry: Some(entry),
                ino: None,
            } => Ok(entry),
            _ => Err(errno(libc::EEXIST)),
        }
    }

    /// Creates `node` at `path` for the setup API: durable at once, `EEXIST` if taken.
    fn setup_create(&mut self, path: &Utf8Path, node: Node) -> io::Result<u64> {
        let (parent, name) = self.free_entry(path)?;
        Ok(self.link_new(parent, name, node, true))
    }

    fn mkdir_all(&mut self, path: &Utf8Path) -> io::Result<()> {
        match self.resolve(path, true) {
            Ok(Lookup { ino: Some(ino), .. }) => match self.node(ino) {
                Node::Directory { .. } => Ok(()),
                _ => Err(errno(libc::EEXIST)),
            },
            Ok(Lookup { ino: None, .. }) => self.mkdir(path),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                if let Some(parent) = path.parent() {
                    self.mkdir_all(parent)?;
                }
                self.mkdir(path)
            }
            Err(err) => Err(err),
        }
    }

    fn mkdir(&mut self, path: &Utf8Path) -> io::Result<()> {
        let dir = Node::Directory {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        self.setup_create(path, dir).map(drop)
    }

    /// See [`SimFs::crash`].
    fn crash(&mut self) {
        for node in self.nodes.values_mut() {
            match node {
                Node::Directory { live, durable } => live.clone_from(durable),
                Node::Regular { live, durable } => live.clone_from(durable),
                Node::Symlink { .. } | Node::Special(_) => {}
            }
        }
        self.open_files.clear();
        self.removed_dirs.clear();
        self.shortened.clear();
        self.writeback_lost.clear();
        self.generation += 1;
        self.crash_countdown = 0;
        self.crash_seed = None;
        self.collect_garbage();
        self.locks.clear();
        tracing::debug!(inodes = self.nodes.len(), "sim_fs: crash");
    }

    /// See [`SimFs::crash_torn`]: makes a seeded mix of each inode's durable and live
    /// states durable, then crashes.
    fn crash_torn(&mut self, seed: u64) {
        let mut rng = SplitMix64(seed);
        // Directory changes, grouped: every change naming an inode (before or after) is in
        // that inode's group, and a change naming two inodes (a rename over a name) joins
        // their groups; a group is kept or dropped whole.
        let mut changes: Vec<(u64, String, Option<u64>, Option<u64>)> = Vec::new();
        for (&dir, node) in &self.nodes {
            if let Node::Directory { live, durable } = node {
                for name in live.keys().chain(durable.keys()) {
                    let (was, is) = (durable.get(name).copied(), live.get(name).copied());
                    if was != is {
                        changes.push((dir, name.clone(), was, is));
                    }
                }
            }
        }
        changes.sort();
        changes.dedup();
        let mut group: BTreeMap<u64, u64> = BTreeMap::new();
        fn root(group: &mut BTreeMap<u64, u64>, ino: u64) -> u64 {
            let parent = *group.entry(ino).or_insert(ino);
            if parent == ino {
                return ino;
            }
            let top = root(group, parent);
            group.insert(ino, top);
            top
        }
        for (_, _, was, is) in &changes {
            if let (Some(a), Some(b)) = (was, is) {
                let (a, b) = (root(&mut group, *a), root(&mut group, *b));
                group.insert(a.max(b), a.min(b));
            }
        }
        let mut kept: BTreeMap<u64, bool> = BTreeMap::new();
        for (dir, name, was, is) in changes {
            let top = root(&mut group, is.or(was).expect("a change names an inode"));
            if *kept.entry(top).or_insert_with(|| rng.coin())
                && let Some(Node::Directory { durable, .. }) = self.nodes.get_mut(&dir)
            {
                match is {
                    Some(ino) => durable.insert(name, ino),
                    None => durable.remove(&name),
                };
            }
        }
        // A file with no live name: its data as synced (what it had before its unlink
        // may have reached the disk or not; the live state is already freed).
        let named: std::collections::BTreeSet<u64> = self
            .nodes
            .values()
            .filter_map(|node| match node {
                Node::Directory { live, .. } => Some(live.values().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        let block_size = self.block_size;
        for (ino, node) in &mut self.nodes {
            if let Node::Regular { live, durable } = node
                && named.contains(ino)
            {
                // Blocks a failed sync dropped never reach the disk.
                let live = &written_back(live, durable, self.writeback_lost.get(ino));
                *durable = if self.shortened.contains(ino) {
                    if rng.coin() {
                        live.clone()
                    } else {
                        durable.clone()
                    }
                } else {
                    torn_file(durable, live, block_size, &mut rng)
                };
            }
        }
        self.crash();
    }

    /// What `syncfs(2)` does: every inode's live state becomes the state a crash returns to.
    fn sync_everything(&mut self) {
        let lost = &self.writeback_lost;
        for (ino, node) in &mut self.nodes {
            match node {
                Node::Directory { live, durable } => durable.clone_from(live),
                Node::Regular { live, durable } => {
                    *durable = written_back(live, durable, lost.get(ino));
                }
                Node::Symlink { .. } | Node::Special(_) => {}
            }
        }
        self.shortened.clear();
        self.collect_garbage();
    }

    /// A successful `fsync`/`fdatasync` of `ino`: what it has becomes durable, but for the
    /// blocks a failed one dropped ([`State::writeback_lost`]).
    fn write_back(&mut self, ino: u64) {
        let lost = self.writeback_lost.get(&ino).cloned();
        if let Node::Regular { live, durable } = self.node_mut(ino) {
            match lost {
                None => durable.sync_from(live),
                Some(lost) => *durable = written_back(live, durable, Some(&lost)),
            }
        }
        self.shortened.remove(&ino);
    }

    /// A failed `fsync`/`fdatasync` of `ino` through a handle of `generation`: the bytes
    /// written since the last sync are dropped from writeback, as Linux marks the pages
    /// clean after a writeback error, and the error is reported once.
    fn sync_failed(&mut self, ino: u64, generation: u64) {
        if generation != self.generation {
            return; // a power cut or a stale handle: nothing was in flight
        }
        if let Some(Node::Regular { live, durable }) = self.nodes.get(&ino) {
            let blocks = live.data.keys().chain(durable.data.keys()).copied();
            let dropped: Vec<u64> = blocks
                .filter(|b| live.data.get(b) != durable.data.get(b))
                .collect();
            self.writeback_lost.entry(ino).or_default().extend(dropped);
        }
    }

    /// Blocks `[first, last)` of `ino` were written again: dirty, so a sync writes them.
    fn redirtied(&mut self, ino: u64, first: u64, last: u64) {
        if let Some(lost) = self.writeback_lost.get_mut(&ino) {
            let rewritten: Vec<u64> = lost.range(first..last).copied().collect();
            for block in rewritten {
                lost.remove(&block);
            }
            if lost.is_empty() {
                self.writeback_lost.remove(&ino);
            }
        }
    }

    /// See [`SimFs::rename`].
    fn rename_path(&mut self, from: &Utf8Path, to: &Utf8Path) -> io::Result<()> {
        if to.starts_with(from) {
            return Err(errno(libc::EINVAL));
        }
        let (from_dir, from_name, ino) = match self.resolve(from, false)? {
            Lookup {
                entry: Some((dir, name)),
                ino: Some(ino),
            } => (dir, name, ino),
            Lookup { entry: None, .. } => return Err(errno(libc::EINVAL)),
            _ => return Err(errno(libc::ENOENT)),
        };
        let (to_dir, to_name) = self.free_entry(to)?;
        if let Node::Directory { live, durable } = self.node_mut(from_dir) {
            live.remove(&from_name);
            durable.remove(&from_name);
        }
        if let Node::Directory { live, durable } = self.node_mut(to_dir) {
            live.insert(to_name.clone(), ino);
            durable.insert(to_name, ino);
        }
        Ok(())
    }

    /// Runs a planned [`SimFs::move_after`] when its call comes.
    fn maybe_move(&mut self) {
        let Some((left, from, to)) = self.pending_move.take() else {
            return;
        };
        if left > 1 {
            self.pending_move = Some((left - 1, from, to));
            return;
        }
        let moved = self
            .rename_path(&from, &to)
            .and_then(|()| self.mkdir(&from));
        match moved {
            Ok(()) => self.moves += 1,
            Err(error) => tracing::debug!(%from, %to, %error, "sim_fs: planned move failed"),
        }
    }

    // ---- handles ----

    /// The prelude of a handle's call: `EIO` for a handle from before a crash, then
    /// [`begin`](State::begin).
    fn begin_on(&mut self, op: SimOp, names: &[&str], generation: u64) -> io::Result<()> {
        if generation != self.generation {
            return Err(errno(libc::EIO));
        }
        self.begin(op, names)
    }

    /// The directory `ino` of a handle: `ENOENT` once it has been removed.
    fn open_directory(&self, ino: u64) -> io::Result<&BTreeMap<String, u64>> {
        if self.removed_dirs.contains(&ino) {
            return Err(errno(libc::ENOENT));
        }
        match self.nodes.get(&ino) {
            Some(Node::Directory { live, .. }) => Ok(live),
            _ => Err(errno(libc::ENOENT)),
        }
    }

    /// The inode `name` names in the directory `dir`, if any.
    fn entry(&self, dir: u64, name: &str) -> io::Result<Option<u64>> {
        check_name(name)?;
        Ok(self.open_directory(dir)?.get(name).copied())
    }

    fn entries_mut(&mut self, dir: u64) -> &mut BTreeMap<String, u64> {
        match self.node_mut(dir) {
            Node::Directory { live, .. } => live,
            _ => unreachable!("sim_fs: a directory handle names a directory"),
        }
    }

    /// Drops the live name `name` of `dir` (which names `ino`); a regular file losing its
    /// last name with no handle open gives its blocks back.
    fn unlink_entry(&mut self, dir: u64, name: &str, ino: u64) {
        self.entries_mut(dir).remove(name);
        if let Node::Directory { .. } = self.node(ino) {
            self.removed_dirs.insert(ino);
        }
        if self.links(ino) == 0
            && !self.open_files.contains_key(&ino)
            && let Node::Regular { .. } = self.node(ino)
        {
            self.free_file(ino);
        }
    }

    /// A file handle closed: the last one of a file without names gives its blocks back.
    fn close(&mut self, ino: u64) {
        let Some(count) = self.open_files.get_mut(&ino) else {
            return; // a crash closed everything already
        };
        *count -= 1;
        if *count == 0 {
            self.open_files.remove(&ino);
            if self.nodes.contains_key(&ino) && self.links(ino) == 0 {
                self.free_file(ino);
                self.collect_garbage();
            }
        }
    }

    /// See [`SimFs::for_each_entry`]: visits `ino`, named `path`, and what is under it.
    fn walk(&self, ino: u64, path: &mut String, visit: &mut impl FnMut(&str, &Probe, u64)) {
        let node = self.node(ino);
        let (links, shared) = match node {
            Node::Directory { .. } => (1, 0),
            Node::Regular { .. } => (self.links(ino), self.shared_blocks(ino) * self.block_size),
            _ => (self.links(ino), 0),
        };
        visit(path, &node.probe(self.block_size, links), shared);
        if let Node::Directory { live, .. } = node {
            let len = path.len();
            for (name, &child) in live {
                if !path.ends_with('/') {
                    path.push('/');
                }
                path.push_str(name);
                self.walk(child, path, visit);
                path.truncate(len);
            }
        }
    }

    fn snapshot(&self) -> SimSnapshot {
        // Every name's link count in one pass, not one pass per name.
        let mut names: HashMap<u64, u64> = HashMap::new();
        for node in self.nodes.values() {
            if let Node::Directory { live, .. } = node {
                for &child in live.values() {
                    *names.entry(child).or_insert(0) += 1;
                }
            }
        }
        let mut entries = BTreeMap::new();
        let mut shared_bytes = BTreeMap::new();
        let mut queue = vec![(Utf8PathBuf::from("/"), ROOT_INO)];
        while let Some((path, ino)) = queue.pop() {
            let node = self.node(ino);
            let links = match node {
                Node::Directory { live, .. } => {
                    queue.extend(live.iter().map(|(name, &child)| (path.join(name), child)));
                    1
                }
                _ => names.get(&ino).copied().unwrap_or(0),
            };
            if let Node::Regular { .. } = node {
                let shared = self.shared_blocks(ino);
                if shared > 0 {
                    shared_bytes.insert(path.clone(), shared * self.block_size);
                }
            }
            entries.insert(path, node.probe(self.block_size, links));
        }
        SimSnapshot {
            entries,
            shared_bytes,
            other_writers_bytes: self.other_writers,
        }
    }
}

/// Keeps one directory lock of a [`SimFs`]; dropping it releases the lock unless a crash
/// emptied the lock table since (the token no longer matches).
struct SimLockGuard {
    inner: Arc<Inner>,
    dir_ino: u64,
    token: u64,
}

impl Drop for SimLockGuard {
    fn drop(&mut self) {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.locks.get(&self.dir_ino) == Some(&self.token) {
            state.locks.remove(&self.dir_ino);
            self.inner.lock_released.notify_all();
        }
    }
}

/// Checks that an offset and length stay within the largest file: `EINVAL` for an offset
/// `off_t` cannot hold, `EFBIG` for an end past it. Returns the end.
fn checked_end(offset: u64, len: u64) -> io::Result<u64> {
    if offset > MAX_FILE_BYTES {
        return Err(errno(libc::EINVAL));
    }
    offset
        .checked_add(len)
        .filter(|&end| end <= MAX_FILE_BYTES)
        .ok_or_else(|| errno(libc::EFBIG))
}

/// The end of a `pread`/`pwrite` of `len` bytes at `offset`: `EINVAL` when the offset or
/// the end is past `i64::MAX` (a negative `loff_t`), as the kernel's `rw_verify_area`
/// says. (The kernel's `EFBIG` past a filesystem's largest file is not modelled: a
/// `SimFs` file may reach `i64::MAX`, as on tmpfs and btrfs; ext4 stops at 16 TiB.)
fn rw_range(offset: u64, len: usize) -> io::Result<u64> {
    offset
        .checked_add(len as u64)
        .filter(|&end| end <= MAX_FILE_BYTES)
        .ok_or_else(|| errno(libc::EINVAL))
}

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

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state after the prelude every [`HostFs`] call goes through.
    fn begin(&self, op: SimOp, names: &[&str]) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.state();
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
    /// after a [`DirHandle::sync_fs`] or from its second call on (the first only starts
    /// the worker that accounts them, as on XFS).
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

    /// Takes a snapshot of the file at `path` (a btrfs snapshot, a reflink copy kept
    /// elsewhere): its blocks are now shared, so [`FileHandle::shared_bytes`] counts them
    /// and deleting or truncating the file does not give them back until
    /// [`drop_snapshots`](SimFs::drop_snapshots).
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`; `EINVAL` if `path` is not a regular file.
    pub fn snapshot_file(&self, path: impl AsRef<Utf8Path>) -> io::Result<()> {
        let mut state = self.state();
        let ino = state
            .resolve(path.as_ref(), false)?
            .ino
            .ok_or_else(|| errno(libc::ENOENT))?;
        let taken = match state.node_mut(ino) {
            Node::Regular { live, durable } => {
                live.shared = live.blocks.block_count();
                durable.shared = durable.blocks.block_count().min(live.shared);
                live.shared
            }
            _ => return Err(errno(libc::EINVAL)),
        };
        let held = state.snapshots.entry(ino).or_insert(0);
        *held = (*held).max(taken);
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
        data.shared = 0;
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
                for (&start, &end) in &in_group.0 {
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
        for node in state.nodes.values_mut() {
            if let Node::Regular { live, durable } = node {
                live.shared = 0;
                durable.shared = 0;
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
    /// rules the ALICE and CrashMonkey studies found applications breaking. Every directory lock is dropped; guards still held release nothing.
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
    /// one filesystem: a release directory renamed, a home moved aside. Handles opened
    /// before keep working on what they opened.
    ///
    /// # Errors
    /// `ENOENT` if `from` is missing, `EEXIST` if `to` is taken, `EINVAL` if `to` is
    /// inside `from` or either ends in `.`/`..` or is `/`.
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
                entry
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
        let mut path = String::from("/");
        state.walk(ROOT_INO, &mut path, &mut visit);
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

/// A directory handle of a [`SimFs`]: the directory's inode, whatever its path becomes.
struct SimDir {
    fs: SimFs,
    ino: u64,
    generation: u64,
}

impl fmt::Debug for SimDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDir").field("ino", &self.ino).finish()
    }
}

impl SimDir {
    fn begin(&self, op: SimOp, names: &[&str]) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.fs.state();
        state.begin_on(op, names, self.generation)?;
        Ok(state)
    }
}

impl DirHandle for SimDir {
    fn space(&self) -> io::Result<Space> {
        let mut state = self.begin(SimOp::Space, &[])?;
        let free_bytes = state.read_space();
        state.max_free_reported = state.max_free_reported.max(free_bytes.saturating_add(1));
        Ok(Space {
            free_bytes,
            total_bytes: state.capacity,
            block_bytes: state.block_size,
            usable_bytes: state.capacity,
            read_only: state.read_only,
            free_inodes: None,
        })
    }

    fn probe(&self, name: &str) -> io::Result<Option<Probe>> {
        let state = self.begin(SimOp::Probe, &[name])?;
        check_name(name)?;
        // In a removed directory nothing is found (`ENOENT`, so `None`), as on the kernel.
        let Ok(entries) = state.open_directory(self.ino) else {
            return Ok(None);
        };
        Ok(entries.get(name).map(|&ino| state.probe_ino(ino)))
    }

    fn open_file(&self, name: &str, options: OpenOptions) -> io::Result<Box<dyn FileHandle>> {
        let mut state = self.begin(SimOp::OpenFile, &[name])?;
        let ino = match state.entry(self.ino, name)? {
            None if options.create || options.create_new => {
                if state.read_only {
                    return Err(errno(libc::EROFS));
                }
                let file = Node::Regular {
                    live: FileData::default(),
                    durable: FileData::default(),
                };
                state.link_new(self.ino, name.to_owned(), file, false)
            }
            None => return Err(errno(libc::ENOENT)),
            Some(_) if options.create_new => return Err(errno(libc::EEXIST)),
            Some(ino) => {
                match state.node(ino).kind() {
                    FileKind::Regular => {}
                    FileKind::Symlink => return Err(errno(libc::ELOOP)),
                    FileKind::Directory => return Err(errno(libc::EISDIR)),
                    FileKind::Fifo | FileKind::Socket => return Err(errno(libc::ENXIO)),
                    FileKind::BlockDevice | FileKind::CharDevice => {
                        return Err(errno(libc::EINVAL));
                    }
                }
                if (options.writes() || options.truncate) && state.read_only {
                    return Err(errno(libc::EROFS));
                }
                if options.truncate && options.writes() {
                    *state.file_mut(ino) = FileData::default();
                }
                ino
            }
        };
        *state.open_files.entry(ino).or_insert(0) += 1;
        Ok(Box::new(SimFile {
            fs: self.fs.clone(),
            ino,
            name: name.to_owned(),
            read: options.reads(),
            write: options.writes(),
            append: options.append,
            generation: self.generation,
        }))
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        let mut state = self.begin(SimOp::RemoveFile, &[name])?;
        check_name(name)?;
        // unlinkat(2) takes write access to the mount before it looks the name up.
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        let ino = state
            .entry(self.ino, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        if let Node::Directory { .. } = state.node(ino) {
            return Err(errno(libc::EISDIR));
        }
        state.unlink_entry(self.ino, name, ino);
        state.collect_garbage();
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.begin(SimOp::Rename, &[from, to])?;
        check_name(from)?;
        check_name(to)?;
        // renameat(2), too, takes write access before looking either name up.
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        let source = state
            .entry(self.ino, from)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let target = state.entry(self.ino, to)?;
        let source_is_dir = matches!(state.node(source), Node::Directory { .. });
        if let Some(target) = target {
            if target == source {
                return Ok(()); // two names of one file: rename(2) does nothing
            }
            match (source_is_dir, state.node(target)) {
                (false, Node::Directory { .. }) => return Err(errno(libc::EISDIR)),
                (true, Node::Directory { live, .. }) if !live.is_empty() => {
                    return Err(errno(libc::ENOTEMPTY));
                }
                (true, Node::Directory { .. }) => {}
                (true, _) => return Err(errno(libc::ENOTDIR)),
                (false, _) => {}
            }
            state.unlink_entry(self.ino, to, target);
        }
        let entries = state.entries_mut(self.ino);
        entries.remove(from);
        entries.insert(to.to_owned(), source);
        state.collect_garbage();
        Ok(())
    }

    fn link(&self, existing: &str, new: &str) -> io::Result<()> {
        let mut state = self.begin(SimOp::Link, &[existing, new])?;
        let ino = state
            .entry(self.ino, existing)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        if state.entry(self.ino, new)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        // linkat(2) checks write access when it creates the new name, before `vfs_link`
        // refuses a directory.
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        if let Node::Directory { .. } = state.node(ino) {
            return Err(errno(libc::EPERM));
        }
        state.entries_mut(self.ino).insert(new.to_owned(), ino);
        Ok(())
    }

    fn create_dir(&self, name: &str) -> io::Result<()> {
        let mut state = self.begin(SimOp::CreateDir, &[name])?;
        // mkdirat(2) reports a taken name before a read-only mount.
        if state.entry(self.ino, name)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        let dir = Node::Directory {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        state.link_new(self.ino, name.to_owned(), dir, false);
        Ok(())
    }

    fn remove_dir(&self, name: &str) -> io::Result<()> {
        let mut state = self.begin(SimOp::RemoveDir, &[name])?;
        check_name(name)?;
        // rmdir(2) takes write access to the mount before it looks the name up.
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        let ino = state
            .entry(self.ino, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        match state.node(ino) {
            Node::Directory { live, .. } if !live.is_empty() => {
                return Err(errno(libc::ENOTEMPTY));
            }
            Node::Directory { .. } => {}
            _ => return Err(errno(libc::ENOTDIR)),
        }
        state.unlink_entry(self.ino, name, ino);
        state.collect_garbage();
        Ok(())
    }

    fn read_dir(&self) -> io::Result<Vec<DirEntry>> {
        let state = self.begin(SimOp::ReadDir, &[])?;
        // A removed directory lists as empty: getdents(2) says `ENOENT` there, and
        // readdir(3) turns that into the end of the listing.
        let Ok(entries) = state.open_directory(self.ino) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .iter()
            .map(|(name, &ino)| DirEntry {
                name: name.clone(),
                kind: state.node(ino).kind(),
            })
            .collect())
    }

    fn open_subdir(&self, name: &str) -> io::Result<Box<dyn DirHandle>> {
        let state = self.begin(SimOp::OpenSubdir, &[name])?;
        let ino = state
            .entry(self.ino, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        // `O_DIRECTORY` is checked before `O_NOFOLLOW`: a symlink is `ENOTDIR` too.
        if !matches!(state.node(ino), Node::Directory { .. }) {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(Box::new(SimDir {
            fs: self.fs.clone(),
            ino,
            generation: self.generation,
        }))
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.begin(SimOp::SyncDir, &[])?;
        // A removed directory's descriptor still syncs (there is nothing left to make
        // durable in it).
        if let Some(Node::Directory { live, durable }) = state.nodes.get_mut(&self.ino) {
            durable.clone_from(live);
        }
        state.collect_garbage();
        Ok(())
    }

    /// A filesystem that can share extents, as XFS and btrfs can: callers look at
    /// [`FileHandle::shared_bytes`].
    /// Not counted and never faulted: a property of the mount, not an operation.
    fn fs_kind(&self) -> io::Result<FsKind> {
        Ok(FsKind::Other(SIM_MAGIC))
    }

    /// As `syncfs(2)`: makes the whole filesystem durable — every file's length, blocks
    /// and bytes and every directory's entries, as if each were fsynced — and shows every
    /// pending free ([`SimFs::set_late_frees`]). Not counted and never faulted; `EIO`
    /// through a handle from before a crash.
    fn sync_fs(&self) -> io::Result<()> {
        let mut state = self.fs.state();
        if self.generation != state.generation {
            return Err(errno(libc::EIO));
        }
        state.sync_everything();
        state.pending_free = 0;
        state.pending_seen = false;
        Ok(())
    }

    /// Waits on the lock table, woken as soon as a holder lets go: no wall-clock polling.
    fn lock_within(&self, wait: std::time::Duration) -> io::Result<Option<DirLock>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(lock) = self.try_lock()? {
                return Ok(Some(lock));
            }
            let state = self.fs.state();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if state.locks.contains_key(&self.ino) {
                let _ = self
                    .fs
                    .inner
                    .lock_released
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    fn try_lock(&self) -> io::Result<Option<DirLock>> {
        let mut state = self.begin(SimOp::LockDir, &[])?;
        // `openat(dir, ".")` and `flock` work on a removed directory too.
        if state.locks.contains_key(&self.ino) {
            return Ok(None);
        }
        let token = state.next_lock_token;
        state.next_lock_token += 1;
        state.locks.insert(self.ino, token);
        Ok(Some(DirLock::new(SimLockGuard {
            inner: Arc::clone(&self.fs.inner),
            dir_ino: self.ino,
            token,
        })))
    }
}

/// An open regular file of a [`SimFs`]: its inode, whatever names it has or loses.
struct SimFile {
    fs: SimFs,
    ino: u64,
    /// The name it was opened by, for fault plans on a name ([`SimFs::fail_nth_on`]).
    name: String,
    read: bool,
    write: bool,
    append: bool,
    generation: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("ino", &self.ino)
            .field("name", &self.name)
            .field("read", &self.read)
            .field("write", &self.write)
            .field("append", &self.append)
            .finish()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut state = self.fs.state();
        if state.generation == self.generation {
            state.close(self.ino);
        }
    }
}

impl SimFile {
    fn begin(&self, op: SimOp) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.fs.state();
        state.begin_on(op, &[&self.name], self.generation)?;
        Ok(state)
    }

    /// The prelude of a call that writes: `EBADF` unless opened for writing (`fallocate`
    /// and `pwrite` say so; `ftruncate` says `EINVAL`), `EROFS` on a read-only filesystem.
    fn begin_write(&self, op: SimOp, not_writable: i32) -> io::Result<MutexGuard<'_, State>> {
        let state = self.begin(op)?;
        if !self.write {
            return Err(errno(not_writable));
        }
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        Ok(state)
    }
}

impl FileHandle for SimFile {
    fn probe(&self) -> io::Result<Probe> {
        let state = self.begin(SimOp::Probe)?;
        Ok(state.probe_ino(self.ino))
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut state = self.begin_write(SimOp::Allocate, libc::EBADF)?;
        let ino = self.ino;
        if len == 0 {
            return Err(errno(libc::EINVAL));
        }
        let end = checked_end(offset, len)?;
        match state.allocate_mode {
            AllocateMode::Unsupported { errno: code } => return Err(errno(code)),
            AllocateMode::NoBlocks => {}
            AllocateMode::Supported => {
                let block_size = state.block_size;
                let (first, last) = (offset / block_size, end.div_ceil(block_size));
                let gaps = state.file_mut(ino).blocks.gaps(first, last);
                let needed: u64 = gaps.iter().map(|(start, end)| end - start).sum();
                let (budget, out_of_space) = state.allocation_budget();
                if needed > budget {
                    return Err(errno(out_of_space));
                }
                let blocks = &mut state.file_mut(ino).blocks;
                for (start, end) in gaps {
                    blocks.insert(start, end);
                }
            }
        }
        let file = state.file_mut(ino);
        file.len = file.len.max(end);
        Ok(())
    }

    fn write_fill(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut state = self.begin_write(SimOp::WriteFill, libc::EBADF)?;
        if len == 0 {
            return Ok(());
        }
        let end = checked_end(offset, len)?;
        let block_size = state.block_size;
        let (first, last) = (offset / block_size, end.div_ceil(block_size));
        let gaps = state.file_mut(self.ino).blocks.gaps(first, last);
        let (mut budget, out_of_space) = state.allocation_budget();
        if !state.unshare_for_write(self.ino, first, last, &mut budget) {
            return Err(errno(out_of_space));
        }
        // The first block that could not be had, if any: the write stops there.
        let mut stopped_at = None;
        let file = state.file_mut(self.ino);
        for (start, gap_end) in gaps {
            let taken = budget.min(gap_end - start);
            file.blocks.insert(start, start + taken);
            budget -= taken;
            if start + taken < gap_end {
                stopped_at = Some(start + taken);
                break;
            }
        }
        let written_end = stopped_at.map_or(end, |block| (block * block_size).max(offset));
        if written_end > offset {
            file.len = file.len.max(written_end);
        }
        // The pattern is not kept: what it overwrote reads as zeros.
        file.zero(offset, written_end, block_size);
        state.redirtied(self.ino, first, written_end.div_ceil(block_size));
        match stopped_at {
            Some(_) => Err(errno(out_of_space)),
            None => Ok(()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.begin_write(SimOp::SetLen, libc::EINVAL)?;
        if len > MAX_FILE_BYTES {
            return Err(errno(libc::EINVAL));
        }
        if len < state.file_mut(self.ino).len {
            state.shortened.insert(self.ino);
        }
        let block_size = state.block_size;
        let file = state.file_mut(self.ino);
        // Bytes cut off read as zeros if the file grows back over them, as on the kernel.
        file.zero(len, file.len.max(len), block_size);
        file.len = len;
        state.free_blocks_from(self.ino, len.div_ceil(block_size));
        state.redirtied(self.ino, len / block_size, u64::MAX);
        Ok(())
    }

    /// The blocks a snapshot ([`SimFs::snapshot_file`]) or a reflink copy
    /// ([`SimFs::reflink`]) shares with the file.
    fn shared_bytes(&self) -> io::Result<Option<u64>> {
        let state = self.begin(SimOp::Probe)?;
        Ok(Some(state.shared_blocks(self.ino) * state.block_size))
    }

    /// A failed one (an injected fault) drops the bytes written since the last sync from
    /// writeback, as Linux does after a writeback error: they still read back, but a
    /// later sync, which succeeds, does not make them durable unless they are written
    /// again.
    fn sync_all(&self) -> io::Result<()> {
        let mut state = self
            .begin(SimOp::SyncFile)
            .inspect_err(|_| self.fs.state().sync_failed(self.ino, self.generation))?;
        state.write_back(self.ino);
        Ok(())
    }

    /// As [`sync_all`](FileHandle::sync_all): the simulator has no metadata that
    /// `fdatasync` would leave behind.
    fn sync_data(&self) -> io::Result<()> {
        let mut state = self
            .begin(SimOp::SyncData)
            .inspect_err(|_| self.fs.state().sync_failed(self.ino, self.generation))?;
        state.write_back(self.ino);
        Ok(())
    }

    /// What [`write_at`](FileHandle::write_at) wrote; zeros for holes and for blocks
    /// allocated by [`allocate`](FileHandle::allocate) or written by
    /// [`write_fill`](FileHandle::write_fill) (the simulator does not keep the pattern).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.begin(SimOp::ReadAt)?;
        if !self.read {
            return Err(errno(libc::EBADF));
        }
        rw_range(offset, buf.len())?;
        let block_size = state.block_size;
        Ok(state.file_mut(self.ino).load(offset, buf, block_size))
    }

    /// Allocates the blocks the range needs and keeps the bytes. When space runs out
    /// part-way the write stops at the first block it could not have and returns what it
    /// wrote before it; with not a byte written it fails with `ENOSPC` (or `EDQUOT` when
    /// the quota is the tighter limit).
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.begin_write(SimOp::WriteAt, libc::EBADF)?;
        let ino = self.ino;
        // `O_APPEND`: the offset is ignored, as Linux's pwrite(2) ignores it.
        let offset = if self.append {
            state.file_mut(ino).len
        } else {
            offset
        };
        let end = rw_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(0);
        }
        let block_size = state.block_size;
        let (first, last) = (offset / block_size, end.div_ceil(block_size));
        let gaps = state.file_mut(ino).blocks.gaps(first, last);
        let (mut budget, out_of_space) = state.allocation_budget();
        if !state.unshare_for_write(ino, first, last, &mut budget) {
            return Err(errno(out_of_space));
        }
        let file = state.file_mut(ino);
        let mut stopped_at = None;
        for (start, gap_end) in gaps {
            let taken = budget.min(gap_end - start);
            file.blocks.insert(start, start + taken);
            budget -= taken;
            if start + taken < gap_end {
                stopped_at = Some(start + taken);
                break;
            }
        }
        let written_end = stopped_at.map_or(end, |block| (block * block_size).max(offset));
        if written_end == offset {
            return Err(errno(out_of_space));
        }
        let written = (written_end - offset) as usize;
        file.store(offset, &buf[..written], block_size);
        file.len = file.len.max(written_end);
        state.redirtied(ino, first, written_end.div_ceil(block_size));
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::Extents;

    fn ranges(extents: &Extents) -> Vec<(u64, u64)> {
        extents.0.iter().map(|(&s, &e)| (s, e)).collect()
    }

    #[test]
    fn extents_merge_touching_and_overlapping_ranges() {
        let mut extents = Extents::default();
        extents.insert(10, 20);
        extents.insert(30, 40);
        extents.insert(20, 30);
        assert_eq!(ranges(&extents), [(10, 40)]);
        extents.insert(5, 50);
        assert_eq!(ranges(&extents), [(5, 50)]);
        extents.insert(60, 70);
        assert_eq!(extents.block_count(), 55);
    }

    #[test]
    fn extents_gaps_lists_unallocated_ranges_in_order() {
        let mut extents = Extents::default();
        extents.insert(2, 4);
        extents.insert(6, 8);
        assert_eq!(extents.gaps(0, 10), [(0, 2), (4, 6), (8, 10)]);
        assert_eq!(extents.gaps(3, 7), [(4, 6)]);
        assert_eq!(extents.gaps(2, 4), []);
    }

    #[test]
    fn extents_truncate_frees_blocks_from_index() {
        let mut extents = Extents::default();
        extents.insert(0, 10);
        extents.insert(20, 30);
        extents.truncate(5);
        assert_eq!(ranges(&extents), [(0, 5)]);
        extents.truncate(0);
        assert_eq!(extents.block_count(), 0);
    }
}
