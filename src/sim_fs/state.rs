//! The simulated disk behind the lock: inodes, paths, space, faults and the crash model.

use super::*;

/// Where a path resolved to. The name borrows from the path or from a symlink's target,
/// so a lookup that only wants the inode allocates nothing.
pub(super) struct Lookup<'a> {
    /// The directory holding the last component and its name, or `None` when the path
    /// ends at `/`, `.` or `..` (then `ino` is that directory).
    pub(super) entry: Option<(u64, &'a str)>,
    /// The inode at the path, if any.
    pub(super) ino: Option<u64>,
}

/// A pending fault plan: the `calls_left`-th next call of `op` (on `name`, when given)
/// fails with `errno`.
pub(super) struct Fault {
    pub(super) op: SimOp,
    pub(super) name: Option<String>,
    pub(super) calls_left: u32,
    pub(super) errno: i32,
}

pub(super) struct State {
    pub(super) capacity: u64,
    pub(super) block_size: u64,
    pub(super) other_writers: u64,
    pub(super) quota: Option<u64>,
    pub(super) allocate_mode: AllocateMode,
    pub(super) read_only: bool,
    pub(super) nodes: Inodes,
    pub(super) next_ino: u64,
    pub(super) faults: Vec<Fault>,
    pub(super) calls: [u64; OP_COUNT],
    /// Open file handles per inode: an unlinked file keeps its blocks until the last closes.
    pub(super) open_files: HashMap<u64, usize>,
    /// Bumped by every crash: handles of an older generation fail with `EIO`.
    pub(super) generation: u64,
    /// Calls left before a planned power cut ([`SimFs::crash_after`]; 0: none).
    pub(super) crash_countdown: u32,
    /// The seed of a planned torn power cut ([`SimFs::crash_torn_after`]); `None`: a
    /// plain one.
    pub(super) crash_seed: Option<u64>,
    /// The largest free space a `space` call returned since it was last taken, plus one.
    pub(super) max_free_reported: u64,
    /// Frees show in `space` late ([`SimFs::set_late_frees`]).
    pub(super) late_frees: bool,
    /// Written data shows in `space` only at the next `sync_fs` ([`SimFs::set_late_writes`]).
    pub(super) late_writes: bool,
    /// Bytes written since the last `sync_fs` that `space` does not show yet.
    pub(super) unshown_writes: u64,
    /// Extending a file zeroes the rest of its last block ([`SimFs::set_eof_block_zeroing`]).
    pub(super) eof_block_zeroing: bool,
    /// Files keep their blocks in whole extents ([`SimFs::set_whole_extents`]): the most
    /// blocks in one written extent and in one `allocate`d extent.
    pub(super) whole_extents: Option<(u64, u64)>,
    /// Block buffers kept for the next write ([`FileData::store`]).
    pub(super) spare: SpareBlocks,
    /// Bytes freed but not yet shown by `space`.
    pub(super) pending_free: u64,
    /// Whether a `space` call has seen `pending_free` (the next one shows it).
    pub(super) pending_seen: bool,
    /// Whether `sync_fs` shows the frees still pending (btrfs; not XFS,
    /// [`SimFs::set_sync_fs_shows_late_frees`]).
    pub(super) sync_fs_shows_late_frees: bool,
    /// Snapshots: inode → how many of its first blocks a snapshot holds
    /// ([`SimFs::snapshot_file`]). What the file no longer shares, the snapshot alone holds.
    pub(super) snapshots: BTreeMap<u64, u64>,
    /// Blocks older snapshots hold that their file no longer has, set aside when a newer
    /// snapshot of the same file took its entry in `snapshots` (a snapshot frees nothing).
    pub(super) snapshot_only_blocks: u64,
    /// Reflink copies ([`SimFs::reflink`]): group → inode → the blocks of that file that
    /// are the group's blocks (at the same index in every member, as `FICLONE` makes
    /// them). A block is shared while two members have it; a file's blocks in no group
    /// are its own.
    pub(super) clones: BTreeMap<u64, BTreeMap<u64, Extents>>,
    pub(super) next_clone_group: u64,
    /// A planned move: calls left, from, to ([`SimFs::move_after`]).
    pub(super) pending_move: Option<(u32, Utf8PathBuf, Utf8PathBuf)>,
    /// Planned moves done.
    pub(super) moves: u64,
    pub(super) space_changes: VecDeque<i64>,
    /// Held directory locks: directory inode → token of the holder.
    pub(super) locks: HashMap<u64, u64>,
    pub(super) next_lock_token: u64,
    /// Threads waiting in `lock_within` for a lock to be let go: a release wakes them only
    /// when there are some (a wake-up is a `futex` system call even with no one waiting).
    pub(super) lock_waiters: u32,
    /// Mutable borrows of the state so far ([`SimFs::changes`], counted by `StateGuard`).
    pub(super) changes: u64,
    /// Directories whose name was removed (`rmdir`, or a rename over them): their handles
    /// can no longer create or find anything, as the kernel's dead directories.
    pub(super) removed_dirs: std::collections::HashSet<u64>,
    /// Files shortened since their last sync: a torn crash ([`SimFs::crash_torn`]) brings
    /// them back whole, as synced or as live.
    pub(super) shortened: std::collections::BTreeSet<u64>,
    /// Per file, the blocks whose unsynced bytes a failed sync dropped: clean in the cache
    /// but never written, as Linux leaves pages after a writeback error. Later syncs do
    /// not write them; rewriting a block makes it dirty again.
    pub(super) writeback_lost: BTreeMap<u64, std::collections::BTreeSet<u64>>,
}

/// Component of a path being resolved, borrowed from the path or a symlink's target.
pub(super) enum Component<'a> {
    Root,
    Current,
    Parent,
    Normal(&'a str),
}

pub(super) fn components(path: &str) -> impl Iterator<Item = Component<'_>> + '_ {
    let root = path.starts_with('/').then_some(Component::Root);
    let trailing_slash = (path.len() > 1 && path.ends_with('/')).then_some(Component::Current);
    let middle = path.split('/').filter(|c| !c.is_empty()).map(|c| match c {
        "." => Component::Current,
        ".." => Component::Parent,
        name => Component::Normal(name),
    });
    root.into_iter().chain(middle).chain(trailing_slash)
}

/// The directories a path resolution is in, `/` first: `..` goes back one. Held inline up
/// to a depth no path here reaches, so resolving allocates nothing.
struct Ancestors {
    inline: [u64; Ancestors::INLINE],
    len: usize,
    /// Those past the first `INLINE`.
    deeper: Vec<u64>,
}

impl Ancestors {
    const INLINE: usize = 32;

    fn new() -> Self {
        let mut inline = [0; Ancestors::INLINE];
        inline[0] = ROOT_INO;
        Ancestors {
            inline,
            len: 1,
            deeper: Vec::new(),
        }
    }

    fn last(&self) -> u64 {
        match self.deeper.last() {
            Some(&ino) => ino,
            None => self.inline[self.len - 1],
        }
    }

    fn push(&mut self, ino: u64) {
        if self.len < Ancestors::INLINE {
            self.inline[self.len] = ino;
        } else {
            self.deeper.push(ino);
        }
        self.len += 1;
    }

    /// `..`: back one directory, staying at `/`.
    fn pop(&mut self) {
        if self.len > 1 {
            self.len -= 1;
            if self.len >= Ancestors::INLINE {
                self.deeper.pop();
            }
        }
    }

    fn back_to_root(&mut self) {
        self.len = 1;
        self.deeper.clear();
    }
}

impl State {
    pub(super) fn new(capacity: u64, block_size: u64) -> Self {
        let mut nodes = Inodes::default();
        nodes.insert(
            ROOT_INO,
            Node::Directory {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        );
        State {
            capacity,
            block_size,
            other_writers: 0,
            quota: None,
            allocate_mode: AllocateMode::Supported,
            read_only: false,
            nodes,
            next_ino: ROOT_INO + 1,
            faults: Vec::new(),
            calls: [0; OP_COUNT],
            open_files: HashMap::new(),
            generation: 0,
            crash_countdown: 0,
            crash_seed: None,
            max_free_reported: 0,
            pending_move: None,
            moves: 0,
            late_frees: false,
            late_writes: false,
            unshown_writes: 0,
            whole_extents: None,
            eof_block_zeroing: false,
            spare: SpareBlocks::default(),
            pending_free: 0,
            pending_seen: false,
            sync_fs_shows_late_frees: true,
            snapshots: BTreeMap::new(),
            snapshot_only_blocks: 0,
            clones: BTreeMap::new(),
            next_clone_group: 0,
            space_changes: VecDeque::new(),
            locks: HashMap::new(),
            next_lock_token: 1,
            lock_waiters: 0,
            changes: 0,
            removed_dirs: std::collections::HashSet::new(),
            shortened: std::collections::BTreeSet::new(),
            writeback_lost: BTreeMap::new(),
        }
    }

    // ---- space ----

    pub(super) fn file_bytes(&self) -> u64 {
        let blocks: u64 = self
            .nodes
            .values()
            .map(|node| match node {
                Node::Regular { live, .. } => live.blocks.block_count() + live.pinned_blocks(),
                _ => 0,
            })
            .sum();
        let blocks = blocks.saturating_sub(self.clone_overlap_blocks());
        blocks.saturating_mul(self.block_size)
    }

    // ---- reflink copies ----

    /// The blocks of each member of clone group `group` that are still the group's: what
    /// the map says, as far as the file still has those blocks (a crash may have taken
    /// some back).
    pub(super) fn clone_members(&self, group: u64) -> Vec<(u64, Extents)> {
        let Some(members) = self.clones.get(&group) else {
            return Vec::new();
        };
        members
            .iter()
            .filter_map(|(&ino, blocks)| match self.nodes.get(&ino) {
                Some(Node::Regular { live, .. }) => Some((ino, blocks.intersection(&live.blocks))),
                _ => None,
            })
            .collect()
    }

    /// The blocks of member `ino` of a clone group that are still the group's, as
    /// ranges in order: `blocks` (what the group's map says), as far as the file still
    /// has them. `None` when `ino` is no longer a regular file.
    fn member_ranges<'a>(
        &'a self,
        ino: u64,
        blocks: &'a Extents,
    ) -> Option<impl Iterator<Item = (u64, u64)> + 'a> {
        match self.nodes.get(&ino) {
            Some(Node::Regular { live, .. }) => {
                Some(overlapping(blocks.ranges(), live.blocks.ranges()))
            }
            _ => None,
        }
    }

    /// The blocks both members of a two-member clone group (a file and its copy) still
    /// have, as ranges in order; nothing when one of them is gone. Built from the maps
    /// without allocating: this is the common case, and the accounting asks for it on
    /// every allocation.
    fn pair_shared<'a>(
        &'a self,
        members: &'a BTreeMap<u64, Extents>,
    ) -> impl Iterator<Item = (u64, u64)> + 'a {
        let mut pair = members.iter();
        let a = pair
            .next()
            .and_then(|(&ino, blocks)| self.member_ranges(ino, blocks));
        let b = pair
            .next()
            .and_then(|(&ino, blocks)| self.member_ranges(ino, blocks));
        a.zip(b).into_iter().flat_map(|(a, b)| overlapping(a, b))
    }

    /// Blocks files count more than once because reflink copies share them.
    pub(super) fn clone_overlap_blocks(&self) -> u64 {
        let mut overlap = 0;
        for (&group, group_members) in &self.clones {
            if group_members.len() == 2 {
                // What a file and its copy count twice is what both have.
                overlap += self
                    .pair_shared(group_members)
                    .map(|(start, end)| end - start)
                    .sum::<u64>();
                continue;
            }
            let members = self.clone_members(group);
            let mut union = Extents::default();
            for (_, blocks) in &members {
                overlap += blocks.block_count();
                for (start, end) in blocks.ranges() {
                    union.insert(start, end);
                }
            }
            overlap -= union.block_count();
        }
        overlap
    }

    /// The blocks of `ino` another reflink copy also has.
    pub(super) fn clone_shared(&self, ino: u64) -> Extents {
        let mut shared = Extents::default();
        for (&group, group_members) in &self.clones {
            if !group_members.contains_key(&ino) {
                continue;
            }
            if group_members.len() == 2 {
                // A file and its copy: what either shares is what both have.
                for (start, end) in self.pair_shared(group_members) {
                    shared.insert(start, end);
                }
                continue;
            }
            let members = self.clone_members(group);
            let Some((_, own)) = members.iter().find(|(member, _)| *member == ino) else {
                continue;
            };
            let mut others = Extents::default();
            for (_, blocks) in members.iter().filter(|(member, _)| *member != ino) {
                for (start, end) in blocks.ranges() {
                    others.insert(start, end);
                }
            }
            for (start, end) in own.intersection(&others).ranges() {
                shared.insert(start, end);
            }
        }
        shared
    }

    /// Blocks of `ino` shared with a snapshot or with a reflink copy: what `FIEMAP` flags
    /// `FIEMAP_EXTENT_SHARED`.
    pub(super) fn shared_blocks(&self, ino: u64) -> u64 {
        let snapshot = match self.nodes.get(&ino) {
            Some(Node::Regular { live, .. }) => &live.shared,
            _ => return 0,
        };
        if self.clones.is_empty() {
            return snapshot.block_count();
        }
        let cloned = self.clone_shared(ino);
        // A block both a snapshot and a copy share counts once.
        snapshot.block_count() + cloned.block_count() - snapshot.intersection(&cloned).block_count()
    }

    /// `ino` stops pointing at its groups' blocks in `[first, last)`: from now on they
    /// are its own.
    pub(super) fn leave_clone_groups(&mut self, ino: u64, first: u64, last: u64) {
        for members in self.clones.values_mut() {
            if let Some(blocks) = members.get_mut(&ino) {
                blocks.remove(first, last);
            }
        }
    }

    /// Copy-on-write before a write to `[first, last)` of `ino`: blocks a snapshot or
    /// another reflink copy shares get new blocks, taken from `budget` (the snapshot and
    /// the copy keep the old ones), and so do blocks of written extents with
    /// [`SimFs::set_whole_extents`] (their extents keep the old ones). `false` (nothing
    /// changed) when the budget does not cover them all.
    pub(super) fn unshare_for_write(
        &mut self,
        ino: u64,
        first: u64,
        last: u64,
        budget: &mut u64,
    ) -> bool {
        let mut range = Extents::default();
        let mut copied = Extents::default();
        if let Some(Node::Regular { live, .. }) = self.nodes.get(&ino)
            && live.shared.touches(first, last)
        {
            range.insert(first, last);
            copied = live.shared.intersection(&range);
        }
        if !self.clones.is_empty() {
            range.insert(first, last);
            for (start, end) in self.clone_shared(ino).intersection(&range).ranges() {
                copied.insert(start, end);
            }
        }
        // Blocks of written extents, as far as no snapshot or copy already takes them.
        let written = match self.nodes.get(&ino) {
            Some(Node::Regular { live, .. }) if live.on_disk(first, last) => {
                live.disk.as_ref().map(|d| d.written_in(first, last))
            }
            _ => None,
        };
        let on_disk = written.is_some();
        let rewritten = match written {
            Some(mut written) => {
                for (start, end) in copied.ranges() {
                    written.remove(start, end);
                }
                written.block_count()
            }
            None if copied.block_count() == 0 && self.clones.is_empty() => return true,
            None => 0,
        };
        let needed = copied.block_count() + rewritten;
        if needed > *budget {
            return false;
        }
        *budget -= needed;
        self.leave_clone_groups(ino, first, last);
        let (block_size, late) = (self.block_size, self.late_frees);
        let mut freed = 0;
        if let Some(Node::Regular { live, .. }) = self.nodes.get_mut(&ino) {
            live.shared.remove(first, last);
            if on_disk {
                freed = live.disk_mut().leave(first, last, &copied, false);
            }
        }
        if late && freed > 0 {
            self.pending_free += freed * block_size;
            self.pending_seen = false;
        }
        true
    }

    /// Bytes only snapshots still hold: what each file's last snapshot took less what
    /// the file (if it still exists) shares with it now, and what older snapshots hold
    /// alone.
    pub(super) fn pinned(&self) -> u64 {
        let blocks: u64 = self
            .snapshots
            .iter()
            .map(|(ino, taken)| match self.nodes.get(ino) {
                Some(Node::Regular { live, .. }) => taken - live.shared.block_count().min(*taken),
                _ => *taken,
            })
            .sum();
        (blocks + self.snapshot_only_blocks) * self.block_size
    }

    /// Bytes held: files' blocks, other writers, blocks only a snapshot still holds.
    pub(super) fn held_bytes(&self) -> u64 {
        self.held_bytes_with(self.file_bytes())
    }

    /// [`held_bytes`](State::held_bytes) when files hold `file_bytes` (each walk over
    /// the inodes counts: callers that need both walk once).
    pub(super) fn held_bytes_with(&self, file_bytes: u64) -> u64 {
        file_bytes
            .saturating_add(self.other_writers)
            .saturating_add(self.pinned())
    }

    /// Frees not yet shown, as far as nobody has allocated them since (an allocation
    /// makes them show: XFS flushes its worker before it says `ENOSPC`).
    pub(super) fn pending_bytes(&self) -> u64 {
        self.pending_bytes_with(self.held_bytes())
    }

    /// [`pending_bytes`](State::pending_bytes) when `held` bytes are held.
    pub(super) fn pending_bytes_with(&self, held: u64) -> u64 {
        self.pending_free.min(self.capacity.saturating_sub(held))
    }

    /// Bytes used as `statvfs` shows them: held, plus frees not yet shown.
    pub(super) fn used_bytes(&self) -> u64 {
        let held = self.held_bytes();
        held.saturating_add(self.pending_bytes_with(held))
    }

    /// Free bytes as `statvfs` shows them.
    pub(super) fn free_bytes(&self) -> u64 {
        self.capacity.saturating_sub(self.used_bytes())
    }

    /// Blocks files may still allocate, and the errno once they are gone: `ENOSPC` when
    /// free space is the tighter limit (checked first, like ext4), `EDQUOT` when the quota is.
    /// Frees not yet shown count as free: an allocation waits for them (XFS flushes its
    /// inode worker before it says `ENOSPC`).
    /// [`allocation_budget`](State::allocation_budget) for a write that must fill
    /// `gaps`: an overwrite of allocated blocks none of which a reflink copy shares needs
    /// no new block, so it skips the pass over every file (0 blocks, never drawn on).
    /// The block that extending file `ino` from `from` on (a `set_len` to `from`, or a
    /// write or `allocate` starting at `from`) writes zeros into first when
    /// [`SimFs::set_eof_block_zeroing`] is on: the block holding the file's end, when that
    /// end is inside a block, the block is a hole, and the extension starts past it.
    pub(super) fn eof_block_to_zero(&mut self, ino: u64, from: u64) -> Option<u64> {
        if !self.eof_block_zeroing {
            return None;
        }
        let block_size = self.block_size;
        let file = self.file_mut(ino);
        let block = file.len / block_size;
        let inside = !file.len.is_multiple_of(block_size);
        (inside && from > file.len && !file.blocks.gaps(block, block + 1).is_empty())
            .then_some(block)
    }

    pub(super) fn allocation_budget_for(&self, gaps: &[(u64, u64)]) -> (u64, i32) {
        // Nothing to allocate and nothing to copy on write: no need to count.
        if gaps.is_empty()
            && self.clones.is_empty()
            && self.snapshots.is_empty()
            && self.whole_extents.is_none()
        {
            return (0, libc::ENOSPC);
        }
        self.allocation_budget()
    }

    pub(super) fn allocation_budget(&self) -> (u64, i32) {
        let file_bytes = self.file_bytes();
        let free_blocks = self
            .capacity
            .saturating_sub(self.held_bytes_with(file_bytes))
            / self.block_size;
        match self.quota {
            Some(quota) => {
                let quota_blocks = quota.saturating_sub(file_bytes) / self.block_size;
                if quota_blocks < free_blocks {
                    (quota_blocks, libc::EDQUOT)
                } else {
                    (free_blocks, libc::ENOSPC)
                }
            }
            None => (free_blocks, libc::ENOSPC),
        }
    }

    /// Blocks of `ino` from block `first_freed` on are freed: those shared with a snapshot
    /// stay held by it; with late frees on, the rest show in `space` only later.
    pub(super) fn free_blocks_from(&mut self, ino: u64, first_freed: u64) {
        self.free_blocks_keeping_groups(ino, first_freed, false);
    }

    /// [`free_blocks_from`](State::free_blocks_from); with `keep_groups` the file stays
    /// a member of its reflink groups (its freed blocks no longer count, as a member's
    /// blocks count only as far as the file has them), so a crash that brings its
    /// blocks back finds them shared again, as the kernel does.
    pub(super) fn free_blocks_keeping_groups(
        &mut self,
        ino: u64,
        first_freed: u64,
        keep_groups: bool,
    ) {
        let (block_size, late) = (self.block_size, self.late_frees);
        // Blocks another reflink copy keeps: freeing them here gives nothing back.
        let mut clone_kept = self.clone_shared(ino);
        clone_kept.remove(0, first_freed);
        // With whole extents, what a snapshot or a copy holds leaves the extents (the
        // snapshot or the copy counts it); the rest stays held while its extent is in use.
        let mut held_elsewhere = Extents::default();
        if let Some(Node::Regular { live, .. }) = self.nodes.get(&ino)
            && live.on_disk(first_freed, u64::MAX)
        {
            held_elsewhere = clone_kept.clone();
            for (start, end) in live.shared.ranges() {
                held_elsewhere.insert(start.max(first_freed), end.max(first_freed));
            }
        }
        let clone_kept = clone_kept.block_count();
        if !keep_groups {
            self.leave_clone_groups(ino, first_freed, u64::MAX);
        }
        let Node::Regular { live, .. } = self.node_mut(ino) else {
            return;
        };
        let before = live.blocks.block_count() + live.pinned_blocks();
        live.blocks.truncate(first_freed);
        live.data.split_off(&first_freed);
        if live.on_disk(first_freed, u64::MAX) {
            live.disk_mut()
                .leave(first_freed, u64::MAX, &held_elsewhere, true);
        }
        let after = live.blocks.block_count() + live.pinned_blocks();
        // Negative (as zero) when blocks the file let go stay held by their extents.
        let freed = before.saturating_sub(after);
        let shared_before = live.shared.block_count();
        live.shared.truncate(first_freed);
        let shared_freed = shared_before - live.shared.block_count();
        let freed_bytes = freed
            .saturating_sub(shared_freed)
            .saturating_sub(clone_kept)
            * block_size;
        if late {
            self.pending_free += freed_bytes;
            self.pending_seen = false;
        }
        // Freeing what was written since the last commit: it was never shown.
        self.unshown_writes = self.unshown_writes.saturating_sub(freed_bytes);
    }

    /// A file loses its data (last name and last handle gone).
    pub(super) fn free_file(&mut self, ino: u64) {
        // Nothing can write to it any more; only a crash can bring its blocks back (an
        // unlink whose directory was not synced), still shared with their other copies.
        self.free_blocks_keeping_groups(ino, 0, true);
        if let Node::Regular { live, .. } = self.node_mut(ino) {
            *live = FileData::default();
        }
    }

    /// A `statvfs`: the first one after a free only starts the worker that accounts it;
    /// the next shows it.
    pub(super) fn read_space(&mut self) -> u64 {
        let free = self.free_bytes();
        if self.pending_free > 0 {
            if self.pending_seen {
                self.pending_free = 0;
                self.pending_seen = false;
                return self.shown_free(self.free_bytes());
            }
            self.pending_seen = true;
        }
        self.shown_free(free)
    }

    /// `free` as `space` shows it: without the writes not committed yet.
    fn shown_free(&self, free: u64) -> u64 {
        free.saturating_add(self.unshown_writes).min(self.capacity)
    }

    /// Before a write that may allocate: what is held, when late writes are on
    /// ([`SimFs::set_late_writes`]), for [`written_late`](State::written_late).
    pub(super) fn held_before_write(&self) -> Option<u64> {
        self.late_writes.then(|| self.held_bytes())
    }

    /// After that write: what it took is not shown by `space` until the next `sync_fs`.
    pub(super) fn written_late(&mut self, held_before: Option<u64>) {
        if let Some(before) = held_before {
            self.unshown_writes += self.held_bytes().saturating_sub(before);
        }
    }

    /// Other writers take space as an allocation does: frees not shown yet count.
    pub(super) fn eat(&mut self, bytes: u64) -> u64 {
        let taken = bytes.min(self.capacity.saturating_sub(self.held_bytes()));
        self.other_writers += taken;
        taken
    }

    pub(super) fn free_external(&mut self, bytes: u64) -> u64 {
        let freed = bytes.min(self.other_writers);
        self.other_writers -= freed;
        freed
    }

    // ---- per-call prelude ----

    /// Counts the call, applies the next scheduled space change, fires a due fault plan.
    /// A call cut by a planned power cut, or made through a handle from before a crash,
    /// never reaches the filesystem: it is not counted and fires no fault.
    pub(super) fn begin(&mut self, op: SimOp, names: &[&str]) -> io::Result<()> {
        self.maybe_move();
        if self.crash_countdown > 0 {
            self.crash_countdown -= 1;
            if self.crash_countdown == 0 {
                match self.crash_seed.take() {
                    Some(seed) => self.crash_torn(seed),
                    None => self.crash(),
                }
                return Err(errno(libc::EIO));
            }
        }
        self.calls[op as usize] += 1;
        if let Some(delta) = self.space_changes.pop_front() {
            if delta >= 0 {
                self.eat(delta.unsigned_abs());
            } else {
                self.free_external(delta.unsigned_abs());
            }
        }
        let mut fired = None;
        let applies =
            |f: &Fault| f.op == op && f.name.as_deref().is_none_or(|name| names.contains(&name));
        for fault in self.faults.iter_mut().filter(|f| applies(f)) {
            fault.calls_left -= 1;
            if fault.calls_left == 0 && fired.is_none() {
                fired = Some(fault.errno);
            }
        }
        self.faults.retain(|f| f.calls_left > 0);
        match fired {
            Some(code) => {
                tracing::debug!(?op, errno = code, "sim_fs: injected fault");
                Err(errno(code))
            }
            None => Ok(()),
        }
    }

    // ---- path resolution ----

    pub(super) fn node(&self, ino: u64) -> &Node {
        &self.nodes[&ino]
    }

    pub(super) fn node_mut(&mut self, ino: u64) -> &mut Node {
        self.nodes
            .get_mut(&ino)
            .expect("sim_fs: dangling inode number")
    }

    pub(super) fn live_entries(&self, dir: u64) -> &BTreeMap<String, u64> {
        match self.node(dir) {
            Node::Directory { live, .. } => live,
            _ => unreachable!("sim_fs: resolution stack holds directories only"),
        }
    }

    /// Resolves `path` component by component, following intermediate symlinks, and the
    /// last one too when `follow_last`.
    pub(super) fn resolve<'a>(
        &'a self,
        path: &'a Utf8Path,
        follow_last: bool,
    ) -> io::Result<Lookup<'a>> {
        let text = path.as_str();
        if text.is_empty() {
            return Err(errno(libc::ENOENT));
        }
        if text.bytes().any(|b| b == 0) || !text.starts_with('/') {
            return Err(errno(libc::EINVAL));
        }
        if text.len() >= PATH_MAX {
            return Err(errno(libc::ENAMETOOLONG));
        }
        // The path's own components are read as they come; those of the symlinks followed
        // go first, from `expanded` (next one last), which is only filled by a symlink.
        let mut rest = components(text).peekable();
        let mut expanded: Vec<Component> = Vec::new();
        let mut stack = Ancestors::new();
        let mut hops = 0;
        while let Some(component) = expanded.pop().or_else(|| rest.next()) {
            let is_last = expanded.is_empty() && rest.peek().is_none();
            let name = match component {
                Component::Root => {
                    stack.back_to_root();
                    continue;
                }
                Component::Current => continue,
                Component::Parent => {
                    stack.pop();
                    continue;
                }
                Component::Normal(name) => name,
            };
            if name.len() > NAME_MAX {
                return Err(errno(libc::ENAMETOOLONG));
            }
            let dir = stack.last();
            let Some(&ino) = self.live_entries(dir).get(name) else {
                if is_last {
                    return Ok(Lookup {
                        entry: Some((dir, name)),
                        ino: None,
                    });
                }
                return Err(errno(libc::ENOENT));
            };
            match self.node(ino) {
                Node::Symlink { target } if !is_last || follow_last => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(errno(libc::ELOOP));
                    }
                    if target.is_empty() {
                        return Err(errno(libc::ENOENT));
                    }
                    let at = expanded.len();
                    expanded.extend(components(target));
                    expanded[at..].reverse();
                }
                _ if is_last => {
                    return Ok(Lookup {
                        entry: Some((dir, name)),
                        ino: Some(ino),
                    });
                }
                Node::Directory { .. } => stack.push(ino),
                _ => return Err(errno(libc::ENOTDIR)),
            }
        }
        Ok(Lookup {
            entry: None,
            ino: Some(stack.last()),
        })
    }

    pub(super) fn file_mut(&mut self, ino: u64) -> &mut FileData {
        match self.node_mut(ino) {
            Node::Regular { live, .. } => live,
            _ => unreachable!("sim_fs: open_regular returned a non-regular inode"),
        }
    }

    // ---- inode table ----

    /// Adds `node` under `name` in `parent`, durable at once when `durable`.
    pub(super) fn link_new(&mut self, parent: u64, name: String, node: Node, durable: bool) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        match self.node_mut(parent) {
            Node::Directory {
                live,
                durable: durable_entries,
            } => {
                if durable {
                    durable_entries.insert(name.clone(), ino);
                }
                live.insert(name, ino);
            }
            _ => unreachable!("sim_fs: parent is a directory"),
        }
        ino
    }

    /// `st_nlink` of `ino`: the live names of a file; 1 for a directory, as btrfs reports
    /// it (ext4 and XFS count `.` and each subdirectory's `..` too; nothing here uses a
    /// directory's count, and 1 is what tools read as "not counted").
    pub(super) fn links(&self, ino: u64) -> u64 {
        match self.node(ino) {
            Node::Directory { .. } => 1,
            _ => self
                .nodes
                .values()
                .map(|node| match node {
                    Node::Directory { live, .. } => {
                        live.values().filter(|&&child| child == ino).count() as u64
                    }
                    _ => 0,
                })
                .sum(),
        }
    }

    /// What `lstat` says of `ino`.
    pub(super) fn probe_ino(&self, ino: u64) -> Probe {
        self.node(ino).probe(self.block_size, self.links(ino))
    }

    /// Drops inodes no directory names, live or durable.
    pub(super) fn collect_garbage(&mut self) {
        // Marks by place in the inode table, not a set of numbers: no allocation per inode.
        let mut reachable = vec![false; self.nodes.len()];
        let mut mark = |ino: u64| match self.nodes.position(ino) {
            Some(at) if !reachable[at] => {
                reachable[at] = true;
                true
            }
            _ => false,
        };
        mark(ROOT_INO);
        for &ino in self.open_files.keys() {
            mark(ino);
        }
        let mut queue = vec![ROOT_INO];
        while let Some(ino) = queue.pop() {
            if let Some(Node::Directory { live, durable }) = self.nodes.get(&ino) {
                for &child in live.values().chain(durable.values()) {
                    if mark(child) {
                        queue.push(child);
                    }
                }
            }
        }
        self.nodes.retain_positions(&reachable);
    }

    /// The directory and name where something new can go at `path`: `EEXIST` if taken.
    pub(super) fn free_entry(&self, path: &Utf8Path) -> io::Result<(u64, String)> {
        match self.resolve(path, false)? {
            Lookup {
                entry: Some(entry),
                ino: None,
            } => Ok((entry.0, entry.1.to_owned())),
            _ => Err(errno(libc::EEXIST)),
        }
    }

    /// Creates `node` at `path` for the setup API: durable at once, `EEXIST` if taken.
    pub(super) fn setup_create(&mut self, path: &Utf8Path, node: Node) -> io::Result<u64> {
        let (parent, name) = self.free_entry(path)?;
        Ok(self.link_new(parent, name, node, true))
    }

    pub(super) fn mkdir_all(&mut self, path: &Utf8Path) -> io::Result<()> {
        match self.resolve(path, true) {
            Ok(Lookup { ino: Some(ino), .. }) => match self.node(ino) {
                Node::Directory { .. } => Ok(()),
                _ => Err(errno(libc::EEXIST)),
            },
            Ok(Lookup { ino: None, .. }) => self.mkdir(path),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                if let Some(parent) = path.parent() {
                    self.mkdir_all(parent)?;
                }
                self.mkdir(path)
            }
            Err(err) => Err(err),
        }
    }

    pub(super) fn mkdir(&mut self, path: &Utf8Path) -> io::Result<()> {
        let dir = Node::Directory {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        self.setup_create(path, dir).map(drop)
    }

    /// See [`SimFs::crash`].
    pub(super) fn crash(&mut self) {
        for node in self.nodes.values_mut() {
            match node {
                Node::Directory { live, durable } => live.clone_from(durable),
                Node::Regular { live, durable } => live.clone_from(durable),
                Node::Symlink { .. } | Node::Special(_) => {}
            }
        }
        self.open_files.clear();
        self.removed_dirs.clear();
        self.shortened.clear();
        self.writeback_lost.clear();
        // The filesystem mounted again counts what the disk holds: no free is late, and
        // blocks a crash gave back to a file are not also counted as freed.
        self.pending_free = 0;
        self.pending_seen = false;
        self.unshown_writes = 0;
        self.generation += 1;
        self.crash_countdown = 0;
        self.crash_seed = None;
        self.collect_garbage();
        self.locks.clear();
        tracing::debug!(inodes = self.nodes.len(), "sim_fs: crash");
    }

    /// See [`SimFs::crash_torn`]: makes a seeded mix of each inode's durable and live
    /// states durable, then crashes.
    pub(super) fn crash_torn(&mut self, seed: u64) {
        let mut rng = SplitMix64(seed);
        // Directory changes, grouped: every change naming an inode (before or after) is in
        // that inode's group, and a change naming two inodes (a rename over a name) joins
        // their groups; a group is kept or dropped whole.
        let mut changes: Vec<(u64, String, Option<u64>, Option<u64>)> = Vec::new();
        for (&dir, node) in &self.nodes {
            if let Node::Directory { live, durable } = node {
                for name in live.keys().chain(durable.keys()) {
                    let (was, is) = (durable.get(name).copied(), live.get(name).copied());
                    if was != is {
                        changes.push((dir, name.clone(), was, is));
                    }
                }
            }
        }
        changes.sort();
        changes.dedup();
        let mut group: BTreeMap<u64, u64> = BTreeMap::new();
        fn root(group: &mut BTreeMap<u64, u64>, ino: u64) -> u64 {
            let parent = *group.entry(ino).or_insert(ino);
            if parent == ino {
                return ino;
            }
            let top = root(group, parent);
            group.insert(ino, top);
            top
        }
        for (_, _, was, is) in &changes {
            if let (Some(a), Some(b)) = (was, is) {
                let (a, b) = (root(&mut group, *a), root(&mut group, *b));
                group.insert(a.max(b), a.min(b));
            }
        }
        let mut kept: BTreeMap<u64, bool> = BTreeMap::new();
        for (dir, name, was, is) in changes {
            let top = root(&mut group, is.or(was).expect("a change names an inode"));
            if *kept.entry(top).or_insert_with(|| rng.coin())
                && let Some(Node::Directory { durable, .. }) = self.nodes.get_mut(&dir)
            {
                match is {
                    Some(ino) => durable.insert(name, ino),
                    None => durable.remove(&name),
                };
            }
        }
        // A file with no live name: its data as synced (what it had before its unlink
        // may have reached the disk or not; the live state is already freed).
        let named: std::collections::BTreeSet<u64> = self.live_names().collect();
        let block_size = self.block_size;
        for (ino, node) in &mut self.nodes {
            if let Node::Regular { live, durable } = node
                && named.contains(ino)
            {
                // Blocks a failed sync dropped never reach the disk.
                let live = &written_back(live, durable, self.writeback_lost.get(ino));
                *durable = if self.shortened.contains(ino) {
                    if rng.coin() {
                        live.clone()
                    } else {
                        durable.clone()
                    }
                } else {
                    torn_file(durable, live, block_size, &mut rng)
                };
            }
        }
        self.crash();
    }

    /// What `syncfs(2)` does: every inode's live state becomes the state a crash returns to.
    pub(super) fn sync_everything(&mut self) {
        let (lost, spare) = (&self.writeback_lost, &mut self.spare);
        let whole_extents = self.whole_extents;
        for (ino, node) in &mut self.nodes {
            match node {
                // Most directories did not change since the last sync: no copy for them.
                Node::Directory { live, durable } => {
                    if durable != live {
                        durable.clone_from(live);
                    }
                }
                Node::Regular { live, durable } => {
                    if let Some((written_max, _)) = whole_extents {
                        live.disk
                            .get_or_insert_default()
                            .close(&live.blocks, written_max);
                    }
                    match lost.get(ino) {
                        None => durable.sync_from(live, spare),
                        Some(lost) => *durable = written_back(live, durable, Some(lost)),
                    }
                }
                Node::Symlink { .. } | Node::Special(_) => {}
            }
        }
        self.shortened.clear();
        self.unshown_writes = 0;
        self.collect_garbage();
    }

    /// A successful `fsync`/`fdatasync` of `ino`: what it has becomes durable, but for the
    /// blocks a failed one dropped ([`State::writeback_lost`]).
    pub(super) fn write_back(&mut self, ino: u64) {
        let lost = self.writeback_lost.get(&ino);
        if let Some(Node::Regular { live, durable }) = self.nodes.get_mut(&ino) {
            if let Some((written_max, _)) = self.whole_extents {
                live.disk
                    .get_or_insert_default()
                    .close(&live.blocks, written_max);
            }
            match lost {
                None => durable.sync_from(live, &mut self.spare),
                Some(lost) => *durable = written_back(live, durable, Some(lost)),
            }
        }
        self.shortened.remove(&ino);
    }

    /// A failed `fsync`/`fdatasync` of `ino` through a handle of `generation`: the bytes
    /// written since the last sync are dropped from writeback, as Linux marks the pages
    /// clean after a writeback error, and the error is reported once.
    pub(super) fn sync_failed(&mut self, ino: u64, generation: u64) {
        if generation != self.generation {
            return; // a power cut or a stale handle: nothing was in flight
        }
        if let Some(Node::Regular { live, durable }) = self.nodes.get(&ino) {
            let blocks = live.data.keys().chain(durable.data.keys()).copied();
            let dropped: Vec<u64> = blocks
                .filter(|b| live.data.get(b) != durable.data.get(b))
                .collect();
            self.writeback_lost.entry(ino).or_default().extend(dropped);
        }
    }

    /// The common write, done at once: bytes into blocks `ino` already has, starting
    /// within its length, with no reflink copies to unshare and no lost writeback to
    /// redirty, so nothing is allocated and no space can run out. Returns whether it was
    /// that write (`false`: nothing done, the caller takes the general path).
    pub(super) fn overwrite(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> bool {
        if !self.clones.is_empty() || !self.writeback_lost.is_empty() {
            return false;
        }
        let block_size = self.block_size;
        let Some(Node::Regular { live, .. }) = self.nodes.get_mut(&ino) else {
            return false;
        };
        let end = offset + bytes.len() as u64;
        // Shifts, not divisions: a block size is a power of two (`SimFs::with_block_size`).
        let shift = block_size.trailing_zeros();
        let (first, last) = (
            offset >> shift,
            (end >> shift) + u64::from(end & (block_size - 1) != 0),
        );
        // Blocks a snapshot shares are copied on write: the slow path takes new ones.
        if offset > live.len
            || !live.blocks.covers(first, last)
            || live.shared.touches(first, last)
            || live.on_disk(first, last)
        {
            return false;
        }
        live.len = live.len.max(end);
        live.store(offset, bytes, block_size, &mut self.spare);
        true
    }

    /// Copies `bytes` into the live file `ino` at `offset` ([`FileData::store`]).
    pub(super) fn store(&mut self, ino: u64, offset: u64, bytes: &[u8]) {
        if let Some(Node::Regular { live, .. }) = self.nodes.get_mut(&ino) {
            live.store(offset, bytes, self.block_size, &mut self.spare);
        }
    }

    /// Blocks `[first, last)` of `ino` were written again: dirty, so a sync writes them.
    pub(super) fn redirtied(&mut self, ino: u64, first: u64, last: u64) {
        if let Some(lost) = self.writeback_lost.get_mut(&ino) {
            let rewritten: Vec<u64> = lost.range(first..last).copied().collect();
            for block in rewritten {
                lost.remove(&block);
            }
            if lost.is_empty() {
                self.writeback_lost.remove(&ino);
            }
        }
    }

    /// See [`SimFs::rename`].
    pub(super) fn rename_path(&mut self, from: &Utf8Path, to: &Utf8Path) -> io::Result<()> {
        let (from_dir, from_name, ino) = match self.resolve(from, false)? {
            Lookup {
                entry: Some((dir, name)),
                ino: Some(ino),
            } => (dir, name.to_owned(), ino),
            Lookup { entry: None, .. } => return Err(errno(libc::EINVAL)),
            _ => return Err(errno(libc::ENOENT)),
        };
        let target = self.resolve(to, false)?;
        // Two names of one file (or one name twice): `rename(2)` does nothing.
        if target.ino == Some(ino) {
            return Ok(());
        }
        // Into itself, however `to` is spelt (a symlink, `..`): `rename(2)`'s `EINVAL`,
        // before `EEXIST` as there.
        if let Some((dir, _)) = target.entry
            && self.holds_dir(ino, dir)
        {
            return Err(errno(libc::EINVAL));
        }
        let (to_dir, to_name) = self.free_entry(to)?;
        if let Node::Directory { live, .. } = self.node_mut(from_dir) {
            live.remove(&from_name);
        }
        if let Node::Directory { live, .. } = self.node_mut(to_dir) {
            live.insert(to_name, ino);
        }
        // Durably, as `mv` and a sync of both directories: each directory's entries are
        // durable as they are live, so a name only the last sync knew is gone too.
        for dir in [from_dir, to_dir] {
            if let Node::Directory { live, durable } = self.node_mut(dir) {
                durable.clone_from(live);
            }
        }
        self.collect_garbage();
        Ok(())
    }

    /// Whether `dir` is `root` or inside it (by live names).
    fn holds_dir(&self, root: u64, dir: u64) -> bool {
        let mut queue = vec![root];
        while let Some(ino) = queue.pop() {
            if ino == dir {
                return true;
            }
            if let Some(Node::Directory { live, .. }) = self.nodes.get(&ino) {
                queue.extend(live.values().copied());
            }
        }
        false
    }

    /// Runs a planned [`SimFs::move_after`] when its call comes.
    pub(super) fn maybe_move(&mut self) {
        let Some((left, from, to)) = self.pending_move.take() else {
            return;
        };
        if left > 1 {
            self.pending_move = Some((left - 1, from, to));
            return;
        }
        let moved = self
            .rename_path(&from, &to)
            .and_then(|()| self.mkdir(&from));
        match moved {
            Ok(()) => self.moves += 1,
            Err(error) => tracing::debug!(%from, %to, %error, "sim_fs: planned move failed"),
        }
    }

    // ---- handles ----

    /// The prelude of a handle's call: `EIO` for a handle from before a crash, then
    /// [`begin`](State::begin).
    pub(super) fn begin_on(
        &mut self,
        op: SimOp,
        names: &[&str],
        generation: u64,
    ) -> io::Result<()> {
        if generation != self.generation {
            return Err(errno(libc::EIO));
        }
        self.begin(op, names)
    }

    /// The directory `ino` of a handle: `ENOENT` once it has been removed.
    pub(super) fn open_directory(&self, ino: u64) -> io::Result<&BTreeMap<String, u64>> {
        if self.removed_dirs.contains(&ino) {
            return Err(errno(libc::ENOENT));
        }
        match self.nodes.get(&ino) {
            Some(Node::Directory { live, .. }) => Ok(live),
            _ => Err(errno(libc::ENOENT)),
        }
    }

    /// The inode `name` names in the directory `dir`, if any.
    pub(super) fn entry(&self, dir: u64, name: &str) -> io::Result<Option<u64>> {
        check_name(name)?;
        Ok(self.open_directory(dir)?.get(name).copied())
    }

    pub(super) fn entries_mut(&mut self, dir: u64) -> &mut BTreeMap<String, u64> {
        match self.node_mut(dir) {
            Node::Directory { live, .. } => live,
            _ => unreachable!("sim_fs: a directory handle names a directory"),
        }
    }

    /// Drops the live name `name` of `dir` (which names `ino`); a regular file losing its
    /// last name with no handle open gives its blocks back.
    pub(super) fn unlink_entry(&mut self, dir: u64, name: &str, ino: u64) {
        self.entries_mut(dir).remove(name);
        if let Node::Directory { .. } = self.node(ino) {
            self.removed_dirs.insert(ino);
        }
        if self.links(ino) == 0
            && !self.open_files.contains_key(&ino)
            && let Node::Regular { .. } = self.node(ino)
        {
            self.free_file(ino);
        }
    }

    /// A file handle closed: the last one of a file without names gives its blocks back.
    pub(super) fn close(&mut self, ino: u64) {
        let Some(count) = self.open_files.get_mut(&ino) else {
            return; // a crash closed everything already
        };
        *count -= 1;
        if *count == 0 {
            self.open_files.remove(&ino);
            if self.nodes.contains_key(&ino) && self.links(ino) == 0 {
                self.free_file(ino);
                self.collect_garbage();
            }
        }
    }

    /// The inode each live name in every directory names, once per name.
    fn live_names(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes
            .values()
            .filter_map(|node| match node {
                Node::Directory { live, .. } => Some(live.values().copied()),
                _ => None,
            })
            .flatten()
    }

    /// See [`SimFs::for_each_entry`]: visits `ino`, named `path`, and what is under it.
    pub(super) fn walk(
        &self,
        ino: u64,
        path: &mut String,
        visit: &mut impl FnMut(&str, &Probe, u64),
    ) {
        // Every inode's live names, counted in one pass rather than one pass per entry.
        let mut named: Vec<u64> = self.live_names().collect();
        named.sort_unstable();
        self.walk_counted(ino, path, visit, &named);
    }

    /// [`walk`](State::walk) given every live name's inode, sorted.
    fn walk_counted(
        &self,
        ino: u64,
        path: &mut String,
        visit: &mut impl FnMut(&str, &Probe, u64),
        named: &[u64],
    ) {
        let node = self.node(ino);
        let links = || {
            let first = named.partition_point(|&n| n < ino);
            named[first..].partition_point(|&n| n == ino) as u64
        };
        let (links, shared) = match node {
            Node::Directory { .. } => (1, 0),
            Node::Regular { .. } => (links(), self.shared_blocks(ino) * self.block_size),
            _ => (links(), 0),
        };
        visit(path, &node.probe(self.block_size, links), shared);
        if let Node::Directory { live, .. } = node {
            let len = path.len();
            for (name, &child) in live {
                if !path.ends_with('/') {
                    path.push('/');
                }
                path.push_str(name);
                self.walk_counted(child, path, visit, named);
                path.truncate(len);
            }
        }
    }

    pub(super) fn snapshot(&self) -> SimSnapshot {
        // Every name's link count in one pass, not one pass per name.
        let mut names: HashMap<u64, u64> = HashMap::new();
        for child in self.live_names() {
            *names.entry(child).or_insert(0) += 1;
        }
        let mut entries = BTreeMap::new();
        let mut shared_bytes = BTreeMap::new();
        let mut queue = vec![(Utf8PathBuf::from("/"), ROOT_INO)];
        while let Some((path, ino)) = queue.pop() {
            let node = self.node(ino);
            let links = match node {
                Node::Directory { live, .. } => {
                    queue.extend(live.iter().map(|(name, &child)| (path.join(name), child)));
                    1
                }
                _ => names.get(&ino).copied().unwrap_or(0),
            };
            if let Node::Regular { .. } = node {
                let shared = self.shared_blocks(ino);
                if shared > 0 {
                    shared_bytes.insert(path.clone(), shared * self.block_size);
                }
            }
            entries.insert(path, node.probe(self.block_size, links));
        }
        SimSnapshot {
            entries,
            shared_bytes,
            other_writers_bytes: self.other_writers,
        }
    }
}

/// Keeps one directory lock of a [`SimFs`]; dropping it releases the lock unless a crash
/// emptied the lock table since (the token no longer matches).
pub(super) struct SimLockGuard {
    pub(super) inner: Arc<Inner>,
    pub(super) dir_ino: u64,
    pub(super) token: u64,
}

/// The locked state. Every mutable borrow of it counts as a change
/// ([`SimFs::changes`]): nothing can change the state without one.
pub(super) struct StateGuard<'a>(pub(super) MutexGuard<'a, State>);

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.changes += 1;
        &mut self.0
    }
}

impl Drop for SimLockGuard {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        if state.locks.get(&self.dir_ino) == Some(&self.token) {
            state.locks.remove(&self.dir_ino);
            if state.lock_waiters > 0 {
                self.inner.lock_released.notify_all();
            }
        }
    }
}

/// Checks that an offset and length stay within the largest file: `EINVAL` for an offset
/// `off_t` cannot hold, `EFBIG` for an end past it. Returns the end.
pub(super) fn checked_end(offset: u64, len: u64) -> io::Result<u64> {
    if offset > MAX_FILE_BYTES {
        return Err(errno(libc::EINVAL));
    }
    offset
        .checked_add(len)
        .filter(|&end| end <= MAX_FILE_BYTES)
        .ok_or_else(|| errno(libc::EFBIG))
}

/// The end of a `pread`/`pwrite` of `len` bytes at `offset`: `EINVAL` when the offset or
/// the end is past `i64::MAX` (a negative `loff_t`), as the kernel's `rw_verify_area`
/// says. (The kernel's `EFBIG` past a filesystem's largest file is not modelled: a
/// `SimFs` file may reach `i64::MAX`, as on tmpfs and btrfs; ext4 stops at 16 TiB.)
pub(super) fn rw_range(offset: u64, len: usize) -> io::Result<u64> {
    offset
        .checked_add(len as u64)
        .filter(|&end| end <= MAX_FILE_BYTES)
        .ok_or_else(|| errno(libc::EINVAL))
}
