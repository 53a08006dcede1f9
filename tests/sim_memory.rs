//! SimFs memory does not grow with simulated sizes: a 1 PiB disk holding a 1 TiB file
//! costs about what a 1 MiB disk holding a 512 KiB file costs.
//!
//! Nor with the bytes callers write beyond those bytes (whole blocks).
//!
//! One test in its own binary, so no other test allocates while it measures.

use std::sync::atomic::Ordering;

use disk_reserve::{HostFs, OpenOptions, SimFs};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, LIVE_BYTES, thread_counts};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap bytes held by a SimFs of `capacity` with one reserve-like file of
/// `file_len` bytes, allocated through the trait.
fn heap_growth(capacity: u64, file_len: u64) -> (SimFs, usize) {
    let before = LIVE_BYTES.load(Ordering::SeqCst);
    let fs = SimFs::with_home(capacity, "/srv/app");
    let home = fs.open_dir("/srv/app".into()).unwrap();
    let file = home
        .open_file(".reserve", OpenOptions::create_new())
        .unwrap();
    file.allocate(0, file_len).unwrap();
    file.sync_all().unwrap();
    home.sync().unwrap();
    drop((file, home));
    let after = LIVE_BYTES.load(Ordering::SeqCst);
    (fs, after.saturating_sub(before))
}

#[test]
fn memory_does_not_grow_with_simulated_size() {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const TIB: u64 = 1 << 40;
    const PIB: u64 = 1 << 50;

    // Warm up one-time allocations (tracing callsites, thread-locals) outside the count.
    drop(heap_growth(MIB, 512 * KIB));

    let (small_fs, small) = heap_growth(MIB, 512 * KIB);
    let (huge_fs, huge) = heap_growth(PIB, TIB);
    println!("live heap growth: 1 MiB disk with 512 KiB file = {small} B");
    println!("live heap growth: 1 PiB disk with 1 TiB file   = {huge} B");

    assert_eq!(
        huge_fs.free_bytes(),
        PIB - TIB,
        "the 1 TiB is really allocated"
    );
    assert_eq!(small_fs.free_bytes(), MIB - 512 * KIB);
    assert!(
        huge <= 2 * small + 1024,
        "1 PiB case uses {huge} B, 1 MiB case {small} B"
    );
    assert!(huge < 64 * 1024, "1 PiB case uses {huge} B");

    // Bytes a caller writes cost what they are (whole blocks), wherever they land, and a
    // sync shares them with the durable copy instead of copying them.
    let home = huge_fs.open_dir("/srv/app".into()).unwrap();
    let file = home
        .open_file(".reserve", OpenOptions::read_write())
        .unwrap();
    let before = LIVE_BYTES.load(Ordering::SeqCst);
    for i in 0..16u64 {
        file.write_all_at(i * (TIB / 16) + 4095, b"ab").unwrap();
    }
    file.sync_data().unwrap();
    let written = LIVE_BYTES.load(Ordering::SeqCst).saturating_sub(before);
    println!("live heap growth: 16 two-byte writes across blocks of the 1 TiB file = {written} B");
    assert!(
        (32 * 4096..=32 * 4096 + 16 * 1024).contains(&written),
        "32 blocks written cost {written} B"
    );
    let mut back = [0u8; 2];
    file.read_at(TIB / 16 + 4095, &mut back).unwrap();
    assert_eq!(&back, b"ab");

    // A block rewritten and synced in a loop (a log's header, a WAL's last block) costs
    // no allocation and no memory once warm: the buffer the sync frees is the next
    // write's.
    let block = [7u8; 4096];
    for _ in 0..4 {
        file.write_all_at(0, &block).unwrap();
        file.sync_data().unwrap();
    }
    // Counted on this thread: the test harness' own thread may allocate meanwhile.
    let (allocations, bytes) = thread_counts();
    for i in 0..1000u32 {
        file.write_all_at(0, &[i as u8; 4096]).unwrap();
        file.sync_data().unwrap();
    }
    let (allocations_after, bytes_after) = thread_counts();
    let (allocated, grown) = (allocations_after - allocations, bytes_after - bytes);
    println!("1000 rewrites + fdatasync of one block: {allocated} allocations, {grown} B");
    assert_eq!(allocated, 0, "a rewrite + sync loop allocates");
    assert_eq!(grown, 0, "a rewrite + sync loop grows the heap");
    // A block no sync shares is written in place: no buffer taken, none allocated.
    let (allocations, _) = thread_counts();
    for i in 0..1000u32 {
        file.write_all_at(0, &[i as u8; 4096]).unwrap();
    }
    let allocated = thread_counts().0 - allocations;
    println!("1000 rewrites of one unsynced block: {allocated} allocations");
    assert_eq!(allocated, 0, "an unsynced block is not written in place");
    // Nor does it keep alive what others let go: a sync keeps for reuse only buffers no
    // one else holds, so blocks a reflink copy shared are freed with the copy.
    let a = home.open_file("a", OpenOptions::create_new()).unwrap();
    for i in 0..64u8 {
        a.write_all_at(u64::from(i) * 4096, &[i; 4096]).unwrap();
    }
    a.sync_all().unwrap();
    home.sync().unwrap();
    huge_fs.reflink("/srv/app/a", "/srv/app/b").unwrap();
    home.sync().unwrap();
    let (_, bytes) = thread_counts();
    for i in 0..64u64 {
        a.write_all_at(i * 4096, &[0x77; 4096]).unwrap();
    }
    a.sync_data().unwrap();
    home.remove_file("b").unwrap();
    home.sync().unwrap();
    let grown = thread_counts().1 - bytes;
    println!("64 blocks rewritten in a reflinked file, the copy removed: {grown} B");
    assert!(
        grown.abs() <= 16 * 1024,
        "the old blocks are freed with the copy: the heap grew by {grown} B"
    );
    file.read_at(0, &mut back).unwrap();
    assert_eq!(back, [231, 231], "the last rewrite's bytes (999 mod 256)");
}
