//! `is_out_of_space` on the errors runtimes hand it: a typed `ENOSPC` at the bottom of
//! a 10-deep `source()` chain, the same chain ending in an unrelated error (the walk
//! finds nothing: the worst case), and an error flattened to a string on the way. No
//! syscall floor: the reference is a plain `raw_os_error()` check of one `io::Error`.

mod common;

use std::error::Error as StdError;
use std::fmt;
use std::hint::black_box;
use std::io;
use std::time::SystemTime;

use criterion::Criterion;
use disk_reserve::is_out_of_space;

/// One layer of context around a source, as `anyhow`/`thiserror` wrappers look.
#[derive(Debug)]
struct Layer {
    depth: usize,
    source: Box<dyn StdError + Send + Sync>,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer {} of the runtime's context", self.depth)
    }
}

impl StdError for Layer {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// `bottom` wrapped in layers until the chain is `depth` errors long.
fn chain(depth: usize, bottom: io::Error) -> Box<dyn StdError + Send + Sync> {
    let mut err: Box<dyn StdError + Send + Sync> = Box::new(bottom);
    for d in 1..depth {
        err = Box::new(Layer {
            depth: d,
            source: err,
        });
    }
    err
}

fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("is_out_of_space");
    let deep_enospc = chain(10, io::Error::from_raw_os_error(libc::ENOSPC));
    let deep_eio = chain(10, io::Error::from_raw_os_error(libc::EIO));
    let flattened = io::Error::other(format!(
        "flush segment 42 of the write-ahead log: {}",
        io::Error::from_raw_os_error(libc::ENOSPC)
    ));
    let plain = io::Error::from_raw_os_error(libc::ENOSPC);

    group.bench_function("chain10_enospc", |b| {
        b.iter(|| assert!(is_out_of_space(black_box(&*deep_enospc))));
    });
    group.bench_function("chain10_eio", |b| {
        b.iter(|| assert!(!is_out_of_space(black_box(&*deep_eio))));
    });
    group.bench_function("flattened", |b| {
        b.iter(|| assert!(is_out_of_space(black_box(&flattened))));
    });
    group.bench_function("one_io_error", |b| {
        b.iter(|| assert!(is_out_of_space(black_box(&plain))));
    });
    group.bench_function("floor_raw_os_error", |b| {
        b.iter(|| {
            let e = black_box(&plain);
            assert!(matches!(
                e.raw_os_error(),
                Some(libc::ENOSPC | libc::EDQUOT)
            ));
        });
    });
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = common::criterion();
    classify(&mut c);
    c.final_summary();
    common::report_medians(
        started,
        &[
            (
                "6. `raw_os_error()` check of one `io::Error` (reference)",
                "is_out_of_space/floor_raw_os_error",
            ),
            (
                "6. `is_out_of_space`, one `io::Error` ENOSPC",
                "is_out_of_space/one_io_error",
            ),
            (
                "6. `is_out_of_space`, ENOSPC under 10 layers",
                "is_out_of_space/chain10_enospc",
            ),
            (
                "6. `is_out_of_space`, 10 layers, no match",
                "is_out_of_space/chain10_eio",
            ),
            (
                "6. `is_out_of_space`, flattened message",
                "is_out_of_space/flattened",
            ),
        ],
    );
}
