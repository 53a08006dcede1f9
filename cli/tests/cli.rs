//! The `disk-reserve` binary against the CLI contract: every subcommand and outcome,
//! every exit status, the JSON shape, bad usage and bad homes, and — where this machine
//! lets a test mount a small filesystem (root) — a real full disk.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use disk_reserve::HumanBytes;
use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::{BIN, Mount, assert_exit, code, json, run_args as run, stderr, stdout, sub};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// The contract's fields are all there, the sizes as integers.
#[track_caller]
fn assert_contract_fields(value: &Value, outcome: &str, reserve: &Path) {
    assert_eq!(value["outcome"], outcome, "{value}");
    assert_eq!(value["path"], reserve.to_str().unwrap(), "{value}");
    for field in [
        "size_bytes",
        "allocated_bytes",
        "free_bytes",
        "total_bytes",
        "headroom_bytes",
    ] {
        assert!(value[field].is_u64(), "{field} is an integer: {value}");
    }
    assert!(value["total_bytes"].as_u64().unwrap() > 0, "{value}");
}

fn home() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn reserve_of(home: &TempDir) -> PathBuf {
    home.path().join(".reserve")
}

fn allocated(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().blocks() * 512
}

/// A size as the human line shows it: `1 MiB`, `1.0 MiB` when not exactly 1 MiB.
fn natural(bytes: u64) -> String {
    format!("{:#}", HumanBytes(bytes))
}

/// A dense file of `len` bytes of data (not a hole).
fn write_dense(path: &Path, len: u64) {
    let mut file = File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * KIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

// ---------------------------------------------------------------------------------------
// ensure: every outcome

#[test]
fn ensure_creates_then_is_present_with_one_human_line() {
    let home = home();
    let reserve = reserve_of(&home);
    let out = sub("ensure", home.path(), &["--size", "1MiB"]);
    assert_exit(&out, 0);
    let line = stdout(&out);
    assert_eq!(line.lines().count(), 1, "{line}");
    let want = format!(
        "created {}: {} allocated, ",
        reserve.display(),
        natural(allocated(&reserve))
    );
    assert!(line.starts_with(&want), "{line:?} starts with {want:?}");
    assert!(line.trim_end().ends_with(" free"), "{line}");
    assert!(
        stderr(&out).is_empty(),
        "nothing on stderr by default: {}",
        stderr(&out)
    );
    assert_eq!(fs::metadata(&reserve).unwrap().len(), MIB);
    assert!(allocated(&reserve) >= MIB, "really allocated");

    let out = sub("ensure", home.path(), &["--size", "1MiB"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with(&format!(
        "present {}: {} allocated, ",
        reserve.display(),
        natural(allocated(&reserve))
    )));
}

#[test]
fn ensure_json_has_the_contract_fields() {
    let home = home();
    let reserve = reserve_of(&home);
    let out = sub(
        "ensure",
        home.path(),
        &["--size", "2MiB", "--headroom", "1MiB", "--json"],
    );
    assert_exit(&out, 0);
    let value = json(&out);
    assert_contract_fields(&value, "created", &reserve);
    assert_eq!(value["size_bytes"], 2 * MIB);
    assert_eq!(value["headroom_bytes"], MIB);
    assert!(
        value["allocated_bytes"].as_u64().unwrap() >= 2 * MIB,
        "{value}"
    );
    assert!(value["free_bytes"].as_u64().unwrap() <= value["total_bytes"].as_u64().unwrap());

    let out = sub("ensure", home.path(), &["--size", "2MiB", "--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_contract_fields(&value, "present", &reserve);
    assert_eq!(
        value["headroom_bytes"],
        2 * MIB,
        "headroom defaults to the size"
    );
}

#[test]
fn ensure_default_size_is_64_mib() {
    let home = home();
    let out = sub("ensure", home.path(), &["--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_eq!(value["size_bytes"], 64 * MIB);
    assert_eq!(value["headroom_bytes"], 64 * MIB);
    assert_eq!(fs::metadata(reserve_of(&home)).unwrap().len(), 64 * MIB);
}

#[test]
fn ensure_each_strategy_creates_a_real_reserve() {
    for strategy in ["auto", "fallocate", "write"] {
        let home = home();
        let reserve = reserve_of(&home);
        let out = sub(
            "ensure",
            home.path(),
            &["--size", "3MiB", "--strategy", strategy, "--json"],
        );
        if strategy == "fallocate" && code(&out) == 1 && stderr(&out).contains("not supported") {
            eprintln!("skipped: this filesystem has no fallocate");
            continue;
        }
        assert_exit(&out, 0);
        assert_eq!(json(&out)["outcome"], "created", "{strategy}");
        assert_eq!(fs::metadata(&reserve).unwrap().len(), 3 * MIB, "{strategy}");
        assert!(
            allocated(&reserve) >= 3 * MIB,
            "{strategy}: really allocated"
        );
    }
}

#[test]
fn ensure_tops_up_a_sparse_file() {
    let home = home();
    let reserve = reserve_of(&home);
    File::create(&reserve).unwrap().set_len(4 * MIB).unwrap();
    assert!(allocated(&reserve) < 4 * MIB, "the file starts sparse");

    let out = sub("status", home.path(), &["--size", "4MiB"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).starts_with(&format!("sparse {}: ", reserve.display())),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("ensure would top it up"),
        "{}",
        stdout(&out)
    );

    let out = sub("ensure", home.path(), &["--size", "4MiB", "--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_contract_fields(&value, "topped_up", &reserve);
    assert!(
        value["from_allocated_bytes"].as_u64().unwrap() < 4 * MIB,
        "{value}"
    );
    assert!(
        allocated(&reserve) >= 4 * MIB,
        "rule 1: the sparse file is really allocated now"
    );
    assert_eq!(fs::metadata(&reserve).unwrap().len(), 4 * MIB);
}

#[test]
fn ensure_tops_up_a_partial_reserve_in_human_words() {
    let home = home();
    let reserve = reserve_of(&home);
    write_dense(&reserve, MIB);
    let was = natural(allocated(&reserve));
    let out = sub("ensure", home.path(), &["--size", "4MiB"]);
    assert_exit(&out, 0);
    let line = stdout(&out);
    assert!(
        line.starts_with(&format!(
            "topped up {}: {} allocated (was {was}), ",
            reserve.display(),
            natural(allocated(&reserve))
        )),
        "{line}"
    );
    assert_eq!(fs::metadata(&reserve).unwrap().len(), 4 * MIB);
}

#[test]
fn ensure_shrinks_a_larger_reserve() {
    let home = home();
    let reserve = reserve_of(&home);
    write_dense(&reserve, 8 * MIB);
    let out = sub("ensure", home.path(), &["--size", "4MiB", "--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_contract_fields(&value, "shrunk", &reserve);
    assert_eq!(value["from_len_bytes"], 8 * MIB);
    assert_eq!(
        fs::metadata(&reserve).unwrap().len(),
        4 * MIB,
        "rule 9: cut to the size"
    );

    write_dense(&reserve, 8 * MIB);
    let out = sub("ensure", home.path(), &["--size", "4MiB"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).starts_with(&format!(
            "shrunk {}: {} allocated (was 8 MiB long), ",
            reserve.display(),
            natural(allocated(&reserve))
        )),
        "{}",
        stdout(&out)
    );
}

/// A home on an 8 MiB tmpfs with 3 MiB taken by another file: a 1 MiB reserve with a
/// 6 MiB headroom fits the filesystem (7 MiB ≤ 8 MiB) but not its free space (5 MiB).
fn crowded_home() -> Option<Mount> {
    let mount = Mount::tmpfs("size=8m")?;
    write_dense(&mount.path().join("filler"), 3 * MIB);
    Some(mount)
}

#[test]
fn ensure_defers_with_exit_75_and_writes_nothing() {
    let Some(home) = crowded_home() else { return };
    let reserve = home.path().join(".reserve");
    let out = sub(
        "ensure",
        home.path(),
        &["--size", "1MiB", "--headroom", "6MiB"],
    );
    assert_exit(&out, 75);
    let line = stdout(&out);
    assert!(
        line.starts_with(&format!("deferred {}: ", reserve.display())),
        "{line}"
    );
    assert!(line.contains("nothing changed"), "{line}");
    assert!(
        stderr(&out).contains("WARN"),
        "the deferral is logged as a warning: {}",
        stderr(&out)
    );
    assert!(!reserve.exists(), "nothing written when deferred");

    let out = sub(
        "ensure",
        home.path(),
        &["--size", "1MiB", "--headroom", "6MiB", "--json"],
    );
    assert_exit(&out, 75);
    let value = json(&out);
    assert_contract_fields(&value, "deferred", &reserve);
    assert_eq!(value["allocated_bytes"], 0);
    assert_eq!(value["reason"], "low_space");
    assert!(value["needed_bytes"].as_u64().unwrap() > value["free_bytes"].as_u64().unwrap());
    assert!(!reserve.exists(), "nothing written when deferred");
}

#[test]
fn ensure_deferring_leaves_a_partial_reserve_as_it_was() {
    let Some(home) = crowded_home() else { return };
    let reserve = home.path().join(".reserve");
    write_dense(&reserve, MIB);
    let out = sub(
        "ensure",
        home.path(),
        &["--size", "2MiB", "--headroom", "5MiB"],
    );
    assert_exit(&out, 75);
    assert_eq!(fs::metadata(&reserve).unwrap().len(), MIB, "left as it was");
}

// ---------------------------------------------------------------------------------------
// release and status

#[test]
fn release_reports_freed_bytes_then_absent() {
    let home = home();
    let reserve = reserve_of(&home);
    assert_exit(&sub("ensure", home.path(), &["--size", "2MiB"]), 0);
    let out = sub("release", home.path(), &[]);
    assert_exit(&out, 0);
    let line = stdout(&out);
    // What it expected to free, then the free-space gain measured around the unlink.
    assert!(
        line.starts_with(&format!(
            "released {}: expected to free 2 MiB, the filesystem gained ",
            reserve.display()
        )),
        "{line}"
    );
    assert!(!reserve.exists());

    let out = sub("release", home.path(), &[]);
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with(&format!(
        "absent {}: no reserve to release, ",
        reserve.display()
    )));
}

#[test]
fn release_json_has_the_contract_fields() {
    let home = home();
    let reserve = reserve_of(&home);
    assert_exit(&sub("ensure", home.path(), &["--size", "2MiB"]), 0);
    let held = allocated(&reserve);
    let out = sub("release", home.path(), &["--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_contract_fields(&value, "released", &reserve);
    assert_eq!(
        value["releasable_bytes"], held,
        "rule 8: the bytes really held"
    );
    assert!(
        value["freed_bytes"].is_u64(),
        "rule 8: the measured gain (noisy on a shared disk): {value}"
    );
    assert_eq!(
        value["size_bytes"],
        2 * MIB,
        "the length of the removed file"
    );
    assert_eq!(value["allocated_bytes"], 0);

    let out = sub("release", home.path(), &["--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_contract_fields(&value, "absent", &reserve);
    assert_eq!(value["freed_bytes"], 0);
}

#[test]
fn status_names_each_condition_and_what_ensure_would_do() {
    let home = home();
    let reserve = reserve_of(&home);
    let status = |extra: &[&str]| {
        let mut args = vec!["--size", "4MiB"];
        args.extend_from_slice(extra);
        let out = sub("status", home.path(), &args);
        assert_exit(&out, 0);
        out
    };

    let line = stdout(&status(&[]));
    assert!(
        line.starts_with(&format!(
            "absent {}: 0 bytes of 4 MiB allocated; ",
            reserve.display()
        )),
        "{line}"
    );
    assert!(line.contains(" free of "), "{line}");
    assert!(
        line.trim_end()
            .ends_with("ensure would create it; size from --size"),
        "{line}"
    );
    assert!(!reserve.exists(), "status writes nothing");

    write_dense(&reserve, MIB);
    let line = stdout(&status(&[]));
    assert!(
        line.starts_with(&format!(
            "partial {}: {} of 4 MiB allocated; ",
            reserve.display(),
            natural(allocated(&reserve))
        )),
        "{line}"
    );
    assert!(
        line.trim_end()
            .ends_with("ensure would top it up; size from --size"),
        "{line}"
    );

    let line = stdout(&status(&["--headroom", "1000000TiB"]));
    assert!(line.contains("ensure would defer ("), "{line}");

    assert_exit(&sub("ensure", home.path(), &["--size", "4MiB"]), 0);
    let line = stdout(&status(&[]));
    assert!(
        line.starts_with(&format!(
            "present {}: {} of 4 MiB allocated; ",
            reserve.display(),
            natural(allocated(&reserve))
        )),
        "{line}"
    );
    assert!(
        line.trim_end()
            .ends_with("ensure would do nothing; size from --size"),
        "{line}"
    );

    let line = stdout(&sub("status", home.path(), &["--size", "1MiB"]));
    assert!(
        line.starts_with(&format!("oversized {}: ", reserve.display())),
        "{line}"
    );
    assert!(
        line.trim_end()
            .ends_with("ensure would shrink it; size from --size"),
        "{line}"
    );

    fs::remove_file(&reserve).unwrap();
    std::os::unix::fs::symlink("/nonexistent", &reserve).unwrap();
    let line = stdout(&status(&[]));
    assert!(
        line.starts_with(&format!(
            "not a regular file {}: a symlink",
            reserve.display()
        )),
        "{line}"
    );
    assert!(line.contains("ensure would refuse"), "{line}");
}

#[test]
fn status_json_adds_condition_and_ensure_would() {
    let home = home();
    let reserve = reserve_of(&home);
    let status = |condition: &str, would: &str| {
        let out = sub("status", home.path(), &["--size", "4MiB", "--json"]);
        assert_exit(&out, 0);
        let value = json(&out);
        assert_contract_fields(&value, "status", &reserve);
        assert_eq!(value["size_bytes"], 4 * MIB);
        assert_eq!(value["condition"], condition, "{value}");
        assert_eq!(value["ensure_would"], would, "{value}");
        value
    };
    status("absent", "create");
    write_dense(&reserve, MIB);
    status("partial", "top_up");
    write_dense(&reserve, 4 * MIB);
    status("present", "nothing");
    write_dense(&reserve, 8 * MIB);
    status("oversized", "shrink");
    fs::remove_file(&reserve).unwrap();
    File::create(&reserve).unwrap().set_len(4 * MIB).unwrap();
    assert_eq!(status("sparse", "top_up")["len_bytes"], 4 * MIB);
    fs::remove_file(&reserve).unwrap();
    fs::create_dir(&reserve).unwrap();
    assert_eq!(status("not_a_regular_file", "refuse")["kind"], "directory");
}

#[test]
fn sizes_accept_units_and_shares_of_the_filesystem() {
    let home = home();
    for (text, bytes) in [
        ("1048576", MIB),
        ("512B", 512),
        ("64M", 64 * MIB),
        ("64MiB", 64 * MIB),
        ("64k", 64 * KIB),
        ("64K", 64 * KIB),
        ("1G", 1 << 30),
        ("1.5M", 3 * MIB / 2),
        (" 64M ", 64 * MIB),
        ("64 MiB", 64 * MIB),
        ("4KiB", 4 * KIB),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        ("500MB", 500_000_000),
        ("5KB", 5_000),
        ("3GB", 3_000_000_000),
        ("1TB", 1_000_000_000_000),
    ] {
        let out = sub(
            "status",
            home.path(),
            &["--size", text, "--headroom", text, "--json"],
        );
        if code(&out) == 1 && stderr(&out).contains("larger than the whole filesystem") {
            continue; // larger than this filesystem: covered by its own test
        }
        assert_exit(&out, 0);
        let value = json(&out);
        assert_eq!(value["size_bytes"], bytes, "{text}");
        assert_eq!(value["headroom_bytes"], bytes, "{text}");
    }
    for (text, ppm) in [("1%", 10_000u128), ("0.5%", 5_000)] {
        let out = sub("status", home.path(), &["--size", text, "--json"]);
        assert_exit(&out, 0);
        let value = json(&out);
        let total = u128::from(value["total_bytes"].as_u64().unwrap());
        assert_eq!(
            u128::from(value["size_bytes"].as_u64().unwrap()),
            total * ppm / 1_000_000,
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// errors: exit 1, nothing written

#[test]
fn size_zero_is_a_clear_error_and_writes_nothing() {
    let home = home();
    for size in ["0", "0MiB", "0%"] {
        for subcommand in ["ensure", "status"] {
            let out = sub(subcommand, home.path(), &["--size", size]);
            assert_exit(&out, 1);
            assert!(stdout(&out).is_empty());
            let err = stderr(&out);
            assert!(
                err.starts_with("error: reserve size for `"),
                "{size}: {err}"
            );
            assert!(err.contains("is 0 bytes"), "{size}: {err}");
        }
        assert!(
            !reserve_of(&home).exists(),
            "nothing written for size {size}"
        );
    }
}

#[test]
fn size_larger_than_the_filesystem_is_a_clear_error_and_writes_nothing() {
    let home = home();
    for subcommand in ["ensure", "status"] {
        let out = sub(subcommand, home.path(), &["--size", "1000000TiB"]);
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("larger than the whole filesystem"), "{err}");
        assert!(
            err.contains(reserve_of(&home).to_str().unwrap()),
            "names the path: {err}"
        );
    }
    assert!(!reserve_of(&home).exists(), "nothing written");
}

#[test]
fn missing_home_is_an_error_naming_it() {
    let home = home();
    let missing = home.path().join("nope");
    for subcommand in ["ensure", "release", "status"] {
        let out = sub(subcommand, &missing, &[]);
        assert_exit(&out, 1);
        assert_eq!(
            stderr(&out).trim_end(),
            format!(
                "error: home directory `{}` does not exist",
                missing.display()
            ),
            "{subcommand}"
        );
        assert!(stdout(&out).is_empty());
    }
    assert!(!missing.exists(), "the home is not created");
}

#[test]
fn home_that_is_a_file_is_an_error_naming_it() {
    let home = home();
    let file = home.path().join("file");
    fs::write(&file, b"data").unwrap();
    for subcommand in ["ensure", "release", "status"] {
        let out = sub(subcommand, &file, &[]);
        assert_exit(&out, 1);
        assert_eq!(
            stderr(&out).trim_end(),
            format!("error: home `{}` is not a directory", file.display()),
            "{subcommand}"
        );
    }
    assert_eq!(fs::read(&file).unwrap(), b"data");
}

#[test]
fn symlink_at_the_reserve_path_is_refused_and_untouched() {
    let home = home();
    let reserve = reserve_of(&home);
    let target = home.path().join("precious");
    fs::write(&target, b"twelve bytes").unwrap();
    std::os::unix::fs::symlink(&target, &reserve).unwrap();
    for subcommand in ["ensure", "release"] {
        let out = sub(subcommand, home.path(), &["--json"]);
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "error: `{}` is a symlink, not a regular file",
                reserve.display()
            )),
            "{subcommand}: {err}"
        );
        assert_eq!(json(&out)["outcome"], "error");
        assert!(
            fs::symlink_metadata(&reserve)
                .unwrap()
                .file_type()
                .is_symlink(),
            "link kept"
        );
        assert_eq!(
            fs::metadata(&target).unwrap().len(),
            12,
            "rule 7: target untouched"
        );
        assert_eq!(
            allocated(&target),
            fs::symlink_metadata(&target).unwrap().blocks() * 512
        );
    }
}

#[test]
fn directory_at_the_reserve_path_is_refused_and_untouched() {
    let home = home();
    let reserve = reserve_of(&home);
    fs::create_dir(&reserve).unwrap();
    fs::write(reserve.join("inside"), b"x").unwrap();
    for subcommand in ["ensure", "release"] {
        let out = sub(subcommand, home.path(), &[]);
        assert_exit(&out, 1);
        assert!(
            stderr(&out).starts_with(&format!(
                "error: `{}` is a directory, not a regular file",
                reserve.display()
            )),
            "{}",
            stderr(&out)
        );
        assert!(reserve.is_dir(), "the directory still exists");
        assert!(reserve.join("inside").exists());
    }
}

#[test]
fn fifo_at_the_reserve_path_is_refused_and_untouched() {
    let home = home();
    let reserve = reserve_of(&home);
    mkfifo(&reserve);
    for subcommand in ["ensure", "release"] {
        let out = sub(subcommand, home.path(), &[]);
        assert_exit(&out, 1);
        assert!(
            stderr(&out).starts_with(&format!(
                "error: `{}` is a fifo, not a regular file",
                reserve.display()
            )),
            "{}",
            stderr(&out)
        );
        assert!(
            fs::symlink_metadata(&reserve)
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }
}

#[test]
fn non_utf8_home_is_a_clear_error_not_a_panic() {
    let home = home();
    let mut bytes = home.path().as_os_str().as_bytes().to_vec();
    bytes.extend_from_slice(b"/bad-\xff-name");
    let bad = PathBuf::from(OsStr::from_bytes(&bytes));
    fs::create_dir(&bad).unwrap();
    for subcommand in ["ensure", "release", "status"] {
        let out = sub(subcommand, &bad, &[]);
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(err.starts_with("error: path "), "{err}");
        assert!(err.contains("is not valid UTF-8"), "{err}");
        let out = sub(subcommand, &bad, &["--json"]);
        assert_exit(&out, 1);
        let value = json(&out);
        assert_eq!(value["outcome"], "error");
        assert_eq!(value["path"], Value::Null);
    }
    assert_eq!(fs::read_dir(&bad).unwrap().count(), 0, "nothing written");
}

#[test]
fn control_characters_in_paths_are_escaped_in_human_output() {
    let parent = home();
    let home = parent.path().join("line\nbreak\tand\u{1b}[31mred");
    fs::create_dir(&home).unwrap();
    let shown = parent
        .path()
        .join(r"line\nbreak\tand\u{1b}[31mred")
        .join(".reserve");
    let shown = shown.to_str().unwrap();
    for (subcommand, extra, word) in [
        ("ensure", &["--size", "1M"][..], "created"),
        ("status", &["--size", "1M"], "present"),
        ("release", &[], "released"),
    ] {
        let out = sub(subcommand, &home, extra);
        assert_exit(&out, 0);
        let text = stdout(&out);
        assert_eq!(text.lines().count(), 1, "one line: {text:?}");
        assert!(
            text.starts_with(&format!("{word} {shown}: ")),
            "{shown:?}: {text:?}"
        );
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
    // JSON keeps the real path; serde_json escapes it.
    let out = sub("status", &home, &["--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["path"], home.join(".reserve").to_str().unwrap());
    // An error naming such a path stays one line on stderr.
    let out = sub("status", &home.join("missing\nhome"), &[]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(r"missing\nhome"), "{err:?}");
}

#[test]
fn json_error_is_one_object_and_the_error_is_on_stderr_too() {
    let home = home();
    let missing = home.path().join("nope");
    let out = sub("ensure", &missing, &["--json"]);
    assert_exit(&out, 1);
    let value = json(&out);
    assert_eq!(value["outcome"], "error");
    let message = value["error"].as_str().unwrap();
    assert_eq!(
        message,
        format!("home directory `{}` does not exist", missing.display())
    );
    assert_eq!(value["path"], missing.join(".reserve").to_str().unwrap());
    assert_eq!(value["out_of_space"], false);
    assert_eq!(value["hint"], Value::Null);
    assert_eq!(stderr(&out).trim_end(), format!("error: {message}"));
}

// ---------------------------------------------------------------------------------------
// usage: exit 2, nothing on stdout

#[test]
fn malformed_size_is_a_usage_error_naming_the_text() {
    let home = home();
    for (subcommand, flag) in [
        ("ensure", "--size"),
        ("ensure", "--headroom"),
        ("status", "--size"),
    ] {
        for bad in [
            "12XB", "abc", "-5", "1.2.3MiB", "x%", "-1%", "101%", "", " ", "64Mi", "1P",
        ] {
            // `--size=-5`: the form that keeps a leading `-` from reading as a flag.
            let arg = format!("{flag}={bad}");
            let out = sub(subcommand, home.path(), &[&arg, "--json"]);
            assert_exit(&out, 2);
            assert!(
                stdout(&out).is_empty(),
                "nothing on stdout for a usage error"
            );
            let err = stderr(&out);
            assert!(err.contains(&format!("`{bad}`")), "{flag} {bad:?}: {err}");
            assert!(err.contains(flag), "{err}");
        }
    }
    assert!(!reserve_of(&home).exists());
}

#[test]
fn size_units_are_those_of_fallocate() {
    // `64M` is 64 MiB, as `fallocate -l 64M` and `truncate -s 64M` read it.
    let home = home();
    let out = sub(
        "status",
        home.path(),
        &["--size", "64M", "--headroom", "64k", "--json"],
    );
    assert_exit(&out, 0);
    let value = json(&out);
    assert_eq!(value["size_bytes"], 67_108_864);
    assert_eq!(value["headroom_bytes"], 65_536);
}

#[test]
fn negative_size_as_its_own_argument_gets_our_message() {
    let home = home();
    for (subcommand, flag) in [
        ("ensure", "--size"),
        ("ensure", "--headroom"),
        ("status", "--size"),
        ("status", "--headroom"),
    ] {
        for bad in ["-1", "-1M", "-5%"] {
            let out = sub(subcommand, home.path(), &[flag, bad, "--json"]);
            assert_exit(&out, 2);
            assert!(stdout(&out).is_empty(), "{flag} {bad}");
            let err = stderr(&out);
            assert!(
                err.contains(&format!("`{bad}`: a size cannot be negative")),
                "{flag} {bad}: {err}"
            );
            assert!(err.contains(flag), "{err}");
            assert!(!err.contains("unexpected argument"), "{err}");
        }
    }
    // An option where the SIZE should be is named as such.
    let out = sub("ensure", home.path(), &["--size", "--json"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("`--json` looks like an option, not a size"),
        "{}",
        stderr(&out)
    );
    assert!(!reserve_of(&home).exists());
}

#[test]
fn too_large_size_is_a_usage_error_not_a_wrap() {
    let home = home();
    for flag in ["--size", "--headroom"] {
        for bad in ["99999999999T", "18446744073709551616", "16777216TiB"] {
            let out = sub("ensure", home.path(), &[flag, bad]);
            assert_exit(&out, 2);
            assert!(stdout(&out).is_empty());
            let err = stderr(&out);
            assert!(
                err.contains(&format!("`{bad}` is too large")),
                "{flag} {bad}: {err}"
            );
        }
    }
    assert!(!reserve_of(&home).exists());
}

#[test]
fn help_explains_the_size_units() {
    let out = run(["ensure", "--help"]);
    assert_exit(&out, 0);
    let help = stdout(&out);
    for needle in ["64M = 64MiB = 67108864", "KB MB GB TB", "--headroom"] {
        assert!(
            help.contains(needle),
            "ensure --help mentions {needle}: {help}"
        );
    }
    let out = run(["--help"]);
    let help = stdout(&out);
    for needle in ["fallocate -l", "64k is 64K = 65536", "Spaces around it"] {
        assert!(help.contains(needle), "--help mentions {needle}: {help}");
    }
}

#[test]
fn bad_usage_exits_2() {
    let home = home();
    let h = home.path().to_str().unwrap();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["ensure"],
        vec!["ensure", "--home"],
        vec!["ensure", "--home", h, "--strategy", "magic"],
        vec!["ensure", "--home", h, "--bogus"],
        vec!["release", "--home", h, "--size", "1MiB"],
        vec!["status", "--home", h, "--strategy", "write"],
    ] {
        let out = run(&args);
        assert_exit(&out, 2);
        assert!(stdout(&out).is_empty(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("error:") || err.contains("Usage:"),
            "{args:?}: {err}"
        );
    }
    assert!(!reserve_of(&home).exists());
}

#[test]
fn help_has_an_example_per_subcommand_and_version_prints() {
    for subcommand in ["ensure", "release", "status"] {
        let out = run([subcommand, "--help"]);
        assert_exit(&out, 0);
        let help = stdout(&out);
        assert!(help.contains("Example"), "{subcommand}: {help}");
        assert!(
            help.contains(&format!("disk-reserve {subcommand} --home /srv/app")),
            "{help}"
        );
    }
    let out = run(["--help"]);
    assert_exit(&out, 0);
    let help = stdout(&out);
    for needle in ["75", "74", "--json", "outcome", "\"error\"", "RUST_LOG"] {
        assert!(
            help.contains(needle),
            "top-level help mentions {needle}: {help}"
        );
    }
    let out = run(["--version"]);
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out).trim_end(),
        format!("disk-reserve {}", env!("CARGO_PKG_VERSION"))
    );
}

// ---------------------------------------------------------------------------------------
// stdout fails: exit 74

/// Runs `disk-reserve SUB --home HOME EXTRA…` with stdout going to `stdout`.
fn sub_to(stdout: Stdio, subcommand: &str, home: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg(subcommand)
        .arg("--home")
        .arg(home)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("run disk-reserve")
}

fn dev_full() -> Option<Stdio> {
    OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .ok()
        .map(Stdio::from)
}

/// The write end of a pipe whose read end is already closed: any write gets `EPIPE`.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` is two writable ints, as pipe2(2) wants.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 just opened both descriptors and nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

#[test]
fn stdout_failing_exits_74_with_one_line_on_stderr() {
    let home = home();
    let Some(_) = dev_full() else {
        println!("skipped: no /dev/full");
        return;
    };
    for extra in [&["--json"][..], &[]] {
        let out = sub_to(dev_full().unwrap(), "status", home.path(), extra);
        assert_exit(&out, 74);
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(
            err.starts_with("error: the report could not be written to stdout: "),
            "{err:?}"
        );
        assert!(err.contains("No space left on device"), "says why: {err:?}");
    }
    // The work is done all the same: ensure laid the reserve down.
    let out = sub_to(
        dev_full().unwrap(),
        "ensure",
        home.path(),
        &["--size", "1M"],
    );
    assert_exit(&out, 74);
    assert_eq!(allocated(&reserve_of(&home)), MIB);
    // An error stays an error (exit 1) when its JSON object cannot be written either.
    let missing = home.path().join("missing");
    let out = sub_to(dev_full().unwrap(), "status", &missing, &["--json"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err:?}");
    assert!(
        err.contains("error: the report could not be written to stdout: "),
        "{err:?}"
    );
}

#[test]
fn closed_pipe_on_stdout_exits_74_quietly() {
    let home = home();
    for (subcommand, extra) in [
        ("status", &["--json"][..]),
        ("status", &[]),
        ("ensure", &["--size", "1M"]),
        ("release", &[]),
    ] {
        let out = sub_to(closed_pipe(), subcommand, home.path(), extra);
        assert_exit(&out, 74);
        assert_eq!(
            stderr(&out),
            "",
            "{subcommand} {extra:?}: a closed pipe is quiet"
        );
    }
    assert!(!reserve_of(&home).exists(), "ensure then release both ran");
}

// ---------------------------------------------------------------------------------------
// logs and progress

#[test]
fn rust_log_turns_on_the_library_logs() {
    let home = home();
    let out = Command::new(BIN)
        .args(["ensure", "--size", "1MiB", "--home"])
        .arg(home.path())
        .env("RUST_LOG", "disk_reserve=info")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("disk reserve laid down"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).starts_with("created "), "logs stay off stdout");
}

#[test]
fn no_progress_when_stderr_is_not_a_terminal() {
    let home = home();
    let out = sub(
        "ensure",
        home.path(),
        &["--size", "24MiB", "--strategy", "write"],
    );
    assert_exit(&out, 0);
    assert!(stderr(&out).is_empty(), "{:?}", stderr(&out));
}

/// Runs a shell command line under a pseudo-terminal with `script(1)`; `None` when it
/// is not installed.
fn under_pty(command_line: &str) -> Option<String> {
    let out = Command::new("script")
        .args(["-qec", command_line, "/dev/null"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn progress_shows_on_a_terminal_but_not_with_json() {
    let home = home();
    let h = home.path().to_str().unwrap();
    let Some(text) = under_pty(&format!(
        "{BIN} ensure --home '{h}' --size 24MiB --strategy write"
    )) else {
        println!("skipped: script(1) is not available to give the command a terminal");
        return;
    };
    assert!(text.contains("\rallocating "), "{text:?}");
    assert!(text.contains("24 MiB of 24 MiB (100%)"), "{text:?}");
    assert!(text.contains("created "), "{text:?}");

    fs::remove_file(reserve_of(&home)).unwrap();
    let text = under_pty(&format!(
        "{BIN} ensure --home '{h}' --size 24MiB --strategy write --json"
    ))
    .unwrap();
    assert!(!text.contains("allocating"), "{text:?}");
    let value: Value = serde_json::from_str(text.trim()).expect("only the JSON object");
    assert_eq!(value["outcome"], "created");
}

/// Writes `path` until the filesystem says ENOSPC, in shrinking chunks; returns its
/// length then.
fn fill_until_full(path: &Path) -> u64 {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for chunk in [MIB, 64 * KIB, 4 * KIB, 1] {
        let buf = vec![0xa5u8; chunk as usize];
        loop {
            match file.write_all(&buf).and_then(|()| file.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    // A failed write_all may have written part of a chunk: the length says what is there.
    fs::metadata(path).unwrap().len()
}

fn one_byte_probe(dir: &Path) -> io::Result<()> {
    let mut file = File::create(dir.join("probe"))?;
    file.write_all(b"x")?;
    file.sync_all()
}

/// The full-disk runbook through the command line: reserve, fill, release gives
/// room back, ensure defers while the disk is tight and lays it down again after clean-up.
#[test]
fn full_disk_runbook_end_to_end() {
    let Some(mount) = Mount::tmpfs("size=8m") else {
        return;
    };
    let home = mount.path();
    let reserve = home.join(".reserve");

    assert_exit(&sub("ensure", home, &["--size", "1MiB"]), 0);
    fill_until_full(&home.join("filler"));
    let probe = one_byte_probe(home);
    assert_eq!(
        probe.unwrap_err().raw_os_error(),
        Some(libc::ENOSPC),
        "the disk is full"
    );
    let _ = fs::remove_file(home.join("probe"));

    let out = sub("status", home, &["--size", "1MiB"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with(&format!(
        "present {}: {} of 1 MiB allocated; ",
        reserve.display(),
        natural(allocated(&reserve))
    )));

    let out = sub("release", home, &["--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["freed_bytes"], MIB);
    one_byte_probe(home).expect("released space takes a write");
    fs::remove_file(home.join("probe")).unwrap();

    let out = sub("ensure", home, &["--size", "1MiB"]);
    assert_exit(&out, 75);
    assert!(!reserve.exists(), "deferred: nothing written");

    fs::remove_file(home.join("filler")).unwrap();
    let out = sub("ensure", home, &["--size", "1MiB"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with("created "), "{}", stdout(&out));
}

/// A real ENOSPC with no reserve on disk: the hint says there is none to release.
#[test]
fn out_of_space_without_a_reserve_says_so() {
    let Some(mount) = Mount::tmpfs("size=8m,nr_inodes=8") else {
        return;
    };
    let home = mount.path();
    for i in 0.. {
        if let Err(e) = File::create(home.join(format!("f{i}"))) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "out of inodes");
            break;
        }
    }
    let reserve = home.join(".reserve");
    // Rule 4: meeting ENOSPC (here: no inode) is "not now", exit 75, not an error.
    let out = sub("ensure", home, &["--size", "1MiB", "--json"]);
    assert_exit(&out, 75);
    let value = json(&out);
    assert_eq!(value["outcome"], "deferred");
    assert_eq!(value["reason"], "ran_out");
    assert!(!reserve.exists());
}

/// A real ENOSPC while topping up a partial reserve: the hint names the bytes the
/// reserve really holds on disk, and the reserve is cut back to what it was.
#[test]
fn out_of_space_with_a_partial_reserve_names_its_bytes() {
    let Some(mount) = Mount::ext2() else { return };
    let home = mount.path();
    let reserve = home.join(".reserve");
    write_dense(&reserve, MIB);
    let filler = home.join("filler");
    fill_until_full(&filler);
    // Give back just enough that free space covers the missing 3 MiB of data, but not
    // the indirect blocks writing them needs: the decision allocates, the disk refuses.
    let file = OpenOptions::new().write(true).open(&filler).unwrap();
    let mut len = file.metadata().unwrap().len() - 3 * MIB + 64 * KIB;
    file.set_len(len).unwrap();
    loop {
        let out = sub(
            "status",
            home,
            &["--size", "4MiB", "--headroom", "0", "--json"],
        );
        if json(&out)["free_bytes"].as_u64().unwrap() >= 3 * MIB {
            break;
        }
        len -= KIB;
        file.set_len(len).unwrap();
    }
    file.sync_all().unwrap();
    let held = allocated(&reserve);

    // Rule 4: the allocation meeting ENOSPC rolls back and defers (exit 75, ran_out).
    let out = sub(
        "ensure",
        home,
        &["--size", "4MiB", "--headroom", "0", "--json"],
    );
    assert_exit(&out, 75);
    let value = json(&out);
    assert_eq!(value["outcome"], "deferred", "{value}");
    assert_eq!(value["reason"], "ran_out", "{value}");
    assert_eq!(
        allocated(&reserve),
        held,
        "rule 5: the blocks it held are kept"
    );
    assert_eq!(
        fs::metadata(&reserve).unwrap().len(),
        MIB,
        "rule 5: cut back to its old length"
    );
}

// ---------------------------------------------------------------------------------------
// Interrupts: SIGINT, SIGTERM, SIGHUP mid-write roll back, then the process dies by them

/// The interrupted reserve: three write chunks, so the signal lands with two to come.
const INTERRUPTED_SIZE: u64 = 3 * disk_reserve::WRITE_CHUNK_BYTES;

/// Runs `ensure --strategy write --size 96MiB` in `home` with the CLI's test pause, sends
/// `signal` at the first pause (after one chunk, with two still to come), then answers
/// every pause until the command ends; returns its exit status and stderr.
fn ensure_interrupted_by(home: &Path, signal: i32) -> (std::process::ExitStatus, String) {
    use std::io::BufRead;
    let size = INTERRUPTED_SIZE.to_string();
    let mut child = Command::new(BIN)
        .args(["ensure", "--strategy", "write", "--size", &size, "--home"])
        .arg(home)
        .env_remove("RUST_LOG")
        .env("DISK_RESERVE_TEST_PAUSE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn disk-reserve");
    let mut stdin = child.stdin.take().unwrap();
    let mut errors = io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let mut signalled = false;
    loop {
        let mut line = String::new();
        if errors.read_line(&mut line).expect("read its stderr") == 0 {
            break;
        }
        said.push_str(&line);
        if line.starts_with("disk-reserve: test pause after ") {
            if !signalled {
                signalled = true;
                let pid = libc::pid_t::try_from(child.id()).unwrap();
                // SAFETY: kill(2) with a pid this test spawned and still waits for.
                let sent = unsafe { libc::kill(pid, signal) };
                assert_eq!(sent, 0, "kill: {}", io::Error::last_os_error());
            }
            // Released after the signal: the next cancel check (before the next chunk)
            // sees it. A pause it did not stop at is answered too, so nothing hangs.
            let _ = stdin.write_all(b"\n");
            let _ = stdin.flush();
        }
    }
    assert!(signalled, "ensure never paused:\n{said}");
    drop(stdin);
    (child.wait().expect("wait for disk-reserve"), said)
}

/// The process died by `signal` and said, in exactly one line, that it rolled back.
#[track_caller]
fn assert_died_rolled_back(status: std::process::ExitStatus, said: &str, signal: i32, name: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(signal),
        "rule 5 / CLI contract: killed by {name} re-raised, not {status:?}\n{said}"
    );
    let lines: Vec<&str> = said
        .lines()
        .filter(|line| !line.starts_with("disk-reserve: test pause after "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line says it was interrupted, nothing else:\n{said}"
    );
    assert!(
        lines[0].starts_with(&format!(
            "disk-reserve: interrupted by {name}; the allocation was rolled back"
        )),
        "{said}"
    );
}

#[test]
fn each_interrupt_mid_write_rolls_back_a_new_reserve_and_dies_by_the_signal() {
    for (signal, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let home = home();
        let (status, said) = ensure_interrupted_by(home.path(), signal);
        assert_died_rolled_back(status, &said, signal, name);
        assert!(
            !reserve_of(&home).exists(),
            "rule 5: a reserve the interrupted ensure created is removed ({name})"
        );
        assert_eq!(
            fs::read_dir(home.path()).unwrap().count(),
            0,
            "nothing left in the home ({name})"
        );
    }
}

#[test]
fn each_interrupt_mid_top_up_cuts_the_reserve_back_to_its_old_length() {
    for (signal, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let home = home();
        let reserve = reserve_of(&home);
        write_dense(&reserve, 8 * MIB);
        let (status, said) = ensure_interrupted_by(home.path(), signal);
        assert_died_rolled_back(status, &said, signal, name);
        let meta = fs::symlink_metadata(&reserve).expect("the partial reserve is still there");
        assert_eq!(
            meta.len(),
            8 * MIB,
            "rule 5: a reserve the interrupted top-up grew is cut back to its old length ({name})"
        );
        assert!(allocated(&reserve) <= 8 * MIB + 64 * KIB, "{name}");
    }
}

#[test]
fn a_second_signal_during_the_rollback_is_ignored() {
    let home = home();
    let size = INTERRUPTED_SIZE.to_string();
    let mut child = Command::new(BIN)
        .args(["ensure", "--strategy", "write", "--size", &size, "--home"])
        .arg(home.path())
        .env_remove("RUST_LOG")
        .env("DISK_RESERVE_TEST_PAUSE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn disk-reserve");
    let mut stdin = child.stdin.take().unwrap();
    let mut errors = io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    loop {
        use std::io::BufRead;
        let mut line = String::new();
        if errors.read_line(&mut line).expect("read its stderr") == 0 {
            break;
        }
        said.push_str(&line);
        if line.starts_with("disk-reserve: test pause after ") {
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGINT] {
                // SAFETY: kill(2) with a pid this test spawned and still waits for.
                let sent = unsafe { libc::kill(pid, signal) };
                assert_eq!(sent, 0);
            }
            let _ = stdin.write_all(b"\n");
            let _ = stdin.flush();
        }
    }
    drop(stdin);
    let status = child.wait().unwrap();
    assert_died_rolled_back(status, &said, libc::SIGINT, "SIGINT");
    assert!(!reserve_of(&home).exists(), "rule 5");
}

// ---------------------------------------------------------------------------------------
// release speaks to the operator: the next step, who holds the lock, --timeout, --force

/// Holds an exclusive `flock` on `dir` (as another `ensure`, or a runtime using its home
/// as an instance lock, would) until dropped.
fn hold_lock(dir: &Path) -> File {
    use std::os::fd::AsRawFd;
    let file = File::open(dir).expect("open the home");
    // SAFETY: flock(2) on a descriptor `file` owns for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "flock: {}", io::Error::last_os_error());
    file
}

/// `/proc/self/comm` of this test process, as the lock holder is named.
fn own_command() -> String {
    fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_owned()
}

#[test]
fn release_tells_the_next_step_with_the_absolute_home() {
    let home = home();
    assert_exit(&sub("ensure", home.path(), &["--size", "1MiB"]), 0);
    // A relative --home: every path printed is absolute, to paste from anywhere.
    let parent = home.path().parent().unwrap();
    let name = home.path().file_name().unwrap();
    let out = Command::new(BIN)
        .args(["release", "--home"])
        .arg(name)
        .current_dir(parent)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let line = stdout(&out);
    let h = home.path().display();
    assert!(
        line.starts_with(&format!("released {h}/.reserve: expected to free 1 MiB, ")),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "now clean up, then run `disk-reserve ensure --home {h}`, which lays the reserve down again once there is room (until then it defers, exit 75)"
        )),
        "rule 8: release tells the operator the next step: {line}"
    );
    assert_eq!(line.lines().count(), 1);
}

#[test]
fn release_waiting_for_the_lock_names_the_holder_and_timeout_bounds_it() {
    let home = home();
    assert_exit(&sub("ensure", home.path(), &["--size", "1MiB"]), 0);
    let lock = hold_lock(home.path());
    let started = std::time::Instant::now();
    let out = sub("release", home.path(), &["--timeout", "1.5"]);
    let waited = started.elapsed();
    assert_exit(&out, 1);
    assert!(
        waited >= std::time::Duration::from_millis(1400),
        "waited {waited:?}"
    );
    let err = stderr(&out);
    let h = home.path().display();
    let holder = format!("held by process {} ({})", std::process::id(), own_command());
    assert!(
        err.contains(&format!(
            "disk-reserve: waiting for the lock on {h}, {holder}; "
        )),
        "rule 8: a wait of more than a second says for which process: {err}"
    );
    assert!(
        err.contains(&format!(
            "error: gave up after 1.5s waiting for another process's lock on home `{h}`; nothing was changed"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "the lock on {h} is {holder}; run `disk-reserve release --home {h} --force`"
        )),
        "{err}"
    );
    assert!(
        !err.contains("WARN"),
        "one notice, not a log line too: {err}"
    );
    assert!(
        reserve_of(&home).exists(),
        "a timed-out release changed nothing"
    );

    // Under a second: no waiting notice, just the error.
    let out = sub("release", home.path(), &["--timeout", "0.2"]);
    assert_exit(&out, 1);
    assert!(
        !stderr(&out).contains("waiting for the lock"),
        "{}",
        stderr(&out)
    );

    // --force removes it without the lock.
    let out = sub("release", home.path(), &["--force"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with("released "), "{}", stdout(&out));
    assert!(
        !reserve_of(&home).exists(),
        "rule 8: an operator can force it"
    );
    drop(lock);
}

#[test]
fn release_waits_for_the_lock_then_releases() {
    let home = home();
    assert_exit(&sub("ensure", home.path(), &["--size", "1MiB"]), 0);
    let lock = hold_lock(home.path());
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        drop(lock);
    });
    let out = sub("release", home.path(), &[]);
    holder.join().unwrap();
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("waiting for the lock on"),
        "{}",
        stderr(&out)
    );
    assert!(!reserve_of(&home).exists());
}

#[test]
fn release_timeout_and_force_are_checked_as_usage() {
    let home = home();
    for extra in [
        &["--timeout", "-1"][..],
        &["--timeout", "soon"],
        &["--timeout", "1", "--force"],
    ] {
        let out = sub("release", home.path(), extra);
        assert_exit(&out, 2);
    }
}

// ---------------------------------------------------------------------------------------
// Rule 5 / issue 11: a rollback is only spoken of when something had changed

/// Runs `chattr FLAGS path`; false when this machine cannot (no chattr, not root, a
/// filesystem without the flag), and the test then skips that case.
fn chattr(flags: &str, path: &Path) -> bool {
    Command::new("chattr")
        .arg(flags)
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The error lines of a refused ensure: the refusal, and no rollback talk.
#[track_caller]
fn assert_refused_without_rollback(out: &Output, cause: &str) {
    assert_exit(out, 1);
    let err = stderr(out);
    assert!(err.contains(cause), "{err}");
    assert!(
        !err.contains("roll back") && !err.contains("rolled back"),
        "rule 5: nothing had changed, so nothing is said about rolling back: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn immutable_home_or_reserve_is_refused_without_rollback_talk() {
    let home = home();
    if !chattr("+i", home.path()) {
        eprintln!("skipped: chattr +i is not available here");
        return;
    }
    let out = sub("ensure", home.path(), &["--size", "1MiB"]);
    assert!(chattr("-i", home.path()));
    assert_refused_without_rollback(&out, "permission denied");
    assert!(!reserve_of(&home).exists());

    let reserve = reserve_of(&home);
    write_dense(&reserve, MIB);
    if !chattr("+i", &reserve) {
        return;
    }
    for strategy in ["auto", "write"] {
        let out = sub(
            "ensure",
            home.path(),
            &["--size", "4MiB", "--strategy", strategy],
        );
        assert_refused_without_rollback(&out, "permission denied");
    }
    assert!(chattr("-i", &reserve));
    assert_eq!(fs::metadata(&reserve).unwrap().len(), MIB, "left as it was");
}

#[test]
fn read_only_bind_mount_is_refused_without_rollback_talk() {
    let home = home();
    let target = home.path().join("ro");
    let source = home.path().join("rw");
    fs::create_dir(&target).unwrap();
    fs::create_dir(&source).unwrap();
    let mounted = Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(&source)
        .arg(&target)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !mounted {
        eprintln!("skipped: no read-only bind mount here (needs root)");
        return;
    }
    let out = sub("ensure", &target, &["--size", "1MiB"]);
    let _ = Command::new("umount").arg(&target).status();
    assert_refused_without_rollback(&out, "read-only");
    assert_eq!(fs::read_dir(&source).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------
// Remembered configuration: the size and headroom an ensure was given are kept for the home

fn status_json(home: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = sub("status", home, &args);
    assert_exit(&out, 0);
    json(&out)
}

#[test]
fn a_custom_size_is_remembered_through_ensure_status_and_release() {
    let home = home();
    let reserve = reserve_of(&home);
    let record = home.path().join(".reserve.conf");

    let value = status_json(home.path(), &[]);
    assert_eq!(value["size_source"], "default", "{value}");
    assert_eq!(value["size_bytes"], 64 * MIB, "{value}");
    assert!(!record.exists(), "status writes nothing");

    assert_exit(
        &sub(
            "ensure",
            home.path(),
            &["--size", "4MiB", "--headroom", "3MiB"],
        ),
        0,
    );
    let text = fs::read_to_string(&record).expect("ensure kept its size for the home");
    assert!(
        text.contains("size=4194304\n") && text.contains("headroom=3145728\n"),
        "{text}"
    );

    // The runbook's commands, without --size, neither shrink the custom reserve…
    let out = sub("status", home.path(), &[]);
    assert_exit(&out, 0);
    let line = stdout(&out);
    assert!(
        line.trim_end().ends_with(
            "headroom 3 MiB; ensure would do nothing; size remembered from an earlier ensure"
        ),
        "CLI contract: status without --size uses the remembered size: {line}"
    );
    let value = status_json(home.path(), &[]);
    assert_eq!(value["size_source"], "remembered", "{value}");
    assert_eq!(value["size_bytes"], 4 * MIB, "{value}");
    assert_eq!(value["headroom_bytes"], 3 * MIB, "{value}");
    let out = sub("ensure", home.path(), &["--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_eq!(value["outcome"], "present", "not shrunk: {value}");
    assert_eq!(value["size_source"], "remembered", "{value}");
    assert_eq!(fs::metadata(&reserve).unwrap().len(), 4 * MIB);

    // …nor recreate it at the default after a release.
    assert_exit(&sub("release", home.path(), &[]), 0);
    assert!(record.exists(), "the record survives release");
    let out = sub("ensure", home.path(), &["--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_eq!(value["outcome"], "created", "{value}");
    assert_eq!(
        value["size_bytes"],
        4 * MIB,
        "CLI contract: ensure without --size recreates the remembered size: {value}"
    );
    assert_eq!(fs::metadata(&reserve).unwrap().len(), 4 * MIB);

    // An explicit --size replaces it.
    let out = sub("ensure", home.path(), &["--size", "2MiB", "--json"]);
    assert_exit(&out, 0);
    let value = json(&out);
    assert_eq!(value["outcome"], "shrunk", "{value}");
    assert_eq!(value["size_source"], "explicit", "{value}");
    let value = status_json(home.path(), &[]);
    assert_eq!(value["size_bytes"], 2 * MIB, "{value}");
    assert_eq!(
        value["headroom_bytes"],
        2 * MIB,
        "the headroom follows: {value}"
    );
    assert_eq!(value["ensure_would"], "nothing", "{value}");
    let text = fs::read_to_string(&record).unwrap();
    assert!(!text.contains("headroom="), "{text}");

    // status --size looks at another size without changing the record.
    let value = status_json(home.path(), &["--size", "1MiB"]);
    assert_eq!(value["size_source"], "explicit", "{value}");
    assert_eq!(value["ensure_would"], "shrink", "{value}");
    assert_eq!(fs::read_to_string(&record).unwrap(), text);
}

#[test]
fn a_damaged_record_is_an_error_naming_it_not_a_silent_default() {
    let home = home();
    let record = home.path().join(".reserve.conf");
    fs::write(&record, "size=lots\n").unwrap();
    let out = sub("ensure", home.path(), &[]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "read the remembered configuration `{}`",
            record.display()
        )),
        "{err}"
    );
    assert!(!reserve_of(&home).exists());
    // An explicit size still works, and replaces the record.
    assert_exit(&sub("ensure", home.path(), &["--size", "1MiB"]), 0);
    assert!(
        fs::read_to_string(&record)
            .unwrap()
            .contains("size=1048576\n")
    );
}

/// Backups: `ensure` marks the reserve no-dump (`chattr +d`) where the filesystem has inode
/// flags, so dump, and restic/borg/rsync when told, skip its bytes.
#[test]
fn ensure_marks_the_reserve_no_dump() {
    let home = home();
    let reserve = reserve_of(&home);
    assert_exit(&sub("ensure", home.path(), &["--size", "1MiB"]), 0);
    let Ok(out) = Command::new("lsattr").arg("-d").arg(&reserve).output() else {
        println!("skipped: no lsattr here");
        return;
    };
    if !out.status.success() {
        println!("skipped: this filesystem has no inode flags");
        return;
    }
    let attrs = String::from_utf8_lossy(&out.stdout);
    let flags = attrs.split_whitespace().next().unwrap_or("");
    assert!(flags.contains('d'), "the reserve must be no-dump: {attrs}");
}
