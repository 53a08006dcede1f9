//! The calls that run on every start-up or every `status`: `ensure` on a complete
//! reserve against one `lstat` of its path (goal ≤ 1.5), and `status` against
//! `lstat` + `statvfs` (goal ≤ 1.3). Both on the repository's filesystem, with a
//! complete 64 MiB reserve laid down before timing starts.

mod common;

use std::hint::black_box;
use std::mem::MaybeUninit;
use std::time::SystemTime;

use common::{Goal, Pair, RESERVE_BYTES, c_path, check, interleaved, repeat};
use criterion::Criterion;
use disk_reserve::{Ensured, RealFs, Reserve, ReserveConfig};

fn hot_path(c: &mut Criterion) {
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

    let lstat = || {
        let mut stat = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `path` is NUL-terminated; `stat` is writable and large enough.
        check(
            unsafe { libc::lstat(path.as_ptr(), stat.as_mut_ptr()) },
            "lstat",
        );
        // SAFETY: `lstat` succeeded and filled it.
        black_box(unsafe { stat.assume_init() }.st_blocks);
    };
    let statvfs = || {
        let mut vfs = MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `home_c` is NUL-terminated; `vfs` is writable and large enough.
        check(
            unsafe { libc::statvfs(home_c.as_ptr(), vfs.as_mut_ptr()) },
            "statvfs",
        );
        // SAFETY: `statvfs` succeeded and filled it.
        black_box(unsafe { vfs.assume_init() }.f_bavail);
    };

    let mut group = c.benchmark_group("ensure_present");
    let mut ours = |n| {
        repeat(n, || {
            let outcome = reserve.ensure().expect("ensure");
            debug_assert!(matches!(outcome, Ensured::Present { .. }));
            black_box(outcome);
        })
    };
    let mut floor = |n| repeat(n, lstat);
    for (side, name) in ["ours", "floor"].into_iter().enumerate() {
        group.bench_function(name, |b| {
            b.iter_custom(|n| interleaved("ensure_present", side, n, &mut [&mut ours, &mut floor]));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("status");
    let mut ours = |n| {
        repeat(n, || {
            black_box(reserve.status().expect("status"));
        })
    };
    let mut floor = |n| {
        repeat(n, || {
            statvfs();
            lstat();
        })
    };
    for (side, name) in ["ours", "floor"].into_iter().enumerate() {
        group.bench_function(name, |b| {
            b.iter_custom(|n| interleaved("status", side, n, &mut [&mut ours, &mut floor]));
        });
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = common::criterion();
    hot_path(&mut c);
    c.final_summary();
    common::report(
        started,
        &[
            Pair::new(
                "1. `ensure`, reserve complete (repo fs)",
                "ensure_present",
                "ensure_present/ours",
                "ensure_present/floor",
                Goal::TimeRatioAtMost(1.5),
            ),
            Pair::new(
                "5. `status` (repo fs)",
                "status",
                "status/ours",
                "status/floor",
                Goal::TimeRatioAtMost(1.3),
            ),
        ],
    );
}
