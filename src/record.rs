//! The reserve's record of its configuration: the size and headroom an `ensure` was last
//! given, kept for the home in a small file beside the reserve (`.reserve.conf` for the
//! default name), so that a later `ensure`, `status` or the runbook's commands without a
//! size neither shrink a custom reserve nor recreate it at the default.
//!
//! Why a file and not an extended attribute on the reserve or the home: a file works on
//! every filesystem (tmpfs without user xattrs, FUSE, NFS, overlay lower layers), survives
//! `release` (which removes the reserve, so an xattr on it would go with it; one on the
//! home would need write access to a directory the reserve does not own), and is read with
//! one `openat` + `pread` that need no free space — the state an operator is in. It is
//! replaced atomically (a temporary file beside it, `fsync`, `renameat` over it, `fsync` of
//! the home), only when its content changes, so a complete reserve costs no write.
//!
//! The format is a few `key=value` lines, readable by a person:
//!
//! ```text
//! # disk-reserve: the size and headroom ensure was last given for this home
//! size=268435456
//! headroom=10000ppm
//! ```
//!
//! `size` and `headroom` are bytes, or millionths of the filesystem with a `ppm` suffix;
//! a missing `headroom` means "the size". Lines it does not know are ignored, so a later
//! version can add keys. A record it cannot parse is an [`InvalidData`] error naming what
//! is wrong, never a silent default.
//!
//! [`InvalidData`]: std::io::ErrorKind::InvalidData

use std::io;

use crate::{DirHandle, OpenOptions, ReserveConfig, SizeSpec};

/// Largest record read; a real one is under 200 bytes.
const MAX_RECORD_BYTES: usize = 4096;

/// The first line of every record.
const HEADER: &str = "# disk-reserve: the size and headroom ensure was last given for this home";

/// The size and headroom remembered for a home.
///
/// ```
/// use disk_reserve::{Remembered, ReserveConfig, SizeSpec};
/// let remembered = Remembered::of(&ReserveConfig::with_size_bytes(256 << 20));
/// assert_eq!(remembered.headroom, None);
/// let config = remembered.apply(ReserveConfig::default());
/// assert_eq!(config.size_spec(), SizeSpec::Bytes(256 << 20));
/// assert_eq!(config.headroom_spec(), SizeSpec::Bytes(256 << 20)); // the size
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Remembered {
    /// The reserve size.
    pub size: SizeSpec,
    /// The headroom; `None` means "the size" (the default).
    pub headroom: Option<SizeSpec>,
}

impl Remembered {
    /// The size and headroom of `config`.
    pub fn of(config: &ReserveConfig) -> Remembered {
        Remembered {
            size: config.size_spec(),
            headroom: config.headroom_setting(),
        }
    }

    /// `config` with this size and headroom.
    pub fn apply(self, config: ReserveConfig) -> ReserveConfig {
        let config = config.size(self.size);
        match self.headroom {
            Some(headroom) => config.headroom(headroom),
            None => config.headroom_default(),
        }
    }

    /// The record's text.
    fn to_text(self) -> String {
        let mut text = format!("{HEADER}\nsize={}\n", spec_text(self.size));
        if let Some(headroom) = self.headroom {
            text.push_str(&format!("headroom={}\n", spec_text(headroom)));
        }
        text
    }

    /// Parses a record's text.
    fn from_text(text: &str) -> io::Result<Remembered> {
        let mut size = None;
        let mut headroom = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key.trim() {
                "size" => size = Some(parse_spec(value)?),
                "headroom" => headroom = Some(parse_spec(value)?),
                _ => {}
            }
        }
        let size = size.ok_or_else(|| invalid("no `size=` line".to_owned()))?;
        Ok(Remembered { size, headroom })
    }
}

/// The record's name for the reserve `reserve_name`: `<reserve_name>.conf`.
pub fn record_name(reserve_name: &str) -> String {
    format!("{reserve_name}.conf")
}

/// The name a new record is written under before it is renamed over the record.
fn temp_name(record: &str) -> String {
    format!("{record}.new")
}

/// Reads the record `name` in `dir`: `None` when there is none. Needs no free space.
///
/// # Errors
/// `InvalidData` for a record that is not one (too long, not UTF-8, no `size=`, a value
/// that is not a size); `ELOOP`/`EISDIR`… when something else is at the name; `EOPNOTSUPP`
/// on a backend that keeps no file contents; whatever `openat` or `pread` return.
pub fn read(dir: &dyn DirHandle, name: &str) -> io::Result<Option<Remembered>> {
    let file = match dir.open_file(name, OpenOptions::read()) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; MAX_RECORD_BYTES + 1];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(len as u64, &mut buf[len..])? {
            0 => break,
            n => len += n,
        }
    }
    if len > MAX_RECORD_BYTES {
        return Err(invalid(format!("longer than {MAX_RECORD_BYTES} bytes")));
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| invalid("not UTF-8".to_owned()))?;
    Remembered::from_text(text).map(Some)
}

/// Keeps `record` as the record `name` in `dir`, unless it already says the same:
/// written to `<name>.new`, synced, renamed over `name`, and the directory synced.
/// Returns whether it wrote. The caller holds the home's lock, so two writers do not
/// share the temporary file.
///
/// # Errors
/// Reading the old record failed (other than a record that does not parse, which is
/// replaced); creating, writing, syncing or renaming failed (`ENOSPC` on a full disk,
/// `EROFS`…): the old record is then as it was, and a temporary file is removed.
pub fn write(dir: &dyn DirHandle, name: &str, record: Remembered) -> io::Result<bool> {
    match read(dir, name) {
        Ok(Some(old)) if old == record => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
        Err(e) => return Err(e),
    }
    let temp = temp_name(name);
    let options = OpenOptions {
        truncate: true,
        ..OpenOptions::create()
    };
    let written = dir.open_file(&temp, options).and_then(|file| {
        file.write_all_at(0, record.to_text().as_bytes())?;
        file.sync_all()?;
        dir.rename(&temp, name)
    });
    if let Err(e) = written {
        let _ = dir.remove_file(&temp);
        return Err(e);
    }
    dir.sync()?;
    Ok(true)
}

fn spec_text(spec: SizeSpec) -> String {
    match spec {
        SizeSpec::Bytes(bytes) => bytes.to_string(),
        SizeSpec::PartsPerMillion(ppm) => format!("{ppm}ppm"),
    }
}

fn parse_spec(value: &str) -> io::Result<SizeSpec> {
    let value = value.trim();
    let parsed = match value.strip_suffix("ppm") {
        Some(ppm) => ppm
            .parse()
            .ok()
            .filter(|&ppm| ppm <= 1_000_000)
            .map(SizeSpec::PartsPerMillion),
        None => value.parse().ok().map(SizeSpec::Bytes),
    };
    parsed.ok_or_else(|| invalid(format!("`{value}` is not bytes or NNNppm")))
}

fn invalid(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a disk-reserve record: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HostFs, RealFs};

    #[test]
    fn text_round_trips_and_unknown_lines_are_ignored() {
        for record in [
            Remembered {
                size: SizeSpec::Bytes(256 << 20),
                headroom: None,
            },
            Remembered {
                size: SizeSpec::PartsPerMillion(10_000),
                headroom: Some(SizeSpec::Bytes(1 << 30)),
            },
        ] {
            assert_eq!(Remembered::from_text(&record.to_text()).unwrap(), record);
        }
        let text = "size=5\nfuture=1\n  headroom = 7 \n";
        assert_eq!(
            Remembered::from_text(text).unwrap(),
            Remembered {
                size: SizeSpec::Bytes(5),
                headroom: Some(SizeSpec::Bytes(7))
            }
        );
        for bad in ["", "# only a comment\n", "size=big\n", "size=2000000ppm\n"] {
            let err = Remembered::from_text(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }

    #[test]
    fn written_atomically_once_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let home = camino::Utf8PathBuf::try_from(tmp.path().to_path_buf()).unwrap();
        let dir = RealFs::new().open_dir(&home).unwrap();
        let name = record_name(".reserve");
        assert_eq!(name, ".reserve.conf");
        assert_eq!(read(&*dir, &name).unwrap(), None);
        let record = Remembered {
            size: SizeSpec::Bytes(1 << 20),
            headroom: Some(SizeSpec::PartsPerMillion(5_000)),
        };
        assert!(write(&*dir, &name, record).unwrap(), "first write");
        assert!(!write(&*dir, &name, record).unwrap(), "unchanged: no write");
        assert_eq!(read(&*dir, &name).unwrap(), Some(record));
        assert!(!home.join(temp_name(&name)).exists(), "no temporary left");
        let text = std::fs::read_to_string(home.join(&name)).unwrap();
        assert_eq!(text, format!("{HEADER}\nsize=1048576\nheadroom=5000ppm\n"));
        // A damaged record reads as an error, and a write replaces it.
        std::fs::write(home.join(&name), "garbage").unwrap();
        assert_eq!(
            read(&*dir, &name).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(write(&*dir, &name, record).unwrap());
        assert_eq!(read(&*dir, &name).unwrap(), Some(record));
    }
}
