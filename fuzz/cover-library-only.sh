#!/bin/sh
# RUSTC_WRAPPER for the fuzz target's build (scripts/fuzz-smoke.sh): coverage counters in
# the library only. cargo-fuzz instruments every crate; this turns the counters off again
# (`-sanitizer-coverage-level=0`, last on the line, wins) for all but `disk_reserve`.
#
# Why: libFuzzer's bookkeeping is per counter an input hits (a feature each, looked up in
# its 8 MB tables), and the crates around the library -- the scenario's reference model,
# its checks after every step, the input decoding -- held 5,857 of the 14,149 counters
# and a like share of the hits. Their branches follow the library's (the model decides
# what the library did), so they guide little: the SimFs and Reserve code is what is
# under test. `perf` of the smoke: libFuzzer's feature handling fell from 41% of the CPU
# to 27%. Four interleaved 30 s runs from the seeds: 18.6k exec/s at 8.8 operations per
# input with every crate counted, 22.1k at 9.7 with the library only. Planted bugs are
# found as fast or faster (a lock that does not exclude: 532-1,812 executions from the
# seeds against 1,123-3,119; release counting shared bytes as freed: 31k-55k from an
# empty corpus against 56k-63k).
rustc="$1"
shift
case " $* " in
*" --crate-name disk_reserve "*) exec "$rustc" "$@" ;;
esac
exec "$rustc" "$@" -Cllvm-args=-sanitizer-coverage-level=0
