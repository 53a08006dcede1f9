//! `RealFs` against the kernel, in a temporary directory: kinds, allocation, the fill
//! pattern, truncation, refusal of anything that is not a regular file, and the lock.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use disk_reserve::{FileKind, HostFs, RealFs, pattern};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

/// A fresh temporary directory and its UTF-8 path.
fn temp_dir() -> (TempDir, Utf8PathBuf) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = Utf8PathBuf::try_from(dir.path().to_path_buf()).expect("UTF-8 temp dir");
    (dir, path)
}

/// The raw errno of a failed call: `None` when it succeeded or lost its errno.
fn errno_of<T>(result: io::Result<T>) -> Option<i32> {
    result.err().and_then(|err| err.raw_os_error())
}

/// A regular file at `path` holding `len` bytes of 0xAB.
fn write_plain_file(path: &Utf8Path, len: usize) {
    std::fs::write(path, vec![0xAB; len]).expect("write plain file");
}

fn make_fifo(path: &Utf8Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path.as_str())
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
}

fn probe(fs: &RealFs, path: &Utf8Path) -> disk_reserve::Probe {
    fs.probe(path).expect("probe").expect("something is there")
}

/// The four operations that open an existing regular file, by name.
type OpeningOp = (&'static str, fn(&RealFs, &Utf8Path) -> io::Result<()>);

fn opening_ops() -> Vec<OpeningOp> {
    vec![
        ("allocate", |fs, p| fs.allocate(p, 0, MIB)),
        ("write_fill", |fs, p| fs.write_fill(p, 0, 4096)),
        ("set_len", |fs, p| fs.set_len(p, 4096)),
        ("sync_file", |fs, p| fs.sync_file(p)),
    ]
}

/// Runs `op` on another thread and fails the test if it has not returned in 10 s.
fn without_hanging(
    name: &str,
    op: fn(&RealFs, &Utf8Path) -> io::Result<()>,
    path: &Utf8Path,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    thread::spawn(move || {
        let _ = tx.send(op(&RealFs::new(), &path));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{name} hung on a fifo"))
}

#[test]
fn probe_of_missing_path_is_none() {
    let (_tmp, dir) = temp_dir();
    assert_eq!(RealFs::new().probe(&dir.join("missing")).unwrap(), None);
}

#[test]
fn probe_of_regular_file_reports_kind_and_len() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 12_345);
    let p = probe(&RealFs::new(), &file);
    assert_eq!(p.kind, FileKind::Regular);
    assert_eq!(p.len, 12_345);
    assert!(
        p.allocated_bytes >= 12_345,
        "allocated {}",
        p.allocated_bytes
    );
}

#[test]
fn probe_of_directory_reports_directory() {
    let (_tmp, dir) = temp_dir();
    assert_eq!(probe(&RealFs::new(), &dir).kind, FileKind::Directory);
}

#[test]
fn probe_of_symlink_reports_symlink_without_following_it() {
    let (_tmp, dir) = temp_dir();
    let target = dir.join("target");
    write_plain_file(&target, 100);
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    let fs = RealFs::new();
    assert_eq!(probe(&fs, &link).kind, FileKind::Symlink);
    assert_eq!(probe(&fs, &dangling).kind, FileKind::Symlink);
}

#[test]
fn probe_of_fifo_reports_fifo() {
    let (_tmp, dir) = temp_dir();
    let fifo = dir.join("fifo");
    make_fifo(&fifo);
    assert_eq!(probe(&RealFs::new(), &fifo).kind, FileKind::Fifo);
}

#[test]
fn probe_of_socket_reports_socket() {
    let (_tmp, dir) = temp_dir();
    let socket = dir.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    assert_eq!(probe(&RealFs::new(), &socket).kind, FileKind::Socket);
}

#[test]
fn probe_of_char_device_reports_char_device() {
    assert_eq!(
        probe(&RealFs::new(), Utf8Path::new("/dev/null")).kind,
        FileKind::CharDevice
    );
}

#[test]
fn space_reports_free_at_most_total_and_nonzero_total() {
    let (_tmp, dir) = temp_dir();
    let space = RealFs::new().space(&dir).unwrap();
    assert!(space.total_bytes > 0);
    assert!(space.free_bytes <= space.total_bytes);
}

#[test]
fn space_of_missing_path_is_enoent() {
    let (_tmp, dir) = temp_dir();
    assert_eq!(
        errno_of(RealFs::new().space(&dir.join("missing"))),
        Some(libc::ENOENT)
    );
}

#[test]
fn create_file_makes_an_empty_private_regular_file() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("new");
    RealFs::new().create_file(&file).unwrap();
    let p = probe(&RealFs::new(), &file);
    assert_eq!(
        (p.kind, p.len, p.allocated_bytes),
        (FileKind::Regular, 0, 0)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "group and others get nothing: {mode:o}");
}

#[test]
fn create_file_on_existing_file_is_eexist() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 10);
    assert_eq!(
        errno_of(RealFs::new().create_file(&file)),
        Some(libc::EEXIST)
    );
    assert_eq!(std::fs::read(&file).unwrap(), vec![0xAB; 10]);
}

#[test]
fn create_file_on_dangling_symlink_is_eexist_and_creates_no_target() {
    let (_tmp, dir) = temp_dir();
    let target = dir.join("target");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(
        errno_of(RealFs::new().create_file(&link)),
        Some(libc::EEXIST)
    );
    assert_eq!(RealFs::new().probe(&target).unwrap(), None);
}

#[test]
fn allocate_8mib_really_allocates_blocks_sets_len_and_takes_free_space() {
    let (_tmp, dir) = temp_dir();
    let fs = RealFs::new();
    let size = 8 * MIB;
    // The temp filesystem may be shared: other writers can move free space between the
    // two `statvfs` calls, so give the free-space drop three chances.
    let mut drops = Vec::new();
    for attempt in 0..3 {
        let file = dir.join(format!("reserve-{attempt}"));
        fs.create_file(&file).unwrap();
        let before = fs.space(&dir).unwrap().free_bytes;
        fs.allocate(&file, 0, size).unwrap();
        let after = fs.space(&dir).unwrap().free_bytes;
        let p = probe(&fs, &file);
        assert_eq!(p.len, size, "allocate sets the length");
        assert!(
            p.allocated_bytes >= size,
            "rule 1: allocated {} < {size}",
            p.allocated_bytes
        );
        drops.push(before.saturating_sub(after));
        if before.saturating_sub(after) >= size / 10 * 9 {
            return;
        }
        fs.remove_file(&file).unwrap();
    }
    panic!("free space did not drop by 90% of {size} bytes: drops {drops:?}");
}

#[test]
fn allocate_past_the_end_extends_the_file() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    let fs = RealFs::new();
    fs.create_file(&file).unwrap();
    fs.allocate(&file, 4 * MIB, 4 * MIB).unwrap();
    let p = probe(&fs, &file);
    assert_eq!(p.len, 8 * MIB);
    assert!(p.allocated_bytes >= 4 * MIB);
    assert!(
        p.allocated_bytes < 8 * MIB,
        "the range before the offset stays a hole"
    );
}

#[test]
fn allocate_with_offset_or_len_above_i64_max_is_efbig() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    let fs = RealFs::new();
    fs.create_file(&file).unwrap();
    assert_eq!(
        errno_of(fs.allocate(&file, 1 << 63, 4096)),
        Some(libc::EFBIG)
    );
    assert_eq!(errno_of(fs.allocate(&file, 0, 1 << 63)), Some(libc::EFBIG));
    assert_eq!(probe(&fs, &file).len, 0);
}

#[test]
fn write_fill_1mib_plus_7_writes_the_seeded_incompressible_pattern() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    let fs = RealFs::with_seed(0x5eed);
    let len = MIB + 7;
    fs.create_file(&file).unwrap();
    fs.write_fill(&file, 0, len).unwrap();

    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len() as u64, len);
    let mut expected = vec![0u8; len as usize];
    pattern::fill(&mut expected, 0x5eed, 0);
    assert!(data == expected, "contents differ from pattern::fill");
    assert!(data.iter().any(|&b| b != 0), "rule 3: all zeros");
    let mut seen = HashSet::new();
    for block in data.chunks_exact(4096) {
        assert!(seen.insert(block), "rule 3: two 4 KiB blocks are equal");
    }
    assert!(probe(&fs, &file).allocated_bytes >= len);
}

#[test]
fn write_fill_in_pieces_at_unaligned_offsets_continues_the_pattern() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    let fs = RealFs::with_seed(77);
    fs.create_file(&file).unwrap();
    // Pieces that end mid-word and cross the 1 MiB chunk boundary at odd positions.
    let pieces = [
        (0, 3),
        (3, 10_000),
        (10_003, MIB + 5),
        (MIB + 10_008, 4_093),
    ];
    for (offset, len) in pieces {
        fs.write_fill(&file, offset, len).unwrap();
    }
    let total = MIB + 10_008 + 4_093;
    let mut expected = vec![0u8; total as usize];
    pattern::fill(&mut expected, 77, 0);
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len() as u64, total);
    assert!(
        data == expected,
        "pieces do not join into one pattern stream"
    );
}

#[test]
fn write_fill_at_unaligned_offset_leaves_the_prefix_alone() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 5_000);
    let fs = RealFs::with_seed(3);
    fs.write_fill(&file, 4_097, 2_000).unwrap();
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len(), 6_097);
    assert_eq!(data[..4_097], vec![0xAB; 4_097][..]);
    let mut expected = vec![0u8; 2_000];
    pattern::fill(&mut expected, 3, 4_097);
    assert_eq!(data[4_097..], expected[..]);
}

#[test]
fn write_fill_of_zero_bytes_changes_nothing() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 10);
    RealFs::new().write_fill(&file, 100, 0).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), vec![0xAB; 10]);
}

#[test]
fn write_fill_past_i64_max_is_efbig() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    let fs = RealFs::new();
    fs.create_file(&file).unwrap();
    assert_eq!(
        errno_of(fs.write_fill(&file, i64::MAX as u64, 1)),
        Some(libc::EFBIG)
    );
    assert_eq!(
        errno_of(fs.write_fill(&file, u64::MAX, 1)),
        Some(libc::EFBIG)
    );
    assert_eq!(probe(&fs, &file).len, 0);
}

#[test]
fn new_backends_write_different_patterns() {
    let (_tmp, dir) = temp_dir();
    let (a, b) = (dir.join("a"), dir.join("b"));
    for path in [&a, &b] {
        let fs = RealFs::new();
        fs.create_file(path).unwrap();
        fs.write_fill(path, 0, 4096).unwrap();
    }
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn set_len_shrink_frees_blocks_past_the_new_len() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    let fs = RealFs::new();
    fs.create_file(&file).unwrap();
    fs.write_fill(&file, 0, 8 * MIB).unwrap();
    assert!(probe(&fs, &file).allocated_bytes >= 8 * MIB);
    fs.set_len(&file, MIB).unwrap();
    let p = probe(&fs, &file);
    assert_eq!(p.len, MIB);
    assert!(
        p.allocated_bytes < 2 * MIB,
        "still allocated: {}",
        p.allocated_bytes
    );
}

#[test]
fn set_len_grow_adds_a_hole_and_allocates_nothing() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    let fs = RealFs::new();
    fs.create_file(&file).unwrap();
    fs.set_len(&file, 8 * MIB).unwrap();
    let p = probe(&fs, &file);
    assert_eq!(p.len, 8 * MIB);
    assert!(p.allocated_bytes < MIB, "allocated: {}", p.allocated_bytes);
}

#[test]
fn set_len_above_i64_max_is_efbig() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    let fs = RealFs::new();
    fs.create_file(&file).unwrap();
    assert_eq!(errno_of(fs.set_len(&file, 1 << 63)), Some(libc::EFBIG));
}

#[test]
fn sync_file_and_sync_dir_succeed_on_a_file_and_its_directory() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 10);
    let fs = RealFs::new();
    fs.sync_file(&file).unwrap();
    fs.sync_dir(&dir).unwrap();
}

#[test]
fn sync_dir_of_a_file_is_enotdir_and_of_missing_is_enoent() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 10);
    let fs = RealFs::new();
    assert_eq!(errno_of(fs.sync_dir(&file)), Some(libc::ENOTDIR));
    assert_eq!(
        errno_of(fs.sync_dir(&dir.join("missing"))),
        Some(libc::ENOENT)
    );
}

#[test]
fn opening_ops_on_symlink_fail_eloop_and_leave_the_target_untouched() {
    let (_tmp, dir) = temp_dir();
    let target = dir.join("target");
    write_plain_file(&target, 100);
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for (name, op) in opening_ops() {
        assert_eq!(
            errno_of(op(&RealFs::new(), &link)),
            Some(libc::ELOOP),
            "rule 7: {name} on a symlink"
        );
        let p = probe(&RealFs::new(), &target);
        assert_eq!(p.len, 100, "rule 7: {name} changed the symlink's target");
        assert_eq!(std::fs::read(&target).unwrap(), vec![0xAB; 100], "{name}");
        assert_eq!(probe(&RealFs::new(), &link).kind, FileKind::Symlink);
    }
}

#[test]
fn opening_ops_on_fifo_fail_enxio_without_hanging() {
    let (_tmp, dir) = temp_dir();
    let fifo = dir.join("fifo");
    make_fifo(&fifo);
    for (name, op) in opening_ops() {
        assert_eq!(
            errno_of(without_hanging(name, op, &fifo)),
            Some(libc::ENXIO),
            "{name} on a fifo"
        );
    }
}

#[test]
fn opening_ops_on_socket_fail_enxio() {
    let (_tmp, dir) = temp_dir();
    let socket = dir.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for (name, op) in opening_ops() {
        assert_eq!(
            errno_of(op(&RealFs::new(), &socket)),
            Some(libc::ENXIO),
            "{name} on a socket"
        );
    }
}

#[test]
fn opening_ops_on_directory_fail_eisdir() {
    let (_tmp, dir) = temp_dir();
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    for (name, op) in opening_ops() {
        assert_eq!(
            errno_of(op(&RealFs::new(), &sub)),
            Some(libc::EISDIR),
            "{name} on a directory"
        );
    }
}

#[test]
fn opening_ops_on_char_device_fail_einval() {
    for (name, op) in opening_ops() {
        assert_eq!(
            errno_of(op(&RealFs::new(), Utf8Path::new("/dev/null"))),
            Some(libc::EINVAL),
            "{name} on /dev/null"
        );
    }
}

#[test]
fn opening_ops_on_missing_file_or_parent_are_enoent() {
    let (_tmp, dir) = temp_dir();
    for (name, op) in opening_ops() {
        for path in [dir.join("missing"), dir.join("missing/file")] {
            assert_eq!(
                errno_of(op(&RealFs::new(), &path)),
                Some(libc::ENOENT),
                "{name} on {path}"
            );
        }
    }
}

#[test]
fn every_op_under_a_file_parent_is_enotdir() {
    let (_tmp, dir) = temp_dir();
    let parent = dir.join("file");
    write_plain_file(&parent, 10);
    let path = parent.join("child");
    let fs = RealFs::new();
    for (name, op) in opening_ops() {
        assert_eq!(errno_of(op(&fs, &path)), Some(libc::ENOTDIR), "{name}");
    }
    assert_eq!(errno_of(fs.probe(&path)), Some(libc::ENOTDIR), "probe");
    assert_eq!(errno_of(fs.space(&path)), Some(libc::ENOTDIR), "space");
    assert_eq!(
        errno_of(fs.create_file(&path)),
        Some(libc::ENOTDIR),
        "create_file"
    );
    assert_eq!(
        errno_of(fs.remove_file(&path)),
        Some(libc::ENOTDIR),
        "remove_file"
    );
    assert_eq!(
        errno_of(fs.sync_dir(&path)),
        Some(libc::ENOTDIR),
        "sync_dir"
    );
    assert_eq!(
        errno_of(fs.lock_dir(&path)),
        Some(libc::ENOTDIR),
        "lock_dir"
    );
}

#[test]
fn create_file_with_missing_parent_is_enoent() {
    let (_tmp, dir) = temp_dir();
    assert_eq!(
        errno_of(RealFs::new().create_file(&dir.join("missing/file"))),
        Some(libc::ENOENT)
    );
}

#[test]
fn path_with_interior_nul_is_einval() {
    let fs = RealFs::new();
    let path = Utf8Path::new("a\0b");
    assert_eq!(errno_of(fs.probe(path)), Some(libc::EINVAL), "probe");
    assert_eq!(
        errno_of(fs.create_file(path)),
        Some(libc::EINVAL),
        "create_file"
    );
    assert_eq!(
        errno_of(fs.remove_file(path)),
        Some(libc::EINVAL),
        "remove_file"
    );
    for (name, op) in opening_ops() {
        assert_eq!(errno_of(op(&fs, path)), Some(libc::EINVAL), "{name}");
    }
}

#[test]
fn remove_file_of_symlink_removes_the_link_not_the_target() {
    let (_tmp, dir) = temp_dir();
    let target = dir.join("target");
    write_plain_file(&target, 100);
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fs = RealFs::new();
    fs.remove_file(&link).unwrap();
    assert_eq!(fs.probe(&link).unwrap(), None, "the link is gone");
    assert_eq!(probe(&fs, &target).len, 100, "the target is still there");
}

#[test]
fn remove_file_of_regular_file_removes_it() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 100);
    let fs = RealFs::new();
    fs.remove_file(&file).unwrap();
    assert_eq!(fs.probe(&file).unwrap(), None);
}

#[test]
fn remove_file_of_missing_path_is_enoent() {
    let (_tmp, dir) = temp_dir();
    assert_eq!(
        errno_of(RealFs::new().remove_file(&dir.join("missing"))),
        Some(libc::ENOENT)
    );
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn remove_file_of_directory_is_eisdir_and_keeps_it() {
    let (_tmp, dir) = temp_dir();
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let fs = RealFs::new();
    assert_eq!(errno_of(fs.remove_file(&sub)), Some(libc::EISDIR));
    assert_eq!(probe(&fs, &sub).kind, FileKind::Directory);
}

#[test]
fn lock_dir_excludes_a_second_thread_until_dropped() {
    let (_tmp, dir) = temp_dir();
    let held = Arc::new(AtomicBool::new(false));
    let locked = Arc::new(Barrier::new(2));

    let holder = {
        let (dir, held, locked) = (dir.clone(), held.clone(), locked.clone());
        thread::spawn(move || {
            let lock = RealFs::new().lock_dir(&dir).unwrap();
            held.store(true, Ordering::SeqCst);
            locked.wait();
            thread::sleep(Duration::from_millis(50));
            held.store(false, Ordering::SeqCst);
            drop(lock);
        })
    };
    let waiter = {
        let (dir, held, locked) = (dir.clone(), held.clone(), locked.clone());
        thread::spawn(move || {
            locked.wait();
            let _lock = RealFs::new().lock_dir(&dir).unwrap();
            assert!(
                !held.load(Ordering::SeqCst),
                "rule 10: got the lock while another thread held it"
            );
        })
    };
    holder.join().unwrap();
    waiter.join().unwrap();
}

#[test]
fn lock_dir_can_be_taken_again_after_drop() {
    let (_tmp, dir) = temp_dir();
    let fs = RealFs::new();
    drop(fs.lock_dir(&dir).unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(RealFs::new().lock_dir(&dir).map(drop));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the dropped lock was not released")
        .unwrap();
}

#[test]
fn lock_dir_on_missing_dir_is_enoent() {
    let (_tmp, dir) = temp_dir();
    assert_eq!(
        errno_of(RealFs::new().lock_dir(&dir.join("missing"))),
        Some(libc::ENOENT)
    );
}

#[test]
fn lock_dir_on_a_file_is_enotdir() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 1);
    assert_eq!(errno_of(RealFs::new().lock_dir(&file)), Some(libc::ENOTDIR));
}

#[test]
fn real_fs_works_as_a_trait_object() {
    let (_tmp, dir) = temp_dir();
    let fs: Box<dyn HostFs> = Box::new(RealFs::default());
    assert_eq!(
        fs.probe(&dir).unwrap().map(|p| p.kind),
        Some(FileKind::Directory)
    );
}
