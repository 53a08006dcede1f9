//! The reference model: what each operation may do, predicted from plain numbers.
//!
//! Written from the rules (the README lists them), not from the lifecycle: it never calls
//! [`decide`](disk_reserve::decide) or anything in `reserve.rs`. It knows a filesystem as a
//! capacity, a block size, a quota, the bytes other writers and other files hold, and the
//! one thing at the reserve path, whose allocated blocks always form a prefix
//! `[0, blocks)` (every way the scenario makes or changes a file keeps that shape).

use disk_reserve::{DeferReason, Ensured, FileKind, Released, Strategy};

/// What is at the reserve path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Nothing.
    Absent,
    /// A regular file of `len` bytes whose first `blocks` blocks are allocated.
    File { len: u64, blocks: u64 },
    /// A regular file whose first `shared` blocks a snapshot or a reflink copy shares:
    /// deleting it gives back only the others.
    Shared { len: u64, blocks: u64, shared: u64 },
    /// A regular file with another name outside the home (a hard link of the bystander):
    /// its blocks are counted outside, never the reserve's.
    Linked { len: u64, blocks: u64 },
    /// Something else (planted by the scenario).
    Other(FileKind),
}

impl Entry {
    /// Blocks the file at the reserve path holds (shared ones included; a linked file's
    /// are counted outside).
    fn blocks(self) -> u64 {
        match self {
            Entry::File { blocks, .. } | Entry::Shared { blocks, .. } => blocks,
            _ => 0,
        }
    }

    /// Blocks a snapshot shares with it.
    fn shared(self) -> u64 {
        match self {
            Entry::Shared { shared, .. } => shared,
            _ => 0,
        }
    }
}

/// What `fallocate` does, in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallocate {
    /// Allocates, all or nothing.
    Supported,
    /// Fails with this errno.
    Unsupported(i32),
    /// Succeeds, extends the length, allocates nothing.
    NoBlocks,
}

/// Why the model expects a call to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Something not a regular file is at the path.
    NotRegular(FileKind),
    /// The size is 0.
    ZeroSize,
    /// The size is larger than the filesystem.
    TooBig,
    /// The size plus the headroom is more than the filesystem can ever give.
    NeverFits,
    /// The filesystem is read-only.
    ReadOnly,
    /// `fallocate` succeeded but allocated nothing, and the strategy forbids writing.
    NotAllocated,
    /// `fallocate` failed with this errno and the strategy or errno forbids writing.
    AllocateFailed(i32),
}

/// The model's prediction for one `ensure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EnsureForecast {
    /// The outcome when nothing interferes.
    pub result: Result<Ensured, Refusal>,
    /// The reserve path afterwards when nothing interferes.
    pub after: Entry,
    /// The reserve path after an oversized file was cut to the size, if it was oversized:
    /// besides `before`, the one other state a failed `ensure` may leave (shrinking only
    /// gives space back).
    pub shrunk: Option<Entry>,
}

/// A filesystem in plain numbers.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub block_bytes: u64,
    pub capacity_bytes: u64,
    pub quota_bytes: Option<u64>,
    pub fallocate: Fallocate,
    pub read_only: bool,
    /// Bytes other writers hold.
    pub others_bytes: u64,
    /// Bytes files outside the reserve path hold.
    pub outside_bytes: u64,
    /// Bytes only snapshots or a reflink copy hold.
    pub pinned_bytes: u64,
    /// Whether the pinned bytes are a file's (a reflink copy outside the home): then they
    /// count against the quota like any file's. (Snapshots and copies are never mixed.)
    pub pinned_in_files: bool,
    /// What is at the reserve path now.
    pub entry: Entry,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

impl Model {
    /// Bytes held by files, with `entry` at the reserve path.
    fn file_bytes_with(&self, entry: Entry) -> u64 {
        let copy = if self.pinned_in_files {
            self.pinned_bytes
        } else {
            0
        };
        self.outside_bytes + entry.blocks() * self.block_bytes + copy
    }

    /// Free bytes, with `entry` at the reserve path.
    pub fn free_with(&self, entry: Entry) -> u64 {
        let snapshots = if self.pinned_in_files {
            0
        } else {
            self.pinned_bytes
        };
        self.capacity_bytes
            .saturating_sub(self.file_bytes_with(entry) + self.others_bytes + snapshots)
    }

    /// Free bytes once `entry` is gone from the reserve path: its shared blocks stay
    /// with the snapshot.
    fn free_without(&self, entry: Entry) -> u64 {
        let pinned = entry.shared() * self.block_bytes;
        self.free_with(Entry::Absent).saturating_sub(pinned)
    }

    /// Free bytes now.
    pub fn free(&self) -> u64 {
        self.free_with(self.entry)
    }

    /// Another writer takes up to `bytes` (never more than is free).
    pub fn eat(&mut self, bytes: u64) {
        self.others_bytes += bytes.min(self.free());
    }

    /// Another writer frees up to `bytes` of what it holds.
    pub fn free_external(&mut self, bytes: u64) {
        self.others_bytes -= bytes.min(self.others_bytes);
    }

    /// Blocks a file may still allocate with `entry` at the reserve path.
    fn budget_blocks(&self, entry: Entry) -> u64 {
        let by_space = self.free_with(entry) / self.block_bytes;
        match self.quota_bytes {
            Some(quota) => {
                by_space.min(quota.saturating_sub(self.file_bytes_with(entry)) / self.block_bytes)
            }
            None => by_space,
        }
    }

    /// Which limit an allocation from `entry` meets first: free space (checked first,
    /// `ENOSPC`) or the quota (`EDQUOT`).
    fn out_of_space_reason(&self, entry: Entry) -> DeferReason {
        let by_space = self.free_with(entry) / self.block_bytes;
        match self.quota_bytes {
            Some(quota)
                if quota.saturating_sub(self.file_bytes_with(entry)) / self.block_bytes
                    < by_space =>
            {
                DeferReason::Quota
            }
            _ => DeferReason::RanOut,
        }
    }

    /// Rule 1: complete means the configured length with at least that many bytes
    /// really allocated.
    fn is_complete(&self, entry: Entry, size: u64) -> bool {
        matches!(entry, Entry::File { len, blocks } if len == size && blocks * self.block_bytes >= size)
    }

    /// What `ensure` with this configuration does from the current state.
    pub fn ensure(&self, size: u64, headroom: u64, strategy: Strategy) -> EnsureForecast {
        let before = self.entry;
        let forecast = |result, after, shrunk| EnsureForecast {
            result,
            after,
            shrunk,
        };
        if size == 0 {
            return forecast(Err(Refusal::ZeroSize), before, None);
        }
        if let Entry::Other(kind) = before {
            return forecast(Err(Refusal::NotRegular(kind)), before, None);
        }
        if self.is_complete(before, size) {
            let held = before.blocks() * self.block_bytes;
            return forecast(
                Ok(Ensured::Present {
                    allocated_bytes: held,
                }),
                before,
                None,
            );
        }

        // Rule 9: longer than configured is cut to the size first; that keeps the first
        // blocks and frees the rest.
        let mut now = before;
        let mut shrunk = None;
        if let Entry::File { len, blocks } = before
            && len > size
        {
            if self.read_only {
                return forecast(Err(Refusal::ReadOnly), before, None);
            }
            now = Entry::File {
                len: size,
                blocks: blocks.min(div_ceil(size, self.block_bytes)),
            };
            shrunk = Some(now);
            if self.is_complete(now, size) {
                let allocated_bytes = now.blocks() * self.block_bytes;
                let outcome = Ensured::Shrunk {
                    from_len: len,
                    allocated_bytes,
                };
                return forecast(Ok(outcome), now, shrunk);
            }
        }

        // Rule 4: allocate only when what is missing plus the headroom is free. A linked
        // or shared file's blocks are not the reserve's own.
        let held = match now {
            Entry::File { blocks, .. } => blocks * self.block_bytes,
            _ => 0,
        };
        let missing = size - held.min(size);
        if missing > 0 {
            // Read-only before any space decision (rule 4, 11).
            if self.read_only {
                return forecast(Err(Refusal::ReadOnly), now, shrunk);
            }
            if size > self.capacity_bytes {
                return forecast(Err(Refusal::TooBig), now, shrunk);
            }
            let whole = div_ceil(size, self.block_bytes) * self.block_bytes;
            if whole.saturating_add(headroom) > self.capacity_bytes {
                return forecast(Err(Refusal::NeverFits), now, shrunk);
            }
            let free_bytes = self.free_with(now);
            let needed_bytes = missing.saturating_add(headroom);
            if free_bytes < needed_bytes {
                let outcome = Ensured::Deferred {
                    free_bytes,
                    needed_bytes,
                    reason: DeferReason::LowSpace,
                };
                return forecast(Ok(outcome), now, shrunk);
            }
        }
        if self.read_only {
            return forecast(Err(Refusal::ReadOnly), now, shrunk);
        }

        // The blocks the file keeps: none when absent or sparse (a sparse file is cut to
        // 0 and filled again), all of them when dense.
        let kept = match now {
            Entry::File { len, blocks } if blocks * self.block_bytes >= len => blocks,
            _ => 0,
        };
        // What the budget is counted against: the kept blocks only — or, for a shared
        // file replaced by one built beside it, the old file still there.
        let start = match now {
            Entry::Shared { .. } => now,
            _ => Entry::File {
                len: 0,
                blocks: kept,
            },
        };
        let target = div_ceil(size, self.block_bytes);
        let needed_blocks = target - kept.min(target);
        // Rule 2: fallocate first; write data only when it is unsupported or allocated
        // nothing, and only with the automatic strategy.
        let fallback = |errno: i32| {
            errno == libc::EOPNOTSUPP || errno == libc::ENOTSUP || errno == libc::ENOSYS
        };
        match (strategy, self.fallocate) {
            (Strategy::Write, _) | (_, Fallocate::Supported) => {}
            (Strategy::Auto, Fallocate::Unsupported(errno)) if fallback(errno) => {}
            (_, Fallocate::Unsupported(errno)) => {
                return forecast(Err(Refusal::AllocateFailed(errno)), now, shrunk);
            }
            (Strategy::Fallocate, Fallocate::NoBlocks) if needed_blocks > 0 => {
                return forecast(Err(Refusal::NotAllocated), now, shrunk);
            }
            (_, Fallocate::NoBlocks) => {}
        }
        if needed_blocks > self.budget_blocks(start) {
            // Rule 4: the allocation meets ENOSPC or EDQUOT, rolls back and defers. A
            // refill has cut a sparse file's blocks first; its rollback restores only the
            // length (`Plan::Refill`).
            let after = match now {
                Entry::File { len, blocks } if blocks > 0 && blocks * self.block_bytes < len => {
                    Entry::File { len, blocks: 0 }
                }
                other => other,
            };
            let outcome = Ensured::Deferred {
                free_bytes: self.free_with(after),
                needed_bytes: missing.saturating_add(headroom),
                reason: self.out_of_space_reason(start),
            };
            return forecast(Ok(outcome), after, shrunk);
        }
        let allocated_bytes = target.max(kept) * self.block_bytes;
        let outcome = match now {
            // Rule 7 and 1: a linked or shared file is replaced by a fresh reserve, never
            // written.
            Entry::Absent | Entry::Linked { .. } | Entry::Shared { .. } => {
                Ensured::Created { allocated_bytes }
            }
            _ => Ensured::ToppedUp {
                from_allocated_bytes: held,
                allocated_bytes,
            },
        };
        let after = Entry::File {
            len: size,
            blocks: target.max(kept),
        };
        forecast(Ok(outcome), after, shrunk)
    }

    /// What is at the reserve path becomes `entry`. A file a snapshot or a copy shared
    /// that is gone or replaced leaves its shared blocks with them.
    pub fn set_entry(&mut self, entry: Entry) {
        if let Entry::Shared { shared, .. } = self.entry
            && entry != self.entry
            && !matches!(entry, Entry::Shared { .. })
        {
            self.pinned_bytes += shared * self.block_bytes;
        }
        self.entry = entry;
    }

    /// What `release` does from the current state, and the path afterwards.
    pub fn release(&self) -> (Result<Released, Refusal>, Entry) {
        match self.entry {
            Entry::Absent => (Ok(Released::Absent), Entry::Absent),
            Entry::Other(kind) => (Err(Refusal::NotRegular(kind)), self.entry),
            Entry::File { .. } | Entry::Linked { .. } if self.read_only => {
                (Err(Refusal::ReadOnly), self.entry)
            }
            Entry::File { blocks, .. } => {
                // The measured gain: the free space with nothing at the path less the free
                // space now (both saturate at 0 when a crash overcommitted the disk).
                let released = Released::Released {
                    releasable_bytes: blocks * self.block_bytes,
                    freed_bytes: self.free_with(Entry::Absent).saturating_sub(self.free()),
                };
                (Ok(released), Entry::Absent)
            }
            Entry::Shared { .. } if self.read_only => (Err(Refusal::ReadOnly), self.entry),
            // Rule 1 and 8: only the blocks no snapshot shares come back.
            Entry::Shared { blocks, shared, .. } => {
                let released = Released::Released {
                    releasable_bytes: (blocks - shared.min(blocks)) * self.block_bytes,
                    freed_bytes: self.free_without(self.entry).saturating_sub(self.free()),
                };
                (Ok(released), Entry::Absent)
            }
            // Rule 7: only the name goes; the blocks stay with the other name.
            Entry::Linked { .. } => {
                let released = Released::Released {
                    releasable_bytes: 0,
                    freed_bytes: 0,
                };
                (Ok(released), Entry::Absent)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(capacity_blocks: u64) -> Model {
        Model {
            block_bytes: 4096,
            capacity_bytes: capacity_blocks * 4096,
            quota_bytes: None,
            fallocate: Fallocate::Supported,
            read_only: false,
            others_bytes: 0,
            outside_bytes: 0,
            pinned_bytes: 0,
            pinned_in_files: false,
            entry: Entry::Absent,
        }
    }

    #[test]
    fn headroom_boundary_in_the_model() {
        let mut m = model(8);
        let f = m.ensure(4 * 4096, 4 * 4096, Strategy::Auto);
        assert_eq!(
            f.result,
            Ok(Ensured::Created {
                allocated_bytes: 4 * 4096
            })
        );
        m.eat(1);
        let f = m.ensure(4 * 4096, 4 * 4096, Strategy::Auto);
        assert!(matches!(f.result, Ok(Ensured::Deferred { .. })));
        assert_eq!(f.after, Entry::Absent);
    }

    #[test]
    fn oversized_sparse_is_shrunk_then_refilled() {
        let mut m = model(64);
        m.entry = Entry::File {
            len: 40 * 4096,
            blocks: 0,
        };
        let f = m.ensure(8 * 4096, 0, Strategy::Write);
        assert_eq!(
            f.shrunk,
            Some(Entry::File {
                len: 8 * 4096,
                blocks: 0
            })
        );
        assert_eq!(
            f.result,
            Ok(Ensured::ToppedUp {
                from_allocated_bytes: 0,
                allocated_bytes: 8 * 4096
            })
        );
    }
}
