#!/usr/bin/env bash
# Fuzz smoke: runs the `lifecycle` target for a while (default 60 s) from the committed
# seed corpus and fails on any crash, printing the executions per second.
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags, and
# `-s none` builds without a sanitizer (the library has no unsafe code outside the libc
# backend, which the target does not use; the invariants are what is checked).
#
# Built `-O` (optimized, without debug assertions) but with overflow checks kept, and
# `--no-trace-compares`: libFuzzer's comparison callbacks were about 29% of the time and
# the inputs are decoded into bounded ranges (arbitrary), so comparison tracing adds
# little guidance. Measured the same hour, machine loaded: 6.3k exec/s as before,
# 11–13k with these flags; a planted release bug (shared bytes counted as freed) was found
# from an empty corpus in 37k–70k executions with them and 50k–81k without (3 seeds each).
#
# Not used: libFuzzer's `-use_counters=0 -reduce_inputs=0`. Its per-run bookkeeping (a
# feature per hit edge and hit-count bucket, each a lookup in an 8 MB table) is about 29%
# of the CPU, and without the buckets the smoke ran at 19.7k–20.0k exec/s instead of
# 12.8k, and found two planted bugs in fewer executions. But its inputs were shallower:
# 5.4–6.4 operations per executed input instead of 9.2, so operations per second did not
# change (about 110k–130k either way): the speed came from testing less per input.
#
# Usage: scripts/fuzz-smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
# Coverage counters in the library only (see cover-library-only.sh). The `--cfg` changes
# nothing in the code; it only makes cargo rebuild a target built without the wrapper,
# which it does not see.
export RUSTC_WRAPPER="$PWD/cover-library-only.sh"
export RUSTFLAGS="${RUSTFLAGS:-} -Coverflow-checks=on --cfg fuzz_cover_library_only"
flags=(-O -s none --no-trace-compares)
cargo fuzz build lifecycle "${flags[@]}"

# Run on a scratch copy of the seeds so the committed corpus only changes on purpose.
# In memory (/dev/shm) where there is one: libFuzzer writes every input it keeps as a file
# and deletes the ones it replaces, and on ext4 creating those files was about 14% of the
# smoke's CPU (`perf`: inode allocation scanning recently deleted inodes). Measured the
# same hour, 30 s from the seeds, two libFuzzer seeds each: 22.9k and 23.2k exec/s with
# the copy on tmpfs, 19.2k and 19.3k on the ext4 root.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    work="$(mktemp -d -p /dev/shm)"
else
    work="$(mktemp -d)"
fi
trap 'rm -rf "$work"' EXIT
cp corpus/lifecycle/* "$work/"

log="$work/fuzz.log"
status=0
cargo fuzz run lifecycle "${flags[@]}" "$work" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?

execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
# The target's own count (every 2^16 inputs): executions per second only compare at the
# same depth.
depth="$(sed -n 's/^#depth .*operations, \([0-9.]*\) operations per input$/\1/p' "$log" | tail -1)"
if [ "$status" -ne 0 ]; then
    # The violation, the input that found it and how to replay it.
    grep -E "violates|panicked|ERROR|SUMMARY|Test unit written|artifact" "$log" | head -20 || true
    echo "fuzz-smoke: FAILED after ${execs:-?} executions (exit $status); full log follows"
    tail -40 "$log"
    exit 1
fi
echo "fuzz-smoke: ${execs:-?} executions in ${seconds} s, ${rate:-?} exec/s, ${depth:-?} operations per input, no crash"
