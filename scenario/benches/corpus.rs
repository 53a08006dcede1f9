//! The fuzz target's work without the fuzzer: every seed of the `lifecycle` corpus
//! (`fuzz/corpus/lifecycle/`), decoded as `fuzz_target!` decodes it, played by [`run`]
//! with every invariant checked. One iteration plays the whole corpus; the line printed
//! after Criterion's output gives the mean time of one run and of one step.
//! `LIFECYCLE_CORPUS=<dir>` plays another directory instead, such as a corpus a fuzzing
//! run grew (its inputs are longer than the seeds).
//!
//! What libFuzzer adds per execution (collecting coverage, mutating, saving new inputs)
//! is not here: this is the part that cheaper `SimFs` operations and a cheaper driver
//! make faster.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arbitrary::{Arbitrary, Unstructured};
use criterion::{Criterion, Throughput};
use disk_reserve_scenario::{Scenario, run};

/// The seeds that decode into a scenario, in file name order.
fn seeds() -> Vec<Scenario> {
    let dir = std::env::var_os("LIFECYCLE_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/lifecycle"),
        PathBuf::from,
    );
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|path| {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Scenario::arbitrary_take_rest(Unstructured::new(&bytes)).ok()
        })
        .collect()
}

/// Plays every scenario; returns the steps played.
fn play(scenarios: &[Scenario]) -> usize {
    scenarios
        .iter()
        .map(|scenario| match run(scenario) {
            Ok(report) => report.steps,
            Err(violation) => panic!("a seed breaks an invariant: {violation}"),
        })
        .sum()
}

fn main() {
    let scenarios = seeds();
    let steps = play(&scenarios);
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("scenario");
    group.throughput(Throughput::Elements(scenarios.len() as u64));
    group.bench_function("lifecycle_corpus", |b| {
        b.iter(|| black_box(play(&scenarios)))
    });
    group.finish();
    c.final_summary();
    // A plain timing for the table, only when measuring (not under `--test` or `--list`):
    // Criterion's estimates stay in its own output.
    if std::env::args().any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time")) {
        return;
    }
    let rounds = 20;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(play(&scenarios));
    }
    let per_corpus = started.elapsed() / rounds;
    println!(
        "\n{} scenarios, {steps} steps: {:?} per corpus, {:?} per run, {:?} per step\n",
        scenarios.len(),
        per_corpus,
        per_corpus / scenarios.len() as u32,
        per_corpus / steps as u32,
    );
}
