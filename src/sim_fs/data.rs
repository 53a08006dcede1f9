//! How a file's blocks and bytes are kept, and what a crash leaves of them.

use super::*;

/// Allocated blocks of one file: disjoint, non-adjacent `[start, end)` block ranges keyed
/// by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Extents {
    ranges: BTreeMap<u64, u64>,
    /// The blocks in `ranges`, kept as they change: every `lstat` of a file reads it, and
    /// the scenario's view after each step reads every file's.
    blocks: u64,
}

impl Extents {
    pub(super) fn block_count(&self) -> u64 {
        debug_assert_eq!(
            self.blocks,
            self.ranges
                .iter()
                .map(|(start, end)| end - start)
                .sum::<u64>(),
            "the count kept follows the ranges"
        );
        self.blocks
    }

    /// Adds the range `[start, end)`, which touches none held.
    fn put(&mut self, start: u64, end: u64) {
        self.blocks += end - start;
        self.ranges.insert(start, end);
    }

    /// Takes away the range that starts at `start`: its end.
    fn take(&mut self, start: u64) -> u64 {
        let end = self.ranges.remove(&start).expect("a range held");
        self.blocks -= end - start;
        end
    }

    /// The unallocated ranges inside `[start, end)`, in order.
    pub(super) fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut cursor = start;
        if let Some((_, &covered_to)) = self.ranges.range(..=start).next_back() {
            cursor = cursor.max(covered_to);
        }
        for (&range_start, &range_end) in self.ranges.range(start..end) {
            if range_start > cursor {
                gaps.push((cursor, range_start));
            }
            cursor = cursor.max(range_end);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        gaps
    }

    /// Whether any block of `[start, end)` is in a range.
    pub(super) fn touches(&self, start: u64, end: u64) -> bool {
        // Ranges are disjoint: only the last one starting before `end` can reach `start`.
        self.ranges
            .range(..end)
            .next_back()
            .is_some_and(|(_, &range_end)| range_end > start)
    }

    /// Whether every block of `[start, end)` is allocated (an empty range is).
    pub(super) fn covers(&self, start: u64, end: u64) -> bool {
        start >= end
            || self
                .ranges
                .range(..=start)
                .next_back()
                .is_some_and(|(_, &covered_to)| covered_to >= end)
    }

    /// Marks `[start, end)` allocated, merging with touching ranges.
    pub(super) fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut merged_start, mut merged_end) = (start, end);
        if let Some((&before_start, &before_end)) = self.ranges.range(..start).next_back()
            && before_end >= start
        {
            merged_start = before_start;
            merged_end = merged_end.max(before_end);
        }
        // The ranges from `merged_start` to `end` are absorbed: taken one at a time, each
        // lookup finding the next, so no list of them is built.
        while let Some((&range_start, _)) = self.ranges.range(merged_start..=end).next() {
            merged_end = merged_end.max(self.take(range_start));
        }
        self.put(merged_start, merged_end);
    }

    /// Frees every block at index `first_freed` or later.
    pub(super) fn truncate(&mut self, first_freed: u64) {
        let freed = self.ranges.split_off(&first_freed);
        self.blocks -= freed.iter().map(|(start, end)| end - start).sum::<u64>();
        if let Some(mut last) = self.ranges.last_entry()
            && *last.get() > first_freed
        {
            self.blocks -= *last.get() - first_freed;
            *last.get_mut() = first_freed;
        }
    }

    /// The blocks in both `self` and `other`.
    pub(super) fn intersection(&self, other: &Extents) -> Extents {
        let mut both = Extents::default();
        for (start, end) in self.overlaps(other) {
            both.push(start, end);
        }
        both
    }

    /// The ranges, in order.
    pub(super) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&start, &end)| (start, end))
    }

    /// The ranges both `self` and `other` cover, in order.
    fn overlaps<'a>(&'a self, other: &'a Extents) -> impl Iterator<Item = (u64, u64)> + 'a {
        overlapping(self.ranges(), other.ranges())
    }

    /// Appends `[start, end)`, which starts past the end of every range held and does not
    /// touch the last: what `intersection` gets from `overlapping` of two well-formed
    /// lists (a range of theirs ends only where one of the two has a gap).
    fn push(&mut self, start: u64, end: u64) {
        debug_assert!(
            self.ranges
                .last_key_value()
                .is_none_or(|(_, &last_end)| last_end < start),
            "[{start}, {end}) touches or overlaps what is held"
        );
        self.put(start, end);
    }

    /// Forgets the blocks in `[start, end)`.
    pub(super) fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // The ranges that overlap `[start, end)` are the last ones starting before `end`
        // (they are disjoint and sorted): taken from the back until one ends at or before
        // `start`. What is put back ends at `start` or starts at `end`, so the loop stops.
        while let Some((&range_start, _)) = self
            .ranges
            .range(..end)
            .next_back()
            .filter(|&(_, &range_end)| range_end > start)
        {
            let range_end = self.take(range_start);
            if range_start < start {
                self.put(range_start, start);
            }
            if range_end > end {
                self.put(end, range_end);
            }
        }
    }
}

/// The ranges two lists of disjoint ranges in order both cover, in order: one pass over
/// the two, always stepping the one whose range ends first. Nothing is allocated, so
/// the result of one call can be a list of the next.
pub(super) fn overlapping(
    ours: impl Iterator<Item = (u64, u64)>,
    theirs: impl Iterator<Item = (u64, u64)>,
) -> impl Iterator<Item = (u64, u64)> {
    let (mut ours, mut theirs) = (ours.peekable(), theirs.peekable());
    std::iter::from_fn(move || {
        loop {
            let (&(start, end), &(other_start, other_end)) = (ours.peek()?, theirs.peek()?);
            if end <= other_end {
                ours.next();
            } else {
                theirs.next();
            }
            let (both_start, both_end) = (start.max(other_start), end.min(other_end));
            if both_start < both_end {
                return Some((both_start, both_end));
            }
        }
    })
}

/// How btrfs keeps a file's blocks on disk ([`SimFs::set_whole_extents`]): in extents,
/// each freed only when no block of it is the file's any more.
///
/// A block is *on disk* once a sync wrote it (a written extent, formed from the run of
/// new blocks it belongs to) or once `allocate` reserved it (an unwritten extent, as
/// `fallocate` makes); a block written since the last sync is still only in the page
/// cache and in no extent. Writing a block of a written extent takes a new block (btrfs
/// copies on write) and leaves the old one to its extent; writing one of an unwritten
/// extent writes in place (a later write copies). Cutting blocks off leaves them to their
/// extents. An extent whose blocks the file has all left is freed whole, and until then
/// the blocks the file left stay held ([`pinned`](DiskExtents::pinned)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DiskExtents {
    /// The file's blocks that are on disk, as `[start, end)` ranges keyed by start.
    segments: BTreeMap<u64, Segment>,
    /// The extents, by number.
    extents: BTreeMap<u64, DiskExtent>,
    next_id: u64,
    /// Blocks held only because their extent still has blocks in use: the sum over the
    /// extents of `blocks - used`.
    pub(super) pinned: u64,
}

/// A run of a file's blocks in one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    end: u64,
    extent: u64,
    /// Reserved by `allocate` and never written since: a write goes in place.
    unwritten: bool,
}

/// One extent: the blocks it holds on disk, and how many of them the file still uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiskExtent {
    blocks: u64,
    used: u64,
}

impl DiskExtents {
    /// Puts blocks `[start, end)`, in no extent yet, into new extents of at most `max`
    /// blocks each.
    pub(super) fn add(&mut self, start: u64, end: u64, unwritten: bool, max: u64) {
        let mut at = start;
        while at < end {
            let piece_end = end.min(at.saturating_add(max.max(1)));
            let id = self.next_id;
            self.next_id += 1;
            let blocks = piece_end - at;
            self.extents.insert(
                id,
                DiskExtent {
                    blocks,
                    used: blocks,
                },
            );
            self.segments.insert(
                at,
                Segment {
                    end: piece_end,
                    extent: id,
                    unwritten,
                },
            );
            at = piece_end;
        }
    }

    /// A sync: every block of `blocks` in no extent yet goes into a written extent, one
    /// per run of adjacent blocks (btrfs's delayed allocation), of at most `max` blocks.
    pub(super) fn close(&mut self, blocks: &Extents, max: u64) {
        let mut new = Vec::new();
        for (start, end) in blocks.ranges() {
            let mut cursor = start;
            if let Some((_, seg)) = self.segments.range(..=start).next_back() {
                cursor = cursor.max(seg.end);
            }
            for (&seg_start, seg) in self.segments.range(start..end) {
                if seg_start > cursor {
                    new.push((cursor, seg_start));
                }
                cursor = cursor.max(seg.end);
            }
            if cursor < end {
                new.push((cursor, end));
            }
        }
        for (start, end) in new {
            self.add(start, end, false, max);
        }
    }

    /// Whether any block of `[start, end)` is on disk.
    pub(super) fn touches(&self, start: u64, end: u64) -> bool {
        self.segments
            .range(..end)
            .next_back()
            .is_some_and(|(_, seg)| seg.end > start)
    }

    /// The blocks of `[start, end)` in written extents: those a write copies.
    pub(super) fn written_in(&self, start: u64, end: u64) -> Extents {
        let mut written = Extents::default();
        for (seg_start, seg) in self.overlapping(start, end) {
            if !seg.unwritten {
                written.insert(seg_start.max(start), seg.end.min(end));
            }
        }
        written
    }

    /// The segments that overlap `[start, end)`, with their starts, in order.
    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, Segment)> + '_ {
        let before = self
            .segments
            .range(..start)
            .next_back()
            .filter(|(_, seg)| seg.end > start);
        before
            .into_iter()
            .chain(self.segments.range(start..end))
            .map(|(&seg_start, &seg)| (seg_start, seg))
    }

    /// The file's blocks `[start, end)` leave their extents: written (or `written_too`,
    /// unwritten) blocks become held by their extent alone, and blocks in `forget` (a
    /// snapshot or a reflink copy holds them, and counts them) leave it altogether;
    /// other unwritten blocks stay, now written (a write in place). Returns the blocks of
    /// the extents this left with none in use: freed.
    pub(super) fn leave(
        &mut self,
        start: u64,
        end: u64,
        forget: &Extents,
        written_too: bool,
    ) -> u64 {
        let mut freed = 0;
        for (seg_start, seg) in self.overlapping(start, end).collect::<Vec<_>>() {
            self.segments.remove(&seg_start);
            let (from, to) = (seg_start.max(start), seg.end.min(end));
            // What stays as it was, before and after the range.
            if seg_start < from {
                self.segments
                    .insert(seg_start, Segment { end: from, ..seg });
            }
            if to < seg.end {
                self.segments.insert(to, seg);
            }
            let mut in_range = Extents::default();
            in_range.insert(from, to);
            let forgotten = in_range.intersection(forget);
            let forgotten_blocks = forgotten.block_count();
            let mut kept = in_range;
            for (f_start, f_end) in forgotten.ranges() {
                kept.remove(f_start, f_end);
            }
            let mut left = forgotten_blocks;
            let mut pinned_now = 0;
            if seg.unwritten && !written_too {
                for (k_start, k_end) in kept.ranges() {
                    self.segments.insert(
                        k_start,
                        Segment {
                            end: k_end,
                            unwritten: false,
                            ..seg
                        },
                    );
                }
            } else {
                let n = kept.block_count();
                left += n;
                pinned_now = n;
            }
            let extent = self
                .extents
                .get_mut(&seg.extent)
                .expect("sim_fs: a segment's extent exists");
            extent.blocks -= forgotten_blocks;
            extent.used -= left;
            self.pinned += pinned_now;
            if extent.used == 0 {
                self.pinned -= extent.blocks;
                freed += extent.blocks;
                self.extents.remove(&seg.extent);
            }
        }
        freed
    }
}

/// Length, allocated blocks and written bytes of a regular file.
///
/// Two are equal when they have the same length, blocks, shared blocks and bytes: where
/// their blocks are on disk ([`disk`](FileData::disk)) is the space's business, so a
/// crash decides the same with whole extents on or off.
#[derive(Debug, Clone, Default)]
pub(super) struct FileData {
    pub(super) len: u64,
    pub(super) blocks: Extents,
    /// Its blocks a snapshot shares ([`SimFs::snapshot_file`]): writing one takes a new
    /// block (copy-on-write, the snapshot keeps the old one), and freeing one gives no
    /// space back.
    pub(super) shared: Extents,
    /// The bytes of the blocks a caller wrote with [`FileHandle::write_at`], by block
    /// index, each one block long; every other byte reads as zero. Only written blocks
    /// cost memory, never allocated ones, and a clone (a sync) shares them until one side
    /// writes again. Bytes past `len` in the last block are kept zero.
    pub(super) data: BTreeMap<u64, Arc<Vec<u8>>>,
    /// Its blocks' extents on disk, kept only with [`SimFs::set_whole_extents`] (boxed:
    /// most files never have any, and every inode is as large as its largest kind).
    pub(super) disk: Option<Box<DiskExtents>>,
}

impl PartialEq for FileData {
    fn eq(&self, other: &FileData) -> bool {
        self.len == other.len
            && self.blocks == other.blocks
            && self.shared == other.shared
            && self.data == other.data
    }
}

impl Eq for FileData {}

impl FileData {
    /// Whether any block of `[start, end)` is in an extent on disk.
    pub(super) fn on_disk(&self, start: u64, end: u64) -> bool {
        self.disk.as_ref().is_some_and(|d| d.touches(start, end))
    }

    /// Blocks its extents hold that it no longer uses ([`DiskExtents::pinned`]).
    pub(super) fn pinned_blocks(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.pinned)
    }

    pub(super) fn disk_mut(&mut self) -> &mut DiskExtents {
        self.disk.get_or_insert_default()
    }

    /// Copies `bytes` into the file at `offset`, block by block. A block this copy alone
    /// holds is written in place; a block shared with the durable copy (the last sync) or
    /// a new one takes a buffer from `spare`, so that a block rewritten and synced in a
    /// loop costs one copy of its bytes and no allocation.
    pub(super) fn store(
        &mut self,
        offset: u64,
        bytes: &[u8],
        block_size: u64,
        spare: &mut SpareBlocks,
    ) {
        // A power of two (`SimFs::with_block_size`): shifts and masks, not divisions.
        let shift = block_size.trailing_zeros();
        let mut done = 0usize;
        while done < bytes.len() {
            let at = offset + done as u64;
            let (block, within) = (at >> shift, (at & (block_size - 1)) as usize);
            let n = (block_size as usize - within).min(bytes.len() - done);
            let source = &bytes[done..done + n];
            let whole = n == block_size as usize;
            match self.data.get_mut(&block) {
                // A shared buffer (the usual case after a sync) is not asked for `get_mut`,
                // an atomic read-modify-write that would fail.
                Some(stored) => match (Arc::strong_count(stored) == 1)
                    .then(|| Arc::get_mut(stored))
                    .flatten()
                {
                    Some(own) => own[within..within + n].copy_from_slice(source),
                    None => {
                        let mut fresh = spare.take(block_size);
                        let buf = Arc::get_mut(&mut fresh).expect("a spare block is unshared");
                        if !whole {
                            buf.copy_from_slice(stored);
                        }
                        buf[within..within + n].copy_from_slice(source);
                        *stored = fresh;
                    }
                },
                None => {
                    let mut fresh = spare.take(block_size);
                    let buf = Arc::get_mut(&mut fresh).expect("a spare block is unshared");
                    if !whole {
                        buf.fill(0);
                    }
                    buf[within..within + n].copy_from_slice(source);
                    self.data.insert(block, fresh);
                }
            }
            done += n;
        }
    }

    /// Makes this copy (the durable one) equal to `live`. A block whose bytes differ comes
    /// to share live's buffer, and the buffer it held alone goes to `spare` for live's next
    /// write to take (see [`store`](FileData::store)): a sync copies no bytes.
    pub(super) fn sync_from(&mut self, live: &FileData, spare: &mut SpareBlocks) {
        self.len = live.len;
        if self.blocks != live.blocks {
            self.blocks.clone_from(&live.blocks);
        }
        if self.shared != live.shared {
            self.shared.clone_from(&live.shared);
        }
        if self.disk != live.disk {
            self.disk.clone_from(&live.disk);
        }
        for (&block, bytes) in &live.data {
            match self.data.get_mut(&block) {
                Some(mine) if Arc::ptr_eq(mine, bytes) => {}
                Some(mine) => spare.give(std::mem::replace(mine, Arc::clone(bytes))),
                None => {
                    self.data.insert(block, Arc::clone(bytes));
                }
            }
        }
        // Now a superset of live's blocks: any more are blocks live let go.
        if self.data.len() != live.data.len() {
            let gone: Vec<u64> = self
                .data
                .keys()
                .filter(|block| !live.data.contains_key(block))
                .copied()
                .collect();
            for block in gone {
                if let Some(mine) = self.data.remove(&block) {
                    spare.give(mine);
                }
            }
        }
    }

    /// Reads from `offset` into `buf`, up to the length: what was written, zeros elsewhere.
    pub(super) fn load(&self, offset: u64, buf: &mut [u8], block_size: u64) -> usize {
        let available = self.len.saturating_sub(offset);
        let n = usize::try_from(available).map_or(buf.len(), |a| a.min(buf.len()));
        let buf = &mut buf[..n];
        buf.fill(0);
        let (first, last) = (
            offset / block_size,
            (offset + n as u64).div_ceil(block_size),
        );
        for (&block, bytes) in self.data.range(first..last) {
            let block_start = block * block_size;
            let from = offset.max(block_start);
            let to = (offset + n as u64).min(block_start + block_size);
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                &bytes[(from - block_start) as usize..(to - block_start) as usize],
            );
        }
        n
    }

    /// Forgets the written bytes in `[start, end)`: they read as zeros again.
    pub(super) fn zero(&mut self, start: u64, end: u64, block_size: u64) {
        if start >= end {
            return;
        }
        let (first, last) = (start / block_size, end.div_ceil(block_size));
        let touched: Vec<u64> = self.data.range(first..last).map(|(&b, _)| b).collect();
        for block in touched {
            let block_start = block * block_size;
            let (from, to) = (start.max(block_start), end.min(block_start + block_size));
            if from == block_start && to == block_start + block_size {
                self.data.remove(&block);
            } else if let Some(bytes) = self.data.get_mut(&block) {
                Arc::make_mut(bytes)[(from - block_start) as usize..(to - block_start) as usize]
                    .fill(0);
            }
        }
    }
}

/// Block buffers no file holds any more, kept for the next write to fill instead of
/// allocating (see [`FileData::store`]): at most [`SpareBlocks::MAX`] of them.
#[derive(Debug, Default)]
pub(super) struct SpareBlocks(Vec<Arc<Vec<u8>>>);

impl SpareBlocks {
    const MAX: usize = 64;

    /// An unshared buffer of `block_size` bytes, its contents unspecified.
    pub(super) fn take(&mut self, block_size: u64) -> Arc<Vec<u8>> {
        while let Some(buf) = self.0.pop() {
            if buf.len() == block_size as usize && Arc::strong_count(&buf) == 1 {
                return buf;
            }
        }
        Arc::new(vec![0; block_size as usize])
    }

    /// Keeps `buf` if no one else holds it; drops it otherwise.
    pub(super) fn give(&mut self, buf: Arc<Vec<u8>>) {
        if self.0.len() < Self::MAX && Arc::strong_count(&buf) == 1 && Arc::weak_count(&buf) == 0 {
            self.0.push(buf);
        }
    }
}

/// SplitMix64: the small seeded generator of [`SimFs::crash_torn`].
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=n`.
    pub(super) fn up_to(&mut self, n: u64) -> u64 {
        match n.checked_add(1) {
            Some(bound) => self.next() % bound,
            None => self.next(),
        }
    }

    pub(super) fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// A file after a torn crash: the durable state `durable` with a seeded prefix (in block
/// order) of the blocks that differ in `live` written over it, and the length the writes
/// of those blocks left, or the live length and allocation. A file that lost blocks or length since its sync comes back whole,
/// as synced or as live: a truncation is one journalled step, and a mix of old and new
/// blocks after one is no state a disk can hold. (A file shortened and grown back since is
/// caught by [`State::shortened`] before this.)
pub(super) fn torn_file(
    durable: &FileData,
    live: &FileData,
    block_size: u64,
    rng: &mut SplitMix64,
) -> FileData {
    if durable == live {
        return durable.clone();
    }
    let shrunk = live.len < durable.len
        || durable
            .blocks
            .ranges()
            .any(|(start, end)| !live.blocks.gaps(start, end).is_empty());
    if shrunk {
        return if rng.coin() {
            live.clone()
        } else {
            durable.clone()
        };
    }
    // The blocks whose allocation or bytes differ, in order. Growth only: every block
    // `durable` has, `live` has too.
    let mut differing: Vec<u64> = Vec::new();
    for (start, end) in live.blocks.ranges() {
        for (gap_start, gap_end) in durable.blocks.gaps(start, end) {
            differing.extend(gap_start..gap_end);
        }
    }
    let blocks_with_data = live.data.keys().chain(durable.data.keys()).copied();
    differing.extend(blocks_with_data.filter(|b| live.data.get(b) != durable.data.get(b)));
    differing.sort_unstable();
    differing.dedup();
    let kept = rng.up_to(differing.len() as u64) as usize;
    if kept == differing.len() {
        return live.clone();
    }
    let mut torn = durable.clone();
    for &block in &differing[..kept] {
        torn.blocks.insert(block, block + 1);
        match live.data.get(&block) {
            Some(bytes) => torn.data.insert(block, Arc::clone(bytes)),
            None => torn.data.remove(&block),
        };
    }
    // The length a write reached when it had written the kept blocks and not the next
    // (the start of the first block not kept, within the synced and the live length), or
    // the live length and allocation: the metadata reached the disk before the data, as
    // ext4's `data=writeback` and XFS allow; the blocks not kept then read as synced
    // (zeros where new). Never a hole the live file did not have.
    if rng.coin() {
        torn.len = live.len;
        torn.blocks = live.blocks.clone();
    } else {
        torn.len = (differing[kept] * block_size).clamp(durable.len, live.len);
    }
    // Bytes past the length of its last block read as zeros.
    let len = torn.len;
    torn.zero(len, len.next_multiple_of(block_size), block_size);
    torn
}

/// What a sync of a file with live state `live` leaves on the disk: `live`, but for the
/// blocks in `lost` (dropped by a failed sync), which keep their bytes in `durable`.
pub(super) fn written_back(
    live: &FileData,
    durable: &FileData,
    lost: Option<&std::collections::BTreeSet<u64>>,
) -> FileData {
    let mut disk = live.clone();
    for &block in lost.into_iter().flatten() {
        match durable.data.get(&block) {
            Some(bytes) => disk.data.insert(block, Arc::clone(bytes)),
            None => disk.data.remove(&block),
        };
    }
    disk
}

/// The inode table: inodes in increasing number order, found by binary search.
///
/// Numbers are handed out in increasing order and never reused, so a new inode goes at
/// the end; a tree of a few inodes (what a test or a fuzz input holds) costs one
/// allocation instead of a B-tree node per insert, and a lookup is a short search of one
/// array. Its methods mirror the `BTreeMap<u64, Node>` it replaces.
#[derive(Debug, Default)]
pub(super) struct Inodes(Vec<(u64, Node)>);

impl Inodes {
    /// Where `ino` is in number order, if held.
    pub(super) fn position(&self, ino: u64) -> Option<usize> {
        self.0.binary_search_by_key(&ino, |&(i, _)| i).ok()
    }

    pub(super) fn get(&self, ino: &u64) -> Option<&Node> {
        self.position(*ino).map(|i| &self.0[i].1)
    }

    pub(super) fn get_mut(&mut self, ino: &u64) -> Option<&mut Node> {
        self.position(*ino).map(|i| &mut self.0[i].1)
    }

    pub(super) fn contains_key(&self, ino: &u64) -> bool {
        self.position(*ino).is_some()
    }

    /// Adds `node` as `ino`, which must be larger than every number in the table.
    pub(super) fn insert(&mut self, ino: u64, node: Node) {
        assert!(
            self.0.last().is_none_or(|&(last, _)| last < ino),
            "sim_fs: inode numbers are handed out in increasing order"
        );
        self.0.push((ino, node));
    }

    /// Keeps the inodes whose [`position`](Inodes::position) is marked in `keep`.
    pub(super) fn retain_positions(&mut self, keep: &[bool]) {
        let mut at = 0;
        self.0.retain(|_| {
            at += 1;
            keep[at - 1]
        });
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Node> {
        self.0.iter().map(|(_, node)| node)
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.0.iter_mut().map(|(_, node)| node)
    }
}

impl std::ops::Index<&u64> for Inodes {
    type Output = Node;

    fn index(&self, ino: &u64) -> &Node {
        self.get(ino).expect("sim_fs: dangling inode number")
    }
}

impl<'a> IntoIterator for &'a Inodes {
    type Item = (&'a u64, &'a Node);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (u64, Node)>, fn(&'a (u64, Node)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(ino, node)| (ino, node))
    }
}

impl<'a> IntoIterator for &'a mut Inodes {
    type Item = (&'a u64, &'a mut Node);
    type IntoIter =
        std::iter::Map<std::slice::IterMut<'a, (u64, Node)>, fn(&'a mut (u64, Node)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut().map(|(ino, node)| (&*ino, node))
    }
}

/// One inode. Directories and files keep a live state and the state a crash returns to.
#[derive(Debug)]
pub(super) enum Node {
    Directory {
        live: BTreeMap<String, u64>,
        durable: BTreeMap<String, u64>,
    },
    Regular {
        live: FileData,
        durable: FileData,
    },
    Symlink {
        target: String,
    },
    /// Fifos, sockets and devices: no content.
    Special(FileKind),
}

impl Node {
    pub(super) fn kind(&self) -> FileKind {
        match self {
            Node::Directory { .. } => FileKind::Directory,
            Node::Regular { .. } => FileKind::Regular,
            Node::Symlink { .. } => FileKind::Symlink,
            Node::Special(kind) => *kind,
        }
    }

    pub(super) fn probe(&self, block_size: u64, links: u64) -> Probe {
        let (len, allocated_bytes) = match self {
            Node::Regular { live, .. } => (live.len, live.blocks.block_count() * block_size),
            Node::Symlink { target } => (target.len() as u64, 0),
            Node::Directory { .. } | Node::Special(_) => (0, 0),
        };
        Probe {
            kind: self.kind(),
            len,
            allocated_bytes,
            links,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Extents, Inodes, Node, SplitMix64, overlapping};
    use crate::host_fs::FileKind;

    /// The reference SplitMix64 sequence from seed 0, so a torn crash's seed means the
    /// same tears in every version.
    #[test]
    fn split_mix_64_is_the_reference_generator() {
        let mut rng = SplitMix64(0);
        assert_eq!(
            [rng.next(), rng.next(), rng.next()],
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f
            ]
        );
    }

    fn ranges(extents: &Extents) -> Vec<(u64, u64)> {
        extents.ranges().collect()
    }

    #[test]
    fn extents_merge_touching_and_overlapping_ranges() {
        let mut extents = Extents::default();
        extents.insert(10, 20);
        extents.insert(30, 40);
        extents.insert(20, 30);
        assert_eq!(ranges(&extents), [(10, 40)]);
        extents.insert(5, 50);
        assert_eq!(ranges(&extents), [(5, 50)]);
        extents.insert(60, 70);
        assert_eq!(extents.block_count(), 55);
    }

    #[test]
    fn extents_touches_only_ranges_that_share_a_block() {
        let mut extents = Extents::default();
        extents.insert(2, 4);
        extents.insert(8, 9);
        for (start, end, touches) in [
            (0, 2, false),
            (1, 3, true),
            (3, 4, true),
            (4, 8, false),
            (4, 9, true),
            (9, 20, false),
            (0, 20, true),
        ] {
            assert_eq!(extents.touches(start, end), touches, "[{start}, {end})");
        }
    }

    #[test]
    fn extents_gaps_lists_unallocated_ranges_in_order() {
        let mut extents = Extents::default();
        extents.insert(2, 4);
        extents.insert(6, 8);
        assert_eq!(extents.gaps(0, 10), [(0, 2), (4, 6), (8, 10)]);
        assert_eq!(extents.gaps(3, 7), [(4, 6)]);
        assert_eq!(extents.gaps(2, 4), []);
    }

    /// `insert`, `remove`, `intersection`, `overlapping` and `covers` against a plain set of
    /// block numbers, over seeded random ranges in 0..64: the same blocks, kept as
    /// disjoint, non-touching ranges.
    #[test]
    fn extents_operations_agree_with_a_set_of_blocks() {
        use std::collections::BTreeSet;
        let blocks = |extents: &Extents| -> BTreeSet<u64> {
            extents.ranges().flat_map(|(s, e)| s..e).collect()
        };
        let well_formed = |extents: &Extents| {
            let list = ranges(extents);
            list.iter().all(|&(s, e)| s < e) && list.windows(2).all(|w| w[0].1 < w[1].0)
        };
        let mut rng = SplitMix64(7);
        for _ in 0..500 {
            let (mut a, mut b) = (Extents::default(), Extents::default());
            let (mut set_a, mut set_b) = (BTreeSet::new(), BTreeSet::new());
            for _ in 0..rng.up_to(8) {
                let (start, len) = (rng.up_to(63), rng.up_to(8));
                let end = (start + len).min(64);
                let (extents, set) = if rng.coin() {
                    (&mut a, &mut set_a)
                } else {
                    (&mut b, &mut set_b)
                };
                match rng.up_to(5) {
                    0 | 1 => {
                        extents.remove(start, end);
                        set.retain(|block| !(start..end).contains(block));
                    }
                    2 => {
                        extents.truncate(start);
                        set.retain(|&block| block < start);
                    }
                    _ => {
                        extents.insert(start, end);
                        set.extend(start..end);
                    }
                }
                assert_eq!(blocks(extents), *set, "after an insert, remove or truncate");
                assert_eq!(extents.block_count(), set.len() as u64, "the count kept");
                assert!(well_formed(extents), "{:?}", ranges(extents));
            }
            let both: BTreeSet<u64> = set_a.intersection(&set_b).copied().collect();
            let intersection = a.intersection(&b);
            assert_eq!(blocks(&intersection), both, "{a:?} ∩ {b:?}");
            assert_eq!(
                intersection.block_count(),
                both.len() as u64,
                "{a:?} ∩ {b:?}"
            );
            assert!(well_formed(&intersection), "{:?}", ranges(&intersection));
            let counted: u64 = overlapping(a.ranges(), b.ranges())
                .map(|(start, end)| end - start)
                .sum();
            assert_eq!(counted, both.len() as u64, "{a:?} ∩ {b:?}");
            for _ in 0..8 {
                let (start, len) = (rng.up_to(64), rng.up_to(12));
                let all_in = (start..start + len).all(|block| set_a.contains(&block));
                assert_eq!(
                    a.covers(start, start + len),
                    all_in,
                    "{a:?} covers {start}+{len}"
                );
                assert_eq!(a.gaps(start, start + len).is_empty(), all_in, "{a:?} gaps");
            }
        }
    }

    #[test]
    fn extents_truncate_frees_blocks_from_index() {
        let mut extents = Extents::default();
        extents.insert(0, 10);
        extents.insert(20, 30);
        extents.truncate(5);
        assert_eq!(ranges(&extents), [(0, 5)]);
        extents.truncate(0);
        assert_eq!(extents.block_count(), 0);
    }

    fn special() -> Node {
        Node::Special(FileKind::Fifo)
    }

    /// The table finds every inode it holds and no other, before and after inodes are
    /// dropped from the middle, and iterates in number order.
    #[test]
    fn inodes_find_what_they_hold_in_number_order() {
        let mut inodes = Inodes::default();
        for ino in [1, 2, 5, 9, 10] {
            inodes.insert(ino, special());
        }
        assert_eq!(inodes.position(9), Some(3));
        inodes.retain_positions(&[true, false, true, false, true]);
        assert_eq!(inodes.len(), 3);
        for ino in 0..12 {
            let held = [1, 5, 10].contains(&ino);
            assert_eq!(inodes.contains_key(&ino), held, "{ino}");
            assert_eq!(inodes.get(&ino).is_some(), held, "{ino}");
        }
        let order: Vec<u64> = (&inodes).into_iter().map(|(&ino, _)| ino).collect();
        assert_eq!(order, [1, 5, 10]);
        inodes.insert(11, Node::Special(FileKind::Socket));
        assert_eq!(inodes[&11].kind(), FileKind::Socket);
        assert_eq!(
            inodes.get_mut(&10).map(|node| node.kind()),
            Some(FileKind::Fifo)
        );
    }

    /// A number not above every one held would break the binary search: refused loudly.
    #[test]
    #[should_panic(expected = "increasing order")]
    fn inodes_refuse_a_number_out_of_order() {
        let mut inodes = Inodes::default();
        inodes.insert(3, special());
        inodes.insert(3, special());
    }
}
