//! The calls that run on every start-up or every `status`: `ensure` on a complete
//! reserve against its own floor — the system calls an anchored look needs: `open` of
//! the home (`O_DIRECTORY`), `fstatat` of the name, `close` (goal ≤ 1.5) — and `status`
//! against `open` + `fstatvfs` + `fstatat` + `close` (goal ≤ 1.3). Both on the
//! repository's filesystem, with a complete 64 MiB reserve laid down before timing starts.
//!
//! With `DISK_RESERVE_BENCH_MOUNTS` set to directories on other filesystems (space-
//! separated; e.g. xfs and btrfs loop mounts), `ensure` on a complete reserve there too,
//! where it must look at the extents (`FIEMAP`, for blocks shared with a snapshot or a
//! reflink copy), against its own floor: `open` of the home, `fstatat` of the name,
//! `openat` of the reserve, `FIEMAP` over the whole file, two `close`s (goal ≤ 1.5).

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

/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
const FIEMAP_BATCH: usize = 128;

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `struct fiemap` with room for [`FIEMAP_BATCH`] extents.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

/// The floor's extent look: `FIEMAP` over the whole file into a buffer allocated once,
/// summing the shared bytes, as many calls as it takes.
fn fiemap_shared(fd: libc::c_int, map: &mut Fiemap) -> u64 {
    let mut shared = 0;
    let mut start = 0u64;
    loop {
        map.start = start;
        map.length = u64::MAX - start;
        map.mapped_extents = 0;
        map.extent_count = FIEMAP_BATCH as u32;
        // SAFETY: `fd` is open; `map` is a live, writable `struct fiemap` with room for
        // `extent_count` extents.
        check(
            unsafe { libc::ioctl(fd, FS_IOC_FIEMAP as _, map as *mut Fiemap) },
            "FIEMAP",
        );
        let mapped = (map.mapped_extents as usize).min(FIEMAP_BATCH);
        if mapped == 0 {
            return shared;
        }
        for extent in &map.extents[..mapped] {
            if extent.flags & FIEMAP_EXTENT_SHARED != 0 {
                shared += extent.length;
            }
            if extent.flags & FIEMAP_EXTENT_LAST != 0 {
                return shared;
            }
            start = extent.logical + extent.length;
        }
    }
}

/// `ensure` on a complete reserve on each mount `DISK_RESERVE_BENCH_MOUNTS` names, against
/// the look at its extents; returns the table rows.
fn extents_path(c: &mut Criterion) -> Vec<Pair> {
    let Ok(mounts) = std::env::var("DISK_RESERVE_BENCH_MOUNTS") else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    for base in mounts.split_whitespace() {
        let scratch = common::scratch_in("hot-path", std::path::Path::new(base));
        let home = scratch.path();
        let reserve = Reserve::new(
            RealFs::new(),
            &home,
            ReserveConfig::with_size_bytes(RESERVE_BYTES),
        )
        .expect("reserve");
        assert!(matches!(reserve.ensure(), Ok(Ensured::Created { .. })));
        assert!(matches!(reserve.ensure(), Ok(Ensured::Present { .. })));
        let home_c = c_path(&home);
        let name = c".reserve";
        let mut map = Box::new(Fiemap {
            start: 0,
            length: 0,
            flags: 0,
            mapped_extents: 0,
            extent_count: 0,
            reserved: 0,
            extents: [FiemapExtent::default(); FIEMAP_BATCH],
        });
        let mut look = || {
            // SAFETY: `home_c` and `name` are NUL-terminated; `stat` is writable and large
            // enough; every descriptor opened here is closed once.
            unsafe {
                let dir = libc::open(
                    home_c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                check(if dir < 0 { -1 } else { 0 }, "open");
                let mut stat = MaybeUninit::<libc::stat>::uninit();
                check(
                    libc::fstatat(
                        dir,
                        name.as_ptr(),
                        stat.as_mut_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    ),
                    "fstatat",
                );
                black_box(stat.assume_init().st_blocks);
                let file = libc::openat(
                    dir,
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                );
                check(if file < 0 { -1 } else { 0 }, "openat");
                black_box(fiemap_shared(file, &mut map));
                check(libc::close(file), "close");
                check(libc::close(dir), "close");
            }
        };
        let key = format!("ensure_present_{}", scratch.label);
        let mut group = c.benchmark_group(&key);
        let mut ours = |n| {
            repeat(n, || {
                let outcome = reserve.ensure().expect("ensure");
                debug_assert!(matches!(outcome, Ensured::Present { .. }));
                black_box(outcome);
            })
        };
        let mut floor = |n| repeat(n, &mut look);
        for (side, function) in ["ours", "floor"].into_iter().enumerate() {
            group.bench_function(function, |b| {
                b.iter_custom(|n| interleaved(&key, side, n, &mut [&mut ours, &mut floor]));
            });
        }
        group.finish();
        pairs.push(Pair::new(
            format!(
                "1b. `ensure`, reserve complete ({}, FIEMAP)",
                scratch.fs_type
            ),
            key.clone(),
            format!("{key}/ours"),
            format!("{key}/floor"),
            Goal::TimeRatioAtMost(1.5),
        ));
    }
    pairs
}

fn main() {
    let started = SystemTime::now();
    let mut c = common::criterion();
    hot_path(&mut c);
    let mounted = extents_path(&mut c);
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
        ]
        .into_iter()
        .chain(mounted)
        .collect::<Vec<_>>(),
    );
}
