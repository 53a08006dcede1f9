//! The crate's one error type: which operation failed, on which path, and why.

use std::fmt;
use std::io;
use std::path::PathBuf;

use camino::Utf8PathBuf;

use crate::{FileKind, HumanBytes};

/// The filesystem operation a reserve call was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening the home directory.
    OpenHome,
    /// `lstat` of the reserve path or the home directory.
    Probe,
    /// Opening the reserve file.
    Open,
    /// Renaming a replacement reserve over the old one.
    Rename,
    /// `statvfs` of the home directory.
    ReadSpace,
    /// `flock` of the home directory.
    Lock,
    /// Creating the reserve file.
    Create,
    /// `fallocate` of the reserve.
    Allocate,
    /// Writing the incompressible fill.
    Write,
    /// `ftruncate` of the reserve (shrinking or rolling back).
    Truncate,
    /// `fsync` of the reserve file.
    SyncFile,
    /// `fsync` of the home directory.
    SyncDir,
    /// `unlink` of the reserve.
    Remove,
    /// Reading the record of the size and headroom last given (`.reserve.conf`).
    ReadRecord,
}

impl Operation {
    /// What the operation did, as the start of an error message: `"allocate reserve"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::OpenHome => "open home directory",
            Operation::Probe => "inspect",
            Operation::Open => "open reserve",
            Operation::Rename => "rename reserve",
            Operation::ReadSpace => "read free space of",
            Operation::Lock => "lock home directory",
            Operation::Create => "create reserve",
            Operation::Allocate => "allocate reserve",
            Operation::Write => "write reserve",
            Operation::Truncate => "truncate reserve",
            Operation::SyncFile => "sync reserve",
            Operation::SyncDir => "sync home directory",
            Operation::Remove => "remove reserve",
            Operation::ReadRecord => "read the remembered configuration",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in [`Reserve`](crate::Reserve) calls.
///
/// Each variant names the path; those caused by an I/O error keep it as the
/// [`source`](std::error::Error::source) with its `kind()` and raw errno intact, so
/// [`is_out_of_space`](crate::is_out_of_space) sees through it. The message is this
/// error's own words only — ``allocate reserve `/srv/app/.reserve` `` — and never repeats
/// the source's text, so a reporter that walks the chain (`anyhow`'s `{:#}`) prints
/// ``allocate reserve `/srv/app/.reserve`: No space left on device (os error 28)``, each
/// part once.
///
/// It converts into an [`io::Error`] of the same [`kind`](io::Error::kind) (the kernel's
/// errno decides it where there is one: `ENOSPC` is
/// [`StorageFull`](io::ErrorKind::StorageFull)), carrying this error as its payload:
///
/// ```
/// use std::io;
/// use disk_reserve::{Error, Operation};
/// let err = Error::io(Operation::Allocate, "/srv/app/.reserve", io::Error::from_raw_os_error(libc::ENOSPC));
/// assert_eq!(err.to_string(), "allocate reserve `/srv/app/.reserve`");
/// let io_err = io::Error::from(err);
/// assert_eq!(io_err.kind(), io::ErrorKind::StorageFull);
/// assert!(disk_reserve::is_out_of_space(&io_err));
/// let back = io_err.into_inner().unwrap().downcast::<Error>().unwrap();
/// assert_eq!(back.io_error().and_then(io::Error::raw_os_error), Some(libc::ENOSPC));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The home directory does not exist.
    #[error("home directory `{path}` does not exist")]
    HomeMissing {
        /// The home directory.
        path: Utf8PathBuf,
        /// The `ENOENT` that said so.
        #[source]
        source: io::Error,
    },

    /// The home path exists but is not a directory.
    #[error("home `{path}` is not a directory")]
    HomeNotDirectory {
        /// The home path.
        path: Utf8PathBuf,
        /// The `ENOTDIR` that said so.
        #[source]
        source: io::Error,
    },

    /// Something other than a regular file is at the reserve path; it was left as it was.
    #[error("`{path}` is a {kind}, not a regular file; refusing to touch it")]
    NotARegularFile {
        /// The reserve path.
        path: Utf8PathBuf,
        /// What is there instead.
        kind: FileKind,
    },

    /// The filesystem is mounted read-only.
    #[error("{op} `{path}`: the filesystem is read-only")]
    ReadOnly {
        /// What was being done.
        op: Operation,
        /// The path it was done to.
        path: Utf8PathBuf,
        /// The `EROFS`.
        #[source]
        source: io::Error,
    },

    /// The process may not do this to the path.
    #[error("{op} `{path}`: permission denied")]
    PermissionDenied {
        /// What was being done.
        op: Operation,
        /// The path it was done to.
        path: Utf8PathBuf,
        /// The `EACCES` or `EPERM`.
        #[source]
        source: io::Error,
    },

    /// Any other I/O failure, including `ENOSPC` and `EDQUOT` from a racing writer.
    #[error("{op} `{path}`")]
    Io {
        /// What was being done.
        op: Operation,
        /// The path it was done to.
        path: Utf8PathBuf,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },

    /// The configured size is zero.
    #[error("reserve size for `{path}` is 0 bytes; a reserve must be at least 1 byte")]
    ZeroSize {
        /// The reserve path.
        path: Utf8PathBuf,
    },

    /// The configured size does not fit on the filesystem at all.
    #[error(
        "reserve size {} ({size_bytes} bytes) for `{path}` is larger than the whole filesystem ({})", HumanBytes(*.size_bytes), HumanBytes(*.total_bytes)
    )]
    SizeExceedsFilesystem {
        /// The reserve path.
        path: Utf8PathBuf,
        /// The configured size.
        size_bytes: u64,
        /// The filesystem's size.
        total_bytes: u64,
    },

    /// The size plus the headroom is more than an unprivileged writer can ever use on this
    /// filesystem: `ensure` could only ever defer (rule 4).
    #[error(
        "reserve `{path}` of {} with a headroom of {} can never fit: an unprivileged writer can use at most {} of this filesystem; choose a smaller size or headroom", HumanBytes(*.size_bytes), HumanBytes(*.headroom_bytes), HumanBytes(*.usable_bytes)
    )]
    NeverFits {
        /// The reserve path.
        path: Utf8PathBuf,
        /// The configured size.
        size_bytes: u64,
        /// The configured headroom.
        headroom_bytes: u64,
        /// What an unprivileged writer can ever use.
        usable_bytes: u64,
    },

    /// `fallocate` reported success but the blocks did not appear (a copy-on-write or
    /// compressing filesystem such as ZFS) and the strategy forbids writing data.
    #[error(
        "allocate reserve `{path}`: fallocate succeeded but only {allocated_bytes} of {size_bytes} bytes are allocated; use the `auto` or `write` strategy on this filesystem"
    )]
    NotAllocated {
        /// The reserve path.
        path: Utf8PathBuf,
        /// Bytes allocated after `fallocate`.
        allocated_bytes: u64,
        /// The configured size.
        size_bytes: u64,
    },

    /// The caller cancelled the call ([`CancelToken`](crate::CancelToken)); what it had
    /// done was rolled back.
    #[error("ensure `{path}` was cancelled; what it had allocated was rolled back")]
    Cancelled {
        /// The reserve path.
        path: Utf8PathBuf,
    },

    /// The home's lock stayed held by another process for longer than the call's lock
    /// timeout ([`Reserve::lock_timeout`](crate::Reserve::lock_timeout)); nothing was
    /// changed.
    #[error("gave up after {} waiting for another process's lock on home `{path}`; nothing was changed", humantime(*.waited))]
    LockTimeout {
        /// The home directory.
        path: Utf8PathBuf,
        /// How long the call waited.
        waited: std::time::Duration,
    },

    /// The file at the reserve path kept changing under the call (another process
    /// replacing, linking or truncating it while the home's lock was held by this call).
    #[error("`{path}` changed while it was being inspected; nothing was written")]
    Changed {
        /// The reserve path.
        path: Utf8PathBuf,
    },

    /// The configured file name is empty, `.`/`..`, or contains a `/` or NUL.
    #[error("reserve file name {name:?} must be a single path component")]
    InvalidFileName {
        /// The rejected name.
        name: String,
    },

    /// A path given to the library is not valid UTF-8.
    #[error("path {path:?} is not valid UTF-8")]
    NonUtf8Path {
        /// The path as given.
        path: PathBuf,
    },
}

impl Error {
    /// Wraps an I/O error from `op` on `path`, choosing the most telling variant:
    /// `EROFS` → [`ReadOnly`](Error::ReadOnly), `EACCES`/`EPERM` →
    /// [`PermissionDenied`](Error::PermissionDenied), anything else →
    /// [`Io`](Error::Io).
    pub fn io(op: Operation, path: impl Into<Utf8PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::EROFS) => Error::ReadOnly { op, path, source },
            Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied { op, path, source },
            _ => Error::Io { op, path, source },
        }
    }

    /// The I/O error underneath, if this error has one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::HomeMissing { source, .. }
            | Error::HomeNotDirectory { source, .. }
            | Error::ReadOnly { source, .. }
            | Error::PermissionDenied { source, .. }
            | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The path the error is about (the home or the reserve), for messages such as the
    /// operator hint; `None` for a non-UTF-8 path or a bad file name.
    pub fn path(&self) -> Option<&camino::Utf8Path> {
        match self {
            Error::HomeMissing { path, .. }
            | Error::HomeNotDirectory { path, .. }
            | Error::NotARegularFile { path, .. }
            | Error::ReadOnly { path, .. }
            | Error::PermissionDenied { path, .. }
            | Error::Io { path, .. }
            | Error::ZeroSize { path }
            | Error::Cancelled { path }
            | Error::LockTimeout { path, .. }
            | Error::Changed { path }
            | Error::NotAllocated { path, .. }
            | Error::SizeExceedsFilesystem { path, .. }
            | Error::NeverFits { path, .. } => Some(path),
            Error::InvalidFileName { .. } | Error::NonUtf8Path { .. } => None,
        }
    }
}

impl Error {
    /// The [`io::ErrorKind`] this error converts to: the source's where there is one,
    /// otherwise the closest kind for the variant.
    pub fn kind(&self) -> io::ErrorKind {
        if let Some(source) = self.io_error() {
            return source.kind();
        }
        match self {
            Error::ZeroSize { .. }
            | Error::SizeExceedsFilesystem { .. }
            | Error::NeverFits { .. }
            | Error::InvalidFileName { .. }
            | Error::NonUtf8Path { .. } => io::ErrorKind::InvalidInput,
            Error::NotAllocated { .. } => io::ErrorKind::Unsupported,
            Error::Cancelled { .. } => io::ErrorKind::Interrupted,
            Error::LockTimeout { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        }
    }
}

/// An [`io::Error`] of the error's [`kind`](Error::kind), holding the error itself (get it
/// back with [`io::Error::into_inner`] and `downcast`).
impl From<Error> for io::Error {
    fn from(error: Error) -> Self {
        io::Error::new(error.kind(), error)
    }
}

/// A wait as a person reads it: `1.5s`.
fn humantime(waited: std::time::Duration) -> String {
    format!("{:.1}s", waited.as_secs_f64())
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    /// The message is the error's own words; the source's text appears once in the chain
    /// (`anyhow`'s `{:#}` joins the chain), never twice.
    #[test]
    fn message_does_not_repeat_its_source() {
        let cases = [
            Error::io(Operation::Allocate, "/srv/app/.reserve", enospc()),
            Error::io(
                Operation::Create,
                "/srv/app/.reserve",
                io::Error::from_raw_os_error(libc::EROFS),
            ),
            Error::io(
                Operation::Create,
                "/srv/app/.reserve",
                io::Error::from_raw_os_error(libc::EACCES),
            ),
            Error::HomeMissing {
                path: "/nowhere".into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            },
        ];
        for error in cases {
            let source = error
                .source()
                .expect("an I/O error keeps its source")
                .to_string();
            let mut chain = error.to_string();
            let mut next = error.source();
            while let Some(cause) = next {
                chain.push_str(": ");
                chain.push_str(&cause.to_string());
                next = cause.source();
            }
            assert!(
                !error.to_string().contains(&source),
                "{error:?} repeats `{source}`"
            );
            assert_eq!(chain.matches(&source).count(), 1, "{chain}");
        }
    }

    /// Into `io::Error`: the kernel's errno decides the kind; the rest map to the closest
    /// kind; the error rides along as the payload.
    #[test]
    fn into_io_error_keeps_the_kind() {
        let full = io::Error::from(Error::io(Operation::Write, "/a/.reserve", enospc()));
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
        assert!(crate::is_out_of_space(&full));
        let quota = io::Error::from(Error::io(
            Operation::Write,
            "/a/.reserve",
            io::Error::from_raw_os_error(libc::EDQUOT),
        ));
        assert_eq!(quota.kind(), io::ErrorKind::QuotaExceeded);
        let read_only = io::Error::from(Error::io(
            Operation::Create,
            "/a/.reserve",
            io::Error::from_raw_os_error(libc::EROFS),
        ));
        assert_eq!(read_only.kind(), io::ErrorKind::ReadOnlyFilesystem);
        let timeout = io::Error::from(Error::LockTimeout {
            path: "/a".into(),
            waited: std::time::Duration::from_secs(1),
        });
        assert_eq!(timeout.kind(), io::ErrorKind::TimedOut);
        let zero = io::Error::from(Error::ZeroSize {
            path: "/a/.reserve".into(),
        });
        assert_eq!(zero.kind(), io::ErrorKind::InvalidInput);
        let inner = zero.into_inner().unwrap().downcast::<Error>().unwrap();
        assert!(matches!(*inner, Error::ZeroSize { .. }));
        let cancelled = Error::Cancelled {
            path: "/a/.reserve".into(),
        };
        assert_eq!(cancelled.kind(), io::ErrorKind::Interrupted);
        let not_allocated = Error::NotAllocated {
            path: "/a/.reserve".into(),
            allocated_bytes: 0,
            size_bytes: 1 << 20,
        };
        assert_eq!(not_allocated.kind(), io::ErrorKind::Unsupported);
    }
}
