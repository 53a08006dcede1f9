//! [`File`]: a [`FileHandle`] with a cursor, for code written against `std::io`.
//!
//! The handle traits are positional (`pread`/`pwrite`), which is what they need to be to
//! stay object-safe and shareable between threads. Storage code that wants `io::Read`,
//! `io::Write` and `io::Seek` — a log appender, a `BufReader` over a segment — wraps the
//! handle in a [`File`], which keeps the cursor as `std::fs::File` keeps the kernel's file
//! offset. The same code then runs on [`RealFs`](crate::RealFs) and on
//! [`SimFs`](crate::SimFs).
//!
//! ```
//! use std::io::{Read, Seek, SeekFrom, Write};
//! use disk_reserve::{File, HostFs, OpenOptions, SimFs};
//!
//! let fs = SimFs::with_home(1 << 20, "/data");
//! let dir = fs.open_dir("/data".into())?;
//! let mut log = File::open(&*dir, "log", OpenOptions::append())?;
//! log.write_all(b"hello ")?;
//! log.seek(SeekFrom::Start(0))?; // an append handle still writes at the end
//! log.write_all(b"world")?;
//! log.sync_data()?;
//!
//! let mut text = String::new();
//! log.seek(SeekFrom::Start(0))?;
//! log.read_to_string(&mut text)?;
//! assert_eq!(text, "hello world");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io;

use crate::host_fs::{DirHandle, FileHandle, OpenOptions, Probe};

/// An open file with a cursor: [`io::Read`], [`io::Write`] and [`io::Seek`] over a
/// [`FileHandle`]'s positional calls.
///
/// Reads and writes start at the cursor and move it past what they did. In append mode
/// ([`OpenOptions::append`]) every write goes to the end of the file and leaves the
/// cursor there, as `O_APPEND` does. Nothing is buffered: [`flush`](io::Write::flush)
/// does nothing, and durability is [`sync_data`](File::sync_data) or
/// [`sync_all`](File::sync_all), as with `std::fs::File`. Errors are the handle's, raw
/// errno intact.
pub struct File {
    handle: Box<dyn FileHandle>,
    cursor: u64,
    append: bool,
}

impl File {
    /// Opens `name` in `dir` as `options` say ([`DirHandle::open_file`]), cursor at 0.
    ///
    /// # Errors
    /// As [`DirHandle::open_file`].
    pub fn open(dir: &dyn DirHandle, name: &str, options: OpenOptions) -> io::Result<File> {
        Ok(File::from_handle(
            dir.open_file(name, options)?,
            options.append,
        ))
    }

    /// Wraps an open handle, cursor at 0. `append` says whether it was opened with
    /// [`OpenOptions::append`], so the cursor follows the end of the file after a write.
    pub fn from_handle(handle: Box<dyn FileHandle>, append: bool) -> File {
        File {
            handle,
            cursor: 0,
            append,
        }
    }

    /// The handle, for the positional calls ([`FileHandle::read_at`], `set_len`…).
    pub fn handle(&self) -> &dyn FileHandle {
        &*self.handle
    }

    /// The handle, giving up the cursor.
    pub fn into_handle(self) -> Box<dyn FileHandle> {
        self.handle
    }

    /// `fstat(2)` of the file ([`FileHandle::probe`]): kind, length, allocated bytes, links.
    ///
    /// # Errors
    /// As [`FileHandle::probe`].
    pub fn metadata(&self) -> io::Result<Probe> {
        self.handle.probe()
    }

    /// Sets the length ([`FileHandle::set_len`]); the cursor stays where it is.
    ///
    /// # Errors
    /// As [`FileHandle::set_len`].
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.handle.set_len(len)
    }

    /// `fsync(2)` ([`FileHandle::sync_all`]).
    ///
    /// # Errors
    /// As [`FileHandle::sync_all`].
    pub fn sync_all(&self) -> io::Result<()> {
        self.handle.sync_all()
    }

    /// `fdatasync(2)` ([`FileHandle::sync_data`]).
    ///
    /// # Errors
    /// As [`FileHandle::sync_data`].
    pub fn sync_data(&self) -> io::Result<()> {
        self.handle.sync_data()
    }
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("handle", &self.handle)
            .field("cursor", &self.cursor)
            .field("append", &self.append)
            .finish()
    }
}

impl io::Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.handle.read_at(self.cursor, buf)?;
        self.cursor += n as u64;
        Ok(n)
    }
}

impl io::Write for File {
    /// One [`FileHandle::write_at`] at the cursor (at the end in append mode): a short
    /// count when space ran out part-way, as `write(2)` gives it.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.append {
            // The backend writes at the end whatever the offset (`O_APPEND`); the cursor
            // follows to the end, as the kernel's file offset does.
            let n = self.handle.write_at(self.cursor, buf)?;
            self.cursor = self.handle.probe()?.len;
            return Ok(n);
        }
        let n = self.handle.write_at(self.cursor, buf)?;
        self.cursor += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for File {
    /// Moves the cursor; `End` reads the length with `fstat`. A position before 0 or past
    /// `i64::MAX` is `EINVAL`, as `lseek(2)` says; past the end is fine (a later write
    /// leaves a hole).
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let (base, delta) = match pos {
            io::SeekFrom::Start(at) => (at, 0),
            io::SeekFrom::Current(delta) => (self.cursor, delta),
            io::SeekFrom::End(delta) => (self.handle.probe()?.len, delta),
        };
        let target = base
            .checked_add_signed(delta)
            .filter(|&at| at <= i64::MAX as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.cursor = target;
        Ok(target)
    }
}
