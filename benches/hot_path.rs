//! The calls that run on every start-up or every `status`: `ensure` on a complete
//! reserve against its own floor — the system calls an anchored look needs: `open` of
//! the home (`O_DIRECTORY`), `fstatat` of the name, `close` (goal ≤ 1.5) — and `status`
//! against `open` + `fstatvfs` + `fstatat` + `close` (goal ≤ 1.3). Both on the
//! repository's filesystem, with a complete 64 MiB reserve laid down before timing starts.

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
    let home_c = c_path(&home);

    let name = c".reserve";
    let open_home = || {
        // SAFETY: `home_c` is NUL-terminated.
        let fd = unsafe {
            libc::open(
                home_c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        check(if fd < 0 { -1 } else { 0 }, "open");
        fd
    };
    let close = |fd| {
        // SAFETY: `fd` was opened above and is closed once.
        check(unsafe { libc::close(fd) }, "close");
    };
    let fstatat = |fd| {
        let mut stat = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `fd` is open, `name` NUL-terminated; `stat` is writable and large enough.
        check(
            unsafe {
                libc::fstatat(
                    fd,
                    name.as_ptr(),
                    stat.as_mut_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            },
            "fstatat",
        );
        // SAFETY: `fstatat` succeeded and filled it.
        black_box(unsafe { stat.assume_init() }.st_blocks);
    };
    let fstatvfs = |fd| {
        let mut vfs = MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `fd` is open; `vfs` is writable and large enough.
        check(unsafe { libc::fstatvfs(fd, vfs.as_mut_ptr()) }, "fstatvfs");
        // SAFETY: `fstatvfs` succeeded and filled it.
        black_box(unsafe { vfs.assume_init() }.f_bavail);
    };
    let anchored_look = || {
        let fd = open_home();
        fstatat(fd);
        close(fd);
    };

    let mut group = c.benchmark_group("ensure_present");
    let mut ours = |n| {
        repeat(n, || {
            let outcome = reserve.ensure().expect("ensure");
            debug_assert!(matches!(outcome, Ensured::Present { .. }));
            black_box(outcome);
        })
    };
    let mut floor = |n| repeat(n, anchored_look);
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
            let fd = open_home();
            fstatvfs(fd);
            fstatat(fd);
            close(fd);
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
