//! Who holds a home's lock: the `FLOCK` entry of `/proc/locks` on the home directory's
//! inode, with the holder's pid and `/proc/PID/comm`. Only for telling the operator why a
//! `release` waits; nothing depends on it being found.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A process holding a lock on the home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid, as `/proc/locks` shows it.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), when it can be read.
    pub command: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {}", self.pid)?;
        if let Some(command) = &self.command {
            write!(f, " ({})", super::report::escape_controls(command))?;
        }
        Ok(())
    }
}

/// `held by process 1234 (flock)`, or a phrase saying the holder is not known.
pub fn held_by(home: &Path) -> String {
    let holders = holders(home);
    if holders.is_empty() {
        return "held by another process (not found in /proc/locks)".to_owned();
    }
    let names: Vec<String> = holders.iter().map(Holder::to_string).collect();
    format!("held by {}", names.join(", "))
}

/// The processes `/proc/locks` shows holding a `FLOCK` on `home` (other than this one).
pub fn holders(home: &Path) -> Vec<Holder> {
    let (Ok(meta), Ok(locks)) = (fs::metadata(home), fs::read_to_string("/proc/locks")) else {
        return Vec::new();
    };
    let dev = meta.dev();
    let mut pids = flock_pids(&locks, Some((major(dev), minor(dev))), meta.ino());
    if pids.is_empty() {
        // btrfs reports a subvolume's own device in `st_dev`, not the superblock's that
        // `/proc/locks` prints: fall back to the inode alone.
        pids = flock_pids(&locks, None, meta.ino());
    }
    pids.retain(|&pid| pid != std::process::id());
    pids.dedup();
    pids.into_iter()
        .map(|pid| Holder {
            pid,
            command: fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|comm| comm.trim_end().to_owned()),
        })
        .collect()
}

/// The pids of the granted `FLOCK` lines of `/proc/locks` text on inode `ino` of the
/// device `(major, minor)` (any device when `None`). A line reads
/// `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`, device numbers in hex; a waiter's
/// line has `->` after the number and is skipped.
fn flock_pids(locks: &str, device: Option<(u64, u64)>, ino: u64) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in locks.lines() {
        let mut fields = line.split_whitespace().skip(1);
        if fields.next() != Some("FLOCK") {
            continue;
        }
        let (Some(pid), Some(id)) = (fields.nth(2), fields.next()) else {
            continue;
        };
        let mut parts = id.split(':');
        let (Some(maj), Some(min), Some(inode)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let same_device = device.is_none_or(|(major, minor)| {
            u64::from_str_radix(maj, 16) == Ok(major) && u64::from_str_radix(min, 16) == Ok(minor)
        });
        if same_device
            && inode.parse() == Ok(ino)
            && let Ok(pid) = pid.parse()
        {
            pids.push(pid);
        }
    }
    pids
}

/// The major number of a Linux `dev_t` (glibc's encoding).
fn major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// The minor number of a Linux `dev_t` (glibc's encoding).
fn minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "\
1: POSIX  ADVISORY  WRITE 700 fd:01:5678 0 EOF
2: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF
2: -> FLOCK  ADVISORY  WRITE 999 fd:01:5678 0 EOF
3: FLOCK  ADVISORY  WRITE 4321 fd:01:9999 0 EOF
4: FLOCK  ADVISORY  WRITE 55 103:02:5678 0 EOF
";

    #[test]
    fn finds_the_granted_flock_on_the_inode_of_the_device() {
        assert_eq!(flock_pids(LOCKS, Some((0xfd, 1)), 5678), [1234]);
        assert_eq!(flock_pids(LOCKS, Some((0x103, 2)), 5678), [55]);
        assert_eq!(flock_pids(LOCKS, None, 5678), [1234, 55]);
        assert_eq!(flock_pids(LOCKS, Some((0xfd, 1)), 1), Vec::<u32>::new());
        assert_eq!(
            flock_pids("garbage\n\n1: FLOCK\n", None, 1),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn dev_t_splits_as_glibc_does() {
        // makedev(253, 1) and makedev(259, 300).
        assert_eq!((major(0xfd01), minor(0xfd01)), (253, 1));
        let dev = (259u64 & 0xfff) << 8 | (300u64 & 0xff) | ((300u64 & !0xff) << 12);
        assert_eq!((major(dev), minor(dev)), (259, 300));
    }
}
