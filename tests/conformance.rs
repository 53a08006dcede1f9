//! One conformance suite, two backends: every test body below runs against `SimFs` and
//! against `RealFs` in a temporary directory, so the simulator is held to the kernel's
//! behaviour. Where they disagree, the kernel is right and `SimFs` is fixed.

use std::io;

use camino::{Utf8Path, Utf8PathBuf};
use disk_reserve::{
    Ensured, Error, FileKind, HostFs, RealFs, Released, Reserve, ReserveConfig, SimFs, Strategy,
};

const MIB: u64 = 1 << 20;

/// A backend plus the setup steps a test needs that the `HostFs` trait does not offer.
trait Fixture {
    type Fs: HostFs + Clone + 'static;
    fn fs(&self) -> Self::Fs;
    fn root(&self) -> Utf8PathBuf;
    fn symlink(&self, link: &Utf8Path, target: &Utf8Path);
    fn mkfifo(&self, path: &Utf8Path);
    fn mkdir(&self, path: &Utf8Path);
    fn write_dense(&self, path: &Utf8Path, len: u64);
    fn write_sparse(&self, path: &Utf8Path, len: u64);
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
    fn mkdir(&self, path: &Utf8Path) {
        self.0.mkdir_all(path).unwrap();
    }
    fn write_dense(&self, path: &Utf8Path, len: u64) {
        self.0.write_file(path, len).unwrap();
    }
    fn write_sparse(&self, path: &Utf8Path, len: u64) {
        self.0.write_sparse(path, len).unwrap();
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
    fn mkdir(&self, path: &Utf8Path) {
        std::fs::create_dir_all(path).unwrap();
    }
    fn write_dense(&self, path: &Utf8Path, len: u64) {
        std::fs::write(path, vec![0xA5; len as usize]).unwrap();
    }
    fn write_sparse(&self, path: &Utf8Path, len: u64) {
        std::fs::File::create(path).unwrap().set_len(len).unwrap();
    }
}

fn errno<T: std::fmt::Debug>(result: io::Result<T>) -> i32 {
    result
        .expect_err("expected an error")
        .raw_os_error()
        .expect("errors keep the raw errno")
}

fn probe_missing_is_none(fx: &impl Fixture) {
    assert_eq!(fx.fs().probe(&fx.root().join("nothing")).unwrap(), None);
}

fn probe_reports_kinds(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("file"), 10);
    fx.mkdir(&root.join("dir"));
    fx.symlink(&root.join("link"), &root.join("file"));
    fx.mkfifo(&root.join("fifo"));
    let fs = fx.fs();
    let kind = |name: &str| fs.probe(&root.join(name)).unwrap().unwrap().kind;
    assert_eq!(kind("file"), FileKind::Regular);
    assert_eq!(kind("dir"), FileKind::Directory);
    assert_eq!(kind("link"), FileKind::Symlink);
    assert_eq!(kind("fifo"), FileKind::Fifo);
}

fn probe_counts_allocated_not_length(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("dense"), MIB);
    fx.write_sparse(&root.join("sparse"), MIB);
    let fs = fx.fs();
    let dense = fs.probe(&root.join("dense")).unwrap().unwrap();
    let sparse = fs.probe(&root.join("sparse")).unwrap().unwrap();
    assert_eq!((dense.len, sparse.len), (MIB, MIB));
    assert!(dense.allocated_bytes >= MIB);
    assert_eq!(sparse.allocated_bytes, 0);
}

fn probe_under_a_file_is_enotdir(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("file"), 1);
    assert_eq!(errno(fx.fs().probe(&root.join("file/x"))), libc::ENOTDIR);
}

fn create_is_exclusive(fx: &impl Fixture) {
    let root = fx.root();
    let fs = fx.fs();
    fs.create_file(&root.join("a")).unwrap();
    assert_eq!(errno(fs.create_file(&root.join("a"))), libc::EEXIST);
    fx.symlink(&root.join("dangling"), &root.join("missing"));
    assert_eq!(errno(fs.create_file(&root.join("dangling"))), libc::EEXIST);
    assert_eq!(fs.probe(&root.join("missing")).unwrap(), None);
    assert_eq!(errno(fs.create_file(&root.join("no/parent"))), libc::ENOENT);
}

fn allocate_extends_and_allocates(fx: &impl Fixture) {
    let path = fx.root().join("r");
    let fs = fx.fs();
    fs.create_file(&path).unwrap();
    fs.allocate(&path, 0, 2 * MIB).unwrap();
    let p = fs.probe(&path).unwrap().unwrap();
    assert_eq!(p.len, 2 * MIB);
    assert!(p.allocated_bytes >= 2 * MIB);
    fs.allocate(&path, 2 * MIB, MIB).unwrap();
    assert_eq!(fs.probe(&path).unwrap().unwrap().len, 3 * MIB);
    assert_eq!(errno(fs.allocate(&path, 0, 0)), libc::EINVAL);
}

fn write_fill_allocates(fx: &impl Fixture) {
    let path = fx.root().join("w");
    let fs = fx.fs();
    fs.create_file(&path).unwrap();
    fs.write_fill(&path, 0, MIB + 7).unwrap();
    let p = fs.probe(&path).unwrap().unwrap();
    assert_eq!(p.len, MIB + 7);
    assert!(p.allocated_bytes >= MIB + 7);
}

fn set_len_shrinks_and_frees(fx: &impl Fixture) {
    let path = fx.root().join("s");
    let fs = fx.fs();
    fs.create_file(&path).unwrap();
    fs.allocate(&path, 0, 2 * MIB).unwrap();
    fs.set_len(&path, MIB).unwrap();
    let p = fs.probe(&path).unwrap().unwrap();
    assert_eq!(p.len, MIB);
    assert!(p.allocated_bytes >= MIB && p.allocated_bytes < 2 * MIB);
    fs.set_len(&path, 4 * MIB).unwrap();
    let grown = fs.probe(&path).unwrap().unwrap();
    assert_eq!(grown.len, 4 * MIB);
    assert_eq!(
        grown.allocated_bytes, p.allocated_bytes,
        "growing allocates nothing"
    );
}

fn opening_ops_refuse_non_regular_files(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("target"), 100);
    fx.symlink(&root.join("link"), &root.join("target"));
    fx.mkdir(&root.join("dir"));
    fx.mkfifo(&root.join("fifo"));
    let fs = fx.fs();
    for (name, expected) in [
        ("link", libc::ELOOP),
        ("dir", libc::EISDIR),
        ("fifo", libc::ENXIO),
        ("missing", libc::ENOENT),
    ] {
        let path = root.join(name);
        assert_eq!(
            errno(fs.allocate(&path, 0, MIB)),
            expected,
            "allocate {name}"
        );
        assert_eq!(
            errno(fs.write_fill(&path, 0, MIB)),
            expected,
            "write_fill {name}"
        );
        assert_eq!(errno(fs.set_len(&path, 0)), expected, "set_len {name}");
    }
    let target = fs.probe(&root.join("target")).unwrap().unwrap();
    assert_eq!(target.len, 100, "the symlink's target must be untouched");
}

fn remove_file_semantics(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("target"), 100);
    fx.symlink(&root.join("link"), &root.join("target"));
    fx.mkdir(&root.join("dir"));
    let fs = fx.fs();
    fs.remove_file(&root.join("link")).unwrap();
    assert_eq!(fs.probe(&root.join("link")).unwrap(), None);
    assert_eq!(fs.probe(&root.join("target")).unwrap().unwrap().len, 100);
    assert_eq!(errno(fs.remove_file(&root.join("dir"))), libc::EISDIR);
    assert_eq!(errno(fs.remove_file(&root.join("missing"))), libc::ENOENT);
}

fn dir_ops_need_a_directory(fx: &impl Fixture) {
    let root = fx.root();
    fx.write_dense(&root.join("file"), 1);
    let fs = fx.fs();
    fs.sync_dir(&root).unwrap();
    assert_eq!(errno(fs.sync_dir(&root.join("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs.lock_dir(&root.join("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs.lock_dir(&root.join("missing"))), libc::ENOENT);
    drop(fs.lock_dir(&root).unwrap());
    drop(fs.lock_dir(&root).unwrap()); // released on drop
}

fn space_reports_the_filesystem(fx: &impl Fixture) {
    let space = fx.fs().space(&fx.root()).unwrap();
    assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes);
    assert_eq!(
        errno(fx.fs().space(&fx.root().join("missing"))),
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
            Released::Released { freed_bytes } if freed_bytes >= 2 * MIB
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
    let p = fx.fs().probe(&path).unwrap().unwrap();
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
    assert_eq!(
        fx.fs().probe(&root.join("victim")).unwrap().unwrap().len,
        100
    );
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
    probe_under_a_file_is_enotdir,
    create_is_exclusive,
    allocate_extends_and_allocates,
    write_fill_allocates,
    set_len_shrinks_and_frees,
    opening_ops_refuse_non_regular_files,
    remove_file_semantics,
    dir_ops_need_a_directory,
    space_reports_the_filesystem,
    lifecycle_round_trip,
    lifecycle_repairs_sparse_partial_and_oversized,
    lifecycle_refuses_symlink,
    lifecycle_home_errors,
);
