//! Replays every committed seed of the `lifecycle` fuzz target (`fuzz/corpus/lifecycle/`)
//! through the same decoding and driver, so CI checks the invariants on them without
//! cargo-fuzz.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use disk_reserve_scenario::{Scenario, run};

/// Decodes a fuzzer input as `fuzz_target!(|scenario: Scenario| ..)` does.
fn decode(bytes: &[u8]) -> Option<Scenario> {
    Scenario::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

#[test]
fn every_seed_of_the_lifecycle_corpus_keeps_every_invariant() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/lifecycle");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 20,
        "the seed corpus has only {} files",
        seeds.len()
    );
    let mut steps = 0;
    let started = std::time::Instant::now();
    for seed in &seeds {
        let bytes = std::fs::read(seed).unwrap();
        let Some(scenario) = decode(&bytes) else {
            continue;
        };
        match run(&scenario) {
            Ok(report) => steps += report.steps,
            Err(violation) => panic!("{}: {violation}", seed.display()),
        }
    }
    eprintln!(
        "{} seeds, {steps} steps in {:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(steps > 0, "no seed decoded into a scenario with steps");
}
