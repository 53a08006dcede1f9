//! A small write-ahead log written once against the `disk-reserve` file API, so it runs
//! on the kernel (`RealFs`, this `main`) and, in its tests, on a `SimFs` that is full,
//! past its quota, failing `fsync`, or losing power at any call.
//!
//! Records are `[length: u32 LE][crc32 of length and payload: u32 LE][payload]`, appended
//! to the segment `wal` and made durable with `sync_data` before `append` returns: a
//! record is *acknowledged* when `append` returns `Ok`. A segment past `segment_bytes` is
//! rotated by renaming it to `wal.NNNNNN` and creating a fresh `wal`, and the directory is
//! synced before anything goes into the new one. Recovery reads the rotated segments in
//! order, then `wal`, stops at the first record that does not check out, cuts a torn
//! tail off `wal`, and writes `wal`'s last record again and syncs it (after a failed
//! `fsync` in an earlier run it may be in the page cache only).
//!
//! What the tests hold it to: every acknowledged record survives a crash, a plain one
//! (everything unsynced lost) or a torn one (`SimFs::crash_torn`: a seeded part of what
//! was unsynced kept, such as a record's length with zeros for its bytes); a failed append
//! leaves no partial record; after a failed `fsync` the log refuses further appends (the
//! kernel may have dropped the dirty pages: what is durable is only known after a
//! reopen, as PostgreSQL learned).
//!
//! Run it: `cargo run --example wal [DIR]` (default: a directory under the temp dir).

use std::io;

use camino::Utf8PathBuf;
use disk_reserve::{DirHandle, FileHandle, HostFs, OpenOptions, RealFs};

/// The live segment's name.
const LIVE: &str = "wal";
/// Bytes before a record's payload.
const HEADER_BYTES: usize = 8;
/// Records larger than this are refused (and a header claiming more is damage).
const MAX_RECORD_BYTES: usize = 1 << 20;

/// A write-ahead log in one directory.
pub struct Wal {
    dir: Box<dyn DirHandle>,
    live: Box<dyn FileHandle>,
    /// Bytes of whole records in the live segment: where the next record goes.
    live_len: u64,
    segment_bytes: u64,
    /// The number the next rotated segment gets.
    next_segment: u64,
    /// Set by a failed `sync_data`: the log cannot say what is durable any more.
    poisoned: bool,
}

impl Wal {
    /// Opens the log in `dir`, recovering it: returns the log and every record it holds,
    /// oldest first.
    ///
    /// # Errors
    /// Listing, reading, cutting a torn tail, writing the last record again (on a
    /// copy-on-write filesystem that needs free space) or syncing it, or creating the
    /// live segment failed.
    pub fn open(dir: Box<dyn DirHandle>, segment_bytes: u64) -> io::Result<(Wal, Vec<Vec<u8>>)> {
        let mut rotated: Vec<u64> = dir
            .read_dir()?
            .into_iter()
            .filter_map(|entry| segment_number(&entry.name))
            .collect();
        rotated.sort_unstable();
        let mut records = Vec::new();
        for &number in &rotated {
            let file = dir.open_file(&segment_name(number), OpenOptions::read())?;
            records.extend(parse(&read_all(&*file)?).0);
        }
        let live = match dir.open_file(LIVE, OpenOptions::read_write()) {
            Ok(live) => live,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // A first start, or a crash between a rotation's rename and its create.
                let live = dir.open_file(LIVE, OpenOptions::create())?;
                live.sync_all()?;
                dir.sync()?;
                live
            }
            Err(e) => return Err(e),
        };
        let bytes = read_all(&*live)?;
        let (live_records, whole) = parse(&bytes);
        if whole < bytes.len() as u64 {
            // A torn or unacknowledged tail: cut it (needs no space) so the next record
            // follows the last whole one.
            live.set_len(whole)?;
        }
        if let Some(last) = live_records.last() {
            // The last record may have been read from the page cache only: its `fsync`
            // failed in an earlier run, and Linux marks the pages clean after a
            // writeback error, so no later sync writes them. Writing it again makes
            // them dirty; the sync below makes it durable before it is returned.
            let start = whole - (HEADER_BYTES + last.len()) as u64;
            live.write_all_at(start, &bytes[start as usize..whole as usize])?;
        }
        if whole < bytes.len() as u64 || !live_records.is_empty() {
            live.sync_data()?;
        }
        records.extend(live_records);
        let wal = Wal {
            dir,
            live,
            live_len: whole,
            segment_bytes,
            next_segment: rotated.last().map_or(1, |n| n + 1),
            poisoned: false,
        };
        Ok((wal, records))
    }

    /// Appends `payload` and makes it durable: when this returns `Ok`, the record
    /// survives a crash.
    ///
    /// # Errors
    /// `ENOSPC`/`EDQUOT` (the log stays usable: the partial record is cut off), `EIO`
    /// from `fsync` or a failed rotation (the log is then poisoned: every later append
    /// fails with `EIO` until it is reopened), `EINVAL` for a payload over 1 MiB.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if payload.len() > MAX_RECORD_BYTES {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if self.live_len >= self.segment_bytes
            && let Err(e) = self.rotate()
        {
            // Half a rotation (renamed, not yet replaced): reopening sorts it out.
            self.poisoned = true;
            return Err(e);
        }
        let record = encode(payload);
        if let Err(e) = self.live.write_all_at(self.live_len, &record) {
            // Whatever part of the record got in is cut off again; if even that fails,
            // recovery stops at the torn record anyway.
            let _ = self.live.set_len(self.live_len);
            return Err(e);
        }
        if let Err(e) = self.live.sync_data() {
            self.poisoned = true;
            return Err(e);
        }
        self.live_len += record.len() as u64;
        Ok(())
    }

    /// Renames the live segment to the next number and starts a fresh one; the directory
    /// is synced before the new segment is used, or its records could lose their name.
    fn rotate(&mut self) -> io::Result<()> {
        let name = segment_name(self.next_segment);
        self.dir.rename(LIVE, &name)?;
        self.next_segment += 1;
        let live = self.dir.open_file(LIVE, OpenOptions::create_new())?;
        live.sync_all()?;
        self.dir.sync()?;
        self.live = self.dir.open_file(LIVE, OpenOptions::read_write())?;
        self.live_len = 0;
        Ok(())
    }
}

fn segment_name(number: u64) -> String {
    format!("{LIVE}.{number:06}")
}

fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(LIVE)?.strip_prefix('.')?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
}

fn read_all(file: &dyn FileHandle) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read_at(bytes.len() as u64, &mut buf)? {
            0 => return Ok(bytes),
            n => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

fn encode(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    record.extend_from_slice(&len);
    record.extend_from_slice(&crc32(&[&len, payload]).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// The whole records at the start of `bytes`, and how many bytes they take.
fn parse(bytes: &[u8]) -> (Vec<Vec<u8>>, u64) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        let len_bytes = &header[..4];
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        if len > MAX_RECORD_BYTES {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len) else {
            break;
        };
        if crc32(&[len_bytes, payload]) != crc {
            break;
        }
        records.push(payload.to_vec());
        at += HEADER_BYTES + len;
    }
    (records, at as u64)
}

/// CRC-32 (IEEE, reflected), bit by bit: small records, no table needed.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for &byte in parts.iter().flat_map(|part| part.iter()) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn main() -> io::Result<()> {
    let dir = match std::env::args().nth(1) {
        Some(dir) => Utf8PathBuf::from(dir),
        None => Utf8PathBuf::try_from(std::env::temp_dir().join("disk-reserve-wal-example"))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
    };
    std::fs::create_dir_all(&dir)?;
    let (mut wal, records) = Wal::open(RealFs::new().open_dir(&dir)?, 4096)?;
    println!("{dir}: recovered {} records", records.len());
    for i in 0..100 {
        wal.append(format!("record {} of this run", i).as_bytes())?;
    }
    println!("{dir}: appended 100 records, each synced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_reserve::{SimFs, SimOp};

    const HOME: &str = "/data";

    fn open(fs: &SimFs, segment_bytes: u64) -> (Wal, Vec<Vec<u8>>) {
        Wal::open(fs.open_dir(HOME.into()).unwrap(), segment_bytes).unwrap()
    }

    fn errno(result: io::Result<()>) -> i32 {
        result.unwrap_err().raw_os_error().unwrap()
    }

    fn record(i: usize) -> Vec<u8> {
        format!("record {i}: {}", "x".repeat(i % 300)).into_bytes()
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn records_come_back_in_order_across_rotations_and_reopens() {
        let fs = SimFs::with_home(1 << 20, HOME);
        let (mut wal, none) = open(&fs, 256);
        assert!(none.is_empty());
        for i in 0..50 {
            wal.append(&record(i)).unwrap();
        }
        drop(wal);
        let (mut wal, got) = open(&fs, 256);
        assert_eq!(got, (0..50).map(record).collect::<Vec<_>>());
        wal.append(&record(50)).unwrap();
        let dir = fs.open_dir(HOME.into()).unwrap();
        assert!(dir.read_dir().unwrap().len() > 5, "it rotated");
        let (_, got) = open(&fs, 256);
        assert_eq!(got.len(), 51);
    }

    #[test]
    fn at_zero_free_appends_fail_cleanly_and_work_once_space_is_back() {
        let fs = SimFs::with_home(1 << 20, HOME);
        let (mut wal, _) = open(&fs, 1 << 20);
        wal.append(&[1u8; 3000]).unwrap();
        fs.set_free(0).unwrap();
        // The record's first 1,088 bytes fit in the block the first one started: a short
        // write, then ENOSPC; the partial record is cut off again.
        assert_eq!(errno(wal.append(&[2u8; 3000])), libc::ENOSPC);
        assert_eq!(
            fs.lookup("/data/wal").unwrap().unwrap().len,
            3008,
            "cut back"
        );
        // A record that fits in the allocated block needs no free space.
        wal.append(b"small").unwrap();
        assert_eq!(errno(wal.append(&[2u8; 3000])), libc::ENOSPC);
        fs.set_free(1 << 16).unwrap();
        wal.append(&[3u8; 3000]).unwrap();
        fs.crash();
        let (_, got) = open(&fs, 1 << 20);
        assert_eq!(got, [vec![1u8; 3000], b"small".to_vec(), vec![3u8; 3000]]);
    }

    #[test]
    fn at_zero_free_a_fresh_log_opens_and_refuses_appends() {
        let fs = SimFs::with_home(1 << 20, HOME);
        fs.set_free(0).unwrap();
        let (mut wal, _) = open(&fs, 1 << 20);
        assert_eq!(errno(wal.append(b"first")), libc::ENOSPC);
        let (_, got) = open(&fs, 1 << 20);
        assert!(got.is_empty());
    }

    #[test]
    fn past_the_quota_appends_fail_with_edquot_and_nothing_is_torn() {
        let fs = SimFs::with_home(1 << 30, HOME);
        fs.set_quota(Some(64 * 1024));
        let (mut wal, _) = open(&fs, 16 * 1024);
        let mut acknowledged = Vec::new();
        let err = loop {
            let payload = record(acknowledged.len());
            match wal.append(&payload) {
                Ok(()) => acknowledged.push(payload),
                Err(e) => break e,
            }
        };
        assert_eq!(err.raw_os_error(), Some(libc::EDQUOT));
        assert!(acknowledged.len() > 100);
        fs.crash();
        let (_, got) = open(&fs, 16 * 1024);
        assert_eq!(got, acknowledged);
    }

    #[test]
    fn a_failed_fsync_poisons_the_log_and_acknowledged_records_survive() {
        let fs = SimFs::with_home(1 << 20, HOME);
        fs.fail_nth_on(SimOp::SyncData, LIVE, 3, libc::EIO);
        let (mut wal, _) = open(&fs, 1 << 20);
        wal.append(b"one").unwrap();
        wal.append(b"two").unwrap();
        assert_eq!(errno(wal.append(b"three")), libc::EIO);
        assert_eq!(errno(wal.append(b"four")), libc::EIO, "poisoned");
        fs.crash();
        let (mut wal, got) = open(&fs, 1 << 20);
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
        wal.append(b"five").unwrap();
    }

    /// A failed `fsync` leaves a record in the page cache that never reaches the disk
    /// (Linux marks the pages clean after a writeback error). A reopen without a crash
    /// reads it back from the cache; if the log then acknowledged records after it in
    /// other blocks, a crash would cut them off behind the hole it leaves.
    #[test]
    fn records_acknowledged_after_a_reopen_that_followed_a_failed_fsync_survive() {
        let fs = SimFs::with_home(1 << 20, HOME);
        let (mut wal, _) = open(&fs, 1 << 20);
        wal.append(b"one").unwrap();
        // The second record ends the first block exactly: the next starts a new one.
        let fills_the_block = vec![2u8; 4096 - 2 * HEADER_BYTES - 3];
        fs.fail_next(SimOp::SyncData, libc::EIO);
        assert_eq!(errno(wal.append(&fills_the_block)), libc::EIO);
        drop(wal);
        let (mut wal, got) = open(&fs, 1 << 20); // no crash: the cache still has it
        assert_eq!(got, [b"one".to_vec(), fills_the_block.clone()]);
        wal.append(b"after the reopen").unwrap();
        fs.crash();
        let (_, got) = open(&fs, 1 << 20);
        assert_eq!(
            got,
            [
                b"one".to_vec(),
                fills_the_block,
                b"after the reopen".to_vec()
            ],
            "what a reopen returned and then acknowledged is durable"
        );
    }

    /// A tiny xorshift: the crash points and record sizes, reproducible by seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn every_acknowledged_record_survives_a_thousand_crashes_at_random_points() {
        for seed in 1..=1000u64 {
            crash_run(seed, false);
        }
    }

    /// One run of two power cuts at random calls (recovery itself may be cut too); with
    /// `torn`, each keeps a seeded part of what was not synced
    /// ([`every_acknowledged_record_survives_a_thousand_torn_crashes`]), else it loses all
    /// of it. Panics with the seed. Returns how many cuts left a torn tail (bytes past the
    /// last whole record) in the live segment.
    fn crash_run(seed: u64, torn: bool) -> usize {
        let mut torn_tails = 0;
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let fs = SimFs::with_home(256 * 1024, HOME);
        let mut acknowledged: Vec<Vec<u8>> = Vec::new();
        for round in 0..2 {
            let tear = torn.then(|| rng.below(u64::MAX));
            let after = 1 + rng.below(120) as u32;
            match tear {
                Some(tear) => fs.crash_torn_after(after, tear),
                None => fs.crash_after(after),
            }
            let crashes = fs.crashes();
            let mut in_flight = None;
            if let Ok(dir) = fs.open_dir(HOME.into())
                && let Ok((mut wal, got)) = Wal::open(dir, 1024)
            {
                assert_eq!(got, acknowledged, "seed {seed} round {round}: recovery");
                loop {
                    let payload = vec![rng.below(256) as u8; 1 + rng.below(400) as usize];
                    match wal.append(&payload) {
                        Ok(()) => acknowledged.push(payload),
                        Err(_) => {
                            in_flight = Some(payload);
                            break;
                        }
                    }
                }
            }
            if fs.crashes() == crashes {
                // The disk filled before the planned cut.
                match tear {
                    Some(tear) => fs.crash_torn(tear),
                    None => fs.crash(),
                }
            }
            fs.crash_after(0);
            if let Ok(live) = fs
                .open_dir(HOME.into())
                .and_then(|dir| dir.open_file(LIVE, OpenOptions::read()))
            {
                let bytes = read_all(&*live).unwrap();
                torn_tails += usize::from(parse(&bytes).1 < bytes.len() as u64);
            }
            let (_, got) = Wal::open(fs.open_dir(HOME.into()).unwrap(), 1024)
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery failed: {e}"));
            // The record in flight at the cut may or may not have made it.
            if got.len() == acknowledged.len() + 1 {
                assert_eq!(got.last(), in_flight.as_ref(), "seed {seed}: in flight");
                acknowledged.push(in_flight.unwrap());
            }
            assert_eq!(got, acknowledged, "seed {seed} round {round}");
        }
        torn_tails
    }

    /// What recovery returned, checked against what was acknowledged: the record in
    /// flight at a failure may have made it too (then it is acknowledged from now on,
    /// since recovery made it durable before returning it).
    fn check_recovery(
        got: &[Vec<u8>],
        acknowledged: &mut Vec<Vec<u8>>,
        in_flight: &mut Option<Vec<u8>>,
        context: &str,
    ) {
        if got.len() == acknowledged.len() + 1 {
            assert_eq!(got.last(), in_flight.as_ref(), "{context}: in flight");
            acknowledged.push(in_flight.take().unwrap());
        }
        assert_eq!(got, &acknowledged[..], "{context}");
    }

    /// One run of [`every_acknowledged_record_survives_failed_fsyncs_reopens_and_torn_crashes`]:
    /// as [`crash_run`], and in half the rounds the k-th `fsync` of the live segment
    /// fails; the poisoned log is then reopened without a crash and carries on. Returns
    /// how many fsyncs failed.
    fn failing_fsync_run(seed: u64) -> usize {
        let mut failed = 0;
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        let fs = SimFs::with_home(256 * 1024, HOME);
        let mut acknowledged: Vec<Vec<u8>> = Vec::new();
        let mut in_flight = None;
        for round in 0..2 {
            let context = format!("seed {seed} round {round}");
            let tear = rng.below(u64::MAX);
            fs.crash_torn_after(1 + rng.below(160) as u32, tear);
            if rng.below(2) == 0 {
                fs.fail_nth_on(SimOp::SyncData, LIVE, 1 + rng.below(40) as u32, libc::EIO);
            }
            let crashes = fs.crashes();
            // Reopen after each failed fsync, until the cut or a full disk.
            while let Ok(dir) = fs.open_dir(HOME.into())
                && let Ok((mut wal, got)) = Wal::open(dir, 1024)
            {
                check_recovery(&got, &mut acknowledged, &mut in_flight, &context);
                let error = loop {
                    let payload = vec![rng.below(256) as u8; 1 + rng.below(400) as usize];
                    match wal.append(&payload) {
                        Ok(()) => acknowledged.push(payload),
                        Err(e) => {
                            in_flight = Some(payload);
                            break e;
                        }
                    }
                };
                if fs.crashes() != crashes || error.raw_os_error() != Some(libc::EIO) {
                    break;
                }
                failed += 1;
            }
            if fs.crashes() == crashes {
                fs.crash_torn(tear); // the disk filled, or a reopen failed, before the cut
            }
            fs.crash_torn_after(0, 0);
            // A plan that has not fired yet may fail recovery's own fsync, once: retried.
            let got = (0..2)
                .find_map(
                    |_| match Wal::open(fs.open_dir(HOME.into()).unwrap(), 1024) {
                        Ok((_, got)) => Some(got),
                        Err(e) if e.raw_os_error() == Some(libc::EIO) => None,
                        Err(e) => panic!("{context}: recovery failed: {e}"),
                    },
                )
                .unwrap_or_else(|| panic!("{context}: recovery failed twice"));
            check_recovery(&got, &mut acknowledged, &mut in_flight, &context);
        }
        failed
    }

    #[test]
    fn every_acknowledged_record_survives_failed_fsyncs_reopens_and_torn_crashes() {
        let failed: usize = (1..=1000u64).map(failing_fsync_run).sum();
        assert!(failed >= 300, "{failed} failed fsyncs in 1,000 runs");
    }

    #[test]
    fn every_acknowledged_record_survives_a_thousand_torn_crashes() {
        let torn_tails: usize = (1..=1000u64).map(|seed| crash_run(seed, true)).sum();
        // The cuts tore records: recovery met a torn tail and cut it.
        assert!(torn_tails >= 100, "{torn_tails} torn tails in 2,000 cuts");
    }
}
