//! What the command's two test binaries share: running `disk-reserve` and reading what it
//! printed by the CLI contract, and mounts that are unmounted when the test ends (a tmpfs
//! or a loop-mounted ext2 image of the test's own, or a mount the test made on top of the
//! test mount).
//!
//! Each binary uses part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

/// The command under test, as cargo built it for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_disk-reserve");

/// Runs the command with `args` (stdin closed, `RUST_LOG` cleared so defaults apply).
pub fn run_args<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run disk-reserve")
}

/// Runs `disk-reserve SUBCOMMAND --home HOME EXTRA…`.
pub fn sub(subcommand: &str, home: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new(subcommand),
        OsStr::new("--home"),
        home.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    run_args(args)
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed by a signal")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit status, showing both streams when it is wrong, and that nothing
/// panicked.
#[track_caller]
pub fn assert_exit(out: &Output, want: i32) {
    assert_eq!(
        code(out),
        want,
        "exit status\n--- stdout\n{}--- stderr\n{}",
        stdout(out),
        stderr(out)
    );
    assert!(!stderr(out).contains("panicked"), "{}", stderr(out));
}

/// Parses stdout as exactly one JSON object (one line, nothing else), as `--json`
/// promises.
#[track_caller]
pub fn json(out: &Output) -> Value {
    let text = stdout(out);
    assert_eq!(
        text.lines().count(),
        1,
        "exactly one line on stdout: {text:?}"
    );
    let value: Value = serde_json::from_str(&text).expect("stdout is JSON");
    assert!(value.is_object(), "stdout is a JSON object: {value}");
    value
}

/// Unmounts the mount point when dropped (lazily if it is busy), so a failing test
/// leaves no mount behind.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A small filesystem of the test's own on a temporary directory, unmounted on drop.
pub struct Mount {
    // Field order is drop order: unmount, then remove the mount point and the image.
    _unmount: Unmount,
    dir: TempDir,
    _image: Option<TempDir>,
}

impl Mount {
    /// `mount -t tmpfs -o OPTIONS`, or `None` (with a printed line) when this machine
    /// does not let the test mount (not root, no tmpfs).
    pub fn tmpfs(options: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Mount {
            _unmount: Unmount(dir.path().to_path_buf()),
            dir,
            _image: None,
        })
    }

    /// A 16 MiB ext2 image with 1 KiB blocks, loop-mounted: no fallocate, so `ensure`
    /// writes data, and writing needs indirect blocks beyond the data itself.
    pub fn ext2() -> Option<Mount> {
        let image_dir = tempfile::tempdir().expect("tempdir");
        let image = image_dir.path().join("ext2.img");
        File::create(&image).unwrap().set_len(16 << 20).unwrap();
        let made = Command::new("mkfs.ext2")
            .args(["-q", "-F", "-b", "1024", "-m", "0"])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success());
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = made
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(dir.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !mounted {
            println!(
                "skipped: cannot loop-mount an ext2 image here (needs root, mkfs.ext2, loop devices)"
            );
            return None;
        }
        Some(Mount {
            _unmount: Unmount(dir.path().to_path_buf()),
            dir,
            _image: Some(image_dir),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
