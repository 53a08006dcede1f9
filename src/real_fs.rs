//! [`RealFs`]: the [`HostFs`] backend that talks to the kernel through `libc`.
//!
//! This module is the one place in the crate with `unsafe` code: the crate root denies it,
//! and only this module allows it. Every `unsafe` block is a single `libc` call (or the
//! adoption of a descriptor that call returned) with a `// SAFETY:` comment, and `errno` is
//! read right after the failing call, so every error keeps its raw os error code.
//!
//! Paths are never followed through a symbolic link at their last component: files are
//! opened with `O_NOFOLLOW`, and the operations that need a regular file open it with
//! `O_NONBLOCK` (a fifo fails with `ENXIO` instead of blocking) and check `fstat` before
//! touching it. Descriptors are owned by [`OwnedFd`], so they are closed on every path.
//!
//! Allocation uses `fallocate(2)` mode 0 on Linux and Android. Other Unix targets keep the
//! trait's default [`allocate`](HostFs::allocate), which returns `EOPNOTSUPP`, so callers
//! fall back to [`write_fill`](HostFs::write_fill).
//!
//! ```
//! use camino::Utf8PathBuf;
//! use disk_reserve::{FileKind, HostFs, RealFs};
//!
//! let dir = tempfile::tempdir()?;
//! let dir = Utf8PathBuf::try_from(dir.path().to_path_buf()).expect("UTF-8 temp dir");
//! let file = dir.join("reserve");
//!
//! let fs = RealFs::new();
//! let _lock = fs.lock_dir(&dir)?;
//! fs.create_file(&file)?;
//! fs.write_fill(&file, 0, 64 * 1024)?;
//! fs.sync_file(&file)?;
//! fs.sync_dir(&dir)?;
//!
//! let probe = fs.probe(&file)?.expect("the file exists");
//! assert_eq!(probe.kind, FileKind::Regular);
//! assert_eq!(probe.len, 64 * 1024);
//!
//! fs.remove_file(&file)?;
//! assert_eq!(fs.probe(&file)?, None);
//! # Ok::<(), std::io::Error>(())
//! ```
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;

use camino::Utf8Path;

use crate::host_fs::{DirLock, FileKind, HostFs, Probe, Space};
use crate::pattern;

/// Largest buffer [`write_fill`](HostFs::write_fill) fills and writes at once.
const FILL_CHUNK_BYTES: u64 = 1 << 20;

/// The kernel-backed [`HostFs`]: every method is one or a few `libc` calls.
///
/// It holds nothing but the seed of the [fill pattern](crate::pattern), so it is cheap to
/// clone and to share between threads.
#[derive(Debug, Clone)]
pub struct RealFs {
    seed: u64,
}

impl RealFs {
    /// A backend whose [`write_fill`](HostFs::write_fill) uses a fresh pattern seed
    /// ([`pattern::fresh_seed`]), so two reserves never hold blocks a deduplicating
    /// filesystem could share.
    pub fn new() -> Self {
        RealFs::with_seed(pattern::fresh_seed())
    }

    /// A backend whose [`write_fill`](HostFs::write_fill) writes the pattern stream of
    /// `seed`: the bytes at file offset `o` are those [`pattern::fill`] gives for `(seed, o)`.
    pub fn with_seed(seed: u64) -> Self {
        RealFs { seed }
    }
}

impl Default for RealFs {
    /// Same as [`RealFs::new`]: a fresh pattern seed.
    fn default() -> Self {
        RealFs::new()
    }
}

/// An error carrying the raw errno `code`.
fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// `path` as a C string; an interior NUL byte is `EINVAL`, as the kernel would say.
fn c_path(path: &Utf8Path) -> io::Result<CString> {
    CString::new(path.as_str()).map_err(|_| errno(libc::EINVAL))
}

/// `value` as an `off_t`; anything the type cannot hold is `EFBIG` (file too large).
fn to_off_t(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| errno(libc::EFBIG))
}

/// Turns a `-1` return into the `errno` it left. Call it right after the libc call.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `open(2)` of `path` with `flags`, creating files with `mode` when `O_CREAT` is given.
fn open(path: &Utf8Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c_path = c_path(path)?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call; the mode is
    // passed as `c_uint`, the type a variadic `mode_t` argument is promoted to.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags, libc::c_uint::from(mode)) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `open` succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory at `dir` read-only (following links: a home may be a symlink).
fn open_dir(dir: &Utf8Path) -> io::Result<OwnedFd> {
    open(dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)
}

/// How [`open_regular`] opens the file.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// `O_WRONLY`, for allocating, writing and truncating.
    Write,
    /// `O_RDONLY`, enough for `fsync` and usable on a read-only filesystem.
    Read,
}

/// Opens the existing regular file at `path` without following a symlink at its last
/// component (`ELOOP`), without blocking on a fifo, and refuses anything that is not a
/// regular file: `EISDIR` for a directory, `ENXIO` for a fifo or socket, `EINVAL` for the
/// rest (devices). `O_NONBLOCK` makes opening a fifo fail with `ENXIO` (write side, no
/// reader) or succeed at once (read side), where a blocking open would wait for a peer.
fn open_regular(path: &Utf8Path, access: Access) -> io::Result<OwnedFd> {
    let access = match access {
        Access::Write => libc::O_WRONLY,
        Access::Read => libc::O_RDONLY,
    };
    let flags = access | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
    let fd = open(path, flags, 0)?;
    match fstat_mode(&fd)? & libc::S_IFMT {
        libc::S_IFREG => Ok(fd),
        libc::S_IFDIR => Err(errno(libc::EISDIR)),
        libc::S_IFIFO | libc::S_IFSOCK => Err(errno(libc::ENXIO)),
        _ => Err(errno(libc::EINVAL)),
    }
}

/// `st_mode` of the open file `fd` (`fstat(2)`).
fn fstat_mode(fd: &OwnedFd) -> io::Result<libc::mode_t> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is an open descriptor and `stat` points to writable memory the size of
    // a `struct stat`.
    check(unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) })?;
    // SAFETY: `fstat` succeeded, so it initialised the whole struct.
    Ok(unsafe { stat.assume_init() }.st_mode)
}

/// The [`FileKind`] of a `st_mode`, or `None` for a type this crate does not know
/// (such as a BSD whiteout).
fn file_kind(mode: libc::mode_t) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::Regular,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFCHR => FileKind::CharDevice,
        _ => return None,
    })
}

/// `fsync(2)` of `fd`.
fn fsync(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor for the duration of the call.
    check(unsafe { libc::fsync(fd.as_raw_fd()) })
}

/// Writes all of `buf` at `offset` of `fd`, continuing after short writes and retrying
/// `EINTR`. A write that makes no progress is `EIO`.
fn pwrite_all(fd: &OwnedFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let at = to_off_t(offset)?;
        // SAFETY: `fd` is open, and `buf` is a live slice of `buf.len()` readable bytes.
        let written = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), at) };
        if written == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        // `written` is neither -1 nor more than `buf.len()`, so it fits a usize.
        let written = usize::try_from(written).map_err(|_| errno(libc::EIO))?;
        if written == 0 {
            return Err(errno(libc::EIO));
        }
        buf = &buf[written..];
        offset += written as u64;
    }
    Ok(())
}

impl HostFs for RealFs {
    /// `statvfs(2)`: free bytes are `f_bavail * f_frsize` (what an unprivileged writer can
    /// still have), total bytes `f_blocks * f_frsize`, both saturating.
    // The field types differ between targets (`u64` on Linux, `u32` block counts on macOS),
    // so the casts are needed somewhere even if not here.
    #[allow(clippy::unnecessary_cast)]
    fn space(&self, path: &Utf8Path) -> io::Result<Space> {
        let c_path = c_path(path)?;
        let mut stat = MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c_path` is NUL-terminated and outlives the call; `stat` points to
        // writable memory the size of a `struct statvfs`.
        check(unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) })?;
        // SAFETY: `statvfs` succeeded, so it initialised the whole struct.
        let stat = unsafe { stat.assume_init() };
        let fragment = stat.f_frsize as u64;
        Ok(Space {
            free_bytes: (stat.f_bavail as u64).saturating_mul(fragment),
            total_bytes: (stat.f_blocks as u64).saturating_mul(fragment),
            block_bytes: fragment,
        })
    }

    /// `lstat(2)`; `ENOENT` is `Ok(None)`. A file type outside [`FileKind`] is `EINVAL`.
    // `st_nlink` is `u64` on some targets and `u32`/`u16` on others.
    #[allow(clippy::unnecessary_cast)]
    fn probe(&self, path: &Utf8Path) -> io::Result<Option<Probe>> {
        let c_path = c_path(path)?;
        let mut stat = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `c_path` is NUL-terminated and outlives the call; `stat` points to
        // writable memory the size of a `struct stat`.
        if let Err(err) = check(unsafe { libc::lstat(c_path.as_ptr(), stat.as_mut_ptr()) }) {
            return match err.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: `lstat` succeeded, so it initialised the whole struct.
        let stat = unsafe { stat.assume_init() };
        let kind = file_kind(stat.st_mode).ok_or_else(|| errno(libc::EINVAL))?;
        Ok(Some(Probe {
            kind,
            len: stat.st_size as u64,
            allocated_bytes: (stat.st_blocks as u64).saturating_mul(512),
            links: stat.st_nlink as u64,
        }))
    }

    /// `open(O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)`, then close.
    fn create_file(&self, path: &Utf8Path) -> io::Result<()> {
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        open(path, flags, 0o600).map(drop)
    }

    /// `fallocate(fd, 0, offset, len)`, not `posix_fallocate` (which glibc emulates by
    /// writing when the filesystem cannot allocate). `EINTR` is returned, not retried; an
    /// empty range is `EINVAL`, as the kernel says.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn allocate(&self, path: &Utf8Path, offset: u64, len: u64) -> io::Result<()> {
        let (offset, len_off) = (to_off_t(offset)?, to_off_t(len)?);
        let fd = open_regular(path, Access::Write)?;
        // SAFETY: `fd` is an open descriptor for the duration of the call.
        check(unsafe { libc::fallocate(fd.as_raw_fd(), 0, offset, len_off) })
    }

    /// `pwrite(2)` of the pattern in chunks of at most 1 MiB, each chunk generated for its
    /// absolute offset; short writes continue and `EINTR` is retried. A range of more than
    /// one chunk is generated on a second thread while this one writes (two buffers in
    /// flight), so the pattern costs no wall time next to the write itself.
    fn write_fill(&self, path: &Utf8Path, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or_else(|| errno(libc::EFBIG))?;
        to_off_t(end)?;
        let fd = open_regular(path, Access::Write)?;
        if len <= FILL_CHUNK_BYTES {
            let mut buf = vec![0u8; len as usize];
            pattern::fill(&mut buf, self.seed, offset);
            return pwrite_all(&fd, &buf, offset);
        }
        let seed = self.seed;
        std::thread::scope(|scope| {
            // Filled chunks go one way, emptied buffers come back: two buffers in all.
            let (filled_tx, filled_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(1);
            let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
            for _ in 0..2 {
                let _ = empty_tx.send(vec![0u8; FILL_CHUNK_BYTES as usize]);
            }
            scope.spawn(move || {
                let mut pos = offset;
                // Either channel closing means the writer stopped (done or failed).
                while pos < end {
                    let Ok(mut buf) = empty_rx.recv() else { return };
                    buf.truncate((end - pos).min(FILL_CHUNK_BYTES) as usize);
                    pattern::fill(&mut buf, seed, pos);
                    let n = buf.len() as u64;
                    if filled_tx.send((pos, buf)).is_err() {
                        return;
                    }
                    pos += n;
                }
            });
            for (pos, buf) in filled_rx {
                pwrite_all(&fd, &buf, pos)?;
                let _ = empty_tx.send(buf);
            }
            Ok(())
        })
    }

    /// `ftruncate(2)`; a length above `i64::MAX` is `EFBIG`.
    fn set_len(&self, path: &Utf8Path, len: u64) -> io::Result<()> {
        let len = to_off_t(len)?;
        let fd = open_regular(path, Access::Write)?;
        // SAFETY: `fd` is an open descriptor for the duration of the call.
        check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })
    }

    /// Opens the file read-only (so it works on a read-only filesystem), then `fsync(2)`.
    fn sync_file(&self, path: &Utf8Path) -> io::Result<()> {
        fsync(&open_regular(path, Access::Read)?)
    }

    /// `open(O_RDONLY | O_DIRECTORY | O_CLOEXEC)`, then `fsync(2)`.
    fn sync_dir(&self, dir: &Utf8Path) -> io::Result<()> {
        fsync(&open_dir(dir)?)
    }

    /// `unlink(2)`. A directory is `EISDIR` on Linux (`EPERM` on macOS and the BSDs).
    fn remove_file(&self, path: &Utf8Path) -> io::Result<()> {
        let c_path = c_path(path)?;
        // SAFETY: `c_path` is NUL-terminated and outlives the call.
        check(unsafe { libc::unlink(c_path.as_ptr()) })
    }

    /// `flock(LOCK_EX)` on a descriptor of the directory itself, retrying `EINTR`. The lock
    /// belongs to that open file description, so it excludes other threads of this process
    /// as well as other processes; dropping the [`DirLock`] closes it and releases the lock.
    fn lock_dir(&self, dir: &Utf8Path) -> io::Result<DirLock> {
        let fd = open_dir(dir)?;
        loop {
            // SAFETY: `fd` is an open descriptor for the duration of the call.
            match check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) }) {
                Ok(()) => return Ok(DirLock::new(fd)),
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
                Err(err) => return Err(err),
            }
        }
    }
}
