//! placeholder, replaced below
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod host_fs;
pub mod pattern;
pub mod sim_fs;

pub use host_fs::{DirLock, FileKind, HostFs, Probe, Space};
pub use sim_fs::{AllocateMode, SimFs, SimOp};
