//! `SimFs::set_whole_extents` changes what space files hold, never what they read, and
//! only ever holds more: random sequences of writes, `allocate`, cuts, syncs, crashes,
//! snapshots, reflink copies and deletions run in lockstep on two `SimFs`, one keeping
//! whole extents (small ones, so that every path splits them) and one not. While every
//! call has had the same result on both, the files read the same bytes and the one
//! keeping extents holds at least as much; once every file is deleted and the snapshots
//! are gone, both hold nothing (no block is left held, none counted twice).

use std::io;

use disk_reserve::{FileHandle, HostFs, OpenOptions, SimFs, WholeExtents};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const BS: u64 = 4096;
/// 256 blocks: small enough that sequences run out of space.
const CAPACITY: u64 = 256 * BS;
const FILES: [&str; 3] = ["f0", "f1", "f2"];

#[derive(Debug, Clone)]
enum Op {
    /// `len` bytes at `offset`, one call.
    Write {
        file: usize,
        offset: u64,
        len: u64,
    },
    Allocate {
        file: usize,
        offset: u64,
        len: u64,
    },
    Cut {
        file: usize,
        len: u64,
    },
    Sync {
        file: usize,
    },
    SyncDir,
    SyncFs,
    Crash,
    TornCrash(u64),
    Snapshot {
        file: usize,
    },
    Reflink {
        from: usize,
        to: usize,
    },
    Remove {
        file: usize,
    },
    DropSnapshots,
    LateFrees(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES.len();
    let offset = (0..48u64, 0..BS).prop_map(|(block, within)| block * BS + within / 512 * 512);
    let len = prop_oneof![1..BS, BS..16 * BS];
    prop_oneof![
        6 => (file.clone(), offset.clone(), len.clone())
            .prop_map(|(file, offset, len)| Op::Write { file, offset, len }),
        2 => (file.clone(), offset, len)
            .prop_map(|(file, offset, len)| Op::Allocate { file, offset, len }),
        3 => (file.clone(), 0..64 * BS).prop_map(|(file, len)| Op::Cut { file, len }),
        4 => file.clone().prop_map(|file| Op::Sync { file }),
        1 => Just(Op::SyncDir),
        1 => Just(Op::SyncFs),
        1 => Just(Op::Crash),
        1 => any::<u64>().prop_map(Op::TornCrash),
        1 => file.clone().prop_map(|file| Op::Snapshot { file }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| Op::Reflink { from, to }),
        2 => file.prop_map(|file| Op::Remove { file }),
        1 => Just(Op::DropSnapshots),
        1 => any::<bool>().prop_map(Op::LateFrees),
    ]
}

/// The result of one call, as compared between the two sides.
type Outcome = Result<(), Option<i32>>;

fn outcome<T>(result: io::Result<T>) -> Outcome {
    result.map(drop).map_err(|e| e.raw_os_error())
}

fn path(file: usize) -> String {
    format!("/h/{}", FILES[file])
}

fn handle(fs: &SimFs, file: usize) -> io::Result<Box<dyn FileHandle>> {
    fs.open_dir("/h".into())?
        .open_file(FILES[file], OpenOptions::create())
}

fn apply(fs: &SimFs, op: &Op) -> Outcome {
    match *op {
        Op::Write { file, offset, len } => outcome(handle(fs, file).and_then(|f| {
            let bytes: Vec<u8> = (0..len).map(|i| (offset + i) as u8 | 1).collect();
            f.write_at(offset, &bytes)
        })),
        Op::Allocate { file, offset, len } => {
            outcome(handle(fs, file).and_then(|f| f.allocate(offset, len)))
        }
        Op::Cut { file, len } => outcome(handle(fs, file).and_then(|f| f.set_len(len))),
        Op::Sync { file } => outcome(handle(fs, file).and_then(|f| f.sync_all())),
        Op::SyncDir => outcome(fs.open_dir("/h".into()).and_then(|d| d.sync())),
        Op::SyncFs => outcome(fs.open_dir("/h".into()).and_then(|d| d.sync_fs())),
        Op::Crash => {
            fs.crash();
            Ok(())
        }
        Op::TornCrash(seed) => {
            fs.crash_torn(seed);
            Ok(())
        }
        Op::Snapshot { file } => outcome(fs.snapshot_file(path(file))),
        Op::Reflink { from, to } => outcome(fs.reflink(path(from), path(to))),
        Op::Remove { file } => outcome(fs.remove(path(file))),
        Op::DropSnapshots => {
            fs.drop_snapshots();
            Ok(())
        }
        Op::LateFrees(late) => {
            fs.set_late_frees(late);
            Ok(())
        }
    }
}

/// Every file's length and bytes.
fn contents(fs: &SimFs) -> Vec<Option<Vec<u8>>> {
    FILES
        .iter()
        .map(|name| {
            let file = fs
                .open_dir("/h".into())
                .and_then(|d| d.open_file(name, OpenOptions::read()))
                .ok()?;
            let len = file.probe().ok()?.len;
            let mut buf = vec![0; len as usize];
            let n = file.read_at(0, &mut buf).ok()?;
            buf.truncate(n);
            Some(buf)
        })
        .collect()
}

/// Where two sets of [`contents`] first differ, said briefly.
fn first_difference(a: &[Option<Vec<u8>>], b: &[Option<Vec<u8>>]) -> Option<String> {
    for (name, (a, b)) in FILES.iter().zip(a.iter().zip(b)) {
        match (a, b) {
            (Some(a), Some(b)) if a != b => {
                let at = a.iter().zip(b).position(|(x, y)| x != y);
                return Some(format!(
                    "{name}: {} bytes with whole extents, {} without, first different byte at {at:?}",
                    a.len(),
                    b.len()
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Some(format!("{name} exists on one side only"));
            }
            _ => {}
        }
    }
    None
}

fn disk(extents: Option<WholeExtents>) -> SimFs {
    let fs = SimFs::with_home(CAPACITY, "/h");
    fs.set_whole_extents(extents);
    fs
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/sim_extents.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn whole_extents_change_only_space_and_only_upwards(
        ops in prop::collection::vec(op(), 1..40),
        written in 1..6u64,
        allocated in 1..6u64,
    ) {
        let extents = WholeExtents { written_bytes: written * BS, allocated_bytes: allocated * BS };
        let (whole, plain) = (disk(Some(extents)), disk(None));
        let mut lockstep = true;
        for (i, op) in ops.iter().enumerate() {
            let (a, b) = (apply(&whole, op), apply(&plain, op));
            lockstep &= a == b;
            if !lockstep {
                // Extents hold more, so one side may run out of space first; from there
                // the two sequences differ.
                continue;
            }
            if let Some(difference) = first_difference(&contents(&whole), &contents(&plain)) {
                prop_assert!(false, "step {} {:?}: {}", i, op, difference);
            }
            prop_assert!(
                whole.used_bytes() >= plain.used_bytes(),
                "step {} {:?}: whole extents use {}, without {}",
                i, op, whole.used_bytes(), plain.used_bytes()
            );
        }
        for fs in [&whole, &plain] {
            fs.set_late_frees(false);
            for file in 0..FILES.len() {
                let _ = fs.remove(path(file));
            }
            fs.drop_snapshots();
            prop_assert_eq!(fs.used_bytes(), 0, "held with nothing left (whole extents: {})", std::ptr::eq(fs, &whole));
            prop_assert_eq!(fs.free_bytes(), CAPACITY);
        }
    }
}

/// Runs `ops` on both sides as the property does and checks the same things.
fn lockstep(ops: &[Op], extents: WholeExtents) {
    let (whole, plain) = (disk(Some(extents)), disk(None));
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(apply(&whole, op), apply(&plain, op), "step {i} {op:?}");
        let difference = first_difference(&contents(&whole), &contents(&plain));
        assert_eq!(difference, None, "step {i} {op:?}");
        assert!(
            whole.used_bytes() >= plain.used_bytes(),
            "step {i} {op:?}: whole extents use {}, without {}",
            whole.used_bytes(),
            plain.used_bytes()
        );
    }
}

/// Shrunk from the property: a write of the bytes a file already had changes where its
/// block is on disk (copied on write) but not the file. A torn crash compared the two
/// copies with their extents, found them different with whole extents on and equal
/// without, drew one more number from its seed, and tore the next file differently.
#[test]
fn a_torn_crash_decides_the_same_with_whole_extents() {
    lockstep(
        &[
            Op::Write {
                file: 0,
                offset: 102_400,
                len: 34_369,
            },
            Op::SyncDir,
            Op::TornCrash(12_712_592_691_583_321_873),
            Op::Write {
                file: 1,
                offset: 0,
                len: 4097,
            },
            Op::Sync { file: 0 },
            Op::Write {
                file: 0,
                offset: 102_400,
                len: 1,
            },
            Op::TornCrash(2_834_236_756_804_001_013),
        ],
        WholeExtents {
            written_bytes: BS,
            allocated_bytes: BS,
        },
    );
}

/// Shrunk from the property: with late frees, a cut's free was still pending when a
/// crash gave the blocks back to the file, and the disk counted them twice (held and
/// pending) until the next `statvfs`; more often without whole extents, where the cut
/// freed more. A filesystem mounted after a power cut counts what its disk holds.
#[test]
fn a_crash_leaves_no_free_pending() {
    lockstep(
        &[
            Op::LateFrees(true),
            Op::Write {
                file: 1,
                offset: 49_152,
                len: 57_345,
            },
            Op::SyncFs,
            Op::Cut {
                file: 1,
                len: 49_153,
            },
            Op::Crash,
        ],
        WholeExtents {
            written_bytes: 2 * BS,
            allocated_bytes: BS,
        },
    );
    let fs = disk(None);
    fs.set_late_frees(true);
    apply(
        &fs,
        &Op::Write {
            file: 0,
            offset: 0,
            len: 8 * BS,
        },
    )
    .unwrap();
    apply(&fs, &Op::SyncFs).unwrap();
    apply(&fs, &Op::Cut { file: 0, len: 0 }).unwrap();
    assert_eq!(fs.pending_free_bytes(), 8 * BS, "the cut's free is late");
    fs.crash();
    assert_eq!(fs.pending_free_bytes(), 0);
    assert_eq!(fs.used_bytes(), 8 * BS, "the file's blocks, counted once");
}
