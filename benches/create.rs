//! Creating a 64 MiB reserve, on tmpfs and on the repository's filesystem.
//!
//! * `ensure` by `fallocate` (the default strategy) against the floor
//!   `open(O_CREAT|O_EXCL)` + `fallocate` + `fsync(file)` + `fsync(dir)` (goal ≤ 1.15).
//! * `ensure --strategy write` against a plain loop writing the same 64 MiB from a 1 MiB
//!   buffer + `fsync(file)` + `fsync(dir)` (goal: ≥ 0.9 of its throughput; the write path
//!   itself fills and writes 256 KiB at a time, see `RealFs::write_fill`). The
//!   loop is measured twice: writing zeros (the floor) and writing the incompressible
//!   pattern generated per chunk as our write path does, which shows what the pattern
//!   costs over zeros, and a third time writing zeros from a buffer whose pages were
//!   written once (`floor_zeros_touched`): the zeros floor's buffer never is, so its pages
//!   all map the kernel's shared zero page, which no real writer's buffer does; the
//!   difference is what the floor gains from that alone. `pattern_fill` times generating
//!   64 MiB of pattern alone.
//! * The write comparison runs twice: `create_write` on the machine as it is, and
//!   `create_write_busy` with a thread of this process spinning for the whole group, so
//!   on two cores the write path has one core to itself at best (the case the issue
//!   measured: a second core busy with other builds).
//!
//! Every sample starts with no reserve: the file is unlinked (and the directory synced)
//! in the untimed setup.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};
use common::{Goal, Pair, RESERVE_BYTES, Scratch, c_path, check, interleaved};
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, measurement::WallTime,
};
use disk_reserve::{Ensured, RealFs, Reserve, ReserveConfig, Strategy};

/// The buffer the write path fills and writes at once (`FILL_CHUNK_BYTES` in `RealFs`).
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Times `iters` runs of `job`, each after an untimed removal of whatever is at `file`
/// (and a sync of `dir`, so every run starts from the same committed state).
fn timed_from_absent(iters: u64, file: &Utf8Path, dir: &Utf8Path, job: impl FnMut()) -> Duration {
    let total = common::timed_after(iters, || remove_and_sync(file, dir), job);
    remove_and_sync(file, dir);
    total
}

fn remove_and_sync(file: &Utf8Path, dir: &Utf8Path) {
    match std::fs::remove_file(file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {file}: {e}"),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("sync scratch dir");
}

/// Floor for creation: open(O_CREAT|O_EXCL), then `fill(fd)`, fsync, close, fsync(dir).
fn create_floor(file: &std::ffi::CStr, dir: &std::ffi::CStr, fill: impl FnOnce(libc::c_int)) {
    // SAFETY: every pointer is a NUL-terminated path that outlives its call; every fd is
    // one these calls opened and is closed exactly once.
    unsafe {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
        let fd = check(
            libc::open(file.as_ptr(), flags, 0o600 as libc::c_uint),
            "open",
        );
        fill(fd);
        check(libc::fsync(fd), "fsync file");
        check(libc::close(fd), "close file");
        let dfd = check(
            libc::open(
                dir.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            ),
            "open dir",
        );
        check(libc::fsync(dfd), "fsync dir");
        check(libc::close(dfd), "close dir");
    }
}

/// Writes `RESERVE_BYTES` to `fd` from a `WRITE_BUFFER_BYTES` buffer, calling `refill`
/// on the buffer before each write with the chunk's file offset.
fn write_loop(fd: libc::c_int, buf: &mut [u8], mut refill: impl FnMut(&mut [u8], u64)) {
    let mut pos = 0u64;
    while pos < RESERVE_BYTES {
        refill(buf, pos);
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: `fd` is open for writing; the slice is live and readable.
            let n = unsafe {
                libc::pwrite(
                    fd,
                    buf[done..].as_ptr().cast(),
                    buf.len() - done,
                    (pos + done as u64) as libc::off_t,
                )
            };
            assert!(n > 0, "pwrite: {}", std::io::Error::last_os_error());
            done += n as usize;
        }
        pos += buf.len() as u64;
    }
}

fn reserve_on(home: &Utf8PathBuf, strategy: Strategy) -> Reserve<RealFs> {
    Reserve::new(
        RealFs::new(),
        home,
        ReserveConfig::with_size_bytes(RESERVE_BYTES).strategy(strategy),
    )
    .expect("reserve")
}

fn slow_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(RESERVE_BYTES));
    group
}

fn create_fallocate(c: &mut Criterion, filesystems: &[Scratch]) {
    let mut group = slow_group(c, "create_fallocate");
    for fs in filesystems {
        let home = fs.path();
        let reserve = reserve_on(&home, Strategy::Auto);
        let file = reserve.path().to_owned();
        let (file_c, home_c) = (c_path(&file), c_path(&home));
        let mut ours = |n| {
            timed_from_absent(n, &file, &home, || {
                let outcome = reserve.ensure().expect("ensure");
                assert!(matches!(outcome, Ensured::Created { .. }), "{outcome:?}");
            })
        };
        let mut floor = |n| {
            timed_from_absent(n, &file, &home, || {
                create_floor(&file_c, &home_c, |fd| {
                    // SAFETY: `fd` is open for writing.
                    let ret = unsafe { libc::fallocate(fd, 0, 0, RESERVE_BYTES as libc::off_t) };
                    check(ret, "fallocate");
                });
            })
        };
        let key = format!("create_fallocate/{}", fs.label);
        for (side, name) in ["ours", "floor"].into_iter().enumerate() {
            group.bench_function(BenchmarkId::new(name, fs.label), |b| {
                b.iter_custom(|n| interleaved(&key, side, n, &mut [&mut ours, &mut floor]));
            });
        }
    }
    group.finish();
}

/// A thread spinning until dropped: keeps one core busy while a group runs.
struct BusyCore {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyCore {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut x = 0u64;
            while !flag.load(Ordering::Relaxed) {
                x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        });
        BusyCore {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BusyCore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The group name of the write comparison, idle or with a core kept busy.
fn write_group(busy: bool) -> &'static str {
    if busy {
        "create_write_busy"
    } else {
        "create_write"
    }
}

fn create_write(c: &mut Criterion, filesystems: &[Scratch], busy: bool) {
    let name = write_group(busy);
    let _busy = busy.then(BusyCore::start);
    let mut group = slow_group(c, name);
    for fs in filesystems {
        let home = fs.path();
        let reserve = reserve_on(&home, Strategy::Write);
        let file = reserve.path().to_owned();
        let (file_c, home_c) = (c_path(&file), c_path(&home));
        let mut buf = vec![0u8; WRITE_BUFFER_BYTES];
        let mut ours = |n| {
            timed_from_absent(n, &file, &home, || {
                let outcome = reserve.ensure().expect("ensure");
                assert!(matches!(outcome, Ensured::Created { .. }), "{outcome:?}");
            })
        };
        let mut zeros = |n| {
            timed_from_absent(n, &file, &home, || {
                create_floor(&file_c, &home_c, |fd| write_loop(fd, &mut buf, |_, _| {}));
            })
        };
        let mut pattern_buf = vec![0u8; WRITE_BUFFER_BYTES];
        let mut pattern = |n| {
            timed_from_absent(n, &file, &home, || {
                create_floor(&file_c, &home_c, |fd| {
                    write_loop(fd, &mut pattern_buf, |chunk, pos| {
                        disk_reserve::pattern::fill(chunk, 7, pos);
                    });
                });
            })
        };
        // Zeros again, but from a buffer whose pages were written once, as any reused
        // buffer's are: `buf` above was never written, so all its pages map the kernel's
        // one shared zero page and the kernel copies from the same 4 KiB again and again.
        let mut touched_buf = vec![0xa5u8; WRITE_BUFFER_BYTES];
        black_box(&mut touched_buf).fill(0);
        let mut zeros_touched = |n| {
            timed_from_absent(n, &file, &home, || {
                create_floor(&file_c, &home_c, |fd| {
                    write_loop(fd, &mut touched_buf, |_, _| {});
                });
            })
        };
        let key = format!("{name}/{}", fs.label);
        let side_names = [
            "ours",
            "floor_zeros",
            "floor_pattern",
            "floor_zeros_touched",
        ];
        for (side, side_name) in side_names.into_iter().enumerate() {
            group.bench_function(BenchmarkId::new(side_name, fs.label), |b| {
                b.iter_custom(|n| {
                    let sides: &mut [common::Side<'_>] =
                        &mut [&mut ours, &mut zeros, &mut pattern, &mut zeros_touched];
                    interleaved(&key, side, n, sides)
                });
            });
        }
    }
    group.finish();
}

fn pattern_fill(c: &mut Criterion) {
    let mut group = slow_group(c, "pattern_fill");
    let mut buf = vec![0u8; WRITE_BUFFER_BYTES];
    group.bench_function("64MiB", |b| {
        b.iter(|| {
            let mut pos = 0;
            while pos < RESERVE_BYTES {
                disk_reserve::pattern::fill(&mut buf, 7, pos);
                black_box(&buf);
                pos += WRITE_BUFFER_BYTES as u64;
            }
        });
    });
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = common::criterion();
    let filesystems = common::scratch_filesystems("create");
    create_fallocate(&mut c, &filesystems);
    create_write(&mut c, &filesystems, false);
    create_write(&mut c, &filesystems, true);
    pattern_fill(&mut c);
    c.final_summary();

    let mut pairs = Vec::new();
    for fs in &filesystems {
        let (l, t) = (fs.label, fs.fs_type);
        pairs.push(Pair::new(
            format!("2. `ensure` creating 64 MiB by fallocate ({t})"),
            format!("create_fallocate/{l}"),
            format!("create_fallocate/ours/{l}"),
            format!("create_fallocate/floor/{l}"),
            Goal::TimeRatioAtMost(1.15),
        ));
    }
    for busy in [false, true] {
        let group = write_group(busy);
        let load = if busy { ", second core busy" } else { "" };
        for fs in &filesystems {
            let (l, t) = (fs.label, fs.fs_type);
            let key = format!("{group}/{l}");
            pairs.push(Pair::new(
                format!("3. `ensure --strategy write` 64 MiB vs zeros loop ({t}{load})"),
                &key,
                format!("{group}/ours/{l}"),
                format!("{group}/floor_zeros/{l}"),
                Goal::ThroughputAtLeast(0.9),
            ));
            pairs.push(
                Pair::new(
                    format!("3. `ensure --strategy write` 64 MiB vs pattern loop ({t}{load})"),
                    &key,
                    format!("{group}/ours/{l}"),
                    format!("{group}/floor_pattern/{l}"),
                    Goal::ThroughputAtLeast(0.9),
                )
                .sides(0, 2),
            );
            pairs.push(
                Pair::new(
                    format!("3. write loop: pattern over zeros ({t}{load})"),
                    &key,
                    format!("{group}/floor_pattern/{l}"),
                    format!("{group}/floor_zeros/{l}"),
                    Goal::None,
                )
                .sides(2, 1),
            );
            pairs.push(
                Pair::new(
                    format!("3. write loop: pattern over zeros from a written buffer ({t}{load})"),
                    &key,
                    format!("{group}/floor_pattern/{l}"),
                    format!("{group}/floor_zeros_touched/{l}"),
                    Goal::None,
                )
                .sides(2, 3),
            );
            pairs.push(
                Pair::new(
                    format!("3. write loop: zeros from a written buffer over zeros ({t}{load})"),
                    &key,
                    format!("{group}/floor_zeros_touched/{l}"),
                    format!("{group}/floor_zeros/{l}"),
                    Goal::None,
                )
                .sides(3, 1),
            );
        }
    }
    common::report(started, &pairs);
}
