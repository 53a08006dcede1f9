#!/usr/bin/env bash
# The real-filesystem matrix: runs every test of cli/tests/real_mount.rs on small, freshly
# made filesystems — loop-mounted ext4, xfs, btrfs, btrfs compress-force=zstd, ext2 (whose
# fallocate really returns EOPNOTSUPP, so the write fallback runs for real), a tmpfs, a
# full read-only ext4, and two FUSE filesystems without fallocate (fusefat, exfat-fuse) —
# one test at a time, and prints a table filesystem × test → pass / fail / skip ("-": not
# run on that row), then the statvfs free-space drop per filesystem and strategy. The
# "conformance" column is tests/conformance.rs's RealFs half (cargo test --test conformance
# real::) run in a directory of the mount, including its fill to ENOSPC, whose bytes
# written against the free space reported before are printed per filesystem at the end.
# The "fileapi_diff" column is tests/differential.rs's runner (random file-API sequences on
# SimFs and on the mount, compared step by step) for MOUNT_MATRIX_DIFF_CASES sequences
# (default 200, about 4,000 operations); its figures are printed at the end.
# The FUSE rows run only fuse_write_path: the other tests would only take minutes there.
#
# Needs root and loop devices, as CI has; without them it says so in one line and exits 0.
# Installs xfsprogs, btrfs-progs, fusefat, dosfstools, exfat-fuse and exfatprogs with
# apt-get when a tool is missing.
# Always unmounts and detaches what it set up. Exits 1 when any test failed.
#
#   sudo bash scripts/mount-matrix.sh
#
# Knobs: MOUNT_MATRIX_IMAGE_MIB (size of each filesystem, default 512),
# MOUNT_MATRIX_TEST_TIMEOUT (seconds per test, default 300), MOUNT_MATRIX_ONLY (a space-
# separated subset of the filesystems, e.g. "ext4 tmpfs"), MOUNT_MATRIX_TESTS (likewise, a
# subset of the tests, e.g. "hard_link power_cut").
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

IMAGE_MIB=${MOUNT_MATRIX_IMAGE_MIB:-512}
TEST_TIMEOUT=${MOUNT_MATRIX_TEST_TIMEOUT:-300}
DIFF_CASES=${MOUNT_MATRIX_DIFF_CASES:-200}
TESTS=(${MOUNT_MATRIX_TESTS:-conformance fileapi_diff full_host blocks_are_real processes kill_9 read_only differential hard_link moving_home power_cut syncfs_power_cut reflink_release cow_preallocation snapshot snapshot_overwrite whole_extents quota late_free report_counts_the_reserve never_fits overlay fuse_write_path})
FILESYSTEMS=(${MOUNT_MATRIX_ONLY:-ext4 xfs btrfs btrfs-zstd ext2 tmpfs ext4-ro fusefat exfat-fuse})
# Rows that run only some of the tests (the others show "-").
declare -A ROW_TESTS=([fusefat]="fuse_write_path" [exfat-fuse]="fuse_write_path")
# The read-only mount's preparation; cli/tests/real_mount.rs names the same homes and size.
RO_COMPLETE_HOME=complete
RO_EMPTY_HOME=empty
RO_SIZE=16MiB

say() { printf 'mount-matrix: %s\n' "$*"; }
loud() { printf '\nmount-matrix: !!! %s\n\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "skipped: needs root to make and mount filesystems (CI runs it as root)"
    exit 0
fi
if [ ! -e /dev/loop-control ] || ! losetup -f >/dev/null 2>&1; then
    say "skipped: no free loop device here (losetup -f found none)"
    exit 0
fi

missing=()
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || missing+=(btrfs-progs)
command -v fusefat >/dev/null || missing+=(fusefat)
command -v mkfs.vfat >/dev/null || missing+=(dosfstools)
command -v mount.exfat-fuse >/dev/null || missing+=(exfat-fuse)
command -v mkfs.exfat >/dev/null || missing+=(exfatprogs)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } </dev/null >/dev/null ||
            loud "could not install ${missing[*]}; their rows will be skipped"
    else
        loud "${missing[*]} missing and there is no apt-get; those rows will be skipped"
    fi
fi

say "building the test binaries (cargo test -p disk-reserve-cli -p disk-reserve --no-run --test real_mount --test conformance --test differential)"
artifacts=$(cargo test -p disk-reserve-cli -p disk-reserve --no-run --test real_mount --test conformance --test differential \
    --message-format=json-render-diagnostics </dev/null)
executable_of() { # $1: a pattern the artifact's target must match
    printf '%s\n' "$artifacts" | grep '"reason":"compiler-artifact"' | grep -- "$1" |
        grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//' | tail -n 1
}
testbin=$(executable_of '"kind":\["test"\],"crate_types":\["bin"\],"name":"real_mount"')
clibin=$(executable_of '"kind":\["bin"\],"crate_types":\["bin"\],"name":"disk-reserve"')
conformancebin=$(executable_of '"kind":\["test"\],"crate_types":\["bin"\],"name":"conformance"')
diffbin=$(executable_of '"kind":\["test"\],"crate_types":\["bin"\],"name":"differential"')
if [ ! -x "$testbin" ] || [ ! -x "$clibin" ] || [ ! -x "$conformancebin" ] || [ ! -x "$diffbin" ]; then
    echo "mount-matrix: could not find the built test binaries ($testbin, $conformancebin) or command ($clibin)" >&2
    exit 1
fi

work=$(mktemp -d)
# The quota test runs the command as nobody, who must reach the mounts below.
chmod 755 "$work"
mkdir "$work/logs"
mounted=()
attached=()
cleanup() {
    local m d
    for m in ${mounted[@]+"${mounted[@]}"}; do
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || umount -l "$m" || true
        fi
    done
    for d in ${attached[@]+"${attached[@]}"}; do
        losetup -d "$d" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# setup_fs NAME MOUNTPOINT: makes NAME's filesystem and mounts it; on failure prints why
# and returns 1 (2 when a tool is missing).
setup_fs() {
    local name=$1 mnt=$2 img="$work/$1.img" dev log="$work/logs/$1.setup.log"
    mkdir -p "$mnt"
    if [ "$name" = tmpfs ]; then
        mount -t tmpfs -o "size=${IMAGE_MIB}m" tmpfs "$mnt" 2>"$log" || return 1
        mounted+=("$mnt")
        return 0
    fi
    local mkfs
    case $name in
        ext4 | ext4-ro) mkfs=(mkfs.ext4 -q -F -m 0 -b 4096 -E lazy_itable_init=0,lazy_journal_init=0) ;;
        ext2) mkfs=(mkfs.ext2 -q -F -m 0 -b 4096) ;;
        xfs) mkfs=(mkfs.xfs -q -f) ;;
        btrfs | btrfs-zstd) mkfs=(mkfs.btrfs -q -f -M) ;;
        fusefat) mkfs=(mkfs.vfat -F 32) ;;
        exfat-fuse) mkfs=(mkfs.exfat) ;;
        *) echo "unknown filesystem $name" >"$log"; return 1 ;;
    esac
    if ! command -v "${mkfs[0]}" >/dev/null; then
        echo "${mkfs[0]} is not installed" >"$log"
        return 2
    fi
    local mounter=
    case $name in
        fusefat) mounter=fusefat ;;
        exfat-fuse) mounter=mount.exfat-fuse ;;
    esac
    if [ -n "$mounter" ] && ! command -v "$mounter" >/dev/null; then
        echo "$mounter is not installed" >"$log"
        return 2
    fi
    if [ -n "$mounter" ] && [ ! -c /dev/fuse ]; then
        echo "no /dev/fuse here" >"$log"
        return 1
    fi
    truncate -s "${IMAGE_MIB}M" "$img"
    "${mkfs[@]}" "$img" >"$log" 2>&1 || return 1
    if [ "$name" = fusefat ]; then
        # fusefat works on the image itself; rw+ is its read-write mode.
        fusefat -o rw+ "$img" "$mnt" >>"$log" 2>&1 || return 1
        mounted+=("$mnt")
        return 0
    fi
    dev=$(losetup -f --show "$img" 2>>"$log") || return 1
    attached+=("$dev")
    local options=()
    [ "$name" = btrfs-zstd ] && options=(-o compress-force=zstd)
    if [ "$name" = exfat-fuse ]; then
        # The FUSE driver, not the kernel's exfat: it has no fallocate.
        mount.exfat-fuse "$dev" "$mnt" >>"$log" 2>&1 || return 1
    else
        mount ${options[@]+"${options[@]}"} "$dev" "$mnt" 2>>"$log" || return 1
    fi
    mounted+=("$mnt")
    if [ "$name" = ext4-ro ]; then
        mkdir "$mnt/$RO_COMPLETE_HOME" "$mnt/$RO_EMPTY_HOME"
        "$clibin" ensure --home "$mnt/$RO_COMPLETE_HOME" --size "$RO_SIZE" >>"$log" 2>&1 || return 1
        # Full before it goes read-only: a space decision there would defer.
        dd if=/dev/zero of="$mnt/filler" bs=1M >>"$log" 2>&1 || true
        sync -f "$mnt"
        umount "$mnt" && mount -o ro "$dev" "$mnt" 2>>"$log" || return 1
    fi
}

# teardown_fs NAME MOUNTPOINT: unmounts, detaches and deletes the image.
teardown_fs() {
    local name=$1 mnt=$2 d
    if mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt" || true; fi
    for d in ${attached[@]+"${attached[@]}"}; do
        if losetup "$d" 2>/dev/null | grep -q "/$name.img"; then losetup -d "$d" || true; fi
    done
    rm -f "$work/$name.img"
}

declare -A cell
declare -A row_note
failures=0
for fs in "${FILESYSTEMS[@]}"; do
    mnt="$work/mnt-$fs"
    say "$fs: making a ${IMAGE_MIB} MiB filesystem"
    status=0
    setup_fs "$fs" "$mnt" || status=$?
    if [ "$status" -ne 0 ]; then
        why=$(tail -n 3 "$work/logs/$fs.setup.log" | tr '\n' ' ')
        if [ "$status" -eq 2 ]; then
            row_note[$fs]="skip (no mkfs)"
            loud "$fs: SKIPPED, cannot make it here: $why"
        else
            row_note[$fs]="skip (cannot mount)"
            loud "$fs: SKIPPED, cannot be made or mounted on this kernel ($(uname -r)): $why"
        fi
        for t in "${TESTS[@]}"; do cell[$fs.$t]=skip; done
        teardown_fs "$fs" "$mnt"
        continue
    fi
    ro=
    [ "$fs" = ext4-ro ] && ro=1
    for t in "${TESTS[@]}"; do
        if [ -n "${ROW_TESTS[$fs]:-}" ] && [[ " ${ROW_TESTS[$fs]} " != *" $t "* ]]; then
            cell[$fs.$t]=-
            continue
        fi
        # The conformance suite changes things: not on the read-only row.
        if { [ "$t" = conformance ] || [ "$t" = fileapi_diff ]; } && [ -n "$ro" ]; then
            cell[$fs.$t]=-
            continue
        fi
        log="$work/logs/$fs.$t.log"
        started=$SECONDS
        rc=0
        if [ "$t" = conformance ]; then
            # One at a time: the fill case takes every free byte of the mount.
            env DISK_RESERVE_CONFORMANCE_DIR="$mnt" DISK_RESERVE_CONFORMANCE_FS="$fs" \
                timeout -k 10 "$TEST_TIMEOUT" "$conformancebin" real:: --test-threads=1 \
                --nocapture </dev/null >"$log" 2>&1 || rc=$?
        elif [ "$t" = fileapi_diff ]; then
            env DISK_RESERVE_DIFF_DIR="$mnt" DISK_RESERVE_DIFF_FS="$fs" DISK_RESERVE_DIFF_CASES="$DIFF_CASES" \
                timeout -k 10 "$TEST_TIMEOUT" "$diffbin" --exact simfs_agrees_with_the_kernel_on_random_sequences \
                --test-threads=1 --nocapture </dev/null >"$log" 2>&1 || rc=$?
            grep -o 'DIFF_RESULT .*' "$log" >>"$work/diff_result" || true
        else
            env DISK_RESERVE_TEST_MOUNT="$mnt" DISK_RESERVE_TEST_FS="$fs" \
                ${ro:+DISK_RESERVE_TEST_READONLY=1} \
                timeout -k 10 "$TEST_TIMEOUT" "$testbin" --exact "$t" --test-threads=1 --nocapture \
                </dev/null >"$log" 2>&1 || rc=$?
        fi
        if [ "$t" = conformance ]; then
            passed=$(grep -o 'test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed' "$log" |
                awk '{ p += $4; f += $6 } END { print p + 0, f + 0 }')
            grep -q 'DISK_RESERVE_SKIP' "$log" && rc=1 # the fill case must run here
            read -r npass nfail <<<"$passed"
            if [ "$rc" -eq 0 ] && [ "$nfail" -eq 0 ] && [ "$npass" -gt 0 ]; then
                result=pass
            else
                result="fail($nfail/$((npass + nfail)))"
            fi
            grep -o 'ENOSPC_FILL .*' "$log" >>"$work/enospc_fill" || true
        elif [ "$rc" -eq 0 ] && ! grep -q '1 passed' "$log"; then
            result=fail # no test of that name ran
        elif [ "$rc" -eq 0 ] && grep -q 'DISK_RESERVE_SKIP' "$log"; then
            result=skip
        elif [ "$rc" -eq 0 ]; then
            result=pass
        else
            result=fail
        fi
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "(timed out after ${TEST_TIMEOUT}s)" >>"$log"
        cell[$fs.$t]=$result
        [[ "$result" = fail* ]] && failures=$((failures + 1))
        grep -o 'FREE_DROP .*' "$log" >>"$work/free_drop" || true
        say "$fs: $t $result ($((SECONDS - started)) s)"
        grep -o -e "$t fs=.*" -e 'DISK_RESERVE_SKIP.*' "$log" | sed 's/^/    /' || true
        if [ -z "$ro" ]; then
            leftovers=$(find "$mnt" -mindepth 1 -maxdepth 1 ! -name lost+found -printf '%f ' 2>/dev/null)
            if [ -n "$leftovers" ]; then
                say "$fs: $t left $leftovers behind; removing it so the next test starts empty"
                find "$mnt" -mindepth 1 -maxdepth 1 ! -name lost+found -exec rm -rf {} +
            fi
        fi
    done
    teardown_fs "$fs" "$mnt"
done

# ---- the tables
width() { local w=${#1}; [ "$w" -lt 4 ] && w=4; echo "$w"; }
echo
printf '%-12s' "filesystem"
for t in "${TESTS[@]}"; do printf ' %-*s' "$(width "$t")" "$t"; done
echo
for fs in "${FILESYSTEMS[@]}"; do
    printf '%-12s' "$fs"
    for t in "${TESTS[@]}"; do printf ' %-*s' "$(width "$t")" "${cell[$fs.$t]}"; done
    [ -n "${row_note[$fs]:-}" ] && printf ' %s' "${row_note[$fs]}"
    echo
done

echo
echo "statvfs free-space drop after ensure of a 128 MiB reserve (rule 1; zeros: for comparison only)"
printf '%-12s %-20s %-20s %-20s %-20s\n' filesystem fallocate write auto zeros-for-comparison
for fs in "${FILESYSTEMS[@]}"; do
    [ "$fs" = ext4-ro ] && continue
    [ -n "${ROW_TESTS[$fs]:-}" ] && [[ " ${ROW_TESTS[$fs]} " != *" blocks_are_real "* ]] && continue
    printf '%-12s' "$fs"
    for s in fallocate write auto zeros-for-comparison; do
        line=$(grep -E "^FREE_DROP fs=$fs strategy=$s " "$work/free_drop" 2>/dev/null | tail -n 1 || true)
        if [ -z "$line" ]; then
            value=-
        else
            value=$(printf '%s\n' "$line" | awk '{
                for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                if (f["drop"] == "unsupported") print "unsupported";
                else printf "%.1f MiB (%s%%)", f["drop"] / 1048576, f["pct"] }')
        fi
        printf ' %-20s' "$value"
    done
    echo
done

if [ -s "$work/enospc_fill" ]; then
    echo
    echo "conformance fill to ENOSPC: bytes written through the file API against space() before"
    printf '%-12s %-12s %-12s %-12s %-18s %-12s\n' filesystem size free-before written shortfall free-at-end
    awk '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        printf "%-12s %-12s %-12s %-12s %-18s %-12s\n", f["fs"],
            sprintf("%.1f MiB", f["total"] / 1048576), sprintf("%.2f MiB", f["free_before"] / 1048576),
            sprintf("%.2f MiB", f["written"] / 1048576),
            sprintf("%.0f KiB (%s%%)", f["shortfall"] / 1024, f["shortfall_pct"]),
            sprintf("%.2f MiB", f["free_at_enospc"] / 1048576) }' "$work/enospc_fill"
fi

if [ -s "$work/diff_result" ]; then
    echo
    echo "fileapi_diff: operations run on SimFs and the mount, steps out of space, resyncs at the ENOSPC boundary"
    sed 's/^DIFF_RESULT //' "$work/diff_result"
fi

for fs in "${FILESYSTEMS[@]}"; do
    for t in "${TESTS[@]}"; do
        if [[ "${cell[$fs.$t]}" = fail* ]]; then
            echo
            echo "---- $fs × $t: last 60 lines of its output"
            tail -n 60 "$work/logs/$fs.$t.log"
        fi
    done
done
for fs in "${FILESYSTEMS[@]}"; do
    [ -n "${row_note[$fs]:-}" ] && loud "$fs was NOT tested: ${row_note[$fs]}"
done

echo
say "done in ${SECONDS} s: $failures failed"
[ "$failures" -eq 0 ]
