//! The rules (the README lists them under "The rules"), each shown by tests that fail
//! when the rule is broken; rule 13 (the anchored home) is shown on real mounts in
//! `cli/tests/real_mount.rs`. Test names start with the rule they guard. Most run on `SimFs`; where the kernel's own
//! behaviour is the point, on `RealFs` in a temporary directory.

use std::io;

use camino::{Utf8Path, Utf8PathBuf};
use disk_reserve::{
    AllocateMode, CancelToken, Condition, DeferReason, Ensured, Error, FileKind, HostFs, Plan,
    Probe, RealFs, Released, Reserve, ReserveConfig, SimFs, SimOp, SizeSpec, Strategy,
    WRITE_CHUNK_BYTES, is_out_of_space,
};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 4 * MIB;
const HOME: &str = "/srv/app";
const PATH: &str = "/srv/app/.reserve";

fn sim(capacity: u64) -> SimFs {
    SimFs::with_home(capacity, HOME)
}

fn reserve_on(fs: &SimFs, config: ReserveConfig) -> Reserve<SimFs> {
    Reserve::new(fs.clone(), HOME, config).unwrap()
}

fn config() -> ReserveConfig {
    ReserveConfig::with_size_bytes(SIZE)
}

/// The test's own eyes: what is at a path, without counting a call or firing a fault.
trait Look {
    fn look(&self, path: &str) -> Option<Probe>;
}

impl Look for SimFs {
    fn look(&self, path: &str) -> Option<Probe> {
        self.lookup(path).unwrap()
    }
}

impl Look for RealFs {
    fn look(&self, path: &str) -> Option<Probe> {
        let path = Utf8Path::new(path);
        let dir = self.open_dir(path.parent().unwrap()).unwrap();
        dir.probe(path.file_name().unwrap()).unwrap()
    }
}

fn probe(fs: &impl Look, path: &str) -> Option<Probe> {
    fs.look(path)
}

fn assert_complete(fs: &impl Look, path: &str, size: u64) {
    let p = probe(fs, path).expect("reserve must exist");
    assert_eq!(p.kind, FileKind::Regular);
    assert_eq!(p.len, size, "length must equal the size");
    assert!(
        p.allocated_bytes >= size,
        "rule 1: allocated {} < size {size}",
        p.allocated_bytes
    );
}

fn tempdir() -> (tempfile::TempDir, Utf8PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = Utf8PathBuf::try_from(dir.path().to_path_buf()).unwrap();
    (dir, path)
}

// ---------------------------------------------------------------- rule 1

/// Rule 1: a sparse file of the right length (`truncate -s`) is not a reserve: ensure
/// fills it.
#[test]
fn rule1_sparse_file_of_right_length_is_filled_sim() {
    let fs = sim(64 * MIB);
    fs.write_sparse(Utf8Path::new(PATH), SIZE).unwrap();
    let outcome = reserve_on(&fs, config()).ensure().unwrap();
    assert_eq!(
        outcome,
        Ensured::ToppedUp {
            from_allocated_bytes: 0,
            allocated_bytes: SIZE
        },
        "rule 1: a sparse reserve must be filled"
    );
    assert_complete(&fs, PATH, SIZE);
}

/// Rule 1 on the kernel: `set_len` makes a sparse file; ensure really allocates it.
#[test]
fn rule1_sparse_file_of_right_length_is_filled_real() {
    let (_dir, home) = tempdir();
    let path = home.join(".reserve");
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    let before = probe(&RealFs::new(), path.as_str()).unwrap();
    assert!(before.allocated_bytes < SIZE, "setup: file must be sparse");
    let reserve = Reserve::new(RealFs::new(), &home, config()).unwrap();
    assert!(matches!(
        reserve.ensure().unwrap(),
        Ensured::ToppedUp { .. }
    ));
    assert_complete(&RealFs::new(), path.as_str(), SIZE);
}

/// Rule 1: status calls a sparse reserve sparse and plans to top it up.
#[test]
fn rule1_status_reports_sparse() {
    let fs = sim(64 * MIB);
    fs.write_sparse(Utf8Path::new(PATH), SIZE).unwrap();
    let status = reserve_on(&fs, config()).status().unwrap();
    assert_eq!(status.condition, Condition::Sparse);
    assert_eq!(status.plan, Plan::Refill { from_len: SIZE });
}

// ---------------------------------------------------------------- rule 2

/// Rule 2: EOPNOTSUPP, ENOTSUP and ENOSYS from fallocate fall back to writing data.
#[test]
fn rule2_unsupported_fallocate_falls_back_to_writing() {
    for errno in [libc::EOPNOTSUPP, libc::ENOTSUP, libc::ENOSYS] {
        let fs = sim(64 * MIB);
        fs.set_allocate(AllocateMode::Unsupported { errno });
        let outcome = reserve_on(&fs, config()).ensure().unwrap();
        assert_eq!(
            outcome,
            Ensured::Created {
                allocated_bytes: SIZE
            }
        );
        assert!(
            fs.calls(SimOp::WriteFill) > 0,
            "rule 2: errno {errno} must fall back"
        );
        assert_complete(&fs, PATH, SIZE);
    }
}

/// Rule 2: fallocate that succeeds without allocating (ZFS) is followed by writing.
#[test]
fn rule2_fallocate_without_blocks_falls_back_to_writing() {
    let fs = sim(64 * MIB);
    fs.set_allocate(AllocateMode::NoBlocks);
    assert_eq!(
        reserve_on(&fs, config()).ensure().unwrap(),
        Ensured::Created {
            allocated_bytes: SIZE
        }
    );
    assert_complete(&fs, PATH, SIZE);
}

/// Rule 2: with the fallocate strategy, blocks that do not appear are an error, and the
/// file is removed again.
#[test]
fn rule2_fallocate_strategy_reports_missing_blocks() {
    let fs = sim(64 * MIB);
    fs.set_allocate(AllocateMode::NoBlocks);
    let before = fs.snapshot();
    let err = reserve_on(&fs, config().strategy(Strategy::Fallocate))
        .ensure()
        .unwrap_err();
    assert!(matches!(err, Error::NotAllocated { .. }), "{err:?}");
    assert_eq!(fs.snapshot(), before);
}

/// Rule 2: ENOSPC, EDQUOT, EINVAL and EIO from fallocate are never followed by writing
/// and leave nothing behind; EINVAL and EIO are reported, ENOSPC and EDQUOT defer with
/// their reason (rule 4: "not now").
#[test]
fn rule2_hard_fallocate_errors_do_not_fall_back() {
    for errno in [libc::ENOSPC, libc::EDQUOT, libc::EINVAL, libc::EIO] {
        let fs = sim(64 * MIB);
        let before = fs.snapshot();
        fs.fail_next(SimOp::Allocate, errno);
        match reserve_on(&fs, config()).ensure() {
            Ok(Ensured::Deferred { reason, .. }) => assert_eq!(
                reason,
                if errno == libc::EDQUOT {
                    DeferReason::Quota
                } else {
                    DeferReason::RanOut
                },
                "rule 4: errno {errno}"
            ),
            Ok(other) => panic!("rule 2: errno {errno} gave {other:?}"),
            Err(err) => assert_eq!(
                err.io_error().and_then(io::Error::raw_os_error),
                Some(errno)
            ),
        }
        assert_eq!(
            fs.calls(SimOp::WriteFill),
            0,
            "rule 2: errno {errno} fell back"
        );
        assert_eq!(fs.snapshot(), before, "rule 5: errno {errno} left a trace");
    }
}

/// Rule 2 and 4: a quota is not a reason to write instead, and not an error: the
/// allocation is rolled back and ensure defers with the reason `quota`.
#[test]
fn rule2_quota_exceeded_defers_not_written_around() {
    let fs = sim(64 * MIB);
    fs.set_quota(Some(SIZE / 2));
    let outcome = reserve_on(&fs, config()).ensure().unwrap();
    assert!(
        matches!(
            outcome,
            Ensured::Deferred {
                reason: DeferReason::Quota,
                ..
            }
        ),
        "rule 4: a quota is \"not now\": {outcome:?}"
    );
    assert_eq!(fs.calls(SimOp::WriteFill), 0);
    assert_eq!(probe(&fs, PATH), None);
}

// ---------------------------------------------------------------- rule 3

/// Rule 3: the write path's bytes are incompressible: no two 4 KiB blocks equal, none all
/// zeros (read back from a real file).
#[test]
fn rule3_write_strategy_writes_incompressible_blocks() {
    let (_dir, home) = tempdir();
    let reserve = Reserve::new(RealFs::new(), &home, config().strategy(Strategy::Write)).unwrap();
    assert!(matches!(reserve.ensure().unwrap(), Ensured::Created { .. }));
    let data = std::fs::read(home.join(".reserve")).unwrap();
    assert_eq!(data.len() as u64, SIZE);
    let mut seen = std::collections::HashSet::new();
    for block in data.chunks(4096) {
        assert!(block.iter().any(|&b| b != 0), "rule 3: an all-zero block");
        assert!(seen.insert(block), "rule 3: two equal 4 KiB blocks");
    }
}

// ---------------------------------------------------------------- rule 4

/// Rule 4: one byte below `missing + headroom` defers and changes nothing; exactly at it
/// allocates.
#[test]
fn rule4_headroom_boundary_on_a_filesystem() {
    let headroom = 2 * MIB;
    let cfg = config().headroom(SizeSpec::Bytes(headroom));

    let fs = sim(64 * MIB);
    fs.set_free(SIZE + headroom - 4096).unwrap(); // SimFs counts whole 4 KiB blocks
    let before = fs.snapshot();
    let outcome = reserve_on(&fs, cfg.clone()).ensure().unwrap();
    assert_eq!(
        outcome,
        Ensured::Deferred {
            free_bytes: SIZE + headroom - 4096,
            needed_bytes: SIZE + headroom,
            reason: DeferReason::LowSpace,
        },
        "rule 4: below missing + headroom must defer"
    );
    assert_eq!(fs.snapshot(), before, "rule 4: a deferral changes nothing");

    let fs = sim(64 * MIB);
    fs.set_free(SIZE + headroom).unwrap();
    assert!(matches!(
        reserve_on(&fs, cfg).ensure().unwrap(),
        Ensured::Created { .. }
    ));
    assert_eq!(
        fs.free_bytes(),
        headroom,
        "rule 4: exactly the headroom is left"
    );
}

/// Rule 4 with a size that is not a whole number of blocks: what ensure leaves free is
/// still at least the headroom.
#[test]
fn rule4_unaligned_size_never_goes_below_headroom() {
    for free in [8192, 12288, 16384] {
        let fs = sim(64 * MIB);
        fs.set_free(free).unwrap();
        let cfg = ReserveConfig::with_size_bytes(5000).headroom(SizeSpec::Bytes(4096));
        let outcome = reserve_on(&fs, cfg).ensure().unwrap();
        if !matches!(outcome, Ensured::Deferred { .. }) {
            assert!(
                fs.free_bytes() >= 4096,
                "rule 4: {free} free, {outcome:?} left {} < headroom",
                fs.free_bytes()
            );
        }
        assert_eq!(free >= 12288, matches!(outcome, Ensured::Created { .. }));
    }
}

/// Rule 4: the default headroom is one reserve size: a missing reserve is laid down only
/// when `free >= 2 × size`.
#[test]
fn rule4_default_headroom_is_one_size() {
    let fs = sim(64 * MIB);
    fs.set_free(2 * SIZE - 4096).unwrap();
    assert!(matches!(
        reserve_on(&fs, config()).ensure().unwrap(),
        Ensured::Deferred { .. }
    ));
    fs.free_external(4096);
    assert!(matches!(
        reserve_on(&fs, config()).ensure().unwrap(),
        Ensured::Created { .. }
    ));
}

/// Rule 4: a partial reserve needs only its missing bytes plus the headroom.
#[test]
fn rule4_partial_reserve_needs_only_what_is_missing() {
    let fs = sim(64 * MIB);
    fs.write_file(Utf8Path::new(PATH), SIZE / 2).unwrap();
    fs.set_free(SIZE / 2 + SIZE).unwrap();
    assert_eq!(
        reserve_on(&fs, config()).ensure().unwrap(),
        Ensured::ToppedUp {
            from_allocated_bytes: SIZE / 2,
            allocated_bytes: SIZE
        }
    );
    assert_eq!(fs.free_bytes(), SIZE);
}

/// Rule 4: a present, complete reserve needs no statvfs and no lock.
#[test]
fn rule4_complete_reserve_needs_no_statvfs() {
    let fs = sim(64 * MIB);
    let reserve = reserve_on(&fs, config());
    reserve.ensure().unwrap();
    let (space, locks) = (fs.calls(SimOp::Space), fs.calls(SimOp::LockDir));
    assert!(matches!(reserve.ensure().unwrap(), Ensured::Present { .. }));
    assert_eq!(
        fs.calls(SimOp::Space),
        space,
        "rule 4: statvfs on the no-op path"
    );
    assert_eq!(
        fs.calls(SimOp::LockDir),
        locks,
        "rule 10: lock on the no-op path"
    );
}

// ---------------------------------------------------------------- rule 5

/// The starting states the failure tests run from.
fn starting_states() -> Vec<(&'static str, SimFs)> {
    let absent = sim(64 * MIB);
    let partial = sim(64 * MIB);
    partial.write_file(Utf8Path::new(PATH), SIZE / 4).unwrap();
    let sparse = sim(64 * MIB);
    sparse.write_sparse(Utf8Path::new(PATH), SIZE).unwrap();
    let oversized = sim(64 * MIB);
    oversized.write_file(Utf8Path::new(PATH), 2 * SIZE).unwrap();
    vec![
        ("absent", absent),
        ("partial", partial),
        ("sparse", sparse),
        ("oversized", oversized),
    ]
}

const STRATEGIES: [Strategy; 3] = [Strategy::Auto, Strategy::Fallocate, Strategy::Write];

/// Rule 5: an EIO injected at every call of every operation either leaves the disk exactly
/// as found or is an error-free outcome; a failed ensure never consumes space.
#[test]
fn rule5_failure_at_every_step_leaves_the_disk_as_found() {
    // Every operation but unlink: ensure only unlinks to roll back, and a rollback that
    // itself fails cannot restore anything (it is logged and the first error returned).
    let ops = SimOp::ALL
        .iter()
        .copied()
        .filter(|op| *op != SimOp::RemoveFile);
    let mut failures_seen = 0;
    for strategy in STRATEGIES {
        for (name, _) in starting_states() {
            for op in ops.clone() {
                for nth in 1..=3 {
                    let fs = starting_states()
                        .into_iter()
                        .find(|(n, _)| *n == name)
                        .unwrap()
                        .1;
                    let before = fs.snapshot();
                    let free_before = fs.free_bytes();
                    fs.fail_nth(op, nth, libc::EIO);
                    let reserve = reserve_on(&fs, config().strategy(strategy));
                    match reserve.ensure() {
                        Err(err) => {
                            failures_seen += 1;
                            // A shrink that completed before the failure is kept: it only
                            // gave space back. Everything else must be exactly as found.
                            let shrunk_first = name == "oversized"
                                && probe(&fs, PATH).is_some_and(|p| p.len == SIZE);
                            if !shrunk_first {
                                assert_eq!(
                                    fs.snapshot(),
                                    before,
                                    "rule 5: {strategy:?} from {name}, EIO at {op:?} #{nth}: {err}"
                                );
                            }
                            assert!(
                                fs.free_bytes() >= free_before,
                                "rule 5: a failed ensure consumed space"
                            );
                        }
                        Ok(outcome) => {
                            if !matches!(outcome, Ensured::Deferred { .. }) {
                                assert_complete(&fs, PATH, SIZE);
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures_seen > 50,
        "the injected faults must hit: {failures_seen}"
    );
}

/// Rule 5: a write path that runs out of space mid-way is cut back to the old length.
#[test]
fn rule5_write_running_out_of_space_is_rolled_back() {
    let fs = sim(64 * MIB);
    fs.write_file(Utf8Path::new(PATH), SIZE / 4).unwrap();
    let before = probe(&fs, PATH);
    // Enough free to pass the headroom check; the write itself then meets ENOSPC.
    fs.fail_next(SimOp::WriteFill, libc::ENOSPC);
    let result = reserve_on(
        &fs,
        config()
            .strategy(Strategy::Write)
            .headroom(SizeSpec::Bytes(0)),
    )
    .ensure();
    if let Ok(Ensured::Deferred {
        reason: DeferReason::RanOut,
        ..
    }) = result
    {
        assert_eq!(
            probe(&fs, PATH),
            before,
            "rule 5: not cut back to the old length"
        );
    } else {
        panic!("the scheduled writer should have filled the disk mid-write: {result:?}");
    }
}

// ---------------------------------------------------------------- rule 6

/// Rule 6: a crash after any number of calls leaves the old state or a partial reserve,
/// and the next ensure completes it.
#[test]
fn rule6_crash_at_every_step_heals_on_next_ensure() {
    for strategy in STRATEGIES {
        for (name, _) in starting_states() {
            for crash_at in 1..=12 {
                let fs = starting_states()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .unwrap()
                    .1;
                fs.crash_after(crash_at);
                let cfg = config().strategy(strategy);
                let _ = reserve_on(&fs, cfg.clone()).ensure();
                if fs.crashes() == 0 {
                    fs.crash_after(0);
                    fs.crash(); // ensure finished first; crash afterwards anyway
                }
                let outcome = reserve_on(&fs, cfg).ensure().unwrap_or_else(|e| {
                    panic!("rule 6: {strategy:?} from {name}, crash at call {crash_at}: {e}")
                });
                assert!(!matches!(outcome, Ensured::Deferred { .. }));
                assert_complete(&fs, PATH, SIZE);
            }
        }
    }
}

/// Rule 6: a created reserve is durable: it survives a crash right after ensure.
#[test]
fn rule6_created_reserve_survives_a_crash() {
    let fs = sim(64 * MIB);
    reserve_on(&fs, config()).ensure().unwrap();
    fs.crash();
    assert_complete(&fs, PATH, SIZE);
}

// ---------------------------------------------------------------- rule 7

/// Rule 7: a symlink, directory, fifo or socket at the reserve path is refused with an
/// error naming the path and its kind, and left exactly as it was.
#[test]
fn rule7_non_regular_file_is_refused_and_untouched() {
    type Setup = fn(&SimFs);
    let setups: [(FileKind, Setup); 4] = [
        (FileKind::Symlink, |fs| {
            fs.write_file(Utf8Path::new("/srv/victim"), MIB).unwrap();
            fs.symlink(Utf8Path::new(PATH), Utf8Path::new("/srv/victim"))
                .unwrap();
        }),
        (FileKind::Directory, |fs| {
            fs.mkdir_all(Utf8Path::new(PATH)).unwrap();
        }),
        (FileKind::Fifo, |fs| fs.mkfifo(Utf8Path::new(PATH)).unwrap()),
        (FileKind::Socket, |fs| {
            fs.mksocket(Utf8Path::new(PATH)).unwrap()
        }),
    ];
    for (kind, setup) in setups {
        let fs = sim(64 * MIB);
        setup(&fs);
        let before = fs.snapshot();
        let reserve = reserve_on(&fs, config());
        for err in [
            reserve.ensure().unwrap_err(),
            reserve.release().unwrap_err(),
        ] {
            match &err {
                Error::NotARegularFile { path, kind: k } => {
                    assert_eq!(path, PATH);
                    assert_eq!(*k, kind);
                }
                other => panic!("rule 7: {kind}: expected a refusal, got {other:?}"),
            }
            assert_eq!(
                err.to_string(),
                format!("`{PATH}` is a {kind}, not a regular file; refusing to touch it")
            );
        }
        assert_eq!(fs.snapshot(), before, "rule 7: the {kind} was changed");
    }
}

/// Rule 7 on the kernel: a planted symlink to another file neither grows nor deletes it.
#[test]
fn rule7_planted_symlink_is_not_followed_real() {
    let (_dir, home) = tempdir();
    let victim = home.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, home.join(".reserve")).unwrap();
    let reserve = Reserve::new(RealFs::new(), &home, config()).unwrap();
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
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        std::fs::symlink_metadata(home.join(".reserve"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// Rule 7: ensure and release touch the reserve path and nothing else.
/// A file of `len` bytes whose content is its own pattern: byte `i` is `i % 251`.
fn write_database(path: &Utf8Path, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(path, &data).unwrap();
    data
}

fn inode_of(path: &Utf8Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(path).unwrap())
}

/// Rule 7 on the kernel: a hard link at the reserve path (`ln db home/.reserve`, a
/// `cp -al` backup) is never written, truncated or grown. `ensure` — asked for a smaller
/// size (which would shrink it), a larger one on the write path (which would overwrite
/// it) or a larger one with `fallocate` — replaces the name with a fresh reserve, and the
/// database keeps every byte.
#[test]
fn rule7_hard_linked_file_is_never_written_ensure_replaces_the_name_real() {
    let db_len = 2 * MIB as usize;
    for (size, strategy) in [
        (MIB, Strategy::Auto),
        (4 * MIB, Strategy::Write),
        (4 * MIB, Strategy::Fallocate),
    ] {
        let (_tmp, home) = tempdir();
        let db = home.join("db.sqlite");
        let data = write_database(&db, db_len);
        let path = home.join(".reserve");
        std::fs::hard_link(&db, &path).unwrap();
        let config = ReserveConfig::with_size_bytes(size).strategy(strategy);
        let reserve = Reserve::new(RealFs::new(), &home, config).unwrap();
        let outcome = reserve.ensure().unwrap();
        assert!(
            std::fs::read(&db).unwrap() == data,
            "rule 7: ensure ({strategy:?}, size {size}) changed a file with another name"
        );
        assert!(
            matches!(outcome, Ensured::Created { .. }),
            "{strategy:?}: a hard-linked path gets a fresh reserve, got {outcome:?}"
        );
        assert_ne!(
            inode_of(&path),
            inode_of(&db),
            "the name must be a new file"
        );
        assert_complete(&RealFs::new(), path.as_str(), size);
        assert_eq!(probe(&RealFs::new(), db.as_str()).unwrap().links, 1);
    }
}

/// Rule 7 and 8 on the kernel: `release` of a hard-linked path removes only that name,
/// reports that it freed nothing, and the other name keeps its data.
#[test]
fn rule7_release_of_hard_link_removes_only_the_name_and_frees_nothing_real() {
    let (_tmp, home) = tempdir();
    let db = home.join("db");
    let data = write_database(&db, MIB as usize);
    let path = home.join(".reserve");
    std::fs::hard_link(&db, &path).unwrap();
    let reserve = Reserve::new(RealFs::new(), &home, config()).unwrap();
    assert_eq!(
        reserve.status().unwrap().condition,
        Condition::HardLinked(2)
    );
    assert!(
        matches!(
            reserve.release().unwrap(),
            Released::Released {
                releasable_bytes: 0,
                ..
            }
        ),
        "rule 7: removing one name of a linked file frees nothing"
    );
    assert!(!path.exists(), "the name is gone");
    assert!(
        std::fs::read(&db).unwrap() == data,
        "the other name keeps its data"
    );
}

/// Rule 7 on the simulator: the same, with the space accounted.
#[test]
fn rule7_hard_linked_file_is_replaced_and_keeps_its_data_sim() {
    let fs = sim(64 * MIB);
    fs.write_file("/srv/app/db", 8 * MIB).unwrap();
    fs.hard_link("/srv/app/db", PATH).unwrap();
    let before = fs.snapshot().without(PATH);
    assert_eq!(probe(&fs, PATH).unwrap().links, 2);
    let outcome = reserve_on(&fs, config()).ensure().unwrap();
    assert_eq!(
        outcome,
        Ensured::Created {
            allocated_bytes: SIZE
        }
    );
    let mut after = fs.snapshot().without(PATH);
    // The database lost one name: its link count is the only thing that changed.
    after
        .entries
        .get_mut(Utf8Path::new("/srv/app/db"))
        .unwrap()
        .links = 2;
    assert_eq!(after, before, "rule 7: the other name must keep its data");
    assert_eq!(probe(&fs, PATH).unwrap().links, 1);
    assert_eq!(fs.free_bytes(), 64 * MIB - 8 * MIB - SIZE);
    fs.hard_link(PATH, "/srv/app/backup").unwrap();
    assert_eq!(
        reserve_on(&fs, config()).release().unwrap(),
        Released::Released {
            releasable_bytes: 0,
            freed_bytes: 0
        }
    );
    assert_eq!(probe(&fs, "/srv/app/backup").unwrap().allocated_bytes, SIZE);
}

#[test]
fn rule7_only_the_reserve_path_changes() {
    let fs = sim(64 * MIB);
    fs.write_file(Utf8Path::new("/srv/app/data.db"), MIB)
        .unwrap();
    fs.mkdir_all(Utf8Path::new("/srv/app/boxes/1")).unwrap();
    let before = fs.snapshot();
    let reserve = reserve_on(&fs, config());
    reserve.ensure().unwrap();
    assert_eq!(fs.snapshot().without(PATH), before.clone().without(PATH));
    reserve.release().unwrap();
    assert_eq!(fs.snapshot(), before);
}

// ---------------------------------------------------------------- rule 8

/// Rule 8: release works at zero free, needs no statvfs and no new file, and reports the
/// bytes really allocated.
#[test]
fn rule8_release_at_zero_free() {
    let fs = sim(64 * MIB);
    let reserve = reserve_on(&fs, config());
    reserve.ensure().unwrap();
    fs.set_free(0).unwrap();
    let space = fs.calls(SimOp::Space);
    let before_entries = fs.snapshot().entries.len();
    assert_eq!(
        reserve.release().unwrap(),
        Released::Released {
            releasable_bytes: SIZE,
            freed_bytes: SIZE
        }
    );
    assert_eq!(
        fs.free_bytes(),
        SIZE,
        "rule 8: the lifeboat is the reserve's size"
    );
    assert!(
        fs.calls(SimOp::Space) > space,
        "rule 8: release measures what it gave back"
    );
    assert_eq!(
        fs.snapshot().entries.len(),
        before_entries - 1,
        "rule 8: release needs no new inode"
    );
    assert_eq!(reserve.release().unwrap(), Released::Absent);
}

/// Rule 8: a sparse reserve frees only what it really held.
#[test]
fn rule8_release_reports_allocated_not_length() {
    let fs = sim(64 * MIB);
    fs.write_sparse(Utf8Path::new(PATH), SIZE).unwrap();
    assert_eq!(
        reserve_on(&fs, config()).release().unwrap(),
        Released::Released {
            releasable_bytes: 0,
            freed_bytes: 0
        }
    );
}

/// Rule 8 on the kernel: release gives the blocks back to statvfs.
#[test]
fn rule8_release_returns_bytes_real() {
    let (_dir, home) = tempdir();
    let reserve = Reserve::new(RealFs::new(), &home, config()).unwrap();
    reserve.ensure().unwrap();
    match reserve.release().unwrap() {
        Released::Released {
            releasable_bytes,
            freed_bytes,
        } => {
            assert!(
                releasable_bytes >= SIZE,
                "rule 8: expected {releasable_bytes}"
            );
            // The measured gain is only meaningful on a filesystem nobody else writes to
            // meanwhile (cli/tests/real_mount.rs checks it on mounts of its own); here the
            // other tests of this binary write to the same disk at the same time.
            let _ = freed_bytes;
        }
        other => panic!("rule 8: the reserve was there, got {other:?}"),
    }
    assert!(!home.join(".reserve").exists());
}

// ---------------------------------------------------------------- rule 9

/// Rule 9: a reserve bigger than configured is cut down to the size.
#[test]
fn rule9_oversized_reserve_is_shrunk() {
    let fs = sim(64 * MIB);
    fs.write_file(Utf8Path::new(PATH), 3 * SIZE).unwrap();
    fs.set_free(0).unwrap();
    assert_eq!(
        reserve_on(&fs, config()).ensure().unwrap(),
        Ensured::Shrunk {
            from_len: 3 * SIZE,
            allocated_bytes: SIZE
        },
        "rule 9: oversized must shrink, even at zero free"
    );
    assert_complete(&fs, PATH, SIZE);
    assert_eq!(fs.free_bytes(), 2 * SIZE);
}

// ---------------------------------------------------------------- rule 10

/// Rule 10: any number of threads on one home; afterwards absent or exactly complete.
fn hammer(fs: impl HostFs + Look + Clone + 'static, home: Utf8PathBuf, size: u64) {
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let fs = fs.clone();
            let home = home.clone();
            std::thread::spawn(move || {
                let mut seed = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..200 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let strategy = STRATEGIES[(seed % 3) as usize];
                    let reserve = Reserve::new(
                        fs.clone(),
                        &home,
                        ReserveConfig::with_size_bytes(size).strategy(strategy),
                    )
                    .unwrap();
                    match (seed >> 8) % 3 {
                        0 => match reserve.ensure() {
                            Ok(Ensured::Deferred { .. }) => panic!("rule 10: deferred with room"),
                            Ok(_) => {}
                            Err(e) => panic!("rule 10: ensure failed: {e}"),
                        },
                        1 => {
                            reserve.release().expect("rule 10: release failed");
                        }
                        _ => {
                            reserve.status().expect("rule 10: status failed");
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a thread panicked");
    }
    let path = home.join(".reserve");
    match probe(&fs, path.as_str()) {
        None => {}
        Some(p) => {
            assert_eq!(p.kind, FileKind::Regular);
            assert_eq!(p.len, size, "rule 10: torn length");
            assert!(p.allocated_bytes >= size, "rule 10: torn allocation");
        }
    }
}

#[test]
fn rule10_eight_threads_sim() {
    let fs = sim(64 * MIB);
    let before = fs.snapshot();
    hammer(fs.clone(), Utf8PathBuf::from(HOME), SIZE);
    assert_eq!(
        fs.snapshot().without(PATH),
        before.without(PATH),
        "rule 7: only the reserve path may change"
    );
}

#[test]
fn rule10_eight_threads_real() {
    let (_dir, home) = tempdir();
    hammer(RealFs::new(), home.clone(), MIB);
    let names: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names.is_empty() || names == [".reserve"],
        "rule 7: stray files {names:?}"
    );
}

/// Rule 10: a wait for the home's lock bounded by `lock_timeout` gives up having changed
/// nothing; rule 8: `release_forced` needs no lock at all.
#[test]
fn rule10_lock_timeout_gives_up_having_changed_nothing_and_forced_release_needs_no_lock() {
    let fs = SimFs::with_home(1 << 30, HOME);
    let reserve = Reserve::new(fs.clone(), HOME, ReserveConfig::with_size_bytes(1 << 20))
        .unwrap()
        .lock_timeout(Some(std::time::Duration::from_millis(50)));
    reserve.ensure().unwrap();
    let dir = fs.open_dir(HOME.into()).unwrap();
    let held = dir.try_lock().unwrap().expect("nobody holds it yet");

    let started = std::time::Instant::now();
    match reserve.release() {
        Err(Error::LockTimeout { path, waited }) => {
            assert_eq!(path, HOME);
            assert!(waited >= std::time::Duration::from_millis(50), "{waited:?}");
        }
        other => panic!("rule 10: a bounded wait gives up: {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(
        fs.lookup("/srv/app/.reserve").unwrap().is_some(),
        "nothing changed"
    );

    assert_eq!(
        reserve.release_forced().unwrap(),
        Released::Released {
            releasable_bytes: 1 << 20,
            freed_bytes: 1 << 20
        },
        "rule 8: an operator can force it"
    );
    assert_eq!(fs.lookup("/srv/app/.reserve").unwrap(), None);
    drop(held);
}

/// Rule 8: a wait for the home's lock is said once, after a second.
#[test]
fn rule8_a_wait_of_a_second_is_reported_once() {
    let fs = SimFs::with_home(1 << 30, HOME);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&calls);
    let started = std::time::Instant::now();
    let said_after = std::sync::Arc::new(std::sync::Mutex::new(None));
    let said = std::sync::Arc::clone(&said_after);
    let reserve = Reserve::new(fs.clone(), HOME, ReserveConfig::with_size_bytes(1 << 20))
        .unwrap()
        .lock_timeout(Some(std::time::Duration::from_millis(1300)))
        .on_lock_wait(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *said.lock().unwrap() = Some(started.elapsed());
        });
    let dir = fs.open_dir(HOME.into()).unwrap();
    let held = dir.try_lock().unwrap().expect("nobody holds it yet");
    assert!(matches!(reserve.ensure(), Err(Error::LockTimeout { .. })));
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "rule 8: said once, after a second"
    );
    let after = said_after.lock().unwrap().expect("said");
    assert!(
        after >= std::time::Duration::from_secs(1),
        "rule 8: not said before a second of waiting: {after:?}"
    );
    drop(held);
    reserve.ensure().unwrap();
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no wait, nothing said"
    );
}

// ---------------------------------------------------------------- rule 11

/// Rule 11: each bad input gives its own readable error, and nothing panics.
#[test]
fn rule11_each_bad_input_has_its_own_error() {
    // Home missing.
    let fs = sim(64 * MIB);
    let r = Reserve::new(fs.clone(), "/nowhere", config()).unwrap();
    for err in [
        r.ensure().unwrap_err(),
        r.release().unwrap_err(),
        r.status().unwrap_err(),
    ] {
        assert!(matches!(err, Error::HomeMissing { .. }), "{err:?}");
        assert_eq!(err.to_string(), "home directory `/nowhere` does not exist");
    }
    // Home is a file.
    fs.write_file(Utf8Path::new("/srv/file"), 10).unwrap();
    let r = Reserve::new(fs.clone(), "/srv/file", config()).unwrap();
    for err in [
        r.ensure().unwrap_err(),
        r.release().unwrap_err(),
        r.status().unwrap_err(),
    ] {
        assert!(matches!(err, Error::HomeNotDirectory { .. }), "{err:?}");
        assert_eq!(err.to_string(), "home `/srv/file` is not a directory");
    }
    // Read-only filesystem.
    let fs = sim(64 * MIB);
    fs.set_read_only(true);
    let err = reserve_on(&fs, config()).ensure().unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    assert!(
        err.to_string().contains("the filesystem is read-only"),
        "{err}"
    );
    // Permission denied.
    let fs = sim(64 * MIB);
    fs.fail_next(SimOp::OpenFile, libc::EACCES);
    let err = reserve_on(&fs, config()).ensure().unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("create reserve `/srv/app/.reserve`: permission denied")
    );
    // Size 0.
    let fs = sim(64 * MIB);
    let err = reserve_on(&fs, ReserveConfig::with_size_bytes(0))
        .ensure()
        .unwrap_err();
    assert!(matches!(err, Error::ZeroSize { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "reserve size for `/srv/app/.reserve` is 0 bytes; a reserve must be at least 1 byte"
    );
    // Larger than the filesystem.
    let err = reserve_on(&fs, ReserveConfig::with_size_bytes(65 * MIB))
        .ensure()
        .unwrap_err();
    assert!(
        matches!(err, Error::SizeExceedsFilesystem { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than the whole filesystem"));
    assert_eq!(probe(&fs, PATH), None, "rule 11: nothing written");
    // Non-UTF-8 home.
    use std::os::unix::ffi::OsStrExt;
    let bad = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/srv/\xff\xfe"));
    let err = Reserve::new(fs.clone(), bad, config()).unwrap_err();
    assert!(matches!(err, Error::NonUtf8Path { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"path "/srv/\xFF\xFE" is not valid UTF-8"#
    );
    // Bad file name.
    let err = Reserve::new(fs.clone(), HOME, config().file_name("../escape")).unwrap_err();
    assert!(matches!(err, Error::InvalidFileName { .. }), "{err:?}");
}

/// Rule 11: a share of the filesystem resolves against its total size.
#[test]
fn rule11_share_of_filesystem_size() {
    let fs = sim(100 * MIB);
    let cfg = ReserveConfig::default().size(SizeSpec::percent(1.0).unwrap());
    let outcome = reserve_on(&fs, cfg).ensure().unwrap();
    assert_eq!(
        outcome,
        Ensured::Created {
            allocated_bytes: 1_048_576
        }
    );
}

/// Rule 11: a share built as parts per million, past what `SizeSpec::percent` accepts, is
/// refused with a clear error when it is resolved, never laid down or wrapped around.
#[test]
fn rule11_a_share_beyond_the_filesystem_is_a_clear_error() {
    let fs = sim(64 * MIB);
    let too_big = config().size(SizeSpec::PartsPerMillion(2_000_000));
    let err = reserve_on(&fs, too_big).ensure().unwrap_err();
    assert!(
        matches!(err, Error::SizeExceedsFilesystem { .. }),
        "{err:?}"
    );
    let zero = config().size(SizeSpec::PartsPerMillion(0));
    let err = reserve_on(&fs, zero).ensure().unwrap_err();
    assert!(matches!(err, Error::ZeroSize { .. }), "{err:?}");
    assert_eq!(
        SizeSpec::PartsPerMillion(u32::MAX).resolve(u64::MAX),
        u64::MAX
    );
    assert_eq!(probe(&fs, PATH), None, "nothing laid down");
}

// ---------------------------------------------------------------- rule 12

/// Rule 12: an out-of-space error from ensure is recognised through the crate's error.
#[test]
fn rule12_ensure_error_is_classified() {
    let fs = sim(64 * MIB);
    // ENOSPC where the rollback itself cannot happen: the error is reported as it is.
    fs.fail_next(SimOp::Allocate, libc::ENOSPC);
    fs.fail_next(SimOp::RemoveFile, libc::EIO);
    let err = reserve_on(&fs, config()).ensure().unwrap_err();
    assert!(is_out_of_space(&err), "rule 12: {err}");
    // Flattened to text the way a reporter does (`anyhow`'s `{:#}`: each cause once).
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(next) = cause {
        text = format!("{text}: {next}");
        cause = next.source();
    }
    let flattened = io::Error::other(text);
    assert!(is_out_of_space(&flattened));
    // Converted to an `io::Error`, it keeps the kind.
    let converted = io::Error::from(err);
    assert_eq!(converted.kind(), io::ErrorKind::StorageFull);
    assert!(is_out_of_space(&converted));
}

/// The default operator hint is true for any program: it names the reserve file by its
/// absolute path (a relative home is made absolute) and what deleting it frees.
#[test]
fn rule12_default_hint_names_the_absolute_file_and_its_size() {
    let fs = sim(64 * MIB);
    let reserve = reserve_on(&fs, config());
    reserve.ensure().unwrap();
    assert_eq!(
        reserve.out_of_space_hint(),
        format!(
            "hint: the disk is full; delete the disk reserve {PATH} to free 4.0 MiB for the cleanup"
        )
    );
    let relative = Reserve::new(fs.clone(), "srv/app", config()).unwrap();
    let absolute = std::env::current_dir().unwrap().join("srv/app/.reserve");
    let hint = relative.out_of_space_hint();
    assert!(
        hint.contains("no disk reserve at") && hint.contains(&*absolute.to_string_lossy()),
        "{hint}"
    );
}

// ---------------------------------------------------------------- rule 14

/// A reserve of three write chunks on the write path whose progress callback cancels the
/// token after the first chunk: the cancel lands between chunks.
fn cancelled_after_first_chunk<F: HostFs>(fs: F, home: &Utf8Path, size: u64) -> Error {
    let token = CancelToken::new();
    let cancel = token.clone();
    let reserve = Reserve::new(
        fs,
        home,
        ReserveConfig::with_size_bytes(size).strategy(Strategy::Write),
    )
    .unwrap()
    .cancel_token(token)
    .on_progress(move |_, _| cancel.cancel());
    reserve
        .ensure()
        .expect_err("rule 14: a cancelled ensure must not succeed")
}

/// Rule 14 and 5 on the simulator: cancelled between chunks, ensure removes the file it
/// created and says it was cancelled; a cancelled top-up cuts back to the old length.
#[test]
fn rule14_cancel_between_chunks_rolls_back_sim() {
    let size = 3 * WRITE_CHUNK_BYTES;
    let fs = SimFs::with_home(1 << 30, HOME);
    let err = cancelled_after_first_chunk(fs.clone(), Utf8Path::new(HOME), size);
    assert!(matches!(err, Error::Cancelled { .. }), "rule 14: {err:?}");
    assert_eq!(fs.lookup(PATH).unwrap(), None, "rule 5: the file stays");
    assert_eq!(fs.free_bytes(), 1 << 30, "rule 5: space not given back");
    assert_eq!(fs.calls(SimOp::WriteFill), 1, "rule 14: kept writing");

    fs.write_file(PATH, MIB).unwrap();
    let before = fs.snapshot();
    let err = cancelled_after_first_chunk(fs.clone(), Utf8Path::new(HOME), size);
    assert!(matches!(err, Error::Cancelled { .. }), "rule 14: {err:?}");
    assert_eq!(
        fs.snapshot(),
        before,
        "rule 5: a cancelled top-up is cut back"
    );
}

/// Rule 14 and 5 on the kernel: the same in a temporary directory.
#[test]
fn rule14_cancel_between_chunks_rolls_back_real() {
    let (_tmp, home) = tempdir();
    let err = cancelled_after_first_chunk(RealFs::new(), &home, WRITE_CHUNK_BYTES + MIB);
    assert!(matches!(err, Error::Cancelled { .. }), "rule 14: {err:?}");
    assert_eq!(
        err.to_string(),
        format!("ensure `{home}/.reserve` was cancelled; what it had allocated was rolled back")
    );
    assert_eq!(
        probe(&RealFs::new(), home.join(".reserve").as_str()),
        None,
        "rule 5: the cancelled reserve stays"
    );
}

/// Rule 14 and 10: a cancel interrupts the wait for the home's lock (held here by
/// another holder), and nothing is changed.
fn cancel_interrupts_the_lock_wait<F: HostFs + Clone + 'static>(fs: F, home: &Utf8Path) {
    let dir = fs.open_dir(home).unwrap();
    let held = dir.try_lock().unwrap().expect("the lock is free");
    let token = CancelToken::new();
    let reserve = Reserve::new(fs, home, config())
        .unwrap()
        .cancel_token(token.clone());
    let waiting = std::thread::spawn(move || reserve.ensure());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!waiting.is_finished(), "ensure must wait for the lock");
    token.cancel();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(waiting.join()));
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("rule 14: a cancel must interrupt the wait for the lock")
        .unwrap();
    assert!(matches!(result, Err(Error::Cancelled { .. })), "{result:?}");
    assert_eq!(dir.probe(".reserve").unwrap(), None);
    drop(held);
}

#[test]
fn rule14_cancel_interrupts_the_lock_wait_sim() {
    cancel_interrupts_the_lock_wait(sim(64 * MIB), Utf8Path::new(HOME));
}

#[test]
fn rule14_cancel_interrupts_the_lock_wait_real() {
    let (_tmp, home) = tempdir();
    cancel_interrupts_the_lock_wait(RealFs::new(), &home);
}

/// Backups: a reserve is marked no-dump (`chattr +d`, `FS_NODUMP_FL`) where the filesystem
/// has the flag, so dump (and restic, borg, rsync when told) skip its incompressible bytes.
#[test]
fn new_reserve_is_marked_no_dump_real() {
    let (_dir, home) = tempdir();
    let reserve = Reserve::new(RealFs::new(), &home, config()).unwrap();
    reserve.ensure().unwrap();
    let Ok(out) = std::process::Command::new("lsattr")
        .arg("-d")
        .arg(home.join(".reserve").as_str())
        .output()
    else {
        println!("skipped: no lsattr here");
        return;
    };
    if !out.status.success() {
        println!("skipped: this filesystem has no inode flags");
        return;
    }
    let attrs = String::from_utf8_lossy(&out.stdout);
    let flags = attrs.split_whitespace().next().unwrap_or("");
    assert!(flags.contains('d'), "the reserve must be no-dump: {attrs}");
}

/// Rule 4: no inode (or no room for one) when creating the reserve is "not now": the
/// create's ENOSPC defers with reason `ran_out`, for a new reserve and for the
/// replacement of a hard-linked one.
#[test]
fn rule4_create_meeting_enospc_defers_sim() {
    let fs = sim(64 * MIB);
    fs.fail_next(SimOp::OpenFile, libc::ENOSPC);
    let outcome = reserve_on(&fs, config()).ensure().unwrap();
    assert!(
        matches!(
            outcome,
            Ensured::Deferred {
                reason: DeferReason::RanOut,
                ..
            }
        ),
        "rule 4: {outcome:?}"
    );
    assert_eq!(probe(&fs, PATH), None);

    fs.write_file("/srv/app/db", MIB).unwrap();
    fs.hard_link("/srv/app/db", PATH).unwrap();
    let before = fs.snapshot();
    fs.fail_next(SimOp::OpenFile, libc::ENOSPC);
    let outcome = reserve_on(&fs, config()).ensure().unwrap();
    assert!(
        matches!(
            outcome,
            Ensured::Deferred {
                reason: DeferReason::RanOut,
                ..
            }
        ),
        "rule 4: replacing a hard link: {outcome:?}"
    );
    assert_eq!(fs.snapshot(), before, "rule 5: the link is left as it was");
}

/// Rule 7: something at `.reserve.replacing` that an interrupted ensure cannot have left
/// (a second name of another file) is never removed by the tidying under the lock.
#[test]
fn rule7_foreign_file_at_the_replacement_name_is_left_alone_sim() {
    let fs = sim(64 * MIB);
    fs.write_file("/srv/app/db", MIB).unwrap();
    fs.hard_link("/srv/app/db", "/srv/app/.reserve.replacing")
        .unwrap();
    reserve_on(&fs, config()).ensure().unwrap();
    assert!(
        probe(&fs, "/srv/app/.reserve.replacing").is_some(),
        "rule 7: a name of another file was removed"
    );
    reserve_on(&fs, config()).release().unwrap();
    assert!(probe(&fs, "/srv/app/.reserve.replacing").is_some());
}

/// Rule 4 at the boundary of "can never fit": a size plus headroom exactly equal to what
/// an unprivileged writer can ever use fits (and is laid down on an empty disk).
#[test]
fn rule4_size_plus_headroom_equal_to_the_filesystem_fits() {
    let fs = sim(64 * MIB);
    let cfg = ReserveConfig::with_size_bytes(32 * MIB).headroom(SizeSpec::Bytes(32 * MIB));
    assert!(matches!(
        reserve_on(&fs, cfg).ensure().unwrap(),
        Ensured::Created { .. }
    ));
    let cfg = ReserveConfig::with_size_bytes(32 * MIB).headroom(SizeSpec::Bytes(32 * MIB + 1));
    assert!(matches!(
        Reserve::new(SimFs::with_home(64 * MIB, HOME), HOME, cfg)
            .unwrap()
            .ensure(),
        Err(Error::NeverFits { .. })
    ));
}

/// Rule 8 with XFS's late frees: `syncfs` does not show an unlink's blocks, yet `release`
/// reports them freed and the operator's next `statvfs` (their `df`) sees them: the
/// command waits for the frees, the operator does not.
#[test]
fn rule8_release_on_xfs_late_frees_shows_the_space_to_the_next_statvfs() {
    let fs = sim(64 * MIB);
    fs.set_late_frees(true);
    fs.set_sync_fs_shows_late_frees(false);
    let reserve = reserve_on(&fs, config()).settle_time(std::time::Duration::ZERO);
    reserve.ensure().unwrap();
    let free = fs.free_bytes();
    assert_eq!(
        reserve.release().unwrap(),
        Released::Released {
            releasable_bytes: SIZE,
            freed_bytes: SIZE
        }
    );
    let df = fs.open_dir(Utf8Path::new(HOME)).unwrap().space().unwrap();
    assert_eq!(
        df.free_bytes,
        free + SIZE,
        "the next statvfs shows the reserve free"
    );
}

/// Rule 4 with XFS's late frees: an allocation that runs into the quota part-way is
/// rolled back, and the deferral reports the free space with the rollback's blocks back
/// in it, though `syncfs` does not show them on XFS (found by the lifecycle scenario
/// once its late frees could be XFS's: the report was short by what the rollback freed).
#[test]
fn rule4_deferral_after_a_rollback_counts_the_rollbacks_frees_on_xfs() {
    let fs = sim(64 * MIB);
    fs.set_late_frees(true);
    fs.set_sync_fs_shows_late_frees(false);
    fs.set_quota(Some(SIZE / 2));
    let free = fs.free_bytes();
    let reserve =
        reserve_on(&fs, config().strategy(Strategy::Write)).settle_time(std::time::Duration::ZERO);
    match reserve.ensure().unwrap() {
        Ensured::Deferred {
            free_bytes, reason, ..
        } => {
            assert_eq!(reason, DeferReason::Quota);
            assert_eq!(free_bytes, free, "the rollback's blocks count as free");
        }
        other => panic!("expected a deferral for the quota, got {other:?}"),
    }
    assert_eq!(fs.look(PATH), None, "rolled back");
}

/// Rule 8's companion for ensure: the report shows the free space after the call acted.
/// btrfs counts written data in `statvfs` only at a transaction commit, which `fsync`
/// does not force: right after the write path laid down 64 MiB, `ensure --json` said the
/// free space it had before (measured on a 512 MiB btrfs). After writing, the report
/// reads the space once the filesystem has committed it; after `fallocate` (shown at
/// once) it does not wait.
#[test]
fn rule4_the_report_counts_a_reserve_the_write_path_wrote() {
    for strategy in [Strategy::Write, Strategy::Fallocate] {
        let fs = sim(64 * MIB);
        fs.set_late_writes(true);
        let free = fs.free_bytes();
        let reserve =
            reserve_on(&fs, config().strategy(strategy)).settle_time(std::time::Duration::ZERO);
        let report = reserve.ensure_report().unwrap();
        assert!(
            matches!(report.outcome, Ensured::Created { .. }),
            "{strategy:?}: {report:?}"
        );
        assert_eq!(
            report.space.free_bytes,
            free - SIZE,
            "{strategy:?}: the report counts the reserve it laid down"
        );
    }
}

/// The no-op path of the report flushes nothing: a complete reserve is reported with one
/// `statvfs`, not after a `syncfs` (which would write out every other program's data on
/// the filesystem): the free space shown is what the filesystem shows then.
#[test]
fn rule4_a_present_reserve_is_reported_without_a_flush() {
    let fs = sim(64 * MIB);
    let reserve = reserve_on(&fs, config()).settle_time(std::time::Duration::ZERO);
    reserve.ensure().unwrap();
    fs.set_late_writes(true);
    let home = fs.open_dir(HOME.into()).unwrap();
    let data = home
        .open_file("data", disk_reserve::OpenOptions::create_new())
        .unwrap();
    data.write_fill(0, MIB).unwrap();
    data.sync_all().unwrap();
    let shown = home.space().unwrap().free_bytes;
    assert_eq!(shown, fs.free_bytes() + MIB, "the data is not shown yet");
    let report = reserve.ensure_report().unwrap();
    assert!(
        matches!(report.outcome, Ensured::Present { .. }),
        "{report:?}"
    );
    assert_eq!(
        report.space.free_bytes, shown,
        "reported without committing the other writer's data"
    );
}

/// A deferral's report shows the free space the deferral was decided on, not one read
/// later: another writer eating a block before every call must not make the report
/// contradict its own outcome.
#[test]
fn rule4_a_deferral_is_reported_with_the_space_it_was_decided_on() {
    let fs = sim(64 * MIB);
    fs.set_free(SIZE).unwrap();
    fs.schedule_space_changes(std::iter::repeat_n(4096, 500));
    let reserve = reserve_on(&fs, config()).settle_time(std::time::Duration::ZERO);
    let report = reserve.ensure_report().unwrap();
    match report.outcome {
        Ensured::Deferred { free_bytes, .. } => assert_eq!(
            report.space.free_bytes, free_bytes,
            "the report's free space is the deferral's"
        ),
        other => panic!("expected a deferral, got {other:?}"),
    }
}
