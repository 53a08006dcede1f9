//! `RealFs` against the kernel, in a temporary directory: kinds, allocation, the fill
//! pattern, truncation, refusal of anything that is not a regular file, and the lock.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use disk_reserve::{DirHandle, FileHandle, FileKind, HostFs, OpenOptions, RealFs, pattern};
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

/// `path`, opened as a directory by a fresh backend.
fn open_dir(path: &Utf8Path) -> Box<dyn DirHandle> {
    RealFs::new().open_dir(path).expect("open_dir")
}

fn probe(dir: &dyn DirHandle, name: &str) -> disk_reserve::Probe {
    dir.probe(name).expect("probe").expect("something is there")
}

/// A new empty file `name` in `dir`, opened for writing with `fs`'s pattern seed.
fn create_with(fs: &RealFs, dir: &Utf8Path, name: &str) -> Box<dyn FileHandle> {
    fs.open_dir(dir)
        .unwrap()
        .open_file(name, OpenOptions::create_new())
        .unwrap()
}

fn create(dir: &Utf8Path, name: &str) -> Box<dyn FileHandle> {
    create_with(&RealFs::new(), dir, name)
}

/// The two ways to open an existing file, by name.
const OPEN_MODES: [(&str, OpenOptions); 2] = [
    ("read", OpenOptions::read()),
    ("write", OpenOptions::write()),
];

/// Opens `name` in `dir` on another thread and fails the test if that has not returned
/// in 10 s.
fn open_without_hanging(dir: &Utf8Path, name: &str, options: OpenOptions) -> io::Result<()> {
    let (tx, rx) = mpsc::channel();
    let (dir, owned) = (dir.to_owned(), name.to_owned());
    thread::spawn(move || {
        let _ = tx.send(open_dir(&dir).open_file(&owned, options).map(drop));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("opening {name} {options:?} hung"))
}

#[test]
fn probe_of_missing_name_is_none() {
    let (_tmp, dir) = temp_dir();
    assert_eq!(open_dir(&dir).probe("missing").unwrap(), None);
}

#[test]
fn probe_of_regular_file_reports_kind_len_and_links() {
    let (_tmp, dir) = temp_dir();
    write_plain_file(&dir.join("file"), 12_345);
    let p = probe(&*open_dir(&dir), "file");
    assert_eq!(p.kind, FileKind::Regular);
    assert_eq!(p.len, 12_345);
    assert_eq!(p.links, 1);
    assert!(
        p.allocated_bytes >= 12_345,
        "allocated {}",
        p.allocated_bytes
    );
}

#[test]
fn probe_of_directory_reports_directory() {
    let (_tmp, dir) = temp_dir();
    std::fs::create_dir(dir.join("sub")).unwrap();
    assert_eq!(probe(&*open_dir(&dir), "sub").kind, FileKind::Directory);
}

#[test]
fn probe_of_symlink_reports_symlink_without_following_it() {
    let (_tmp, dir) = temp_dir();
    let target = dir.join("target");
    write_plain_file(&target, 100);
    std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("dangling")).unwrap();
    let handle = open_dir(&dir);
    assert_eq!(probe(&*handle, "link").kind, FileKind::Symlink);
    assert_eq!(probe(&*handle, "dangling").kind, FileKind::Symlink);
}

#[test]
fn probe_of_fifo_reports_fifo() {
    let (_tmp, dir) = temp_dir();
    make_fifo(&dir.join("fifo"));
    assert_eq!(probe(&*open_dir(&dir), "fifo").kind, FileKind::Fifo);
}

#[test]
fn probe_of_socket_reports_socket() {
    let (_tmp, dir) = temp_dir();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("socket")).unwrap();
    assert_eq!(probe(&*open_dir(&dir), "socket").kind, FileKind::Socket);
}

#[test]
fn probe_of_char_device_reports_char_device() {
    assert_eq!(
        probe(&*open_dir(Utf8Path::new("/dev")), "null").kind,
        FileKind::CharDevice
    );
}

#[test]
fn space_reports_free_at_most_total_and_nonzero_total() {
    let (_tmp, dir) = temp_dir();
    let space = open_dir(&dir).space().unwrap();
    assert!(space.total_bytes > 0);
    assert!(space.free_bytes <= space.total_bytes);
    assert!(space.block_bytes > 0);
}

#[test]
fn open_dir_of_missing_path_is_enoent() {
    let (_tmp, dir) = temp_dir();
    let fs = RealFs::new();
    assert_eq!(
        errno_of(fs.open_dir(&dir.join("missing"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno_of(fs.open_dir(&dir.join("missing/deeper"))),
        Some(libc::ENOENT)
    );
}

#[test]
fn open_dir_follows_a_symlinked_path() {
    let (_tmp, dir) = temp_dir();
    std::fs::create_dir(dir.join("real")).unwrap();
    write_plain_file(&dir.join("real/file"), 3);
    std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
    let handle = open_dir(&dir.join("link"));
    assert_eq!(probe(&*handle, "file").len, 3);
}

#[test]
fn open_file_create_new_makes_an_empty_private_regular_file() {
    let (_tmp, dir) = temp_dir();
    let file = create(&dir, "new");
    let p = probe(&*open_dir(&dir), "new");
    assert_eq!(
        (p.kind, p.len, p.allocated_bytes, p.links),
        (FileKind::Regular, 0, 0, 1)
    );
    assert_eq!(file.probe().unwrap(), p);
    let mode = std::fs::metadata(dir.join("new"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "group and others get nothing: {mode:o}");
}

#[test]
fn open_file_create_new_on_existing_file_is_eexist() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 10);
    assert_eq!(
        errno_of(open_dir(&dir).open_file("file", OpenOptions::create_new())),
        Some(libc::EEXIST)
    );
    assert_eq!(std::fs::read(&file).unwrap(), vec![0xAB; 10]);
}

#[test]
fn open_file_create_new_on_dangling_symlink_is_eexist_and_creates_no_target() {
    let (_tmp, dir) = temp_dir();
    std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
    let handle = open_dir(&dir);
    assert_eq!(
        errno_of(handle.open_file("link", OpenOptions::create_new())),
        Some(libc::EEXIST)
    );
    assert_eq!(handle.probe("target").unwrap(), None);
}

#[test]
fn open_file_for_writing_keeps_the_contents() {
    let (_tmp, dir) = temp_dir();
    write_plain_file(&dir.join("file"), 5_000);
    let file = open_dir(&dir)
        .open_file("file", OpenOptions::write())
        .unwrap();
    assert_eq!(file.probe().unwrap().len, 5_000);
    assert_eq!(std::fs::read(dir.join("file")).unwrap(), vec![0xAB; 5_000]);
}

#[test]
fn allocate_8mib_really_allocates_blocks_sets_len_and_takes_free_space() {
    let (_tmp, dir) = temp_dir();
    let handle = open_dir(&dir);
    let size = 8 * MIB;
    // The temp filesystem may be shared: other writers can move free space between the
    // two `statvfs` calls, so give the free-space drop three chances.
    let mut drops = Vec::new();
    for attempt in 0..3 {
        let name = format!("reserve-{attempt}");
        let file = handle.open_file(&name, OpenOptions::create_new()).unwrap();
        let before = handle.space().unwrap().free_bytes;
        file.allocate(0, size).unwrap();
        let after = handle.space().unwrap().free_bytes;
        let p = file.probe().unwrap();
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
        handle.remove_file(&name).unwrap();
    }
    panic!("free space did not drop by 90% of {size} bytes: drops {drops:?}");
}

#[test]
fn allocate_past_the_end_extends_the_file() {
    let (_tmp, dir) = temp_dir();
    let file = create(&dir, "file");
    file.allocate(4 * MIB, 4 * MIB).unwrap();
    let p = file.probe().unwrap();
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
    let file = create(&dir, "file");
    assert_eq!(errno_of(file.allocate(1 << 63, 4096)), Some(libc::EFBIG));
    assert_eq!(errno_of(file.allocate(0, 1 << 63)), Some(libc::EFBIG));
    assert_eq!(file.probe().unwrap().len, 0);
}

#[test]
fn write_fill_1mib_plus_7_writes_the_seeded_incompressible_pattern() {
    let (_tmp, dir) = temp_dir();
    let len = MIB + 7;
    let file = create_with(&RealFs::with_seed(0x5eed), &dir, "file");
    file.write_fill(0, len).unwrap();

    let data = std::fs::read(dir.join("file")).unwrap();
    assert_eq!(data.len() as u64, len);
    let mut expected = vec![0u8; len as usize];
    pattern::fill(&mut expected, 0x5eed, 0);
    assert!(data == expected, "contents differ from pattern::fill");
    assert!(data.iter().any(|&b| b != 0), "rule 3: all zeros");
    let mut seen = HashSet::new();
    for block in data.chunks_exact(4096) {
        assert!(seen.insert(block), "rule 3: two 4 KiB blocks are equal");
    }
    assert!(file.probe().unwrap().allocated_bytes >= len);
}

#[test]
fn write_fill_in_pieces_at_unaligned_offsets_continues_the_pattern() {
    let (_tmp, dir) = temp_dir();
    let file = create_with(&RealFs::with_seed(77), &dir, "file");
    // Pieces that end mid-word and cross the 1 MiB chunk boundary at odd positions.
    let pieces = [
        (0, 3),
        (3, 10_000),
        (10_003, MIB + 5),
        (MIB + 10_008, 4_093),
    ];
    for (offset, len) in pieces {
        file.write_fill(offset, len).unwrap();
    }
    let total = MIB + 10_008 + 4_093;
    let mut expected = vec![0u8; total as usize];
    pattern::fill(&mut expected, 77, 0);
    let data = std::fs::read(dir.join("file")).unwrap();
    assert_eq!(data.len() as u64, total);
    assert!(
        data == expected,
        "pieces do not join into one pattern stream"
    );
}

#[test]
fn write_fill_at_unaligned_offset_leaves_the_prefix_alone() {
    let (_tmp, dir) = temp_dir();
    let path = dir.join("file");
    write_plain_file(&path, 5_000);
    let file = RealFs::with_seed(3)
        .open_dir(&dir)
        .unwrap()
        .open_file("file", OpenOptions::write())
        .unwrap();
    file.write_fill(4_097, 2_000).unwrap();
    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len(), 6_097);
    assert_eq!(data[..4_097], vec![0xAB; 4_097][..]);
    let mut expected = vec![0u8; 2_000];
    pattern::fill(&mut expected, 3, 4_097);
    assert_eq!(data[4_097..], expected[..]);
}

#[test]
fn write_fill_of_zero_bytes_changes_nothing() {
    let (_tmp, dir) = temp_dir();
    let path = dir.join("file");
    write_plain_file(&path, 10);
    let file = open_dir(&dir)
        .open_file("file", OpenOptions::write())
        .unwrap();
    file.write_fill(100, 0).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), vec![0xAB; 10]);
}

#[test]
fn write_fill_past_i64_max_is_efbig() {
    let (_tmp, dir) = temp_dir();
    let file = create(&dir, "file");
    assert_eq!(
        errno_of(file.write_fill(i64::MAX as u64, 1)),
        Some(libc::EFBIG)
    );
    assert_eq!(errno_of(file.write_fill(u64::MAX, 1)), Some(libc::EFBIG));
    assert_eq!(file.probe().unwrap().len, 0);
}

#[test]
fn new_backends_write_different_patterns() {
    let (_tmp, dir) = temp_dir();
    for name in ["a", "b"] {
        create(&dir, name).write_fill(0, 4096).unwrap();
    }
    assert_ne!(
        std::fs::read(dir.join("a")).unwrap(),
        std::fs::read(dir.join("b")).unwrap()
    );
}

#[test]
fn set_len_shrink_frees_blocks_past_the_new_len() {
    let (_tmp, dir) = temp_dir();
    let file = create(&dir, "file");
    file.write_fill(0, 8 * MIB).unwrap();
    assert!(file.probe().unwrap().allocated_bytes >= 8 * MIB);
    file.set_len(MIB).unwrap();
    let p = file.probe().unwrap();
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
    let file = create(&dir, "file");
    file.set_len(8 * MIB).unwrap();
    let p = file.probe().unwrap();
    assert_eq!(p.len, 8 * MIB);
    assert!(p.allocated_bytes < MIB, "allocated: {}", p.allocated_bytes);
}

#[test]
fn set_len_above_i64_max_is_efbig() {
    let (_tmp, dir) = temp_dir();
    let file = create(&dir, "file");
    assert_eq!(errno_of(file.set_len(1 << 63)), Some(libc::EFBIG));
}

#[test]
fn read_only_handle_is_ebadf_for_writes_and_einval_for_set_len() {
    let (_tmp, dir) = temp_dir();
    write_plain_file(&dir.join("file"), 4096);
    let file = open_dir(&dir)
        .open_file("file", OpenOptions::read())
        .unwrap();
    assert_eq!(errno_of(file.allocate(0, MIB)), Some(libc::EBADF));
    assert_eq!(errno_of(file.write_fill(0, 10)), Some(libc::EBADF));
    assert_eq!(errno_of(file.set_len(0)), Some(libc::EINVAL));
    file.sync_all().unwrap();
    assert_eq!(std::fs::read(dir.join("file")).unwrap(), vec![0xAB; 4096]);
}

#[test]
fn sync_all_and_dir_sync_succeed_on_a_file_and_its_directory() {
    let (_tmp, dir) = temp_dir();
    write_plain_file(&dir.join("file"), 10);
    let handle = open_dir(&dir);
    for (_, options) in OPEN_MODES {
        handle
            .open_file("file", options)
            .unwrap()
            .sync_all()
            .unwrap();
    }
    handle.sync().unwrap();
}

#[test]
fn open_dir_of_a_file_is_enotdir() {
    let (_tmp, dir) = temp_dir();
    let file = dir.join("file");
    write_plain_file(&file, 10);
    std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
    let fs = RealFs::new();
    assert_eq!(errno_of(fs.open_dir(&file)), Some(libc::ENOTDIR));
    assert_eq!(
        errno_of(fs.open_dir(&file.join("child"))),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        errno_of(fs.open_dir(&dir.join("link"))),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        errno_of(fs.open_dir(Utf8Path::new("/dev/null"))),
        Some(libc::ENOTDIR)
    );
}

#[test]
fn opening_a_symlink_fails_eloop_and_leaves_the_target_untouched() {
    let (_tmp, dir) = temp_dir();
    let target = dir.join("target");
    write_plain_file(&target, 100);
    std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
    let handle = open_dir(&dir);
    for (mode, options) in OPEN_MODES {
        assert_eq!(
            errno_of(handle.open_file("link", options)),
            Some(libc::ELOOP),
            "rule 7: opening a symlink for {mode}"
        );
        assert_eq!(probe(&*handle, "target").len, 100, "{mode}");
        assert_eq!(std::fs::read(&target).unwrap(), vec![0xAB; 100], "{mode}");
        assert_eq!(probe(&*handle, "link").kind, FileKind::Symlink);
    }
}

#[test]
fn opening_a_fifo_fails_enxio_without_hanging() {
    let (_tmp, dir) = temp_dir();
    make_fifo(&dir.join("fifo"));
    for (mode, options) in OPEN_MODES {
        assert_eq!(
            errno_of(open_without_hanging(&dir, "fifo", options)),
            Some(libc::ENXIO),
            "opening a fifo for {mode}"
        );
    }
}

#[test]
fn opening_a_socket_fails_enxio() {
    let (_tmp, dir) = temp_dir();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("socket")).unwrap();
    for (mode, options) in OPEN_MODES {
        assert_eq!(
            errno_of(open_without_hanging(&dir, "socket", options)),
            Some(libc::ENXIO),
            "opening a socket for {mode}"
        );
    }
}

#[test]
fn opening_a_directory_fails_eisdir() {
    let (_tmp, dir) = temp_dir();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let handle = open_dir(&dir);
    for (mode, options) in OPEN_MODES {
        assert_eq!(
            errno_of(handle.open_file("sub", options)),
            Some(libc::EISDIR),
            "opening a directory for {mode}"
        );
    }
}

#[test]
fn opening_a_char_device_fails_einval() {
    let handle = open_dir(Utf8Path::new("/dev"));
    for (mode, options) in OPEN_MODES {
        assert_eq!(
            errno_of(handle.open_file("null", options)),
            Some(libc::EINVAL),
            "opening /dev/null for {mode}"
        );
    }
}

#[test]
fn opening_a_missing_file_is_enoent() {
    let (_tmp, dir) = temp_dir();
    let handle = open_dir(&dir);
    for (mode, options) in OPEN_MODES {
        assert_eq!(
            errno_of(handle.open_file("missing", options)),
            Some(libc::ENOENT),
            "{mode}"
        );
    }
}

#[test]
fn names_that_are_not_one_component_are_einval() {
    let (_tmp, dir) = temp_dir();
    std::fs::create_dir(dir.join("a")).unwrap();
    write_plain_file(&dir.join("a/b"), 10);
    let handle = open_dir(&dir);
    for name in ["", ".", "..", "a/b", "a/", "/a", "a\0b"] {
        assert_eq!(errno_of(handle.probe(name)), Some(libc::EINVAL), "{name:?}");
        assert_eq!(
            errno_of(handle.open_file(name, OpenOptions::create_new())),
            Some(libc::EINVAL),
            "{name:?}"
        );
        assert_eq!(
            errno_of(handle.remove_file(name)),
            Some(libc::EINVAL),
            "{name:?}"
        );
    }
    let long = "n".repeat(256);
    assert_eq!(errno_of(handle.probe(&long)), Some(libc::ENAMETOOLONG));
    handle
        .open_file(&"n".repeat(255), OpenOptions::create_new())
        .unwrap();
    assert_eq!(std::fs::read(dir.join("a/b")).unwrap(), vec![0xAB; 10]);
}

#[test]
fn path_with_interior_nul_is_einval() {
    assert_eq!(
        errno_of(RealFs::new().open_dir(Utf8Path::new("/tmp\0x"))),
        Some(libc::EINVAL)
    );
}

#[test]
fn remove_file_of_symlink_removes_the_link_not_the_target() {
    let (_tmp, dir) = temp_dir();
    write_plain_file(&dir.join("target"), 100);
    std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
    let handle = open_dir(&dir);
    handle.remove_file("link").unwrap();
    assert_eq!(handle.probe("link").unwrap(), None, "the link is gone");
    assert_eq!(
        probe(&*handle, "target").len,
        100,
        "the target is still there"
    );
}

#[test]
fn remove_file_of_regular_file_removes_it() {
    let (_tmp, dir) = temp_dir();
    write_plain_file(&dir.join("file"), 100);
    let handle = open_dir(&dir);
    handle.remove_file("file").unwrap();
    assert_eq!(handle.probe("file").unwrap(), None);
}

#[test]
fn remove_file_of_missing_name_is_enoent() {
    let (_tmp, dir) = temp_dir();
    assert_eq!(
        errno_of(open_dir(&dir).remove_file("missing")),
        Some(libc::ENOENT)
    );
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn remove_file_of_directory_is_eisdir_and_keeps_it() {
    let (_tmp, dir) = temp_dir();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let handle = open_dir(&dir);
    assert_eq!(errno_of(handle.remove_file("sub")), Some(libc::EISDIR));
    assert_eq!(probe(&*handle, "sub").kind, FileKind::Directory);
}

#[test]
fn dir_handle_stays_with_its_directory_when_the_path_is_renamed() {
    let (_tmp, dir) = temp_dir();
    std::fs::create_dir(dir.join("home")).unwrap();
    let handle = open_dir(&dir.join("home"));
    std::fs::rename(dir.join("home"), dir.join("moved")).unwrap();
    std::fs::create_dir(dir.join("home")).unwrap(); // a new directory at the old path
    handle
        .open_file("f", OpenOptions::create_new())
        .unwrap()
        .write_fill(0, 10)
        .unwrap();
    assert!(dir.join("moved/f").exists());
    assert!(!dir.join("home/f").exists());
}

#[test]
fn try_lock_excludes_a_second_thread_until_dropped() {
    let (_tmp, dir) = temp_dir();
    let held = open_dir(&dir).try_lock().unwrap().expect("free at first");
    let other = dir.clone();
    let excluded = thread::spawn(move || open_dir(&other).try_lock().unwrap().is_none())
        .join()
        .unwrap();
    assert!(
        excluded,
        "rule 10: got the lock while another thread held it"
    );
    drop(held);
    let other = dir.clone();
    let retaken = thread::spawn(move || open_dir(&other).try_lock().unwrap().is_some())
        .join()
        .unwrap();
    assert!(retaken, "the dropped lock was not released");
}

#[test]
fn try_lock_excludes_another_process_until_dropped() {
    let (_tmp, dir) = temp_dir();
    // `flock -n DIR true` takes `flock(LOCK_EX | LOCK_NB)` on the directory in another
    // process: exit status 75 (`-E`) when it cannot.
    let other_process_locks = || match std::process::Command::new("flock")
        .args(["-n", "-E", "75", dir.as_str(), "true"])
        .status()
    {
        Ok(status) => Some(status.code() == Some(0)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => panic!("run flock: {err}"),
    };
    let Some(free) = other_process_locks() else {
        eprintln!("skipped: no flock(1) on this system");
        return;
    };
    assert!(free, "nobody holds the lock yet");
    let held = open_dir(&dir).try_lock().unwrap().expect("free");
    assert_eq!(other_process_locks(), Some(false), "held here");
    drop(held);
    assert_eq!(other_process_locks(), Some(true), "released on drop");
    // And the other way round: a lock another process holds is `None` here. The shell
    // says when it holds the lock, then holds it until its stdin closes.
    let mut holder = std::process::Command::new("flock")
        .args(["-n", dir.as_str(), "sh", "-c", "echo locked; cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = holder.stdout.take().unwrap();
    io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line, "locked\n", "flock could not take the lock");
    let handle = open_dir(&dir);
    assert!(
        handle.try_lock().unwrap().is_none(),
        "held by another process"
    );
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert!(
        handle.try_lock().unwrap().is_some(),
        "released with its holder"
    );
}

#[test]
fn try_lock_can_be_taken_again_after_drop() {
    let (_tmp, dir) = temp_dir();
    let handle = open_dir(&dir);
    drop(handle.try_lock().unwrap().unwrap());
    drop(handle.try_lock().unwrap().expect("released on drop"));
}

#[test]
fn real_fs_works_as_a_trait_object() {
    let (_tmp, dir) = temp_dir();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let fs: Box<dyn HostFs> = Box::new(RealFs::default());
    assert_eq!(
        fs.open_dir(&dir)
            .unwrap()
            .probe("sub")
            .unwrap()
            .map(|p| p.kind),
        Some(FileKind::Directory)
    );
}

// ---------------------------------------------------------------- power cut (rule 6)

/// `FS_IOC_SHUTDOWN` (`_IOR('X', 125, __u32)`) with `FS_GOING_FLAGS_NOLOGFLUSH`: the
/// filesystem stops at once, without writing its log — a power cut for what was not
/// fsynced. ext4 and XFS support it.
const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
const FS_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// An ext4 image loop-mounted in a temporary directory, or `None` (with a line saying why)
/// where this machine cannot (not root, no `mkfs.ext4`, no loop device).
struct Ext4 {
    image: Utf8PathBuf,
    mnt: Utf8PathBuf,
    _dir: TempDir,
}

impl Ext4 {
    fn new() -> Option<Ext4> {
        let (dir, path) = temp_dir();
        let image = path.join("ext4.img");
        let mnt = path.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image.as_str())
            .status()
            .is_ok_and(|s| s.success());
        let fs = Ext4 {
            image,
            mnt,
            _dir: dir,
        };
        if !made || !fs.mount() {
            println!("skipped: cannot make and loop-mount an ext4 image here (needs root)");
            return None;
        }
        Some(fs)
    }

    fn mount(&self) -> bool {
        std::process::Command::new("mount")
            .args(["-o", "loop"])
            .args([self.image.as_str(), self.mnt.as_str()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn umount(&self) {
        let _ = std::process::Command::new("umount")
            .arg(self.mnt.as_str())
            .status();
    }

    /// Cuts the power: shutdown without flushing the log, unmount, mount again.
    fn power_cut(&self) {
        let dir = std::fs::File::open(&self.mnt).unwrap();
        let mut flags = FS_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: `dir` is an open descriptor on the mount; the ioctl reads one `u32`
        // from the live `flags`.
        let ret = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                FS_IOC_SHUTDOWN as _,
                &mut flags as *mut u32,
            )
        };
        assert_eq!(ret, 0, "shutdown: {}", io::Error::last_os_error());
        drop(dir);
        self.umount();
        assert!(self.mount(), "mount again after the power cut");
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        self.umount();
    }
}

/// Rule 6 on the kernel: a reserve `ensure` reported created — on the write path, whose
/// data ext4 allocates only at writeback — is there, complete, after a power cut right
/// after the call returned; a topped-up one keeps its new blocks; a released one stays
/// gone. Kills the mutants that turn `RealFs`'s file or directory fsync into a no-op.
#[test]
fn power_cut_after_ensure_and_release_keeps_what_they_reported() {
    use disk_reserve::{Ensured, Released, Reserve, ReserveConfig, Strategy};
    let Some(fs) = Ext4::new() else { return };
    let home = fs.mnt.join("home");
    std::fs::create_dir(&home).unwrap();
    let size = 8 * MIB;
    let reserve = |size| {
        Reserve::new(
            RealFs::new(),
            &home,
            ReserveConfig::with_size_bytes(size).strategy(Strategy::Write),
        )
        .unwrap()
    };
    let complete = |size: u64| {
        let meta = std::fs::metadata(home.join(".reserve")).ok()?;
        Some(meta.len() == size && std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= size)
    };

    assert!(matches!(
        reserve(size).ensure().unwrap(),
        Ensured::Created { .. }
    ));
    fs.power_cut();
    assert_eq!(
        complete(size),
        Some(true),
        "rule 6: a reserve reported created must survive a power cut"
    );

    assert!(matches!(
        reserve(2 * size).ensure().unwrap(),
        Ensured::ToppedUp { .. }
    ));
    fs.power_cut();
    assert_eq!(
        complete(2 * size),
        Some(true),
        "rule 6: a reserve reported topped up must keep its blocks after a power cut"
    );

    assert!(matches!(
        reserve(2 * size).release().unwrap(),
        Released::Released { .. }
    ));
    fs.power_cut();
    assert_eq!(
        complete(2 * size),
        None,
        "rule 6: a reserve reported released must stay gone after a power cut"
    );
}
