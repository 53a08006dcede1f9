//! Behaviour of the simulated filesystem, one test per promise, asserting raw errnos.

use std::fmt::Debug;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use camino::Utf8Path;
use disk_reserve::sim_fs::SimSnapshot;
use disk_reserve::{AllocateMode, FileKind, HostFs, SimFs, SimOp};

const MIB: u64 = 1 << 20;
const BS: u64 = 4096;

fn p(path: &str) -> &Utf8Path {
    Utf8Path::new(path)
}

/// The raw errno of a result that must be an error.
fn errno<T: Debug>(result: io::Result<T>) -> i32 {
    result
        .expect_err("the call must fail")
        .raw_os_error()
        .expect("the error keeps a raw errno")
}

fn allocated(fs: &SimFs, path: &str) -> u64 {
    fs.probe(p(path))
        .unwrap()
        .expect("path exists")
        .allocated_bytes
}

fn len(fs: &SimFs, path: &str) -> u64 {
    fs.probe(p(path)).unwrap().expect("path exists").len
}

fn home() -> SimFs {
    SimFs::with_home(MIB, "/home")
}

#[test]
fn new_fs_has_root_and_all_capacity_free() {
    let fs = SimFs::new(MIB);
    assert_eq!(fs.probe(p("/")).unwrap().unwrap().kind, FileKind::Directory);
    assert_eq!(fs.free_bytes(), MIB);
    assert_eq!(fs.used_bytes(), 0);
    assert_eq!(fs.capacity(), MIB);
    assert_eq!(fs.block_size(), BS);
    let space = fs.space(p("/")).unwrap();
    assert_eq!((space.free_bytes, space.total_bytes), (MIB, MIB));
}

#[test]
fn set_free_zero_leaves_exactly_zero_free_and_rounds_down_to_blocks() {
    let fs = home();
    fs.write_file("/home/data", 100 * 1024).unwrap();
    fs.set_free(0).unwrap();
    assert_eq!(fs.free_bytes(), 0);
    assert_eq!(fs.space(p("/home")).unwrap().free_bytes, 0);
    fs.set_free(3 * BS + 100).unwrap();
    assert_eq!(fs.free_bytes(), 3 * BS);
    assert_eq!(fs.snapshot().other_writers_bytes, MIB - 100 * 1024 - 3 * BS);
}

#[test]
fn set_free_more_than_files_leave_is_enospc() {
    let fs = home();
    fs.write_file("/home/data", MIB / 2).unwrap();
    assert_eq!(errno(fs.set_free(MIB / 2 + BS)), libc::ENOSPC);
    assert_eq!(errno(fs.set_free(2 * MIB)), libc::ENOSPC);
    assert_eq!(
        fs.free_bytes(),
        MIB / 2,
        "a failed set_free changes nothing"
    );
}

#[test]
fn allocate_past_free_space_is_enospc() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.set_free(8 * BS).unwrap();
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, 9 * BS)), libc::ENOSPC);
    fs.allocate(p("/home/f"), 0, 8 * BS).unwrap();
    assert_eq!(fs.free_bytes(), 0);
    assert_eq!(errno(fs.allocate(p("/home/f"), 8 * BS, 1)), libc::ENOSPC);
}

#[test]
fn allocate_is_all_or_nothing_on_enospc() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.allocate(p("/home/f"), 0, 2 * BS).unwrap();
    fs.set_free(4 * BS).unwrap();
    let before = fs.snapshot();
    // Blocks 0 and 1 are there; 2..8 would need six more, only four are free.
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, 8 * BS)), libc::ENOSPC);
    assert_eq!(fs.snapshot(), before, "nothing allocated, length unchanged");
    // Already-allocated blocks are not counted again.
    fs.allocate(p("/home/f"), 0, 6 * BS).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), 6 * BS);
    assert_eq!(fs.free_bytes(), 0);
}

#[test]
fn allocate_extends_length_and_allocates_whole_blocks() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.allocate(p("/home/f"), 100, 5000).unwrap();
    assert_eq!(len(&fs, "/home/f"), 5100);
    assert_eq!(allocated(&fs, "/home/f"), 2 * BS);
    fs.allocate(p("/home/f"), 0, 10).unwrap();
    assert_eq!(len(&fs, "/home/f"), 5100, "allocate never shrinks");
}

#[test]
fn allocate_zero_length_is_einval() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, 0)), libc::EINVAL);
}

#[test]
fn allocate_past_largest_file_is_efbig() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    assert_eq!(
        errno(fs.allocate(p("/home/f"), i64::MAX as u64, 1)),
        libc::EFBIG
    );
    assert_eq!(errno(fs.allocate(p("/home/f"), u64::MAX, 1)), libc::EINVAL);
}

#[test]
fn allocate_past_quota_is_edquot_and_other_writers_do_not_count() {
    let fs = home();
    fs.write_file("/home/old", 4 * BS).unwrap();
    fs.eat(MIB / 2); // other writers: not charged to the quota
    fs.set_quota(Some(10 * BS));
    fs.create_file(p("/home/f")).unwrap();
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, 7 * BS)), libc::EDQUOT);
    assert_eq!(allocated(&fs, "/home/f"), 0);
    fs.allocate(p("/home/f"), 0, 6 * BS).unwrap();
    assert_eq!(
        fs.space(p("/home")).unwrap().free_bytes,
        MIB / 2 - 10 * BS,
        "statvfs does not show the quota"
    );
    fs.set_quota(None);
    fs.allocate(p("/home/f"), 0, 7 * BS).unwrap();
}

#[test]
fn enospc_wins_over_edquot_when_both_run_out() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.set_quota(Some(4 * BS));
    fs.set_free(4 * BS).unwrap();
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, 5 * BS)), libc::ENOSPC);
}

#[test]
fn unsupported_allocate_mode_returns_eopnotsupp() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.set_allocate(AllocateMode::Unsupported {
        errno: libc::EOPNOTSUPP,
    });
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, BS)), libc::EOPNOTSUPP);
    assert_eq!(fs.probe(p("/home/f")).unwrap().unwrap().len, 0);
    fs.write_fill(p("/home/f"), 0, BS).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), BS, "write still allocates");
}

#[test]
fn unsupported_allocate_mode_returns_enosys() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.set_allocate(AllocateMode::Unsupported {
        errno: libc::ENOSYS,
    });
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, BS)), libc::ENOSYS);
}

#[test]
fn no_blocks_mode_extends_length_and_allocates_nothing() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.set_free(0).unwrap();
    fs.set_allocate(AllocateMode::NoBlocks);
    fs.allocate(p("/home/f"), 0, 64 * BS).unwrap();
    assert_eq!(len(&fs, "/home/f"), 64 * BS);
    assert_eq!(allocated(&fs, "/home/f"), 0);
}

#[test]
fn read_only_fs_fails_mutations_with_erofs() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    fs.set_read_only(true);
    let before = fs.snapshot();
    assert_eq!(errno(fs.create_file(p("/home/new"))), libc::EROFS);
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, 2 * BS)), libc::EROFS);
    assert_eq!(errno(fs.write_fill(p("/home/f"), 0, BS)), libc::EROFS);
    assert_eq!(errno(fs.set_len(p("/home/f"), 0)), libc::EROFS);
    assert_eq!(errno(fs.remove_file(p("/home/f"))), libc::EROFS);
    assert_eq!(fs.snapshot(), before);
    // Reading and syncing and locking still work.
    fs.probe(p("/home/f")).unwrap().unwrap();
    fs.space(p("/home")).unwrap();
    fs.sync_file(p("/home/f")).unwrap();
    fs.sync_dir(p("/home")).unwrap();
    drop(fs.lock_dir(p("/home")).unwrap());
    fs.set_read_only(false);
    fs.remove_file(p("/home/f")).unwrap();
}

#[test]
fn read_only_fs_reports_errors_in_the_kernels_order() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    fs.set_read_only(true);
    // Opening a missing file fails at lookup, before the write check.
    assert_eq!(errno(fs.allocate(p("/home/missing"), 0, BS)), libc::ENOENT);
    // O_CREAT|O_EXCL on an existing name: EEXIST; on a missing parent: ENOENT.
    assert_eq!(errno(fs.create_file(p("/home/f"))), libc::EEXIST);
    assert_eq!(errno(fs.create_file(p("/nope/f"))), libc::ENOENT);
    // unlink takes write access before looking the name up.
    assert_eq!(errno(fs.remove_file(p("/home/missing"))), libc::EROFS);
    // A directory opened for writing: EISDIR, not EROFS.
    assert_eq!(errno(fs.write_fill(p("/home"), 0, 1)), libc::EISDIR);
}

#[test]
fn relative_path_is_einval() {
    let fs = home();
    assert_eq!(errno(fs.probe(p("home"))), libc::EINVAL);
    assert_eq!(errno(fs.create_file(p("home/f"))), libc::EINVAL);
    assert_eq!(errno(fs.mkdir_all("rel")), libc::EINVAL);
}

#[test]
fn missing_file_or_parent_is_enoent() {
    let fs = home();
    assert_eq!(fs.probe(p("/home/missing")).unwrap(), None);
    assert_eq!(fs.probe(p("/missing/deeper")).unwrap(), None);
    assert_eq!(errno(fs.create_file(p("/missing/f"))), libc::ENOENT);
    assert_eq!(errno(fs.allocate(p("/home/missing"), 0, 1)), libc::ENOENT);
    assert_eq!(errno(fs.write_fill(p("/home/missing"), 0, 1)), libc::ENOENT);
    assert_eq!(errno(fs.set_len(p("/home/missing"), 0)), libc::ENOENT);
    assert_eq!(errno(fs.sync_file(p("/home/missing"))), libc::ENOENT);
    assert_eq!(errno(fs.sync_dir(p("/home/missing"))), libc::ENOENT);
    assert_eq!(errno(fs.remove_file(p("/home/missing"))), libc::ENOENT);
    assert_eq!(errno(fs.space(p("/home/missing"))), libc::ENOENT);
    assert_eq!(errno(fs.lock_dir(p("/home/missing"))), libc::ENOENT);
}

#[test]
fn file_as_parent_component_is_enotdir() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    assert_eq!(errno(fs.probe(p("/home/f/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs.create_file(p("/home/f/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs.remove_file(p("/home/f/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs.probe(p("/home/f/"))), libc::ENOTDIR);
    assert_eq!(errno(fs.mkdir_all("/home/f/x")), libc::ENOTDIR);
}

#[test]
fn sync_dir_and_lock_dir_of_non_directory_are_enotdir() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    fs.symlink("/home/link", "/home").unwrap();
    assert_eq!(errno(fs.sync_dir(p("/home/f"))), libc::ENOTDIR);
    assert_eq!(errno(fs.lock_dir(p("/home/f"))), libc::ENOTDIR);
    // O_DIRECTORY|O_NOFOLLOW on a symlink to a directory.
    assert_eq!(errno(fs.sync_dir(p("/home/link"))), libc::ENOTDIR);
}

#[test]
fn intermediate_symlinks_are_followed() {
    let fs = home();
    fs.mkdir_all("/data/deep").unwrap();
    fs.write_file("/data/deep/f", BS).unwrap();
    fs.symlink("/home/abs", "/data").unwrap();
    fs.symlink("/home/rel", "../data/deep").unwrap();
    fs.symlink("/home/chain", "rel").unwrap();
    assert_eq!(allocated(&fs, "/home/abs/deep/f"), BS);
    assert_eq!(allocated(&fs, "/home/rel/f"), BS);
    assert_eq!(allocated(&fs, "/home/chain/f"), BS);
    assert_eq!(
        allocated(&fs, "/home/chain/../deep/f"),
        BS,
        "`..` is physical"
    );
    fs.create_file(p("/home/chain/new")).unwrap();
    assert_eq!(
        fs.probe(p("/data/deep/new")).unwrap().unwrap().kind,
        FileKind::Regular
    );
    // space() follows the last component too.
    fs.space(p("/home/abs")).unwrap();
}

#[test]
fn probe_does_not_follow_the_last_symlink() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    fs.symlink("/home/link", "f").unwrap();
    let probe = fs.probe(p("/home/link")).unwrap().unwrap();
    assert_eq!(probe.kind, FileKind::Symlink);
    assert_eq!((probe.len, probe.allocated_bytes), (1, 0));
}

#[test]
fn opening_a_last_component_symlink_is_eloop() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    fs.symlink("/home/link", "f").unwrap();
    assert_eq!(errno(fs.allocate(p("/home/link"), 0, 1)), libc::ELOOP);
    assert_eq!(errno(fs.write_fill(p("/home/link"), 0, 1)), libc::ELOOP);
    assert_eq!(errno(fs.set_len(p("/home/link"), 0)), libc::ELOOP);
    assert_eq!(errno(fs.sync_file(p("/home/link"))), libc::ELOOP);
}

#[test]
fn symlink_cycle_is_eloop() {
    let fs = home();
    fs.symlink("/home/a", "b").unwrap();
    fs.symlink("/home/b", "a").unwrap();
    assert_eq!(errno(fs.probe(p("/home/a/x"))), libc::ELOOP);
    assert_eq!(errno(fs.space(p("/home/a"))), libc::ELOOP);
}

#[test]
fn forty_symlink_hops_resolve_and_forty_one_are_eloop() {
    let fs = home();
    fs.mkdir_all("/target").unwrap();
    fs.symlink("/home/l0", "/target").unwrap();
    for i in 1..=40 {
        fs.symlink(format!("/home/l{i}"), format!("l{}", i - 1))
            .unwrap();
    }
    fs.space(p("/home/l39")).unwrap();
    assert_eq!(errno(fs.space(p("/home/l40"))), libc::ELOOP);
}

#[test]
fn opening_a_directory_is_eisdir_and_unlinking_one_too() {
    let fs = home();
    assert_eq!(errno(fs.allocate(p("/home"), 0, 1)), libc::EISDIR);
    assert_eq!(errno(fs.write_fill(p("/home"), 0, 1)), libc::EISDIR);
    assert_eq!(errno(fs.set_len(p("/home"), 0)), libc::EISDIR);
    assert_eq!(errno(fs.sync_file(p("/home"))), libc::EISDIR);
    assert_eq!(errno(fs.remove_file(p("/home"))), libc::EISDIR);
    assert_eq!(errno(fs.remove_file(p("/"))), libc::EISDIR);
    assert_eq!(errno(fs.remove_file(p("/home/.."))), libc::EISDIR);
    assert_eq!(errno(fs.create_file(p("/home/new/"))), libc::EISDIR);
}

#[test]
fn opening_a_fifo_or_socket_is_enxio() {
    let fs = home();
    fs.mkfifo("/home/fifo").unwrap();
    fs.mksocket("/home/sock").unwrap();
    for path in ["/home/fifo", "/home/sock"] {
        assert_eq!(errno(fs.allocate(p(path), 0, 1)), libc::ENXIO);
        assert_eq!(errno(fs.write_fill(p(path), 0, 1)), libc::ENXIO);
        assert_eq!(errno(fs.set_len(p(path), 0)), libc::ENXIO);
        assert_eq!(errno(fs.sync_file(p(path))), libc::ENXIO);
    }
    assert_eq!(
        fs.probe(p("/home/fifo")).unwrap().unwrap().kind,
        FileKind::Fifo
    );
    fs.remove_file(p("/home/fifo")).unwrap();
}

#[test]
fn opening_a_device_is_einval() {
    let fs = home();
    fs.mknod("/home/null", FileKind::CharDevice).unwrap();
    fs.mknod("/home/sda", FileKind::BlockDevice).unwrap();
    assert_eq!(errno(fs.write_fill(p("/home/null"), 0, 1)), libc::EINVAL);
    assert_eq!(errno(fs.allocate(p("/home/sda"), 0, 1)), libc::EINVAL);
    assert_eq!(
        errno(fs.mknod("/home/d", FileKind::Directory)),
        libc::EINVAL
    );
}

#[test]
fn create_file_over_anything_is_eexist() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    fs.symlink("/home/dangling", "/nowhere").unwrap();
    assert_eq!(errno(fs.create_file(p("/home/f"))), libc::EEXIST);
    assert_eq!(errno(fs.create_file(p("/home/dangling"))), libc::EEXIST);
    assert_eq!(errno(fs.create_file(p("/home"))), libc::EEXIST);
    assert_eq!(errno(fs.create_file(p("/"))), libc::EEXIST);
    assert_eq!(errno(fs.write_file("/home/f", 1)), libc::EEXIST);
    assert_eq!(fs.probe(p("/nowhere")).unwrap(), None, "link not followed");
}

#[test]
fn create_file_works_at_zero_free() {
    let fs = home();
    fs.set_free(0).unwrap();
    fs.create_file(p("/home/f")).unwrap();
    let probe = fs.probe(p("/home/f")).unwrap().unwrap();
    assert_eq!(
        (probe.kind, probe.len, probe.allocated_bytes),
        (FileKind::Regular, 0, 0)
    );
}

#[test]
fn unlink_works_at_zero_free_and_frees_the_blocks() {
    let fs = home();
    fs.write_file("/home/.reserve", 64 * BS).unwrap();
    fs.set_free(0).unwrap();
    fs.remove_file(p("/home/.reserve")).unwrap();
    assert_eq!(fs.probe(p("/home/.reserve")).unwrap(), None);
    assert_eq!(fs.free_bytes(), 64 * BS);
}

#[test]
fn unlink_of_a_symlink_removes_the_link_only() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    fs.symlink("/home/link", "f").unwrap();
    fs.remove_file(p("/home/link")).unwrap();
    assert_eq!(fs.probe(p("/home/link")).unwrap(), None);
    assert_eq!(allocated(&fs, "/home/f"), BS);
}

#[test]
fn write_fill_writes_what_fits_then_fails_with_enospc() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.set_free(3 * BS).unwrap();
    assert_eq!(errno(fs.write_fill(p("/home/f"), 0, 10 * BS)), libc::ENOSPC);
    assert_eq!(allocated(&fs, "/home/f"), 3 * BS);
    assert_eq!(
        len(&fs, "/home/f"),
        3 * BS,
        "length ends where writing stopped"
    );
    assert_eq!(fs.free_bytes(), 0);
    // Nothing fits: no byte is written and the length stays.
    assert_eq!(errno(fs.write_fill(p("/home/f"), 5 * BS, BS)), libc::ENOSPC);
    assert_eq!(len(&fs, "/home/f"), 3 * BS);
    // Rewriting allocated blocks needs no space.
    fs.write_fill(p("/home/f"), 100, 2 * BS).unwrap();
}

#[test]
fn write_fill_writes_what_fits_then_fails_with_edquot() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.set_quota(Some(2 * BS));
    assert_eq!(errno(fs.write_fill(p("/home/f"), 0, 4 * BS)), libc::EDQUOT);
    assert_eq!(allocated(&fs, "/home/f"), 2 * BS);
    assert_eq!(len(&fs, "/home/f"), 2 * BS);
}

#[test]
fn write_fill_of_zero_bytes_is_a_no_op() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.set_free(0).unwrap();
    fs.write_fill(p("/home/f"), 10 * BS, 0).unwrap();
    assert_eq!(len(&fs, "/home/f"), 0);
}

#[test]
fn set_len_shrinking_frees_blocks_past_the_new_length() {
    let fs = home();
    fs.write_file("/home/f", 10 * BS).unwrap();
    fs.set_len(p("/home/f"), 4 * BS + 1).unwrap();
    assert_eq!(len(&fs, "/home/f"), 4 * BS + 1);
    assert_eq!(allocated(&fs, "/home/f"), 5 * BS, "the partial block stays");
    assert_eq!(fs.free_bytes(), MIB - 5 * BS);
    fs.set_len(p("/home/f"), 0).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), 0);
}

#[test]
fn set_len_growing_allocates_nothing() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    fs.set_free(0).unwrap();
    fs.set_len(p("/home/f"), 1 << 40).unwrap();
    assert_eq!(len(&fs, "/home/f"), 1 << 40);
    assert_eq!(allocated(&fs, "/home/f"), BS);
}

#[test]
fn fail_nth_fails_exactly_the_nth_call_and_leaves_no_effect() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.fail_nth(SimOp::Allocate, 3, libc::EIO);
    fs.allocate(p("/home/f"), 0, BS).unwrap();
    fs.allocate(p("/home/f"), 0, 2 * BS).unwrap();
    let before = fs.snapshot();
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, 8 * BS)), libc::EIO);
    assert_eq!(fs.snapshot(), before, "the failed call changed nothing");
    fs.allocate(p("/home/f"), 0, 8 * BS).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), 8 * BS);
}

#[test]
fn fail_nth_plans_stack_and_count_only_their_op() {
    let fs = home();
    fs.fail_next(SimOp::CreateFile, libc::ENOSPC);
    fs.fail_nth(SimOp::CreateFile, 2, libc::EACCES);
    fs.fail_nth(SimOp::RemoveFile, 1, libc::EBUSY);
    fs.probe(p("/home")).unwrap(); // other ops do not count
    assert_eq!(errno(fs.create_file(p("/home/a"))), libc::ENOSPC);
    assert_eq!(errno(fs.create_file(p("/home/a"))), libc::EACCES);
    fs.create_file(p("/home/a")).unwrap();
    assert_eq!(errno(fs.remove_file(p("/home/a"))), libc::EBUSY);
    fs.remove_file(p("/home/a")).unwrap();
}

#[test]
fn fail_next_injects_into_lock_dir_and_probe() {
    let fs = home();
    fs.fail_next(SimOp::LockDir, libc::EINTR);
    fs.fail_next(SimOp::Probe, libc::EIO);
    assert_eq!(errno(fs.lock_dir(p("/home"))), libc::EINTR);
    assert_eq!(errno(fs.probe(p("/home"))), libc::EIO);
    drop(fs.lock_dir(p("/home")).unwrap());
}

#[test]
fn setup_methods_are_not_fault_injected_or_counted() {
    let fs = home();
    fs.fail_next(SimOp::CreateFile, libc::EIO);
    fs.write_file("/home/f", BS).unwrap();
    assert_eq!(fs.calls(SimOp::CreateFile), 0);
    assert_eq!(errno(fs.create_file(p("/home/g"))), libc::EIO);
}

#[test]
fn schedule_space_changes_applies_one_delta_before_each_call() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.schedule_space_changes([0, MIB as i64 - 4 * BS as i64, -(2 * BS as i64), i64::MAX]);
    // Call 1: nothing changes before it.
    assert_eq!(fs.space(p("/home")).unwrap().free_bytes, MIB);
    // Call 2: someone ate all but four blocks.
    assert_eq!(errno(fs.allocate(p("/home/f"), 0, 5 * BS)), libc::ENOSPC);
    // Call 3: they freed two blocks.
    fs.allocate(p("/home/f"), 0, 6 * BS).unwrap();
    // Call 4: they ate everything that was left (clamped at free).
    assert_eq!(fs.space(p("/home")).unwrap().free_bytes, 0);
    assert_eq!(fs.snapshot().other_writers_bytes, MIB - 6 * BS);
    // The queue is empty: nothing changes any more.
    assert_eq!(fs.space(p("/home")).unwrap().free_bytes, 0);
    fs.remove_file(p("/home/f")).unwrap();
    assert_eq!(fs.free_bytes(), 6 * BS);
}

#[test]
fn eat_and_free_external_clamp() {
    let fs = home();
    fs.write_file("/home/f", MIB / 2).unwrap();
    assert_eq!(
        fs.eat(MIB),
        MIB / 2,
        "other writers take at most what is free"
    );
    assert_eq!(fs.free_bytes(), 0);
    assert_eq!(
        fs.free_external(MIB),
        MIB / 2,
        "they free at most what they hold"
    );
    assert_eq!(fs.free_bytes(), MIB / 2);
}

#[test]
fn crash_drops_a_created_but_unsynced_file() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.allocate(p("/home/f"), 0, BS).unwrap();
    fs.sync_file(p("/home/f")).unwrap(); // the file, not its directory entry
    fs.crash();
    assert_eq!(fs.probe(p("/home/f")).unwrap(), None);
    assert_eq!(fs.free_bytes(), MIB, "its blocks are free again");
}

#[test]
fn crash_keeps_an_entry_synced_without_its_data_as_empty() {
    let fs = home();
    fs.create_file(p("/home/f")).unwrap();
    fs.allocate(p("/home/f"), 0, BS).unwrap();
    fs.sync_dir(p("/home")).unwrap();
    fs.crash();
    let probe = fs.probe(p("/home/f")).unwrap().unwrap();
    assert_eq!((probe.len, probe.allocated_bytes), (0, 0));
}

#[test]
fn crash_drops_unsynced_growth() {
    let fs = home();
    fs.write_file("/home/f", 2 * BS).unwrap();
    fs.allocate(p("/home/f"), 0, 8 * BS).unwrap();
    fs.crash();
    assert_eq!(len(&fs, "/home/f"), 2 * BS);
    assert_eq!(allocated(&fs, "/home/f"), 2 * BS);
    fs.allocate(p("/home/f"), 0, 8 * BS).unwrap();
    fs.sync_file(p("/home/f")).unwrap();
    fs.crash();
    assert_eq!(allocated(&fs, "/home/f"), 8 * BS);
}

#[test]
fn crash_resurrects_an_unsynced_unlink_with_its_durable_content() {
    let fs = home();
    fs.write_file("/home/.reserve", 16 * BS).unwrap();
    fs.remove_file(p("/home/.reserve")).unwrap();
    assert_eq!(fs.free_bytes(), MIB);
    fs.crash();
    assert_eq!(allocated(&fs, "/home/.reserve"), 16 * BS);
    assert_eq!(fs.free_bytes(), MIB - 16 * BS);
    // A synced unlink stays done.
    fs.remove_file(p("/home/.reserve")).unwrap();
    fs.sync_dir(p("/home")).unwrap();
    fs.crash();
    assert_eq!(fs.probe(p("/home/.reserve")).unwrap(), None);
}

#[test]
fn crash_drops_locks_and_stale_guards_release_nothing() {
    let fs = home();
    let stale = fs.lock_dir(p("/home")).unwrap();
    fs.crash();
    let current = fs.lock_dir(p("/home")).unwrap(); // would block if the lock survived
    drop(stale);
    // The current holder still excludes others.
    let acquired = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (fs, acquired, released) = (fs.clone(), acquired.clone(), released.clone());
        thread::spawn(move || {
            let _lock = fs.lock_dir(p("/home")).unwrap();
            assert!(released.load(Ordering::SeqCst), "lock taken while held");
            acquired.store(true, Ordering::SeqCst);
        })
    };
    while fs.calls(SimOp::LockDir) < 3 {
        thread::yield_now();
    }
    assert!(!acquired.load(Ordering::SeqCst));
    released.store(true, Ordering::SeqCst);
    drop(current);
    waiter.join().unwrap();
    assert!(acquired.load(Ordering::SeqCst));
}

#[test]
fn lock_dir_excludes_another_thread_until_dropped() {
    let fs = home();
    let held = fs.lock_dir(p("/home")).unwrap();
    let acquired = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicBool::new(false));
    let other = {
        let (fs, acquired, released) = (fs.clone(), acquired.clone(), released.clone());
        thread::spawn(move || {
            let _lock = fs.lock_dir(p("/home")).unwrap();
            assert!(released.load(Ordering::SeqCst), "lock taken while held");
            acquired.store(true, Ordering::SeqCst);
        })
    };
    // The other thread has entered lock_dir: it counted its call under the state mutex
    // and only lets go of the mutex to wait for the lock.
    while fs.calls(SimOp::LockDir) < 2 {
        thread::yield_now();
    }
    assert!(!acquired.load(Ordering::SeqCst));
    // Another directory is not affected.
    fs.mkdir_all("/other").unwrap();
    drop(fs.lock_dir(p("/other")).unwrap());
    released.store(true, Ordering::SeqCst);
    drop(held);
    other.join().unwrap();
    assert!(acquired.load(Ordering::SeqCst));
}

#[test]
fn calls_counts_every_call_per_op_failed_ones_included() {
    let fs = home();
    for op in SimOp::ALL {
        assert_eq!(fs.calls(op), 0);
    }
    fs.space(p("/home")).unwrap();
    fs.probe(p("/home")).unwrap();
    fs.probe(p("/home/x")).unwrap();
    fs.create_file(p("/home/f")).unwrap();
    fs.create_file(p("/home/f")).unwrap_err();
    fs.allocate(p("/home/f"), 0, 1).unwrap();
    fs.write_fill(p("/home/f"), 0, 1).unwrap();
    fs.set_len(p("/home/f"), 0).unwrap();
    fs.sync_file(p("/home/f")).unwrap();
    fs.sync_dir(p("/home")).unwrap();
    fs.remove_file(p("/home/f")).unwrap();
    drop(fs.lock_dir(p("/home")).unwrap());
    let counts: Vec<u64> = SimOp::ALL.iter().map(|&op| fs.calls(op)).collect();
    assert_eq!(counts, [1, 2, 2, 1, 1, 1, 1, 1, 1, 1]);
    // Clones share the counters.
    assert_eq!(fs.clone().calls(SimOp::Probe), 2);
}

#[test]
fn snapshot_equality_shows_only_the_changed_path() {
    let fs = home();
    fs.mkdir_all("/home/cache").unwrap();
    fs.write_file("/home/cache/blob", 3 * BS).unwrap();
    fs.write_sparse("/home/sparse", MIB).unwrap();
    fs.symlink("/home/link", "cache").unwrap();
    let before = fs.snapshot();

    fs.create_file(p("/home/.reserve")).unwrap();
    fs.allocate(p("/home/.reserve"), 0, 16 * BS).unwrap();
    let after = fs.snapshot();
    assert_ne!(after, before);
    assert_eq!(after.clone().without("/home/.reserve"), before);
    assert_eq!(
        after.get("/home/.reserve").unwrap().allocated_bytes,
        16 * BS
    );

    let sparse = before.get("/home/sparse").unwrap();
    assert_eq!((sparse.len, sparse.allocated_bytes), (MIB, 0));
    assert_eq!(before.get("/home/link").unwrap().kind, FileKind::Symlink);

    // Other writers' bytes are part of the state.
    fs.eat(BS);
    assert_ne!(fs.snapshot(), after);
    // Removing a directory path removes what is under it.
    let pruned: SimSnapshot = before.without("/home/cache");
    assert!(pruned.get("/home/cache/blob").is_none());
    assert!(pruned.get("/home/sparse").is_some());
}

#[test]
fn setup_remove_handles_every_kind_and_refuses_non_empty_directories() {
    let fs = home();
    fs.mkdir_all("/home/d").unwrap();
    fs.write_file("/home/d/f", BS).unwrap();
    assert_eq!(errno(fs.remove("/home/d")), libc::ENOTEMPTY);
    fs.remove("/home/d/f").unwrap();
    fs.remove("/home/d/").unwrap();
    assert_eq!(errno(fs.remove("/home/d")), libc::ENOENT);
    assert_eq!(errno(fs.remove("/")), libc::EBUSY);
    assert_eq!(fs.free_bytes(), MIB);
    // Setup removal is durable at once.
    fs.crash();
    assert_eq!(fs.probe(p("/home/d")).unwrap(), None);
}

#[test]
fn setup_write_file_that_does_not_fit_is_enospc_and_creates_nothing() {
    let fs = home();
    fs.set_free(BS).unwrap();
    assert_eq!(errno(fs.write_file("/home/f", BS + 1)), libc::ENOSPC);
    assert_eq!(fs.probe(p("/home/f")).unwrap(), None);
    assert_eq!(errno(fs.write_file("/missing/f", 2 * BS)), libc::ENOENT);
    fs.write_file("/home/f", BS).unwrap();
}

#[test]
fn mkdir_all_is_idempotent_and_refuses_a_file_at_the_path() {
    let fs = home();
    fs.mkdir_all("/home/a/b").unwrap();
    fs.mkdir_all("/home/a/b").unwrap();
    fs.write_file("/home/a/f", 0).unwrap();
    assert_eq!(errno(fs.mkdir_all("/home/a/f")), libc::EEXIST);
}

#[test]
fn debug_prints_space_and_entry_count_not_the_tree() {
    let fs = home();
    fs.write_file("/home/secret-name", BS).unwrap();
    let text = format!("{fs:?}");
    assert!(text.contains("capacity_bytes: 1048576"), "{text}");
    assert!(text.contains("free_bytes: 1044480"), "{text}");
    assert!(text.contains("entries: 3"), "{text}");
    assert!(!text.contains("secret-name"), "{text}");
}

#[test]
fn sim_fs_works_as_a_trait_object() {
    let fs = home();
    let dynamic: &dyn HostFs = &fs;
    dynamic.create_file(p("/home/f")).unwrap();
    let shared: Arc<dyn HostFs> = Arc::new(fs.clone());
    assert!(shared.probe(p("/home/f")).unwrap().is_some());
}
