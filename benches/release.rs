//! `release` of a complete 64 MiB reserve against the floor `unlink` + `fsync(dir)`
//! (goal ≤ 1.2), on tmpfs and on the repository's filesystem.
//!
//! Every sample starts with a complete reserve: it is laid down (fallocate, fsync, fsync
//! of the directory) in the untimed setup.

mod common;

use std::time::{Duration, SystemTime};

use camino::Utf8Path;
use common::{Goal, Pair, RESERVE_BYTES, c_path, check, interleaved};
use criterion::{BenchmarkId, Criterion, SamplingMode};
use disk_reserve::{RealFs, Released, Reserve, ReserveConfig};

/// Times `iters` runs of `job`, each after an untimed, durable creation of a complete
/// reserve at `file`.
fn timed_from_present(iters: u64, file: &Utf8Path, dir: &Utf8Path, job: impl FnMut()) -> Duration {
    common::timed_after(iters, || lay_down(file, dir), job)
}

fn lay_down(file: &Utf8Path, dir: &Utf8Path) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .expect("create reserve");
    // SAFETY: `f` is an open file for the duration of the call.
    let ret = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            RESERVE_BYTES as libc::off_t,
        )
    };
    check(ret, "fallocate");
    f.sync_all().expect("fsync reserve");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
}

fn release(c: &mut Criterion, filesystems: &[common::Scratch]) {
    let mut group = c.benchmark_group("release");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for fs in filesystems {
        let home = fs.path();
        let reserve = Reserve::new(
            RealFs::new(),
            &home,
            ReserveConfig::with_size_bytes(RESERVE_BYTES),
        )
        .expect("reserve");
        let file = reserve.path().to_owned();
        let (file_c, home_c) = (c_path(&file), c_path(&home));
        let mut ours = |n| {
            timed_from_present(n, &file, &home, || {
                let outcome = reserve.release().expect("release");
                assert!(matches!(outcome, Released::Released { .. }), "{outcome:?}");
            })
        };
        let mut floor = |n| {
            timed_from_present(n, &file, &home, || {
                // SAFETY: both paths are NUL-terminated and outlive the calls; the
                // directory descriptor is opened here and closed once.
                unsafe {
                    check(libc::unlink(file_c.as_ptr()), "unlink");
                    let dfd = check(
                        libc::open(
                            home_c.as_ptr(),
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                        ),
                        "open dir",
                    );
                    check(libc::fsync(dfd), "fsync dir");
                    check(libc::close(dfd), "close dir");
                }
            })
        };
        let key = format!("release/{}", fs.label);
        for (side, name) in ["ours", "floor"].into_iter().enumerate() {
            group.bench_function(BenchmarkId::new(name, fs.label), |b| {
                b.iter_custom(|n| interleaved(&key, side, n, &mut [&mut ours, &mut floor]));
            });
        }
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = common::criterion();
    let filesystems = common::scratch_filesystems("release");
    release(&mut c, &filesystems);
    c.final_summary();
    let pairs: Vec<Pair> = filesystems
        .iter()
        .map(|fs| {
            Pair::new(
                format!("4. `release` of 64 MiB ({})", fs.fs_type),
                format!("release/{}", fs.label),
                format!("release/ours/{}", fs.label),
                format!("release/floor/{}", fs.label),
                Goal::TimeRatioAtMost(1.2),
            )
        })
        .collect();
    common::report(started, &pairs);
}
