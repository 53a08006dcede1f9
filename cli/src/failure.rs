//! How an error is reported: `error: …` on stderr naming the path and the cause, the
//! operator hint when the cause is out-of-space, and with `--json` one error object.

use camino::{Utf8Path, Utf8PathBuf};
use disk_reserve::{Error, HostFs, HumanBytes, Reserve, is_out_of_space};
use serde_json::{Value, json};

use super::report::{escape_controls, shell_word};

/// A failed run (exit 1).
#[derive(Debug)]
pub struct Failure {
    error: Error,
    path: Option<Utf8PathBuf>,
    hint: Option<String>,
    /// More lines for stderr after the error (who holds a lock).
    more: Vec<String>,
}

impl Failure {
    /// An error before there was a reserve to ask (an unusable `--home`).
    pub fn early(error: Error) -> Failure {
        Failure {
            error,
            path: None,
            hint: None,
            more: Vec::new(),
        }
    }

    /// An error from `reserve`; when it is out-of-space, the hint names the bytes the
    /// reserve holds on disk right now (or says there is none).
    pub fn of<F: HostFs>(error: Error, reserve: &Reserve<F>) -> Failure {
        let hint = is_out_of_space(&error).then(|| {
            let hint = reserve.out_of_space_hint();
            let out_of_inodes = reserve
                .space_now()
                .is_ok_and(|space| space.free_inodes == Some(0));
            if out_of_inodes {
                format!(
                    "hint: the filesystem is out of inodes, not bytes: releasing the reserve will not help; delete files under {} (or elsewhere on this filesystem) to free inodes",
                    reserve.home()
                )
            } else if is_quota(&error) {
                hint.replacen(
                    "the disk is full",
                    "the disk quota is exhausted (EDQUOT)",
                    1,
                )
            } else {
                hint
            }
        });
        Failure {
            error,
            path: Some(reserve.path().to_owned()),
            hint,
            more: Vec::new(),
        }
    }

    /// The failure with one more line for stderr after the error.
    pub fn with_line(mut self, line: String) -> Failure {
        self.more.push(line);
        self
    }

    /// The lines for stderr: `error: …` and, when out of space, the hint; control
    /// characters (a newline in a path) escaped, so each stays one line.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("error: {}", message(&self.error))];
        lines.extend(self.more.iter().cloned());
        lines.extend(self.hint.clone());
        lines
            .into_iter()
            .map(|line| escape_controls(&line).into_owned())
            .collect()
    }

    /// The `--json` error object.
    pub fn to_json(&self) -> Value {
        json!({
            "outcome": "error",
            "error": message(&self.error),
            "path": self.path.as_ref().map(|p| p.as_str()),
            "out_of_space": is_out_of_space(&self.error),
            "hint": self.hint,
        })
    }
}

/// The reserve with the command's own operator hint: the `disk-reserve` commands that
/// free the reserve and lay it down again, for the home the reserve is in.
pub fn with_command_hint<F: HostFs>(reserve: Reserve<F>) -> Reserve<F> {
    reserve.out_of_space_hint_with(|path, held| command_hint(path.parent().unwrap_or(path), held))
}

/// The hint naming this command, for `home` whose reserve holds `held` bytes (`None` or
/// `Some(0)`: there is none to release).
fn command_hint(home: &Utf8Path, held: Option<u64>) -> String {
    let home = shell_word(home.as_str());
    match held {
        Some(bytes) if bytes > 0 => format!(
            "hint: the disk is full; run `disk-reserve release --home {home}` to free {}, then clean up and run `disk-reserve ensure --home {home}`",
            HumanBytes(bytes)
        ),
        _ => format!(
            "hint: the disk is full and there is no reserve in {home} to release; free space by hand, then run `disk-reserve ensure --home {home}`"
        ),
    }
}

/// The error's words followed by its cause's: the library's message names the operation
/// and the path only, the kernel's words come from its source.
fn message(error: &Error) -> String {
    match error {
        Error::ReadOnly { source, .. } | Error::PermissionDenied { source, .. } => {
            format!("{error} ({source})")
        }
        Error::Io { source, .. } => format!("{error}: {source}"),
        _ => error.to_string(),
    }
}

/// Whether the cause is a quota (`EDQUOT`), not a full filesystem: the hint says so, as
/// the operator's cleanup differs (the quota's owner, not the whole disk).
fn is_quota(error: &Error) -> bool {
    error
        .io_error()
        .is_some_and(|io| io.raw_os_error() == Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use std::io;

    use disk_reserve::{Operation, RealFs, ReserveConfig};

    use super::*;

    /// A 1 MiB reserve in `home` with the command's hint, as `main` makes it.
    fn mib_reserve(home: impl AsRef<std::path::Path>) -> Reserve<RealFs> {
        with_command_hint(
            Reserve::new(
                RealFs::new(),
                home.as_ref(),
                ReserveConfig::with_size_bytes(1 << 20),
            )
            .unwrap(),
        )
    }

    fn enospc_on(reserve: &Reserve<RealFs>) -> Error {
        Error::io(
            Operation::Allocate,
            reserve.path(),
            io::Error::from_raw_os_error(libc::ENOSPC),
        )
    }

    /// A filesystem out of inodes, not bytes: the hint says releasing will not help.
    #[test]
    fn out_of_inodes_hint_says_release_will_not_help() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m,nr_inodes=4", "tmpfs"])
            .arg(&mount)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            println!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        }
        for i in 0.. {
            if std::fs::File::create(mount.join(format!("f{i}"))).is_err() {
                break;
            }
        }
        let reserve = mib_reserve(&mount);
        let lines = Failure::of(enospc_on(&reserve), &reserve).lines();
        let _ = std::process::Command::new("umount").arg(&mount).status();
        assert!(
            lines[1].contains("out of inodes") && lines[1].contains("will not help"),
            "{lines:?}"
        );
    }

    #[test]
    fn out_of_space_adds_the_hint_with_the_bytes_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = mib_reserve(dir.path());
        let home = reserve.home().to_owned();
        let path = reserve.path().to_owned();

        let lines = Failure::of(enospc_on(&reserve), &reserve).lines();
        assert_eq!(
            lines,
            [
                format!("error: allocate reserve `{path}`: No space left on device (os error 28)"),
                format!(
                    "hint: the disk is full and there is no reserve in {home} to release; free space by hand, then run `disk-reserve ensure --home {home}`"
                ),
            ]
        );

        reserve.ensure().unwrap();
        let lines = Failure::of(enospc_on(&reserve), &reserve).lines();
        assert_eq!(
            lines[1],
            format!(
                "hint: the disk is full; run `disk-reserve release --home {home}` to free 1.0 MiB, then clean up and run `disk-reserve ensure --home {home}`"
            )
        );
        let json = Failure::of(enospc_on(&reserve), &reserve).to_json();
        assert_eq!(json["out_of_space"], true);
        assert_eq!(json["hint"], lines[1]);
    }

    #[test]
    fn a_quota_is_called_a_quota() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = mib_reserve(dir.path());
        reserve.ensure().unwrap();
        let home = reserve.home().to_owned();
        let edquot = Error::io(
            Operation::Allocate,
            reserve.path(),
            io::Error::from_raw_os_error(libc::EDQUOT),
        );
        let lines = Failure::of(edquot, &reserve).lines();
        assert_eq!(
            lines[1],
            format!(
                "hint: the disk quota is exhausted (EDQUOT); run `disk-reserve release --home {home}` to free 1.0 MiB, then clean up and run `disk-reserve ensure --home {home}`"
            )
        );
    }

    #[test]
    fn hint_line_format() {
        let home = Utf8Path::new("/srv/app");
        assert_eq!(
            command_hint(home, Some(64 << 20)),
            "hint: the disk is full; run `disk-reserve release --home /srv/app` to free 64.0 MiB, then clean up and run `disk-reserve ensure --home /srv/app`"
        );
        assert_eq!(
            command_hint(home, None),
            "hint: the disk is full and there is no reserve in /srv/app to release; free space by hand, then run `disk-reserve ensure --home /srv/app`"
        );
        assert_eq!(command_hint(home, Some(0)), command_hint(home, None));
    }

    #[test]
    fn hint_quotes_paths_with_spaces() {
        let hint = command_hint(Utf8Path::new("/srv/my app"), Some(1 << 30));
        assert!(hint.contains("--home '/srv/my app'`"), "{hint}");
        assert!(hint.contains("1.0 GiB"), "{hint}");
    }

    #[test]
    fn other_errors_have_no_hint() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = with_command_hint(
            Reserve::new(RealFs::new(), dir.path(), ReserveConfig::default()).unwrap(),
        );
        let eio = Error::io(
            Operation::Allocate,
            reserve.path(),
            io::Error::from_raw_os_error(libc::EIO),
        );
        let failure = Failure::of(eio, &reserve);
        assert_eq!(failure.lines().len(), 1);
        assert_eq!(failure.to_json()["hint"], serde_json::Value::Null);
    }
}
