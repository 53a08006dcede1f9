//! [`RealFs`]: the [`HostFs`] backend that talks to the kernel through `libc`.
//!
//! This module is the one place in the crate with `unsafe` code: the crate root denies it,
//! and only this module allows it. Every `unsafe` block is a single `libc` call (or the
//! adoption of a descriptor that call returned) with a `// SAFETY:` comment, and `errno` is
//! read right after the failing call, so every error keeps its raw os error code.
//!
//! A directory is opened once ([`HostFs::open_dir`]) and every name is resolved relative
//! to its descriptor with the `*at` calls; a name is never followed through a symbolic
//! link: files are opened with `O_NOFOLLOW | O_NONBLOCK` (a fifo fails with `ENXIO`
//! instead of blocking) and `fstat` is checked before the handle is returned, after which
//! every call goes to that one descriptor. Descriptors are owned by [`OwnedFd`], so they
//! are closed on every path.
//!
//! Linux only (the crate root compiles this module for `target_os = "linux"` alone): it
//! uses `fallocate(2)` mode 0, `syncfs(2)`, `fstatfs(2)`'s magic numbers, the `FIEMAP`
//! and inode-flag `ioctl`s and `/proc/self/mountinfo`.
//!
//! ```
//! use camino::Utf8PathBuf;
//! use disk_reserve::{FileKind, HostFs, OpenOptions, RealFs};
//!
//! let dir = tempfile::tempdir()?;
//! let dir = Utf8PathBuf::try_from(dir.path().to_path_buf()).expect("UTF-8 temp dir");
//!
//! let fs = RealFs::new();
//! let home = fs.open_dir(&dir)?; // resolved once; renaming `dir` now changes nothing
//! let _lock = home.try_lock()?.expect("nobody else holds it");
//! let file = home.open_file("reserve", OpenOptions::create_new())?;
//! file.write_fill(0, 64 * 1024)?;
//! file.sync_all()?;
//! home.sync()?;
//!
//! let probe = home.probe("reserve")?.expect("the file exists");
//! assert_eq!(probe.kind, FileKind::Regular);
//! assert_eq!(probe.len, 64 * 1024);
//!
//! home.remove_file("reserve")?;
//! assert_eq!(home.probe("reserve")?, None);
//! # Ok::<(), std::io::Error>(())
//! ```
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use camino::Utf8Path;

use crate::host_fs::{
    DirEntry, DirHandle, DirLock, FileHandle, FileKind, FsKind, HostFs, OpenOptions, Probe, Space,
    check_name,
};
use crate::pattern;

/// Largest buffer [`write_fill`](FileHandle::write_fill) fills and writes at once.
///
/// Small enough that the buffer stays in a core's L2 cache while the kernel copies it,
/// large enough that the calls cost nothing: on tmpfs, 256 KiB wrote 64 MiB 3–5 % faster
/// than 1 MiB did, and 32 KiB 5 % slower (BENCHMARKS.md, "Goal 3, issue 14, this host").
const FILL_CHUNK_BYTES: u64 = 256 << 10;

/// The kernel-backed [`HostFs`]: every method is one or a few `libc` calls.
///
/// It holds nothing but the seed of the [fill pattern](crate::pattern), so it is cheap to
/// clone and to share between threads.
#[derive(Debug, Clone)]
pub struct RealFs {
    seed: u64,
}

impl RealFs {
    /// A backend whose [`write_fill`](FileHandle::write_fill) uses a fresh pattern seed
    /// ([`pattern::fresh_seed`]), so two reserves never hold blocks a deduplicating
    /// filesystem could share.
    pub fn new() -> Self {
        RealFs::with_seed(pattern::fresh_seed())
    }

    /// A backend whose [`write_fill`](FileHandle::write_fill) writes the pattern stream of
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

/// A single component `name` as a C string ([`check_name`]).
fn c_name(name: &str) -> io::Result<CString> {
    check_name(name)?;
    CString::new(name).map_err(|_| errno(libc::EINVAL))
}

/// `value` as an `off_t`; anything the type cannot hold is `EFBIG` (file too large).
fn to_off_t(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| errno(libc::EFBIG))
}

/// A read or write offset as an `off_t`: past `i64::MAX` it would be negative, which
/// `pread`/`pwrite` refuse with `EINVAL`.
fn offset_arg(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| errno(libc::EINVAL))
}

/// The byte count a `pread`/`pwrite`-like `call` returns, retrying `EINTR`; `-1` is the
/// `errno` it left. Read `errno` right after the call.
fn byte_count(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let count = call();
        if count == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        // Neither -1 nor more than the buffer's length, so it fits a usize.
        return usize::try_from(count).map_err(|_| errno(libc::EIO));
    }
}

/// Turns a `-1` return into the `errno` it left. Call it right after the libc call.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Adopts the descriptor a successful `open`/`openat` returned, or reads `errno`.
fn adopt(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat(2)` of the open file `fd`.
fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is an open descriptor and `stat` points to writable memory the size of
    // a `struct stat`.
    check(unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) })?;
    // SAFETY: `fstat` succeeded, so it initialised the whole struct.
    Ok(unsafe { stat.assume_init() })
}

/// What a `struct stat` says, as a [`Probe`]. A file type outside [`FileKind`] is `EINVAL`.
// `st_nlink`, `st_size` and `st_blocks` have other widths on other targets.
#[allow(clippy::unnecessary_cast)]
fn probe_of(stat: &libc::stat) -> io::Result<Probe> {
    Ok(Probe {
        kind: file_kind(stat.st_mode).ok_or_else(|| errno(libc::EINVAL))?,
        len: stat.st_size as u64,
        allocated_bytes: (stat.st_blocks as u64).saturating_mul(512),
        links: stat.st_nlink as u64,
    })
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

/// `fdatasync(2)` of `fd`.
fn fdatasync(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor for the duration of the call.
    check(unsafe { libc::fdatasync(fd.as_raw_fd()) })
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
    /// `open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)`: symlinks in the caller's path
    /// (a symlinked home) are followed, here and only here.
    fn open_dir(&self, path: &Utf8Path) -> io::Result<Box<dyn DirHandle>> {
        let c_path = c_path(path)?;
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
        let fd = adopt(unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Box::new(RealDir {
            fd,
            seed: self.seed,
        }))
    }
}

/// A directory opened by [`RealFs::open_dir`]: its descriptor anchors every call.
#[derive(Debug)]
struct RealDir {
    fd: OwnedFd,
    seed: u64,
}

impl DirHandle for RealDir {
    /// `fstatvfs(2)`: free bytes are `f_bavail * f_frsize` (what an unprivileged writer can
    /// still have), total bytes `f_blocks * f_frsize`, usable bytes the total less what is
    /// kept for root, all saturating; `ST_RDONLY` and `f_favail` (a filesystem reporting
    /// no inodes at all, `f_files == 0`, has no inode limit).
    // The field types differ between targets (`u64` on Linux, `u32` block counts on macOS),
    // so the casts are needed somewhere even if not here.
    #[allow(clippy::unnecessary_cast)]
    fn space(&self) -> io::Result<Space> {
        let mut stat = MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `self.fd` is open; `stat` points to writable memory the size of a
        // `struct statvfs`.
        check(unsafe { libc::fstatvfs(self.fd.as_raw_fd(), stat.as_mut_ptr()) })?;
        // SAFETY: `fstatvfs` succeeded, so it initialised the whole struct.
        let stat = unsafe { stat.assume_init() };
        let fragment = stat.f_frsize as u64;
        let bytes = |blocks: u64| blocks.saturating_mul(fragment);
        let root_only = (stat.f_bfree as u64).saturating_sub(stat.f_bavail as u64);
        Ok(Space {
            free_bytes: bytes(stat.f_bavail as u64),
            total_bytes: bytes(stat.f_blocks as u64),
            block_bytes: fragment,
            usable_bytes: bytes((stat.f_blocks as u64).saturating_sub(root_only)),
            read_only: stat.f_flag & libc::ST_RDONLY != 0,
            free_inodes: (stat.f_files as u64 != 0).then_some(stat.f_favail as u64),
        })
    }

    /// `fstatfs(2)`'s `f_type`.
    #[allow(clippy::unnecessary_cast)]
    fn fs_kind(&self) -> io::Result<FsKind> {
        let mut stat = MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: `self.fd` is open; `stat` points to writable memory the size of a
        // `struct statfs`.
        check(unsafe { libc::fstatfs(self.fd.as_raw_fd(), stat.as_mut_ptr()) })?;
        // SAFETY: `fstatfs` succeeded, so it initialised the whole struct.
        let stat = unsafe { stat.assume_init() };
        // `f_type` is a signed word holding an unsigned 32-bit magic number.
        Ok(FsKind::from_magic(stat.f_type as u64 & 0xFFFF_FFFF))
    }

    /// On overlayfs: the file is in the upper layer when the upper directory
    /// (`upperdir=` of the overlay's mount in `/proc/self/mountinfo`) holds it at the same
    /// place; otherwise it is a lower layer's. Elsewhere `false`.
    fn in_lower_layer(&self, name: &str) -> io::Result<bool> {
        check_name(name)?;
        let here = std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let Some((mount_point, upper)) = overlay_upper_of(&mountinfo, &here) else {
            return Ok(false);
        };
        let relative = here.strip_prefix(&mount_point).unwrap_or(&here);
        let in_upper = upper.join(relative).join(name);
        match std::fs::symlink_metadata(&in_upper) {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// `syncfs(2)` of the filesystem holding the directory.
    fn sync_fs(&self) -> io::Result<()> {
        // SAFETY: `self.fd` is an open descriptor for the duration of the call.
        check(unsafe { libc::syncfs(self.fd.as_raw_fd()) })
    }

    /// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `ENOENT` is `Ok(None)`.
    fn probe(&self, name: &str) -> io::Result<Option<Probe>> {
        let c_name = c_name(name)?;
        let mut stat = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `self.fd` is open, `c_name` is NUL-terminated and outlives the call,
        // `stat` points to writable memory the size of a `struct stat`.
        let ret = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                stat.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if let Err(err) = check(ret) {
            return match err.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: `fstatat` succeeded, so it initialised the whole struct.
        probe_of(&unsafe { stat.assume_init() }).map(Some)
    }

    /// `openat(dir, name, … | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0600)`, then
    /// `fstat`: anything but a regular file is closed again and refused.
    fn open_file(&self, name: &str, options: OpenOptions) -> io::Result<Box<dyn FileHandle>> {
        let c_name = c_name(name)?;
        let mut flags = match (options.reads(), options.writes()) {
            (true, true) => libc::O_RDWR,
            (false, true) => libc::O_WRONLY,
            _ => libc::O_RDONLY,
        };
        if options.append {
            flags |= libc::O_APPEND;
        }
        flags |= libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
        if options.create_new {
            flags |= libc::O_CREAT | libc::O_EXCL;
        } else if options.create {
            flags |= libc::O_CREAT;
        }
        if options.truncate {
            flags |= libc::O_TRUNC;
        }
        let mode = libc::c_uint::from(0o600 as libc::mode_t);
        // SAFETY: `self.fd` is open, `c_name` is NUL-terminated and outlives the call; the
        // mode is passed as `c_uint`, the type a variadic `mode_t` argument is promoted to.
        let fd = adopt(unsafe { libc::openat(self.fd.as_raw_fd(), c_name.as_ptr(), flags, mode) })?;
        match fstat(&fd)?.st_mode & libc::S_IFMT {
            libc::S_IFREG => Ok(Box::new(RealFile {
                fd,
                seed: self.seed,
            })),
            libc::S_IFDIR => Err(errno(libc::EISDIR)),
            libc::S_IFIFO | libc::S_IFSOCK => Err(errno(libc::ENXIO)),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    /// `unlinkat(dir, name, 0)`. A directory is `EISDIR` on Linux.
    fn remove_file(&self, name: &str) -> io::Result<()> {
        let c_name = c_name(name)?;
        // SAFETY: `self.fd` is open; `c_name` is NUL-terminated and outlives the call.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c_name.as_ptr(), 0) })
    }

    /// `renameat(dir, from, dir, to)`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (c_from, c_to) = (c_name(from)?, c_name(to)?);
        let dir = self.fd.as_raw_fd();
        // SAFETY: `dir` is open; both names are NUL-terminated and outlive the call.
        check(unsafe { libc::renameat(dir, c_from.as_ptr(), dir, c_to.as_ptr()) })
    }

    /// `linkat(dir, existing, dir, new, 0)`: a symlink at `existing` is linked, not followed.
    fn link(&self, existing: &str, new: &str) -> io::Result<()> {
        let (c_existing, c_new) = (c_name(existing)?, c_name(new)?);
        let dir = self.fd.as_raw_fd();
        // SAFETY: `dir` is open; both names are NUL-terminated and outlive the call.
        check(unsafe { libc::linkat(dir, c_existing.as_ptr(), dir, c_new.as_ptr(), 0) })
    }

    /// `mkdirat(dir, name, 0777)`; the umask applies.
    fn create_dir(&self, name: &str) -> io::Result<()> {
        let c_name = c_name(name)?;
        let mode = 0o777 as libc::mode_t;
        // SAFETY: `self.fd` is open; `c_name` is NUL-terminated and outlives the call.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c_name.as_ptr(), mode) })
    }

    /// `unlinkat(dir, name, AT_REMOVEDIR)`.
    fn remove_dir(&self, name: &str) -> io::Result<()> {
        let c_name = c_name(name)?;
        // SAFETY: `self.fd` is open; `c_name` is NUL-terminated and outlives the call.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c_name.as_ptr(), libc::AT_REMOVEDIR) })
    }

    /// `openat(dir, ".")` — a fresh open file description, so listings do not share a
    /// position — then `fdopendir` and `readdir` to the end, skipping `.` and `..`. A name
    /// whose `d_type` is `DT_UNKNOWN` (some filesystems never fill it) is `fstatat`ed.
    /// A name that is not UTF-8 cannot be addressed through this API: `EILSEQ`.
    fn read_dir(&self) -> io::Result<Vec<DirEntry>> {
        let dot = c".";
        // SAFETY: `self.fd` is open; `dot` is a NUL-terminated static string.
        let fd = adopt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                dot.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        let stream = DirStream::new(fd)?;
        let mut entries = Vec::new();
        while let Some((name, d_type)) = stream.next()? {
            if name.as_bytes() == b"." || name.as_bytes() == b".." {
                continue;
            }
            let name = name.into_string().map_err(|_| errno(libc::EILSEQ))?;
            let kind = match dirent_kind(d_type) {
                Some(kind) => kind,
                // Gone since it was listed: it is not in the directory any more.
                None => match self.probe(&name)? {
                    Some(probe) => probe.kind,
                    None => continue,
                },
            };
            entries.push(DirEntry { name, kind });
        }
        Ok(entries)
    }

    /// `openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)`.
    fn open_subdir(&self, name: &str) -> io::Result<Box<dyn DirHandle>> {
        let c_name = c_name(name)?;
        // SAFETY: `self.fd` is open; `c_name` is NUL-terminated and outlives the call.
        let fd = adopt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        Ok(Box::new(RealDir {
            fd,
            seed: self.seed,
        }))
    }

    /// `fsync(2)` of the directory's descriptor.
    fn sync(&self) -> io::Result<()> {
        fsync(&self.fd)
    }

    /// `openat(dir, ".")` — a new open file description of this same directory, found
    /// through the descriptor, not a path — then `flock(LOCK_EX | LOCK_NB)` on it, retrying
    /// `EINTR`. The lock belongs to that description, so it excludes other threads of this
    /// process as well as other processes; dropping the [`DirLock`] closes it.
    fn try_lock(&self) -> io::Result<Option<DirLock>> {
        let dot = c".";
        // SAFETY: `self.fd` is open; `dot` is a NUL-terminated static string.
        let fd = adopt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                dot.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        loop {
            // SAFETY: `fd` is an open descriptor for the duration of the call.
            match check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
                Ok(()) => return Ok(Some(DirLock::new(fd))),
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
                Err(err) if err.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(None),
                Err(err) => return Err(err),
            }
        }
    }
}

/// A regular file opened by [`RealDir::open_file`]: every call goes to its descriptor.
#[derive(Debug)]
struct RealFile {
    fd: OwnedFd,
    seed: u64,
}

impl FileHandle for RealFile {
    /// `fstat(2)`.
    fn probe(&self) -> io::Result<Probe> {
        probe_of(&fstat(&self.fd)?)
    }

    /// `fallocate(fd, 0, offset, len)`, not `posix_fallocate` (which glibc emulates by
    /// writing when the filesystem cannot allocate). `EINTR` is returned, not retried; an
    /// empty range is `EINVAL`, as the kernel says.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let (offset, len) = (to_off_t(offset)?, to_off_t(len)?);
        // SAFETY: `self.fd` is an open descriptor for the duration of the call.
        check(unsafe { libc::fallocate(self.fd.as_raw_fd(), 0, offset, len) })
    }

    /// `pwrite(2)` of the pattern in chunks of at most 256 KiB, each chunk generated for its
    /// absolute offset into one reused buffer; short writes continue and `EINTR` is
    /// retried. Generating a chunk costs a few percent of writing it (see
    /// [`pattern`](crate::pattern)), so this runs on the calling thread alone and keeps its
    /// speed when the other cores are busy.
    fn write_fill(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or_else(|| errno(libc::EFBIG))?;
        to_off_t(end)?;
        let mut buf = vec![0u8; len.min(FILL_CHUNK_BYTES) as usize];
        let mut pos = offset;
        while pos < end {
            let chunk = &mut buf[..(end - pos).min(FILL_CHUNK_BYTES) as usize];
            pattern::fill(chunk, self.seed, pos);
            pwrite_all(&self.fd, chunk, pos)?;
            pos += chunk.len() as u64;
        }
        Ok(())
    }

    /// `pread(2)`, retrying `EINTR`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let at = offset_arg(offset)?;
        byte_count(|| {
            // SAFETY: `self.fd` is open, and `buf` is a live slice of `buf.len()` writable
            // bytes.
            unsafe { libc::pread(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), at) }
        })
    }

    /// One `pwrite(2)`, retrying `EINTR`: a short count is returned as the kernel gave it.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        let at = offset_arg(offset)?;
        byte_count(|| {
            // SAFETY: `self.fd` is open, and `buf` is a live slice of `buf.len()` readable
            // bytes.
            unsafe { libc::pwrite(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), at) }
        })
    }

    /// `fdatasync(2)` (`fsync(2)` where there is none).
    fn sync_data(&self) -> io::Result<()> {
        fdatasync(&self.fd)
    }

    /// `ftruncate(2)`; a length above `i64::MAX` is `EFBIG`.
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = to_off_t(len)?;
        // SAFETY: `self.fd` is an open descriptor for the duration of the call.
        check(unsafe { libc::ftruncate(self.fd.as_raw_fd(), len) })
    }

    /// `ioctl(FS_IOC_FIEMAP)` over the whole file, 128 extents per call: the summed length
    /// of the extents flagged `FIEMAP_EXTENT_SHARED`. `EOPNOTSUPP`/`ENOTTY` (no `FIEMAP`)
    /// is `None`.
    fn shared_bytes(&self) -> io::Result<Option<u64>> {
        fiemap_shared_bytes(&self.fd)
    }

    /// `FS_IOC_GETFLAGS`, then `FS_IOC_SETFLAGS` with `FS_NODUMP_FL` added. `ENOTTY`,
    /// `EOPNOTSUPP`, `EINVAL` (no such flags here: tmpfs, FAT, FUSE) are `Ok(false)`.
    fn set_no_dump(&self) -> io::Result<bool> {
        let unsupported = |err: &io::Error| {
            matches!(
                err.raw_os_error(),
                Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL)
            )
        };
        let mut flags: libc::c_int = 0;
        // SAFETY: `self.fd` is open; the ioctl writes one `int` into the live `flags`.
        let got = unsafe { libc::ioctl(self.fd.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) };
        if let Err(err) = check(got) {
            return if unsupported(&err) {
                Ok(false)
            } else {
                Err(err)
            };
        }
        if flags & FS_NODUMP_FL != 0 {
            return Ok(true);
        }
        flags |= FS_NODUMP_FL;
        // SAFETY: as above; the ioctl reads one `int` from the live `flags`.
        let set = unsafe { libc::ioctl(self.fd.as_raw_fd(), FS_IOC_SETFLAGS as _, &flags) };
        match check(set) {
            Ok(()) => Ok(true),
            Err(err) if unsupported(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// `fsync(2)`.
    fn sync_all(&self) -> io::Result<()> {
        fsync(&self.fd)
    }
}

/// `_IOR('f', 1, long)` and `_IOW('f', 2, long)`: the inode flags (the kernel reads and
/// writes an `int` whatever the macro says).
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
/// "Do not dump this file" (`chattr +d`).
const FS_NODUMP_FL: libc::c_int = 0x40;

/// The overlay mount holding `path` (the longest mount point that is a prefix of it) and
/// its upper directory, from the text of `/proc/self/mountinfo`; `None` when the nearest
/// mount is not an overlay or has no upper layer.
fn overlay_upper_of(
    mountinfo: &str,
    path: &std::path::Path,
) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let mut best: Option<(std::path::PathBuf, Option<std::path::PathBuf>)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount_point), Some(fstype), Some(options)) =
            (fields.get(4), fields.get(dash + 1), fields.get(dash + 3))
        else {
            continue;
        };
        let mount_point = std::path::PathBuf::from(unescape_mountinfo(mount_point));
        if !path.starts_with(&mount_point)
            || best
                .as_ref()
                .is_some_and(|(b, _)| b.as_os_str().len() > mount_point.as_os_str().len())
        {
            continue;
        }
        let upper = (*fstype == "overlay")
            .then(|| {
                options
                    .split(',')
                    .find_map(|o| o.strip_prefix("upperdir="))
                    .map(|u| std::path::PathBuf::from(unescape_mountinfo(u)))
            })
            .flatten();
        best = Some((mount_point, upper));
    }
    let (mount_point, upper) = best?;
    Some((mount_point, upper?))
}

/// Undoes `/proc/self/mountinfo`'s octal escapes (`\040` for a space, …).
fn unescape_mountinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The [`FileKind`] of a `d_type`, or `None` when the filesystem did not say
/// (`DT_UNKNOWN`) or said something this crate does not know.
fn dirent_kind(d_type: u8) -> Option<FileKind> {
    Some(match d_type {
        libc::DT_REG => FileKind::Regular,
        libc::DT_DIR => FileKind::Directory,
        libc::DT_LNK => FileKind::Symlink,
        libc::DT_FIFO => FileKind::Fifo,
        libc::DT_SOCK => FileKind::Socket,
        libc::DT_BLK => FileKind::BlockDevice,
        libc::DT_CHR => FileKind::CharDevice,
        _ => return None,
    })
}

/// Sets `errno` to 0, so a `NULL` from `readdir` can tell the end from an error.
fn clear_errno() {
    // SAFETY: `__errno_location` returns this thread's `errno`, valid to write.
    unsafe {
        *libc::__errno_location() = 0;
    }
}

/// A `DIR *` from `fdopendir`, closed (with its descriptor) on drop.
struct DirStream(std::ptr::NonNull<libc::DIR>);

impl DirStream {
    /// `fdopendir(fd)`: the stream owns the descriptor from then on.
    fn new(fd: OwnedFd) -> io::Result<DirStream> {
        use std::os::fd::IntoRawFd;
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open directory descriptor nothing else owns; on success the
        // stream owns it.
        let dir = unsafe { libc::fdopendir(raw) };
        match std::ptr::NonNull::new(dir) {
            Some(dir) => Ok(DirStream(dir)),
            None => {
                let err = io::Error::last_os_error();
                // SAFETY: `fdopendir` failed, so `raw` is still ours to adopt and close.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                Err(err)
            }
        }
    }

    /// The next entry's name and `d_type`, `None` at the end.
    fn next(&self) -> io::Result<Option<(CString, u8)>> {
        clear_errno();
        // SAFETY: `self.0` is an open `DIR *` used by this thread only (`&self` of a
        // value that is neither `Send` nor `Sync`).
        let entry = unsafe { libc::readdir(self.0.as_ptr()) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(0) | None => Ok(None),
                Some(_) => Err(err),
            };
        }
        // SAFETY: `readdir` returned a valid entry, live until the next call on the
        // stream; `d_name` is NUL-terminated. The name is copied out before that.
        let (name, d_type) = unsafe {
            let entry = &*entry;
            (
                std::ffi::CStr::from_ptr(entry.d_name.as_ptr()).to_owned(),
                entry.d_type,
            )
        };
        Ok(Some((name, d_type)))
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: `self.0` is an open `DIR *` closed nowhere else; `closedir` also closes
        // its descriptor.
        unsafe {
            libc::closedir(self.0.as_ptr());
        }
    }
}

/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// The last extent of the file.
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// The extent's blocks are also another file's or a snapshot's.
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// Extents asked for per `ioctl`.
const FIEMAP_BATCH: usize = 128;

/// `struct fiemap_extent` of `linux/fiemap.h`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `struct fiemap` of `linux/fiemap.h` with room for [`FIEMAP_BATCH`] extents.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

fn fiemap_shared_bytes(fd: &OwnedFd) -> io::Result<Option<u64>> {
    let mut map = Box::new(Fiemap {
        start: 0,
        length: u64::MAX,
        flags: 0,
        mapped_extents: 0,
        extent_count: FIEMAP_BATCH as u32,
        reserved: 0,
        extents: [FiemapExtent::default(); FIEMAP_BATCH],
    });
    let mut shared = 0u64;
    loop {
        // SAFETY: `fd` is open; `map` is a live, writable `struct fiemap` followed by room
        // for `extent_count` extents, as the ioctl expects.
        let ret =
            unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FIEMAP as _, &mut *map as *mut Fiemap) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL) => Ok(None),
                _ => Err(err),
            };
        }
        let mapped = (map.mapped_extents as usize).min(FIEMAP_BATCH);
        if mapped == 0 {
            return Ok(Some(shared));
        }
        let mut next = 0;
        for extent in &map.extents[..mapped] {
            if extent.flags & FIEMAP_EXTENT_SHARED != 0 {
                shared = shared.saturating_add(extent.length);
            }
            if extent.flags & FIEMAP_EXTENT_LAST != 0 {
                return Ok(Some(shared));
            }
            next = extent.logical.saturating_add(extent.length);
        }
        map.start = next;
        map.length = u64::MAX - next;
        map.mapped_extents = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::overlay_upper_of;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:50 / /var/lib/app rw,relatime shared:40 - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/srv/up\\040per,workdir=/srv/work
91 90 0:51 / /var/lib/app/tmp rw,relatime shared:41 - tmpfs tmpfs rw
";

    /// The nearest mount decides: a home under the overlay gets its upper directory
    /// (unescaped), one under a mount inside it or outside it gets none.
    #[test]
    fn the_nearest_mount_decides_and_its_upper_directory_is_unescaped() {
        assert_eq!(
            overlay_upper_of(MOUNTINFO, Path::new("/var/lib/app/home")),
            Some((PathBuf::from("/var/lib/app"), PathBuf::from("/srv/up per")))
        );
        assert_eq!(
            overlay_upper_of(MOUNTINFO, Path::new("/var/lib/app/tmp/x")),
            None
        );
        assert_eq!(overlay_upper_of(MOUNTINFO, Path::new("/home")), None);
    }
}
