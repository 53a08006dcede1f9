//! The calls that run on every start-up or every `status`: `ensure` on a complete
//! reserve against one `lstat` of its path (goal ≤ 1.5), and `status` against
//! `lstat` + `statvfs` (goal ≤ 1.3). Both on the repository's filesystem, with a
//! complete 64 MiB reserve laid down before timing starts.

mod common;

use std::hint::black_box;
use std::mem::MaybeUninit;
use std::time::SystemTime;

use common::{Goal, Pair, RESERVE_BYTES, c_path, check};
use criterion::Criterion;
use disk_reserve::{Ensured, RealFs, Reserve, ReserveConfig};

fn ensure_present(c: &mut Criterion) {
    let scratch = common::repo_scratch("hot-path");
    let home = scratch.path();
    let reserve = Reserve::new(
        RealFs::new(),
        &home,
        ReserveConfig::with_size_bytes(RESERVE_BYTES),
    )
    .expect("reserve");
    assert!(matches!(reserve.ensure(), Ok(Ensured::Created { .. })));
    let path = c_path(reserve.path());
    let home_c = c_path(&home);

    let mut group = c.benchmark_group("ensure_present");
    group.bench_function("ours", |b| {
        b.iter(|| {
            let outcome = reserve.ensure().expect("ensure");
            debug_assert!(matches!(outcome, Ensured::Present { .. }));
            black_box(outcome)
        });
    });
    group.bench_function("floor", |b| {
        b.iter(|| {
            let mut stat = MaybeUninit::<libc::stat>::uninit();
            // SAFETY: `path` is NUL-terminated; `stat` is writable and large enough.
            check(
                unsafe { libc::lstat(path.as_ptr(), stat.as_mut_ptr()) },
                "lstat",
            );
            // SAFETY: `lstat` succeeded and filled it.
            black_box(unsafe { stat.assume_init() }.st_blocks)
        });
    });
    group.finish();

    let mut group = c.benchmark_group("status");
    group.bench_function("ours", |b| {
        b.iter(|| black_box(reserve.status().expect("status")));
    });
    group.bench_function("floor", |b| {
        b.iter(|| {
            let mut stat = MaybeUninit::<libc::stat>::uninit();
            let mut vfs = MaybeUninit::<libc::statvfs>::uninit();
            // SAFETY: both paths are NUL-terminated; both buffers are writable and large
            // enough for their structs.
            unsafe {
                check(libc::statvfs(home_c.as_ptr(), vfs.as_mut_ptr()), "statvfs");
                check(libc::lstat(path.as_ptr(), stat.as_mut_ptr()), "lstat");
            }
            // SAFETY: both calls succeeded and filled their structs.
            black_box(unsafe { (stat.assume_init().st_blocks, vfs.assume_init().f_bavail) })
        });
    });
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = common::criterion();
    ensure_present(&mut c);
    c.final_summary();
    common::report(
        started,
        &[
            Pair::new(
                "1. `ensure`, reserve complete (repo fs)",
                "ensure_present/ours",
                "ensure_present/floor",
                Goal::TimeRatioAtMost(1.5),
            ),
            Pair::new(
                "5. `status` (repo fs)",
                "status/ours",
                "status/floor",
                Goal::TimeRatioAtMost(1.3),
            ),
        ],
    );
}
