//! The real backend on real filesystems: the tests only a kernel can answer (allocation,
//! compression, shared extents, a full disk, a moving home), run on a dedicated small mount.
//!
//! Gated on `DISK_RESERVE_TEST_MOUNT=/path`: a mount point of its own (it must appear in
//! `/proc/self/mountinfo`) of at most 8 GiB, which these tests fill to the last byte.
//! Without it every test prints one line and passes. `scripts/mount-matrix.sh` loop-mounts
//! ext4, xfs, btrfs, btrfs `compress-force=zstd`, ext2, tmpfs and a read-only ext4 and
//! runs each test here on each of them, one test at a time (`--exact`,
//! `--test-threads=1`): tests that fill the disk must not overlap.
//!
//! Every test works in its own subdirectory of the mount and removes it when it is done,
//! so the next one starts on an empty mount.
//!
//! Environment:
//! - `DISK_RESERVE_TEST_MOUNT`: the mount.
//! - `DISK_RESERVE_TEST_READONLY=1`: the mount is read-only and was prepared, while it was
//!   still writable, with a complete reserve of [`READ_ONLY_SIZE`] in the home
//!   [`READ_ONLY_COMPLETE_HOME`], an empty home [`READ_ONLY_EMPTY_HOME`], and a filler
//!   taking the rest (less than [`READ_ONLY_FULL_BELOW`] left free). Only
//!   `read_only` runs there; it skips on writable mounts, and every other test skips on
//!   read-only ones.
//! - `DISK_RESERVE_TEST_FS`: the name used in the printed lines (default: the
//!   filesystem type).
//! - `DISK_RESERVE_TEST_SEED`: the seed of the random tests (default: fresh; printed, so
//!   a failure can be replayed).
//!
//! `moving_home` pauses the command between two chunks of its write path with the CLI's
//! test-only `DISK_RESERVE_TEST_PAUSE` (see `cli/src/command.rs`).
//!
//! `power_cut` shuts XFS down without flushing its log (`xfs_io -x -c shutdown`) and
//! remounts it, so it needs `xfs_io` and skips on every other filesystem.
//!
//! The truthful-space tests (section j) run where the filesystem has the feature and skip
//! elsewhere: `reflink_release` and `late_free` on xfs and btrfs, `cow_preallocation` on xfs, `snapshot` and `quota`
//! on btrfs (`quota` runs the command as `nobody` through `setpriv`, so every directory
//! above the mount must be searchable by others), `overlay` on ext4, `fuse_write_path`
//! on FUSE filesystems, `never_fits` everywhere writable.
//!
//! A test that cannot run prints a line starting with `DISK_RESERVE_SKIP` and passes; the
//! script reports it as "skip". `blocks_are_real` prints one `FREE_DROP` line per
//! strategy, which the script collects into its second table.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use disk_reserve::{
    Condition, Ensured, HostFs, Observed, OpenOptions as DirOpen, RealFs, Released, Reserve,
    ReserveConfig, SimFs, Strategy, pattern,
};

/// The reserve's file name in every home of these tests.
const RESERVE_NAME: &str = ".reserve";
/// The reserve's own record of its size and headroom, beside it.
const RECORD_NAME: &str = ".reserve.conf";
use serde_json::Value;

mod common;
use common::{BIN, Unmount, assert_exit, code, json, stderr, stdout, sub as run};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The largest mount these tests agree to fill: a guard against pointing them at a
/// real disk by mistake.
const MAX_TEST_MOUNT_BYTES: u64 = 8 << 30;

/// The read-only mount's preparation (done by the script while the mount is writable):
/// `disk-reserve ensure --home MOUNT/complete --size 16MiB`, and an empty `MOUNT/empty`.
const READ_ONLY_COMPLETE_HOME: &str = "complete";
/// See [`READ_ONLY_COMPLETE_HOME`].
const READ_ONLY_EMPTY_HOME: &str = "empty";
/// See [`READ_ONLY_COMPLETE_HOME`].
const READ_ONLY_SIZE: &str = "16MiB";
/// The read-only mount is prepared full (a filler takes all but this much, less than any
/// reserve and its headroom), so a space decision there would defer.
const READ_ONLY_FULL_BELOW: u64 = 8 << 20;

// ---------------------------------------------------------------------------------------
// The mount, homes on it, and the command line

/// The mount named by `DISK_RESERVE_TEST_MOUNT`.
struct TestMount {
    root: PathBuf,
    /// Name for printed lines: `DISK_RESERVE_TEST_FS` or the filesystem type.
    fs: String,
}

/// What a test needs from the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Writable,
    ReadOnly,
}

/// Prints the line the script reads as "skip".
fn skip(test: &str, reason: &str) {
    println!("DISK_RESERVE_SKIP {test}: {reason}");
}

/// The test mount, or `None` (after one printed line) when the test does not run here.
/// Panics when the variable names something that is not a small mount point of its own:
/// these tests fill the filesystem they are given.
fn test_mount(test: &str, needs: Needs) -> Option<TestMount> {
    let Some(root) = std::env::var_os("DISK_RESERVE_TEST_MOUNT") else {
        skip(
            test,
            "DISK_RESERVE_TEST_MOUNT is not set (a dedicated small mount; scripts/mount-matrix.sh sets it)",
        );
        return None;
    };
    let root =
        fs::canonicalize(&root).unwrap_or_else(|e| panic!("DISK_RESERVE_TEST_MOUNT={root:?}: {e}"));
    let (fs_type, mounted_read_only) = mount_entry(&root).unwrap_or_else(|| {
        panic!(
            "DISK_RESERVE_TEST_MOUNT={}: not a mount point; refusing to fill it",
            root.display()
        )
    });
    let total = free_and_total(&root).1;
    assert!(
        total <= MAX_TEST_MOUNT_BYTES,
        "DISK_RESERVE_TEST_MOUNT={}: {total} bytes is more than a dedicated small test mount ({MAX_TEST_MOUNT_BYTES}); refusing to fill it",
        root.display()
    );
    let said_read_only = std::env::var_os("DISK_RESERVE_TEST_READONLY").is_some_and(|v| v == "1");
    assert_eq!(
        said_read_only,
        mounted_read_only,
        "DISK_RESERVE_TEST_READONLY and the mount options of {} disagree",
        root.display()
    );
    let fs = std::env::var("DISK_RESERVE_TEST_FS").unwrap_or(fs_type);
    match (needs, mounted_read_only) {
        (Needs::Writable, true) => {
            skip(test, &format!("{fs} at {} is read-only", root.display()));
            None
        }
        (Needs::ReadOnly, false) => {
            skip(
                test,
                &format!(
                    "{fs} at {} is writable; this test needs a read-only mount",
                    root.display()
                ),
            );
            None
        }
        _ => Some(TestMount { root, fs }),
    }
}

/// The entry in effect for one mount point in `/proc/self/mountinfo`.
struct MountInfo {
    /// The device (or `tmpfs`…) mounted there.
    source: String,
    fs_type: String,
    /// Per-mount options (`rw,relatime`).
    options: String,
    /// The filesystem's own options (`attr2,inode64,…`).
    super_options: String,
}

/// The entry of `/proc/self/mountinfo` for the mount point `path` (the last entry for a
/// mount point is the one in effect).
fn mount_info(path: &Path) -> Option<MountInfo> {
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in table.lines() {
        let Some((fields, super_fields)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = fields.split(' ').collect();
        let (Some(mount_point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        if Path::new(&unescape_mountinfo(mount_point)) == path {
            let mut super_fields = super_fields.split(' ');
            let mut next = || super_fields.next().unwrap_or("").to_owned();
            let (fs_type, source, super_options) = (next(), next(), next());
            found = Some(MountInfo {
                source: unescape_mountinfo(&source),
                fs_type,
                options: (*options).to_owned(),
                super_options,
            });
        }
    }
    found
}

/// The filesystem type of the mount at `path` and whether it is mounted read-only.
fn mount_entry(path: &Path) -> Option<(String, bool)> {
    let info = mount_info(path)?;
    let read_only = info.options.split(',').any(|o| o == "ro");
    Some((info.fs_type, read_only))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape_mountinfo(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn utf8(path: &Path) -> &Utf8Path {
    Utf8Path::from_path(path).expect("test paths are UTF-8")
}

/// Free and total bytes of the filesystem holding `path`, through the library.
fn free_and_total(path: &Path) -> (u64, u64) {
    let space = RealFs::new()
        .open_dir(utf8(path))
        .and_then(|dir| dir.space())
        .expect("statvfs");
    (space.free_bytes, space.total_bytes)
}

fn free_bytes(path: &Path) -> u64 {
    free_and_total(path).0
}

/// Commits the filesystem (`sync -f`) and waits until its free space stops moving, so the
/// count is settled: btrfs hands freed extents back at a transaction commit, and XFS frees
/// an unlinked file's blocks in a background worker that `statvfs` only starts.
fn settle(path: &Path) {
    let status = Command::new("sync")
        .arg("-f")
        .arg(path)
        .status()
        .expect("run sync -f");
    assert!(status.success(), "sync -f {}", path.display());
    let mut last = free_bytes(path);
    for _ in 0..200 {
        thread::sleep(Duration::from_millis(5));
        let now = free_bytes(path);
        if now == last {
            return;
        }
        last = now;
    }
}

/// A test's own directory on the mount, removed (with everything in it) when dropped.
struct Home {
    path: PathBuf,
    mount: PathBuf,
}

impl Home {
    fn new(mount: &TestMount, name: &str) -> Home {
        let path = mount.root.join(name);
        if path.exists() {
            fs::remove_dir_all(&path).expect("remove a leftover home");
        }
        fs::create_dir(&path).expect("create the test home");
        Home {
            path,
            mount: mount.root.clone(),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        settle(&self.mount);
    }
}

/// `(length, allocated bytes)` of the file at `path`, `None` when nothing is there.
fn len_and_allocated(path: &Path) -> Option<(u64, u64)> {
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            assert!(meta.is_file(), "{} is a regular file", path.display());
            Some((meta.len(), meta.blocks() * 512))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => panic!("lstat {}: {e}", path.display()),
    }
}

/// The reserve is there, exactly `size` long and really allocated.
#[track_caller]
fn assert_complete(reserve: &Path, size: u64) {
    let (len, allocated) = len_and_allocated(reserve).expect("the reserve exists");
    assert_eq!(len, size, "the reserve is exactly the size");
    assert!(
        allocated >= size,
        "the reserve is really allocated: {allocated} of {size} bytes"
    );
}

/// Nothing in `home` but the reserve: no temporary or stray files.
#[track_caller]
fn assert_only_reserve(home: &Path) {
    let names: Vec<String> = fs::read_dir(home)
        .expect("read the home")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".reserve" && name != RECORD_NAME)
        .collect();
    assert!(names.is_empty(), "stray files in the home: {names:?}");
}

/// A seeded generator for the random tests: SplitMix64 (the generator the fill pattern
/// draws its keys from), one 64-bit word per call.
struct Rng {
    state: u64,
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `DISK_RESERVE_TEST_SEED`, or a fresh seed; printed either way.
fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("DISK_RESERVE_TEST_SEED") {
        Ok(text) => text.parse().expect("DISK_RESERVE_TEST_SEED is a u64"),
        Err(_) => pattern::fresh_seed(),
    };
    println!("{test}: DISK_RESERVE_TEST_SEED={seed}");
    seed
}

/// `len` bytes nothing can compress (the library's pattern), so a filler really takes
/// its size on btrfs with `compress-force`.
fn incompressible(len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    pattern::fill(&mut buf, 0x5eed, 0);
    buf
}

// ---------------------------------------------------------------------------------------
// a. The full host

/// Appends to `path` in chunks of 4 MiB, then 64 KiB, 4 KiB and 1 byte, each until the
/// filesystem says `ENOSPC`, so no gap smaller than a big chunk is left; then fsyncs and
/// runs the cascade again until a whole pass writes nothing (delayed allocation may give
/// a little back at writeback). Returns the bytes written.
fn fill_to_the_last_byte(path: &Path) -> u64 {
    let buf = incompressible(4 * MIB);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the filler");
    let mut total = 0;
    for _pass in 0..8 {
        let mut this_pass = 0;
        for chunk in [4 * MIB, 64 * KIB, 4 * KIB, 1] {
            loop {
                match file.write(&buf[..chunk as usize]) {
                    Ok(0) => break,
                    Ok(n) => this_pass += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        file.sync_all().expect("fsync the filler");
        total += this_pass;
        if this_pass == 0 {
            return total;
        }
    }
    panic!("{} still takes writes after 8 passes", path.display());
}

/// A write probe: a new file in `dir` with one byte, written and fsynced (the cheapest
/// proof that the filesystem still takes a write). What it made is removed when it fails.
fn probe_write(dir: &Path) -> io::Result<()> {
    let path = dir.join("probe");
    let result = File::create(&path).and_then(|mut file| {
        file.write_all(b"x")?;
        file.sync_all()
    });
    if result.is_err() {
        let _ = fs::remove_file(&path);
    }
    result
}

/// a. The decisive test of a reserve: with the reserve in place, fill every byte; a 1-byte
/// write fails with `ENOSPC`; `release` gives the room back and the same write succeeds;
/// `ensure` then defers (exit 75) rather than take it again; once the filler is gone,
/// `ensure` lays the reserve down again.
#[test]
fn full_host() {
    let Some(mount) = test_mount("full_host", Needs::Writable) else {
        return;
    };
    let home = Home::new(&mount, "full_host");
    let h = home.path();
    let reserve = h.join(".reserve");

    let out = run("ensure", h, &["--json"]);
    assert_exit(&out, 0);
    let created = json(&out);
    assert_eq!(created["outcome"], "created", "{created}");
    let size = created["size_bytes"].as_u64().unwrap();
    assert_complete(&reserve, size);

    let filler = h.join("filler");
    let filled = fill_to_the_last_byte(&filler);
    let full = probe_write(h).expect_err("the disk is full: a 1-byte write must fail");
    assert_eq!(
        full.raw_os_error(),
        Some(libc::ENOSPC),
        "the full disk refuses the probe with ENOSPC, not {full}"
    );
    let free_when_full = free_bytes(h);

    let out = run("release", h, &["--json"]);
    assert_exit(&out, 0);
    let released = json(&out);
    assert_eq!(released["outcome"], "released", "{released}");
    assert!(
        released["freed_bytes"].as_u64().unwrap() >= size,
        "release frees the whole reserve: {released}"
    );
    probe_write(h).expect("after release the same 1-byte write succeeds");

    let out = run("ensure", h, &["--json"]);
    assert_exit(&out, 75);
    let deferred = json(&out);
    assert_eq!(deferred["outcome"], "deferred", "{deferred}");
    assert!(
        !reserve.exists(),
        "a deferred ensure takes nothing back from the operator"
    );

    fs::remove_file(&filler).unwrap();
    settle(&mount.root);
    let out = run("ensure", h, &["--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["outcome"], "created", "{}", stdout(&out));
    assert_complete(&reserve, size);
    println!(
        "full_host fs={}: reserve {size} B; filler took {filled} B; free when full {free_when_full} B; probe refused with ENOSPC, accepted after release; ensure deferred (75) then created again",
        mount.fs
    );
}

// ---------------------------------------------------------------------------------------
// b. The blocks are real

/// b. After `ensure`, `statvfs` free space has dropped by at least 95% of the size (and
/// by no more than 105%: the headroom counts on it), with each strategy — on btrfs `compress-force=zstd` too, where zeros would take almost
/// nothing (the zeros line printed for comparison is not asserted). `release` gives the
/// bytes back. A filesystem without `fallocate` (ext2) must refuse `--strategy fallocate`
/// cleanly; `auto` falls back to writing there.
#[test]
fn blocks_are_real() {
    const SIZE: u64 = 128 * MIB;
    let Some(mount) = test_mount("blocks_are_real", Needs::Writable) else {
        return;
    };
    for strategy in ["fallocate", "write", "auto"] {
        let home = Home::new(&mount, &format!("blocks_are_real-{strategy}"));
        let h = home.path();
        let reserve = h.join(".reserve");
        settle(&mount.root);
        let before = free_bytes(h);
        let out = run(
            "ensure",
            h,
            &["--size", "128MiB", "--strategy", strategy, "--json"],
        );
        if strategy == "fallocate"
            && code(&out) == 1
            && stderr(&out).contains("Operation not supported")
        {
            assert!(
                !reserve.exists(),
                "a refused fallocate leaves nothing behind"
            );
            println!(
                "FREE_DROP fs={} strategy=fallocate size={SIZE} drop=unsupported",
                mount.fs
            );
            continue;
        }
        assert_exit(&out, 0);
        assert_eq!(json(&out)["outcome"], "created", "{}", stdout(&out));
        settle(&mount.root);
        let after = free_bytes(h);
        let dropped = before.saturating_sub(after);
        println!(
            "FREE_DROP fs={} strategy={strategy} size={SIZE} drop={dropped} pct={:.1}",
            mount.fs,
            dropped as f64 * 100.0 / SIZE as f64
        );
        assert!(
            dropped * 100 >= SIZE * 95,
            "rules 1 and 3: --strategy {strategy} must take real, incompressible blocks: free dropped by {dropped} of {SIZE} bytes"
        );
        assert!(
            dropped * 100 <= SIZE * 105,
            "rule 4: --strategy {strategy} must take no more than the size (5% for metadata): free dropped by {dropped} for {SIZE} bytes"
        );

        let out = run("release", h, &["--json"]);
        assert_exit(&out, 0);
        settle(&mount.root);
        let back = free_bytes(h).saturating_sub(after);
        assert!(
            back * 100 >= SIZE * 95,
            "rule 8: release gives the bytes back: free rose by {back} of {SIZE} bytes"
        );
    }

    // For comparison only: what the same number of zero bytes takes.
    let home = Home::new(&mount, "blocks_are_real-zeros");
    settle(&mount.root);
    let before = free_bytes(home.path());
    let mut file = File::create(home.path().join("zeros")).unwrap();
    let zeros = vec![0u8; MIB as usize];
    for _ in 0..SIZE / MIB {
        file.write_all(&zeros).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    settle(&mount.root);
    let dropped = before.saturating_sub(free_bytes(home.path()));
    println!(
        "FREE_DROP fs={} strategy=zeros-for-comparison size={SIZE} drop={dropped} pct={:.1}",
        mount.fs,
        dropped as f64 * 100.0 / SIZE as f64
    );
}

// ---------------------------------------------------------------------------------------
// c. Processes

/// c. Eight workers, each running the command line in a loop — `ensure`, `release` or
/// `status` at random — on one home for about ten seconds: every exit is 0 (75 for a
/// deferred `ensure`), every stdout one JSON object, and afterwards nothing is in the
/// home but the reserve, which is absent or exactly complete (rule 10).
#[test]
fn processes() {
    const WORKERS: u64 = 8;
    const RUN_FOR: Duration = Duration::from_secs(10);
    const SIZE: u64 = 16 * MIB;
    let Some(mount) = test_mount("processes", Needs::Writable) else {
        return;
    };
    let seed = test_seed("processes");
    let home = Home::new(&mount, "processes");
    let deadline = Instant::now() + RUN_FOR;
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let h = home.path().to_path_buf();
            thread::spawn(move || -> Result<BTreeMap<String, u64>, String> {
                let mut rng = Rng::new(seed ^ worker);
                let mut outcomes = BTreeMap::new();
                while Instant::now() < deadline {
                    let (subcommand, extra): (&str, &[&str]) = match rng.below(3) {
                        0 => ("ensure", &["--size", "16MiB", "--json"]),
                        1 => ("release", &["--json"]),
                        _ => ("status", &["--size", "16MiB", "--json"]),
                    };
                    let out = run(subcommand, &h, extra);
                    let allowed = code(&out) == 0 || (subcommand == "ensure" && code(&out) == 75);
                    if !allowed {
                        return Err(format!(
                            "{subcommand} exited {:?}\n--- stdout\n{}--- stderr\n{}",
                            out.status,
                            stdout(&out),
                            stderr(&out)
                        ));
                    }
                    let value: Value = serde_json::from_str(stdout(&out).trim()).map_err(|e| {
                        format!("{subcommand}: stdout is not JSON ({e}): {}", stdout(&out))
                    })?;
                    let outcome = value["outcome"].as_str().unwrap_or("?").to_owned();
                    *outcomes
                        .entry(format!("{subcommand}:{outcome}"))
                        .or_insert(0) += 1;
                }
                Ok(outcomes)
            })
        })
        .collect();
    let mut outcomes = BTreeMap::new();
    for worker in workers {
        let counts = worker
            .join()
            .expect("worker thread")
            .unwrap_or_else(|e| panic!("{e}"));
        for (outcome, n) in counts {
            *outcomes.entry(outcome).or_insert(0u64) += n;
        }
    }
    assert_only_reserve(home.path());
    let reserve = home.path().join(".reserve");
    if reserve.exists() {
        assert_complete(&reserve, SIZE);
    }
    let runs: u64 = outcomes.values().sum();
    assert!(
        runs >= WORKERS,
        "every worker ran at least once: {outcomes:?}"
    );
    println!(
        "processes fs={}: {runs} runs in {RUN_FOR:?}: {outcomes:?}",
        mount.fs
    );
}

// ---------------------------------------------------------------------------------------
// d. kill -9

/// d. `ensure --strategy write` of a 256 MiB reserve, killed with SIGKILL at random
/// moments 20 times: after every kill nothing is in the home but the reserve (absent or
/// no longer than the size), and the next `ensure` that is let finish completes it.
///
/// One uninterrupted run first measures how long the whole write takes here. Then, in
/// rounds: a fresh `ensure` and up to three more on what the previous one left, each
/// killed at a uniformly random moment of the time the rest of its write should take
/// (a run that finishes first has completed the reserve and ends the round early); then
/// an `ensure` that is not killed must complete the reserve, and `release` starts the
/// next round from nothing.
#[test]
fn kill_9() {
    const SIZE: u64 = 256 * MIB;
    const KILLS: usize = 20;
    const KILLS_PER_ROUND: usize = 4;
    const ARGS: &[&str] = &[
        "--size",
        "256MiB",
        "--headroom",
        "32MiB",
        "--strategy",
        "write",
        "--json",
    ];
    let Some(mount) = test_mount("kill_9", Needs::Writable) else {
        return;
    };
    let seed = test_seed("kill_9");
    let mut rng = Rng::new(seed);
    let home = Home::new(&mount, "kill_9");
    let h = home.path();
    let reserve = h.join(".reserve");
    let free = free_bytes(h);
    assert!(
        free >= SIZE + 32 * MIB,
        "the mount is too small for a 256 MiB reserve and 32 MiB of headroom: {free} bytes free"
    );

    let started = Instant::now();
    let out = run("ensure", h, ARGS);
    let whole_write = started.elapsed();
    assert_exit(&out, 0);
    assert_complete(&reserve, SIZE);
    assert_exit(&run("release", h, &[]), 0);
    settle(&mount.root);

    let mut kills = 0;
    let mut rounds = 0;
    let mut left: BTreeMap<&str, u32> = BTreeMap::new();
    while kills < KILLS {
        rounds += 1;
        assert!(rounds <= 4 * KILLS, "too many rounds for {KILLS} kills");
        for _ in 0..KILLS_PER_ROUND {
            let done = len_and_allocated(&reserve).map_or(0, |(len, _)| len);
            let rest = whole_write.mul_f64(SIZE.saturating_sub(done) as f64 / SIZE as f64);
            let mut child = Command::new(BIN)
                .arg("ensure")
                .arg("--home")
                .arg(h)
                .args(ARGS)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn disk-reserve");
            thread::sleep(rest.mul_f64(rng.unit()));
            child.kill().expect("SIGKILL");
            let status = child.wait().expect("reap");
            if status.signal() != Some(libc::SIGKILL) {
                assert!(
                    status.success(),
                    "an ensure that was not killed succeeds: {status}"
                );
                assert_complete(&reserve, SIZE);
                break;
            }
            kills += 1;
            assert_only_reserve(h);
            let state = match len_and_allocated(&reserve) {
                None => "absent",
                Some((len, _)) if len < SIZE => "partial",
                Some((len, _)) => {
                    assert_eq!(
                        len, SIZE,
                        "a killed ensure never makes the file longer than the size"
                    );
                    "full length"
                }
            };
            *left.entry(state).or_insert(0) += 1;
            if kills == KILLS {
                break;
            }
        }
        let out = run("ensure", h, ARGS);
        assert_exit(&out, 0);
        let outcome = json(&out)["outcome"].as_str().unwrap().to_owned();
        assert!(
            ["created", "topped_up", "present"].contains(&outcome.as_str()),
            "the next ensure completes the reserve: {outcome}"
        );
        assert_complete(&reserve, SIZE);
        assert_only_reserve(h);
        assert_exit(&run("release", h, &[]), 0);
        // btrfs shows released extents as free only after a commit: without it, the next
        // round's ensure could rightly defer.
        settle(&mount.root);
    }
    println!(
        "kill_9 fs={}: {kills} kills in {rounds} rounds (whole write {whole_write:.2?}); left after a kill: {left:?}",
        mount.fs
    );
}

// ---------------------------------------------------------------------------------------
// e. Read-only

/// e. On a full read-only mount: `ensure` where there is no reserve (human and `--json`)
/// and `release` of a complete one fail with exit 1 and a read-only error — never a
/// deferral (75), although the mount is full — changing nothing; `ensure` of the
/// complete reserve is a no-op that succeeds (it needs no write, no lock, no `statvfs`).
#[test]
fn read_only() {
    let Some(mount) = test_mount("read_only", Needs::ReadOnly) else {
        return;
    };
    let complete = mount.root.join(READ_ONLY_COMPLETE_HOME);
    let empty = mount.root.join(READ_ONLY_EMPTY_HOME);
    let reserve = complete.join(".reserve");
    let prepared = len_and_allocated(&reserve);
    assert!(
        empty.is_dir() && prepared.is_some(),
        "the read-only mount was not prepared: a complete {READ_ONLY_SIZE} reserve in {} and an empty {} (see the module docs)",
        complete.display(),
        empty.display()
    );

    let free = statvfs_free(&mount.root);
    assert!(
        free < READ_ONLY_FULL_BELOW,
        "the read-only mount was not prepared full: {free} bytes free (see the module docs)"
    );

    // Rule 11: read-only is checked before any space decision, so a full read-only
    // filesystem is an error, never "deferred, run ensure again once space is freed".
    let out = run("ensure", &empty, &["--size", READ_ONLY_SIZE]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("read-only"),
        "ensure names the read-only filesystem: {}",
        stderr(&out)
    );
    let out = run("ensure", &empty, &["--size", READ_ONLY_SIZE, "--json"]);
    assert_exit(&out, 1);
    assert_eq!(
        json(&out)["outcome"],
        "error",
        "rule 11: a full read-only filesystem is an error, not a deferral: {}",
        stdout(&out)
    );
    assert!(!empty.join(".reserve").exists());

    let out = run("release", &complete, &[]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("read-only"),
        "release names the read-only filesystem: {}",
        stderr(&out)
    );
    assert_eq!(
        len_and_allocated(&reserve),
        prepared,
        "release changed nothing"
    );

    let out = run("ensure", &complete, &["--size", READ_ONLY_SIZE, "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["outcome"], "present", "{}", stdout(&out));
    let out = run("status", &complete, &["--size", READ_ONLY_SIZE]);
    assert_exit(&out, 0);
    println!(
        "read_only fs={}: ensure and release refused with a read-only error; a complete reserve is present",
        mount.fs
    );
}

// ---------------------------------------------------------------------------------------
// f. The simulator against the kernel

/// Reserve size in the differential test: small, so sequences are quick.
const DIFF_SIZE: u64 = 4 * MIB;
/// Free space the differential test leaves at the start of each sequence (the rest is
/// ballast), so the headroom boundary is within reach of a few writes.
const DIFF_START_FREE: u64 = 8 * DIFF_SIZE;
/// How far the kernel's allocated bytes of the reserve (`st_blocks * 512`) may be above
/// the simulator's: the indirect blocks ext2 counts in `st_blocks` (12 KiB for 4 MiB).
/// XFS adds its copy-on-write preallocation ([`XFS_COW_WINDOW_BYTES`]).
const ALLOCATED_TOLERANCE_BYTES: u64 = 64 * KIB;
/// XFS's default `cowextsize`: 32 blocks. A write into a block shared with a reflink copy
/// (or the zeroing of a truncated file's last block, when it is shared) reserves the rest
/// of the block's aligned 32-block window in the file's copy-on-write fork; `st_blocks`
/// and `statvfs` count the reservation until it is written, truncated away or reclaimed
/// (minutes later, or at `ENOSPC`). `SimFs` does not model it (`cow_preallocation`
/// measures it).
const XFS_COW_WINDOW_BYTES: u64 = 32 * 4 * KIB;
/// External writes are never sized within this distance of the free space: where exactly
/// such a write meets `ENOSPC` depends on metadata the simulator does not model (btrfs
/// refuses data writes with about 1.7 MiB still counted free on a 512 MiB filesystem).
const WRITE_MARGIN_BYTES: u64 = 4 * MIB;
const RANDOM_SEQUENCES: u64 = 50;
const STEPS_PER_SEQUENCE: u64 = 12;

/// How many bytes an external write writes, given the free space before it.
#[derive(Debug, Clone, Copy)]
enum Amount {
    Bytes(u64),
    LeaveFree(u64),
    MoreThanFree(u64),
}

/// One step of a differential sequence.
#[derive(Debug, Clone, Copy)]
enum Op {
    Ensure,
    Release,
    /// Another writer writes a new file.
    ExternalWrite(Amount),
    /// Another writer deletes one of its files (by index, modulo how many there are).
    ExternalDelete(u64),
    /// The reserve is truncated (or extended with a hole) to this length.
    Truncate(u64),
    /// Whatever is at the reserve path is replaced by a sparse file of this length.
    PlantSparse(u64),
    /// Whatever is at the reserve path is replaced by a second name of one of the other
    /// writer's files (by index): `ln file home/.reserve`, a hard-link backup.
    LinkExternal(u64),
    /// A backup tool copies the reserve by reflink outside the home (`FICLONE`; xfs,
    /// btrfs): the copy shares its blocks.
    ReflinkCopy,
    /// A read-only snapshot of the subvolume holding the home and the other writer's files
    /// (btrfs): it shares their blocks.
    Snapshot,
    /// Every reflink copy and snapshot is deleted (and, on btrfs, cleaned).
    DropCopies,
    /// Another writer deletes one of its files and `ensure` runs at once, before the
    /// kernel shows the free (xfs, btrfs: late frees; the simulator with late frees on).
    DeleteThenEnsure(u64),
}

/// Which of the sharing and late-free steps the filesystem has.
#[derive(Debug, Clone, Copy, Default)]
struct Sharing {
    /// `FICLONE` (xfs, btrfs).
    reflink: bool,
    /// Subvolume snapshots (btrfs); the home and the other writer's files are in one
    /// subvolume.
    snapshot: bool,
    /// Frees that `statvfs` shows late (xfs, btrfs).
    late_frees: bool,
    /// Whether `syncfs` shows them (btrfs) or leaves them to a later `statvfs` (xfs):
    /// [`SimFs::set_sync_fs_shows_late_frees`].
    sync_fs_shows_late_frees: bool,
    /// Growing a file whose end is inside a block writes that block (btrfs):
    /// [`SimFs::set_eof_block_zeroing`].
    zeroes_eof_block: bool,
    /// Copy-on-write preallocation the kernel counts in a file's allocated bytes and the
    /// simulator does not (xfs: [`XFS_COW_WINDOW_BYTES`]).
    cow_prealloc_bytes: u64,
}

impl Sharing {
    fn of(fs_type: &str) -> Sharing {
        match fs_type {
            "xfs" => Sharing {
                reflink: true,
                snapshot: false,
                late_frees: true,
                sync_fs_shows_late_frees: false,
                zeroes_eof_block: false,
                cow_prealloc_bytes: XFS_COW_WINDOW_BYTES,
            },
            "btrfs" => Sharing {
                reflink: true,
                snapshot: true,
                late_frees: true,
                sync_fs_shows_late_frees: true,
                zeroes_eof_block: true,
                cow_prealloc_bytes: 0,
            },
            _ => Sharing::default(),
        }
    }

    fn any(self) -> bool {
        self.reflink || self.snapshot || self.late_frees
    }

    /// How far the kernel's allocated bytes may be above the simulator's.
    fn allocated_tolerance(self) -> u64 {
        ALLOCATED_TOLERANCE_BYTES + self.cow_prealloc_bytes
    }
}

/// `FICLONE`: makes the new file `to` a reflink copy of `from`.
fn ficlone(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let source = File::open(from)?;
    let copy = OpenOptions::new().write(true).create_new(true).open(to)?;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its argument and reads no memory of ours.
    let rc = unsafe { libc::ioctl(copy.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        let error = io::Error::last_os_error();
        drop(copy);
        let _ = fs::remove_file(to);
        Err(error)
    }
}

/// What a step did, in terms both backends can give: the outcome's name and the bytes it
/// reported (allocated, freed or needed).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    kind: String,
    bytes: Option<u64>,
}

impl Outcome {
    fn named(kind: &str) -> Outcome {
        Outcome {
            kind: kind.to_owned(),
            bytes: None,
        }
    }

    fn error(error: &disk_reserve::Error) -> Outcome {
        let errno = error.io_error().and_then(io::Error::raw_os_error);
        Outcome::named(&format!("error(errno {errno:?}: {error})"))
    }

    fn io(result: io::Result<()>) -> Outcome {
        match result {
            Ok(()) => Outcome::named("ok"),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Outcome::named("enospc"),
            Err(e) => panic!("an external operation failed: {e}"),
        }
    }
}

fn ensured(result: disk_reserve::Result<Ensured>) -> Outcome {
    match result {
        Ok(outcome) => Outcome {
            kind: outcome.as_str().to_owned(),
            bytes: Some(match outcome {
                Ensured::Deferred { needed_bytes, .. } => needed_bytes,
                other => other.allocated_bytes().unwrap_or(0),
            }),
        },
        Err(error) => Outcome::error(&error),
    }
}

fn released(result: disk_reserve::Result<Released>) -> Outcome {
    match result {
        Ok(outcome) => Outcome {
            kind: outcome.as_str().to_owned(),
            bytes: match outcome {
                Released::Released {
                    releasable_bytes, ..
                } => Some(releasable_bytes),
                _ => None,
            },
        },
        Err(error) => Outcome::error(&error),
    }
}

/// The same home on the kernel and in a `SimFs` of the same capacity.
struct Differential {
    mount: PathBuf,
    real: Reserve<RealFs>,
    sim: Reserve<SimFs>,
    sim_fs: SimFs,
    other: Utf8PathBuf,
    externals: Vec<Utf8PathBuf>,
    next_external: u64,
    noise: Vec<u8>,
    /// Which sharing steps this filesystem has.
    sharing: Sharing,
    /// Whether the running sequence may copy the reserve by reflink (on xfs only with the
    /// write strategy: XFS does not share unwritten extents, the simulator shares every
    /// allocated block).
    reflink_now: bool,
    /// The reflink copies (same path on both sides).
    copies: Vec<Utf8PathBuf>,
    /// The kernel's snapshots of the home.
    snapshots: Vec<PathBuf>,
    /// Where snapshots go.
    snapshot_dir: PathBuf,
    next_copy: u64,
    /// Largest gaps seen between the kernel and the simulator.
    /// The largest difference between the kernel's free space and the simulator's after a
    /// step, and where: reported, not asserted (see [`differential`]).
    worst_free_gap: (u64, String),
    worst_allocated_gap: (u64, String),
}

impl Drop for Differential {
    /// A failed step leaves snapshots behind, which `rm -r` cannot remove.
    fn drop(&mut self) {
        for snapshot in self.snapshots.drain(..) {
            let _ = Command::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(&snapshot)
                .stdout(Stdio::null())
                .status();
        }
    }
}

impl Differential {
    /// Both sides with an empty home and no external files. The simulator's capacity is
    /// the kernel's total; its free space is set from the kernel's before every step.
    fn new(
        mount: &Path,
        home: &Utf8Path,
        other: &Utf8Path,
        sharing: Sharing,
        snapshot_dir: &Path,
    ) -> Differential {
        let total = free_and_total(mount).1;
        let sim_fs = SimFs::with_home(total, home);
        sim_fs.mkdir_all(other).unwrap();
        sim_fs.set_late_frees(sharing.late_frees);
        sim_fs.set_sync_fs_shows_late_frees(sharing.sync_fs_shows_late_frees);
        sim_fs.set_eof_block_zeroing(sharing.zeroes_eof_block);
        let config = ReserveConfig::with_size_bytes(DIFF_SIZE);
        Differential {
            sharing,
            reflink_now: false,
            copies: Vec::new(),
            snapshots: Vec::new(),
            snapshot_dir: snapshot_dir.to_path_buf(),
            next_copy: 0,
            mount: mount.to_path_buf(),
            real: Reserve::new(RealFs::new(), home, config.clone()).unwrap(),
            sim: Reserve::new(sim_fs.clone(), home, config).unwrap(),
            sim_fs,
            other: other.to_owned(),
            externals: Vec::new(),
            next_external: 0,
            noise: incompressible(MIB),
            worst_free_gap: (0, String::new()),
            worst_allocated_gap: (0, String::new()),
        }
    }

    fn path(&self) -> &Utf8Path {
        self.real.path()
    }

    /// Back to an empty home and no external files, copies or snapshots, on both sides,
    /// with `strategy`.
    fn reset(&mut self, strategy: Strategy) {
        if self.real.probe().unwrap().is_some() {
            fs::remove_file(self.path()).unwrap();
        }
        for external in self.externals.drain(..) {
            fs::remove_file(&external).unwrap();
        }
        self.drop_copies_on_the_kernel();
        let home = self.real.home().to_owned();
        let total = self.sim_fs.capacity();
        self.sim_fs = SimFs::with_home(total, &home);
        self.sim_fs.mkdir_all(&self.other).unwrap();
        self.sim_fs.set_late_frees(self.sharing.late_frees);
        self.sim_fs
            .set_sync_fs_shows_late_frees(self.sharing.sync_fs_shows_late_frees);
        self.sim_fs
            .set_eof_block_zeroing(self.sharing.zeroes_eof_block);
        let config = ReserveConfig::with_size_bytes(DIFF_SIZE).strategy(strategy);
        self.real = Reserve::new(RealFs::new(), &home, config.clone()).unwrap();
        self.sim = Reserve::new(self.sim_fs.clone(), &home, config).unwrap();
        self.reflink_now =
            self.sharing.reflink && (strategy == Strategy::Write || self.sharing.snapshot);
        settle(&self.mount);
        self.sim_fs.set_free(free_bytes(&self.mount)).unwrap();
    }

    /// Deletes the kernel's reflink copies and snapshots, and waits for btrfs to clean the
    /// deleted subvolumes.
    fn drop_copies_on_the_kernel(&mut self) {
        for copy in self.copies.drain(..) {
            fs::remove_file(&copy).unwrap();
        }
        if !self.snapshots.is_empty() {
            // Committed (`-c`) and synced, the cleaner runs at once; without that,
            // `subvolume sync` waited for the next periodic commit (30 s).
            for snapshot in self.snapshots.drain(..) {
                sh("btrfs", &["subvolume", "delete", "-c", path_str(&snapshot)]);
            }
            settle(&self.mount);
            sh(
                "timeout",
                &["120", "btrfs", "subvolume", "sync", path_str(&self.mount)],
            );
        }
    }

    /// Settles the kernel's free space, checks the simulator is within tolerance of it,
    /// and sets the simulator's other writers so both start the step from the same number.
    fn sync_free(&mut self, context: &dyn Fn() -> String) -> u64 {
        settle(&self.mount);
        let real_free = free_bytes(&self.mount);
        let gap = real_free.abs_diff(self.sim_fs.free_bytes());
        if gap > self.worst_free_gap.0 {
            self.worst_free_gap = (gap, context());
        }
        self.sim_fs.set_free(real_free).unwrap_or_else(|e| {
            panic!(
                "the simulator's files take more than the kernel's whole used space ({e})\n{}",
                context()
            )
        });
        real_free
    }

    /// Applies `op` to both sides; returns both outcomes.
    fn apply(&mut self, op: Op, free: u64) -> (Outcome, Outcome) {
        match op {
            Op::Ensure => (ensured(self.real.ensure()), ensured(self.sim.ensure())),
            Op::Release => (released(self.real.release()), released(self.sim.release())),
            Op::ExternalWrite(amount) => {
                let mut bytes = match amount {
                    Amount::Bytes(n) => n,
                    Amount::LeaveFree(n) => free.saturating_sub(n),
                    Amount::MoreThanFree(n) => free + n,
                };
                if bytes.abs_diff(free) < WRITE_MARGIN_BYTES {
                    bytes = free + WRITE_MARGIN_BYTES;
                }
                let path = self.other.join(format!("external-{}", self.next_external));
                self.next_external += 1;
                let real = Outcome::io(self.write_external(&path, bytes));
                if real.kind == "enospc" {
                    fs::remove_file(&path).unwrap();
                }
                let sim = Outcome::io(self.sim_fs.write_file(&path, bytes));
                if real.kind == "ok" && sim.kind == "ok" {
                    self.externals.push(path);
                }
                (real, sim)
            }
            Op::ExternalDelete(index) => {
                if self.externals.is_empty() {
                    return (Outcome::named("no-file"), Outcome::named("no-file"));
                }
                let at = (index % self.externals.len() as u64) as usize;
                let path = self.externals.remove(at);
                let real = Outcome::io(fs::remove_file(&path));
                let sim = Outcome::io(self.sim_fs.remove(&path));
                (real, sim)
            }
            Op::Truncate(len) => {
                let real = match self.real.probe().unwrap() {
                    None => Outcome::named("no-file"),
                    Some(_) => Outcome::io(
                        OpenOptions::new()
                            .write(true)
                            .open(self.path())
                            .and_then(|file| file.set_len(len)),
                    ),
                };
                let sim = match self.sim_fs.lookup(self.path()).unwrap() {
                    None => Outcome::named("no-file"),
                    Some(_) => Outcome::io(
                        self.sim_fs
                            .open_dir(self.real.home())
                            .and_then(|dir| dir.open_file(RESERVE_NAME, DirOpen::write()))
                            .and_then(|file| file.set_len(len)),
                    ),
                };
                (real, sim)
            }
            Op::PlantSparse(len) => {
                let path = self.path().to_owned();
                if self.real.probe().unwrap().is_some() {
                    fs::remove_file(&path).unwrap();
                }
                let real = Outcome::io(File::create(&path).and_then(|file| file.set_len(len)));
                if self.sim_fs.lookup(&path).unwrap().is_some() {
                    self.sim_fs.remove(&path).unwrap();
                }
                let sim = Outcome::io(self.sim_fs.write_sparse(&path, len));
                (real, sim)
            }
            Op::LinkExternal(index) => {
                if self.externals.is_empty() {
                    return (Outcome::named("no-file"), Outcome::named("no-file"));
                }
                let external =
                    self.externals[(index % self.externals.len() as u64) as usize].clone();
                let path = self.path().to_owned();
                if self.real.probe().unwrap().is_some() {
                    fs::remove_file(&path).unwrap();
                }
                let real = Outcome::io(fs::hard_link(&external, &path));
                if self.sim_fs.lookup(&path).unwrap().is_some() {
                    self.sim_fs.remove(&path).unwrap();
                }
                let sim = Outcome::io(self.sim_fs.hard_link(&external, &path));
                (real, sim)
            }
            Op::ReflinkCopy => {
                if !self.reflink_now {
                    return (Outcome::named("unsupported"), Outcome::named("unsupported"));
                }
                let path = self.path().to_owned();
                let regular = |probe: Option<disk_reserve::Probe>| {
                    probe.is_some_and(|p| p.kind == disk_reserve::FileKind::Regular)
                };
                let copy = self.other.join(format!("copy-{}", self.next_copy));
                self.next_copy += 1;
                let real = if regular(self.real.probe().unwrap()) {
                    Outcome::io(ficlone(path.as_std_path(), copy.as_std_path()))
                } else {
                    Outcome::named("no-file")
                };
                let sim = if regular(self.sim_fs.lookup(&path).unwrap()) {
                    Outcome::io(self.sim_fs.reflink(&path, &copy))
                } else {
                    Outcome::named("no-file")
                };
                if real.kind == "ok" && sim.kind == "ok" {
                    self.copies.push(copy);
                }
                (real, sim)
            }
            Op::Snapshot => {
                if !self.sharing.snapshot {
                    return (Outcome::named("unsupported"), Outcome::named("unsupported"));
                }
                let snapshot = self.snapshot_dir.join(format!("snap-{}", self.next_copy));
                self.next_copy += 1;
                let volume = self.other.parent().expect("the volume").as_str();
                sh(
                    "btrfs",
                    &["subvolume", "snapshot", "-r", volume, path_str(&snapshot)],
                );
                self.snapshots.push(snapshot);
                // The kernel snapshots the reserve and the other writer's files; the
                // simulator snapshots the same files (not the reflink copies: it would
                // count blocks both hold twice, and only the free space would drift).
                let path = self.path().to_owned();
                if let Some(probe) = self.sim_fs.lookup(&path).unwrap()
                    && probe.kind == disk_reserve::FileKind::Regular
                {
                    self.sim_fs.snapshot_file(&path).unwrap();
                }
                for external in &self.externals {
                    self.sim_fs.snapshot_file(external).unwrap();
                }
                (Outcome::named("ok"), Outcome::named("ok"))
            }
            Op::DropCopies => {
                for copy in &self.copies {
                    self.sim_fs.remove(copy).unwrap();
                }
                self.sim_fs.drop_snapshots();
                self.drop_copies_on_the_kernel();
                (Outcome::named("ok"), Outcome::named("ok"))
            }
            Op::DeleteThenEnsure(index) => {
                if self.externals.is_empty() {
                    return (Outcome::named("no-file"), Outcome::named("no-file"));
                }
                let at = (index % self.externals.len() as u64) as usize;
                let path = self.externals.remove(at);
                // No settling in between: what an operator's next command sees.
                fs::remove_file(&path).unwrap();
                let real = ensured(self.real.ensure());
                self.sim_fs.remove(&path).unwrap();
                let sim = ensured(self.sim.ensure());
                (real, sim)
            }
        }
    }

    /// Writes `bytes` of incompressible data to a new file at `path` and fsyncs it.
    fn write_external(&self, path: &Utf8Path, bytes: u64) -> io::Result<()> {
        let mut file = File::create(path)?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(self.noise.len() as u64) as usize;
            file.write_all(&self.noise[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    }

    /// Compares the reserve on both sides: the same condition and length, allocated
    /// bytes within the tolerance.
    fn compare_reserve(&mut self, context: &dyn Fn() -> String) {
        let real = Observed::from_probe(self.real.probe().unwrap());
        let sim = Observed::from_probe(self.sim_fs.lookup(self.path()).unwrap());
        let condition = |o: Observed| -> Condition { o.condition(DIFF_SIZE) };
        let len = |o: Observed| match o {
            Observed::Regular { len, .. } => Some(len),
            _ => None,
        };
        assert_eq!(
            (condition(real), len(real)),
            (condition(sim), len(sim)),
            "reserve state: kernel {real:?}, simulator {sim:?}\n{}",
            context()
        );
        let (real_allocated, sim_allocated) = (real.allocated_bytes(), sim.allocated_bytes());
        let gap = real_allocated.abs_diff(sim_allocated);
        if gap > self.worst_allocated_gap.0 {
            self.worst_allocated_gap = (gap, context());
        }
        let tolerance = self.sharing.allocated_tolerance();
        assert!(
            real_allocated >= sim_allocated && gap <= tolerance,
            "reserve allocated bytes: kernel {real_allocated}, simulator {sim_allocated} (tolerance +{tolerance})\n{}",
            context()
        );
    }

    /// Runs `ops` from an empty home, comparing both sides after every step.
    fn run_sequence(
        &mut self,
        name: &str,
        strategy: Strategy,
        ops: &[Op],
        outcomes: &mut BTreeMap<String, u64>,
    ) {
        self.reset(strategy);
        let mut history: Vec<String> = Vec::new();
        for (step, &op) in ops.iter().enumerate() {
            let context = |history: &[String]| {
                format!(
                    "sequence {name}, step {step}: {op:?}\nsteps so far:\n  {}",
                    history.join("\n  ")
                )
            };
            let free = self.sync_free(&|| context(&history));
            let (real, sim) = self.apply(op, free);
            history.push(format!(
                "{op:?} (free before {free}) -> kernel {real:?}, simulator {sim:?}"
            ));
            assert_eq!(real.kind, sim.kind, "outcome\n{}", context(&history));
            let bytes_gap = match (real.bytes, sim.bytes) {
                (Some(r), Some(s)) => r.abs_diff(s),
                (None, None) => 0,
                _ => u64::MAX,
            };
            assert!(
                bytes_gap <= self.sharing.allocated_tolerance(),
                "outcome bytes\n{}",
                context(&history)
            );
            self.compare_reserve(&|| context(&history));
            *outcomes
                .entry(format!("{op_name}:{}", real.kind, op_name = op_name(op)))
                .or_insert(0) += 1;
        }
        self.sync_free(&|| format!("sequence {name}, after the last step"));
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("-")
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Ensure => "ensure",
        Op::Release => "release",
        Op::ExternalWrite(_) => "external_write",
        Op::ExternalDelete(_) => "external_delete",
        Op::Truncate(_) => "truncate",
        Op::PlantSparse(_) => "plant_sparse",
        Op::LinkExternal(_) => "link_external",
        Op::ReflinkCopy => "reflink_copy",
        Op::Snapshot => "snapshot",
        Op::DropCopies => "drop_copies",
        Op::DeleteThenEnsure(_) => "delete_then_ensure",
    }
}

/// Shared blocks and late frees: a reflink copy then release (expects nothing back) and
/// ensure (replaces it), a snapshot then ensure and release, copies dropped, and an
/// external file deleted right before an ensure that needs its space.
fn sharing_sequence() -> Vec<Op> {
    let size = DIFF_SIZE;
    vec![
        Op::Ensure,
        Op::ReflinkCopy,
        Op::Release,
        Op::DropCopies,
        Op::Ensure,
        Op::ReflinkCopy,
        Op::Ensure,
        Op::Ensure,
        Op::Release,
        Op::DropCopies,
        Op::Ensure,
        Op::Snapshot,
        Op::Ensure,
        Op::Release,
        Op::Ensure,
        Op::Snapshot,
        Op::Release,
        Op::DropCopies,
        Op::ExternalWrite(Amount::LeaveFree(size + size / 2)),
        Op::Ensure,
        Op::DeleteThenEnsure(0),
        Op::Release,
        // A sparse file ending inside a block, grown: btrfs writes that block, so the
        // snapshot shares it and ensure replaces the file (found at random on
        // btrfs-zstd; the simulator left the hole and topped up).
        Op::PlantSparse(size / 2 + 1234),
        Op::Truncate(size - 4 * KIB),
        Op::Snapshot,
        Op::Ensure,
        Op::Release,
        Op::DropCopies,
        // A reflinked reserve truncated inside a block: XFS copies that block and
        // reserves the rest of its 32-block window, counted in `st_blocks` (found at
        // random on xfs: 19 blocks more than the simulator's).
        Op::Ensure,
        Op::ReflinkCopy,
        Op::Truncate(size - 182_437),
        Op::Ensure,
        Op::Release,
        Op::DropCopies,
    ]
}

/// A sequence through every outcome: create, present, release, defer at the headroom,
/// an external write meeting ENOSPC, top-ups of a truncated and of a sparse reserve,
/// shrinking an oversized one, a partial one deferred, and a re-creation.
fn fixed_sequence() -> Vec<Op> {
    let size = DIFF_SIZE;
    vec![
        Op::Ensure,
        Op::Ensure,
        Op::Release,
        Op::Release,
        Op::ExternalWrite(Amount::LeaveFree(size + size / 2)),
        Op::Ensure,
        Op::ExternalWrite(Amount::MoreThanFree(2 * MIB)),
        Op::ExternalDelete(0),
        Op::Ensure,
        Op::Truncate(size / 2),
        Op::Ensure,
        Op::Truncate(2 * size),
        Op::Ensure,
        Op::PlantSparse(size),
        Op::Ensure,
        Op::PlantSparse(3 * size),
        Op::Ensure,
        Op::Truncate(size / 4),
        Op::ExternalWrite(Amount::LeaveFree(size + size / 2)),
        Op::Ensure,
        Op::Release,
        Op::ExternalDelete(0),
        Op::Ensure,
        Op::Truncate(0),
        Op::Ensure,
    ]
}

/// A random operation; sizes are around the reserve's size, some of them not a whole
/// number of 4 KiB blocks.
fn random_op(rng: &mut Rng, sharing: Sharing) -> Op {
    let size = DIFF_SIZE;
    let blocks = |rng: &mut Rng, up_to: u64| rng.below(up_to / (4 * KIB) + 1) * 4 * KIB;
    let ragged = |rng: &mut Rng, up_to: u64| blocks(rng, up_to) + rng.below(4 * KIB);
    // The sharing steps only where the filesystem has them (elsewhere the sequences are
    // what they were).
    let kinds = if sharing.any() { 16 } else { 12 };
    match rng.below(kinds) {
        12 => Op::ReflinkCopy,
        13 if sharing.snapshot => Op::Snapshot,
        13 | 14 => Op::DeleteThenEnsure(rng.below(8)),
        15 => Op::DropCopies,
        0..=3 => Op::Ensure,
        4..=5 => Op::Release,
        6..=7 => Op::ExternalWrite(match rng.below(3) {
            0 => Amount::Bytes(1 + ragged(rng, 2 * size)),
            1 => Amount::LeaveFree(WRITE_MARGIN_BYTES + blocks(rng, 3 * size)),
            _ => Amount::MoreThanFree(WRITE_MARGIN_BYTES + blocks(rng, size)),
        }),
        8 => Op::ExternalDelete(rng.below(8)),
        9..=10 => Op::Truncate(match rng.below(5) {
            0 => 0,
            1 => size / 2,
            2 => size + MIB,
            3 => blocks(rng, 2 * size),
            _ => ragged(rng, 2 * size),
        }),
        11 if rng.below(2) == 0 => Op::LinkExternal(rng.below(8)),
        _ => Op::PlantSparse(match rng.below(4) {
            0 => size,
            1 => size / 2,
            2 => 2 * size,
            _ => ragged(rng, 2 * size),
        }),
    }
}

/// f. A fixed and 50 random sequences of `ensure`, `release`, external writes and
/// deletes, truncation and a planted sparse file, applied to the kernel and to a `SimFs`
/// of the same capacity, give the same outcomes and the same reserve after every step:
/// the same condition and length, allocated bytes within [`ALLOCATED_TOLERANCE_BYTES`],
/// and the same releasable bytes from `release`.
///
/// Where the filesystem has them, the sequences also copy the reserve by reflink
/// (`FICLONE` against [`SimFs::reflink`]; xfs, btrfs), snapshot the home's subvolume
/// (btrfs, against [`SimFs::snapshot_file`]), drop the copies and snapshots, and delete
/// an external file right before an `ensure` (late frees; the simulator's are on), from
/// a fixed sharing sequence (with both the write and the automatic strategy) and at
/// random. On xfs, reflink copies are made only of written reserves: XFS does not share
/// unwritten (fallocated) extents, and the simulator shares every allocated block.
///
/// The simulator's free space is set from the kernel's before each step, so both decide
/// from the same number. How far they drift apart within a step is printed, not asserted:
/// the kernel spends metadata the simulator does not model (ext2's indirect blocks,
/// btrfs' checksums and extent items), and btrfs keeps a truncated preallocated extent
/// whole until no byte of it is referenced, so its free space after a truncation is not
/// a function of the files' allocated bytes at all.
#[test]
fn differential() {
    let Some(mount) = test_mount("differential", Needs::Writable) else {
        return;
    };
    let seed = test_seed("differential");
    let mut rng = Rng::new(seed);
    let dir = Home::new(&mount, "differential");
    let sharing = Sharing::of(&fs_type(&mount));
    // On btrfs the home and the other writer's files are in one subvolume (a hard link
    // cannot cross subvolumes), which the snapshot step snapshots.
    let volume = utf8(dir.path()).join("volume");
    let mut cleanup = BtrfsCleanup::default();
    if sharing.snapshot {
        sh("btrfs", &["subvolume", "create", volume.as_str()]);
        cleanup.subvolumes.push(volume.clone().into_std_path_buf());
    } else {
        fs::create_dir(&volume).unwrap();
    }
    let home = volume.join("home");
    let other = volume.join("other");
    let snapshots = dir.path().join("snapshots");
    fs::create_dir(&home).unwrap();
    fs::create_dir(&other).unwrap();
    fs::create_dir(&snapshots).unwrap();

    // Ballast, so that free space starts near the headroom boundary.
    settle(&mount.root);
    let ballast = utf8(dir.path()).join("ballast");
    let real = RealFs::new();
    let free = free_bytes(&mount.root);
    assert!(
        free > DIFF_START_FREE + 64 * MIB,
        "the mount has room for the test: {free} bytes free"
    );
    let ballast_file = real
        .open_dir(utf8(dir.path()))
        .and_then(|dir| dir.open_file("ballast", DirOpen::create_new()))
        .unwrap();
    let ballast_bytes = free - DIFF_START_FREE;
    match ballast_file.allocate(0, ballast_bytes) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            ballast_file.write_fill(0, ballast_bytes).unwrap();
        }
        Err(e) => panic!("ballast {ballast}: {e}"),
    }
    ballast_file.sync_all().unwrap();
    drop(ballast_file);

    let mut differential = Differential::new(&mount.root, &home, &other, sharing, &snapshots);
    let mut outcomes = BTreeMap::new();
    differential.run_sequence("fixed", Strategy::Auto, &fixed_sequence(), &mut outcomes);
    if sharing.any() {
        for strategy in [Strategy::Write, Strategy::Auto] {
            differential.run_sequence(
                &format!("sharing, {strategy:?}"),
                strategy,
                &sharing_sequence(),
                &mut outcomes,
            );
        }
    }
    for sequence in 0..RANDOM_SEQUENCES {
        let ops: Vec<Op> = (0..STEPS_PER_SEQUENCE)
            .map(|_| random_op(&mut rng, sharing))
            .collect();
        // Where the sharing steps run, every other sequence writes its reserve (on xfs,
        // the ones that copy it); elsewhere the sequences are what they were.
        let strategy = if sharing.any() && sequence % 2 == 1 {
            Strategy::Write
        } else {
            Strategy::Auto
        };
        differential.run_sequence(
            &format!("random #{sequence}, {strategy:?}"),
            strategy,
            &ops,
            &mut outcomes,
        );
    }
    println!(
        "differential fs={}: 1 fixed and {RANDOM_SEQUENCES} random sequences agree; largest gaps: allocated {} B (after {}), free {} B (after {}); outcomes {outcomes:?}",
        mount.fs,
        differential.worst_allocated_gap.0,
        first_line(&differential.worst_allocated_gap.1),
        differential.worst_free_gap.0,
        first_line(&differential.worst_free_gap.1),
    );
}

// ---------------------------------------------------------------------------------------
// g. Hard links (rule 7)

/// Length of the "database" that the hard-link test links to the reserve path.
const DB_BYTES: u64 = 8 * MIB;

/// The database's known content: a pattern no reserve writes (its own seed).
fn db_content() -> Vec<u8> {
    let mut buf = vec![0u8; DB_BYTES as usize];
    pattern::fill(&mut buf, 0xdb_0d_b0, 0);
    buf
}

fn inode(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .ino()
}

/// The database is the same file, with its one name left and every byte as written.
#[track_caller]
fn assert_db_intact(db: &Path, ino: u64, content: &[u8], after: &str) {
    let meta = fs::symlink_metadata(db).unwrap_or_else(|e| {
        panic!(
            "rule 7: after {after}, the database {} is gone: {e}",
            db.display()
        )
    });
    assert_eq!(
        meta.ino(),
        ino,
        "rule 7: after {after}, the database is the same inode"
    );
    assert_eq!(
        meta.nlink(),
        1,
        "rule 7: after {after}, the reserve path no longer names the database"
    );
    let now = fs::read(db).unwrap();
    assert!(
        now.len() == content.len() && now == content,
        "rule 7: after {after}, the database's bytes are unchanged: {} bytes now, {} written{}",
        now.len(),
        content.len(),
        now.iter()
            .zip(content)
            .position(|(a, b)| a != b)
            .map_or(String::new(), |at| format!(
                ", first difference at byte {at}"
            ))
    );
}

/// g. Rule 7 on a real filesystem: a database file `db` with known content is hard-linked
/// as the reserve. `ensure` with a size smaller than it (a shrink, were it the reserve's
/// own file), larger with `--strategy write` (an overwrite) and larger with the default
/// strategy each leave every byte of `db` as it was and lay down a fresh, complete reserve
/// (another inode) in the name's place. `release` of a hard-linked reserve removes the
/// name, leaves `db` intact and reports `freed_bytes` 0.
#[test]
fn hard_link() {
    let Some(mount) = test_mount("hard_link", Needs::Writable) else {
        return;
    };
    let home = Home::new(&mount, "hard_link");
    let h = home.path();
    let db = h.join("db");
    let reserve = h.join(".reserve");
    let content = db_content();
    fs::write(&db, &content).unwrap();
    File::open(&db).unwrap().sync_all().unwrap();
    let db_ino = inode(&db);

    let cases: [(&str, &[&str], u64); 3] = [
        (
            "ensure --size 4MiB (smaller than the linked file)",
            &["--size", "4MiB"],
            4 * MIB,
        ),
        (
            "ensure --size 16MiB --strategy write (larger, writing data)",
            &["--size", "16MiB", "--strategy", "write"],
            16 * MIB,
        ),
        (
            "ensure --size 16MiB (larger, default strategy)",
            &["--size", "16MiB"],
            16 * MIB,
        ),
    ];
    for (case, args, size) in cases {
        if reserve.exists() {
            fs::remove_file(&reserve).unwrap();
        }
        fs::hard_link(&db, &reserve).unwrap();
        let out = run("ensure", h, &[args, &["--json"]].concat());
        assert_exit(&out, 0);
        assert_eq!(
            json(&out)["outcome"],
            "created",
            "{case}: a fresh reserve replaces the name: {}",
            stdout(&out)
        );
        assert_db_intact(&db, db_ino, &content, case);
        assert_ne!(
            inode(&reserve),
            db_ino,
            "rule 7: after {case}, the reserve is a file of its own"
        );
        assert_complete(&reserve, size);
    }

    fs::remove_file(&reserve).unwrap();
    fs::hard_link(&db, &reserve).unwrap();
    let out = run("release", h, &["--json"]);
    assert_exit(&out, 0);
    let released = json(&out);
    assert_eq!(released["outcome"], "released", "{released}");
    assert!(!reserve.exists(), "release removes the name");
    assert_db_intact(&db, db_ino, &content, "release");
    assert_eq!(
        released["freed_bytes"], 0,
        "rules 7 and 8: removing one name of a file with others frees nothing: {released}"
    );
    println!(
        "hard_link fs={}: a hard-linked reserve path was replaced by a fresh reserve (smaller, larger with write, larger default) and released (freed 0); the database kept every byte",
        mount.fs
    );
}

// ---------------------------------------------------------------------------------------
// h. A moving home (rule 13)

/// The moving-home test's reserve: three write chunks, so the call can be paused after
/// the first with two still to come.
const MOVING_SIZE: u64 = 3 * disk_reserve::WRITE_CHUNK_BYTES;
/// The complete reserve already in the directory the home is re-pointed to.
const OTHER_SIZE: u64 = 16 * MIB;

/// An `ensure` started with `DISK_RESERVE_TEST_PAUSE` set: it stops after each chunk of
/// the write path until a line arrives on its stdin, or for good once stdin is closed.
struct Paused {
    child: std::process::Child,
    stderr: io::BufReader<std::process::ChildStderr>,
    /// Everything read from its stderr so far.
    said: String,
}

impl Paused {
    fn ensure(home: &Path, args: &[&str]) -> Paused {
        let mut child = Command::new(BIN)
            .arg("ensure")
            .arg("--home")
            .arg(home)
            .args(args)
            .env_remove("RUST_LOG")
            .env("DISK_RESERVE_TEST_PAUSE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn disk-reserve");
        let stderr = io::BufReader::new(child.stderr.take().unwrap());
        Paused {
            child,
            stderr,
            said: String::new(),
        }
    }

    /// Reads stderr up to the next pause line; returns the bytes done so far.
    fn wait_for_pause(&mut self) -> u64 {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            let n = self.stderr.read_line(&mut line).expect("read its stderr");
            assert!(
                n > 0,
                "disk-reserve ended its stderr without pausing (is DISK_RESERVE_TEST_PAUSE wired in?):\n{}",
                self.said
            );
            self.said.push_str(&line);
            if let Some(rest) = line.strip_prefix("disk-reserve: test pause after ") {
                let done = rest.split(' ').next().unwrap();
                return done.parse().expect("bytes done in the pause line");
            }
        }
    }

    /// Closes stdin (no more pauses) and waits for the command to end.
    fn finish(mut self) -> Output {
        use std::io::Read;
        drop(self.child.stdin.take());
        self.stderr.read_to_string(&mut self.said).unwrap();
        let mut out = self
            .child
            .wait_with_output()
            .expect("wait for disk-reserve");
        out.stderr = self.said.into_bytes();
        out
    }
}

/// `(inode, length, allocated bytes)` of the file at `path`, `None` when absent.
fn identity(path: &Path) -> Option<(u64, u64, u64)> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Some((meta.ino(), meta.len(), meta.blocks() * 512)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => panic!("lstat {}: {e}", path.display()),
    }
}

/// Failed checks, collected so that one run of the test shows every one of them.
#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    /// Rules 5 and 13: the directory the call resolved holds what its exit says — a
    /// complete reserve after success, nothing after a failure — and nothing else.
    fn check_outcome_in(&mut self, dir: &Path, what: &str, out: &Output) {
        let reserve = dir.join(".reserve");
        let found = len_and_allocated(&reserve);
        let exit = out.status.code();
        if out.status.success() {
            self.check(
                matches!(found, Some((len, allocated)) if len == MOVING_SIZE && allocated >= MOVING_SIZE),
                || format!("rule 13: {what} holds the complete reserve of {MOVING_SIZE} bytes: found (length, allocated) {found:?} (exit {exit:?})"),
            );
        } else {
            self.check(found.is_none(), || {
                format!(
                    "rule 5: the call failed, so {what} holds no partial reserve: found (length, allocated) {found:?} (exit {exit:?})"
                )
            });
        }
        let strays: Vec<String> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|name| name != ".reserve" && name != RECORD_NAME)
                    .collect()
            })
            .unwrap_or_default();
        self.check(strays.is_empty(), || {
            format!("{what} holds nothing but the reserve: {strays:?}")
        });
        self.check(code(out) == 0, || {
            format!(
                "rule 13: the call succeeds (exit 0): exit {exit:?}\n--- stdout\n{}--- stderr\n{}",
                stdout(out),
                stderr(out)
            )
        });
        if code(out) == 0 {
            let report = json(out);
            self.check(
                report["outcome"] == "created"
                    && report["allocated_bytes"].as_u64() >= Some(MOVING_SIZE),
                || {
                    format!(
                        "rule 13: the report describes what happened in {what} (created, {MOVING_SIZE} bytes allocated): {report}"
                    )
                },
            );
        }
    }
}

/// h. Rule 13 with a home that moves while `ensure --strategy write` is between two
/// chunks (the CLI's test pause, `DISK_RESERVE_TEST_PAUSE`, holds it there; no sleeps).
///
/// Re-pointed: `--home current` where `current -> releases/v1`; after the first chunk
/// `current` is atomically re-pointed to `releases/v2`, which already holds a complete
/// reserve of another size. Every operation of the call must stay in v1: v1 ends with a
/// complete reserve (or, had the call failed, none at all), v2's reserve keeps its inode,
/// length and allocation, the call exits 0 and its report says `created` with v1's bytes.
///
/// Renamed: the home itself is renamed after the first chunk. The renamed directory ends
/// with the complete reserve, nothing appears at the old path, and the call exits 0.
///
/// All violations are collected and reported together.
#[test]
fn moving_home() {
    let Some(mount) = test_mount("moving_home", Needs::Writable) else {
        return;
    };
    let size_arg = format!("{MOVING_SIZE}");
    let args: &[&str] = &["--size", &size_arg, "--strategy", "write", "--json"];
    let mut violations = Violations::default();

    {
        let dir = Home::new(&mount, "moving_home-repointed");
        let releases = dir.path().join("releases");
        let (v1, v2) = (releases.join("v1"), releases.join("v2"));
        fs::create_dir_all(&v1).unwrap();
        fs::create_dir_all(&v2).unwrap();
        assert_exit(&run("ensure", &v2, &["--size", "16MiB"]), 0);
        let other = v2.join(".reserve");
        assert_complete(&other, OTHER_SIZE);
        let other_before = identity(&other);
        let current = dir.path().join("current");
        std::os::unix::fs::symlink("releases/v1", &current).unwrap();

        let mut paused = Paused::ensure(&current, args);
        let done = paused.wait_for_pause();
        assert!(done < MOVING_SIZE, "paused with chunks still to write");
        let next = dir.path().join("current.next");
        std::os::unix::fs::symlink("releases/v2", &next).unwrap();
        fs::rename(&next, &current).unwrap();
        let out = paused.finish();

        let other_after = identity(&other);
        violations.check(other_after == other_before, || {
            format!(
                "rule 13: re-pointing the home mid-call must not redirect the call: the other release's reserve changed, (inode, length, allocated) {other_before:?} -> {other_after:?}"
            )
        });
        violations.check_outcome_in(
            &v1,
            "the directory the home pointed to at the start (v1)",
            &out,
        );
    }

    {
        let dir = Home::new(&mount, "moving_home-renamed");
        let home = dir.path().join("app");
        let moved = dir.path().join("app.moved");
        fs::create_dir(&home).unwrap();
        let mut paused = Paused::ensure(&home, args);
        let done = paused.wait_for_pause();
        assert!(done < MOVING_SIZE, "paused with chunks still to write");
        fs::rename(&home, &moved).unwrap();
        let out = paused.finish();

        violations.check(!home.exists(), || {
            format!(
                "rule 13: nothing is created at the home's old path after a rename: found {:?}",
                fs::read_dir(&home).map(|d| d.count())
            )
        });
        violations.check_outcome_in(&moved, "the renamed home", &out);
    }

    assert!(
        violations.0.is_empty(),
        "moving_home fs={}: {} violation(s):\n- {}",
        mount.fs,
        violations.0.len(),
        violations.0.join("\n- ")
    );
    println!(
        "moving_home fs={}: re-pointed and renamed mid-write, the call stayed in the directory it resolved",
        mount.fs
    );
}

// ---------------------------------------------------------------------------------------
// i. A power cut (rule 6)

/// The test mount of `test` and its mountinfo, if its power can be cut
/// ([`cut_power`]): XFS with `xfs_io` installed; otherwise `None`, with the skip printed.
fn xfs_to_cut(test: &str) -> Option<(TestMount, MountInfo)> {
    let mount = test_mount(test, Needs::Writable)?;
    let info = mount_info(&mount.root).expect("the mount is in mountinfo");
    if info.fs_type != "xfs" {
        skip(
            test,
            &format!(
                "{} is {}: only XFS shuts down without flushing its log (xfs_io shutdown)",
                mount.fs, info.fs_type
            ),
        );
        return None;
    }
    if Command::new("xfs_io").arg("-V").output().is_err() {
        skip(test, "xfs_io is not installed");
        return None;
    }
    Some((mount, info))
}

/// Cuts the power on the XFS mount at `root`: `xfs_io -x -c shutdown` without `-f`, so
/// the log is not flushed and whatever was not made durable is lost; then unmounts it and
/// mounts the same device again with the same options (log recovery runs).
fn cut_power(root: &Path, info: &MountInfo) {
    let status = Command::new("xfs_io")
        .args(["-x", "-c", "shutdown"])
        .arg(root)
        .status()
        .expect("run xfs_io");
    assert!(status.success(), "xfs_io -x -c shutdown {}", root.display());
    let status = Command::new("umount")
        .arg(root)
        .status()
        .expect("run umount");
    assert!(status.success(), "umount {}", root.display());
    let options = format!("{},{}", info.options, info.super_options);
    let status = Command::new("mount")
        .args(["-t", &info.fs_type, "-o", &options, &info.source])
        .arg(root)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mount -t {} -o {options} {} {}: the test mount is left unmounted",
        info.fs_type,
        info.source,
        root.display()
    );
}

/// How many 4 KiB blocks of the file at `path` read back as all zeros (a block of the
/// write path's pattern never does).
fn zero_blocks(path: &Path) -> u64 {
    let data = fs::read(path).unwrap();
    data.chunks(4 * KIB as usize)
        .filter(|block| block.iter().all(|&b| b == 0))
        .count() as u64
}

/// The power-cut test's reserve (`--size 64MiB`).
const POWER_CUT_SIZE: u64 = 64 * MIB;

/// `ensure --size 64MiB --strategy STRATEGY` in `home` says `outcome`; right after it the
/// power is cut, and the reserve must be there, complete (for the write path, with no
/// block of zeros).
fn ensure_then_cut(root: &Path, info: &MountInfo, home: &Path, strategy: &str, outcome: &str) {
    let reserve = home.join(".reserve");
    let out = run(
        "ensure",
        home,
        &["--size", "64MiB", "--strategy", strategy, "--json"],
    );
    assert_exit(&out, 0);
    assert_eq!(json(&out)["outcome"], outcome, "{}", stdout(&out));
    cut_power(root, info);
    let after = len_and_allocated(&reserve);
    assert!(
        matches!(after, Some((len, allocated)) if len == POWER_CUT_SIZE && allocated >= POWER_CUT_SIZE),
        "rule 6: a reserve `ensure --strategy {strategy}` reported {outcome} is there, complete, after a power cut: found (length, allocated) {after:?}"
    );
    if strategy == "write" {
        let zeros = zero_blocks(&reserve);
        assert_eq!(
            zeros, 0,
            "rule 6: the reserve `ensure --strategy write` reported {outcome} keeps its data after a power cut: {zeros} blocks of 4 KiB read back as zeros"
        );
    }
}

/// i. Rule 6 on XFS: right after `ensure` says `created` — with `fallocate` and with the
/// write path, whose data blocks are durable only after `fsync` — the power is cut
/// (shutdown without flushing the log) and the mount remounted: the reserve is there,
/// complete (and for the write path, no block of it reads back as zeros); the same after
/// `ensure` says `topped_up` (the reserve cut to half its length beforehand). Right after
/// `release` says `released`, the same cut: the reserve is gone. Other filesystems skip:
/// only XFS can shut itself down without flushing from a test.
#[test]
fn power_cut() {
    let Some((mount, info)) = xfs_to_cut("power_cut") else {
        return;
    };
    let home = Home::new(&mount, "power_cut");
    let mut seen = Vec::new();
    for strategy in ["fallocate", "write"] {
        let h = home.path().join(strategy);
        fs::create_dir(&h).unwrap();
        let reserve = h.join(".reserve");
        // Everything before the call is durable, so the cut loses only what it did.
        settle(&mount.root);

        ensure_then_cut(&mount.root, &info, &h, strategy, "created");
        // A top-up changes no directory entry, so only the file's own fsync makes its
        // allocation durable: after a create, the home's fsync forces XFS's whole log
        // (and the write path's final ftruncate has already written the data), which
        // would hide a missing file fsync.
        OpenOptions::new()
            .write(true)
            .open(&reserve)
            .and_then(|file| file.set_len(POWER_CUT_SIZE / 2))
            .unwrap();
        settle(&mount.root);
        ensure_then_cut(&mount.root, &info, &h, strategy, "topped_up");

        settle(&mount.root);
        let out = run("release", &h, &["--json"]);
        assert_exit(&out, 0);
        assert_eq!(json(&out)["outcome"], "released", "{}", stdout(&out));
        cut_power(&mount.root, &info);
        let after = len_and_allocated(&reserve);
        assert!(
            after.is_none(),
            "rule 6: a reserve `release` reported released stays gone after a power cut: found (length, allocated) {after:?}"
        );
        seen.push(strategy);
    }
    println!(
        "power_cut fs={}: created and topped up ({seen:?}) survived a shutdown without log flush and remount; released stayed released",
        mount.fs
    );
}

/// What [`syncfs_power_cut`] writes and renames in `dir` without syncing either: a file
/// of incompressible bytes, and a second file renamed over a third.
fn write_unsynced(dir: &Path) -> Vec<u8> {
    let data = incompressible(MIB);
    fs::write(dir.join("data"), &data).unwrap();
    fs::write(dir.join("old"), b"old").unwrap();
    fs::write(dir.join("new"), b"new").unwrap();
    fs::rename(dir.join("new"), dir.join("old")).unwrap();
    data
}

/// What of [`write_unsynced`]'s work in `dir` survived: the data file whole, and the
/// rename.
fn unsynced_survived(dir: &Path, data: &[u8]) -> (bool, bool) {
    let file = fs::read(dir.join("data")).ok();
    let renamed = fs::read(dir.join("old")).ok();
    (
        file.as_deref() == Some(data),
        renamed.as_deref() == Some(b"new".as_slice()) && !dir.join("new").exists(),
    )
}

/// i. `DirHandle::sync_fs` makes the whole filesystem durable, as `SimFs::sync_fs` models
/// it (and as the scenario model assumes of `ensure`'s way to a deferral and of
/// `release`): on XFS, a file written and a rename, neither synced, in one directory;
/// `RealFs`'s `sync_fs` through a handle of another directory of the mount; then the
/// power cut. Both survive. A control run without the `sync_fs` first shows that the cut
/// does lose such work (printed: XFS may have written some of it back on its own).
#[test]
fn syncfs_power_cut() {
    let Some((mount, info)) = xfs_to_cut("syncfs_power_cut") else {
        return;
    };
    let home = Home::new(&mount, "syncfs_power_cut");
    let (control, synced, other) = (
        home.path().join("control"),
        home.path().join("synced"),
        home.path().join("other"),
    );
    for dir in [&control, &synced, &other] {
        fs::create_dir(dir).unwrap();
    }
    settle(&mount.root);

    let data = write_unsynced(&control);
    cut_power(&mount.root, &info);
    let kept_without = unsynced_survived(&control, &data);

    let data = write_unsynced(&synced);
    RealFs::new()
        .open_dir(utf8(&other))
        .and_then(|dir| dir.sync_fs())
        .unwrap();
    cut_power(&mount.root, &info);
    let (file, rename) = unsynced_survived(&synced, &data);
    assert!(
        file,
        "sync_fs made a file written in another directory durable: after the power cut it is missing or not what was written"
    );
    assert!(
        rename,
        "sync_fs made a rename in another directory durable: after the power cut it is undone"
    );
    println!(
        "syncfs_power_cut fs={}: without sync_fs the cut kept (file, rename) = {kept_without:?}; with sync_fs both survived",
        mount.fs
    );
}

// ---------------------------------------------------------------------------------------
// j. Truthful space (issue 10): shared blocks, snapshots, quotas, late frees, never-fits,
// overlayfs, a FUSE filesystem without fallocate
//
// None of these tests waits for the kernel before the command under test: whatever the
// kernel does late (XFS's deferred inode inactivation, btrfs' transaction commit, qgroup
// accounting), the command must handle as an operator would meet it. Settling happens only
// in the setup, before the event the command must cope with, and after the command, to
// read what really happened.

/// The reserve of the sharing tests (`--size 64MiB`).
const SHARE_SIZE: u64 = 64 * MIB;
/// The most a reserve whose every block a reflink copy or a snapshot also holds may count
/// as releasable. Measured (kernel 6.18, 512 MiB filesystems): 0 bytes on xfs and on
/// btrfs, with either strategy.
const SHARED_RELEASABLE_MAX: u64 = 256 * KIB;
/// How far `release`'s `releasable_bytes` and `freed_bytes` may be from what the
/// filesystem really gains (measured in a settled control run), and the gain from the
/// whole size. Measured (kernel 6.18, 512 MiB filesystems): on xfs and ext4 every figure
/// equal to the byte; on btrfs a control run of the write path gains up to 68 KiB more
/// than the size (104 KiB with `compress-force=zstd`: its checksums and extent items go
/// with it), and a reflinked reserve's release gains 0 to 12 KiB; overlayfs 4 KiB.
const FREED_TOLERANCE: u64 = MIB;

/// Free bytes for an unprivileged writer (`f_bavail × f_frsize`), read with `stat -f`:
/// the test's own `statvfs`, not the library's.
fn statvfs_free(path: &Path) -> u64 {
    let [avail, frsize] = stat_f(path, "%a %S");
    avail * frsize
}

/// What an unprivileged writer can ever use of the filesystem holding `path`:
/// `(f_blocks − (f_bfree − f_bavail)) × f_frsize`.
fn statvfs_usable(path: &Path) -> u64 {
    let [blocks, bfree, bavail, frsize] = stat_f(path, "%b %f %a %S");
    (blocks - (bfree - bavail)) * frsize
}

/// The numbers `stat -f -c FORMAT path` prints.
fn stat_f<const N: usize>(path: &Path, format: &str) -> [u64; N] {
    let out = Command::new("stat")
        .args(["-f", "-c", format])
        .arg(path)
        .output()
        .expect("run stat -f");
    assert!(out.status.success(), "stat -f {}", path.display());
    let numbers: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|word| word.parse().expect("stat -f prints numbers"))
        .collect();
    numbers.try_into().expect("as many numbers as asked for")
}

/// Runs a command of the setup (or the clean-up), panicking with its output on failure.
#[track_caller]
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// The filesystem type of the test mount (`xfs`, `btrfs`, `ext4`, `fuseblk`…).
fn fs_type(mount: &TestMount) -> String {
    mount_info(&mount.root)
        .expect("the mount is in mountinfo")
        .fs_type
}

/// The mount's filesystem type if it is one of `types`; otherwise a skip line and `None`.
fn only_on(test: &str, mount: &TestMount, types: &[&str]) -> Option<String> {
    let fs_type = fs_type(mount);
    if types.contains(&fs_type.as_str()) {
        Some(fs_type)
    } else {
        skip(
            test,
            &format!("{} is {fs_type}; this test runs on {types:?}", mount.fs),
        );
        None
    }
}

/// The names in `dir` (none of them followed).
/// The names in `dir`, sorted, without the reserve's own record of its configuration
/// (`.reserve.conf`, which `ensure` keeps beside it: rule 7 allows it).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != RECORD_NAME)
        .collect();
    names.sort();
    names
}

/// A number of a JSON report, `None` when the field is missing.
fn field(report: &Value, name: &str) -> Option<u64> {
    report[name].as_u64()
}

/// One `release --json` of `home` and what the filesystem really gained by it: the
/// test's own `statvfs` right before the command (no flush, no wait: what the operator's
/// `df` would say) and after it, settled. Returns the report and the gain (negative when
/// free space fell).
fn measured_release(home: &Path, mount: &Path) -> (Value, i64) {
    let before = statvfs_free(mount);
    let out = run("release", home, &["--json"]);
    assert_exit(&out, 0);
    let report = json(&out);
    settle(mount);
    let after = statvfs_free(mount);
    (report, after as i64 - before as i64)
}

/// Rule 8 on a measured release: the report's `freed_bytes` is what the filesystem
/// gained, within [`FREED_TOLERANCE`].
fn check_freed_is_measured(v: &mut Violations, what: &str, report: &Value, gained: i64) {
    let freed = field(report, "freed_bytes");
    v.check(
        freed.is_some_and(|f| (f as i64).abs_diff(gained) <= FREED_TOLERANCE),
        || {
            format!(
                "rule 8: {what}: freed_bytes is the free space the filesystem gained ({gained} bytes measured, tolerance {FREED_TOLERANCE}): {report}"
            )
        },
    );
}

/// Rule 1 on a `status --json` of a complete reserve of its own (nothing shared): it says
/// present, a regular file of `size` bytes, every byte releasable.
fn check_status_own(v: &mut Violations, what: &str, status: &Value, size: u64) {
    v.check(
        status["condition"] == "present" && status["kind"] == "regular_file",
        || format!("rule 1: {what}: status shows a complete reserve of its own (condition present, kind regular_file): {status}"),
    );
    v.check(
        field(status, "releasable_bytes").is_some_and(|r| r + SHARED_RELEASABLE_MAX >= size),
        || format!("rule 1: {what}: every byte of the reserve is releasable ({size}): {status}"),
    );
}

/// Rule 1 on a `status --json` of a reserve whose blocks another file or a snapshot holds
/// too: condition shared, (almost) nothing releasable, its length its real length.
fn check_status_shared(v: &mut Violations, what: &str, status: &Value, reserve: &Path) {
    v.check(status["condition"] == "shared", || {
        format!("rule 1: {what}: status says the reserve is shared: {status}")
    });
    v.check(
        field(status, "releasable_bytes").is_some_and(|r| r <= SHARED_RELEASABLE_MAX),
        || format!("rule 1: {what}: a reserve whose blocks are all shared has (almost) nothing releasable (at most {SHARED_RELEASABLE_MAX}): {status}"),
    );
    let len = len_and_allocated(reserve).map(|(len, _)| len);
    v.check(field(status, "len_bytes") == len, || {
        format!("status: {what}: len_bytes is the reserve's length ({len:?}): {status}")
    });
}

/// `cp --reflink=always FROM TO`.
fn reflink_copy(from: &Path, to: &Path) {
    sh("cp", &["--reflink=always", path_str(from), path_str(to)]);
}

/// Setup of a truth measurement, in a control run of the same preparation as the run
/// under test (never in the run under test): commits the filesystem and lets its free
/// space settle, releases the reserve in `home`, settles again, and returns what the
/// filesystem gained. On btrfs nothing an `ensure` allocated shows in `statvfs` before a
/// commit, so only a settled "before" says what the release really gives back.
fn control_release_gain(home: &Path, mount: &Path) -> i64 {
    settle(mount);
    let before = statvfs_free(mount);
    assert_exit(&run("release", home, &["--json"]), 0);
    settle(mount);
    statvfs_free(mount) as i64 - before as i64
}

/// Rules 1 and 8 on the run under test: `release --json` of `home`, with no flush or
/// wait before it, expects to free and reports freeing what the control run of the same
/// preparation measured (`truth`), each within [`FREED_TOLERANCE`].
fn check_release_truthful(
    v: &mut Violations,
    what: &str,
    home: &Path,
    mount: &Path,
    truth: i64,
) -> Value {
    let (report, df_view) = measured_release(home, mount);
    v.check(report["outcome"] == "released", || {
        format!("rule 8: {what}: release says released: {report}")
    });
    let near = |name: &str| {
        field(&report, name).is_some_and(|n| (n as i64).abs_diff(truth) <= FREED_TOLERANCE)
    };
    v.check(near("releasable_bytes"), || {
        format!(
            "rules 1 and 8: {what}: releasable_bytes is what removing the reserve really gives back ({truth} bytes, measured settled in a control run; tolerance {FREED_TOLERANCE}): {report}"
        )
    });
    v.check(near("freed_bytes"), || {
        format!(
            "rule 8: {what}: freed_bytes is what the filesystem really gained ({truth} bytes, measured settled in a control run; tolerance {FREED_TOLERANCE}; statvfs right before the command and settled after it moved by {df_view}): {report}"
        )
    });
    println!(
        "{what}: release expected {} freed {}; the filesystem really gains {truth} (control run); statvfs right before and settled after: {df_view}",
        report["releasable_bytes"], report["freed_bytes"]
    );
    report
}

/// `ensure --size 64MiB --strategy STRATEGY --json` in `home`, which must say `created`.
fn ensure_created(home: &Path, strategy: &str) {
    let out = run(
        "ensure",
        home,
        &["--size", "64MiB", "--strategy", strategy, "--json"],
    );
    assert_exit(&out, 0);
    assert_eq!(json(&out)["outcome"], "created", "{}", stdout(&out));
}

/// `status --size 64MiB --json` of `home`.
fn status_json(home: &Path) -> Value {
    let out = run("status", home, &["--size", "64MiB", "--json"]);
    assert_exit(&out, 0);
    json(&out)
}

/// A fresh reserve in `base/home` and a reflink copy of it in `base/clone`; the home.
fn prepare_reflinked(base: &Path, strategy: &str) -> PathBuf {
    let h = base.join("home");
    fs::create_dir_all(&h).unwrap();
    ensure_created(&h, strategy);
    reflink_copy(&h.join(RESERVE_NAME), &base.join("clone"));
    h
}

/// A fresh reserve in `base/app`, `cp -a base/app base/app.bak`, then `ensure` again.
/// Returns the home, whether `status` said shared after the copy, and the second
/// `ensure`'s report.
fn prepare_backed_up(base: &Path, strategy: &str) -> (PathBuf, bool, Value) {
    let h = base.join("app");
    fs::create_dir_all(&h).unwrap();
    ensure_created(&h, strategy);
    sh("cp", &["-a", path_str(&h), path_str(&base.join("app.bak"))]);
    let shared = status_json(&h)["condition"] == "shared";
    let out = run(
        "ensure",
        &h,
        &["--size", "64MiB", "--strategy", strategy, "--json"],
    );
    assert_exit(&out, 0);
    (h, shared, json(&out))
}

/// Rule 1 after an `ensure` that had to make a shared reserve its own again: it said
/// `created` (a replacement) where the reserve was shared, `present` where it was not;
/// the home holds the reserve and nothing else (no `.reserve.replacing`); `status` shows
/// it complete and its own; and releasing it really gives back the whole size (`truth`,
/// from the control run).
fn check_made_own(
    v: &mut Violations,
    what: &str,
    h: &Path,
    shared: bool,
    ensured: &Value,
    truth: i64,
) {
    let want = if shared { "created" } else { "present" };
    v.check(ensured["outcome"] == want, || {
        format!(
            "rule 1: {what}: ensure of a reserve that {} says {want}: {ensured}",
            if shared {
                "is shared (it builds a replacement)"
            } else {
                "is its own"
            }
        )
    });
    v.check(names_in(h) == [RESERVE_NAME], || {
        format!(
            "rule 1: {what}: after ensure the home holds the reserve and nothing else: {:?}",
            names_in(h)
        )
    });
    check_status_own(v, what, &status_json(h), SHARE_SIZE);
    assert_complete(&h.join(RESERVE_NAME), SHARE_SIZE);
    v.check(truth + FREED_TOLERANCE as i64 >= SHARE_SIZE as i64, || {
        format!(
            "rule 1: {what}: after ensure the reserve is its own, so releasing it gives back the whole size ({SHARE_SIZE}): {truth} bytes (control run, settled)"
        )
    });
}

/// The kernel behaviour behind [`XFS_COW_WINDOW_BYTES`] (xfs only): a reflinked 4 MiB
/// file truncated inside a block holds more than its length in `st_blocks` (the copied
/// last block's window, reserved for copy-on-write), and no more than one window. If a
/// kernel stops doing it, the differential's XFS tolerance can shrink; if the window
/// grows, the tolerance must.
#[test]
fn cow_preallocation() {
    let Some(mount) = test_mount("cow_preallocation", Needs::Writable) else {
        return;
    };
    let Some(_) = only_on("cow_preallocation", &mount, &["xfs"]) else {
        return;
    };
    let dir = Home::new(&mount, "cow_preallocation");
    let (file, copy) = (dir.path().join("file"), dir.path().join("copy"));
    let mut f = File::create(&file).unwrap();
    f.write_all(&vec![0x5a; 4 * MIB as usize]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    ficlone(&file, &copy).unwrap();
    let len = 4 * MIB - 182_437;
    OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len)
        .unwrap();
    let (_, allocated) = len_and_allocated(&file).expect("the truncated file");
    let extra = allocated.saturating_sub(len.next_multiple_of(4 * KIB));
    println!(
        "cow_preallocation fs=xfs: reflinked 4 MiB file truncated to {len}: {allocated} bytes allocated, {extra} more than its blocks"
    );
    assert!(
        extra > 0 && extra < XFS_COW_WINDOW_BYTES,
        "a reflinked file truncated inside a block holds part of one copy-on-write window more than its blocks: {extra} bytes more (window {XFS_COW_WINDOW_BYTES})"
    );
}

/// j1. Rules 1 and 8 with a reflink copy (xfs, btrfs). For `--strategy write` and the
/// default: `ensure`, then `cp --reflink=always home/.reserve clone` (outside the home);
/// `status` says shared with (almost) nothing releasable where the copy really shares
/// the blocks (a control run of the same steps measures it: it does with data on xfs
/// and btrfs, and on btrfs with fallocate; XFS leaves a fallocated file's unwritten
/// extents out of the copy, so there the reserve stays its own and `status` must say
/// present); `release` expects and frees what the filesystem really gains.
///
/// Then for both strategies: a fresh reserve, a plain `cp -a home home.bak`; `ensure`
/// replaces the reserve where the copy shares it (present where it does not), `status`
/// shows it complete and its own, and `release` right after expects and frees the full
/// size that the control run measured.
///
/// Each case runs twice: a control run (commit and settle around its `release`: setup,
/// the truth) and the run under test (nothing waited for).
#[test]
fn reflink_release() {
    let Some(mount) = test_mount("reflink_release", Needs::Writable) else {
        return;
    };
    let Some(_) = only_on("reflink_release", &mount, &["xfs", "btrfs"]) else {
        return;
    };
    let root = &mount.root;
    let dir = Home::new(&mount, "reflink_release");
    let mut v = Violations::default();
    for strategy in ["write", "auto"] {
        let what = format!("reflink copy, --strategy {strategy}");
        let control = dir.path().join(format!("control-reflink-{strategy}"));
        let truth = control_release_gain(&prepare_reflinked(&control, strategy), root);
        fs::remove_dir_all(&control).unwrap();
        settle(root);

        let base = dir.path().join(format!("reflink-{strategy}"));
        let h = prepare_reflinked(&base, strategy);
        let status = status_json(&h);
        if truth <= FREED_TOLERANCE as i64 {
            check_status_shared(&mut v, &what, &status, &h.join(RESERVE_NAME));
        } else {
            check_status_own(
                &mut v,
                &format!("{what} (the copy does not share)"),
                &status,
                SHARE_SIZE,
            );
        }
        check_release_truthful(&mut v, &what, &h, root, truth);
        fs::remove_dir_all(&base).unwrap();
    }

    for strategy in ["write", "auto"] {
        let what = format!("cp -a of the home, --strategy {strategy}");
        let control = dir.path().join(format!("control-backup-{strategy}"));
        let truth = control_release_gain(&prepare_backed_up(&control, strategy).0, root);
        fs::remove_dir_all(&control).unwrap();
        settle(root);

        let base = dir.path().join(format!("backup-{strategy}"));
        let (h, shared, ensured) = prepare_backed_up(&base, strategy);
        check_made_own(&mut v, &what, &h, shared, &ensured, truth);
        check_release_truthful(&mut v, &what, &h, root, truth);
        println!("{what}: the copy shared the reserve: {shared}");
        fs::remove_dir_all(&base).unwrap();
    }

    assert!(
        v.0.is_empty(),
        "reflink_release fs={}: {} violation(s):\n- {}",
        mount.fs,
        v.0.len(),
        v.0.join("\n- ")
    );
    println!(
        "reflink_release fs={}: shared reserves counted and released truthfully; replaced after cp -a and released in full",
        mount.fs
    );
}

/// Deletes the btrfs subvolumes it names (newest first) and, if asked, turns quotas off
/// again, when dropped: `rm -rf` cannot remove a read-only snapshot.
#[derive(Default)]
struct BtrfsCleanup {
    subvolumes: Vec<PathBuf>,
    quota_on: Option<PathBuf>,
}

impl BtrfsCleanup {
    /// Deletes the subvolumes now (newest first).
    fn delete_subvolumes(&mut self) {
        for subvolume in self.subvolumes.drain(..).rev() {
            let _ = Command::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(&subvolume)
                .stdout(Stdio::null())
                .status();
        }
    }
}

impl Drop for BtrfsCleanup {
    fn drop(&mut self) {
        self.delete_subvolumes();
        if let Some(root) = &self.quota_on {
            let _ = Command::new("btrfs")
                .args(["quota", "disable"])
                .arg(root)
                .status();
        }
    }
}

/// The home is the subvolume `base/home` with a fresh reserve, snapshotted read-only as
/// `base/home.snap`; then `ensure` again. Returns the home, whether `status` said shared
/// after the snapshot, and the second `ensure`'s report.
fn prepare_snapshotted(base: &Path, cleanup: &mut BtrfsCleanup) -> (PathBuf, Value, Value) {
    fs::create_dir_all(base).unwrap();
    let h = base.join("home");
    let snap = base.join("home.snap");
    sh("btrfs", &["subvolume", "create", path_str(&h)]);
    cleanup.subvolumes.push(h.clone());
    ensure_created(&h, "auto");
    sh(
        "btrfs",
        &["subvolume", "snapshot", "-r", path_str(&h), path_str(&snap)],
    );
    cleanup.subvolumes.push(snap);
    let status = status_json(&h);
    let out = run("ensure", &h, &["--size", "64MiB", "--json"]);
    assert_exit(&out, 0);
    (h, status, json(&out))
}

/// j2. Rules 1 and 8 with a snapshot (btrfs): the home is a subvolume with a complete
/// reserve; after `btrfs subvolume snapshot -r` it is shared; `ensure` replaces it (the
/// snapshot keeps the old blocks), `status` shows it complete and its own, and `release`
/// right after expects and frees the full size of the new one — what a control run of
/// the same steps, settled around its `release`, measured.
#[test]
fn snapshot() {
    let Some(mount) = test_mount("snapshot", Needs::Writable) else {
        return;
    };
    let Some(_) = only_on("snapshot", &mount, &["btrfs"]) else {
        return;
    };
    let root = &mount.root;
    let dir = Home::new(&mount, "snapshot");
    let mut cleanup = BtrfsCleanup::default();
    let (control, _, _) = prepare_snapshotted(&dir.path().join("control"), &mut cleanup);
    let truth = control_release_gain(&control, root);
    cleanup.delete_subvolumes();
    settle(root);

    let (h, status, ensured) = prepare_snapshotted(&dir.path().join("test"), &mut cleanup);
    let mut v = Violations::default();
    let what = "replaced after a snapshot";
    check_status_shared(&mut v, "after a snapshot", &status, &h.join(RESERVE_NAME));
    check_made_own(&mut v, what, &h, true, &ensured, truth);
    check_release_truthful(&mut v, what, &h, root, truth);
    assert!(
        v.0.is_empty(),
        "snapshot fs={}: {} violation(s):\n- {}",
        mount.fs,
        v.0.len(),
        v.0.join("\n- ")
    );
    println!(
        "snapshot fs={}: shared after a snapshot, replaced by ensure, released in full",
        mount.fs
    );
}

/// Writes `len` [`incompressible`] bytes into `path` at `offset`, in place, and syncs
/// the file.
fn write_incompressible_at(path: &Path, offset: u64, len: u64) {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    file.write_all_at(&incompressible(len), offset).unwrap();
    file.sync_all().unwrap();
}

/// The fidelity of `SimFs` to btrfs snapshots (btrfs): overwriting a file in place after
/// a read-only snapshot takes new space (copy-on-write; the snapshot keeps the old
/// blocks), where the same overwrite of a file no snapshot shares takes none. `SimFs`
/// (`snapshot_file`, then `write_at`) must take the same, within btrfs's metadata.
/// (Overwriting only part of a file takes space even without a snapshot on btrfs: see
/// [`whole_extents`].)
///
/// Measured settled: the test asks what the disk holds once btrfs has committed.
#[test]
fn snapshot_overwrite() {
    let Some(mount) = test_mount("snapshot_overwrite", Needs::Writable) else {
        return;
    };
    let Some(_) = only_on("snapshot_overwrite", &mount, &["btrfs"]) else {
        return;
    };
    const FILE: u64 = 16 * MIB;
    let root = &mount.root;
    let dir = Home::new(&mount, "snapshot_overwrite");
    let mut cleanup = BtrfsCleanup::default();
    let home = dir.path().join("home");
    sh("btrfs", &["subvolume", "create", path_str(&home)]);
    cleanup.subvolumes.push(home.clone());
    let shared = home.join("shared");
    write_incompressible_at(&shared, 0, FILE);
    let snap = dir.path().join("home.snap");
    sh(
        "btrfs",
        &[
            "subvolume",
            "snapshot",
            "-r",
            path_str(&home),
            path_str(&snap),
        ],
    );
    cleanup.subvolumes.push(snap);
    // Files written after the snapshot share nothing with it.
    let own = home.join("own");
    write_incompressible_at(&own, 0, FILE);
    let taken_by = |path: &Path, offset: u64, len: u64| {
        settle(root);
        let before = free_bytes(root);
        write_incompressible_at(path, offset, len);
        settle(root);
        before as i64 - free_bytes(root) as i64
    };
    let real_shared = taken_by(&shared, 0, FILE);
    let real_own = taken_by(&own, 0, FILE);

    let sim = SimFs::with_home(1 << 30, "/home");
    // As btrfs keeps extents (see `whole_extents`): a whole file rewritten frees its
    // old extent, and blocks a snapshot shares are the snapshot's to count.
    sim.set_whole_extents(Some(disk_reserve::WholeExtents::BTRFS));
    let sim_taken = |name: &str, snapshot: bool| {
        let path = format!("/home/{name}");
        sim.write_file(&path, FILE).unwrap();
        if snapshot {
            sim.snapshot_file(&path).unwrap();
        }
        let before = sim.free_bytes();
        sim.open_dir(Utf8Path::new("/home"))
            .and_then(|d| d.open_file(name, DirOpen::write()))
            .and_then(|file| file.write_at(0, &vec![9; FILE as usize]))
            .unwrap();
        before as i64 - sim.free_bytes() as i64
    };
    let (sim_shared, sim_own) = (sim_taken("shared", true), sim_taken("own", false));
    println!(
        "snapshot_overwrite fs={}: overwriting a 16 MiB file in place took {real_shared} bytes after a snapshot (SimFs {sim_shared}), {real_own} without (SimFs {sim_own})",
        mount.fs
    );
    assert_eq!((sim_shared, sim_own), (FILE as i64, 0));
    // btrfs's own metadata (checksums, extent items) moves by up to a few hundred KiB.
    let tolerance = MIB as i64;
    assert!(
        (real_shared - sim_shared).abs() <= tolerance,
        "after a snapshot btrfs took {real_shared} bytes for the overwrite, SimFs {sim_shared}"
    );
    assert!(
        (real_own - sim_own).abs() <= tolerance,
        "without a snapshot btrfs took {real_own} bytes for the overwrite, SimFs {sim_own}"
    );
}

/// One call of a [`whole_extents`] case, on a file of the home.
#[derive(Debug, Clone, Copy)]
enum ExtentStep {
    /// `write_all_at(offset, len incompressible bytes)`, one call.
    Write(u64, u64),
    /// `allocate(0, len)` (`fallocate`).
    Allocate(u64),
    /// `set_len(len)`.
    Cut(u64),
    /// `sync_all`.
    Sync,
}

/// Applies `steps` to the file `name` of `home` (created if missing) through `fs`.
fn extent_steps(fs: &dyn HostFs, home: &Utf8Path, name: &str, steps: &[ExtentStep]) {
    let dir = fs.open_dir(home).unwrap();
    let file = dir.open_file(name, DirOpen::create()).unwrap();
    for &step in steps {
        match step {
            ExtentStep::Write(offset, len) => file.write_all_at(offset, &incompressible(len)),
            ExtentStep::Allocate(len) => file.allocate(0, len),
            ExtentStep::Cut(len) => file.set_len(len),
            ExtentStep::Sync => file.sync_all(),
        }
        .unwrap_or_else(|e| panic!("{step:?} on {home}/{name}: {e}"));
    }
}

/// The fidelity of `SimFs::set_whole_extents` to btrfs (btrfs, btrfs-zstd): btrfs frees
/// an extent only when no block of it is in use, so cutting part of a file off frees
/// nothing while the rest of its extent is the file's, rewriting synced blocks takes new
/// ones while the old stay with their extent, and a sync makes one extent of the appends
/// since the last. Each case runs on a fresh file on the mount and on a `SimFs` with
/// `WholeExtents::BTRFS` (`BTRFS_COMPRESSED` on a compressed mount); the space the
/// measured steps take or free must agree within btrfs's own metadata.
///
/// Measured settled: the test asks what the disk holds once btrfs has committed.
#[test]
fn whole_extents() {
    use ExtentStep::{Allocate, Cut, Sync, Write};
    use disk_reserve::WholeExtents;
    let Some(mount) = test_mount("whole_extents", Needs::Writable) else {
        return;
    };
    let Some(_) = only_on("whole_extents", &mount, &["btrfs"]) else {
        return;
    };
    let root = &mount.root;
    let compressed = mount_options(root).contains("compress");
    let extents = if compressed {
        WholeExtents::BTRFS_COMPRESSED
    } else {
        WholeExtents::BTRFS
    };
    let home = Home::new(&mount, "whole_extents");
    let real_home = utf8(home.path()).to_owned();
    const F: u64 = 16 * MIB;
    let appends_synced_once = [
        Write(0, MIB),
        Write(MIB, MIB),
        Write(2 * MIB, MIB),
        Write(3 * MIB, MIB),
        Sync,
    ];
    let appends_synced_each = [
        Write(0, MIB),
        Sync,
        Write(MIB, MIB),
        Sync,
        Write(2 * MIB, MIB),
        Sync,
        Write(3 * MIB, MIB),
        Sync,
    ];
    // (what, set-up steps, measured steps)
    let cases: [(&str, &[ExtentStep], &[ExtentStep]); 8] = [
        (
            "cut a written 16 MiB file to 8 MiB",
            &[Write(0, F), Sync],
            &[Cut(F / 2), Sync],
        ),
        (
            "cut an allocated 16 MiB file to 8 MiB",
            &[Allocate(F), Sync],
            &[Cut(F / 2), Sync],
        ),
        (
            "rewrite the middle 8 MiB of a written file",
            &[Write(0, F), Sync],
            &[Write(F / 4, F / 2), Sync],
        ),
        (
            "rewrite all of a written file",
            &[Write(0, F), Sync],
            &[Write(0, F), Sync],
        ),
        (
            "write the middle 8 MiB of an allocated file",
            &[Allocate(F), Sync],
            &[Write(F / 4, F / 2), Sync],
        ),
        (
            "write it again",
            &[Allocate(F), Sync, Write(F / 4, F / 2), Sync],
            &[Write(F / 4, F / 2), Sync],
        ),
        (
            "cut four appends synced once to 1 MiB",
            &appends_synced_once,
            &[Cut(MIB), Sync],
        ),
        (
            "cut four appends synced one by one to 1 MiB",
            &appends_synced_each,
            &[Cut(MIB), Sync],
        ),
    ];
    // btrfs's own metadata (checksums, extent items) moves by up to a few hundred KiB.
    let tolerance = MIB as i64;
    let mut failures = Vec::new();
    for (i, (what, setup, measured)) in cases.iter().enumerate() {
        let name = format!("case{i}");
        extent_steps(&RealFs::new(), &real_home, &name, setup);
        settle(root);
        let before = free_bytes(root);
        extent_steps(&RealFs::new(), &real_home, &name, measured);
        settle(root);
        let real = before as i64 - free_bytes(root) as i64;
        fs::remove_file(home.path().join(&name)).unwrap();

        let sim = SimFs::with_home(1 << 30, "/home");
        sim.set_whole_extents(Some(extents));
        let sim_home = Utf8Path::new("/home");
        extent_steps(&sim, sim_home, &name, setup);
        let before = sim.free_bytes();
        extent_steps(&sim, sim_home, &name, measured);
        let simulated = before as i64 - sim.free_bytes() as i64;
        println!(
            "whole_extents fs={} compressed={compressed}: {what}: btrfs took {real} bytes, SimFs {simulated}",
            mount.fs
        );
        if (real - simulated).abs() > tolerance {
            failures.push(format!(
                "{what}: btrfs took {real} bytes, SimFs {simulated}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "SimFs's whole extents differ from btrfs: {failures:#?}"
    );
}

/// The options `root` is mounted with, from `/proc/self/mounts`.
fn mount_options(root: &Path) -> String {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .rfind(|fields| fields.len() > 3 && Path::new(fields[1]) == root)
        .map_or_else(String::new, |fields| fields[3].to_owned())
}

/// The unprivileged user of the quota test (`nobody`).
const NOBODY: u32 = 65534;
/// The quota test's qgroup limit, and how much of it is used before the command.
const QGROUP_LIMIT: u64 = 100 * MIB;
const QGROUP_USED: u64 = 60 * MIB;

/// `(referenced, max referenced)` bytes of the qgroup of the subvolume at `path`.
fn qgroup_of(path: &Path) -> (u64, u64) {
    let text = sh(
        "btrfs",
        &["qgroup", "show", "--raw", "-r", "-f", path_str(path)],
    );
    let row: Vec<&str> = text
        .lines()
        .find(|line| line.starts_with("0/"))
        .unwrap_or_else(|| panic!("no qgroup row for {}:\n{text}", path.display()))
        .split_whitespace()
        .collect();
    (
        row[1].parse().expect("referenced bytes"),
        row[3].parse().expect("max referenced bytes"),
    )
}

/// A copy of the command that any user can run (the build directory may not be), in its
/// own directory, removed when dropped.
struct SharedBin {
    dir: PathBuf,
}

impl SharedBin {
    fn new() -> SharedBin {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("disk-reserve-bin-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(BIN, dir.join("disk-reserve")).unwrap();
        fs::set_permissions(dir.join("disk-reserve"), fs::Permissions::from_mode(0o755)).unwrap();
        SharedBin { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("disk-reserve")
    }
}

impl Drop for SharedBin {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `setpriv` as `nobody` (uid and gid 65534, no supplementary groups).
fn as_nobody() -> Command {
    let id = NOBODY.to_string();
    let mut command = Command::new("setpriv");
    command.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"]);
    command
}

/// j3. Rule 4 with a btrfs qgroup the unprivileged writer's `statvfs` does not show: a
/// subvolume limited to 100 MiB with 60 MiB used, the command run as `nobody`:
/// `ensure --size 64MiB` with plenty of free space but 40 MiB of quota left exits 75
/// (deferred, reason `quota`), and nothing is left behind: the home is empty and the
/// qgroup uses what it used before.
#[test]
fn quota() {
    let Some(mount) = test_mount("quota", Needs::Writable) else {
        return;
    };
    let Some(_) = only_on("quota", &mount, &["btrfs"]) else {
        return;
    };
    let dir = Home::new(&mount, "quota");
    let mut cleanup = BtrfsCleanup::default();
    let root = path_str(&mount.root);
    sh("btrfs", &["quota", "enable", root]);
    cleanup.quota_on = Some(mount.root.clone());
    let subvolume = dir.path().join("limited");
    sh("btrfs", &["subvolume", "create", path_str(&subvolume)]);
    cleanup.subvolumes.push(subvolume.clone());
    sh(
        "btrfs",
        &[
            "qgroup",
            "limit",
            &QGROUP_LIMIT.to_string(),
            path_str(&subvolume),
        ],
    );
    let used = subvolume.join("used");
    let mut file = File::create(&used).unwrap();
    file.write_all(&incompressible(QGROUP_USED)).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let h = subvolume.join("home");
    fs::create_dir(&h).unwrap();
    std::os::unix::fs::chown(&h, Some(NOBODY), Some(NOBODY)).unwrap();
    // Setup only: make the qgroup count the 60 MiB before the command runs.
    settle(&mount.root);
    sh("btrfs", &["quota", "rescan", "-w", root]);
    let (referenced, limit) = qgroup_of(&subvolume);
    assert_eq!(limit, QGROUP_LIMIT, "the qgroup limit is set");
    assert!(
        referenced.abs_diff(QGROUP_USED) <= 2 * MIB,
        "the qgroup counts the 60 MiB written into it: {referenced}"
    );
    let free = statvfs_free(&mount.root);
    assert!(
        free >= 2 * SHARE_SIZE + 64 * MIB,
        "statvfs shows room for a 64 MiB reserve and its headroom, so only the quota can say no: {free} bytes free"
    );
    let bin = SharedBin::new();
    let reach = as_nobody().arg("test").arg("-w").arg(&h).status().unwrap();
    assert!(
        reach.success(),
        "nobody cannot write in {}: every directory above it must be searchable by others (scripts/mount-matrix.sh makes its work directory 0755)",
        h.display()
    );

    let out = as_nobody()
        .arg(bin.path())
        .args(["ensure", "--home"])
        .arg(&h)
        .args(["--size", "64MiB", "--json"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run disk-reserve as nobody");
    let mut v = Violations::default();
    v.check(code(&out) == 75, || {
        format!(
            "rule 4: ensure as an unprivileged user with 40 MiB of quota left defers (exit 75), not an error: exit {:?}\n--- stdout\n{}--- stderr\n{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        )
    });
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap_or(Value::Null);
    v.check(
        report["outcome"] == "deferred" && report["reason"] == "quota",
        || {
            format!(
                "rule 4: the report says deferred, reason quota: {}",
                stdout(&out)
            )
        },
    );
    v.check(names_in(&h).is_empty(), || {
        format!(
            "rule 5: a deferred ensure leaves nothing behind: {:?}",
            names_in(&h)
        )
    });
    settle(&mount.root);
    sh("btrfs", &["quota", "rescan", "-w", root]);
    let (after, _) = qgroup_of(&subvolume);
    v.check(after <= referenced + MIB, || {
        format!("rule 5: the qgroup uses what it used before the deferred ensure: {referenced} -> {after} bytes")
    });
    assert!(
        v.0.is_empty(),
        "quota fs={}: {} violation(s):\n- {}",
        mount.fs,
        v.0.len(),
        v.0.join("\n- ")
    );
    println!(
        "quota fs={}: as nobody with {} of quota left and {free} bytes free, ensure of 64 MiB deferred (reason quota), nothing left",
        mount.fs,
        limit - referenced
    );
}

/// j4. Rule 4 with late frees (xfs, btrfs): the mount filled to the last byte with a
/// filler written with data; the filler deleted with `rm`, and `ensure --size 64MiB` run
/// at once must create the reserve (XFS shows the unlink's blocks free only after its
/// background worker ran, btrfs after a commit: the command flushes, the test does not).
#[test]
fn late_free() {
    let Some(mount) = test_mount("late_free", Needs::Writable) else {
        return;
    };
    let Some(_) = only_on("late_free", &mount, &["xfs", "btrfs"]) else {
        return;
    };
    let dir = Home::new(&mount, "late_free");
    let h = dir.path().join("home");
    fs::create_dir(&h).unwrap();
    let filler = dir.path().join("filler");
    let filled = fill_to_the_last_byte(&filler);
    let full = statvfs_free(&mount.root);
    assert!(
        full < 2 * SHARE_SIZE,
        "the filler leaves less than the reserve and its headroom: {full} bytes free"
    );
    sh("rm", &[path_str(&filler)]);
    let out = run("ensure", &h, &["--size", "64MiB", "--json"]);
    assert_eq!(
        code(&out),
        0,
        "rule 4: ensure right after the filler is deleted creates the reserve (it flushes pending frees before deferring)\n--- stdout\n{}--- stderr\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(json(&out)["outcome"], "created", "{}", stdout(&out));
    assert_complete(&h.join(RESERVE_NAME), SHARE_SIZE);
    println!(
        "late_free fs={}: filler of {filled} B deleted ({full} B free when full), ensure at once created the reserve",
        mount.fs
    );
}

/// j4b. The ensure report counts the reserve it laid down (every writable filesystem):
/// the free space `ensure --json` reports after creating 64 MiB, by the write path and
/// by `--strategy auto` (`fallocate` where there is one), is what the filesystem says once settled, within 1 MiB. btrfs counts
/// written data in `statvfs` only at a transaction commit, which `fsync` does not force:
/// before the report read the space after a `syncfs`, it said the free space of before
/// the write path laid the reserve down (the reserve counted as free).
#[test]
fn report_counts_the_reserve() {
    let Some(mount) = test_mount("report_counts_the_reserve", Needs::Writable) else {
        return;
    };
    let dir = Home::new(&mount, "report_counts_the_reserve");
    let h = dir.path().join("home");
    fs::create_dir(&h).unwrap();
    // `auto`: `fallocate` where the filesystem has it.
    for strategy in ["write", "auto"] {
        let out = run(
            "ensure",
            &h,
            &["--size", "64MiB", "--strategy", strategy, "--json"],
        );
        assert_eq!(
            code(&out),
            0,
            "{strategy}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let report = json(&out);
        assert_eq!(report["outcome"], "created", "{}", stdout(&out));
        let reported = report["free_bytes"].as_u64().unwrap();
        settle(&mount.root);
        let settled = free_bytes(&mount.root);
        println!(
            "report_counts_the_reserve fs={} strategy={strategy}: reported {reported} B free, settled {settled} B",
            mount.fs
        );
        assert!(
            reported.abs_diff(settled) <= MIB,
            "{strategy}: ensure reported {reported} bytes free after creating 64 MiB; the filesystem, settled, says {settled}"
        );
        let out = run("release", &h, &["--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
}

/// j5. Rules 4 and 11: a size plus headroom that can never fit in what an unprivileged
/// writer can ever use is an error (exit 1, "can never fit"), not a deferral:
/// `--size 300MiB` with the default headroom on a filesystem smaller than 600 MiB, and
/// `--size 60%` anywhere. Nothing is created.
#[test]
fn never_fits() {
    let Some(mount) = test_mount("never_fits", Needs::Writable) else {
        return;
    };
    let dir = Home::new(&mount, "never_fits");
    let h = dir.path();
    let usable = statvfs_usable(&mount.root);
    let mut v = Violations::default();
    let mut tried = Vec::new();
    for size in ["300MiB", "60%"] {
        if size == "300MiB" && usable >= 600 * MIB {
            println!(
                "never_fits: {usable} bytes usable: 300MiB and its headroom would fit, not tried"
            );
            continue;
        }
        let out = run("ensure", h, &["--size", size, "--json"]);
        v.check(
            code(&out) == 1 && stderr(&out).contains("can never fit"),
            || {
                format!(
                    "rules 4 and 11: ensure --size {size} ({usable} bytes usable) is an error saying it can never fit (exit 1): exit {:?}\n--- stdout\n{}--- stderr\n{}",
                    out.status.code(),
                    stdout(&out),
                    stderr(&out)
                )
            },
        );
        v.check(names_in(h).is_empty(), || {
            format!(
                "rule 5: ensure --size {size} leaves nothing behind: {:?}",
                names_in(h)
            )
        });
        tried.push(size);
    }
    assert!(
        v.0.is_empty(),
        "never_fits fs={}: {} violation(s):\n- {}",
        mount.fs,
        v.0.len(),
        v.0.join("\n- ")
    );
    println!(
        "never_fits fs={}: {tried:?} with default headroom on {usable} usable bytes: exit 1, can never fit",
        mount.fs
    );
}

/// j6. Rules 1 and 8 on overlayfs (ext4 lower and upper directories on the test mount): a
/// reserve made in the lower layer is not releasable through the overlay — removing it
/// there leaves a whiteout and frees nothing. `status` and `release --json` through the
/// overlay count (almost) nothing releasable, `freed_bytes` is what the filesystem
/// gained (about 0), and the human line of `release` says why (a lower overlay layer).
#[test]
fn overlay() {
    const SIZE: u64 = 16 * MIB;
    let Some(mount) = test_mount("overlay", Needs::Writable) else {
        return;
    };
    let Some(_) = only_on("overlay", &mount, &["ext4"]) else {
        return;
    };
    let dir = Home::new(&mount, "overlay");
    let [lower, upper, work, merged] =
        ["lower", "upper", "work", "merged"].map(|name| dir.path().join(name));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    for home in ["json", "human"] {
        let h = lower.join(home);
        fs::create_dir_all(&h).unwrap();
        assert_exit(&run("ensure", &h, &["--size", "16MiB"]), 0);
        assert_complete(&h.join(RESERVE_NAME), SIZE);
    }
    settle(&mount.root);
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .output()
        .expect("run mount");
    if !mounted.status.success() {
        skip(
            "overlay",
            &format!("mount -t overlay failed: {}", stderr(&mounted).trim()),
        );
        return;
    }
    let _unmount = Unmount(merged.clone());

    let mut v = Violations::default();
    let h = merged.join("json");
    let out = run("status", &h, &["--size", "16MiB", "--json"]);
    assert_exit(&out, 0);
    let status = json(&out);
    v.check(
        field(&status, "releasable_bytes").is_some_and(|r| r <= SHARED_RELEASABLE_MAX),
        || format!("rule 1: status through the overlay counts a reserve in the lower layer as not releasable (at most {SHARED_RELEASABLE_MAX}): {status}"),
    );
    let (report, gained) = measured_release(&h, &mount.root);
    v.check(report["outcome"] == "released", || {
        format!("rule 8: release through the overlay removes the name: {report}")
    });
    v.check(
        field(&report, "releasable_bytes").is_some_and(|r| r <= SHARED_RELEASABLE_MAX),
        || format!("rules 1 and 8: release through the overlay expects to free (almost) nothing from a lower-layer reserve (at most {SHARED_RELEASABLE_MAX}): {report}"),
    );
    check_freed_is_measured(&mut v, "overlay", &report, gained);
    v.check(
        field(&report, "freed_bytes").is_some_and(|f| f <= FREED_TOLERANCE),
        || format!("rule 8: release through the overlay frees (about) nothing: {report}"),
    );
    v.check(lower.join("json").join(RESERVE_NAME).exists(), || {
        "the lower layer keeps its reserve".to_owned()
    });

    let out = run("release", &merged.join("human"), &[]);
    assert_exit(&out, 0);
    v.check(stdout(&out).contains("overlay"), || {
        format!(
            "rule 8: the human line of release through the overlay says why nothing was freed (a lower overlay layer): {}",
            stdout(&out)
        )
    });
    drop(_unmount);
    assert!(
        v.0.is_empty(),
        "overlay fs={}: {} violation(s):\n- {}",
        mount.fs,
        v.0.len(),
        v.0.join("\n- ")
    );
    println!(
        "overlay fs={}: a lower-layer reserve counted as not releasable; release freed {} (measured {gained})",
        mount.fs, report["freed_bytes"]
    );
}

/// j7. Rule 2 on a FUSE filesystem without `fallocate` (the matrix's fusefat and
/// exfat-fuse rows; other filesystems skip): the default strategy falls back to the write
/// path and `ensure` creates a complete reserve even where the housekeeping after the
/// data (the same-length `ftruncate`) is refused; `status` says present; `release`
/// removes it.
#[test]
fn fuse_write_path() {
    const SIZE: u64 = 16 * MIB;
    let Some(mount) = test_mount("fuse_write_path", Needs::Writable) else {
        return;
    };
    let fs_type = fs_type(&mount);
    if !fs_type.starts_with("fuse") {
        skip(
            "fuse_write_path",
            &format!("{} is {fs_type}, not a FUSE filesystem", mount.fs),
        );
        return;
    }
    let dir = Home::new(&mount, "fuse_write_path");
    let h = dir.path();
    let probe = Command::new("fallocate")
        .args(["-l", "1MiB"])
        .arg(h.join("probe"))
        .output()
        .expect("run fallocate");
    let _ = fs::remove_file(h.join("probe"));
    if probe.status.success() {
        skip(
            "fuse_write_path",
            &format!(
                "{} supports fallocate: the write path would not run",
                mount.fs
            ),
        );
        return;
    }
    let mut v = Violations::default();
    let out = run("ensure", h, &["--size", "16MiB", "--json"]);
    v.check(code(&out) == 0, || {
        format!(
            "rule 2: ensure on a filesystem without fallocate writes the reserve (exit 0): exit {:?}\n--- stdout\n{}--- stderr\n{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        )
    });
    let reserve = h.join(RESERVE_NAME);
    if code(&out) == 0 {
        v.check(json(&out)["outcome"] == "created", || {
            format!("rule 2: ensure says created: {}", stdout(&out))
        });
        let found = len_and_allocated(&reserve);
        v.check(
            matches!(found, Some((len, allocated)) if len == SIZE && allocated >= SIZE),
            || format!("rule 2: the reserve is complete: (length, allocated) {found:?}"),
        );
        let out = run("status", h, &["--size", "16MiB", "--json"]);
        v.check(
            code(&out) == 0 && json(&out)["condition"] == "present",
            || format!("status says present: {}{}", stdout(&out), stderr(&out)),
        );
        let out = run("release", h, &["--json"]);
        v.check(code(&out) == 0 && !reserve.exists(), || {
            format!("release removes it: {}{}", stdout(&out), stderr(&out))
        });
    } else {
        v.check(names_in(h).is_empty(), || {
            format!("rule 5: the failed ensure left {:?}", names_in(h))
        });
    }
    assert!(
        v.0.is_empty(),
        "fuse_write_path fs={}: {} violation(s):\n- {}",
        mount.fs,
        v.0.len(),
        v.0.join("\n- ")
    );
    println!(
        "fuse_write_path fs={} ({fs_type}): no fallocate ({}); ensure wrote a complete reserve; status present; released",
        mount.fs,
        stderr(&probe).trim()
    );
}
