//! Fuzzes the reserve lifecycle: a random `SimFs` setup and operation sequence, checked
//! after every step against the reference model in `disk_reserve_scenario`.
#![no_main]

use disk_reserve_scenario::{Scenario, run};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|scenario: Scenario| {
    if let Err(violation) = run(&scenario) {
        panic!("{violation}");
    }
});
