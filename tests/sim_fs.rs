//! Behaviour of the simulated filesystem, one test per promise, asserting raw errnos.

use std::fmt::Debug;
use std::io;
use std::sync::Arc;
use std::thread;

use camino::Utf8Path;
use disk_reserve::sim_fs::SimSnapshot;
use disk_reserve::{
    AllocateMode, DirHandle, FileHandle, FileKind, HostFs, OpenOptions, SimFs, SimOp, WholeExtents,
};

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

/// What is at `path` now, seen without counting a call.
fn lookup(fs: &SimFs, path: &str) -> disk_reserve::Probe {
    fs.lookup(path).unwrap().expect("path exists")
}

fn allocated(fs: &SimFs, path: &str) -> u64 {
    lookup(fs, path).allocated_bytes
}

fn len(fs: &SimFs, path: &str) -> u64 {
    lookup(fs, path).len
}

fn home() -> SimFs {
    SimFs::with_home(MIB, "/home")
}

fn dir(fs: &SimFs, path: &str) -> Box<dyn DirHandle> {
    fs.open_dir(p(path)).unwrap()
}

/// A new empty file `name` in `/home`, opened for writing.
fn create(fs: &SimFs, name: &str) -> Box<dyn FileHandle> {
    dir(fs, "/home")
        .open_file(name, OpenOptions::create_new())
        .unwrap()
}

/// The existing file `name` in `/home`, opened for writing.
fn open(fs: &SimFs, name: &str) -> Box<dyn FileHandle> {
    dir(fs, "/home")
        .open_file(name, OpenOptions::write())
        .unwrap()
}

#[test]
fn new_fs_has_root_and_all_capacity_free() {
    let fs = SimFs::new(MIB);
    assert_eq!(lookup(&fs, "/").kind, FileKind::Directory);
    assert_eq!(fs.free_bytes(), MIB);
    assert_eq!(fs.used_bytes(), 0);
    assert_eq!(fs.capacity(), MIB);
    assert_eq!(fs.block_size(), BS);
    let space = dir(&fs, "/").space().unwrap();
    assert_eq!((space.free_bytes, space.total_bytes), (MIB, MIB));
    assert_eq!(space.block_bytes, BS);
}

#[test]
fn set_free_zero_leaves_exactly_zero_free_and_rounds_down_to_blocks() {
    let fs = home();
    fs.write_file("/home/data", 100 * 1024).unwrap();
    fs.set_free(0).unwrap();
    assert_eq!(fs.free_bytes(), 0);
    assert_eq!(dir(&fs, "/home").space().unwrap().free_bytes, 0);
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
    let f = create(&fs, "f");
    fs.set_free(8 * BS).unwrap();
    assert_eq!(errno(f.allocate(0, 9 * BS)), libc::ENOSPC);
    f.allocate(0, 8 * BS).unwrap();
    assert_eq!(fs.free_bytes(), 0);
    assert_eq!(errno(f.allocate(8 * BS, 1)), libc::ENOSPC);
}

#[test]
fn allocate_is_all_or_nothing_on_enospc() {
    let fs = home();
    let f = create(&fs, "f");
    f.allocate(0, 2 * BS).unwrap();
    fs.set_free(4 * BS).unwrap();
    let before = fs.snapshot();
    // Blocks 0 and 1 are there; 2..8 would need six more, only four are free.
    assert_eq!(errno(f.allocate(0, 8 * BS)), libc::ENOSPC);
    assert_eq!(fs.snapshot(), before, "nothing allocated, length unchanged");
    // Already-allocated blocks are not counted again.
    f.allocate(0, 6 * BS).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), 6 * BS);
    assert_eq!(fs.free_bytes(), 0);
}

#[test]
fn allocate_extends_length_and_allocates_whole_blocks() {
    let fs = home();
    let f = create(&fs, "f");
    f.allocate(100, 5000).unwrap();
    assert_eq!(len(&fs, "/home/f"), 5100);
    assert_eq!(allocated(&fs, "/home/f"), 2 * BS);
    f.allocate(0, 10).unwrap();
    assert_eq!(len(&fs, "/home/f"), 5100, "allocate never shrinks");
    assert_eq!(f.probe().unwrap(), lookup(&fs, "/home/f"));
}

#[test]
fn allocate_zero_length_is_einval() {
    let fs = home();
    let f = create(&fs, "f");
    assert_eq!(errno(f.allocate(0, 0)), libc::EINVAL);
}

#[test]
fn allocate_past_largest_file_is_efbig() {
    let fs = home();
    let f = create(&fs, "f");
    assert_eq!(errno(f.allocate(i64::MAX as u64, 1)), libc::EFBIG);
    assert_eq!(errno(f.allocate(u64::MAX, 1)), libc::EINVAL);
}

#[test]
fn allocate_past_quota_is_edquot_and_other_writers_do_not_count() {
    let fs = home();
    fs.write_file("/home/old", 4 * BS).unwrap();
    fs.eat(MIB / 2); // other writers: not charged to the quota
    fs.set_quota(Some(10 * BS));
    let f = create(&fs, "f");
    assert_eq!(errno(f.allocate(0, 7 * BS)), libc::EDQUOT);
    assert_eq!(allocated(&fs, "/home/f"), 0);
    f.allocate(0, 6 * BS).unwrap();
    assert_eq!(
        dir(&fs, "/home").space().unwrap().free_bytes,
        MIB / 2 - 10 * BS,
        "statvfs does not show the quota"
    );
    fs.set_quota(None);
    f.allocate(0, 7 * BS).unwrap();
}

#[test]
fn enospc_wins_over_edquot_when_both_run_out() {
    let fs = home();
    let f = create(&fs, "f");
    fs.set_quota(Some(4 * BS));
    fs.set_free(4 * BS).unwrap();
    assert_eq!(errno(f.allocate(0, 5 * BS)), libc::ENOSPC);
}

#[test]
fn unsupported_allocate_mode_returns_eopnotsupp() {
    let fs = home();
    let f = create(&fs, "f");
    fs.set_allocate(AllocateMode::Unsupported {
        errno: libc::EOPNOTSUPP,
    });
    assert_eq!(errno(f.allocate(0, BS)), libc::EOPNOTSUPP);
    assert_eq!(f.probe().unwrap().len, 0);
    f.write_fill(0, BS).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), BS, "write still allocates");
}

#[test]
fn unsupported_allocate_mode_returns_enosys() {
    let fs = home();
    let f = create(&fs, "f");
    fs.set_allocate(AllocateMode::Unsupported {
        errno: libc::ENOSYS,
    });
    assert_eq!(errno(f.allocate(0, BS)), libc::ENOSYS);
}

#[test]
fn no_blocks_mode_extends_length_and_allocates_nothing() {
    let fs = home();
    let f = create(&fs, "f");
    fs.set_free(0).unwrap();
    fs.set_allocate(AllocateMode::NoBlocks);
    f.allocate(0, 64 * BS).unwrap();
    assert_eq!(len(&fs, "/home/f"), 64 * BS);
    assert_eq!(allocated(&fs, "/home/f"), 0);
}

#[test]
fn read_only_fs_fails_mutations_with_erofs() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    let home_dir = dir(&fs, "/home");
    let writable = open(&fs, "f"); // opened before the filesystem went read-only
    fs.set_read_only(true);
    let before = fs.snapshot();
    assert_eq!(
        errno(home_dir.open_file("new", OpenOptions::create_new())),
        libc::EROFS
    );
    assert_eq!(
        errno(home_dir.open_file("f", OpenOptions::write())),
        libc::EROFS
    );
    assert_eq!(errno(writable.allocate(0, 2 * BS)), libc::EROFS);
    assert_eq!(errno(writable.write_fill(0, BS)), libc::EROFS);
    assert_eq!(errno(writable.set_len(0)), libc::EROFS);
    assert_eq!(errno(home_dir.remove_file("f")), libc::EROFS);
    assert_eq!(errno(home_dir.rename("f", "g")), libc::EROFS);
    assert_eq!(errno(home_dir.link("f", "g")), libc::EROFS);
    assert_eq!(fs.snapshot(), before);
    // Reading and syncing and locking still work.
    home_dir.probe("f").unwrap().unwrap();
    home_dir.space().unwrap();
    let readable = home_dir.open_file("f", OpenOptions::read()).unwrap();
    readable.probe().unwrap();
    readable.sync_all().unwrap();
    writable.sync_all().unwrap();
    home_dir.sync().unwrap();
    drop(home_dir.try_lock().unwrap().unwrap());
    fs.set_read_only(false);
    home_dir.remove_file("f").unwrap();
}

#[test]
fn read_only_fs_reports_errors_in_the_kernels_order() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    fs.mkdir_all("/home/d").unwrap();
    let home_dir = dir(&fs, "/home");
    fs.set_read_only(true);
    // Opening a missing file fails at lookup, before the write check…
    assert_eq!(
        errno(home_dir.open_file("missing", OpenOptions::write())),
        libc::ENOENT
    );
    // …creating one fails the write check.
    assert_eq!(
        errno(home_dir.open_file("missing", OpenOptions::create_new())),
        libc::EROFS
    );
    // O_CREAT|O_EXCL on an existing name: EEXIST; under a missing directory: ENOENT.
    assert_eq!(
        errno(home_dir.open_file("f", OpenOptions::create_new())),
        libc::EEXIST
    );
    assert_eq!(errno(fs.open_dir(p("/nope"))), libc::ENOENT);
    // unlink and rename take write access before looking the name up.
    assert_eq!(errno(home_dir.remove_file("missing")), libc::EROFS);
    assert_eq!(errno(home_dir.remove_file("d")), libc::EROFS);
    assert_eq!(errno(home_dir.rename("missing", "x")), libc::EROFS);
    // link looks up both names first, then checks write access, then refuses a directory.
    assert_eq!(errno(home_dir.link("missing", "x")), libc::ENOENT);
    assert_eq!(errno(home_dir.link("f", "d")), libc::EEXIST);
    assert_eq!(errno(home_dir.link("d", "x")), libc::EROFS);
    // A directory opened for writing: EISDIR, not EROFS.
    assert_eq!(
        errno(home_dir.open_file("d", OpenOptions::write())),
        libc::EISDIR
    );
    // A bad name is EINVAL before anything else.
    assert_eq!(errno(home_dir.remove_file("a/b")), libc::EINVAL);
}

#[test]
fn relative_path_is_einval() {
    let fs = home();
    assert_eq!(errno(fs.open_dir(p("home"))), libc::EINVAL);
    assert_eq!(errno(fs.open_dir(p("home/f"))), libc::EINVAL);
    assert_eq!(errno(fs.lookup("home")), libc::EINVAL);
    assert_eq!(errno(fs.mkdir_all("rel")), libc::EINVAL);
}

#[test]
fn names_that_are_not_one_component_are_einval() {
    let fs = home();
    fs.mkdir_all("/home/a").unwrap();
    fs.write_file("/home/a/b", BS).unwrap();
    let home_dir = dir(&fs, "/home");
    for name in ["", ".", "..", "a/b", "a/", "/a", "a\0b"] {
        assert_eq!(errno(home_dir.probe(name)), libc::EINVAL, "{name:?}");
        assert_eq!(
            errno(home_dir.open_file(name, OpenOptions::create_new())),
            libc::EINVAL,
            "{name:?}"
        );
        assert_eq!(errno(home_dir.remove_file(name)), libc::EINVAL, "{name:?}");
    }
    let long = "n".repeat(256);
    assert_eq!(errno(home_dir.probe(&long)), libc::ENAMETOOLONG);
    assert_eq!(
        errno(home_dir.open_file(&long, OpenOptions::create_new())),
        libc::ENAMETOOLONG
    );
    home_dir
        .open_file(&"n".repeat(255), OpenOptions::create_new())
        .unwrap();
    assert_eq!(allocated(&fs, "/home/a/b"), BS, "nothing reached a/b");
}

#[test]
fn missing_names_are_enoent() {
    let fs = home();
    let home_dir = dir(&fs, "/home");
    assert_eq!(home_dir.probe("missing").unwrap(), None);
    assert_eq!(fs.lookup("/missing/deeper").unwrap(), None);
    assert_eq!(errno(fs.open_dir(p("/missing"))), libc::ENOENT);
    assert_eq!(errno(fs.open_dir(p("/missing/deeper"))), libc::ENOENT);
    assert_eq!(errno(fs.open_dir(p(""))), libc::ENOENT);
    for options in [OpenOptions::read(), OpenOptions::write()] {
        assert_eq!(
            errno(home_dir.open_file("missing", options)),
            libc::ENOENT,
            "{options:?}"
        );
    }
    assert_eq!(errno(home_dir.remove_file("missing")), libc::ENOENT);
    assert_eq!(errno(home_dir.rename("missing", "x")), libc::ENOENT);
    assert_eq!(errno(home_dir.link("missing", "x")), libc::ENOENT);
}

#[test]
fn file_as_parent_component_is_enotdir() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    assert_eq!(errno(fs.open_dir(p("/home/f"))), libc::ENOTDIR);
    assert_eq!(errno(fs.open_dir(p("/home/f/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs.open_dir(p("/home/f/"))), libc::ENOTDIR);
    assert_eq!(errno(fs.lookup("/home/f/x")), libc::ENOTDIR);
    assert_eq!(errno(fs.lookup("/home/f/")), libc::ENOTDIR);
    assert_eq!(errno(fs.mkdir_all("/home/f/x")), libc::ENOTDIR);
}

#[test]
fn open_dir_of_a_non_directory_is_enotdir_and_a_symlink_to_one_is_followed() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    fs.symlink("/home/file-link", "f").unwrap();
    fs.symlink("/home/link", "/home").unwrap();
    fs.mkfifo("/home/fifo").unwrap();
    assert_eq!(errno(fs.open_dir(p("/home/f"))), libc::ENOTDIR);
    assert_eq!(errno(fs.open_dir(p("/home/file-link"))), libc::ENOTDIR);
    assert_eq!(errno(fs.open_dir(p("/home/fifo"))), libc::ENOTDIR);
    // The caller's path is resolved whole, symlinks included: the home may be one.
    let through_link = dir(&fs, "/home/link");
    assert_eq!(through_link.probe("f").unwrap().unwrap().len, 0);
    through_link.sync().unwrap();
    drop(through_link.try_lock().unwrap().unwrap());
}

#[test]
fn dot_dot_walks_back_through_paths_deeper_than_the_inline_stack() {
    // Resolution keeps the first 32 directories inline and the rest apart: `..` must
    // cross that boundary both ways, and `/` in a symlink must start again from the root.
    let fs = home();
    let deep: String = (0..40).map(|i| format!("/d{i}")).collect();
    fs.mkdir_all(&deep).unwrap();
    fs.write_file(format!("{deep}/f"), BS).unwrap();
    fs.write_file("/d0/d1/g", 2 * BS).unwrap();
    let up_10 = "/..".repeat(10);
    let back_in: String = (30..40).map(|i| format!("/d{i}")).collect();
    assert_eq!(allocated(&fs, &format!("{deep}{up_10}{back_in}/f")), BS);
    let up_38 = "/..".repeat(38);
    assert_eq!(allocated(&fs, &format!("{deep}{up_38}/g")), 2 * BS);
    assert_eq!(
        allocated(&fs, &format!("{deep}{}/d0/d1/g", "/..".repeat(45))),
        2 * BS,
        "`..` stops at `/`"
    );
    fs.symlink(format!("{deep}/to-d1"), "/d0/d1").unwrap();
    assert_eq!(allocated(&fs, &format!("{deep}/to-d1/g")), 2 * BS);
    assert_eq!(
        allocated(&fs, &format!("{deep}/to-d1/..{}/f", &deep[3..])),
        BS,
        "`..` after a symlink is the target's parent"
    );
    assert!(
        !matches!(fs.lookup(format!("{deep}/d40-missing/../f")), Ok(Some(_))),
        "a missing directory before `..` is not skipped"
    );
}

#[test]
fn intermediate_symlinks_are_followed() {
    let fs = home();
    fs.mkdir_all("/data/deep").unwrap();
    fs.write_file("/data/deep/f", BS).unwrap();
    fs.symlink("/home/abs", "/data").unwrap();
    fs.symlink("/home/rel", "../data/deep").unwrap();
    fs.symlink("/home/chain", "rel").unwrap();
    let allocated_in = |path: &str| dir(&fs, path).probe("f").unwrap().unwrap().allocated_bytes;
    assert_eq!(allocated_in("/home/abs/deep"), BS);
    assert_eq!(allocated_in("/home/rel"), BS);
    assert_eq!(allocated_in("/home/chain"), BS);
    assert_eq!(allocated_in("/home/chain/../deep"), BS, "`..` is physical");
    assert_eq!(allocated(&fs, "/home/chain/f"), BS);
    dir(&fs, "/home/chain")
        .open_file("new", OpenOptions::create_new())
        .unwrap();
    assert_eq!(lookup(&fs, "/data/deep/new").kind, FileKind::Regular);
    // open_dir follows the last component too.
    dir(&fs, "/home/abs").space().unwrap();
}

#[test]
fn probe_does_not_follow_the_last_symlink() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    fs.symlink("/home/link", "f").unwrap();
    let probe = dir(&fs, "/home").probe("link").unwrap().unwrap();
    assert_eq!(probe.kind, FileKind::Symlink);
    assert_eq!((probe.len, probe.allocated_bytes), (1, 0));
    assert_eq!(fs.lookup("/home/link").unwrap(), Some(probe));
}

#[test]
fn opening_a_symlink_is_eloop() {
    let fs = home();
    fs.write_file("/home/f", 0).unwrap();
    fs.symlink("/home/link", "f").unwrap();
    let home_dir = dir(&fs, "/home");
    for options in [OpenOptions::read(), OpenOptions::write()] {
        assert_eq!(
            errno(home_dir.open_file("link", options)),
            libc::ELOOP,
            "{options:?}"
        );
    }
    assert_eq!(len(&fs, "/home/f"), 0);
}

#[test]
fn symlink_cycle_is_eloop() {
    let fs = home();
    fs.symlink("/home/a", "b").unwrap();
    fs.symlink("/home/b", "a").unwrap();
    assert_eq!(errno(fs.lookup("/home/a/x")), libc::ELOOP);
    assert_eq!(errno(fs.open_dir(p("/home/a"))), libc::ELOOP);
    assert_eq!(errno(fs.open_dir(p("/home/a/x"))), libc::ELOOP);
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
    dir(&fs, "/home/l39").space().unwrap();
    assert_eq!(errno(fs.open_dir(p("/home/l40"))), libc::ELOOP);
}

#[test]
fn opening_a_directory_is_eisdir_and_unlinking_one_too() {
    let fs = home();
    fs.mkdir_all("/home/d").unwrap();
    let home_dir = dir(&fs, "/home");
    for options in [OpenOptions::read(), OpenOptions::write()] {
        assert_eq!(
            errno(home_dir.open_file("d", options)),
            libc::EISDIR,
            "{options:?}"
        );
    }
    assert_eq!(errno(home_dir.remove_file("d")), libc::EISDIR);
    assert_eq!(errno(dir(&fs, "/").remove_file("home")), libc::EISDIR);
    assert_eq!(lookup(&fs, "/home/d").kind, FileKind::Directory);
}

#[test]
fn opening_a_fifo_or_socket_is_enxio() {
    let fs = home();
    fs.mkfifo("/home/fifo").unwrap();
    fs.mksocket("/home/sock").unwrap();
    let home_dir = dir(&fs, "/home");
    for name in ["fifo", "sock"] {
        for options in [OpenOptions::read(), OpenOptions::write()] {
            assert_eq!(
                errno(home_dir.open_file(name, options)),
                libc::ENXIO,
                "{name} {options:?}"
            );
        }
    }
    assert_eq!(
        home_dir.probe("fifo").unwrap().unwrap().kind,
        FileKind::Fifo
    );
    assert_eq!(
        home_dir.probe("sock").unwrap().unwrap().kind,
        FileKind::Socket
    );
    home_dir.remove_file("fifo").unwrap();
}

#[test]
fn opening_a_device_is_einval() {
    let fs = home();
    fs.mknod("/home/null", FileKind::CharDevice).unwrap();
    fs.mknod("/home/sda", FileKind::BlockDevice).unwrap();
    let home_dir = dir(&fs, "/home");
    assert_eq!(
        errno(home_dir.open_file("null", OpenOptions::write())),
        libc::EINVAL
    );
    assert_eq!(
        errno(home_dir.open_file("sda", OpenOptions::read())),
        libc::EINVAL
    );
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
    fs.mkdir_all("/home/d").unwrap();
    let home_dir = dir(&fs, "/home");
    for name in ["f", "dangling", "d"] {
        assert_eq!(
            errno(home_dir.open_file(name, OpenOptions::create_new())),
            libc::EEXIST,
            "{name}"
        );
    }
    assert_eq!(
        errno(dir(&fs, "/").open_file("home", OpenOptions::create_new())),
        libc::EEXIST
    );
    assert_eq!(errno(fs.write_file("/home/f", 1)), libc::EEXIST);
    assert_eq!(fs.lookup("/nowhere").unwrap(), None, "link not followed");
}

#[test]
fn create_file_works_at_zero_free() {
    let fs = home();
    fs.set_free(0).unwrap();
    let f = create(&fs, "f");
    let probe = f.probe().unwrap();
    assert_eq!(
        (probe.kind, probe.len, probe.allocated_bytes, probe.links),
        (FileKind::Regular, 0, 0, 1)
    );
    assert_eq!(lookup(&fs, "/home/f"), probe);
}

#[test]
fn unlink_works_at_zero_free_and_frees_the_blocks() {
    let fs = home();
    fs.write_file("/home/.reserve", 64 * BS).unwrap();
    fs.set_free(0).unwrap();
    dir(&fs, "/home").remove_file(".reserve").unwrap();
    assert_eq!(fs.lookup("/home/.reserve").unwrap(), None);
    assert_eq!(fs.free_bytes(), 64 * BS);
}

#[test]
fn unlink_of_a_symlink_removes_the_link_only() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    fs.symlink("/home/link", "f").unwrap();
    dir(&fs, "/home").remove_file("link").unwrap();
    assert_eq!(fs.lookup("/home/link").unwrap(), None);
    assert_eq!(allocated(&fs, "/home/f"), BS);
}

#[test]
fn unlinked_file_keeps_its_blocks_until_its_last_handle_is_dropped() {
    let fs = home();
    fs.write_file("/home/f", 8 * BS).unwrap();
    let (first, second) = (open(&fs, "f"), open(&fs, "f"));
    dir(&fs, "/home").remove_file("f").unwrap();
    assert_eq!(fs.lookup("/home/f").unwrap(), None);
    assert_eq!(fs.free_bytes(), MIB - 8 * BS, "still held by the handles");
    first.allocate(0, 16 * BS).unwrap();
    assert_eq!(second.probe().unwrap().allocated_bytes, 16 * BS);
    assert_eq!(second.probe().unwrap().links, 0);
    drop(first);
    assert_eq!(fs.free_bytes(), MIB - 16 * BS);
    drop(second);
    assert_eq!(fs.free_bytes(), MIB);
    assert_eq!(fs.snapshot().entries.len(), 2, "only / and /home are left");
}

#[test]
fn write_fill_writes_what_fits_then_fails_with_enospc() {
    let fs = home();
    let f = create(&fs, "f");
    fs.set_free(3 * BS).unwrap();
    assert_eq!(errno(f.write_fill(0, 10 * BS)), libc::ENOSPC);
    assert_eq!(allocated(&fs, "/home/f"), 3 * BS);
    assert_eq!(
        len(&fs, "/home/f"),
        3 * BS,
        "length ends where writing stopped"
    );
    assert_eq!(fs.free_bytes(), 0);
    // Nothing fits: no byte is written and the length stays.
    assert_eq!(errno(f.write_fill(5 * BS, BS)), libc::ENOSPC);
    assert_eq!(len(&fs, "/home/f"), 3 * BS);
    // Rewriting allocated blocks needs no space.
    f.write_fill(100, 2 * BS).unwrap();
}

#[test]
fn write_fill_writes_what_fits_then_fails_with_edquot() {
    let fs = home();
    let f = create(&fs, "f");
    fs.set_quota(Some(2 * BS));
    assert_eq!(errno(f.write_fill(0, 4 * BS)), libc::EDQUOT);
    assert_eq!(allocated(&fs, "/home/f"), 2 * BS);
    assert_eq!(len(&fs, "/home/f"), 2 * BS);
}

#[test]
fn write_fill_of_zero_bytes_is_a_no_op() {
    let fs = home();
    let f = create(&fs, "f");
    fs.set_free(0).unwrap();
    f.write_fill(10 * BS, 0).unwrap();
    assert_eq!(len(&fs, "/home/f"), 0);
}

#[test]
fn set_len_shrinking_frees_blocks_past_the_new_length() {
    let fs = home();
    fs.write_file("/home/f", 10 * BS).unwrap();
    let f = open(&fs, "f");
    f.set_len(4 * BS + 1).unwrap();
    assert_eq!(len(&fs, "/home/f"), 4 * BS + 1);
    assert_eq!(allocated(&fs, "/home/f"), 5 * BS, "the partial block stays");
    assert_eq!(fs.free_bytes(), MIB - 5 * BS);
    f.set_len(0).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), 0);
}

#[test]
fn set_len_growing_allocates_nothing() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    let f = open(&fs, "f");
    fs.set_free(0).unwrap();
    f.set_len(1 << 40).unwrap();
    assert_eq!(len(&fs, "/home/f"), 1 << 40);
    assert_eq!(allocated(&fs, "/home/f"), BS);
}

/// btrfs (`set_eof_block_zeroing`): growing a file whose end is inside a hole block
/// writes that block — by `set_len`, by a write past the end and by an `allocate` past
/// the end — and needs a free block for it; a file ending on a block boundary or in an
/// allocated block takes nothing more. Off (ext4, XFS, tmpfs), nothing is allocated.
#[test]
fn growing_past_an_end_inside_a_hole_block_writes_that_block_when_zeroing_is_on() {
    let grow = |fs: &SimFs, name: &str, how: &str| {
        let f = create(fs, name);
        f.set_len(BS + 100).unwrap();
        match how {
            "set_len" => f.set_len(10 * BS).unwrap(),
            "write" => assert_eq!(f.write_at(5 * BS, b"x").unwrap(), 1),
            "write_fill" => f.write_fill(5 * BS, BS).unwrap(),
            _ => f.allocate(5 * BS, BS).unwrap(),
        }
        allocated(fs, &format!("/home/{name}"))
    };
    for (how, own) in [
        ("set_len", 0),
        ("write", BS),
        ("write_fill", BS),
        ("allocate", BS),
    ] {
        let fs = home();
        assert_eq!(grow(&fs, "off", how), own, "{how}, zeroing off");
        fs.set_eof_block_zeroing(true);
        assert_eq!(grow(&fs, "on", how), own + BS, "{how}, zeroing on");
    }

    let fs = home();
    fs.set_eof_block_zeroing(true);
    let aligned = create(&fs, "aligned");
    aligned.set_len(2 * BS).unwrap();
    aligned.set_len(8 * BS).unwrap();
    assert_eq!(
        allocated(&fs, "/home/aligned"),
        0,
        "an end on a block boundary"
    );
    let same = create(&fs, "same");
    same.set_len(100).unwrap();
    same.set_len(100).unwrap();
    assert_eq!(
        allocated(&fs, "/home/same"),
        0,
        "a set_len that does not grow"
    );
    let written = create(&fs, "written");
    assert_eq!(written.write_at(0, &[1; 100]).unwrap(), 100);
    written.set_len(8 * BS).unwrap();
    assert_eq!(
        allocated(&fs, "/home/written"),
        BS,
        "the end block was there"
    );
    // The zeroed tail reads as zeros; the bytes before it are kept.
    let mut buf = [9u8; 200];
    let reader = dir(&fs, "/home")
        .open_file("written", OpenOptions::read())
        .unwrap();
    assert_eq!(reader.read_at(0, &mut buf).unwrap(), 200);
    assert_eq!((buf[99], buf[100]), (1, 0));

    // Growing from inside the end block (a write or an allocate starting in it, past the
    // end) needs that one block once: with exactly one block free, all three succeed.
    for how in ["write", "write_fill", "allocate"] {
        let name = format!("one-{how}");
        let f = create(&fs, &name);
        f.set_len(100).unwrap();
        fs.set_free(BS).unwrap();
        match how {
            "write" => assert_eq!(f.write_at(200, b"x").unwrap(), 1),
            "write_fill" => f.write_fill(200, 100).unwrap(),
            _ => f.allocate(200, 100).unwrap(),
        }
        assert_eq!(allocated(&fs, &format!("/home/{name}")), BS, "{how}");
    }

    // No free block: the growth fails as btrfs's does, and the file keeps its length.
    let full = create(&fs, "full");
    full.set_len(100).unwrap();
    fs.set_free(0).unwrap();
    assert_eq!(errno(full.set_len(8 * BS)), libc::ENOSPC);
    assert_eq!(errno(full.write_at(4 * BS, b"x")), libc::ENOSPC);
    assert_eq!(len(&fs, "/home/full"), 100);
    assert_eq!(allocated(&fs, "/home/full"), 0);
}

/// The end block the knob zeroes is written again: if a failed sync had dropped that
/// block's earlier bytes from writeback, the next sync writes the zeros, and a crash then
/// finds zeros there, not the bytes from before the failed sync.
#[test]
fn a_zeroed_end_block_is_dirty_again_after_a_failed_sync() {
    let fs = home();
    fs.set_eof_block_zeroing(true);
    let f = create(&fs, "f");
    f.write_all_at(0, &[0xAA; 2 * BS as usize]).unwrap();
    f.sync_all().unwrap();
    dir(&fs, "/home").sync().unwrap();
    f.set_len(BS).unwrap(); // block 1 cut: a hole, its old bytes still on the disk
    f.set_len(BS + 100).unwrap(); // from a block boundary: nothing to zero
    fs.fail_next(SimOp::SyncFile, libc::EIO);
    assert_eq!(errno(f.sync_all()), libc::EIO);
    f.set_len(3 * BS).unwrap(); // zeroes block 1, where the file ends
    f.sync_all().unwrap();
    fs.crash();
    let f = dir(&fs, "/home")
        .open_file("f", OpenOptions::read())
        .unwrap();
    let mut block = vec![0x55; BS as usize];
    assert_eq!(f.read_at(BS, &mut block).unwrap(), block.len());
    assert!(
        block.iter().all(|&b| b == 0),
        "block 1 reads as the zeros synced last, not the bytes before the failed sync"
    );
}

/// A block a write starts fresh, part-way, reads as zeros around the bytes written, even
/// when its buffer is one a sync gave back (the simulator reuses them).
#[test]
fn a_partial_write_to_a_new_block_reads_zeros_around_it_with_reused_buffers() {
    let fs = home();
    let f = dir(&fs, "/home")
        .open_file("f", OpenOptions::create())
        .unwrap();
    // Rewrite and sync a block a few times: the buffers the syncs let go are kept.
    for byte in [0xAA, 0xBB, 0xCC] {
        f.write_all_at(0, &[byte; BS as usize]).unwrap();
        f.sync_data().unwrap();
    }
    f.write_all_at(2 * BS + 10, b"xy").unwrap();
    // Grown over the rest of the block, which must read as zeros too.
    f.set_len(3 * BS).unwrap();
    let mut block = vec![0x55; BS as usize];
    assert_eq!(f.read_at(2 * BS, &mut block).unwrap(), block.len());
    assert_eq!(&block[10..12], b"xy");
    block[10..12].fill(0);
    assert!(
        block.iter().all(|&b| b == 0),
        "the rest of the new block reads as zeros"
    );
}

#[test]
fn write_less_handle_is_ebadf_for_writes_and_einval_for_set_len() {
    let fs = home();
    fs.write_file("/home/f", BS).unwrap();
    let f = dir(&fs, "/home")
        .open_file("f", OpenOptions::read())
        .unwrap();
    let before = fs.snapshot();
    assert_eq!(errno(f.allocate(0, 2 * BS)), libc::EBADF);
    assert_eq!(errno(f.write_fill(0, BS)), libc::EBADF);
    assert_eq!(errno(f.set_len(0)), libc::EINVAL);
    f.sync_all().unwrap();
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn rename_and_link_in_a_directory() {
    let fs = home();
    fs.write_file("/home/a", 2 * BS).unwrap();
    fs.write_file("/home/b", 5 * BS).unwrap();
    let home_dir = dir(&fs, "/home");
    home_dir.rename("a", "b").unwrap();
    assert_eq!(fs.lookup("/home/a").unwrap(), None);
    assert_eq!(allocated(&fs, "/home/b"), 2 * BS);
    assert_eq!(fs.free_bytes(), MIB - 2 * BS, "the replaced file is freed");
    home_dir.link("b", "c").unwrap();
    assert_eq!(lookup(&fs, "/home/b").links, 2);
    assert_eq!(errno(home_dir.link("b", "c")), libc::EEXIST);
    home_dir.remove_file("b").unwrap();
    assert_eq!(lookup(&fs, "/home/c").links, 1);
    assert_eq!(allocated(&fs, "/home/c"), 2 * BS);
    assert_eq!(fs.free_bytes(), MIB - 2 * BS);
}

#[test]
fn crash_forgets_an_unsynced_rename_and_link() {
    let fs = home();
    fs.write_file("/home/a", BS).unwrap();
    let home_dir = dir(&fs, "/home");
    home_dir.rename("a", "b").unwrap();
    home_dir.link("b", "c").unwrap();
    fs.crash();
    assert_eq!(allocated(&fs, "/home/a"), BS);
    assert_eq!(fs.lookup("/home/b").unwrap(), None);
    assert_eq!(fs.lookup("/home/c").unwrap(), None);
    assert_eq!(lookup(&fs, "/home/a").links, 1);
}

#[test]
fn fail_nth_fails_exactly_the_nth_call_and_leaves_no_effect() {
    let fs = home();
    let f = create(&fs, "f");
    fs.fail_nth(SimOp::Allocate, 3, libc::EIO);
    f.allocate(0, BS).unwrap();
    f.allocate(0, 2 * BS).unwrap();
    let before = fs.snapshot();
    assert_eq!(errno(f.allocate(0, 8 * BS)), libc::EIO);
    assert_eq!(fs.snapshot(), before, "the failed call changed nothing");
    f.allocate(0, 8 * BS).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), 8 * BS);
}

#[test]
fn fail_nth_plans_stack_and_count_only_their_op() {
    let fs = home();
    let home_dir = dir(&fs, "/home");
    fs.fail_next(SimOp::OpenFile, libc::ENOSPC);
    fs.fail_nth(SimOp::OpenFile, 2, libc::EACCES);
    fs.fail_nth(SimOp::RemoveFile, 1, libc::EBUSY);
    home_dir.probe("a").unwrap(); // other ops do not count
    assert_eq!(
        errno(home_dir.open_file("a", OpenOptions::create_new())),
        libc::ENOSPC
    );
    assert_eq!(
        errno(home_dir.open_file("a", OpenOptions::create_new())),
        libc::EACCES
    );
    assert_eq!(
        fs.lookup("/home/a").unwrap(),
        None,
        "failed calls create nothing"
    );
    drop(home_dir.open_file("a", OpenOptions::create_new()).unwrap());
    assert_eq!(errno(home_dir.remove_file("a")), libc::EBUSY);
    home_dir.remove_file("a").unwrap();
}

#[test]
fn fail_next_injects_into_try_lock_probe_and_open_dir() {
    let fs = home();
    fs.fail_next(SimOp::OpenDir, libc::EACCES);
    assert_eq!(errno(fs.open_dir(p("/home"))), libc::EACCES);
    let home_dir = dir(&fs, "/home");
    fs.fail_next(SimOp::LockDir, libc::ENOLCK);
    fs.fail_next(SimOp::Probe, libc::EIO);
    assert_eq!(errno(home_dir.try_lock()), libc::ENOLCK);
    assert_eq!(errno(home_dir.probe("x")), libc::EIO);
    drop(home_dir.try_lock().unwrap().unwrap());
}

#[test]
fn setup_methods_are_not_fault_injected_or_counted() {
    let fs = home();
    fs.fail_next(SimOp::OpenFile, libc::EIO);
    fs.fail_next(SimOp::Probe, libc::EIO);
    fs.write_file("/home/f", BS).unwrap();
    fs.lookup("/home/f").unwrap().unwrap();
    assert_eq!(fs.calls(SimOp::OpenFile), 0);
    assert_eq!(fs.calls(SimOp::Probe), 0);
    let home_dir = dir(&fs, "/home");
    assert_eq!(
        errno(home_dir.open_file("g", OpenOptions::create_new())),
        libc::EIO
    );
    assert_eq!(errno(home_dir.probe("f")), libc::EIO);
}

#[test]
fn schedule_space_changes_applies_one_delta_before_each_call() {
    let fs = home();
    let home_dir = dir(&fs, "/home");
    let f = create(&fs, "f");
    fs.schedule_space_changes([0, MIB as i64 - 4 * BS as i64, -(2 * BS as i64), i64::MAX]);
    // Call 1: nothing changes before it.
    assert_eq!(home_dir.space().unwrap().free_bytes, MIB);
    // Call 2: someone ate all but four blocks.
    assert_eq!(errno(f.allocate(0, 5 * BS)), libc::ENOSPC);
    // Call 3: they freed two blocks.
    f.allocate(0, 6 * BS).unwrap();
    // Call 4: they ate everything that was left (clamped at free).
    assert_eq!(home_dir.space().unwrap().free_bytes, 0);
    assert_eq!(fs.snapshot().other_writers_bytes, MIB - 6 * BS);
    // The queue is empty: nothing changes any more.
    assert_eq!(home_dir.space().unwrap().free_bytes, 0);
    drop(f);
    home_dir.remove_file("f").unwrap();
    assert_eq!(fs.free_bytes(), 6 * BS);
}

#[test]
fn take_max_free_reported_returns_the_largest_space_answer_once() {
    let fs = home();
    let home_dir = dir(&fs, "/home");
    assert_eq!(fs.take_max_free_reported(), None);
    home_dir.space().unwrap();
    fs.set_free(BS).unwrap();
    home_dir.space().unwrap();
    assert_eq!(fs.take_max_free_reported(), Some(MIB));
    assert_eq!(fs.take_max_free_reported(), None);
    home_dir.space().unwrap();
    assert_eq!(fs.take_max_free_reported(), Some(BS));
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
    let f = create(&fs, "f");
    f.allocate(0, BS).unwrap();
    f.sync_all().unwrap(); // the file, not its directory entry
    fs.crash();
    assert_eq!(fs.lookup("/home/f").unwrap(), None);
    assert_eq!(fs.free_bytes(), MIB, "its blocks are free again");
    assert_eq!(fs.crashes(), 1);
}

#[test]
fn crash_keeps_an_entry_synced_without_its_data_as_empty() {
    let fs = home();
    let f = create(&fs, "f");
    f.allocate(0, BS).unwrap();
    dir(&fs, "/home").sync().unwrap();
    fs.crash();
    let probe = lookup(&fs, "/home/f");
    assert_eq!((probe.len, probe.allocated_bytes), (0, 0));
}

#[test]
fn crash_drops_unsynced_growth() {
    let fs = home();
    fs.write_file("/home/f", 2 * BS).unwrap();
    open(&fs, "f").allocate(0, 8 * BS).unwrap();
    fs.crash();
    assert_eq!(len(&fs, "/home/f"), 2 * BS);
    assert_eq!(allocated(&fs, "/home/f"), 2 * BS);
    let f = open(&fs, "f");
    f.allocate(0, 8 * BS).unwrap();
    f.sync_all().unwrap();
    fs.crash();
    assert_eq!(allocated(&fs, "/home/f"), 8 * BS);
}

#[test]
fn crash_resurrects_an_unsynced_unlink_with_its_durable_content() {
    let fs = home();
    fs.write_file("/home/.reserve", 16 * BS).unwrap();
    dir(&fs, "/home").remove_file(".reserve").unwrap();
    assert_eq!(fs.free_bytes(), MIB);
    fs.crash();
    assert_eq!(allocated(&fs, "/home/.reserve"), 16 * BS);
    assert_eq!(fs.free_bytes(), MIB - 16 * BS);
    // A synced unlink stays done.
    let home_dir = dir(&fs, "/home");
    home_dir.remove_file(".reserve").unwrap();
    home_dir.sync().unwrap();
    fs.crash();
    assert_eq!(fs.lookup("/home/.reserve").unwrap(), None);
}

#[test]
fn handles_from_before_a_crash_fail_with_eio() {
    let fs = home();
    let home_dir = dir(&fs, "/home");
    let f = create(&fs, "f");
    home_dir.sync().unwrap();
    fs.crash();
    assert_eq!(errno(home_dir.probe("f")), libc::EIO);
    assert_eq!(errno(home_dir.space()), libc::EIO);
    assert_eq!(errno(home_dir.try_lock()), libc::EIO);
    assert_eq!(errno(f.probe()), libc::EIO);
    assert_eq!(errno(f.allocate(0, BS)), libc::EIO);
    assert_eq!(errno(f.sync_all()), libc::EIO);
    drop(f); // releases nothing of the new generation
    let fresh = open(&fs, "f");
    fresh.allocate(0, BS).unwrap();
    assert_eq!(allocated(&fs, "/home/f"), BS);
}

#[test]
fn crash_after_cuts_power_on_the_nth_call() {
    let fs = home();
    let home_dir = dir(&fs, "/home");
    let kept = create(&fs, "kept");
    home_dir.sync().unwrap();
    fs.crash_after(4);
    kept.allocate(0, BS).unwrap(); // call 1
    drop(create(&fs, "lost")); // calls 2 (open_dir) and 3 (open_file)
    assert_eq!(fs.crashes(), 0);
    assert_eq!(errno(kept.sync_all()), libc::EIO, "call 4: the power cut");
    assert_eq!(fs.crashes(), 1);
    assert_eq!(fs.lookup("/home/lost").unwrap(), None, "never synced");
    assert_eq!(allocated(&fs, "/home/kept"), 0, "its growth never synced");
    // The plan is used up.
    dir(&fs, "/home").sync().unwrap();
    assert_eq!(fs.crashes(), 1);
}

#[test]
fn crash_drops_locks_and_stale_guards_release_nothing() {
    let fs = home();
    let stale = dir(&fs, "/home").try_lock().unwrap().unwrap();
    fs.crash();
    let home_dir = dir(&fs, "/home");
    let current = home_dir.try_lock().unwrap().expect("the crash dropped it");
    drop(stale);
    // The current holder still excludes others, here and on another thread.
    assert!(
        home_dir.try_lock().unwrap().is_none(),
        "lock taken while held"
    );
    let other = fs.clone();
    let from_thread = thread::spawn(move || dir(&other, "/home").try_lock().unwrap().is_none());
    assert!(from_thread.join().unwrap(), "lock taken while held");
    drop(current);
    drop(home_dir.try_lock().unwrap().expect("released on drop"));
}

#[test]
fn try_lock_excludes_another_thread_until_dropped() {
    let fs = home();
    fs.symlink("/alias", "/home").unwrap();
    let held = dir(&fs, "/home").try_lock().unwrap().unwrap();
    let other = {
        let fs = fs.clone();
        thread::spawn(move || {
            let home_dir = dir(&fs, "/home");
            assert!(home_dir.try_lock().unwrap().is_none(), "taken while held");
            assert!(dir(&fs, "/alias").try_lock().unwrap().is_none(), "same dir");
            home_dir
        })
    };
    let other_handle = other.join().unwrap();
    // Another directory is not affected.
    fs.mkdir_all("/other").unwrap();
    drop(dir(&fs, "/other").try_lock().unwrap().unwrap());
    drop(held);
    let again = Arc::new(other_handle);
    let retaken = {
        let again = Arc::clone(&again);
        thread::spawn(move || again.try_lock().unwrap().is_some())
    };
    assert!(retaken.join().unwrap(), "released on drop");
    assert_eq!(fs.calls(SimOp::LockDir), 5);
}

#[test]
fn changes_moves_with_every_call_and_knob_and_not_with_reads() {
    let fs = home();
    let mut seen = fs.changes();
    let mut moved = |what: &str, fs: &SimFs| {
        let now = fs.changes();
        assert!(now > seen, "{what} did not move changes ({seen} -> {now})");
        seen = now;
    };
    let home_dir = dir(&fs, "/home");
    moved("open_dir", &fs);
    home_dir.probe("nothing").unwrap();
    moved("a probe (counted as a call)", &fs);
    let file = home_dir.open_file("f", OpenOptions::create_new()).unwrap();
    moved("open_file", &fs);
    file.write_fill(0, 8192).unwrap();
    moved("write_fill", &fs);
    fs.eat(4096);
    moved("eat", &fs);
    drop(file);
    moved("closing a file", &fs);
    fs.crash();
    moved("crash", &fs);

    let before = fs.changes();
    let _ = (fs.free_bytes(), fs.used_bytes(), fs.pending_free_bytes());
    let _ = (fs.other_writers_bytes(), fs.all_calls(), fs.snapshot());
    fs.for_each_entry(|_, _, _| {});
    assert_eq!(fs.changes(), before, "reads changed nothing");
}

#[test]
fn lock_within_wakes_as_soon_as_the_holder_lets_go() {
    let fs = home();
    let held = dir(&fs, "/home").try_lock().unwrap().unwrap();
    let waiter = {
        let fs = fs.clone();
        thread::spawn(move || {
            let started = std::time::Instant::now();
            let lock = dir(&fs, "/home")
                .lock_within(std::time::Duration::from_secs(120))
                .unwrap();
            (lock.is_some(), started.elapsed())
        })
    };
    // The waiter has tried once and found the lock held; give it time to start waiting.
    while fs.calls(SimOp::LockDir) < 2 {
        thread::yield_now();
    }
    thread::sleep(std::time::Duration::from_millis(50));
    drop(held);
    let (locked, waited) = waiter.join().unwrap();
    assert!(locked, "the lock was let go");
    // Woken by the release, not by its two-minute deadline.
    assert!(
        waited < std::time::Duration::from_secs(60),
        "waited {waited:?} for a lock let go after 50 ms"
    );
}

#[test]
fn calls_counts_every_call_per_op_failed_ones_included() {
    let fs = home();
    for &op in SimOp::ALL {
        assert_eq!(fs.calls(op), 0);
    }
    let home_dir = dir(&fs, "/home");
    home_dir.space().unwrap();
    home_dir.probe("x").unwrap();
    home_dir.probe("").unwrap_err();
    let f = home_dir.open_file("f", OpenOptions::create_new()).unwrap();
    home_dir
        .open_file("f", OpenOptions::create_new())
        .unwrap_err();
    f.probe().unwrap();
    f.allocate(0, 1).unwrap();
    f.write_fill(0, 1).unwrap();
    f.set_len(0).unwrap();
    f.sync_all().unwrap();
    home_dir.sync().unwrap();
    home_dir.rename("f", "g").unwrap();
    home_dir.link("g", "h").unwrap();
    home_dir.remove_file("g").unwrap();
    drop(home_dir.try_lock().unwrap());
    let rw = home_dir.open_file("h", OpenOptions::read_write()).unwrap();
    rw.write_at(0, b"x").unwrap();
    rw.read_at(0, &mut [0; 1]).unwrap();
    rw.sync_data().unwrap();
    home_dir.create_dir("d").unwrap();
    home_dir.open_subdir("d").unwrap();
    home_dir.read_dir().unwrap();
    home_dir.remove_dir("d").unwrap();
    let counts: Vec<u64> = SimOp::ALL.iter().map(|&op| fs.calls(op)).collect();
    assert_eq!(
        counts,
        [1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    );
    // Clones share the counters.
    assert_eq!(fs.clone().calls(SimOp::Probe), 3);
}

#[test]
fn snapshot_equality_shows_only_the_changed_path() {
    let fs = home();
    fs.mkdir_all("/home/cache").unwrap();
    fs.write_file("/home/cache/blob", 3 * BS).unwrap();
    fs.write_sparse("/home/sparse", MIB).unwrap();
    fs.symlink("/home/link", "cache").unwrap();
    let before = fs.snapshot();

    create(&fs, ".reserve").allocate(0, 16 * BS).unwrap();
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
    assert_eq!(fs.lookup("/home/d").unwrap(), None);
}

#[test]
fn setup_write_file_that_does_not_fit_is_enospc_and_creates_nothing() {
    let fs = home();
    fs.set_free(BS).unwrap();
    assert_eq!(errno(fs.write_file("/home/f", BS + 1)), libc::ENOSPC);
    assert_eq!(fs.lookup("/home/f").unwrap(), None);
    assert_eq!(errno(fs.write_file("/missing/f", 2 * BS)), libc::ENOENT);
    fs.write_file("/home/f", BS).unwrap();
}

#[test]
fn setup_hard_link_and_rename_are_durable_and_keep_handles_working() {
    let fs = home();
    fs.mkdir_all("/home/sub").unwrap();
    fs.write_file("/home/sub/f", 2 * BS).unwrap();
    let sub = dir(&fs, "/home/sub");
    fs.hard_link("/home/sub/f", "/home/g").unwrap();
    assert_eq!(lookup(&fs, "/home/g").links, 2);
    assert_eq!(errno(fs.hard_link("/home/sub", "/home/x")), libc::EPERM);
    assert_eq!(errno(fs.hard_link("/home/g", "/home/sub/f")), libc::EEXIST);
    fs.rename("/home/sub", "/moved").unwrap();
    assert_eq!(errno(fs.rename("/moved", "/moved/deeper")), libc::EINVAL);
    assert_eq!(errno(fs.rename("/missing", "/x")), libc::ENOENT);
    // The handle follows its directory.
    sub.open_file("new", OpenOptions::create_new()).unwrap();
    assert_eq!(lookup(&fs, "/moved/new").kind, FileKind::Regular);
    fs.crash();
    assert_eq!(lookup(&fs, "/moved/f").links, 2);
    assert_eq!(fs.lookup("/home/sub").unwrap(), None);
    assert_eq!(fs.lookup("/moved/new").unwrap(), None, "never synced");
}

/// `SimFs::rename` is `mv` followed by a sync of both directories, as on the kernel: a
/// name the source directory had only durably (a rename in it not yet synced) is gone
/// after a crash too, so nothing comes back under two names.
#[test]
fn a_durable_move_leaves_nothing_under_an_older_unsynced_name() {
    let fs = home();
    fs.mkdir_all("/x/a").unwrap();
    fs.write_file("/x/a/f", BS).unwrap();
    fs.write_file("/x/c", BS).unwrap();
    let x = dir(&fs, "/x");
    x.rename("a", "b").unwrap();
    x.rename("c", "d").unwrap();
    fs.rename("/x/b", "/y").unwrap();
    fs.rename("/x/d", "/e").unwrap();
    // With /x/a still durable, /y was under /x (durably) and /x now under /y: a loop.
    fs.rename("/x", "/y/x").unwrap();
    fs.crash();
    assert_eq!(fs.lookup("/x").unwrap(), None);
    assert_eq!(
        fs.lookup("/y/x/a").unwrap(),
        None,
        "the directory has one name"
    );
    assert_eq!(fs.lookup("/y/x/c").unwrap(), None, "the file has one name");
    assert_eq!(lookup(&fs, "/e").links, 1);
    assert_eq!(allocated(&fs, "/y/f"), BS);
    let mut paths = Vec::new();
    fs.for_each_entry(|path, _, _| paths.push(path.to_owned()));
    assert_eq!(paths, ["/", "/e", "/home", "/y", "/y/f", "/y/x"]);
}

/// `rename(2)` refuses to move a directory into itself, however the target path is
/// spelt: through a symlink too (it would otherwise cut the directory off the tree).
#[test]
fn a_directory_cannot_be_moved_into_itself_through_a_symlink() {
    let fs = home();
    fs.mkdir_all("/x/sub").unwrap();
    fs.write_file("/x/f", BS).unwrap();
    fs.symlink("/s", "/x").unwrap();
    assert_eq!(errno(fs.rename("/x", "/s/moved")), libc::EINVAL);
    assert_eq!(errno(fs.rename("/x", "/s/sub/moved")), libc::EINVAL);
    assert_eq!(errno(fs.rename("/x", "/home/../x/moved")), libc::EINVAL);
    assert_eq!(allocated(&fs, "/x/f"), BS);
    // Onto itself, or onto another name of the same file: nothing happens.
    fs.rename("/x", "/s").unwrap_err();
    fs.rename("/x", "/home/../x").unwrap();
    fs.hard_link("/x/f", "/x/g").unwrap();
    fs.rename("/x/f", "/x/g").unwrap();
    assert_eq!(lookup(&fs, "/x/f").links, 2, "both names stay");
    fs.remove("/x/g").unwrap();
    // A file into a directory beside it, and a directory next to itself (its own name
    // in the path, then `..`), still move.
    fs.rename("/x/f", "/s/sub/f").unwrap();
    fs.rename("/x/sub", "/x/sub/../sub2").unwrap();
    assert_eq!(allocated(&fs, "/x/sub2/f"), BS);
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
    let handle = format!("{:?}", dir(&fs, "/home"));
    assert!(!handle.contains("home"), "{handle}");
}

#[test]
fn sim_fs_works_as_a_trait_object() {
    let fs = home();
    let dynamic: &dyn HostFs = &fs;
    dynamic
        .open_dir(p("/home"))
        .unwrap()
        .open_file("f", OpenOptions::create_new())
        .unwrap();
    let shared: Arc<dyn HostFs> = Arc::new(fs.clone());
    assert!(
        shared
            .open_dir(p("/home"))
            .unwrap()
            .probe("f")
            .unwrap()
            .is_some()
    );
}

// ---- the file API's bytes ----

/// All of `file` from offset 0.
fn read_all(file: &dyn FileHandle) -> Vec<u8> {
    let len = file.probe().unwrap().len as usize;
    let mut buf = vec![0u8; len + 1];
    let n = file.read_at(0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn write_at_past_the_quota_is_short_then_edquot() {
    let fs = home();
    fs.set_quota(Some(2 * BS));
    let data = dir(&fs, "/home");
    let file = data.open_file("f", OpenOptions::create()).unwrap();
    assert_eq!(
        file.write_at(100, &[7u8; 3 * BS as usize]).unwrap(),
        2 * BS as usize - 100
    );
    assert_eq!(errno(file.write_at(2 * BS, b"x")), libc::EDQUOT);
    assert_eq!(file.probe().unwrap().len, 2 * BS);
    assert_eq!(
        read_all(&*file)[100..],
        vec![7u8; 2 * BS as usize - 100][..]
    );
    assert_eq!(
        fs.free_bytes(),
        MIB - 2 * BS,
        "free space was not the limit"
    );
}

#[test]
fn write_at_at_zero_free_is_enospc_but_overwrites_allocated_blocks() {
    let fs = home();
    let data = dir(&fs, "/home");
    let file = data.open_file("f", OpenOptions::create()).unwrap();
    file.allocate(0, BS).unwrap();
    fs.set_free(0).unwrap();
    assert_eq!(
        file.write_at(0, &[1u8; 5000]).unwrap(),
        BS as usize,
        "the allocated block"
    );
    assert_eq!(errno(file.write_at(BS, b"x")), libc::ENOSPC);
    assert_eq!(
        errno(
            data.open_file("g", OpenOptions::create())
                .unwrap()
                .write_at(0, b"x")
        ),
        libc::ENOSPC
    );
}

#[test]
fn crash_keeps_only_synced_bytes() {
    let fs = home();
    let data = dir(&fs, "/home");
    let file = data.open_file("wal", OpenOptions::append()).unwrap();
    file.write_all_at(0, b"synced ").unwrap();
    file.sync_data().unwrap();
    data.sync().unwrap();
    file.write_all_at(0, b"lost").unwrap();
    let other = data.open_file("other", OpenOptions::create_new()).unwrap();
    other.write_all_at(0, b"synced, name not").unwrap();
    other.sync_all().unwrap();
    data.create_dir("unsynced-dir").unwrap();
    fs.crash();
    let data = dir(&fs, "/home");
    let file = data.open_file("wal", OpenOptions::read()).unwrap();
    assert_eq!(read_all(&*file), b"synced ");
    assert_eq!(
        data.probe("other").unwrap(),
        None,
        "its directory was never synced"
    );
    assert_eq!(data.probe("unsynced-dir").unwrap(), None);
    // sync_all counts as well as sync_data; an overwrite not synced is undone.
    let file = data.open_file("wal", OpenOptions::read_write()).unwrap();
    file.write_all_at(0, b"SYNCED").unwrap();
    file.sync_all().unwrap();
    file.write_all_at(0, b"xxxxxx").unwrap();
    fs.crash();
    let file = dir(&fs, "/home")
        .open_file("wal", OpenOptions::read())
        .unwrap();
    assert_eq!(read_all(&*file), b"SYNCED ");
}

#[test]
fn a_removed_dir_comes_back_after_a_crash_until_its_parent_is_synced() {
    let fs = home();
    let data = dir(&fs, "/home");
    data.create_dir("d").unwrap();
    data.sync().unwrap();
    data.remove_dir("d").unwrap();
    fs.crash();
    let data = dir(&fs, "/home");
    let d = data.open_subdir("d").expect("the removal was not durable");
    d.create_dir("inside").unwrap();
    data.remove_dir("d").unwrap_err();
    d.remove_dir("inside").unwrap();
    data.remove_dir("d").unwrap();
    data.sync().unwrap();
    fs.crash();
    assert_eq!(dir(&fs, "/home").probe("d").unwrap(), None);
}

#[test]
fn faults_on_a_name_count_only_that_name() {
    let fs = home();
    let data = dir(&fs, "/home");
    fs.fail_nth_on(SimOp::WriteAt, "wal", 2, libc::EIO);
    fs.fail_nth_on(SimOp::SyncData, "wal", 1, libc::EIO);
    fs.fail_nth_on(SimOp::Rename, "wal.1", 1, libc::EXDEV);
    let wal = data.open_file("wal", OpenOptions::append()).unwrap();
    let other = data.open_file("other", OpenOptions::append()).unwrap();
    wal.write_all_at(0, b"a").unwrap();
    for _ in 0..3 {
        other.write_all_at(0, b"b").unwrap();
        other.sync_data().unwrap();
    }
    assert_eq!(errno(wal.write_at(0, b"c")), libc::EIO);
    assert_eq!(read_all(&*wal), b"a", "the failed write had no effect");
    assert_eq!(errno(wal.sync_data()), libc::EIO);
    wal.sync_data().unwrap();
    data.rename("other", "other.1").unwrap();
    assert_eq!(errno(data.rename("wal", "wal.1")), libc::EXDEV);
    data.rename("wal", "wal.1").unwrap();
    // The handle keeps the name it was opened by, for faults.
    fs.fail_next(SimOp::ReadAt, libc::EIO);
    assert_eq!(errno(wal.read_at(0, &mut [0; 1])), libc::EIO);
    assert_eq!(fs.calls(SimOp::WriteAt), 5);
}

#[test]
fn bytes_are_shared_not_copied_between_names_and_handles() {
    let fs = home();
    let data = dir(&fs, "/home");
    let a = data.open_file("a", OpenOptions::create()).unwrap();
    a.write_all_at(0, b"one file").unwrap();
    data.link("a", "b").unwrap();
    let b = data.open_file("b", OpenOptions::read_write()).unwrap();
    b.write_all_at(0, b"ONE").unwrap();
    assert_eq!(read_all(&*a), b"ONE file");
}

#[test]
fn write_fill_and_allocate_read_back_as_zeros() {
    let fs = home();
    let data = dir(&fs, "/home");
    let file = data.open_file("f", OpenOptions::create()).unwrap();
    file.write_all_at(0, &[9u8; 3 * BS as usize]).unwrap();
    file.write_fill(BS, BS).unwrap();
    file.allocate(0, 4 * BS).unwrap();
    let all = read_all(&*file);
    assert_eq!(all.len(), 4 * BS as usize);
    assert!(all[..BS as usize].iter().all(|&b| b == 9), "kept");
    assert!(
        all[BS as usize..2 * BS as usize].iter().all(|&b| b == 0),
        "the pattern is not kept"
    );
    assert!(
        all[2 * BS as usize..3 * BS as usize]
            .iter()
            .all(|&b| b == 9),
        "fallocate keeps data"
    );
    assert!(all[3 * BS as usize..].iter().all(|&b| b == 0));
}

// ---- reflink copies (`SimFs::reflink`), held to what XFS showed on a loop mount ----
//
// XFS, 64 MiB written, `cp --reflink=always a b`: free unchanged, both extents 0x2001
// (shared). 1 MiB rewritten in b: free −1 MiB, that range 0x0 in both files, the rest
// still shared. `rm a`: +1 MiB (a's block nobody else has), b's extents no longer
// shared. `rm b`: +64 MiB.

#[test]
fn reflink_copy_takes_no_space_and_both_copies_report_shared() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    let free = fs.free_bytes();
    fs.reflink("/home/a", "/home/b").unwrap();
    assert_eq!(fs.free_bytes(), free);
    assert_eq!(
        (len(&fs, "/home/b"), allocated(&fs, "/home/b")),
        (16 * BS, 16 * BS)
    );
    assert_eq!(open(&fs, "a").shared_bytes().unwrap(), Some(16 * BS));
    assert_eq!(open(&fs, "b").shared_bytes().unwrap(), Some(16 * BS));
    assert_eq!(fs.snapshot().shared_bytes_of("/home/a"), 16 * BS);
    assert_eq!(errno(fs.reflink("/home/a", "/home/b")), libc::EEXIST);
    assert_eq!(errno(fs.reflink("/home", "/home/c")), libc::EINVAL);
    assert_eq!(errno(fs.reflink("/home/none", "/home/c")), libc::ENOENT);
}

#[test]
fn reflink_copy_keeps_the_bytes() {
    let fs = home();
    create(&fs, "a").write_at(BS, b"kept").unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    let read = |name: &str, buf: &mut [u8]| {
        let file = dir(&fs, "/home")
            .open_file(name, OpenOptions::read())
            .unwrap();
        file.read_at(BS, buf).unwrap();
    };
    let mut buf = [0; 4];
    read("b", &mut buf);
    assert_eq!(&buf, b"kept");
    // A write to the copy is the copy's alone.
    open(&fs, "b").write_at(BS, b"gone").unwrap();
    read("a", &mut buf);
    assert_eq!(&buf, b"kept");
}

#[test]
fn writing_a_reflinked_block_copies_only_that_block() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    let free = fs.free_bytes();
    let b = open(&fs, "b");
    b.write_fill(4 * BS, 2 * BS).unwrap();
    b.write_at(10 * BS, b"x").unwrap();
    assert_eq!(fs.free_bytes(), free - 3 * BS);
    assert_eq!(b.shared_bytes().unwrap(), Some(13 * BS));
    assert_eq!(open(&fs, "a").shared_bytes().unwrap(), Some(13 * BS));
    // Writing the same blocks again copies nothing more.
    b.write_fill(4 * BS, 2 * BS).unwrap();
    assert_eq!(fs.free_bytes(), free - 3 * BS);
}

/// A second snapshot of a file frees nothing: the blocks the first one holds that the
/// file lost since (cut, then written anew) stay held. Found by the lifecycle fuzzer
/// (snapshot, truncate, crash, ensure, snapshot): SimFs kept only the larger of the two
/// snapshots' counts and gave the first one's blocks back.
#[test]
fn a_second_snapshot_keeps_what_the_first_holds_alone() {
    let fs = home();
    fs.write_file("/home/f", 48 * BS).unwrap();
    fs.snapshot_file("/home/f").unwrap();
    let f = open(&fs, "f");
    f.set_len(16 * BS).unwrap();
    assert_eq!(
        fs.free_bytes(),
        MIB - 48 * BS,
        "the snapshot holds the cut blocks"
    );
    f.write_fill(16 * BS, 84 * BS).unwrap();
    assert_eq!(
        fs.free_bytes(),
        MIB - 132 * BS,
        "100 in the file, 32 in the snapshot"
    );
    fs.snapshot_file("/home/f").unwrap();
    assert_eq!(
        fs.free_bytes(),
        MIB - 132 * BS,
        "the second snapshot shares the file's blocks and the first still holds the cut ones"
    );
    assert_eq!(fs.pinned_bytes(), 32 * BS);
    fs.drop_snapshots();
    assert_eq!(fs.free_bytes(), MIB - 100 * BS);
}

/// Writing into blocks a snapshot shares takes new blocks, as btrfs's copy-on-write
/// does (the `snapshot_overwrite` real-mount test measures it): the snapshot keeps the
/// old ones, the blocks are the file's own from then on (a second write takes nothing),
/// and without room for the copies the write fails with `ENOSPC` and changes nothing.
/// A crash before a sync loses the copies and the file shares the blocks again.
#[test]
fn writing_into_blocks_a_snapshot_shares_takes_new_ones() {
    let fs = home();
    fs.write_file("/home/f", 16 * BS).unwrap();
    fs.snapshot_file("/home/f").unwrap();
    let f = dir(&fs, "/home")
        .open_file("f", OpenOptions::read_write())
        .unwrap();
    let free = fs.free_bytes();
    f.write_at(2 * BS + 10, &[7; 4 * BS as usize]).unwrap();
    assert_eq!(fs.free_bytes(), free - 5 * BS, "blocks 2..7 copied");
    assert_eq!(fs.shared_bytes_of("/home/f"), 11 * BS);
    assert_eq!(
        fs.pinned_bytes(),
        5 * BS,
        "the snapshot alone holds the old ones"
    );
    f.write_at(3 * BS, &[8; BS as usize]).unwrap();
    assert_eq!(
        fs.free_bytes(),
        free - 5 * BS,
        "block 3 is the file's own now"
    );
    let mut back = [0; 4];
    f.read_at(3 * BS, &mut back).unwrap();
    assert_eq!(back, [8; 4]);

    fs.set_free(2 * BS).unwrap();
    assert_eq!(
        errno(f.write_at(8 * BS, &[9; 3 * BS as usize])),
        libc::ENOSPC
    );
    assert_eq!(fs.free_bytes(), 2 * BS, "a refused write takes nothing");
    assert_eq!(fs.shared_bytes_of("/home/f"), 11 * BS);
    f.write_fill(8 * BS, 2 * BS).unwrap();
    assert_eq!(fs.free_bytes(), 0);
    assert_eq!(fs.shared_bytes_of("/home/f"), 9 * BS);

    fs.crash();
    assert_eq!(
        fs.shared_bytes_of("/home/f"),
        16 * BS,
        "the copies were never synced"
    );
    assert_eq!(fs.pinned_bytes(), 0);
    assert_eq!(
        fs.free_bytes(),
        7 * BS,
        "the 7 copied blocks are free again"
    );
}

/// Copies a sync made durable survive a crash: the blocks stay the file's own and the
/// snapshot alone keeps holding the old ones.
#[test]
fn synced_copies_of_snapshot_blocks_survive_a_crash() {
    let fs = home();
    fs.write_file("/home/f", 8 * BS).unwrap();
    fs.snapshot_file("/home/f").unwrap();
    let f = open(&fs, "f");
    f.write_at(0, &[1; 3 * BS as usize]).unwrap();
    f.sync_all().unwrap();
    let free = fs.free_bytes();
    fs.crash();
    assert_eq!(fs.shared_bytes_of("/home/f"), 5 * BS);
    assert_eq!(fs.pinned_bytes(), 3 * BS);
    assert_eq!(fs.free_bytes(), free);
}

/// Three copies of one file (a copy of a file that already has one joins its group):
/// with the middle one removed, the other two still share every block, and the blocks
/// count once in free space.
#[test]
fn two_of_three_reflink_copies_still_share_everything() {
    let fs = home();
    fs.write_file("/home/a", 4 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    fs.reflink("/home/a", "/home/c").unwrap();
    assert_eq!(fs.free_bytes(), MIB - 4 * BS);
    fs.remove("/home/b").unwrap();
    assert_eq!(fs.shared_bytes_of("/home/a"), 4 * BS, "a shares with c");
    assert_eq!(fs.shared_bytes_of("/home/c"), 4 * BS, "c shares with a");
    assert_eq!(fs.free_bytes(), MIB - 4 * BS, "the blocks count once");
    fs.remove("/home/a").unwrap();
    assert_eq!(fs.shared_bytes_of("/home/c"), 0);
    assert_eq!(fs.free_bytes(), MIB - 4 * BS, "c keeps them");
}

#[test]
fn deleting_one_reflink_copy_gives_back_only_what_the_other_does_not_share() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    open(&fs, "b").write_fill(0, BS).unwrap();
    let free = fs.free_bytes();
    fs.remove("/home/a").unwrap();
    assert_eq!(fs.free_bytes(), free + BS);
    assert_eq!(open(&fs, "b").shared_bytes().unwrap(), Some(0));
    dir(&fs, "/home").remove_file("b").unwrap();
    assert_eq!(fs.free_bytes(), MIB);
}

#[test]
fn truncating_a_reflink_copy_frees_nothing_the_other_shares() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    let free = fs.free_bytes();
    open(&fs, "a").set_len(4 * BS).unwrap();
    assert_eq!(fs.free_bytes(), free);
    assert_eq!(open(&fs, "a").shared_bytes().unwrap(), Some(4 * BS));
    assert_eq!(open(&fs, "b").shared_bytes().unwrap(), Some(4 * BS));
    // Growing it back allocates new blocks of its own.
    open(&fs, "a").allocate(0, 16 * BS).unwrap();
    assert_eq!(fs.free_bytes(), free - 12 * BS);
    assert_eq!(open(&fs, "b").shared_bytes().unwrap(), Some(4 * BS));
}

#[test]
fn a_copy_of_a_copy_shares_with_both() {
    let fs = home();
    fs.write_file("/home/a", 8 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    open(&fs, "b").write_fill(0, 2 * BS).unwrap(); // b's own first two blocks
    fs.reflink("/home/b", "/home/c").unwrap();
    let free = fs.free_bytes();
    assert_eq!(free, MIB - 10 * BS);
    assert_eq!(open(&fs, "a").shared_bytes().unwrap(), Some(6 * BS));
    assert_eq!(open(&fs, "b").shared_bytes().unwrap(), Some(8 * BS));
    assert_eq!(open(&fs, "c").shared_bytes().unwrap(), Some(8 * BS));
    fs.remove("/home/b").unwrap();
    assert_eq!(fs.free_bytes(), free);
    fs.remove("/home/a").unwrap();
    assert_eq!(fs.free_bytes(), MIB - 8 * BS);
    assert_eq!(open(&fs, "c").shared_bytes().unwrap(), Some(0));
}

#[test]
fn copy_on_write_of_reflinked_blocks_needs_free_space() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    fs.set_free(BS).unwrap();
    let b = open(&fs, "b");
    assert_eq!(errno(b.write_fill(0, 2 * BS)), libc::ENOSPC);
    assert_eq!(b.shared_bytes().unwrap(), Some(16 * BS));
    b.write_fill(0, BS).unwrap();
    assert_eq!(fs.free_bytes(), 0);
    fs.set_quota(Some(0));
    assert_eq!(errno(b.write_at(8 * BS, b"x")), libc::ENOSPC);
}

#[test]
fn late_frees_count_only_what_a_reflink_copy_does_not_keep() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    open(&fs, "a").write_fill(0, 4 * BS).unwrap();
    fs.set_late_frees(true);
    let free = fs.free_bytes();
    fs.remove("/home/a").unwrap();
    assert_eq!(fs.pending_free_bytes(), 4 * BS);
    let home = dir(&fs, "/home");
    home.sync_fs().unwrap();
    assert_eq!(home.space().unwrap().free_bytes, free + 4 * BS);
}

/// A block shared twice over — with a snapshot and with a reflink copy — is one shared
/// block: `FIEMAP` flags each extent once, however many others hold it.
#[test]
fn a_block_both_snapshotted_and_reflinked_counts_once() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    // Half of a's blocks are a's own again, then every block goes into a snapshot.
    open(&fs, "a")
        .write_all_at(0, &vec![7u8; 8 * BS as usize])
        .unwrap();
    assert_eq!(open(&fs, "a").shared_bytes().unwrap(), Some(8 * BS));
    fs.snapshot_file("/home/a").unwrap();
    assert_eq!(open(&fs, "a").shared_bytes().unwrap(), Some(16 * BS));
    assert_eq!(fs.snapshot().shared_bytes_of("/home/a"), 16 * BS);
}

// ---- syncfs ----

/// An unsynced write to a synced file and an unsynced create, in a subdirectory; with
/// `sync_fs` before the crash or not.
fn unsynced_write_and_create_then_crash(sync_fs: bool) -> (Vec<u8>, Option<Vec<u8>>, bool) {
    let fs = home();
    let data = dir(&fs, "/home");
    let wal = data.open_file("wal", OpenOptions::create_new()).unwrap();
    wal.write_all_at(0, b"old").unwrap();
    wal.sync_all().unwrap();
    data.sync().unwrap();
    wal.write_all_at(0, b"NEW and longer").unwrap(); // not fsynced
    let created = data
        .open_file("created", OpenOptions::create_new())
        .unwrap();
    created.write_all_at(0, b"fresh").unwrap(); // neither it nor /home synced
    data.create_dir("sub").unwrap();
    if sync_fs {
        data.sync_fs().unwrap();
    }
    fs.crash();
    let data = dir(&fs, "/home");
    let wal = read_all(&*data.open_file("wal", OpenOptions::read()).unwrap());
    let created = data
        .open_file("created", OpenOptions::read())
        .ok()
        .map(|file| read_all(&*file));
    (wal, created, data.probe("sub").unwrap().is_some())
}

#[test]
fn sync_fs_makes_every_file_and_directory_durable_as_syncfs_does() {
    assert_eq!(
        unsynced_write_and_create_then_crash(true),
        (b"NEW and longer".to_vec(), Some(b"fresh".to_vec()), true),
        "syncfs(2) writes back every file's data and every directory change"
    );
    assert_eq!(
        unsynced_write_and_create_then_crash(false),
        (b"old".to_vec(), None, false),
        "without it the crash loses all three"
    );
}

#[test]
fn sync_fs_through_a_handle_from_before_a_crash_is_eio() {
    let fs = home();
    let data = dir(&fs, "/home");
    fs.crash();
    assert_eq!(errno(data.sync_fs()), libc::EIO);
}

// ---- torn crashes ----

/// Bytes of `path` after a crash, `None` when it is gone.
fn bytes_at(fs: &SimFs, path: &str) -> Option<Vec<u8>> {
    let (parent, name) = path.rsplit_once('/').unwrap();
    let file = dir(fs, parent).open_file(name, OpenOptions::read()).ok()?;
    Some(read_all(&*file))
}

/// A synced 1-block log, then 3 more blocks and a partial one appended, unsynced; an
/// unsynced create and an unsynced rename of a synced directory (with a synced entry) in
/// the home directory.
fn torn_history() -> SimFs {
    let fs = home();
    let data = dir(&fs, "/home");
    let log = data.open_file("log", OpenOptions::create_new()).unwrap();
    log.write_all_at(0, &[1; BS as usize]).unwrap();
    log.sync_all().unwrap();
    data.create_dir("a").unwrap();
    data.create_dir("b").unwrap();
    data.sync().unwrap();
    for i in 0..3u8 {
        log.write_all_at(BS * (1 + u64::from(i)), &[2 + i; BS as usize])
            .unwrap();
    }
    log.write_all_at(4 * BS, &[9; 100]).unwrap();
    let b = data.open_subdir("b").unwrap();
    b.create_dir("inner").unwrap();
    b.sync().unwrap();
    data.create_dir("c").unwrap();
    data.rename("b", "moved").unwrap();
    fs
}

#[test]
fn crash_torn_is_reproducible_from_its_seed() {
    for seed in 0..50 {
        let (one, two) = (torn_history(), torn_history());
        one.crash_torn(seed);
        two.crash_torn(seed);
        assert_eq!(one.snapshot(), two.snapshot(), "seed {seed}");
        assert_eq!(
            bytes_at(&one, "/home/log"),
            bytes_at(&two, "/home/log"),
            "seed {seed}"
        );
    }
}

#[test]
fn crash_torn_keeps_a_block_prefix_of_unsynced_appends_over_the_synced_bytes() {
    let full: Vec<u8> = [1u8, 2, 3, 4]
        .iter()
        .flat_map(|&b| vec![b; BS as usize])
        .chain(vec![9; 100])
        .collect();
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..400 {
        let fs = torn_history();
        fs.crash_torn(seed);
        let log = bytes_at(&fs, "/home/log").expect("synced name");
        let len = log.len();
        assert!(
            len == full.len() || (len as u64).is_multiple_of(BS) && len as u64 >= BS,
            "seed {seed}: length {len} is neither the live one nor a block boundary past the synced one"
        );
        let kept = log.iter().zip(&full).take_while(|(a, b)| a == b).count();
        assert!(
            kept == len || (kept as u64).is_multiple_of(BS) && kept as u64 >= BS,
            "seed {seed}: {kept} bytes as written, not whole blocks over the synced one"
        );
        assert!(
            log[kept..].iter().all(|&b| b == 0),
            "seed {seed}: after the blocks kept, zeros"
        );
        assert_eq!(
            allocated(&fs, "/home/log"),
            (len as u64).div_ceil(BS) * BS,
            "seed {seed}: no hole under the length (the live file had none)"
        );
        outcomes.insert((kept.div_ceil(BS as usize), len.div_ceil(BS as usize)));
    }
    // Blocks kept (of 5), blocks the length covers: every cut, with the length at the cut
    // or the live one.
    let expected: std::collections::BTreeSet<(usize, usize)> =
        (1..=5).flat_map(|kept| [(kept, kept), (kept, 5)]).collect();
    assert_eq!(outcomes, expected);
}

#[test]
fn crash_torn_moves_a_directory_whole_never_to_both_places() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let fs = torn_history();
        fs.crash_torn(seed);
        let (old, new) = (
            fs.lookup("/home/b").unwrap().is_some(),
            fs.lookup("/home/moved").unwrap().is_some(),
        );
        assert!(old != new, "seed {seed}: b {old}, moved {new}");
        let at = if old {
            "/home/b/inner"
        } else {
            "/home/moved/inner"
        };
        assert!(
            fs.lookup(at).unwrap().is_some(),
            "seed {seed}: its synced entry"
        );
        seen.insert((old, fs.lookup("/home/c").unwrap().is_some()));
    }
    assert_eq!(
        seen.len(),
        4,
        "each change kept or dropped on its own: {seen:?}"
    );
}

#[test]
fn crash_torn_keeps_a_rename_over_a_name_atomic() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..100 {
        let fs = home();
        let data = dir(&fs, "/home");
        for (name, byte) in [("current", b'o'), ("next", b'n')] {
            let file = data.open_file(name, OpenOptions::create_new()).unwrap();
            file.write_all_at(0, &[byte]).unwrap();
            file.sync_all().unwrap();
        }
        data.sync().unwrap();
        data.rename("next", "current").unwrap();
        fs.crash_torn(seed);
        let outcome = (bytes_at(&fs, "/home/current"), bytes_at(&fs, "/home/next"));
        assert!(
            outcome == (Some(b"o".to_vec()), Some(b"n".to_vec()))
                || outcome == (Some(b"n".to_vec()), None),
            "seed {seed}: {outcome:?}"
        );
        seen.insert(outcome);
    }
    assert_eq!(seen.len(), 2, "both outcomes: {seen:?}");
}

#[test]
fn crash_torn_brings_a_shortened_file_back_whole() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..100 {
        let fs = home();
        let data = dir(&fs, "/home");
        let file = data.open_file("f", OpenOptions::create_new()).unwrap();
        file.write_all_at(0, &[1; 3 * BS as usize]).unwrap();
        file.sync_all().unwrap();
        data.sync().unwrap();
        file.set_len(0).unwrap();
        file.write_all_at(0, &[2; 4 * BS as usize]).unwrap();
        fs.crash_torn(seed);
        let bytes = bytes_at(&fs, "/home/f").unwrap();
        assert!(
            bytes == [1; 3 * BS as usize] || bytes == [2; 4 * BS as usize],
            "seed {seed}: {} bytes, starting {:?}",
            bytes.len(),
            bytes.first()
        );
        seen.insert(bytes.len());
    }
    assert_eq!(seen.len(), 2, "as synced or as live: {seen:?}");
}

// ---- a failed fsync ----

#[test]
fn a_failed_fsync_drops_the_unsynced_bytes_and_a_retry_does_not_make_them_durable() {
    let fs = home();
    let data = dir(&fs, "/home");
    let file = data.open_file("f", OpenOptions::create_new()).unwrap();
    file.write_all_at(0, b"synced.").unwrap();
    file.sync_all().unwrap();
    data.sync().unwrap();
    file.write_all_at(7, b" dropped.").unwrap();
    fs.fail_next(SimOp::SyncData, libc::EIO);
    assert_eq!(errno(file.sync_data()), libc::EIO);
    file.sync_data().expect("the error is reported once");
    assert_eq!(
        bytes_at(&fs, "/home/f").unwrap(),
        b"synced. dropped.",
        "the cache still has them"
    );
    fs.crash();
    let file = dir(&fs, "/home")
        .open_file("f", OpenOptions::read_write())
        .unwrap();
    assert_eq!(
        read_all(&*file),
        b"synced.\0\0\0\0\0\0\0\0\0",
        "the length was written back, the dropped bytes never were"
    );
}

#[test]
fn bytes_written_again_after_a_failed_fsync_are_made_durable() {
    let fs = home();
    let data = dir(&fs, "/home");
    let file = data.open_file("f", OpenOptions::create_new()).unwrap();
    data.sync().unwrap();
    file.write_all_at(0, &[1; 2 * BS as usize]).unwrap();
    fs.fail_next(SimOp::SyncFile, libc::EIO);
    assert_eq!(errno(file.sync_all()), libc::EIO);
    file.write_all_at(BS, &[2; BS as usize]).unwrap(); // block 1 dirty again
    data.sync_fs().unwrap(); // syncfs does not write block 0 either
    fs.crash();
    let bytes = bytes_at(&fs, "/home/f").unwrap();
    assert!(
        bytes[..BS as usize].iter().all(|&b| b == 0),
        "block 0 stayed dropped"
    );
    assert!(
        bytes[BS as usize..].iter().all(|&b| b == 2),
        "block 1 was written again"
    );
}

#[test]
fn crash_torn_after_cuts_power_on_the_nth_call_with_a_tear() {
    let mut kept = 0;
    for seed in 0..50 {
        let fs = home();
        let data = dir(&fs, "/home");
        let file = data.open_file("f", OpenOptions::create_new()).unwrap();
        data.sync().unwrap();
        fs.crash_torn_after(2, seed);
        file.write_all_at(0, b"unsynced").unwrap(); // call 1
        assert_eq!(errno(file.sync_data()), libc::EIO, "call 2: the cut");
        assert_eq!(fs.crashes(), 1);
        let bytes = bytes_at(&fs, "/home/f").unwrap();
        assert!(
            bytes.is_empty() || bytes == b"unsynced" || bytes == [0; 8],
            "seed {seed}: {bytes:?}"
        );
        kept += usize::from(bytes == b"unsynced");
        file.write_all_at(0, b"x").unwrap_err(); // a handle from before the cut
    }
    assert!(
        (1..50).contains(&kept),
        "some seeds keep the write, some do not: {kept}"
    );
}

/// Copying a shared block takes from the same free space as growing the file: with room
/// for one block, a write over the last shared block and one block past the end copies
/// the first and stops short at the second.
#[test]
fn copy_on_write_and_growth_share_one_budget() {
    let fs = home();
    fs.write_file("/home/a", 4 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    fs.set_free(BS).unwrap();
    let b = open(&fs, "b");
    let written = b.write_at(3 * BS, &vec![1u8; 2 * BS as usize]).unwrap();
    assert_eq!(written as u64, BS, "only the copied block is written");
    assert_eq!(fs.free_bytes(), 0);
    assert_eq!(errno(b.write_at(4 * BS, b"x")), libc::ENOSPC);
}

// XFS and btrfs: an unlink whose directory was never synced may be undone by a crash;
// the file that comes back still shares its extents with its copy.
#[test]
fn a_crash_that_undoes_an_unlink_brings_back_a_still_shared_reflink_copy() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    fs.reflink("/home/a", "/home/b").unwrap();
    let free = fs.free_bytes();
    dir(&fs, "/home").remove_file("a").unwrap(); // no directory sync
    assert_eq!(fs.free_bytes(), free);
    assert_eq!(open(&fs, "b").shared_bytes().unwrap(), Some(0));
    fs.crash();
    assert!(
        fs.lookup("/home/a").unwrap().is_some(),
        "the unlink was not durable"
    );
    assert_eq!(fs.free_bytes(), free, "the copies still share their blocks");
    assert_eq!(open(&fs, "a").shared_bytes().unwrap(), Some(16 * BS));
    assert_eq!(open(&fs, "b").shared_bytes().unwrap(), Some(16 * BS));
}

#[test]
fn set_free_counts_what_snapshots_hold_and_takes_pending_frees_as_shown() {
    let fs = home();
    fs.write_file("/home/a", 16 * BS).unwrap();
    fs.snapshot_file("/home/a").unwrap();
    fs.set_late_frees(true);
    fs.remove("/home/a").unwrap();
    fs.write_file("/home/b", 4 * BS).unwrap();
    dir(&fs, "/home/").remove_file("b").unwrap();
    assert_eq!(fs.pending_free_bytes(), 4 * BS);
    fs.set_free(MIB / 2).unwrap();
    assert_eq!(fs.free_bytes(), MIB / 2);
    assert_eq!(fs.pending_free_bytes(), 0);
    assert_eq!(errno(fs.set_free(MIB - 15 * BS)), libc::ENOSPC);
}

// ---- the one-pass readers the scenario driver uses, against `snapshot()` ----

/// `for_each_entry` visits what `snapshot()` lists — every path with its `lstat` and the
/// bytes it shares — and nothing else; `other_writers_bytes` and `shared_bytes_of` say
/// what the snapshot says.
#[test]
fn one_pass_readers_agree_with_the_snapshot() {
    let fs = home();
    fs.mkdir_all("/home/d/e").unwrap();
    fs.write_file("/home/d/e/a", 3 * BS).unwrap();
    fs.write_file("/home/b", 2 * BS).unwrap();
    fs.reflink("/home/b", "/home/d/c").unwrap();
    fs.snapshot_file("/home/d/e/a").unwrap();
    fs.symlink("/home/l", "/home/d/e/a").unwrap();
    fs.eat(5 * BS);
    let snapshot = fs.snapshot();
    let mut visited = std::collections::BTreeMap::new();
    let mut shared = std::collections::BTreeMap::new();
    fs.for_each_entry(|path, probe, bytes| {
        visited.insert(camino::Utf8PathBuf::from(path), *probe);
        if bytes > 0 {
            shared.insert(camino::Utf8PathBuf::from(path), bytes);
        }
    });
    assert_eq!(visited, snapshot.entries);
    assert_eq!(shared, snapshot.shared_bytes);
    assert_eq!(shared.len(), 3, "a, b and c share blocks: {shared:?}");
    assert_eq!(
        visited[Utf8Path::new("/home/d/e/a")].allocated_bytes,
        3 * BS
    );
    for path in ["/home/b", "/home/d/c", "/home/d/e/a", "/home/l", "/nothing"] {
        assert_eq!(
            fs.shared_bytes_of(path),
            snapshot.shared_bytes_of(path),
            "{path}"
        );
    }
    assert_eq!(fs.other_writers_bytes(), snapshot.other_writers_bytes);
    assert_eq!(fs.other_writers_bytes(), 5 * BS);
}

/// `all_calls` is every operation's `calls`, in `SimOp::ALL`'s order.
#[test]
fn all_calls_is_every_call_count() {
    let fs = home();
    let file = create(&fs, "a");
    file.write_at(0, b"x").unwrap();
    file.write_at(1, b"y").unwrap();
    file.sync_data().unwrap();
    let all = fs.all_calls();
    for (i, op) in SimOp::ALL.iter().enumerate() {
        assert_eq!(all[i], fs.calls(*op), "{op:?}");
    }
    assert_eq!(fs.calls(SimOp::WriteAt), 2);
    assert!(all.iter().sum::<u64>() >= 4);
}

// ---- what mutation testing showed untested ----

/// With late frees, cutting a file frees exactly the blocks past the cut, later; blocks a
/// snapshot shares are not freed at all.
#[test]
fn late_frees_of_a_cut_count_only_the_blocks_cut_and_not_the_snapshot_shares() {
    let fs = home();
    fs.write_file("/home/a", 4 * BS).unwrap();
    fs.snapshot_file("/home/a").unwrap();
    // Grown past the snapshot: blocks 4..8 are a's own.
    open(&fs, "a").write_fill(4 * BS, 4 * BS).unwrap();
    assert_eq!(open(&fs, "a").shared_bytes().unwrap(), Some(4 * BS));
    fs.set_late_frees(true);
    let free = fs.free_bytes();
    open(&fs, "a").set_len(6 * BS).unwrap();
    assert_eq!(fs.pending_free_bytes(), 2 * BS, "two own blocks cut");
    open(&fs, "a").set_len(2 * BS).unwrap();
    assert_eq!(
        fs.pending_free_bytes(),
        4 * BS,
        "and two more; the snapshot keeps the other two"
    );
    dir(&fs, "/home").sync_fs().unwrap();
    assert_eq!(fs.free_bytes(), free + 4 * BS);
}

/// A torn crash after an overwrite of synced blocks (same length, nothing allocated)
/// keeps, per seed, a prefix of the rewritten blocks: every prefix occurs, nothing else.
#[test]
fn a_torn_overwrite_keeps_a_prefix_of_the_rewritten_blocks() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let fs = home();
        let file = create(&fs, "a");
        file.write_all_at(0, &vec![1u8; 4 * BS as usize]).unwrap();
        file.sync_all().unwrap();
        dir(&fs, "/home").sync().unwrap();
        file.write_all_at(0, &vec![2u8; 4 * BS as usize]).unwrap();
        drop(file);
        fs.crash_torn(seed);
        let mut bytes = vec![0u8; 4 * BS as usize];
        assert_eq!(
            dir(&fs, "/home")
                .open_file("a", OpenOptions::read())
                .unwrap()
                .read_at(0, &mut bytes)
                .unwrap(),
            bytes.len(),
            "seed {seed}: the length stays"
        );
        let blocks: Vec<u8> = bytes.chunks(BS as usize).map(|b| b[0]).collect();
        let kept = blocks.iter().take_while(|&&b| b == 2).count();
        assert!(
            blocks[kept..].iter().all(|&b| b == 1),
            "seed {seed}: {blocks:?} is not a prefix of the new blocks"
        );
        seen.insert(kept);
    }
    assert_eq!(
        seen,
        (0..=4).collect(),
        "every prefix occurs over 200 seeds"
    );
}

// ---- interleave: another actor's turn in the middle of a call ----

#[test]
fn interleave_runs_the_actor_once_just_before_the_nth_call_then_the_call_sees_its_work() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    let fs = SimFs::with_home(MIB, "/home");
    let home = dir(&fs, "/home");
    let other = fs.clone();
    let turns = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&turns);
    let space_before = fs.calls(SimOp::Space);
    fs.interleave(3, move || {
        counted.fetch_add(1, SeqCst);
        // The actor's own calls go through the filesystem and are counted, but do not
        // move the plan: it has fired.
        other.open_dir(p("/home")).unwrap().space().unwrap();
        other.write_file("/home/theirs", 10).unwrap();
    });
    assert!(
        home.probe("theirs").unwrap().is_none(),
        "call 1: before the turn"
    );
    home.space().unwrap(); // call 2
    assert_eq!(turns.load(SeqCst), 0);
    // Call 3: the actor runs first, so the probe sees its file.
    assert!(home.probe("theirs").unwrap().is_some());
    assert_eq!(turns.load(SeqCst), 1);
    assert_eq!(
        fs.calls(SimOp::Space),
        space_before + 2,
        "the actor's call is counted"
    );
    for _ in 0..20 {
        home.space().unwrap();
    }
    assert_eq!(turns.load(SeqCst), 1, "one turn only");
}

#[test]
fn interleave_zero_cancels_and_drops_the_actor_and_a_new_plan_replaces_the_old() {
    let fs = SimFs::with_home(MIB, "/home");
    let home = dir(&fs, "/home");
    let token = Arc::new(());
    let held = Arc::clone(&token);
    fs.interleave(1, move || drop(held));
    assert_eq!(Arc::strong_count(&token), 2);
    fs.interleave(0, || {});
    assert_eq!(Arc::strong_count(&token), 1, "cancelling drops the actor");
    let held = Arc::clone(&token);
    fs.interleave(0, move || drop(held));
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "an actor planned for no call is dropped"
    );
    home.space().unwrap();

    let other = fs.clone();
    fs.interleave(1, || panic!("replaced: must never run"));
    fs.interleave(2, move || other.write_file("/home/second", 1).unwrap());
    home.space().unwrap();
    assert!(fs.lookup("/home/second").unwrap().is_none());
    home.space().unwrap();
    assert!(fs.lookup("/home/second").unwrap().is_some());
}

#[test]
fn interleave_runs_before_the_call_is_counted_or_faulted() {
    // The actor comes before the call begins: the call is not counted yet when it runs,
    // and a fault planned for the call still fires on the call.
    let fs = SimFs::with_home(MIB, "/home");
    let home = dir(&fs, "/home");
    let before = fs.calls(SimOp::Space);
    let other = fs.clone();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen_by_actor = Arc::clone(&seen);
    fs.fail_next(SimOp::Space, libc::EIO);
    fs.interleave(1, move || {
        *seen_by_actor.lock().unwrap() = Some(other.calls(SimOp::Space));
    });
    assert_eq!(errno(home.space()), libc::EIO);
    assert_eq!(*seen.lock().unwrap(), Some(before));
    assert_eq!(fs.calls(SimOp::Space), before + 1);
}

// ---- late frees: syncfs on XFS ----

/// XFS: `syncfs` does not wait for the worker that frees an unlinked file's blocks, so it
/// shows nothing; the first `statvfs` after it kicks the worker and the second shows the
/// frees. btrfs (the default): `syncfs` commits and shows them.
#[test]
fn sync_fs_leaves_late_frees_to_a_later_statvfs_when_set_as_on_xfs() {
    for shown_by_sync in [false, true] {
        let fs = home();
        fs.write_file("/home/a", 16 * BS).unwrap();
        fs.set_late_frees(true);
        fs.set_sync_fs_shows_late_frees(shown_by_sync);
        let free = fs.free_bytes();
        let home = dir(&fs, "/home");
        home.remove_file("a").unwrap();
        home.sync_fs().unwrap();
        let first = home.space().unwrap().free_bytes;
        let second = home.space().unwrap().free_bytes;
        if shown_by_sync {
            assert_eq!((first, second), (free + 16 * BS, free + 16 * BS), "btrfs");
        } else {
            assert_eq!((first, second), (free, free + 16 * BS), "XFS");
        }
        // Either way the blocks were free for allocation at once.
        assert_eq!(fs.free_bytes() + fs.pending_free_bytes(), free + 16 * BS);
    }
}

// ---- whole extents (btrfs) ----

/// A 64 MiB disk keeping whole extents as `extents` says, with a handle on a new
/// `/home/f`.
fn extents_disk(extents: WholeExtents) -> (SimFs, Box<dyn FileHandle>) {
    let fs = SimFs::with_home(64 * MIB, "/home");
    fs.set_whole_extents(Some(extents));
    let home = dir(&fs, "/home");
    let f = home.open_file("f", OpenOptions::create_new()).unwrap();
    home.sync().unwrap(); // the name survives a crash
    (fs, f)
}

/// A handle reading `/home/f`.
fn reader(fs: &SimFs) -> Box<dyn FileHandle> {
    dir(fs, "/home")
        .open_file("f", OpenOptions::read())
        .unwrap()
}

/// Writes `len` bytes at `offset` in one call, as `dd` of that size does.
fn write(f: &dyn FileHandle, offset: u64, len: u64) {
    f.write_all_at(offset, &vec![0x5a; len as usize]).unwrap();
}

/// btrfs (measured on Linux 6.18): a 16 MiB file written in one go and synced, then
/// cut to 8 MiB, freed nothing; neither did a 16 MiB `fallocate`d one. Only cutting
/// the rest frees the extent, whole.
#[test]
fn cutting_part_of_a_whole_extent_frees_nothing_until_all_of_it_goes() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    write(&*f, 0, 16 * MIB);
    f.sync_all().unwrap();
    assert_eq!(fs.used_bytes(), 16 * MIB);
    f.set_len(8 * MIB).unwrap();
    assert_eq!(
        fs.used_bytes(),
        16 * MIB,
        "the cut half stays with its extent"
    );
    assert_eq!(allocated(&fs, "/home/f"), 8 * MIB, "the file has 8 MiB");
    f.set_len(BS).unwrap();
    assert_eq!(fs.used_bytes(), 16 * MIB);
    f.set_len(0).unwrap();
    assert_eq!(fs.used_bytes(), 0, "no block of it in use: freed whole");

    let g = dir(&fs, "/home")
        .open_file("g", OpenOptions::create_new())
        .unwrap();
    g.allocate(0, 16 * MIB).unwrap();
    g.set_len(8 * MIB).unwrap();
    assert_eq!(fs.used_bytes(), 16 * MIB, "an allocated extent too");
    drop(g);
    dir(&fs, "/home").remove_file("g").unwrap();
    assert_eq!(fs.used_bytes(), 0, "deleting the file frees it all");
}

/// btrfs: rewriting the middle 8 MiB of a synced 16 MiB file took 8224 KiB (the old
/// blocks stay with their extent); rewriting what was left of it then frees the extent.
/// Blocks not synced yet are rewritten in place.
#[test]
fn rewriting_synced_blocks_of_a_whole_extent_takes_new_ones() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    write(&*f, 0, 16 * MIB);
    write(&*f, 4 * MIB, 8 * MIB);
    assert_eq!(fs.used_bytes(), 16 * MIB, "not synced: rewritten in place");
    f.sync_all().unwrap();
    write(&*f, 4 * MIB, 8 * MIB);
    assert_eq!(fs.used_bytes(), 24 * MIB, "copied on write");
    write(&*f, 4 * MIB, 8 * MIB);
    assert_eq!(fs.used_bytes(), 24 * MIB, "the copies are not synced yet");
    write(&*f, 0, 4 * MIB);
    write(&*f, 12 * MIB, 4 * MIB);
    assert_eq!(
        fs.used_bytes(),
        16 * MIB,
        "every block of the old extent rewritten: freed"
    );
    let mut back = [0; 2];
    reader(&fs).read_at(MIB, &mut back).unwrap();
    assert_eq!(back, [0x5a; 2]);
}

/// btrfs: a write into `fallocate`d blocks took no space; after a sync, writing the
/// same blocks again took 8224 KiB for 8 MiB.
#[test]
fn allocated_blocks_are_written_in_place_once() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    f.allocate(0, 16 * MIB).unwrap();
    write(&*f, 4 * MIB, 8 * MIB);
    assert_eq!(fs.used_bytes(), 16 * MIB, "in place");
    f.sync_all().unwrap();
    write(&*f, 4 * MIB, 8 * MIB);
    assert_eq!(fs.used_bytes(), 24 * MIB, "written now: copied");
    write(&*f, 0, 4 * MIB);
    assert_eq!(
        fs.used_bytes(),
        24 * MIB,
        "still unwritten there: in place, and the extent keeps the rest"
    );
}

/// btrfs: four 1 MiB appends synced once made one extent (cutting the file to 1 MiB
/// freed nothing); each synced on its own made four (the cut freed 3 MiB).
#[test]
fn a_sync_puts_each_run_of_new_blocks_in_one_extent() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    for i in 0..4 {
        write(&*f, i * MIB, MIB);
    }
    f.sync_all().unwrap();
    f.set_len(MIB).unwrap();
    assert_eq!(fs.used_bytes(), 4 * MIB, "one extent");
    f.set_len(0).unwrap();
    assert_eq!(fs.used_bytes(), 0);
    for i in 0..4 {
        write(&*f, i * MIB, MIB);
        f.sync_all().unwrap();
    }
    f.set_len(MIB).unwrap();
    assert_eq!(fs.used_bytes(), MIB, "four extents: three freed");

    // An extent holds at most `written_bytes`.
    let (fs, f) = extents_disk(WholeExtents {
        written_bytes: MIB,
        allocated_bytes: MIB,
    });
    write(&*f, 0, 4 * MIB);
    f.sync_all().unwrap();
    f.set_len(MIB + BS).unwrap();
    assert_eq!(fs.used_bytes(), 2 * MIB, "1 MiB extents: two freed");
    let g = dir(&fs, "/home")
        .open_file("g", OpenOptions::create_new())
        .unwrap();
    g.allocate(0, 4 * MIB).unwrap();
    g.set_len(BS).unwrap();
    assert_eq!(fs.used_bytes(), 3 * MIB, "allocated extents of 1 MiB too");
}

/// With compression btrfs writes extents of 128 KiB: rewriting the middle 8 MiB of a
/// 16 MiB file took nothing on `compress-force=zstd`, as whole extents are rewritten.
#[test]
fn compressed_extents_are_small() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS_COMPRESSED);
    write(&*f, 0, 16 * MIB);
    f.sync_all().unwrap();
    write(&*f, 4 * MIB, 8 * MIB);
    assert_eq!(fs.used_bytes(), 16 * MIB);
    write(&*f, 0, BS);
    assert_eq!(
        fs.used_bytes(),
        16 * MIB + BS,
        "one block of a 128 KiB extent"
    );
    // `fallocate` extents are not compressed: as large as without (btrfs-zstd: cutting an
    // allocated 16 MiB file to 8 MiB freed nothing).
    let g = dir(&fs, "/home")
        .open_file("g", OpenOptions::create_new())
        .unwrap();
    g.allocate(0, 16 * MIB).unwrap();
    g.set_len(8 * MIB).unwrap();
    assert_eq!(
        fs.used_bytes(),
        32 * MIB + BS,
        "the allocated extent is whole"
    );
}

/// A sync makes an extent of the new blocks before an `allocate`d extent too, not only of
/// those after the last one.
#[test]
fn a_sync_makes_an_extent_of_new_blocks_before_an_allocated_one() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    f.allocate(4 * MIB, 4 * MIB).unwrap();
    write(&*f, 0, 4 * MIB);
    f.sync_all().unwrap();
    f.set_len(MIB).unwrap();
    assert_eq!(
        fs.used_bytes(),
        4 * MIB,
        "the written extent keeps its 4 MiB, the allocated one is gone"
    );
}

/// A torn crash draws from its seed only for what changed since the last sync: a file
/// with nothing unsynced draws nothing, so adding one does not change how the others
/// tear (each seed tears `b` the same with and without a synced `a`).
#[test]
fn an_unchanged_file_draws_nothing_from_a_torn_crash() {
    let torn = |with_a: bool, seed: u64| {
        let fs = SimFs::with_home(MIB, "/home");
        if with_a {
            fs.write_file("/home/a", 8 * BS).unwrap();
        }
        let home = dir(&fs, "/home");
        let b = home.open_file("b", OpenOptions::create_new()).unwrap();
        home.sync().unwrap();
        b.sync_all().unwrap();
        for i in 0..8u8 {
            b.write_all_at(u64::from(i) * BS, &[i + 1; BS as usize])
                .unwrap();
        }
        drop(b);
        fs.crash_torn(seed);
        let mut bytes = vec![0; 8 * BS as usize];
        let b = dir(&fs, "/home")
            .open_file("b", OpenOptions::read())
            .unwrap();
        let n = b.read_at(0, &mut bytes).unwrap();
        bytes.truncate(n);
        (lookup(&fs, "/home/b"), bytes)
    };
    for seed in 0..32 {
        assert_eq!(torn(true, seed), torn(false, seed), "seed {seed}");
    }
}

/// A rewrite in place needs room for the copies while it runs: on a full disk it fails
/// with `ENOSPC` and changes nothing; a crash before a sync gives the old blocks back to
/// the file and the copies' space back to the disk.
#[test]
fn rewriting_a_whole_extent_needs_room_and_a_crash_undoes_it() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    write(&*f, 0, 4 * MIB);
    f.sync_all().unwrap();
    fs.set_free(MIB).unwrap();
    assert_eq!(
        errno(f.write_at(0, &vec![1; 2 * MIB as usize])),
        libc::ENOSPC
    );
    assert_eq!(fs.free_bytes(), MIB, "nothing taken");
    let mut back = [0; 1];
    reader(&fs).read_at(0, &mut back).unwrap();
    assert_eq!(back, [0x5a], "nothing written");
    f.write_all_at(0, &vec![1; MIB as usize]).unwrap();
    assert_eq!(fs.free_bytes(), 0);
    fs.crash();
    assert_eq!(fs.free_bytes(), MIB, "the copies were never synced");
    assert_eq!(allocated(&fs, "/home/f"), 4 * MIB);
}

/// With late frees on, a freed extent shows as the other frees do; turning whole
/// extents off frees what they held.
#[test]
fn whole_extents_free_late_and_can_be_turned_off() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    fs.set_late_frees(true);
    write(&*f, 0, 4 * MIB);
    f.sync_all().unwrap();
    write(&*f, 0, 4 * MIB);
    let home = dir(&fs, "/home");
    assert_eq!(
        home.space().unwrap().free_bytes,
        56 * MIB,
        "the old extent's free is not shown yet"
    );
    assert_eq!(home.space().unwrap().free_bytes, 60 * MIB);
    f.sync_all().unwrap();
    f.set_len(MIB).unwrap();
    assert_eq!(fs.used_bytes(), 4 * MIB, "held by the extent");
    fs.set_whole_extents(None);
    assert_eq!(fs.used_bytes(), MIB);
}

/// A rewrite that frees no extent leaves a late free as it was: the second look after
/// the free still shows it.
#[test]
fn a_rewrite_that_frees_nothing_leaves_late_frees_alone() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    fs.set_late_frees(true);
    fs.write_file("/home/other", MIB).unwrap();
    write(&*f, 0, 4 * MIB);
    f.sync_all().unwrap();
    let home = dir(&fs, "/home");
    home.remove_file("other").unwrap();
    let before = home.space().unwrap().free_bytes; // the first look: not shown yet
    write(&*f, 0, MIB); // copied; the extent keeps the old MiB: nothing freed
    assert_eq!(
        home.space().unwrap().free_bytes,
        before + MIB - MIB,
        "the second look shows the deleted MiB (and the copies took one)"
    );
}

/// Where a file's blocks are on disk is durable with the file: after a crash, an extent
/// synced before it is still whole.
#[test]
fn whole_extents_survive_a_crash() {
    let (fs, f) = extents_disk(WholeExtents::BTRFS);
    write(&*f, 0, 16 * MIB);
    f.sync_all().unwrap();
    drop(f);
    fs.crash();
    let f = dir(&fs, "/home")
        .open_file("f", OpenOptions::write())
        .unwrap();
    f.set_len(8 * MIB).unwrap();
    assert_eq!(
        fs.used_bytes(),
        16 * MIB,
        "the extent from before the crash is whole"
    );
}

// ---- late writes (btrfs) ----

/// btrfs (measured on Linux 6.18): 64 MiB written and `fsync`ed showed as nothing taken
/// in `statvfs` until a `syncfs`. With late writes on, `space` shows written data only
/// after `sync_fs`; the blocks are taken all the same (`ENOSPC` at the real limit);
/// cutting unshown data shows nothing; a crash shows the truth.
#[test]
fn late_writes_show_in_space_only_after_sync_fs() {
    let fs = SimFs::with_home(MIB, "/home");
    fs.set_late_writes(true);
    let home = dir(&fs, "/home");
    let space = || home.space().unwrap().free_bytes;
    let f = home.open_file("f", OpenOptions::create_new()).unwrap();
    f.write_all_at(0, &[1; 64 * BS as usize]).unwrap();
    f.sync_all().unwrap();
    home.sync().unwrap();
    assert_eq!(space(), MIB, "written and fsynced: not shown");
    assert_eq!(fs.free_bytes(), MIB - 64 * BS, "but taken");
    let written = f.write_at(64 * BS, &vec![2; 200 * BS as usize]).unwrap();
    assert_eq!(
        written,
        192 * BS as usize,
        "the write stops at the real limit"
    );
    assert_eq!(errno(f.write_at(256 * BS, &[3])), libc::ENOSPC);
    assert_eq!(space(), MIB, "still nothing shown");
    f.set_len(128 * BS).unwrap();
    assert_eq!(space(), MIB, "cutting unshown data shows nothing");
    home.sync_fs().unwrap();
    assert_eq!(space(), MIB - 128 * BS, "shown after syncfs");
    f.write_all_at(128 * BS, &[4; 16 * BS as usize]).unwrap();
    assert_eq!(space(), MIB - 128 * BS);
    f.set_len(128 * BS).unwrap();
    assert_eq!(
        space(),
        MIB - 128 * BS,
        "the unshown blocks cut off: never shown, nothing to show"
    );
    f.write_all_at(128 * BS, &[4; 16 * BS as usize]).unwrap();
    assert_eq!(space(), MIB - 128 * BS);
    fs.set_late_writes(false);
    assert_eq!(space(), MIB - 144 * BS, "turned off: everything shows");
    fs.set_late_writes(true);
    fs.crash();
    let home = dir(&fs, "/home");
    assert_eq!(
        home.space().unwrap().free_bytes,
        MIB - 128 * BS,
        "after a crash, the disk as it is"
    );
}
