//! Errors no filesystem gives on demand, injected with mockall.

use std::io;

use camino::Utf8Path;
use disk_reserve::{
    DirLock, Ensured, Error, FileKind, HostFs, Operation, Probe, Reserve, ReserveConfig, Space,
    is_out_of_space,
};
use mockall::Sequence;
use mockall::predicate::eq;

mockall::mock! {
    pub Fs {}
    impl HostFs for Fs {
        fn space(&self, path: &Utf8Path) -> io::Result<Space>;
        fn probe(&self, path: &Utf8Path) -> io::Result<Option<Probe>>;
        fn create_file(&self, path: &Utf8Path) -> io::Result<()>;
        fn allocate(&self, path: &Utf8Path, offset: u64, len: u64) -> io::Result<()>;
        fn write_fill(&self, path: &Utf8Path, offset: u64, len: u64) -> io::Result<()>;
        fn set_len(&self, path: &Utf8Path, len: u64) -> io::Result<()>;
        fn sync_file(&self, path: &Utf8Path) -> io::Result<()>;
        fn sync_dir(&self, dir: &Utf8Path) -> io::Result<()>;
        fn remove_file(&self, path: &Utf8Path) -> io::Result<()>;
        fn lock_dir(&self, dir: &Utf8Path) -> io::Result<DirLock>;
    }
}

impl std::fmt::Debug for MockFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockFs")
    }
}

const SIZE: u64 = 1 << 20;
const HOME: &str = "/home";
const PATH: &str = "/home/.reserve";

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn regular(len: u64, allocated_bytes: u64) -> Option<Probe> {
    Some(Probe {
        kind: FileKind::Regular,
        len,
        allocated_bytes,
        links: 1,
    })
}

fn plenty() -> Space {
    Space {
        free_bytes: 1 << 30,
        total_bytes: 1 << 31,
        block_bytes: 4096,
    }
}

fn reserve(fs: MockFs) -> Reserve<MockFs> {
    Reserve::new(fs, HOME, ReserveConfig::with_size_bytes(SIZE)).unwrap()
}

/// Rule 5 and 6: EIO from fsync after allocating a new reserve removes the file again and
/// reports the sync error.
#[test]
fn rule5_fsync_eio_after_allocation_rolls_back_the_created_file() {
    let mut fs = MockFs::new();
    let mut seq = Sequence::new();
    fs.expect_probe()
        .times(2)
        .in_sequence(&mut seq)
        .returning(|_| Ok(None));
    fs.expect_lock_dir().returning(|_| Ok(DirLock::detached()));
    fs.expect_space().returning(|_| Ok(plenty()));
    fs.expect_create_file()
        .with(eq(Utf8Path::new(PATH)))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    fs.expect_allocate()
        .with(eq(Utf8Path::new(PATH)), eq(0), eq(SIZE))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(()));
    fs.expect_probe()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(regular(SIZE, SIZE)));
    fs.expect_sync_file()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Err(errno(libc::EIO)));
    fs.expect_remove_file()
        .with(eq(Utf8Path::new(PATH)))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    fs.expect_sync_dir().returning(|_| Ok(()));

    let err = reserve(fs).ensure().unwrap_err();
    match &err {
        Error::Io { op, source, .. } => {
            assert_eq!(*op, Operation::SyncFile);
            assert_eq!(source.raw_os_error(), Some(libc::EIO));
        }
        other => panic!("rule 5: expected the sync error, got {other:?}"),
    }
    // The mock's `times(1)` on remove_file is checked when it drops: without the
    // rollback this test fails with "Expectation called 0 times".
}

/// Rule 5: a failed top-up of a partial reserve cuts it back to its old length.
#[test]
fn rule5_fsync_eio_after_top_up_truncates_back() {
    let mut fs = MockFs::new();
    fs.expect_probe()
        .times(2)
        .returning(|_| Ok(regular(SIZE / 4, SIZE / 4)));
    fs.expect_lock_dir().returning(|_| Ok(DirLock::detached()));
    fs.expect_space().returning(|_| Ok(plenty()));
    fs.expect_allocate()
        .with(eq(Utf8Path::new(PATH)), eq(SIZE / 4), eq(SIZE - SIZE / 4))
        .times(1)
        .returning(|_, _, _| Ok(()));
    fs.expect_probe().returning(|_| Ok(regular(SIZE, SIZE)));
    fs.expect_sync_file().returning(|_| Err(errno(libc::EIO)));
    fs.expect_set_len()
        .with(eq(Utf8Path::new(PATH)), eq(SIZE / 4))
        .times(1)
        .returning(|_, _| Ok(()));
    assert!(reserve(fs).ensure().is_err());
}

/// Rule 2: EINTR from fallocate is retried, not reported and not a reason to fall back.
#[test]
fn rule2_fallocate_eintr_is_retried() {
    let mut fs = MockFs::new();
    let mut seq = Sequence::new();
    fs.expect_probe()
        .times(2)
        .in_sequence(&mut seq)
        .returning(|_| Ok(None));
    fs.expect_lock_dir().returning(|_| Ok(DirLock::detached()));
    fs.expect_space().returning(|_| Ok(plenty()));
    fs.expect_create_file()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    fs.expect_allocate()
        .times(3)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Err(errno(libc::EINTR)));
    fs.expect_allocate()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(()));
    fs.expect_probe().returning(|_| Ok(regular(SIZE, SIZE)));
    fs.expect_write_fill().never();
    fs.expect_sync_file().returning(|_| Ok(()));
    fs.expect_sync_dir().returning(|_| Ok(()));
    assert_eq!(
        reserve(fs).ensure().unwrap(),
        Ensured::Created {
            allocated_bytes: SIZE
        }
    );
}

/// Rule 4: a complete reserve needs no statvfs, so ensure succeeds even when statvfs
/// fails — and it takes no lock.
#[test]
fn rule4_complete_reserve_ensures_without_statvfs() {
    let mut fs = MockFs::new();
    fs.expect_probe().returning(|_| Ok(regular(SIZE, SIZE)));
    fs.expect_space().never();
    fs.expect_lock_dir().never();
    assert_eq!(
        reserve(fs).ensure().unwrap(),
        Ensured::Present {
            allocated_bytes: SIZE
        }
    );
}

/// Rule 11: statvfs failing on a path that needs it is a clear error naming the home.
#[test]
fn rule11_statvfs_failure_names_the_home() {
    let mut fs = MockFs::new();
    fs.expect_probe().returning(|_| Ok(None));
    fs.expect_lock_dir().returning(|_| Ok(DirLock::detached()));
    fs.expect_space().returning(|_| Err(errno(libc::EIO)));
    fs.expect_create_file().never();
    let err = reserve(fs).ensure().unwrap_err();
    assert_eq!(
        err.to_string(),
        "read free space of `/home`: Input/output error (os error 5)"
    );
}

/// Rule 8 and 11: unlink failing with EBUSY is a clear error naming the reserve path.
#[test]
fn rule11_unlink_ebusy_is_a_clear_error() {
    let mut fs = MockFs::new();
    fs.expect_lock_dir().returning(|_| Ok(DirLock::detached()));
    fs.expect_probe().returning(|_| Ok(regular(SIZE, SIZE)));
    fs.expect_space().never();
    fs.expect_remove_file()
        .returning(|_| Err(errno(libc::EBUSY)));
    let err = reserve(fs).release().unwrap_err();
    assert_eq!(
        err.to_string(),
        "remove reserve `/home/.reserve`: Device or resource busy (os error 16)"
    );
    assert_eq!(
        err.io_error().and_then(io::Error::raw_os_error),
        Some(libc::EBUSY)
    );
    assert!(!is_out_of_space(&err));
}

/// Rule 2: fallocate ENOSPC/EDQUOT/EINVAL/EIO never fall back to writing.
#[test]
fn rule2_no_fallback_on_hard_errors() {
    for code in [libc::ENOSPC, libc::EDQUOT, libc::EINVAL, libc::EIO] {
        let mut fs = MockFs::new();
        fs.expect_probe().returning(|_| Ok(None));
        fs.expect_lock_dir().returning(|_| Ok(DirLock::detached()));
        fs.expect_space().returning(|_| Ok(plenty()));
        fs.expect_create_file().returning(|_| Ok(()));
        fs.expect_allocate()
            .returning(move |_, _, _| Err(errno(code)));
        fs.expect_write_fill().never();
        fs.expect_remove_file().times(1).returning(|_| Ok(()));
        fs.expect_sync_dir().returning(|_| Ok(()));
        let err = reserve(fs).ensure().unwrap_err();
        assert_eq!(
            err.io_error().and_then(io::Error::raw_os_error),
            Some(code),
            "rule 2: errno {code} must be reported, not fallen back from"
        );
    }
}

/// Rule 2: EOPNOTSUPP, ENOTSUP and ENOSYS fall back to writing.
#[test]
fn rule2_fallback_on_unsupported() {
    for code in [libc::EOPNOTSUPP, libc::ENOTSUP, libc::ENOSYS] {
        let mut fs = MockFs::new();
        fs.expect_probe().times(2).returning(|_| Ok(None));
        fs.expect_lock_dir().returning(|_| Ok(DirLock::detached()));
        fs.expect_space().returning(|_| Ok(plenty()));
        fs.expect_create_file().returning(|_| Ok(()));
        fs.expect_allocate()
            .returning(move |_, _, _| Err(errno(code)));
        fs.expect_write_fill()
            .with(eq(Utf8Path::new(PATH)), eq(0), eq(SIZE))
            .times(1)
            .returning(|_, _, _| Ok(()));
        // The write path ends by setting the length the file already has, which gives
        // back XFS's speculative preallocation past the end.
        fs.expect_set_len()
            .with(eq(Utf8Path::new(PATH)), eq(SIZE))
            .times(1)
            .returning(|_, _| Ok(()));
        fs.expect_probe().returning(|_| Ok(regular(SIZE, SIZE)));
        fs.expect_sync_file().returning(|_| Ok(()));
        fs.expect_sync_dir().returning(|_| Ok(()));
        assert!(
            matches!(reserve(fs).ensure(), Ok(Ensured::Created { .. })),
            "rule 2: errno {code} must fall back to writing"
        );
    }
}
