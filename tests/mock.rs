//! Errors no filesystem gives on demand, injected with the mocks mockall generates from
//! the traits (the `mock` feature): `MockHostFs`, `MockDirHandle`, `MockFileHandle`.

use std::io;

use disk_reserve::{
    DeferReason, DirLock, Ensured, Error, FileKind, FsKind, MockDirHandle, MockFileHandle,
    MockHostFs, OpenOptions, Operation, Probe, Reserve, ReserveConfig, Space, is_out_of_space,
};
use mockall::Sequence;
use mockall::predicate::eq;

const SIZE: u64 = 1 << 20;
const HOME: &str = "/home";
const NAME: &str = ".reserve";
const TEMP: &str = ".reserve.replacing";

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn regular(len: u64, allocated_bytes: u64) -> Probe {
    Probe {
        kind: FileKind::Regular,
        len,
        allocated_bytes,
        links: 1,
    }
}

fn plenty() -> Space {
    Space::plain(1 << 30, 1 << 31, 4096)
}

/// A backend whose one directory is `dir`.
fn reserve(dir: MockDirHandle) -> Reserve<MockHostFs> {
    let mut fs = MockHostFs::new();
    fs.expect_open_dir()
        .times(1)
        .return_once(move |_| Ok(Box::new(dir)));
    Reserve::new(fs, HOME, ReserveConfig::with_size_bytes(SIZE)).unwrap()
}

/// A file handle that accepts being marked no-dump (best effort in the lifecycle).
fn mock_file() -> MockFileHandle {
    let mut file = MockFileHandle::new();
    file.expect_set_no_dump().returning(|| Ok(true));
    file
}

/// A directory on ext4: its files share no blocks, so no `FIEMAP` is read.
fn ext4_dir() -> MockDirHandle {
    let mut dir = MockDirHandle::new();
    dir.expect_fs_kind().returning(|| Ok(FsKind::Ext));
    dir.expect_sync_fs().returning(|| Ok(()));
    dir
}

/// A directory whose lock is free and whose disk has room.
fn roomy_dir() -> MockDirHandle {
    let mut dir = ext4_dir();
    // Under the lock, each call first looks for a replacement an interrupted call left.
    dir.expect_probe().with(eq(TEMP)).returning(|_| Ok(None));
    dir.expect_lock_within()
        .returning(|_| Ok(Some(DirLock::detached())));
    dir.expect_space().returning(|| Ok(plenty()));
    dir
}

/// `open_file` hands out `file` once, for `options`.
fn hands_out(dir: &mut MockDirHandle, options: OpenOptions, file: MockFileHandle) {
    dir.expect_open_file()
        .with(eq(NAME), eq(options))
        .times(1)
        .return_once(move |_, _| Ok(Box::new(file)));
}

/// Rule 5 and 6: EIO from fsync after allocating a new reserve removes the file again and
/// reports the sync error.
#[test]
fn rule5_fsync_eio_after_allocation_rolls_back_the_created_file() {
    let mut seq = Sequence::new();
    let mut dir = roomy_dir();
    dir.expect_probe()
        .with(eq(NAME))
        .times(2)
        .returning(|_| Ok(None));
    let mut file = mock_file();
    file.expect_allocate()
        .with(eq(0), eq(SIZE))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    file.expect_probe()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Ok(regular(SIZE, SIZE)));
    file.expect_sync_all()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Err(errno(libc::EIO)));
    hands_out(&mut dir, OpenOptions::create_new(), file);
    dir.expect_remove_file()
        .with(eq(NAME))
        .times(1)
        .returning(|_| Ok(()));
    dir.expect_sync().returning(|| Ok(()));

    let err = reserve(dir).ensure().unwrap_err();
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

/// Rule 5: a failed top-up of a partial reserve cuts it back to its old length, through
/// the descriptor it was opened as.
#[test]
fn rule5_fsync_eio_after_top_up_truncates_back() {
    let mut dir = roomy_dir();
    dir.expect_probe()
        .with(eq(NAME))
        .times(2)
        .returning(|_| Ok(Some(regular(SIZE / 4, SIZE / 4))));
    let mut file = mock_file();
    let mut seq = Sequence::new();
    // Checked on the open descriptor: still the partial reserve that was looked at.
    file.expect_probe()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Ok(regular(SIZE / 4, SIZE / 4)));
    file.expect_allocate()
        .with(eq(SIZE / 4), eq(SIZE - SIZE / 4))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    file.expect_probe()
        .in_sequence(&mut seq)
        .returning(|| Ok(regular(SIZE, SIZE)));
    file.expect_sync_all()
        .in_sequence(&mut seq)
        .returning(|| Err(errno(libc::EIO)));
    file.expect_set_len()
        .with(eq(SIZE / 4))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    hands_out(&mut dir, OpenOptions::write(), file);
    assert!(reserve(dir).ensure().is_err());
}

/// Rule 7 and 13: a reserve that gained a second name between the look and the open is
/// never written through the descriptor; ensure looks again.
#[test]
fn rule7_file_linked_between_probe_and_open_is_not_written() {
    let mut dir = roomy_dir();
    let mut seq = Sequence::new();
    dir.expect_probe()
        .with(eq(NAME))
        .times(2)
        .in_sequence(&mut seq)
        .returning(|_| Ok(Some(regular(2 * SIZE, 2 * SIZE))));
    let mut linked = mock_file();
    linked.expect_probe().returning(|| {
        Ok(Probe {
            links: 2,
            ..regular(2 * SIZE, 2 * SIZE)
        })
    });
    linked.expect_set_len().never();
    hands_out(&mut dir, OpenOptions::write(), linked);
    // Looked at again: now it is a hard link, so a fresh reserve is built beside it and
    // renamed over the name; the linked file is never opened again.
    dir.expect_probe()
        .with(eq(NAME))
        .in_sequence(&mut seq)
        .returning(|_| {
            Ok(Some(Probe {
                links: 2,
                ..regular(2 * SIZE, 2 * SIZE)
            }))
        });
    dir.expect_remove_file().never();
    let mut fresh = mock_file();
    fresh.expect_allocate().returning(|_, _| Ok(()));
    fresh.expect_probe().returning(|| Ok(regular(SIZE, SIZE)));
    fresh.expect_sync_all().returning(|| Ok(()));
    dir.expect_open_file()
        .with(eq(TEMP), eq(OpenOptions::create_new()))
        .times(1)
        .return_once(move |_, _| Ok(Box::new(fresh)));
    dir.expect_rename()
        .with(eq(TEMP), eq(NAME))
        .times(1)
        .returning(|_, _| Ok(()));
    dir.expect_sync().returning(|| Ok(()));
    assert_eq!(
        reserve(dir).ensure().unwrap(),
        Ensured::Created {
            allocated_bytes: SIZE
        }
    );
}

/// Rule 2: EINTR from fallocate is retried, not reported and not a reason to fall back.
#[test]
fn rule2_fallocate_eintr_is_retried() {
    let mut dir = roomy_dir();
    dir.expect_probe()
        .with(eq(NAME))
        .times(2)
        .returning(|_| Ok(None));
    let mut file = mock_file();
    let mut seq = Sequence::new();
    file.expect_allocate()
        .times(3)
        .in_sequence(&mut seq)
        .returning(|_, _| Err(errno(libc::EINTR)));
    file.expect_allocate()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    file.expect_probe().returning(|| Ok(regular(SIZE, SIZE)));
    file.expect_write_fill().never();
    file.expect_sync_all().returning(|| Ok(()));
    hands_out(&mut dir, OpenOptions::create_new(), file);
    dir.expect_sync().returning(|| Ok(()));
    assert_eq!(
        reserve(dir).ensure().unwrap(),
        Ensured::Created {
            allocated_bytes: SIZE
        }
    );
}

/// Rule 4: a complete reserve needs no statvfs, so ensure succeeds even when statvfs
/// fails — and it takes no lock.
#[test]
fn rule4_complete_reserve_ensures_without_statvfs() {
    let mut dir = ext4_dir();
    dir.expect_probe()
        .returning(|_| Ok(Some(regular(SIZE, SIZE))));
    dir.expect_space().never();
    dir.expect_lock_within().never();
    assert_eq!(
        reserve(dir).ensure().unwrap(),
        Ensured::Present {
            allocated_bytes: SIZE
        }
    );
}

/// Rule 11: statvfs failing on a path that needs it is a clear error naming the home.
#[test]
fn rule11_statvfs_failure_names_the_home() {
    let mut dir = ext4_dir();
    dir.expect_probe().returning(|_| Ok(None));
    dir.expect_lock_within()
        .returning(|_| Ok(Some(DirLock::detached())));
    dir.expect_space().returning(|| Err(errno(libc::EIO)));
    dir.expect_open_file().never();
    let err = reserve(dir).ensure().unwrap_err();
    assert_eq!(err.to_string(), "read free space of `/home`");
    assert_eq!(
        std::error::Error::source(&err).map(ToString::to_string),
        Some("Input/output error (os error 5)".to_owned())
    );
}

/// Rule 8 and 11: unlink failing with EBUSY is a clear error naming the reserve path.
#[test]
fn rule11_unlink_ebusy_is_a_clear_error() {
    let mut dir = ext4_dir();
    dir.expect_lock_within()
        .returning(|_| Ok(Some(DirLock::detached())));
    dir.expect_probe().with(eq(TEMP)).returning(|_| Ok(None));
    dir.expect_probe()
        .with(eq(NAME))
        .returning(|_| Ok(Some(regular(SIZE, SIZE))));
    // Read only to measure what the release gave back (rule 8); none here.
    dir.expect_space().returning(|| Ok(plenty()));
    dir.expect_remove_file()
        .with(eq(NAME))
        .times(1)
        .returning(|_| Err(errno(libc::EBUSY)));
    let err = reserve(dir).release().unwrap_err();
    assert_eq!(err.to_string(), "remove reserve `/home/.reserve`");
    assert_eq!(
        err.io_error().and_then(io::Error::raw_os_error),
        Some(libc::EBUSY)
    );
    assert!(!is_out_of_space(&err));
}

/// Rule 2: fallocate ENOSPC/EDQUOT/EINVAL/EIO never fall back to writing. EINVAL and
/// EIO are errors; ENOSPC and EDQUOT roll back and defer (rule 4), with the reason.
#[test]
fn rule2_no_fallback_on_hard_errors() {
    for (code, reason) in [
        (libc::ENOSPC, DeferReason::RanOut),
        (libc::EDQUOT, DeferReason::Quota),
    ] {
        let mut dir = roomy_dir();
        dir.expect_probe().with(eq(NAME)).returning(|_| Ok(None));
        let mut file = mock_file();
        file.expect_allocate()
            .returning(move |_, _| Err(errno(code)));
        file.expect_write_fill().never();
        hands_out(&mut dir, OpenOptions::create_new(), file);
        dir.expect_remove_file().times(1).returning(|_| Ok(()));
        dir.expect_sync().returning(|| Ok(()));
        let outcome = reserve(dir).ensure().unwrap();
        assert!(
            matches!(outcome, Ensured::Deferred { reason: r, .. } if r == reason),
            "rule 4: errno {code} is rolled back and deferred, got {outcome:?}"
        );
    }
    for code in [libc::EINVAL, libc::EIO] {
        let mut dir = roomy_dir();
        dir.expect_probe().with(eq(NAME)).returning(|_| Ok(None));
        let mut file = mock_file();
        file.expect_allocate()
            .returning(move |_, _| Err(errno(code)));
        file.expect_write_fill().never();
        hands_out(&mut dir, OpenOptions::create_new(), file);
        dir.expect_remove_file().times(1).returning(|_| Ok(()));
        dir.expect_sync().returning(|| Ok(()));
        let err = reserve(dir).ensure().unwrap_err();
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
        let mut dir = roomy_dir();
        dir.expect_probe()
            .with(eq(NAME))
            .times(2)
            .returning(|_| Ok(None));
        let mut file = mock_file();
        file.expect_allocate()
            .returning(move |_, _| Err(errno(code)));
        file.expect_write_fill()
            .with(eq(0), eq(SIZE))
            .times(1)
            .returning(|_, _| Ok(()));
        // The write path ends by setting the length the file already has, which gives
        // back XFS's speculative preallocation past the end.
        file.expect_set_len()
            .with(eq(SIZE))
            .times(1)
            .returning(|_| Ok(()));
        file.expect_probe().returning(|| Ok(regular(SIZE, SIZE)));
        file.expect_sync_all().returning(|| Ok(()));
        hands_out(&mut dir, OpenOptions::create_new(), file);
        dir.expect_sync().returning(|| Ok(()));
        assert!(
            matches!(reserve(dir).ensure(), Ok(Ensured::Created { .. })),
            "rule 2: errno {code} must fall back to writing"
        );
    }
}

/// Rule 2: trimming after the write path is housekeeping: a filesystem that refuses it
/// (fusefat says EPERM to a same-length ftruncate) does not fail the reserve.
#[test]
fn rule2_refused_trim_after_writing_does_not_fail_the_reserve() {
    let mut dir = roomy_dir();
    dir.expect_probe()
        .with(eq(NAME))
        .times(2)
        .returning(|_| Ok(None));
    let mut file = mock_file();
    file.expect_allocate()
        .returning(|_, _| Err(errno(libc::EOPNOTSUPP)));
    file.expect_write_fill().returning(|_, _| Ok(()));
    file.expect_set_len()
        .with(eq(SIZE))
        .times(1)
        .returning(|_| Err(errno(libc::EPERM)));
    file.expect_probe().returning(|| Ok(regular(SIZE, SIZE)));
    file.expect_sync_all().returning(|| Ok(()));
    hands_out(&mut dir, OpenOptions::create_new(), file);
    dir.expect_sync().returning(|| Ok(()));
    dir.expect_remove_file().never();
    assert_eq!(
        reserve(dir).ensure().unwrap(),
        Ensured::Created {
            allocated_bytes: SIZE
        }
    );
}

/// Rule 7 and 13: the reserve replaced by a symlink between the look and the open (the
/// open says ELOOP) is looked at again and refused, never reported as an open error.
#[test]
fn rule7_file_replaced_by_a_symlink_between_probe_and_open_is_refused() {
    let mut dir = roomy_dir();
    let mut seq = Sequence::new();
    dir.expect_probe()
        .with(eq(NAME))
        .times(2)
        .in_sequence(&mut seq)
        .returning(|_| Ok(Some(regular(SIZE / 2, SIZE / 2))));
    dir.expect_open_file()
        .with(eq(NAME), eq(OpenOptions::write()))
        .times(1)
        .returning(|_, _| Err(errno(libc::ELOOP)));
    dir.expect_probe()
        .with(eq(NAME))
        .in_sequence(&mut seq)
        .returning(|_| {
            Ok(Some(Probe {
                kind: FileKind::Symlink,
                ..regular(10, 0)
            }))
        });
    let err = reserve(dir).ensure().unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotARegularFile {
                kind: FileKind::Symlink,
                ..
            }
        ),
        "rule 7: {err:?}"
    );
}
