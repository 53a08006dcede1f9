//! Fuzzes the reserve lifecycle: a random `SimFs` setup and operation sequence, checked
//! after every step against the reference model in `disk_reserve_scenario`.
//!
//! Every 2^16 inputs it prints the operations played per input so far (`#depth` lines on
//! standard error): executions per second only compare at the same depth.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use disk_reserve_scenario::{Scenario, run};
use libfuzzer_sys::fuzz_target;

static INPUTS: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|scenario: Scenario| {
    match run(&scenario) {
        Ok(report) => {
            let ops = OPS.fetch_add(report.steps as u64, Relaxed) + report.steps as u64;
            let inputs = INPUTS.fetch_add(1, Relaxed) + 1;
            if inputs % (1 << 16) == 0 {
                eprintln!(
                    "#depth {inputs} inputs, {ops} operations, {:.2} operations per input",
                    ops as f64 / inputs as f64
                );
            }
        }
        Err(violation) => panic!("{violation}"),
    }
});
