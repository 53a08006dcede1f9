//! A **structural disk reserve**: a file of really-allocated blocks in a program's home
//! directory.
//!
//! While the reserve exists the kernel counts its blocks as used, so every writer on that
//! filesystem hits `ENOSPC` that many bytes early — no policy code at any write site, the
//! kernel enforces the floor at every `write(2)`. When the disk is full, an operator
//! deletes the reserve (`unlink` needs no free space) and has that many bytes to run the
//! recovery commands in. The next [`Reserve::ensure`] lays it down again once there is
//! room, never taking the filesystem below its headroom.
//!
//! # A runtime at start-up (real filesystem)
//!
//! ```
//! use disk_reserve::{is_out_of_space, Ensured, RealFs, Reserve, ReserveConfig};
//! # let dir = tempfile::tempdir().unwrap();
//! # let home = dir.path();
//! let reserve = Reserve::new(RealFs::new(), home, ReserveConfig::with_size_bytes(4 << 20))?;
//! match reserve.ensure()? {
//!     Ensured::Deferred { free_bytes, needed_bytes, .. } => {
//!         eprintln!("disk reserve deferred: {free_bytes} bytes free, {needed_bytes} needed");
//!     }
//!     _ => {}
//! }
//! // Later, when one of the runtime's own errors is out-of-space:
//! let err = std::io::Error::from_raw_os_error(libc::ENOSPC);
//! if is_out_of_space(&err) {
//!     eprintln!("{}", reserve.out_of_space_hint());
//! }
//! # Ok::<(), disk_reserve::Error>(())
//! ```
//!
//! # A test on a full disk (simulated filesystem)
//!
//! ```
//! use disk_reserve::{Ensured, Released, Reserve, ReserveConfig, SimFs};
//! let fs = SimFs::with_home(1 << 30, "/srv/app");
//! let reserve = Reserve::new(fs.clone(), "/srv/app", ReserveConfig::default()).unwrap();
//! reserve.ensure().unwrap();
//! fs.set_free(0)?; // other writers ate every remaining byte
//! assert!(matches!(reserve.ensure().unwrap(), Ensured::Present { .. }));
//! assert_eq!(
//!     reserve.release().unwrap(),
//!     Released::Released { releasable_bytes: 64 << 20, freed_bytes: 64 << 20 }
//! );
//! assert_eq!(fs.free_bytes(), 64 << 20); // the lifeboat
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Layout
//! [`HostFs`] is the one trait between the lifecycle and a filesystem; [`RealFs`] is the
//! kernel (all `unsafe` lives there), [`SimFs`] a bounded in-memory filesystem with
//! fault injection. [`Reserve`] is the lifecycle, [`decide`] its pure decision,
//! [`Error`] the error type, [`is_out_of_space`] the classifier.
//!
//! The repository is a workspace: this library; the `disk-reserve` command in `cli/`
//! (`cargo install --path cli`); and in `scenario/` (not published) the driver that runs
//! the lifecycle through random operation sequences on a [`SimFs`] and checks it against a
//! reference model, the shared engine of the fuzz target and the property tests.
//!
//! # Platforms
//! [`RealFs`] exists on Linux only (`target_os = "linux"`: it needs `fallocate`,
//! `syncfs`, `FIEMAP` and `/proc/self/mountinfo`). On other Unix targets the crate builds
//! without it — [`Reserve`], [`SimFs`] and the traits, for a backend of one's own — and
//! on non-Unix targets it does not build (a `compile_error!` says so).
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[cfg(not(unix))]
compile_error!(
    "disk-reserve needs a Unix target (errno values, `flock`); its kernel backend, RealFs, is Linux-only"
);

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod cancel;
mod classify;
mod config;
mod decision;
mod error;
mod file;
mod host_fs;
#[doc(hidden)]
pub mod pattern;
#[cfg(target_os = "linux")]
mod real_fs;
mod record;
mod reserve;
pub mod sim_fs;
mod size;

pub use camino;
pub use cancel::CancelToken;
pub use classify::is_out_of_space;
pub use config::{DEFAULT_FILE_NAME, DEFAULT_SIZE_BYTES, ReserveConfig, Strategy};
pub use decision::{Condition, Observed, Plan, decide};
pub use error::{Error, Operation, Result};
pub use file::File;
pub use host_fs::{
    DirEntry, DirHandle, DirLock, FileHandle, FileKind, FsKind, HostFs, OpenOptions, Probe, Space,
    check_name,
};
#[cfg(feature = "mock")]
pub use host_fs::{MockDirHandle, MockFileHandle, MockHostFs};
#[cfg(target_os = "linux")]
pub use real_fs::RealFs;
pub use record::{Remembered, record_name};
#[doc(hidden)]
pub use reserve::WRITE_CHUNK_BYTES;
pub use reserve::{DeferReason, EnsureReport, Ensured, Released, Reserve, Status};
pub use sim_fs::{AllocateMode, SimFs, SimOp, WholeExtents};
pub use size::{HumanBytes, SizeSpec};
