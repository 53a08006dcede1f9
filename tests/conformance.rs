//! One conformance suite, two backends: every test body below runs against `SimFs` and
//! against `RealFs` in a temporary directory, so the simulator is held to the kernel's
//! behaviour. Where they disagree, the kernel is right and `SimFs` is fixed.

use std::io;
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use disk_reserve::{
    DirHandle, Ensured, Error, FileKind, HostFs, OpenOptions, RealFs, Released, Reserve,
    ReserveConfig, SimFs, Strategy,
};

const MIB: u64 = 1 << 20;

/// A backend plus the setup steps a test needs that the `HostFs` trait does not offer.
trait Fixture {
    type Fs: HostFs + Clone + 'static;
    fn fs(&self) -> Self::Fs;
    fn root(&self) -> Utf8PathBuf;
    fn symlink(&self, link: &Utf8Path, target: &Utf8Path);
    fn mkfifo(&self, path: &Utf8Path);
    fn mksocket(&self, path: &Utf8Path);
    fn mkdir(&self, path: &Utf8Path);
    fn write_dense(&self, path: &Utf8Path, len: u64);
    fn write_sparse(&self, path: &Utf8Path, len: u64);
    /// Moves `from` to `to` behind the backend's back (`mv`).
    fn rename(&self, from: &Utf8Path, to: &Utf8Path);
    /// Removes the file, symlink or empty directory at `path` behind the backend's back.
    fn remove(&self, path: &Utf8Path);
    /// A directory holding a character device, and the device's name.
    fn char_device(&self) -> (Utf8PathBuf, &'static str);
    /// Whether `space()` moves only with this test's own allocations (no other writers,
    /// no deferred freeing), so it can be compared exactly.
    fn exact_space(&self) -> bool;
}

struct Sim(SimFs);

impl Sim {
    fn new() -> Self {
        Sim(SimFs::with_home(256 * MIB, "/conformance"))
    }
}

impl Fixture for Sim {
    type Fs = SimFs;
    fn fs(&self) -> SimFs {
        self.0.clone()
    }
    fn root(&self) -> Utf8PathBuf {
        "/conformance".into()
    }
    fn symlink(&self, link: &Utf8Path, target: &Utf8Path) {
        self.0.symlink(link, target).unwrap();
    }
    fn mkfifo(&self, path: &Utf8Path) {
        self.0.mkfifo(path).unwrap();
    }
    fn mksocket(&self, path: &Utf8Path) {
        self.0.mksocket(path).unwrap();
    }
    fn mkdir(&self, path: &Utf8Path) {
        self.0.mkdir_all(path).unwrap();
    }
    fn write_dense(&self, path: &Utf8Path, len: u64) {
        self.0.write_file(path, len).unwrap();
    }
    fn write_sparse(&self, path: &Utf8Path, len: u64) {
        self.0.write_sparse(path, len).unwrap();
    }
    fn rename(&self, from: &Utf8Path, to: &Utf8Path) {
        self.0.rename(from, to).unwrap();
    }
    fn remove(&self, path: &Utf8Path) {
        self.0.remove(path).unwrap();
    }
    fn char_device(&self) -> (Utf8PathBuf, &'static str) {
        if self.0.lookup("/dev/null").unwrap().is_none() {
            self.0.mkdir_all("/dev").unwrap();
            self.0.mknod("/dev/null", FileKind::CharDevice).unwrap();
        }
        ("/dev".into(), "null")
    }
    fn exact_space(&self) -> bool {
        true
    }
}

struct Real(tempfile::TempDir);

impl Real {
    fn new() -> Self {
        Real(tempfile::tempdir().unwrap())
    }
}

impl Fixture for Real {
    type Fs = RealFs;
    fn fs(&self) -> RealFs {
        RealFs::new()
    }
    fn root(&self) -> Utf8PathBuf {
        Utf8PathBuf::try_from(self.0.path().to_path_buf()).unwrap()
    }
    fn symlink(&self, link: &Utf8Path, target: &Utf8Path) {
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    fn mkfifo(&self, path: &Utf8Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
    fn mksocket(&self, path: &Utf8Path) {
        // The socket's name stays after the listener is closed.
        drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    }
    fn mkdir(&self, path: &Utf8Path) {
        std::fs::create_dir_all(path).unwrap();
    }
    fn write_dense(&self, path: &Utf8Path, len: u64) {
        std::fs::write(path, vec![0xA5; len as usize]).unwrap();
    }
    fn write_sparse(&self, path: &Utf8Path, len: u64) {
        std::fs::File::create(path).unwrap().set_len(len).unwrap();
    }
    fn rename(&self, from: &Utf8Path, to: &Utf8Path) {
        std::fs::rename(from, to).unwrap();
    }
    fn remove(&self, path: &Utf8Path) {
        if std::fs::symlink_metadata(path).unwrap().is_dir() {
            std::fs::remove_dir(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }
    fn char_device(&self) -> (Utf8PathBuf, &'static str) {
        ("/dev".into(), "null")
    }
    fn exact_space(&self) -> bool {
        false
    }
}

fn errno<T: std::fmt::Debug>(result: io::Result<T>) -> i32 {
    result
        .expect_err("expected an error")
        .raw_os_error()
        .expect("errors keep the raw errno")
}

/// The fixture's root, opened.
fn home(fx: &impl Fixture) -> Box<dyn DirHandle> {
    fx.fs().open_dir(&fx.root()).unwrap()
}

fn probe(dir: &dyn DirHandle, name: &str) -> disk_reserve::Probe {
    dir.probe(name).unwrap().expect("something is there")
}

fn probe_missing_is_none(fx: &impl Fixture) {
    assert_eq!(home(fx).probe("nothing").unwrap(), None);
}

fn probe_reports_kinds(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("file"), 10);
    fx.mkdir(&root.join("dir"));
    fx.symlink(&root.join("link"), &root.join("file"));
    fx.mkfifo(&root.join("fifo"));
    fx.mksocket(&root.join("socket"));
    let dir = home(fx);
    let kind = |name: &str| probe(&*dir, name).kind;
    assert_eq!(kind("file"), FileKind::Regular);
    assert_eq!(kind("dir"), FileKind::Directory);
    assert_eq!(kind("link"), FileKind::Symlink);
    assert_eq!(kind("fifo"), FileKind::Fifo);
    assert_eq!(kind("socket"), FileKind::Socket);
    let (dev_dir, dev) = fx.char_device();
    let dev_dir = fx.fs().open_dir(&dev_dir).unwrap();
    assert_eq!(probe(&*dev_dir, dev).kind, FileKind::CharDevice);
}

fn probe_counts_allocated_not_length(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("dense"), MIB);
    fx.write_sparse(&root.join("sparse"), MIB);
    let dir = home(fx);
    let dense = probe(&*dir, "dense");
    let sparse = probe(&*dir, "sparse");
    assert_eq!((dense.len, sparse.len), (MIB, MIB));
    assert!(dense.allocated_bytes >= MIB);
    assert_eq!(sparse.allocated_bytes, 0);
    assert_eq!((dense.links, sparse.links), (1, 1));
}

fn names_must_be_one_component(fx: &impl Fixture) {
    let root = fx.root();
    fx.mkdir(&root.join("a"));
    fx.write_dense(&root.join("a/b"), 1);
    let dir = home(fx);
    let long = "x".repeat(256);
    for (name, expected) in [
        ("", libc::EINVAL),
        (".", libc::EINVAL),
        ("..", libc::EINVAL),
        ("a/b", libc::EINVAL),
        ("a/", libc::EINVAL),
        ("/a", libc::EINVAL),
        ("a\0b", libc::EINVAL),
        (long.as_str(), libc::ENAMETOOLONG),
    ] {
        assert_eq!(errno(dir.probe(name)), expected, "probe {name:?}");
        for options in [
            OpenOptions::read(),
            OpenOptions::write(),
            OpenOptions::create_new(),
        ] {
            assert_eq!(
                errno(dir.open_file(name, options)),
                expected,
                "open_file {name:?} {options:?}"
            );
        }
        assert_eq!(errno(dir.remove_file(name)), expected, "remove {name:?}");
        assert_eq!(errno(dir.rename(name, "z")), expected, "rename {name:?}");
        assert_eq!(errno(dir.rename("a", name)), expected, "rename to {name:?}");
        assert_eq!(errno(dir.link(name, "z")), expected, "link {name:?}");
    }
    // 255 bytes is still a name.
    assert_eq!(dir.probe(&"x".repeat(255)).unwrap(), None);
    assert_eq!(probe(&*dir, "a").kind, FileKind::Directory);
    assert_eq!(dir.probe("z").unwrap(), None);
}

fn open_dir_errors_and_follows_symlinks(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("file"), 1);
    fx.mkdir(&root.join("real"));
    fx.write_dense(&root.join("real/inside"), 7);
    fx.symlink(&root.join("link"), &root.join("real"));
    fx.symlink(&root.join("file-link"), &root.join("file"));
    fx.symlink(&root.join("dangling"), &root.join("missing"));
    let fs = fx.fs();
    assert_eq!(errno(fs.open_dir(&root.join("missing"))), libc::ENOENT);
    assert_eq!(errno(fs.open_dir(&root.join("missing/x"))), libc::ENOENT);
    assert_eq!(errno(fs.open_dir(&root.join("dangling"))), libc::ENOENT);
    assert_eq!(errno(fs.open_dir(&root.join("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs.open_dir(&root.join("file/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs.open_dir(&root.join("file-link"))), libc::ENOTDIR);
    let through_link = fs.open_dir(&root.join("link")).unwrap();
    assert_eq!(probe(&*through_link, "inside").len, 7);
    let nested = fs.open_dir(&root.join("link/../link/.")).unwrap();
    assert_eq!(probe(&*nested, "inside").len, 7);
}

fn open_dir_resolves_once(fx: &impl Fixture) {
    let root = fx.root();
    fx.mkdir(&root.join("v1"));
    fx.mkdir(&root.join("v2"));
    fx.symlink(&root.join("current"), &root.join("v1"));
    let dir = fx.fs().open_dir(&root.join("current")).unwrap();
    fx.remove(&root.join("current"));
    fx.symlink(&root.join("current"), &root.join("v2")); // the deploy flips the link
    dir.open_file("f", OpenOptions::create_new()).unwrap();
    let fs = fx.fs();
    let v1 = fs.open_dir(&root.join("v1")).unwrap();
    let v2 = fs.open_dir(&root.join("v2")).unwrap();
    assert_eq!(probe(&*v1, "f").kind, FileKind::Regular);
    assert_eq!(v2.probe("f").unwrap(), None);
}

fn create_is_exclusive(fx: &impl Fixture) {
    let root = fx.root();
    let dir = home(fx);
    let created = dir.open_file("a", OpenOptions::create_new()).unwrap();
    let p = created.probe().unwrap();
    assert_eq!(
        (p.kind, p.len, p.allocated_bytes, p.links),
        (FileKind::Regular, 0, 0, 1)
    );
    assert_eq!(
        errno(dir.open_file("a", OpenOptions::create_new())),
        libc::EEXIST
    );
    fx.symlink(&root.join("dangling"), &root.join("missing"));
    assert_eq!(
        errno(dir.open_file("dangling", OpenOptions::create_new())),
        libc::EEXIST
    );
    assert_eq!(dir.probe("missing").unwrap(), None);
    fx.mkdir(&root.join("sub"));
    assert_eq!(
        errno(dir.open_file("sub", OpenOptions::create_new())),
        libc::EEXIST
    );
    assert_eq!(
        errno(dir.open_file("nothing", OpenOptions::write())),
        libc::ENOENT
    );
    assert_eq!(
        errno(dir.open_file("nothing", OpenOptions::read())),
        libc::ENOENT
    );
}

fn allocate_extends_and_allocates(fx: &impl Fixture) {
    let dir = home(fx);
    let file = dir.open_file("r", OpenOptions::create_new()).unwrap();
    file.allocate(0, 2 * MIB).unwrap();
    let p = file.probe().unwrap();
    assert_eq!(p.len, 2 * MIB);
    assert!(p.allocated_bytes >= 2 * MIB);
    assert_eq!(probe(&*dir, "r"), p, "the name and the handle agree");
    file.allocate(2 * MIB, MIB).unwrap();
    assert_eq!(file.probe().unwrap().len, 3 * MIB);
    assert_eq!(errno(file.allocate(0, 0)), libc::EINVAL);
}

fn write_fill_allocates(fx: &impl Fixture) {
    let dir = home(fx);
    let file = dir.open_file("w", OpenOptions::create_new()).unwrap();
    file.write_fill(0, MIB + 7).unwrap();
    let p = file.probe().unwrap();
    assert_eq!(p.len, MIB + 7);
    assert!(p.allocated_bytes >= MIB + 7);
    file.sync_all().unwrap();
    dir.sync().unwrap();
}

fn set_len_shrinks_and_frees(fx: &impl Fixture) {
    let dir = home(fx);
    let file = dir.open_file("s", OpenOptions::create_new()).unwrap();
    file.allocate(0, 2 * MIB).unwrap();
    file.set_len(MIB).unwrap();
    let p = file.probe().unwrap();
    assert_eq!(p.len, MIB);
    assert!(p.allocated_bytes >= MIB && p.allocated_bytes < 2 * MIB);
    file.set_len(4 * MIB).unwrap();
    let grown = file.probe().unwrap();
    assert_eq!(grown.len, 4 * MIB);
    assert_eq!(
        grown.allocated_bytes, p.allocated_bytes,
        "growing allocates nothing"
    );
}

fn open_existing_file_for_writing(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("f"), MIB);
    let dir = home(fx);
    let file = dir.open_file("f", OpenOptions::write()).unwrap();
    assert_eq!(file.probe().unwrap().len, MIB, "no truncation");
    file.allocate(MIB, MIB).unwrap();
    assert_eq!(probe(&*dir, "f").len, 2 * MIB);
}

fn opening_refuses_non_regular_files(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("target"), 100);
    fx.symlink(&root.join("link"), &root.join("target"));
    fx.mkdir(&root.join("dir"));
    fx.mkfifo(&root.join("fifo"));
    fx.mksocket(&root.join("socket"));
    let dir = home(fx);
    for options in [OpenOptions::read(), OpenOptions::write()] {
        for (name, expected) in [
            ("link", libc::ELOOP),
            ("dir", libc::EISDIR),
            ("fifo", libc::ENXIO),
            ("socket", libc::ENXIO),
            ("missing", libc::ENOENT),
        ] {
            assert_eq!(
                errno(dir.open_file(name, options)),
                expected,
                "open_file {name} {options:?}"
            );
        }
        let (dev_dir, dev) = fx.char_device();
        let dev_dir = fx.fs().open_dir(&dev_dir).unwrap();
        assert_eq!(
            errno(dev_dir.open_file(dev, options)),
            libc::EINVAL,
            "open_file {dev} {options:?}"
        );
    }
    let target = probe(&*dir, "target");
    assert_eq!(target.len, 100, "the symlink's target must be untouched");
}

fn write_less_handle_refuses_writes(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("f"), 8192);
    let dir = home(fx);
    let file = dir.open_file("f", OpenOptions::read()).unwrap();
    let before = file.probe().unwrap();
    assert_eq!(before.len, 8192);
    assert_eq!(errno(file.allocate(0, MIB)), libc::EBADF);
    assert_eq!(errno(file.write_fill(0, 4096)), libc::EBADF);
    assert_eq!(errno(file.set_len(0)), libc::EINVAL);
    assert_eq!(errno(file.set_len(MIB)), libc::EINVAL);
    file.sync_all().unwrap();
    assert_eq!(file.probe().unwrap(), before, "nothing changed");
}

fn remove_file_semantics(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("target"), 100);
    fx.symlink(&root.join("link"), &root.join("target"));
    fx.mkdir(&root.join("dir"));
    fx.mkfifo(&root.join("fifo"));
    let dir = home(fx);
    dir.remove_file("link").unwrap();
    assert_eq!(dir.probe("link").unwrap(), None);
    assert_eq!(probe(&*dir, "target").len, 100);
    dir.remove_file("fifo").unwrap();
    assert_eq!(dir.probe("fifo").unwrap(), None);
    assert_eq!(errno(dir.remove_file("dir")), libc::EISDIR);
    assert_eq!(probe(&*dir, "dir").kind, FileKind::Directory);
    assert_eq!(errno(dir.remove_file("missing")), libc::ENOENT);
    dir.remove_file("target").unwrap();
    assert_eq!(dir.probe("target").unwrap(), None);
    dir.sync().unwrap();
}

fn rename_replaces_a_file_atomically(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("old"), 3 * 4096);
    let dir = home(fx);
    let new = dir.open_file("new", OpenOptions::create_new()).unwrap();
    new.allocate(0, MIB).unwrap();
    new.sync_all().unwrap();
    dir.rename("new", "old").unwrap();
    assert_eq!(dir.probe("new").unwrap(), None);
    let p = probe(&*dir, "old");
    assert_eq!((p.len, p.links), (MIB, 1));
    assert!(p.allocated_bytes >= MIB);
    // The open handle is the file now named `old`.
    new.allocate(MIB, MIB).unwrap();
    assert_eq!(probe(&*dir, "old").len, 2 * MIB);
    // Renaming onto a name of the same file does nothing.
    dir.link("old", "other").unwrap();
    dir.rename("old", "other").unwrap();
    assert_eq!(probe(&*dir, "old").links, 2);
    assert_eq!(probe(&*dir, "other").links, 2);
    dir.sync().unwrap();
}

fn rename_errors(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("f"), 1);
    fx.mkdir(&root.join("d"));
    let dir = home(fx);
    assert_eq!(errno(dir.rename("missing", "x")), libc::ENOENT);
    assert_eq!(dir.probe("x").unwrap(), None);
    assert_eq!(errno(dir.rename("f", "d")), libc::EISDIR);
    assert_eq!(probe(&*dir, "f").len, 1, "a failed rename changes nothing");
}

fn link_shares_one_file_between_two_names(fx: &impl Fixture) {
    let dir = home(fx);
    let file = dir.open_file("a", OpenOptions::create_new()).unwrap();
    file.allocate(0, 2 * MIB).unwrap();
    dir.link("a", "b").unwrap();
    let (a, b) = (probe(&*dir, "a"), probe(&*dir, "b"));
    assert_eq!((a.links, b.links), (2, 2));
    assert_eq!(a, b);
    assert_eq!(file.probe().unwrap().links, 2);
    drop(file);
    dir.remove_file("a").unwrap();
    assert_eq!(dir.probe("a").unwrap(), None);
    let b = probe(&*dir, "b");
    assert_eq!(b.links, 1);
    assert_eq!(b.len, 2 * MIB);
    assert_eq!(b.allocated_bytes, a.allocated_bytes, "the data stays");
    let again = dir.open_file("b", OpenOptions::write()).unwrap();
    again.allocate(2 * MIB, MIB).unwrap();
    assert_eq!(probe(&*dir, "b").len, 3 * MIB);
}

fn link_errors(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("a"), 10);
    fx.write_dense(&root.join("b"), 20);
    fx.mkdir(&root.join("d"));
    fx.symlink(&root.join("dangling"), &root.join("missing"));
    let dir = home(fx);
    assert_eq!(errno(dir.link("a", "b")), libc::EEXIST);
    assert_eq!(errno(dir.link("a", "dangling")), libc::EEXIST);
    assert_eq!(errno(dir.link("a", "d")), libc::EEXIST);
    assert_eq!(errno(dir.link("missing", "c")), libc::ENOENT);
    assert_eq!(errno(dir.link("d", "c")), libc::EPERM);
    assert_eq!((probe(&*dir, "a").links, probe(&*dir, "b").len), (1, 20));
    assert_eq!(dir.probe("c").unwrap(), None);
    assert_eq!(dir.probe("missing").unwrap(), None);
    // A symlink is linked, not followed.
    dir.link("dangling", "c").unwrap();
    assert_eq!(probe(&*dir, "c").kind, FileKind::Symlink);
}

fn dir_handle_survives_a_rename_of_its_directory(fx: &impl Fixture) {
    let root = fx.root();
    fx.mkdir(&root.join("before"));
    let dir = fx.fs().open_dir(&root.join("before")).unwrap();
    fx.rename(&root.join("before"), &root.join("after"));
    let file = dir.open_file("f", OpenOptions::create_new()).unwrap();
    file.allocate(0, MIB).unwrap();
    file.sync_all().unwrap();
    dir.sync().unwrap();
    assert_eq!(probe(&*dir, "f").len, MIB);
    let moved = fx.fs().open_dir(&root.join("after")).unwrap();
    assert_eq!(probe(&*moved, "f").len, MIB);
    assert_eq!(errno(fx.fs().open_dir(&root.join("before"))), libc::ENOENT);
    dir.rename("f", "g").unwrap();
    assert_eq!(probe(&*moved, "g").len, MIB);
    dir.remove_file("g").unwrap();
    assert_eq!(moved.probe("g").unwrap(), None);
    assert!(dir.space().unwrap().total_bytes > 0);
    drop(dir.try_lock().unwrap().expect("nobody holds it"));
}

fn dir_handle_of_a_removed_directory(fx: &impl Fixture) {
    let root = fx.root();
    fx.mkdir(&root.join("gone"));
    let dir = fx.fs().open_dir(&root.join("gone")).unwrap();
    fx.remove(&root.join("gone"));
    // What works on the descriptor of a removed directory…
    assert_eq!(dir.probe("x").unwrap(), None);
    assert!(dir.space().unwrap().total_bytes > 0);
    dir.sync().unwrap();
    let lock = dir.try_lock().unwrap().expect("nobody holds it");
    assert!(dir.try_lock().unwrap().is_none());
    drop(lock);
    // …and what needs a live one.
    assert_eq!(
        errno(dir.open_file("x", OpenOptions::create_new())),
        libc::ENOENT
    );
    assert_eq!(
        errno(dir.open_file("x", OpenOptions::write())),
        libc::ENOENT
    );
    assert_eq!(errno(dir.remove_file("x")), libc::ENOENT);
    assert_eq!(errno(dir.rename("x", "y")), libc::ENOENT);
    assert_eq!(errno(dir.link("x", "y")), libc::ENOENT);
}

/// Free bytes of `dir`'s filesystem once they stop moving (or after a second): XFS and
/// btrfs give an unlinked file's blocks back a little late.
fn settled_free(dir: &dyn DirHandle, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let free = dir.space().unwrap().free_bytes;
        if free >= at_least || Instant::now() > deadline {
            return free;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_handle_outlives_its_name_and_frees_on_last_drop(fx: &impl Fixture) {
    let size = 8 * MIB;
    let dir = home(fx);
    // A shared temp filesystem can move free space between two `statvfs` calls: the space
    // part gets three chances on it.
    let mut drops = Vec::new();
    for attempt in 0..3 {
        let name = format!("doomed-{attempt}");
        let file = dir.open_file(&name, OpenOptions::create_new()).unwrap();
        file.allocate(0, MIB).unwrap();
        dir.remove_file(&name).unwrap();
        assert_eq!(dir.probe(&name).unwrap(), None);
        // The handle still works on the unnamed file.
        file.allocate(0, size).unwrap();
        file.write_fill(size, 4096).unwrap();
        file.sync_all().unwrap();
        let p = file.probe().unwrap();
        assert_eq!(
            (p.kind, p.len, p.links),
            (FileKind::Regular, size + 4096, 0)
        );
        assert!(p.allocated_bytes >= size + 4096);
        let held = dir.space().unwrap().free_bytes;
        drop(file);
        let freed = settled_free(&*dir, held + size).saturating_sub(held);
        if fx.exact_space() {
            assert_eq!(freed, p.allocated_bytes, "the last drop frees every block");
            return;
        }
        drops.push(freed);
        if freed >= size / 10 * 9 {
            return;
        }
    }
    panic!("free space did not rise by 90% of {size} bytes on the last drop: {drops:?}");
}

fn dir_lock_is_exclusive_until_dropped(fx: &impl Fixture) {
    let root = fx.root();
    fx.mkdir(&root.join("other"));
    fx.symlink(&root.join("alias"), &root);
    let dir = home(fx);
    let held = dir.try_lock().unwrap().expect("nobody holds it yet");
    assert!(dir.try_lock().unwrap().is_none(), "same handle");
    let second = home(fx);
    assert!(second.try_lock().unwrap().is_none(), "another handle");
    let alias = fx.fs().open_dir(&root.join("alias")).unwrap();
    assert!(alias.try_lock().unwrap().is_none(), "the same directory");
    let other = fx.fs().open_dir(&root.join("other")).unwrap();
    drop(
        other
            .try_lock()
            .unwrap()
            .expect("another directory is free"),
    );
    // Another thread is excluded too.
    let from_thread = std::thread::scope(|s| {
        s.spawn(|| second.try_lock().unwrap().is_none())
            .join()
            .unwrap()
    });
    assert!(from_thread, "another thread got the lock while it was held");
    drop(held);
    let again = second.try_lock().unwrap().expect("released on drop");
    assert!(dir.try_lock().unwrap().is_none());
    drop(again);
    drop(dir.try_lock().unwrap().expect("released on drop"));
}

fn space_reports_the_filesystem(fx: &impl Fixture) {
    let dir = home(fx);
    let space = dir.space().unwrap();
    assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes);
    assert!(space.block_bytes > 0);
    assert_eq!(space.round_up(1), space.block_bytes);
    assert_eq!(
        errno(fx.fs().open_dir(&fx.root().join("missing"))),
        libc::ENOENT
    );
}

fn lifecycle_round_trip(fx: &impl Fixture) {
    for strategy in [Strategy::Auto, Strategy::Fallocate, Strategy::Write] {
        let cfg = ReserveConfig::with_size_bytes(2 * MIB).strategy(strategy);
        let reserve = Reserve::new(fx.fs(), fx.root(), cfg).unwrap();
        assert!(matches!(reserve.ensure().unwrap(), Ensured::Created { .. }));
        assert!(matches!(reserve.ensure().unwrap(), Ensured::Present { .. }));
        assert!(matches!(
            reserve.release().unwrap(),
            Released::Released { releasable_bytes, .. } if releasable_bytes >= 2 * MIB
        ));
        assert_eq!(reserve.release().unwrap(), Released::Absent);
    }
}

fn lifecycle_repairs_sparse_partial_and_oversized(fx: &impl Fixture) {
    let path = fx.root().join(".reserve");
    let reserve =
        Reserve::new(fx.fs(), fx.root(), ReserveConfig::with_size_bytes(2 * MIB)).unwrap();
    fx.write_sparse(&path, 2 * MIB);
    assert!(matches!(
        reserve.ensure().unwrap(),
        Ensured::ToppedUp { .. }
    ));
    reserve.release().unwrap();
    fx.write_dense(&path, MIB / 2);
    assert!(matches!(
        reserve.ensure().unwrap(),
        Ensured::ToppedUp { .. }
    ));
    reserve.release().unwrap();
    fx.write_dense(&path, 3 * MIB);
    assert!(matches!(
        reserve.ensure().unwrap(),
        Ensured::Shrunk { from_len, .. } if from_len == 3 * MIB
    ));
    let p = probe(&*home(fx), ".reserve");
    assert_eq!(p.len, 2 * MIB);
    assert!(p.allocated_bytes >= 2 * MIB);
}

fn lifecycle_refuses_symlink(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("victim"), 100);
    fx.symlink(&root.join(".reserve"), &root.join("victim"));
    let reserve = Reserve::new(fx.fs(), &root, ReserveConfig::with_size_bytes(MIB)).unwrap();
    assert!(matches!(
        reserve.ensure(),
        Err(Error::NotARegularFile {
            kind: FileKind::Symlink,
            ..
        })
    ));
    assert!(matches!(
        reserve.release(),
        Err(Error::NotARegularFile { .. })
    ));
    assert_eq!(probe(&*home(fx), "victim").len, 100);
}

fn lifecycle_home_errors(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("file"), 1);
    let missing = Reserve::new(fx.fs(), root.join("missing"), ReserveConfig::default()).unwrap();
    assert!(matches!(missing.ensure(), Err(Error::HomeMissing { .. })));
    assert!(matches!(missing.release(), Err(Error::HomeMissing { .. })));
    let file = Reserve::new(fx.fs(), root.join("file"), ReserveConfig::default()).unwrap();
    assert!(matches!(file.ensure(), Err(Error::HomeNotDirectory { .. })));
    assert!(matches!(file.status(), Err(Error::HomeNotDirectory { .. })));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sim {
            $( #[test] fn $name() { super::$name(&super::Sim::new()) } )*
        }
        mod real {
            $( #[test] fn $name() { super::$name(&super::Real::new()) } )*
        }
    };
}

conformance!(
    probe_missing_is_none,
    probe_reports_kinds,
    probe_counts_allocated_not_length,
    names_must_be_one_component,
    open_dir_errors_and_follows_symlinks,
    open_dir_resolves_once,
    create_is_exclusive,
    allocate_extends_and_allocates,
    write_fill_allocates,
    set_len_shrinks_and_frees,
    open_existing_file_for_writing,
    opening_refuses_non_regular_files,
    write_less_handle_refuses_writes,
    remove_file_semantics,
    rename_replaces_a_file_atomically,
    rename_errors,
    link_shares_one_file_between_two_names,
    link_errors,
    dir_handle_survives_a_rename_of_its_directory,
    file_handle_outlives_its_name_and_frees_on_last_drop,
    dir_lock_is_exclusive_until_dropped,
    dir_handle_of_a_removed_directory,
    space_reports_the_filesystem,
    lifecycle_round_trip,
    lifecycle_repairs_sparse_partial_and_oversized,
    lifecycle_refuses_symlink,
    lifecycle_home_errors,
);
