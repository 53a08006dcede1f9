//! The directory and file handles `SimFs` gives out: the [`DirHandle`] and [`FileHandle`]
//! contracts served from the simulated disk.

use super::*;

/// A directory handle of a [`SimFs`]: the directory's inode, whatever its path becomes.
pub(super) struct SimDir {
    pub(super) fs: SimFs,
    pub(super) ino: u64,
    pub(super) generation: u64,
}

impl fmt::Debug for SimDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDir").field("ino", &self.ino).finish()
    }
}

impl SimDir {
    pub(super) fn begin(&self, op: SimOp, names: &[&str]) -> io::Result<StateGuard<'_>> {
        let mut state = self.fs.call_state();
        state.begin_on(op, names, self.generation)?;
        Ok(state)
    }

    /// The prelude of `unlinkat(2)`, `rmdir(2)` and `renameat(2)`: every name checked,
    /// write access to the mount taken (`EROFS`) before any lookup, then the inode the
    /// first name names (`ENOENT` if none).
    fn begin_removal(&self, op: SimOp, names: &[&str]) -> io::Result<(StateGuard<'_>, u64)> {
        let state = self.begin(op, names)?;
        for name in names {
            check_name(name)?;
        }
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        let ino = state
            .entry(self.ino, names[0])?
            .ok_or_else(|| errno(libc::ENOENT))?;
        Ok((state, ino))
    }
}

impl DirHandle for SimDir {
    fn space(&self) -> io::Result<Space> {
        let mut state = self.begin(SimOp::Space, &[])?;
        let free_bytes = state.read_space();
        state.max_free_reported = state.max_free_reported.max(free_bytes.saturating_add(1));
        Ok(Space {
            free_bytes,
            total_bytes: state.capacity,
            block_bytes: state.block_size,
            usable_bytes: state.capacity,
            read_only: state.read_only,
            free_inodes: None,
        })
    }

    fn probe(&self, name: &str) -> io::Result<Option<Probe>> {
        let state = self.begin(SimOp::Probe, &[name])?;
        check_name(name)?;
        // In a removed directory nothing is found (`ENOENT`, so `None`), as on the kernel.
        let Ok(entries) = state.open_directory(self.ino) else {
            return Ok(None);
        };
        Ok(entries.get(name).map(|&ino| state.probe_ino(ino)))
    }

    fn open_file(&self, name: &str, options: OpenOptions) -> io::Result<Box<dyn FileHandle>> {
        let mut state = self.begin(SimOp::OpenFile, &[name])?;
        let ino = match state.entry(self.ino, name)? {
            None if options.create || options.create_new => {
                if state.read_only {
                    return Err(errno(libc::EROFS));
                }
                let file = Node::Regular {
                    live: FileData::default(),
                    durable: FileData::default(),
                };
                state.link_new(self.ino, name.to_owned(), file, false)
            }
            None => return Err(errno(libc::ENOENT)),
            Some(_) if options.create_new => return Err(errno(libc::EEXIST)),
            Some(ino) => {
                match state.node(ino).kind() {
                    FileKind::Regular => {}
                    FileKind::Symlink => return Err(errno(libc::ELOOP)),
                    FileKind::Directory => return Err(errno(libc::EISDIR)),
                    FileKind::Fifo | FileKind::Socket => return Err(errno(libc::ENXIO)),
                    FileKind::BlockDevice | FileKind::CharDevice => {
                        return Err(errno(libc::EINVAL));
                    }
                }
                if (options.writes() || options.truncate) && state.read_only {
                    return Err(errno(libc::EROFS));
                }
                if options.truncate && options.writes() {
                    *state.file_mut(ino) = FileData::default();
                }
                ino
            }
        };
        *state.open_files.entry(ino).or_insert(0) += 1;
        Ok(Box::new(SimFile {
            fs: self.fs.clone(),
            ino,
            name: name.to_owned(),
            read: options.reads(),
            write: options.writes(),
            append: options.append,
            generation: self.generation,
        }))
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        let (mut state, ino) = self.begin_removal(SimOp::RemoveFile, &[name])?;
        if let Node::Directory { .. } = state.node(ino) {
            return Err(errno(libc::EISDIR));
        }
        state.unlink_entry(self.ino, name, ino);
        state.collect_garbage();
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (mut state, source) = self.begin_removal(SimOp::Rename, &[from, to])?;
        let target = state.entry(self.ino, to)?;
        let source_is_dir = matches!(state.node(source), Node::Directory { .. });
        if let Some(target) = target {
            if target == source {
                return Ok(()); // two names of one file: rename(2) does nothing
            }
            match (source_is_dir, state.node(target)) {
                (false, Node::Directory { .. }) => return Err(errno(libc::EISDIR)),
                (true, Node::Directory { live, .. }) if !live.is_empty() => {
                    return Err(errno(libc::ENOTEMPTY));
                }
                (true, Node::Directory { .. }) => {}
                (true, _) => return Err(errno(libc::ENOTDIR)),
                (false, _) => {}
            }
            state.unlink_entry(self.ino, to, target);
        }
        let entries = state.entries_mut(self.ino);
        entries.remove(from);
        entries.insert(to.to_owned(), source);
        state.collect_garbage();
        Ok(())
    }

    fn link(&self, existing: &str, new: &str) -> io::Result<()> {
        let mut state = self.begin(SimOp::Link, &[existing, new])?;
        let ino = state
            .entry(self.ino, existing)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        if state.entry(self.ino, new)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        // linkat(2) checks write access when it creates the new name, before `vfs_link`
        // refuses a directory.
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        if let Node::Directory { .. } = state.node(ino) {
            return Err(errno(libc::EPERM));
        }
        state.entries_mut(self.ino).insert(new.to_owned(), ino);
        Ok(())
    }

    fn create_dir(&self, name: &str) -> io::Result<()> {
        let mut state = self.begin(SimOp::CreateDir, &[name])?;
        // mkdirat(2) reports a taken name before a read-only mount.
        if state.entry(self.ino, name)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        let dir = Node::Directory {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        state.link_new(self.ino, name.to_owned(), dir, false);
        Ok(())
    }

    fn remove_dir(&self, name: &str) -> io::Result<()> {
        let (mut state, ino) = self.begin_removal(SimOp::RemoveDir, &[name])?;
        match state.node(ino) {
            Node::Directory { live, .. } if !live.is_empty() => {
                return Err(errno(libc::ENOTEMPTY));
            }
            Node::Directory { .. } => {}
            _ => return Err(errno(libc::ENOTDIR)),
        }
        state.unlink_entry(self.ino, name, ino);
        state.collect_garbage();
        Ok(())
    }

    fn read_dir(&self) -> io::Result<Vec<DirEntry>> {
        let state = self.begin(SimOp::ReadDir, &[])?;
        // A removed directory lists as empty: getdents(2) says `ENOENT` there, and
        // readdir(3) turns that into the end of the listing.
        let Ok(entries) = state.open_directory(self.ino) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .iter()
            .map(|(name, &ino)| DirEntry {
                name: name.clone(),
                kind: state.node(ino).kind(),
            })
            .collect())
    }

    fn open_subdir(&self, name: &str) -> io::Result<Box<dyn DirHandle>> {
        let state = self.begin(SimOp::OpenSubdir, &[name])?;
        let ino = state
            .entry(self.ino, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        // `O_DIRECTORY` is checked before `O_NOFOLLOW`: a symlink is `ENOTDIR` too.
        if !matches!(state.node(ino), Node::Directory { .. }) {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(Box::new(SimDir {
            fs: self.fs.clone(),
            ino,
            generation: self.generation,
        }))
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.begin(SimOp::SyncDir, &[])?;
        // A removed directory's descriptor still syncs (there is nothing left to make
        // durable in it).
        if let Some(Node::Directory { live, durable }) = state.nodes.get_mut(&self.ino) {
            durable.clone_from(live);
        }
        state.collect_garbage();
        Ok(())
    }

    /// A filesystem that can share extents, as XFS and btrfs can: callers look at
    /// [`FileHandle::shared_bytes`].
    /// Not counted and never faulted: a property of the mount, not an operation.
    fn fs_kind(&self) -> io::Result<FsKind> {
        Ok(FsKind::Other(SIM_MAGIC))
    }

    /// As `syncfs(2)`: makes the whole filesystem durable — every file's length, blocks
    /// and bytes and every directory's entries, as if each were fsynced — and shows every
    /// pending free ([`SimFs::set_late_frees`]; not on XFS,
    /// [`SimFs::set_sync_fs_shows_late_frees`]). Not counted and never faulted; `EIO`
    /// through a handle from before a crash.
    fn sync_fs(&self) -> io::Result<()> {
        let mut state = self.fs.state();
        if self.generation != state.generation {
            return Err(errno(libc::EIO));
        }
        state.sync_everything();
        if state.sync_fs_shows_late_frees {
            state.pending_free = 0;
            state.pending_seen = false;
        }
        Ok(())
    }

    /// Waits on the lock table, woken as soon as a holder lets go: no wall-clock polling.
    fn lock_within(&self, wait: std::time::Duration) -> io::Result<Option<DirLock>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(lock) = self.try_lock()? {
                return Ok(Some(lock));
            }
            let mut state = self.fs.state();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if state.locks.contains_key(&self.ino) {
                state.lock_waiters += 1;
                let (woken, _) = self
                    .fs
                    .inner
                    .lock_released
                    .wait_timeout(state.0, left)
                    .unwrap_or_else(PoisonError::into_inner);
                StateGuard(woken).lock_waiters -= 1;
            }
        }
    }

    fn try_lock(&self) -> io::Result<Option<DirLock>> {
        let mut state = self.begin(SimOp::LockDir, &[])?;
        // `openat(dir, ".")` and `flock` work on a removed directory too.
        if state.locks.contains_key(&self.ino) {
            return Ok(None);
        }
        let token = state.next_lock_token;
        state.next_lock_token += 1;
        state.locks.insert(self.ino, token);
        Ok(Some(DirLock::new(SimLockGuard {
            inner: Arc::clone(&self.fs.inner),
            dir_ino: self.ino,
            token,
        })))
    }
}

/// An open regular file of a [`SimFs`]: its inode, whatever names it has or loses.
pub(super) struct SimFile {
    pub(super) fs: SimFs,
    pub(super) ino: u64,
    /// The name it was opened by, for fault plans on a name ([`SimFs::fail_nth_on`]).
    pub(super) name: String,
    pub(super) read: bool,
    pub(super) write: bool,
    pub(super) append: bool,
    pub(super) generation: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("ino", &self.ino)
            .field("name", &self.name)
            .field("read", &self.read)
            .field("write", &self.write)
            .field("append", &self.append)
            .finish()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut state = self.fs.state();
        if state.generation == self.generation {
            state.close(self.ino);
        }
    }
}

impl SimFile {
    pub(super) fn begin(&self, op: SimOp) -> io::Result<StateGuard<'_>> {
        let mut state = self.fs.call_state();
        state.begin_on(op, &[&self.name], self.generation)?;
        Ok(state)
    }

    /// The prelude of a call that writes: `EBADF` unless opened for writing (`fallocate`
    /// and `pwrite` say so; `ftruncate` says `EINVAL`), `EROFS` on a read-only filesystem.
    pub(super) fn begin_write(&self, op: SimOp, not_writable: i32) -> io::Result<StateGuard<'_>> {
        let state = self.begin(op)?;
        if !self.write {
            return Err(errno(not_writable));
        }
        if state.read_only {
            return Err(errno(libc::EROFS));
        }
        Ok(state)
    }
}

impl FileHandle for SimFile {
    fn probe(&self) -> io::Result<Probe> {
        let state = self.begin(SimOp::Probe)?;
        Ok(state.probe_ino(self.ino))
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut state = self.begin_write(SimOp::Allocate, libc::EBADF)?;
        let ino = self.ino;
        if len == 0 {
            return Err(errno(libc::EINVAL));
        }
        let end = checked_end(offset, len)?;
        match state.allocate_mode {
            AllocateMode::Unsupported { errno: code } => return Err(errno(code)),
            AllocateMode::NoBlocks => {}
            AllocateMode::Supported => {
                let block_size = state.block_size;
                let (first, last) = (offset / block_size, end.div_ceil(block_size));
                let mut gaps = state.file_mut(ino).blocks.gaps(first, last);
                if let Some(block) = state.eof_block_to_zero(ino, offset)
                    && block < first
                {
                    gaps.insert(0, (block, block + 1));
                }
                let needed: u64 = gaps.iter().map(|(start, end)| end - start).sum();
                let (budget, out_of_space) = state.allocation_budget();
                if needed > budget {
                    return Err(errno(out_of_space));
                }
                let whole_extents = state.whole_extents;
                let file = state.file_mut(ino);
                for (start, end) in gaps {
                    file.blocks.insert(start, end);
                    // `fallocate` reserves its extents at once, unwritten.
                    if let Some((_, allocated_max)) = whole_extents {
                        file.disk_mut().add(start, end, true, allocated_max);
                    }
                }
            }
        }
        let file = state.file_mut(ino);
        file.len = file.len.max(end);
        Ok(())
    }

    fn write_fill(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut state = self.begin_write(SimOp::WriteFill, libc::EBADF)?;
        if len == 0 {
            return Ok(());
        }
        let end = checked_end(offset, len)?;
        let block_size = state.block_size;
        let (first, last) = (offset / block_size, end.div_ceil(block_size));
        let mut gaps = state.file_mut(self.ino).blocks.gaps(first, last);
        if let Some(block) = state.eof_block_to_zero(self.ino, offset)
            && block < first
        {
            gaps.insert(0, (block, block + 1));
        }
        let held_before = state.held_before_write();
        let (mut budget, out_of_space) = state.allocation_budget_for(&gaps);
        if !state.unshare_for_write(self.ino, first, last, &mut budget) {
            return Err(errno(out_of_space));
        }
        // The first block that could not be had, if any: the write stops there.
        let mut stopped_at = None;
        let file = state.file_mut(self.ino);
        for (start, gap_end) in gaps {
            let taken = budget.min(gap_end - start);
            file.blocks.insert(start, start + taken);
            budget -= taken;
            if start + taken < gap_end {
                stopped_at = Some(start + taken);
                break;
            }
        }
        let written_end = stopped_at.map_or(end, |block| (block * block_size).max(offset));
        if written_end > offset {
            file.len = file.len.max(written_end);
        }
        // The pattern is not kept: what it overwrote reads as zeros.
        file.zero(offset, written_end, block_size);
        state.redirtied(self.ino, first, written_end.div_ceil(block_size));
        state.written_late(held_before);
        match stopped_at {
            Some(_) => Err(errno(out_of_space)),
            None => Ok(()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.begin_write(SimOp::SetLen, libc::EINVAL)?;
        if len > MAX_FILE_BYTES {
            return Err(errno(libc::EINVAL));
        }
        if len < state.file_mut(self.ino).len {
            state.shortened.insert(self.ino);
        }
        if let Some(block) = state.eof_block_to_zero(self.ino, len) {
            let gap = [(block, block + 1)];
            let (budget, out_of_space) = state.allocation_budget_for(&gap);
            if budget == 0 {
                return Err(errno(out_of_space));
            }
            state.file_mut(self.ino).blocks.insert(block, block + 1);
            state.redirtied(self.ino, block, block + 1);
        }
        let block_size = state.block_size;
        let file = state.file_mut(self.ino);
        // Bytes cut off read as zeros if the file grows back over them, as on the kernel.
        file.zero(len, file.len.max(len), block_size);
        file.len = len;
        state.free_blocks_from(self.ino, len.div_ceil(block_size));
        state.redirtied(self.ino, len / block_size, u64::MAX);
        Ok(())
    }

    /// The blocks a snapshot ([`SimFs::snapshot_file`]) or a reflink copy
    /// ([`SimFs::reflink`]) shares with the file.
    fn shared_bytes(&self) -> io::Result<Option<u64>> {
        let state = self.begin(SimOp::Probe)?;
        Ok(Some(state.shared_blocks(self.ino) * state.block_size))
    }

    /// A failed one (an injected fault) drops the bytes written since the last sync from
    /// writeback, as Linux does after a writeback error: they still read back, but a
    /// later sync, which succeeds, does not make them durable unless they are written
    /// again.
    fn sync_all(&self) -> io::Result<()> {
        let mut state = self
            .begin(SimOp::SyncFile)
            .inspect_err(|_| self.fs.state().sync_failed(self.ino, self.generation))?;
        state.write_back(self.ino);
        Ok(())
    }

    /// As [`sync_all`](FileHandle::sync_all): the simulator has no metadata that
    /// `fdatasync` would leave behind.
    fn sync_data(&self) -> io::Result<()> {
        let mut state = self
            .begin(SimOp::SyncData)
            .inspect_err(|_| self.fs.state().sync_failed(self.ino, self.generation))?;
        state.write_back(self.ino);
        Ok(())
    }

    /// What [`write_at`](FileHandle::write_at) wrote; zeros for holes and for blocks
    /// allocated by [`allocate`](FileHandle::allocate) or written by
    /// [`write_fill`](FileHandle::write_fill) (the simulator does not keep the pattern).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.begin(SimOp::ReadAt)?;
        if !self.read {
            return Err(errno(libc::EBADF));
        }
        rw_range(offset, buf.len())?;
        let block_size = state.block_size;
        Ok(state.file_mut(self.ino).load(offset, buf, block_size))
    }

    /// Allocates the blocks the range needs and keeps the bytes. When space runs out
    /// part-way the write stops at the first block it could not have and returns what it
    /// wrote before it; with not a byte written it fails with `ENOSPC` (or `EDQUOT` when
    /// the quota is the tighter limit).
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.begin_write(SimOp::WriteAt, libc::EBADF)?;
        let ino = self.ino;
        // `O_APPEND`: the offset is ignored, as Linux's pwrite(2) ignores it.
        let offset = if self.append {
            state.file_mut(ino).len
        } else {
            offset
        };
        let end = rw_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(0);
        }
        if state.overwrite(ino, offset, buf) {
            return Ok(buf.len());
        }
        let block_size = state.block_size;
        let (first, last) = (offset / block_size, end.div_ceil(block_size));
        let mut gaps = state.file_mut(ino).blocks.gaps(first, last);
        if let Some(block) = state.eof_block_to_zero(ino, offset)
            && block < first
        {
            gaps.insert(0, (block, block + 1));
        }
        let held_before = state.held_before_write();
        let (mut budget, out_of_space) = state.allocation_budget_for(&gaps);
        if !state.unshare_for_write(ino, first, last, &mut budget) {
            return Err(errno(out_of_space));
        }
        let file = state.file_mut(ino);
        let mut stopped_at = None;
        for (start, gap_end) in gaps {
            let taken = budget.min(gap_end - start);
            file.blocks.insert(start, start + taken);
            budget -= taken;
            if start + taken < gap_end {
                stopped_at = Some(start + taken);
                break;
            }
        }
        let written_end = stopped_at.map_or(end, |block| (block * block_size).max(offset));
        if written_end == offset {
            state.written_late(held_before);
            return Err(errno(out_of_space));
        }
        let written = (written_end - offset) as usize;
        file.len = file.len.max(written_end);
        state.store(ino, offset, &buf[..written]);
        state.redirtied(ino, first, written_end.div_ceil(block_size));
        state.written_late(held_before);
        Ok(written)
    }
}
