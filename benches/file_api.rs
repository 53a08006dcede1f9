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
//!
//! Without tmpfs too: SimFs against `vfs`'s `MemoryFS` (the issue's anchor) on
//! `write 4 KiB` + sync and on a segment's life (create, write 4 records of 4 KiB, read
//! back, rename, remove), and the time of 10,000 small simulated tests (a fresh `SimFs`,
//! create, write, `fdatasync`, crash, check), the issue's "in under a second" figure.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
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

/// Records per segment in the `vfs` comparison.
const RECORDS: usize = 4;

/// One segment's life through the handles: create `seg.new`, write 4 records of 4 KiB,
/// read them back, rename to `seg`, remove it. With `durable`, the records are
/// `fdatasync`ed and the directory synced after the create and the rename, as storage
/// code does (`vfs` has no such calls).
fn segment_cycle_handle(dir: &dyn DirHandle, durable: bool) -> impl FnMut(u64) -> Duration {
    let mut back = vec![0u8; RECORDS * BLOCK.len()];
    move |n| {
        repeat(n, || {
            let file = dir
                .open_file("seg.new", OpenOptions::create_new())
                .expect("create");
            for i in 0..RECORDS {
                file.write_all_at((i * BLOCK.len()) as u64, &BLOCK)
                    .expect("write");
            }
            if durable {
                file.sync_data().expect("fdatasync");
                dir.sync().expect("sync dir");
            }
            drop(file);
            let file = dir.open_file("seg.new", OpenOptions::read()).expect("open");
            assert_eq!(file.read_at(0, &mut back).expect("read"), back.len());
            drop(file);
            dir.rename("seg.new", "seg").expect("rename");
            if durable {
                dir.sync().expect("sync dir");
            }
            dir.remove_file("seg").expect("remove");
        })
    }
}

/// The same segment's life on `vfs`'s `MemoryFS`, through its `VfsPath` API. `MemoryFS`
/// has no rename (`move_file` is not supported), so `VfsPath::move_file` does what it
/// does then: copies the file to the new name and removes the old one.
fn segment_cycle_vfs(root: &vfs::VfsPath) -> impl FnMut(u64) -> Duration {
    let temp = root.join("seg.new").expect("path");
    let done = root.join("seg").expect("path");
    let mut back = vec![0u8; RECORDS * BLOCK.len()];
    move |n| {
        repeat(n, || {
            let mut file = temp.create_file().expect("create");
            for _ in 0..RECORDS {
                file.write_all(&BLOCK).expect("write");
            }
            drop(file); // MemoryFS publishes a file's bytes when its writer is flushed
            temp.open_file()
                .expect("open")
                .read_exact(&mut back)
                .expect("read");
            temp.move_file(&done).expect("rename");
            done.remove_file().expect("remove");
        })
    }
}

/// `write 4 KiB` at offset 0 of an open file and make it visible: `fdatasync` on SimFs,
/// `flush` on `MemoryFS` (which publishes a copy of the whole file; it has no durability).
fn write_flush_vfs(root: &vfs::VfsPath) -> impl FnMut(u64) -> Duration {
    let mut file = root.join("w").expect("path").create_file().expect("create");
    move |n| {
        repeat(n, || {
            file.seek(SeekFrom::Start(0)).expect("seek");
            file.write_all(&BLOCK).expect("write");
            file.flush().expect("flush");
        })
    }
}

/// SimFs against `vfs::MemoryFS` on the same small jobs, interleaved.
fn against_vfs(c: &mut Criterion) {
    let mut group = c.benchmark_group("vfs");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let sim_fs = SimFs::with_home(1 << 30, "/bench");
    let sim = sim_fs.open_dir("/bench".into()).expect("open sim dir");
    let root = vfs::VfsPath::new(vfs::MemoryFS::new());

    let mut sim_write = write_sync_handle(&*sim, "w");
    let mut vfs_write = write_flush_vfs(&root);
    for (side, name) in ["simfs", "memoryfs"].into_iter().enumerate() {
        group.bench_function(BenchmarkId::new(name, "write_4k_sync"), |b| {
            b.iter_custom(|n| {
                interleaved(
                    "vfs_write_4k_sync",
                    side,
                    n,
                    &mut [&mut sim_write, &mut vfs_write],
                )
            });
        });
    }

    let mut sim_cycle = segment_cycle_handle(&*sim, false);
    let mut sim_durable = segment_cycle_handle(&*sim, true);
    let mut vfs_cycle = segment_cycle_vfs(&root);
    for (side, name) in ["simfs", "memoryfs", "simfs_durable"]
        .into_iter()
        .enumerate()
    {
        group.bench_function(BenchmarkId::new(name, "segment_cycle"), |b| {
            b.iter_custom(|n| {
                interleaved(
                    "vfs_segment_cycle",
                    side,
                    n,
                    &mut [&mut sim_cycle, &mut vfs_cycle, &mut sim_durable],
                )
            });
        });
    }
    group.finish();
}

/// One small simulated test, as a test author writes them: a fresh 64 MiB `SimFs`, a
/// record written and made durable, a second one not, a crash, and a check that exactly
/// the first survived.
fn small_simulated_test() {
    let fs = SimFs::with_home(64 << 20, "/t");
    let dir = fs.open_dir("/t".into()).expect("open");
    let wal = dir
        .open_file("wal", OpenOptions::create_new())
        .expect("create");
    wal.write_all_at(0, b"record 1").expect("write");
    wal.sync_data().expect("fdatasync");
    dir.sync().expect("sync dir");
    wal.write_all_at(8, b"record 2").expect("write");
    drop(wal);
    fs.crash();
    let dir = fs.open_dir("/t".into()).expect("open after crash");
    let wal = dir.open_file("wal", OpenOptions::read()).expect("reopen");
    let mut back = [0u8; 16];
    let n = wal.read_at(0, &mut back).expect("read");
    assert_eq!(&back[..n], b"record 1");
}

/// How many small simulated tests make the figure.
const SMALL_TESTS: u32 = 10_000;

fn small_tests(c: &mut Criterion) {
    let mut group = c.benchmark_group("small_tests");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new("simfs", "10000_small_tests"), |b| {
        b.iter(|| {
            for _ in 0..SMALL_TESTS {
                small_simulated_test();
            }
        });
    });
    group.finish();
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
    against_vfs(&mut c);
    small_tests(&mut c);
    let tmpfs = common::scratch_filesystems("file-api")
        .into_iter()
        .find(|s| s.label == "tmpfs");
    match &tmpfs {
        Some(tmpfs) => file_api(&mut c, &tmpfs.path()),
        None => println!("file_api: no tmpfs, no RealFs/std::fs rows"),
    }
    c.final_summary();
    let mut pairs = vec![
        Pair::new(
            "9. `write 4 KiB` + `fdatasync` (MemoryFS: + `flush`): SimFs vs vfs::MemoryFS",
            "vfs_write_4k_sync",
            "vfs/simfs/write_4k_sync",
            "vfs/memoryfs/write_4k_sync",
            Goal::None,
        ),
        Pair::new(
            "9. segment cycle (create, 4 × 4 KiB, read back, rename, remove): SimFs vs vfs::MemoryFS",
            "vfs_segment_cycle",
            "vfs/simfs/segment_cycle",
            "vfs/memoryfs/segment_cycle",
            Goal::None,
        ),
        Pair::new(
            "9. segment cycle, SimFs with `fdatasync` + 2 directory syncs vs vfs::MemoryFS without",
            "vfs_segment_cycle",
            "vfs/simfs_durable/segment_cycle",
            "vfs/memoryfs/segment_cycle",
            Goal::None,
        )
        .sides(2, 1),
    ];
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
    common::report_medians(
        started,
        &[(
            "10,000 small simulated tests (fresh SimFs, create, write, fsync, crash, check)",
            "small_tests/simfs/10000_small_tests",
        )],
    );
}
