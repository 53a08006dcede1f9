//! The simulated backend: `ensure` + `release` cycles per second on `SimFs`, on a 1 GiB
//! disk with the default 64 MiB reserve and on a 1 PiB disk with a 1 TiB reserve (the
//! time must not depend on the simulated size), and the heap a `SimFs` holds after
//! `ensure` for disks from 1 MiB to 1 PiB (the memory must not either).
//!
//! The binary counts live heap bytes with a wrapping global allocator (two relaxed atomic
//! adds per allocation, paid equally by every case).

mod common;

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput};
use disk_reserve::{Ensured, Released, Reserve, ReserveConfig, SimFs};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, LIVE_BYTES};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const PIB: u64 = 1 << 50;
const HOME: &str = "/srv/app";

/// (label, disk capacity, reserve size).
const CASES: [(&str, u64, u64); 4] = [
    ("1 MiB disk, 512 KiB reserve", MIB, MIB / 2),
    ("1 GiB disk, 64 MiB reserve", GIB, 64 * MIB),
    ("1 TiB disk, 1 GiB reserve", TIB, GIB),
    ("1 PiB disk, 1 TiB reserve", PIB, TIB),
];

/// Live heap bytes a `SimFs` of `capacity` holds once `ensure` laid down a reserve of
/// `size` in it (the `Reserve` itself is dropped before counting).
fn heap_after_ensure(capacity: u64, size: u64) -> (SimFs, usize) {
    let before = LIVE_BYTES.load(Ordering::SeqCst);
    let fs = SimFs::with_home(capacity, HOME);
    {
        let reserve =
            Reserve::new(fs.clone(), HOME, ReserveConfig::with_size_bytes(size)).expect("reserve");
        let outcome = reserve.ensure().expect("ensure");
        assert!(matches!(outcome, Ensured::Created { allocated_bytes } if allocated_bytes == size));
    }
    let after = LIVE_BYTES.load(Ordering::SeqCst);
    (fs, after.saturating_sub(before))
}

fn memory() {
    drop(heap_after_ensure(MIB, MIB / 2)); // one-time allocations outside the count
    let sizes: Vec<(&str, usize)> = CASES
        .iter()
        .map(|&(label, capacity, size)| {
            let (fs, bytes) = heap_after_ensure(capacity, size);
            assert_eq!(
                fs.free_bytes(),
                capacity - size,
                "{label}: reserve really allocated"
            );
            (label, bytes)
        })
        .collect();
    println!();
    println!("| SimFs after `ensure` | live heap |");
    println!("|---|---|");
    for (label, bytes) in &sizes {
        println!("| {label} | {bytes} B |");
    }
    println!();
    let smallest = sizes[0].1;
    for (label, bytes) in &sizes {
        assert!(
            *bytes <= 2 * smallest + 1024,
            "SimFs memory grew with the simulated size: {label} holds {bytes} B, the 1 MiB disk {smallest} B"
        );
    }
}

fn cycles(c: &mut Criterion) {
    let mut group = c.benchmark_group("simfs_cycle");
    group.throughput(Throughput::Elements(1));
    for (id, capacity, size) in [
        ("1GiB_disk_64MiB_reserve", GIB, 64 * MIB),
        ("1PiB_disk_1TiB_reserve", PIB, TIB),
    ] {
        let fs = SimFs::with_home(capacity, HOME);
        // No settle time: `release` would otherwise sleep 1 ms waiting for its second read
        // of the free space to agree with the first, and the bench would time the sleep.
        let reserve = Reserve::new(fs.clone(), HOME, ReserveConfig::with_size_bytes(size))
            .expect("reserve")
            .settle_time(Duration::ZERO);
        group.bench_function(id, |b| {
            b.iter(|| {
                let created = reserve.ensure().expect("ensure");
                debug_assert!(matches!(created, Ensured::Created { .. }));
                let released = reserve.release().expect("release");
                debug_assert!(matches!(released, Released::Released { .. }));
                black_box((created, released))
            });
        });
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    memory();
    let mut c = common::criterion();
    cycles(&mut c);
    c.final_summary();
    common::report_medians(
        started,
        &[
            (
                "7. SimFs `ensure` + `release` cycle, 1 GiB disk, 64 MiB reserve",
                "simfs_cycle/1GiB_disk_64MiB_reserve",
            ),
            (
                "7. SimFs `ensure` + `release` cycle, 1 PiB disk, 1 TiB reserve",
                "simfs_cycle/1PiB_disk_1TiB_reserve",
            ),
        ],
    );
}
