//! The file API (issue 13): what storage code pays for writing through the handles
//! instead of `std::fs`, and what a simulated disk saves.
//!
//! On tmpfs (`/dev/shm`; the case is skipped with a printed line when it is not a tmpfs):
//! `RealFs` against `std::fs` doing the same calls (goal ≤ 1.05: within a few percent),
//! for `write 4 KiB + fdatasync` on an open file and for `create + write 4 KiB + rename`
//! over an existing name. The same two jobs on `SimFs` are reported against `RealFs` on
//! tmpfs, the fastest real filesystem (a simulated disk should be several times faster).
//! Each pair runs interleaved, the ratio is the median of the per-sample ratios (see
//! `BENCHMARKS.md`).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime};

use camino::Utf8Path;
use common::{Goal, Pair, interleaved, repeat};
use criterion::{BenchmarkId, Criterion, SamplingMode};
use disk_reserve::{DirHandle, HostFs, OpenOptions, RealFs, SimFs};

const BLOCK: [u8; 4096] = [0x5A; 4096];

/// `write 4 KiB + fdatasync` at offset 0 of an open file, through a directory handle.
fn write_sync_handle(dir: &dyn DirHandle, name: &str) -> impl FnMut(u64) -> Duration {
    let file = dir
        .open_file(name, OpenOptions::create())
        .expect("open file");
    move |n| {
        repeat(n, || {
            file.write_all_at(0, &BLOCK).expect("write");
            file.sync_data().expect("fdatasync");
        })
    }
}

/// `create + write 4 KiB + rename` over `name`, through a directory handle.
fn create_rename_handle(dir: &dyn DirHandle, name: &str) -> impl FnMut(u64) -> Duration {
    let temp = format!("{name}.new");
    move |n| {
        repeat(n, || {
            let file = dir
                .open_file(
                    &temp,
                    OpenOptions {
                        truncate: true,
                        ..OpenOptions::create()
                    },
                )
                .expect("create");
            file.write_all_at(0, &BLOCK).expect("write");
            drop(file);
            dir.rename(&temp, name).expect("rename");
        })
    }
}

fn file_api(c: &mut Criterion, tmpfs: &Utf8Path) {
    let mut group = c.benchmark_group("file_api");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let real = RealFs::new().open_dir(tmpfs).expect("open tmpfs scratch");
    let sim_fs = SimFs::with_home(1 << 30, "/bench");
    let sim = sim_fs.open_dir("/bench".into()).expect("open sim dir");

    // write 4 KiB + fdatasync
    let mut real_write = write_sync_handle(&*real, "w");
    let mut sim_write = write_sync_handle(&*sim, "w");
    let std_file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(tmpfs.join("w-std"))
        .expect("std open");
    let mut std_write = |n| {
        repeat(n, || {
            std_file.write_all_at(&BLOCK, 0).expect("write");
            std_file.sync_data().expect("fdatasync");
        })
    };
    for (side, name) in ["realfs", "std", "simfs"].into_iter().enumerate() {
        group.bench_function(BenchmarkId::new(name, "write_4k_fdatasync"), |b| {
            b.iter_custom(|n| {
                interleaved(
                    "write_4k_fdatasync",
                    side,
                    n,
                    &mut [&mut real_write, &mut std_write, &mut sim_write],
                )
            });
        });
    }

    // create + write 4 KiB + rename over an existing name
    let mut real_rename = create_rename_handle(&*real, "r");
    let mut sim_rename = create_rename_handle(&*sim, "r");
    let (std_temp, std_target) = (tmpfs.join("r-std.new"), tmpfs.join("r-std"));
    let mut std_rename = |n| {
        repeat(n, || {
            let mut file = fs::File::create(&std_temp).expect("create");
            file.write_all(&BLOCK).expect("write");
            drop(file);
            fs::rename(&std_temp, &std_target).expect("rename");
        })
    };
    for (side, name) in ["realfs", "std", "simfs"].into_iter().enumerate() {
        group.bench_function(BenchmarkId::new(name, "create_write_rename"), |b| {
            b.iter_custom(|n| {
                interleaved(
                    "create_write_rename",
                    side,
                    n,
                    &mut [&mut real_rename, &mut std_rename, &mut sim_rename],
                )
            });
        });
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = common::criterion();
    let Some(tmpfs) = common::scratch_filesystems("file-api")
        .into_iter()
        .find(|s| s.label == "tmpfs")
    else {
        println!("file_api: no tmpfs, nothing to compare");
        return;
    };
    file_api(&mut c, &tmpfs.path());
    c.final_summary();
    let mut pairs = Vec::new();
    for job in ["write_4k_fdatasync", "create_write_rename"] {
        pairs.push(Pair::new(
            format!("8. file API `{job}`: RealFs vs std::fs (tmpfs)"),
            job,
            format!("file_api/realfs/{job}"),
            format!("file_api/std/{job}"),
            Goal::TimeRatioAtMost(1.05),
        ));
        pairs.push(
            Pair::new(
                format!("8. file API `{job}`: SimFs vs RealFs on tmpfs"),
                job,
                format!("file_api/simfs/{job}"),
                format!("file_api/realfs/{job}"),
                Goal::TimeRatioAtMost(0.5),
            )
            .sides(2, 0),
        );
    }
    common::report(started, &pairs);
}
