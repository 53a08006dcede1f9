//! What every bench shares: scratch directories on the filesystems under test, the
//! Criterion configuration, and the ratio table printed after a run.
//!
//! Each bench measures one of our operations and, in the same run, the floor: the
//! shortest sequence of syscalls that does the same job. After Criterion finishes, the
//! binary reads back the medians it saved and prints one Markdown row per pair, ready for
//! `BENCHMARKS.md`. In test mode (`cargo bench -- --test`) every bench runs once and no
//! table is printed. The machine may be noisy: only ratios measured in one run mean
//! anything, and nothing here asserts an absolute time.
#![allow(dead_code)] // each bench binary uses a different part of this module

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};
use criterion::Criterion;
use tempfile::TempDir;

/// 64 MiB: the default reserve size, used by every bench that allocates.
pub const RESERVE_BYTES: u64 = 64 << 20;

/// `TMPFS_MAGIC` from `linux/magic.h`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A scratch directory on one filesystem, removed with its contents when dropped.
pub struct Scratch {
    /// `tmpfs` or `repo` (the filesystem holding the repository's `target/`); bench ids
    /// use it.
    pub label: &'static str,
    /// The filesystem type, for the table (`tmpfs`, `ext2/3/4`, `xfs`…).
    pub fs_type: &'static str,
    dir: TempDir,
}

impl Scratch {
    /// The directory, as the library wants it.
    pub fn path(&self) -> Utf8PathBuf {
        Utf8PathBuf::try_from(self.dir.path().to_path_buf()).expect("UTF-8 scratch directory")
    }
}

/// The filesystems the allocating benches run on: tmpfs (`/dev/shm`; skipped with a
/// printed line when it is not a tmpfs) and the repository's own filesystem (a temp dir
/// under `target/bench-tmp`).
pub fn scratch_filesystems(what: &str) -> Vec<Scratch> {
    let mut out = Vec::new();
    let shm = Path::new("/dev/shm");
    match statfs_type(shm) {
        Some(TMPFS_MAGIC) => out.push(Scratch {
            label: "tmpfs",
            fs_type: "tmpfs",
            dir: tempfile::Builder::new()
                .prefix(&format!("disk-reserve-bench-{what}-"))
                .tempdir_in(shm)
                .expect("temp dir in /dev/shm"),
        }),
        _ => println!("{what}: skipping the tmpfs case: /dev/shm is not a tmpfs here"),
    }
    out.push(repo_scratch(what));
    out
}

/// A scratch directory on the repository's filesystem, under `target/bench-tmp`.
pub fn repo_scratch(what: &str) -> Scratch {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tmp");
    std::fs::create_dir_all(&base).expect("create target/bench-tmp");
    let fs_type = fs_type_name(statfs_type(&base));
    Scratch {
        label: "repo",
        fs_type,
        dir: tempfile::Builder::new()
            .prefix(&format!("{what}-"))
            .tempdir_in(&base)
            .expect("temp dir in target/bench-tmp"),
    }
}

/// A scratch directory under `base` (a mount the caller names), labelled with its
/// filesystem type.
pub fn scratch_in(what: &str, base: &Path) -> Scratch {
    let fs_type = fs_type_name(statfs_type(base));
    Scratch {
        label: fs_type,
        fs_type,
        dir: tempfile::Builder::new()
            .prefix(&format!("disk-reserve-bench-{what}-"))
            .tempdir_in(base)
            .unwrap_or_else(|e| panic!("temp dir in {}: {e}", base.display())),
    }
}

/// `f_type` of the filesystem holding `path` (`statfs(2)`).
fn statfs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `buf` is writable memory of the right size.
    if unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: `statfs` succeeded and filled the struct.
    #[allow(clippy::unnecessary_cast)]
    Some(unsafe { buf.assume_init() }.f_type as i64)
}

/// A readable name for a `statfs` magic number.
fn fs_type_name(magic: Option<i64>) -> &'static str {
    match magic {
        Some(TMPFS_MAGIC) => "tmpfs",
        Some(0xEF53) => "ext2/3/4",
        Some(0x5846_5342) => "xfs",
        Some(0x9123_683E) => "btrfs",
        Some(0x2FC1_2FC1) => "zfs",
        Some(0x794C_7630) => "overlayfs",
        Some(0xF2F5_2010) => "f2fs",
        _ => "other",
    }
}

/// `path` as a C string, built once outside the timed part of a floor.
pub fn c_path(path: &Utf8Path) -> CString {
    CString::new(path.as_str()).expect("no NUL in path")
}

/// Panics with the OS error when a libc call returned `-1` (floors must not fail
/// silently); returns the value otherwise.
#[track_caller]
pub fn check(ret: libc::c_int, what: &str) -> libc::c_int {
    assert!(ret != -1, "{what}: {}", std::io::Error::last_os_error());
    ret
}

/// The Criterion instance every bench binary uses: results under the crate's
/// `target/criterion` (so the table can read them back), command-line flags applied.
pub fn criterion() -> Criterion {
    Criterion::default()
        .output_directory(&criterion_dir())
        .configure_from_args()
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion"),
        PathBuf::from,
    )
}

/// Timings of the sides of one comparison, one entry per Criterion sample, in side
/// order (`[ours, floor, …]`), keyed by comparison.
static ROUNDS: Mutex<BTreeMap<String, Vec<Vec<Duration>>>> = Mutex::new(BTreeMap::new());

/// A side of a comparison: runs `iters` times (setup excluded) and returns the time taken.
pub type Side<'a> = &'a mut dyn FnMut(u64) -> Duration;

/// Runs every side of comparison `key` for `iters` iterations back to back, starting with
/// side `timed` and going round, records the round, and returns side `timed`'s time for
/// Criterion.
///
/// Interleaving is what makes the ratio trustworthy on a shared, noisy machine: each
/// round times ours and the floor within milliseconds of each other, so a slow spell
/// hits both, and the ratio taken per round cancels it. Starting with the side being
/// timed alternates the order between the two Criterion benchmarks of a pair.
pub fn interleaved(key: &str, timed: usize, iters: u64, sides: &mut [Side<'_>]) -> Duration {
    let mut times = vec![Duration::ZERO; sides.len()];
    for step in 0..sides.len() {
        let side = (timed + step) % sides.len();
        times[side] = (sides[side])(iters);
    }
    let result = times[timed];
    ROUNDS
        .lock()
        .expect("rounds")
        .entry(key.to_owned())
        .or_default()
        .push(times);
    result
}

/// Median over the recorded rounds of `key` of side `a`'s time over side `b`'s.
fn paired_ratio(key: &str, a: usize, b: usize) -> Option<f64> {
    let rounds = ROUNDS.lock().expect("rounds");
    let mut ratios: Vec<f64> = rounds
        .get(key)?
        .iter()
        .map(|round| round[a].as_secs_f64() / round[b].as_secs_f64())
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some(ratios[ratios.len() / 2])
}

/// What a pair must show.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// Our median over the floor's at most this.
    TimeRatioAtMost(f64),
    /// Our throughput at least this share of the floor's (floor median over ours).
    ThroughputAtLeast(f64),
    /// Reported for information, no goal.
    None,
}

/// One row of the table: our Criterion benchmark id, the floor's
/// (`group/function[/value]`), and where the interleaved rounds of the two are recorded.
pub struct Pair {
    pub bench: String,
    pub ours: String,
    pub floor: String,
    pub goal: Goal,
    /// `(key, our side, floor side)` in the rounds [`interleaved`] recorded.
    pub rounds: (String, usize, usize),
}

impl Pair {
    /// A row for `ours` against `floor`, their ratio taken from the rounds of `key`
    /// (ours is side 0, the floor side 1).
    pub fn new(
        bench: impl Into<String>,
        key: impl Into<String>,
        ours: impl Into<String>,
        floor: impl Into<String>,
        goal: Goal,
    ) -> Self {
        Pair {
            bench: bench.into(),
            ours: ours.into(),
            floor: floor.into(),
            goal,
            rounds: (key.into(), 0, 1),
        }
    }

    /// Takes the ratio from sides `ours` and `floor` of the rounds instead of 0 and 1.
    pub fn sides(mut self, ours: usize, floor: usize) -> Self {
        self.rounds.1 = ours;
        self.rounds.2 = floor;
        self
    }
}

/// Whether this run measures (not `--test`, `--list` or `--profile-time`).
pub fn measuring() -> bool {
    !std::env::args().any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"))
}

/// Prints the Markdown rows for `pairs`: Criterion's medians of this run, and the ratio
/// as the median of the per-round ratios of the interleaved measurements. A pair whose
/// estimates were not written by this process (filtered out, or a test run) is skipped.
pub fn report(started: SystemTime, pairs: &[Pair]) {
    if !measuring() {
        return;
    }
    let rows: Vec<String> = pairs
        .iter()
        .filter_map(|pair| {
            let ours = median_ns(&pair.ours, started)?;
            let floor = median_ns(&pair.floor, started)?;
            let (key, a, b) = &pair.rounds;
            let time_ratio = paired_ratio(key, *a, *b)?;
            let (ratio, goal, met) = match pair.goal {
                Goal::TimeRatioAtMost(max) => (
                    format!("{time_ratio:.3}"),
                    format!("≤ {max}"),
                    if time_ratio <= max { "yes" } else { "**no**" },
                ),
                Goal::ThroughputAtLeast(min) => {
                    let share = 1.0 / time_ratio;
                    (
                        format!("{time_ratio:.3} (throughput {share:.3} of floor)"),
                        format!("throughput ≥ {min} of floor"),
                        if share >= min { "yes" } else { "**no**" },
                    )
                }
                Goal::None => (format!("{time_ratio:.3}"), "—".to_owned(), "—"),
            };
            Some(format!(
                "| {} | {} | {} | {ratio} | {goal} | {met} |",
                pair.bench,
                human_ns(ours),
                human_ns(floor)
            ))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!();
    println!("| bench | our median | floor median | ratio (paired) | goal | met? |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
}

/// The median (ns) Criterion saved for `id`, if this process wrote it.
fn median_ns(id: &str, started: SystemTime) -> Option<f64> {
    let file = criterion_dir().join(id).join("new/estimates.json");
    let written = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
    if written < started {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// `ns` in the unit that reads best.
pub fn human_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// Time of `iters` calls of `op`, for the sides of fast comparisons (no setup).
pub fn repeat(iters: u64, mut op: impl FnMut()) -> Duration {
    let start = std::time::Instant::now();
    for _ in 0..iters {
        op();
    }
    start.elapsed()
}

/// Prints a Markdown table of Criterion's medians of this run for `(label, id)` rows, with
/// the rate they make, for benches that have no syscall floor.
pub fn report_medians(started: SystemTime, rows: &[(&str, &str)]) {
    if !measuring() {
        return;
    }
    let rows: Vec<String> = rows
        .iter()
        .filter_map(|(label, id)| {
            let median = median_ns(id, started)?;
            Some(format!(
                "| {label} | {} | {:.0} |",
                human_ns(median),
                1e9 / median
            ))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!();
    println!("| bench | median | per second |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
}

/// Times `iters` runs of `job`, each after an untimed `setup` (which puts the scratch
/// directory back into the state every timed run must start from).
pub fn timed_after(iters: u64, mut setup: impl FnMut(), mut job: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        setup();
        let start = Instant::now();
        job();
        total += start.elapsed();
    }
    total
}
