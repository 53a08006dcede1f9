//! Scenarios: random operation sequences over [`SimFs`], checked against a reference model.
//!
//! This is the product for fuzzers of the lifecycle. A [`Scenario`] is a simulated disk
//! ([`SimSetup`]: capacity, quota, what `fallocate` does, a fault plan) and a list of
//! [`Op`]s: `ensure`, `release` and `status` calls, other writers filling or freeing space
//! (between calls or in the middle of one), the reserve deleted, truncated or replaced by
//! a sparse file, a symlink, a directory, a fifo or a socket behind the lifecycle's back,
//! an errno injected into the next call of an operation, a crash (between calls or in the
//! middle of one), a `release` run in the middle of an `ensure`, and the reserve's blocks
//! shared with a snapshot or a reflink copy outside the home.
//!
//! [`run`] plays the operations one by one and, after each, checks invariants against a
//! reference model written from the rules the README lists (not from the lifecycle code):
//!
//! * `ensure`'s own allocation never leaves free space below the headroom;
//! * a successful `ensure` leaves allocated ≥ size and length == size;
//! * a failed call leaves the reserve and the free space as they were (an oversized
//!   reserve may stay cut to the size: shrinking only gives space back);
//! * `release` never fails for lack of space, and the bytes it expected to give back
//!   (blocks shared with a snapshot or a copy excluded) are what the filesystem gained;
//! * nothing outside the reserve path changes, and a refused non-regular file is left
//!   untouched;
//! * a crash leaves the last durable state or a partial reserve, and the next `ensure`
//!   with enough space completes it;
//! * two racing calls end as one of the two serial orders would;
//! * every outcome is the one the model predicts, whenever nothing (a fault, another
//!   writer in the middle of a call) makes it uncertain.
//!
//! Raw inputs are mapped into valid, bounded ranges (capacity ≤ 1 GiB in 4 KiB blocks,
//! sizes up to the capacity and one block past it) rather than rejected, so every input
//! is a useful run. With the `arbitrary` feature every input type derives
//! `arbitrary::Arbitrary`.
//!
//! ```
//! use disk_reserve_scenario::{run, EnsureArgs, Op, Scenario, SimSetup};
//! let scenario = Scenario {
//!     setup: SimSetup { capacity_blocks: 1024, usual_size_blocks: 64, ..SimSetup::default() },
//!     ops: vec![Op::Ensure(EnsureArgs::default()), Op::Crash, Op::Release],
//! };
//! let report = run(&scenario).unwrap_or_else(|violation| panic!("{violation}"));
//! assert_eq!(report.steps, 3);
//! ```

mod model;

use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use disk_reserve::{
    AllocateMode, DeferReason, Ensured, Error, FileKind, Plan, Probe, Released, Reserve,
    ReserveConfig, SimFs, SimOp, SizeSpec, Strategy, is_out_of_space,
};
use model::{Entry, Fallocate, Model, Refusal};

/// Block size of the simulated disk.
pub const BLOCK_BYTES: u64 = 4096;
/// Largest simulated disk, in blocks (1 GiB).
pub const MAX_CAPACITY_BLOCKS: u32 = 1 << 18;
/// Operations of a scenario that are played; the rest are ignored.
pub const MAX_OPS: usize = 48;
/// Fault plans of a setup that are armed; the rest are ignored.
pub const MAX_FAULTS: usize = 4;

const HOME: &str = "/srv/app";
/// Where `ensure` builds the replacement of a hard-linked reserve before renaming it over
/// the reserve: the reserve's own, like the reserve path.
const REPLACING: &str = "/srv/app/.reserve.replacing";
/// Where a deploy moves the home in the middle of a call ([`Op::HomeMovedDuring`]).
const MOVED_HOME: &str = "/srv/app.old";
const RESERVE: &str = "/srv/app/.reserve";
/// A file outside the home; planted symlinks point at it.
const BYSTANDER: &str = "/srv/bystander";
/// Where a backup tool keeps its reflink copy of the reserve ([`Op::ReflinkReserve`]):
/// outside the home.
const COPY: &str = "/srv/reserve.copy";

/// One run's input: a simulated disk and what happens to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, arbitrary::Arbitrary)]
pub struct Scenario {
    /// The disk.
    pub setup: SimSetup,
    /// What happens, in order (the first [`MAX_OPS`]).
    pub ops: Vec<Op>,
}

/// The simulated disk a scenario starts from. Raw numbers are mapped into range.
#[derive(Debug, Clone, PartialEq, Eq, arbitrary::Arbitrary)]
pub struct SimSetup {
    /// Capacity in blocks, mapped to `1..=MAX_CAPACITY_BLOCKS`.
    pub capacity_blocks: u32,
    /// A quota on the bytes files allocate, in blocks, mapped to `0..=2 × capacity`.
    pub quota_blocks: Option<u32>,
    /// What `fallocate` does; an `Unsupported` errno is mapped to `EOPNOTSUPP`, `ENOSYS`
    /// or `EINVAL`.
    pub allocate: AllocateMode,
    /// A dense file outside the home, in blocks, mapped to at most a quarter of the disk.
    pub bystander_blocks: u32,
    /// The reserve size most operations use ([`SizeChoice::Usual`]), in blocks, mapped
    /// to `1..=capacity`.
    pub usual_size_blocks: u32,
    /// Faults armed before the first operation (the first [`MAX_FAULTS`]).
    pub faults: Vec<FaultPlan>,
}

impl Default for SimSetup {
    fn default() -> Self {
        SimSetup {
            capacity_blocks: 4096,
            quota_blocks: None,
            allocate: AllocateMode::Supported,
            bystander_blocks: 16,
            usual_size_blocks: 256,
            faults: Vec::new(),
        }
    }
}

/// The `nth` next call of `op` fails with `errno` (`nth` mapped to `1..=32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub struct FaultPlan {
    /// The operation.
    pub op: SimOp,
    /// Which of its calls, counting from when the plan is armed.
    pub nth: u8,
    /// The error.
    pub errno: Errno,
}

/// The errnos a fault plan injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
#[allow(missing_docs)]
pub enum Errno {
    Eio,
    Enospc,
    Edquot,
    Eintr,
    Erofs,
    Enoent,
    Eopnotsupp,
    Eacces,
}

impl Errno {
    /// The raw errno.
    pub fn code(self) -> i32 {
        match self {
            Errno::Eio => libc::EIO,
            Errno::Enospc => libc::ENOSPC,
            Errno::Edquot => libc::EDQUOT,
            Errno::Eintr => libc::EINTR,
            Errno::Erofs => libc::EROFS,
            Errno::Enoent => libc::ENOENT,
            Errno::Eopnotsupp => libc::EOPNOTSUPP,
            Errno::Eacces => libc::EACCES,
        }
    }
}

/// The reserve size of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, arbitrary::Arbitrary)]
pub enum SizeChoice {
    /// The setup's usual size.
    #[default]
    Usual,
    /// This many blocks, mapped to `0..=capacity + 1` (0 and one past the disk are
    /// errors the lifecycle must report cleanly).
    Blocks(u32),
}

/// The headroom of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, arbitrary::Arbitrary)]
pub enum HeadroomChoice {
    /// Not configured: the default, one reserve size.
    #[default]
    SameAsSize,
    /// This many blocks, mapped to `0..=capacity`.
    Blocks(u32),
    /// This many bytes, mapped to `0..=capacity` bytes (need not be whole blocks).
    Bytes(u32),
}

/// The configuration of one `ensure` or `status` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, arbitrary::Arbitrary)]
pub struct EnsureArgs {
    /// The size.
    pub size: SizeChoice,
    /// The headroom.
    pub headroom: HeadroomChoice,
    /// The allocation strategy.
    pub strategy: Strategy,
}

/// Something planted at the reserve path behind the lifecycle's back (replacing what was
/// there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub enum Plant {
    /// A sparse regular file of this many blocks (`truncate -s`), mapped to
    /// `0..=2 × capacity`.
    Sparse {
        /// Length in blocks.
        len_blocks: u32,
    },
    /// A dense regular file of this many bytes, mapped to `0..=capacity`.
    Dense {
        /// Length in bytes.
        len_bytes: u32,
    },
    /// A symlink to the bystander file outside the home.
    Symlink,
    /// A second name of the bystander file outside the home (`ln`, `cp -al`): its blocks
    /// are the bystander's, never the reserve's.
    HardLink,
    /// An empty directory.
    Directory,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// The call a crash interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub enum Interrupted {
    /// An `ensure`; after the crash an `ensure` with the same configuration runs again.
    Ensure(EnsureArgs),
    /// A `release`.
    Release,
}

/// One step of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub enum Op {
    /// `Reserve::ensure`.
    Ensure(EnsureArgs),
    /// `Reserve::release`.
    Release,
    /// `Reserve::status`.
    Status(EnsureArgs),
    /// Another writer takes up to this many bytes (mapped to `0..=capacity`).
    OtherWriterWrites {
        /// Bytes.
        bytes: u32,
    },
    /// Another writer frees up to this many bytes (mapped to `0..=capacity`).
    OtherWriterFrees {
        /// Bytes.
        bytes: u32,
    },
    /// Another writer writes (positive) or frees (negative) bytes just before the
    /// `after_calls + 1`-th filesystem call from now (`after_calls` mapped to `0..8`,
    /// the magnitude to `0..=capacity`).
    OtherWriterDuringCall {
        /// Calls to let pass first.
        after_calls: u8,
        /// Bytes taken (positive) or freed (negative).
        bytes: i32,
    },
    /// The reserve is unlinked behind our back (whatever is at the path).
    DeleteReserve,
    /// A regular reserve is cut to a shorter length behind our back (length mapped to
    /// `0..=its length`).
    TruncateReserve {
        /// The new length in bytes, before mapping.
        len_bytes: u32,
    },
    /// Something is planted at the reserve path.
    Plant(Plant),
    /// The next call of `op` fails with `errno`.
    FailNext {
        /// The operation.
        op: SimOp,
        /// The error.
        errno: Errno,
    },
    /// A power cut between calls.
    Crash,
    /// A power cut after `after_calls` filesystem calls of a lifecycle call (mapped to
    /// `1..=16`); afterwards every call of the interrupted one fails.
    CrashDuring {
        /// Calls that happen before the cut.
        after_calls: u8,
        /// The interrupted call.
        call: Interrupted,
    },
    /// A deploy in the middle of a call: after `after_calls` filesystem calls (mapped to
    /// `0..16`) the home is moved aside and an empty directory takes its place. Everything
    /// the call does must happen in the directory it opened (the moved one), and the new
    /// one stays empty; afterwards the home is moved back.
    HomeMovedDuring {
        /// Calls that happen before the move.
        after_calls: u8,
        /// The call the move interrupts.
        call: Interrupted,
    },
    /// A snapshot takes the reserve's blocks (a btrfs snapshot, a reflink copy elsewhere):
    /// they are shared from now on, so deleting the reserve does not give them back.
    SnapshotReserve,
    /// Every snapshot is deleted, and the reflink copy ([`Op::ReflinkReserve`]) too: the
    /// blocks only they held are free again.
    DropSnapshots,
    /// A backup tool copies the reserve by reflink (`cp --reflink`, `FICLONE`) to a file
    /// outside the home: the copy takes no space and shares every block, so deleting the
    /// reserve gives back none of them while the copy lives. Played only on a regular,
    /// allocated reserve of a writable filesystem with no snapshot and no earlier copy:
    /// `SimFs` counts blocks both a snapshot and a copy hold twice once both outlive the
    /// file, and one copy is all the model tracks.
    ReflinkReserve,
    /// Frees show in `statvfs` late, or at once again. Late frees are btrfs's (`syncfs`
    /// shows them) at an even step and XFS's (`syncfs` does not,
    /// [`SimFs::set_sync_fs_shows_late_frees`]) at an odd one: the step's place picks the
    /// flavour, so the encoding of inputs stays as it was.
    SetLateFrees(bool),
    /// The filesystem becomes read-only, or writable again.
    SetReadOnly(bool),
    /// `fallocate` changes behaviour.
    SetAllocate(AllocateMode),
    /// The quota changes (blocks, mapped as in [`SimSetup::quota_blocks`]).
    SetQuota(Option<u32>),
    /// An `ensure` and a `release` at once: the release runs in the middle of the ensure,
    /// before its (1 + step mod 16)-th filesystem call ([`SimFs::interleave`]), and if
    /// the ensure holds the home's lock by then it waits for the ensure to finish.
    /// Deterministic, so a failing input replays (the step's index in the sequence picks
    /// the interleaving).
    EnsureAndReleaseConcurrently(EnsureArgs),
}

/// What a run went through, for checking that a test reaches the interesting states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Operations played.
    pub steps: usize,
    /// `ensure` calls that allocated.
    pub allocations: usize,
    /// `ensure` calls that deferred.
    pub deferrals: usize,
    /// Lifecycle calls that failed.
    pub failures: usize,
    /// Injected faults that fired.
    pub faults_fired: usize,
    /// Crashes.
    pub crashes: usize,
    /// Homes moved in the middle of a call.
    pub moves: usize,
    /// Lifecycle calls that found a hard link at the reserve path.
    pub linked: usize,
    /// Lifecycle calls that found a reserve sharing blocks with a snapshot or a copy.
    pub shared: usize,
    /// Races ([`Op::EnsureAndReleaseConcurrently`]) whose release ran whole in the middle
    /// of the ensure, before the ensure took the home's lock.
    pub releases_mid_ensure: usize,
    /// Races whose release found the home locked by the ensure (or came after its last
    /// call) and ran once the ensure was done.
    pub releases_after_ensure: usize,
}

/// An invariant [`run`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// Nothing panics (a racing call's panic is caught here; others fail the caller).
    NoPanic,
    /// `ensure`'s own allocation never leaves free space below the headroom.
    Headroom,
    /// A successful `ensure` leaves allocated ≥ size and length == size.
    CompleteAfterSuccess,
    /// A failed call leaves the reserve and the free space as they were.
    NoTraceOnFailure,
    /// `release` never fails for lack of space.
    ReleaseNeedsNoSpace,
    /// The bytes `release` expected to give back (its releasable bytes) are what the
    /// filesystem eventually gained (once late frees show), on an undisturbed disk.
    ReleaseGainsWhatItExpects,
    /// Nothing outside the reserve path changes.
    OnlyTheReservePath,
    /// A refused non-regular file is left untouched.
    RefusedUntouched,
    /// What a call does happens in the directory it was given, even if that directory is
    /// moved or its path re-pointed during the call.
    StaysInItsHome,
    /// A crash leaves the last durable state or a partial reserve.
    CrashConsistent,
    /// Racing calls end as some serial order would.
    SerialOrder,
    /// The outcome and the state are the ones the reference model predicts.
    Model,
}

impl Invariant {
    /// The invariant in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Invariant::NoPanic => "nothing panics",
            Invariant::Headroom => "ensure's own allocation never leaves free < headroom",
            Invariant::CompleteAfterSuccess => {
                "a successful ensure leaves allocated >= size and length == size"
            }
            Invariant::NoTraceOnFailure => {
                "a failed call leaves the reserve and the free space as they were"
            }
            Invariant::ReleaseNeedsNoSpace => "release never fails for lack of space",
            Invariant::ReleaseGainsWhatItExpects => {
                "the bytes release expected are what the filesystem eventually gained"
            }
            Invariant::OnlyTheReservePath => "nothing outside the reserve path changes",
            Invariant::StaysInItsHome => "what a call does happens in the directory it was given",
            Invariant::RefusedUntouched => "a refused non-regular file is left untouched",
            Invariant::CrashConsistent => {
                "a crash leaves the last durable state or a partial reserve"
            }
            Invariant::SerialOrder => "racing calls end as some serial order would",
            Invariant::Model => "outcome and state match the reference model",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broken invariant: which step, which operation, which invariant, what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Index of the operation in [`Scenario::ops`].
    pub step: usize,
    /// The operation, as `Debug` prints it.
    pub op: String,
    /// The invariant.
    pub invariant: Invariant,
    /// The observed values.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} ({}): violates \"{}\": {}",
            self.step, self.op, self.invariant, self.detail
        )
    }
}

impl std::error::Error for Violation {}

/// Plays `scenario` and checks every invariant after every operation.
///
/// # Errors
/// The first [`Violation`] seen.
pub fn run(scenario: &Scenario) -> Result<RunReport, Violation> {
    let mut driver = Driver::new(&scenario.setup);
    for (step, op) in scenario.ops.iter().take(MAX_OPS).enumerate() {
        driver.step(step, op)?;
    }
    Ok(driver.report)
}

// ------------------------------------------------------------------ the tap

/// What one lifecycle call saw of the disk: the largest free space a `statvfs` reported,
/// and whether a planned power cut ([`SimFs::crash_after`]) fired during it.
#[derive(Debug)]
struct Tap {
    fs: SimFs,
    crashes_before: u64,
    max_free_seen: Option<u64>,
}

impl Tap {
    /// Resets what the disk remembers and plans the power cut, if any.
    fn arm(fs: &SimFs, crash_after: Option<u32>) -> Self {
        fs.take_max_free_reported();
        fs.crash_after(crash_after.unwrap_or(0));
        Tap {
            fs: fs.clone(),
            crashes_before: fs.crashes(),
            max_free_seen: None,
        }
    }

    /// Ends the call: cancels a cut that did not fire; says whether one did.
    fn disarm(&mut self) -> bool {
        self.fs.crash_after(0);
        self.max_free_seen = self.fs.take_max_free_reported();
        self.fs.crashes() > self.crashes_before
    }
}

// ------------------------------------------------------------------ the driver

/// A resolved `ensure` configuration.
#[derive(Debug, Clone, Copy)]
struct Args {
    size: u64,
    headroom: u64,
    strategy: Strategy,
    config_headroom: Option<u64>,
}

impl Args {
    fn config(self) -> ReserveConfig {
        let config = ReserveConfig::with_size_bytes(self.size).strategy(self.strategy);
        match self.config_headroom {
            Some(bytes) => config.headroom(SizeSpec::Bytes(bytes)),
            None => config,
        }
    }
}

/// What a crash may bring back at the reserve path.
#[derive(Debug, Clone)]
struct Durable {
    /// States a crash may return to.
    states: Vec<Entry>,
    /// Any regular file no longer than this is also possible (a partial reserve from an
    /// interrupted or failed `ensure` of that size); 0 when none is.
    partial_up_to: u64,
    /// Too much happened to say: any regular file or nothing.
    unknown: bool,
}

impl Durable {
    fn exactly(entry: Entry) -> Self {
        Durable {
            states: vec![entry],
            partial_up_to: 0,
            unknown: false,
        }
    }

    fn add(&mut self, entry: Entry) {
        if !self.states.contains(&entry) {
            self.states.push(entry);
        }
    }

    /// Whether a crash may leave `entry`. Whether a snapshot shares a file's blocks is a
    /// property of the blocks, not of the names a crash brings back: compared without it.
    fn allows(&self, entry: Entry) -> bool {
        let plain = |e: Entry| match e {
            Entry::Shared { len, blocks, .. } => Entry::File { len, blocks },
            other => other,
        };
        let entry = plain(entry);
        self.states.iter().any(|&state| plain(state) == entry)
            || matches!(entry, Entry::File { len, .. } if len <= self.partial_up_to)
            || (self.unknown && matches!(entry, Entry::Absent | Entry::File { .. }))
    }
}

/// The state of the disk just before an operation.
struct Before {
    entry: Entry,
    probe: Option<Probe>,
    calls: [u64; SimOp::ALL.len()],
    free: u64,
    /// Bytes freed that `statvfs` does not show yet (late frees).
    pending: u64,
    /// Whether a replacement an earlier double fault left was there.
    replacing: bool,
    /// The bytes that replacement held (the next call under the lock removes it).
    replacing_bytes: u64,
    /// Bytes all regular files hold.
    file_bytes: u64,
}

/// What happened during an operation besides the lifecycle's own work.
#[derive(Debug, Clone, Copy, Default)]
struct Disturbance {
    /// Injected faults that fired.
    faults: usize,
    /// Injected faults that fired with an out-of-space errno.
    out_of_space_faults: usize,
    /// Another writer changed the free space in the middle of the call.
    other_writer: bool,
}

impl Disturbance {
    fn any(self) -> bool {
        self.faults > 0 || self.other_writer
    }
}

struct Driver {
    fs: SimFs,
    model: Model,
    capacity_blocks: u64,
    usual_size_blocks: u64,
    /// Armed faults: (operation, value of its call counter at which it fires, errno).
    faults: Vec<(SimOp, u64, i32)>,
    /// Total call count at which the space-change queue is empty.
    queue_end: u64,
    /// Total call counts at which a non-zero space change applies.
    space_changes_at: Vec<u64>,
    durable: Durable,
    /// Every path outside the reserve path at the start, in [`SimFs::for_each_entry`]'s
    /// order, with its `lstat`.
    outside: Vec<(String, Probe)>,
    /// The last [`View`] read and the disk's [`SimFs::changes`] then: while they stay
    /// the same (and `outside` is not set again), it is the view.
    last_view: std::cell::Cell<Option<(u64, View)>>,
    report: RunReport,
    step: usize,
    /// The operation being played (formatted only for a violation).
    op: Option<Op>,
    /// Bytes the bystander file holds (what is outside the home).
    bystander_bytes: u64,
    /// Set while a move of the home is planned for the running call: the move count
    /// before it ([`Driver::put_home_back`]).
    after_lifecycle_call: Option<u64>,
    /// Whether the reflink copy ([`COPY`]) exists.
    copy: bool,
}

/// The lifecycle on the scenario's disk. `SimFs` shows late frees at the first `syncfs`
/// or the second `statvfs`, which the lifecycle does without sleeping: no wall-clock
/// waiting in a fuzzer.
fn scenario_reserve(fs: &SimFs, config: ReserveConfig) -> Reserve<SimFs> {
    Reserve::new(fs.clone(), HOME, config)
        .expect("the file name is valid")
        .settle_time(std::time::Duration::ZERO)
}

/// What the model calls the thing at the reserve path, given its `lstat` and the bytes a
/// snapshot shares with it.
fn entry_of_shared(probe: Option<&Probe>, shared_bytes: u64) -> Entry {
    match entry_of(probe) {
        Entry::File { len, blocks } if shared_bytes > 0 => Entry::Shared {
            len,
            blocks,
            shared: shared_bytes / BLOCK_BYTES,
        },
        other => other,
    }
}

fn entry_of(probe: Option<&Probe>) -> Entry {
    match probe {
        None => Entry::Absent,
        Some(p) if p.kind == FileKind::Regular && p.links > 1 => Entry::Linked {
            len: p.len,
            blocks: p.allocated_bytes / BLOCK_BYTES,
        },
        Some(p) if p.kind == FileKind::Regular => Entry::File {
            len: p.len,
            blocks: p.allocated_bytes / BLOCK_BYTES,
        },
        Some(p) => Entry::Other(p.kind),
    }
}

fn map_allocate(mode: AllocateMode) -> (AllocateMode, Fallocate) {
    match mode {
        AllocateMode::Supported => (mode, Fallocate::Supported),
        AllocateMode::NoBlocks => (mode, Fallocate::NoBlocks),
        AllocateMode::Unsupported { errno } => {
            let errno =
                [libc::EOPNOTSUPP, libc::ENOSYS, libc::EINVAL][errno.rem_euclid(3) as usize];
            (
                AllocateMode::Unsupported { errno },
                Fallocate::Unsupported(errno),
            )
        }
    }
}

/// Whether `error` is what the model's refusal says.
fn refusal_matches(refusal: Refusal, error: &Error) -> bool {
    let errno = error.io_error().and_then(io::Error::raw_os_error);
    match refusal {
        Refusal::NotRegular(kind) => {
            matches!(error, Error::NotARegularFile { kind: k, .. } if *k == kind)
        }
        Refusal::ZeroSize => matches!(error, Error::ZeroSize { .. }),
        Refusal::TooBig => matches!(error, Error::SizeExceedsFilesystem { .. }),
        Refusal::NeverFits => matches!(error, Error::NeverFits { .. }),
        Refusal::ReadOnly => matches!(error, Error::ReadOnly { .. }),
        Refusal::NotAllocated => matches!(error, Error::NotAllocated { .. }),
        Refusal::AllocateFailed(code) => errno == Some(code),
    }
}

impl Driver {
    fn new(setup: &SimSetup) -> Self {
        let capacity_blocks = 1 + u64::from(setup.capacity_blocks) % u64::from(MAX_CAPACITY_BLOCKS);
        let capacity_bytes = capacity_blocks * BLOCK_BYTES;
        let fs = SimFs::with_home(capacity_bytes, HOME);
        let bystander_bytes =
            u64::from(setup.bystander_blocks) % (capacity_blocks / 4 + 1) * BLOCK_BYTES;
        fs.write_file(BYSTANDER, bystander_bytes)
            .expect("a quarter of the disk fits");
        let quota_bytes = setup
            .quota_blocks
            .map(|q| u64::from(q) % (2 * capacity_blocks + 1) * BLOCK_BYTES);
        fs.set_quota(quota_bytes);
        let (mode, fallocate) = map_allocate(setup.allocate);
        fs.set_allocate(mode);
        let mut driver = Driver {
            model: Model {
                block_bytes: BLOCK_BYTES,
                capacity_bytes,
                quota_bytes,
                fallocate,
                read_only: false,
                others_bytes: 0,
                outside_bytes: bystander_bytes,
                pinned_bytes: 0,
                pinned_in_files: false,
                entry: Entry::Absent,
            },
            outside: outside_entries(&fs),
            last_view: std::cell::Cell::new(None),
            fs,
            capacity_blocks,
            usual_size_blocks: 1 + u64::from(setup.usual_size_blocks) % capacity_blocks,
            faults: Vec::new(),
            queue_end: 0,
            space_changes_at: Vec::new(),
            durable: Durable::exactly(Entry::Absent),
            report: RunReport::default(),
            step: 0,
            op: None,
            after_lifecycle_call: None,
            bystander_bytes,
            copy: false,
        };
        for plan in setup.faults.iter().take(MAX_FAULTS) {
            driver.arm(plan.op, 1 + u32::from(plan.nth) % 32, plan.errno.code());
        }
        driver
    }

    fn arm(&mut self, op: SimOp, nth: u32, errno: i32) {
        self.fs.fail_nth(op, nth, errno);
        self.faults
            .push((op, self.fs.calls(op) + u64::from(nth), errno));
    }

    fn calls(&self) -> [u64; SimOp::ALL.len()] {
        self.fs.all_calls()
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_blocks * BLOCK_BYTES
    }

    fn args(&self, args: EnsureArgs) -> Args {
        let size_blocks = match args.size {
            SizeChoice::Usual => self.usual_size_blocks,
            SizeChoice::Blocks(raw) => u64::from(raw) % (self.capacity_blocks + 2),
        };
        let size = size_blocks * BLOCK_BYTES;
        let config_headroom = match args.headroom {
            HeadroomChoice::SameAsSize => None,
            HeadroomChoice::Blocks(raw) => {
                Some(u64::from(raw) % (self.capacity_blocks + 1) * BLOCK_BYTES)
            }
            HeadroomChoice::Bytes(raw) => Some(u64::from(raw) % (self.capacity_bytes() + 1)),
        };
        Args {
            size,
            headroom: config_headroom.unwrap_or(size),
            strategy: args.strategy,
            config_headroom,
        }
    }

    fn violation(&self, invariant: Invariant, detail: String) -> Violation {
        Violation {
            step: self.step,
            op: self.op.map(|op| format!("{op:?}")).unwrap_or_default(),
            invariant,
            detail,
        }
    }

    fn check(
        &self,
        ok: bool,
        invariant: Invariant,
        detail: impl FnOnce() -> String,
    ) -> Result<(), Violation> {
        if ok {
            Ok(())
        } else {
            Err(self.violation(invariant, detail()))
        }
    }

    fn before(&self) -> Before {
        let view = self.view();
        let pending = self.fs.pending_free_bytes();
        Before {
            entry: view.entry(),
            probe: view.reserve,
            calls: self.calls(),
            free: self.fs.free_bytes() + pending,
            pending,
            replacing: view.replacing.is_some(),
            replacing_bytes: view.replacing.map_or(0, |p| p.allocated_bytes),
            file_bytes: view.file_bytes,
        }
    }

    /// What the disk holds now, read in one pass (or not at all, when the disk has not
    /// changed since the last view).
    fn view(&self) -> View {
        let changes = self.fs.changes();
        if let Some((seen, view)) = self.last_view.get()
            && seen == changes
        {
            return view;
        }
        let view = self.read_view();
        self.last_view.set(Some((changes, view)));
        view
    }

    fn read_view(&self) -> View {
        let mut view = View {
            reserve: None,
            reserve_shared: 0,
            replacing: None,
            file_bytes: 0,
            outside_unchanged: true,
            other_writers_bytes: self.fs.other_writers_bytes(),
        };
        let mut was = self.outside.iter();
        self.fs.for_each_entry(|path, probe, shared| {
            if path == RESERVE {
                view.reserve = Some(*probe);
                view.reserve_shared = shared;
            }
            if path == REPLACING {
                view.replacing = Some(*probe);
            } else if probe.kind == FileKind::Regular {
                view.file_bytes += probe.allocated_bytes;
            }
            if is_outside(path) {
                // A file's link count changes when a hard link at the reserve path is
                // replaced or released; its content must not.
                let same = was.next().is_some_and(|(p, b)| {
                    p == path && Probe { links: 1, ..*probe } == Probe { links: 1, ..*b }
                });
                view.outside_unchanged &= same;
            }
        });
        if was.next().is_some() {
            view.outside_unchanged = false;
        }
        view
    }

    /// What else happened during the call that began at `before`.
    fn disturbance(&mut self, before: &Before) -> Disturbance {
        let after = self.calls();
        let mut seen = Disturbance::default();
        self.faults.retain(|&(op, at, errno)| {
            let i = op as usize;
            if at > after[i] {
                return true;
            }
            if at > before.calls[i] {
                seen.faults += 1;
                if errno == libc::ENOSPC || errno == libc::EDQUOT {
                    seen.out_of_space_faults += 1;
                }
            }
            false
        });
        let (lo, hi): (u64, u64) = (before.calls.iter().sum(), after.iter().sum());
        self.space_changes_at.retain(|&at| {
            if at > lo && at <= hi {
                seen.other_writer = true;
            }
            at > hi
        });
        self.report.faults_fired += seen.faults;
        seen
    }

    /// Nothing outside the reserve path changed since the scenario started.
    fn check_outside(&self, view: &View) -> Result<(), Violation> {
        self.check(
            view.outside_unchanged,
            Invariant::OnlyTheReservePath,
            || {
                let now = self.fs.snapshot().without(RESERVE).entries;
                format!(
                    "outside the reserve: before {:?}, after {now:?}",
                    self.outside
                )
            },
        )
    }

    /// Checks what holds after every operation: the outside is as it was, the model's
    /// view of the reserve path and of the space matches the disk. `exact_space` says
    /// whether the model knows the other writers' bytes; if not they are read back.
    fn settle(&mut self, view: &View, exact_space: bool) -> Result<(), Violation> {
        self.check_outside(view)?;
        // A replacement left behind by a failed call whose rollback failed too: its blocks
        // are counted until the next call under the lock removes it.
        let replacing = view.replacing.map_or(0, |p| p.allocated_bytes);
        self.model.outside_bytes = self.bystander_bytes + replacing;
        let entry = view.entry();
        self.check(entry == self.model.entry, Invariant::Model, || {
            format!("reserve path: model {:?}, disk {entry:?}", self.model.entry)
        })?;
        if !exact_space {
            self.model.others_bytes = view.other_writers_bytes;
        }
        let free = self.true_free();
        self.check(free == self.model.free(), Invariant::Model, || {
            format!("free bytes: model {}, disk {free}", self.model.free())
        })
    }

    fn step(&mut self, step: usize, op: &Op) -> Result<(), Violation> {
        self.step = step;
        self.op = Some(*op);
        self.report.steps += 1;
        match *op {
            Op::Ensure(args) => {
                let args = self.args(args);
                self.ensure(args, None).map(drop)
            }
            Op::Release => self.release(None),
            Op::Status(args) => {
                let args = self.args(args);
                self.status(args)
            }
            Op::OtherWriterWrites { bytes } => {
                let bytes = u64::from(bytes) % (self.capacity_bytes() + 1);
                self.fs.eat(bytes);
                self.model.eat(bytes);
                let view = self.view();
                self.settle(&view, true)
            }
            Op::OtherWriterFrees { bytes } => {
                let bytes = u64::from(bytes) % (self.capacity_bytes() + 1);
                self.fs.free_external(bytes);
                self.model.free_external(bytes);
                let view = self.view();
                self.settle(&view, true)
            }
            Op::OtherWriterDuringCall { after_calls, bytes } => {
                let magnitude = u64::from(bytes.unsigned_abs()) % (self.capacity_bytes() + 1);
                let delta = if bytes < 0 {
                    -(magnitude as i64)
                } else {
                    magnitude as i64
                };
                let pause = u64::from(after_calls % 8);
                let total: u64 = self.calls().iter().sum();
                let start = self.queue_end.max(total);
                let mut deltas = vec![0; pause as usize];
                deltas.push(delta);
                self.fs.schedule_space_changes(deltas);
                self.queue_end = start + pause + 1;
                if delta != 0 {
                    self.space_changes_at.push(self.queue_end);
                }
                Ok(())
            }
            Op::DeleteReserve => {
                if self.view().reserve.is_none() {
                    // Nothing to unlink: what a crash may bring back stays as it was.
                    return Ok(());
                }
                self.fs.remove(RESERVE).expect("planted things are empty");
                self.planted(true)
            }
            Op::TruncateReserve { len_bytes } => {
                let Entry::File { len, blocks } = self.model.entry else {
                    return Ok(());
                };
                let new_len = u64::from(len_bytes) % (len + 1);
                self.fs
                    .remove(RESERVE)
                    .expect("a regular file can be removed");
                // A quota lowered since may refuse even the shorter file: then the path
                // stays empty.
                let _ = if blocks * BLOCK_BYTES >= new_len {
                    self.fs.write_file(RESERVE, new_len)
                } else {
                    self.fs.write_sparse(RESERVE, new_len)
                };
                self.planted(true)
            }
            Op::Plant(plant) => {
                let removed = self.view().reserve.is_some();
                if removed {
                    self.fs.remove(RESERVE).expect("planted things are empty");
                }
                // A plant that does not fit (a dense file past the free space or quota)
                // leaves the path empty.
                let _ = match plant {
                    Plant::Sparse { len_blocks } => {
                        let blocks = u64::from(len_blocks) % (2 * self.capacity_blocks + 1);
                        self.fs.write_sparse(RESERVE, blocks * BLOCK_BYTES)
                    }
                    Plant::Dense { len_bytes } => self
                        .fs
                        .write_file(RESERVE, u64::from(len_bytes) % (self.capacity_bytes() + 1)),
                    Plant::Symlink => self.fs.symlink(RESERVE, BYSTANDER),
                    Plant::HardLink => self.fs.hard_link(BYSTANDER, RESERVE),
                    Plant::Directory => self.fs.mkdir_all(RESERVE),
                    Plant::Fifo => self.fs.mkfifo(RESERVE),
                    Plant::Socket => self.fs.mksocket(RESERVE),
                };
                self.planted(removed)
            }
            Op::FailNext { op, errno } => {
                self.arm(op, 1, errno.code());
                Ok(())
            }
            Op::Crash => {
                let before = self.before();
                self.fs.crash();
                self.crashed(&before, true)
            }
            Op::CrashDuring { after_calls, call } => {
                let after_calls = 1 + u32::from(after_calls) % 16;
                match call {
                    Interrupted::Ensure(args) => {
                        let args = self.args(args);
                        self.ensure(args, Some(after_calls))?;
                        // Rule 6: the next ensure completes what the crash left.
                        self.ensure(args, None).map(drop)
                    }
                    Interrupted::Release => self.release(Some(after_calls)),
                }
            }
            Op::HomeMovedDuring { after_calls, call } => {
                // From the second call on: the first opens the home, and a move before it
                // is no move at all for the call.
                let after_calls = 2 + u32::from(after_calls) % 16;
                self.fs.move_after(after_calls, HOME, MOVED_HOME);
                let moves = self.fs.moves();
                let result = match call {
                    Interrupted::Ensure(args) => {
                        let args = self.args(args);
                        self.moved_home_call(|driver| driver.ensure(args, None).map(drop))
                    }
                    Interrupted::Release => self.moved_home_call(|driver| driver.release(None)),
                };
                self.fs.move_after(0, HOME, MOVED_HOME);
                if self.fs.moves() > moves {
                    self.report.moves += 1;
                }
                result
            }
            Op::SnapshotReserve => {
                // Not with a reflink copy: see `Op::ReflinkReserve`.
                if !self.copy
                    && matches!(self.model.entry, Entry::File { blocks, .. } | Entry::Shared { blocks, .. } if blocks > 0)
                {
                    self.fs
                        .snapshot_file(RESERVE)
                        .expect("a regular file at the reserve path");
                    let view = self.view();
                    self.model.entry = view.entry();
                    return self.settle(&view, true);
                }
                Ok(())
            }
            Op::DropSnapshots => {
                self.fs.drop_snapshots();
                if self.copy {
                    self.fs.remove(COPY).expect("the copy is a regular file");
                    self.copy = false;
                    self.model.pinned_in_files = false;
                    self.outside = outside_entries(&self.fs);
                    self.last_view.set(None);
                }
                self.model.pinned_bytes = 0;
                if let Entry::Shared { len, blocks, .. } = self.model.entry {
                    self.model.entry = Entry::File { len, blocks };
                }
                let view = self.view();
                self.settle(&view, true)
            }
            Op::ReflinkReserve => {
                // Excluded (see the op): a snapshot or an earlier copy, a read-only disk.
                let Entry::File { len, blocks } = self.model.entry else {
                    return Ok(());
                };
                if self.copy || self.model.pinned_bytes > 0 || self.model.read_only || blocks == 0 {
                    return Ok(());
                }
                self.fs
                    .reflink(RESERVE, COPY)
                    .expect("a regular file at the reserve path, nothing at the copy's");
                self.copy = true;
                self.outside = outside_entries(&self.fs);
                self.last_view.set(None);
                // Every block is shared now; the copy holds nothing of its own.
                self.model.pinned_in_files = true;
                self.model.entry = Entry::Shared {
                    len,
                    blocks,
                    shared: blocks,
                };
                let view = self.view();
                self.settle(&view, true)
            }
            Op::SetLateFrees(late) => {
                self.fs.set_late_frees(late);
                self.fs.set_sync_fs_shows_late_frees(step.is_multiple_of(2));
                Ok(())
            }
            Op::SetReadOnly(read_only) => {
                self.fs.set_read_only(read_only);
                self.model.read_only = read_only;
                Ok(())
            }
            Op::SetAllocate(mode) => {
                let (mode, fallocate) = map_allocate(mode);
                self.fs.set_allocate(mode);
                self.model.fallocate = fallocate;
                Ok(())
            }
            Op::SetQuota(quota) => {
                let quota =
                    quota.map(|q| u64::from(q) % (2 * self.capacity_blocks + 1) * BLOCK_BYTES);
                self.fs.set_quota(quota);
                self.model.quota_bytes = quota;
                Ok(())
            }
            Op::EnsureAndReleaseConcurrently(args) => {
                let args = self.args(args);
                self.race(args)
            }
        }
    }

    /// After the scenario itself changed the reserve path. Setup calls are durable at
    /// once; one that removed nothing and created nothing leaves what a crash may bring
    /// back as it was.
    /// The model's view of the reserve path becomes `entry`. A file a snapshot shared
    /// that is gone or replaced leaves its shared blocks with the snapshot.
    fn set_entry(&mut self, entry: Entry) {
        self.model.set_entry(entry);
    }

    /// Bytes the reflink copy holds that the reserve does not share (0 without a copy).
    fn copy_own_bytes(&self) -> u64 {
        if !self.copy {
            return 0;
        }
        let held = self
            .fs
            .lookup(COPY)
            .ok()
            .flatten()
            .map_or(0, |p| p.allocated_bytes);
        held - self.fs.shared_bytes_of(COPY).min(held)
    }

    /// Free bytes as the disk will show them once pending frees are accounted.
    fn true_free(&self) -> u64 {
        self.fs.free_bytes() + self.fs.pending_free_bytes()
    }

    /// The model as a call that takes the lock sees it: a replacement left behind by an
    /// earlier double fault is removed first ([`REPLACING`]).
    fn tidied_model(&self) -> Model {
        let mut model = self.model.clone();
        model.outside_bytes = self.bystander_bytes;
        model
    }

    /// Runs `call` while a move of the home is planned; if the move happened, checks that
    /// the new directory at the home's path stayed empty (rule 13: everything happened in
    /// the directory the call opened), then puts the moved home back, so the model's view
    /// of the path holds again and `call`'s own checks see the directory it worked in.
    fn moved_home_call(
        &mut self,
        call: impl FnOnce(&mut Self) -> Result<(), Violation>,
    ) -> Result<(), Violation> {
        let moves = self.fs.moves();
        // The call's own checks run on `HOME`: put the home back first, through a hook
        // that runs right after the lifecycle call returns and before it is judged.
        self.after_lifecycle_call = Some(moves);
        let result = call(self);
        self.after_lifecycle_call = None;
        result
    }

    /// If a planned move happened during the call that just returned: the new directory
    /// must be empty; the moved home goes back to its path.
    fn put_home_back(&mut self) -> Result<(), Violation> {
        let Some(moves) = self.after_lifecycle_call.take() else {
            return Ok(());
        };
        self.fs.move_after(0, HOME, MOVED_HOME);
        if self.fs.moves() == moves {
            return Ok(());
        }
        let mut leaked = Vec::new();
        self.fs.for_each_entry(|path, _, _| {
            if path
                .strip_prefix(HOME)
                .is_some_and(|rest| rest.starts_with('/'))
            {
                leaked.push(path.to_owned());
            }
        });
        self.check(leaked.is_empty(), Invariant::StaysInItsHome, || {
            format!("the home was moved to {MOVED_HOME} mid-call, and the call wrote {leaked:?} in the new directory at {HOME}")
        })?;
        self.fs.remove(HOME).expect("the new home is empty");
        self.fs
            .rename(MOVED_HOME, HOME)
            .expect("the moved home goes back");
        Ok(())
    }

    fn planted(&mut self, removed: bool) -> Result<(), Violation> {
        let view = self.view();
        self.set_entry(view.entry());
        if removed || self.model.entry != Entry::Absent {
            self.durable = Durable::exactly(self.model.entry);
        }
        self.settle(&view, true)
    }

    /// After a crash: the reserve path holds something a crash may bring back.
    fn crashed(&mut self, before: &Before, exact_space: bool) -> Result<(), Violation> {
        self.report.crashes += 1;
        let view = self.view();
        let entry = view.entry();
        let was_other = matches!(before.entry, Entry::Other(_));
        let allowed = if was_other {
            view.reserve == before.probe
        } else {
            self.durable.allows(entry)
        };
        self.check(allowed, Invariant::CrashConsistent, || {
            format!(
                "after the crash {entry:?}; a crash may bring back {:?}",
                self.durable
            )
        })?;
        self.model.entry = entry;
        // Which file a snapshot's blocks are shared with again after a crash depends on
        // which names came back: the snapshots' own share is read from the disk.
        self.model.pinned_bytes = self.fs.pinned_bytes() + self.copy_own_bytes();
        self.durable = Durable::exactly(entry);
        self.settle(&view, exact_space)
    }

    /// Checks common to every lifecycle call: outside untouched, refused things
    /// untouched, a failure leaves no trace.
    fn after_call(
        &self,
        before: &Before,
        view: &View,
        failed: bool,
        strict: bool,
        gave_back: &[Entry],
    ) -> Result<(), Violation> {
        self.check_outside(view)?;
        let probe = view.reserve.as_ref();
        if let Entry::Other(kind) = before.entry {
            self.check(
                probe == before.probe.as_ref(),
                Invariant::RefusedUntouched,
                || {
                    format!(
                        "the {kind} at the reserve path was {:?}, is {probe:?}",
                        before.probe
                    )
                },
            )?;
        }
        if failed && strict {
            // Other writers may have moved in the middle; what files hold is compared.
            let entry = view.entry();
            let free = self.true_free();
            let files = view.file_bytes;
            let restored = entry == before.entry && files == before.file_bytes;
            let only_gave_back = gave_back.contains(&entry) && files <= before.file_bytes;
            self.check(
                restored || only_gave_back,
                Invariant::NoTraceOnFailure,
                || {
                    format!(
                        "before {:?} with {} bytes free and {} in files, \
                         after {entry:?} with {free} bytes free and {files} in files",
                        before.entry, before.free, before.file_bytes
                    )
                },
            )?;
        }
        Ok(())
    }

    /// Counts a call that found a hard link or a shared file at the reserve path.
    fn count_found(&mut self, entry: Entry) {
        match entry {
            Entry::Linked { .. } => self.report.linked += 1,
            Entry::Shared { .. } => self.report.shared += 1,
            _ => {}
        }
    }

    /// `ensure`, optionally with a power cut after `crash_after` calls.
    fn ensure(&mut self, args: Args, crash_after: Option<u32>) -> Result<(), Violation> {
        let before = self.before();
        self.count_found(before.entry);
        let forecast = self
            .tidied_model()
            .ensure(args.size, args.headroom, args.strategy);
        let mut tap = Tap::arm(&self.fs, crash_after);
        let reserve = scenario_reserve(&self.fs, args.config());
        let result = reserve.ensure();
        let crashed = tap.disarm();
        self.put_home_back()?;
        let disturbance = self.disturbance(&before);
        if crash_after.is_some() && !crashed {
            // The call finished before the cut: check it, then cut the power anyway.
            self.judge_ensure(&before, args, &forecast, &result, &tap, disturbance)?;
            let before = self.before();
            self.fs.crash();
            return self.crashed(&before, true);
        }
        if crashed {
            self.durable.add(before.entry);
            if let Some(shrunk) = forecast.shrunk {
                self.durable.add(shrunk);
            }
            self.durable.partial_up_to = self.durable.partial_up_to.max(args.size);
            return self.crashed(&before, !disturbance.other_writer);
        }
        self.judge_ensure(&before, args, &forecast, &result, &tap, disturbance)
    }

    fn judge_ensure(
        &mut self,
        before: &Before,
        args: Args,
        forecast: &model::EnsureForecast,
        result: &Result<Ensured, Error>,
        tap: &Tap,
        disturbance: Disturbance,
    ) -> Result<(), Violation> {
        let view = self.view();
        let entry = view.entry();
        // With a fault as the only disturbance of a call the model expected to succeed,
        // the rollback itself runs undisturbed and must restore everything.
        // A deferral after running out of space has rolled back already: a fault in that
        // rollback is a second fault.
        let rolls_back = matches!(
            forecast.result,
            Err(_)
                | Ok(Ensured::Deferred {
                    reason: DeferReason::RanOut | DeferReason::Quota,
                    ..
                })
        );
        let strict = disturbance.faults == 0
            || (disturbance.faults == 1 && !rolls_back && !disturbance.other_writer);
        // Besides the state it found, a failed ensure may leave an oversized reserve cut
        // to the size (rule 9) and a sparse one with its blocks dropped: a refill cuts it
        // to 0 first, and its blocks cannot be put back without allocating (found by
        // this driver; documented in `Plan::Refill`). Both only give space back.
        let mut gave_back: Vec<Entry> = forecast.shrunk.into_iter().collect();
        for state in [Some(before.entry), forecast.shrunk].into_iter().flatten() {
            if let Entry::File { len, blocks } = state
                && blocks > 0
                && blocks * BLOCK_BYTES < len
            {
                gave_back.push(Entry::File { len, blocks: 0 });
            }
        }
        self.after_call(before, &view, result.is_err(), strict, &gave_back)?;

        // A replacement an earlier double fault left may stay when tidying it failed too;
        // one this call made may not.
        self.check(
            result.is_err() || before.replacing || view.replacing.is_none(),
            Invariant::OnlyTheReservePath,
            || {
                format!(
                    "ensure returned {} and left {REPLACING} behind",
                    describe(result)
                )
            },
        )?;

        // Rule 4, as ensure saw the disk: what it added fits above the headroom.
        let base = forecast.shrunk.unwrap_or(before.entry);
        let grown = entry_blocks(entry).saturating_sub(entry_blocks(base)) * BLOCK_BYTES;
        if grown > 0 && result.is_ok() {
            self.report.allocations += 1;
            let seen = tap.max_free_seen;
            self.check(
                seen.is_some_and(|free| free >= grown && free - grown >= args.headroom),
                Invariant::Headroom,
                || {
                    format!(
                        "allocated {grown} bytes with {seen:?} free seen, headroom {}",
                        args.headroom
                    )
                },
            )?;
        }
        match result {
            Ok(Ensured::Deferred { .. }) => self.report.deferrals += 1,
            Ok(_) => {
                let complete = matches!(entry, Entry::File { len, blocks } if len == args.size && blocks * BLOCK_BYTES >= args.size);
                self.check(complete, Invariant::CompleteAfterSuccess, || {
                    format!(
                        "ensure returned {result:?} but the reserve is {entry:?}, size {}",
                        args.size
                    )
                })?;
            }
            Err(_) => self.report.failures += 1,
        }

        // The model's outcome, when nothing made it uncertain. A fault makes any
        // failure possible (the rollback checks above still apply) and may change the
        // way to success (an injected EOPNOTSUPP sends Auto to the write path). Other
        // writers in the middle of the call make the free space ensure saw unknown.
        // Then only the shape of the outcome is checked: the headroom and completeness
        // were checked above against what statvfs really said.
        if disturbance.any() {
            let shape = match result {
                Ok(Ensured::Created { .. } | Ensured::ToppedUp { .. }) | Err(_) => true,
                // A deferral after running out of space has rolled back a refill: a
                // sparse reserve may have lost its blocks (only space given back).
                Ok(_) => {
                    entry == before.entry
                        || Some(entry) == forecast.shrunk
                        || gave_back.contains(&entry)
                }
            };
            self.check(shape, Invariant::Model, || {
                format!("ensure returned {} and left {entry:?}", describe(result))
            })?;
        } else {
            let as_forecast = match (&forecast.result, result) {
                (Ok(expected), Ok(got)) => expected == got && forecast.after == entry,
                (Err(refusal), Err(error)) => {
                    refusal_matches(*refusal, error)
                        && (entry == before.entry || gave_back.contains(&entry))
                }
                _ => false,
            };
            self.check(as_forecast, Invariant::Model, || {
                format!(
                    "model expected {:?} leaving {:?}; ensure returned {} leaving {entry:?}",
                    forecast.result,
                    forecast.after,
                    describe(result)
                )
            })?;
        }

        // What a crash may bring back now.
        match result {
            Ok(Ensured::Deferred { .. } | Ensured::Present { .. }) => {
                if let Some(shrunk) = forecast.shrunk {
                    self.durable.add(shrunk);
                }
                // On the way to a deferral `ensure` flushes the filesystem (`syncfs`, to
                // see pending frees), which makes what is there now durable, whatever an
                // earlier failed call left live.
                if matches!(result, Ok(Ensured::Deferred { .. })) {
                    self.durable.add(entry);
                }
            }
            // Rule 6: a reserve laid down is durable (unless an earlier double fault left
            // a file whose directory entry never was).
            Ok(_) => {
                let previous = std::mem::replace(&mut self.durable, Durable::exactly(entry));
                self.durable.unknown = previous.unknown;
                // A replaced hard link or shared file whose directory sync failed may
                // come back (the rename was not made durable; the kernel may keep either
                // name), with its blocks still shared with the snapshot or copy, and in
                // any state a crash could have left it in before this call: a cut to
                // size whose fsync failed earlier is not durable either (found by the
                // fuzzer: the old file came back at its length before the cut).
                if disturbance.faults > 0
                    && matches!(before.entry, Entry::Linked { .. } | Entry::Shared { .. })
                {
                    self.durable.add(before.entry);
                    for state in previous.states {
                        self.durable.add(state);
                    }
                    self.durable.partial_up_to = previous.partial_up_to;
                }
            }
            Err(_) if strict => {
                self.durable.add(before.entry);
                if let Some(shrunk) = forecast.shrunk {
                    self.durable.add(shrunk);
                }
                self.durable.partial_up_to = self.durable.partial_up_to.max(args.size);
            }
            Err(_) => self.durable.unknown = true,
        }
        self.set_entry(entry);
        self.settle(&view, !disturbance.other_writer)
    }

    /// `release`, optionally with a power cut after `crash_after` calls.
    fn release(&mut self, crash_after: Option<u32>) -> Result<(), Violation> {
        let before = self.before();
        self.count_found(before.entry);
        let (expected, expected_after) = self.model.release();
        let mut tap = Tap::arm(&self.fs, crash_after);
        let reserve = scenario_reserve(&self.fs, ReserveConfig::default());
        let result = reserve.release();
        let crashed = tap.disarm();
        self.put_home_back()?;
        let disturbance = self.disturbance(&before);
        let view = self.view();
        if let Err(error) = &result {
            self.report.failures += 1;
            self.check(
                !is_out_of_space(error) || disturbance.out_of_space_faults > 0,
                Invariant::ReleaseNeedsNoSpace,
                || format!("release failed: {error}"),
            )?;
        }
        if crashed {
            self.durable.add(Entry::Absent);
            // Release flushes the filesystem (`syncfs`) for its baseline before it
            // unlinks: what was there, durable or not, may come back.
            self.durable.add(before.entry);
            return self.crashed(&before, !disturbance.other_writer);
        }
        self.after_call(&before, &view, result.is_err(), true, &[])?;
        let entry = view.entry();
        let as_expected = match (&expected, &result) {
            (_, Err(_)) if disturbance.faults > 0 => entry == before.entry,
            // Rule 8's measured gain is only predictable on an undisturbed disk.
            (
                Ok(Released::Released {
                    releasable_bytes: want,
                    ..
                }),
                Ok(Released::Released {
                    releasable_bytes: got,
                    ..
                }),
            ) if disturbance.any() => want == got && entry == expected_after,
            (Ok(e), Ok(g)) => e == g && entry == expected_after,
            (Err(refusal), Err(error)) => refusal_matches(*refusal, error) && entry == before.entry,
            _ => false,
        };
        // Rule 1 and 8: what release counted on is what the disk gained, once pending
        // frees show (less only when a crash had overcommitted the disk, so free was 0).
        // A replacement an earlier double fault left is removed under the lock first: its
        // bytes come back too.
        if let (
            Ok(Released::Released {
                releasable_bytes, ..
            }),
            false,
        ) = (&result, disturbance.any())
        {
            let gained = self.true_free().saturating_sub(before.free);
            let tidied = if view.replacing.is_none() {
                before.replacing_bytes
            } else {
                0
            };
            let expected = releasable_bytes + tidied;
            self.check(
                gained == expected || (before.free == 0 && gained < expected),
                Invariant::ReleaseGainsWhatItExpects,
                || {
                    format!(
                        "release expected {releasable_bytes} bytes back from {:?} (and {tidied} from a replacement left behind); the disk gained {gained}",
                        before.entry
                    )
                },
            )?;
        }
        self.check(as_expected, Invariant::Model, || {
            format!(
                "model expected {expected:?} leaving {expected_after:?}; release returned {} leaving {entry:?}",
                describe(&result)
            )
        })?;
        if let Ok(Released::Released { .. }) = result {
            if disturbance.faults > 0 {
                // The directory sync is best effort: the old entry may come back, as
                // the `syncfs` before the unlink left it.
                self.durable.add(Entry::Absent);
                self.durable.add(before.entry);
            } else {
                self.durable = Durable::exactly(Entry::Absent);
            }
        }
        self.set_entry(entry);
        if crash_after.is_some() {
            self.settle(&view, !disturbance.other_writer)?;
            let before = self.before();
            self.fs.crash();
            return self.crashed(&before, true);
        }
        self.settle(&view, !disturbance.other_writer)
    }

    /// `status`: reads, changes nothing.
    fn status(&mut self, args: Args) -> Result<(), Violation> {
        let before = self.before();
        let forecast = self.model.ensure(args.size, args.headroom, args.strategy);
        let reserve = scenario_reserve(&self.fs, args.config());
        let result = reserve.status();
        let disturbance = self.disturbance(&before);
        let view = self.view();
        self.after_call(&before, &view, true, true, &[])?;
        let entry = view.entry();
        self.check(entry == before.entry, Invariant::Model, || {
            format!(
                "status changed the reserve from {:?} to {entry:?}",
                before.entry
            )
        })?;
        let expected_error = if args.size == 0 {
            Some(Refusal::ZeroSize)
        } else if args.size > self.capacity_bytes() {
            Some(Refusal::TooBig)
        } else {
            None
        };
        let consistent = match (&result, expected_error) {
            (Err(_), _) if disturbance.faults > 0 => true,
            (Ok(status), None) => {
                let observed = match status.observed {
                    disk_reserve::Observed::Absent => Entry::Absent,
                    disk_reserve::Observed::Regular {
                        len,
                        allocated_bytes,
                    } => Entry::File {
                        len,
                        blocks: allocated_bytes / BLOCK_BYTES,
                    },
                    disk_reserve::Observed::Other(kind) => Entry::Other(kind),
                    // The decision does not look at a linked file's blocks: take them
                    // from what the scenario set up.
                    disk_reserve::Observed::Shared {
                        len,
                        allocated_bytes,
                        releasable_bytes,
                    } => Entry::Shared {
                        len,
                        blocks: allocated_bytes / BLOCK_BYTES,
                        shared: (allocated_bytes - releasable_bytes) / BLOCK_BYTES,
                    },
                    disk_reserve::Observed::HardLinked { .. } => match before.entry {
                        linked @ Entry::Linked { .. } => linked,
                        _ => Entry::Other(FileKind::Regular),
                    },
                    // A kind of reserve this model does not know: never equal to the model.
                    _ => Entry::Other(FileKind::Regular),
                };
                let nothing = status.plan == Plan::Nothing;
                let refuse = matches!(status.plan, Plan::Refuse(_));
                observed == before.entry
                    && status.size_bytes == args.size
                    && status.headroom_bytes == args.headroom
                    && status.space.total_bytes == self.capacity_bytes()
                    // A status reads statvfs as it is: frees not shown yet stay unshown.
                    && (disturbance.other_writer
                        || (status.space.free_bytes <= before.free
                            && status.space.free_bytes + before.pending >= before.free))
                    && nothing == matches!(forecast.result, Ok(Ensured::Present { .. }))
                    && refuse == matches!(forecast.result, Err(Refusal::NotRegular(_)))
            }
            (Err(error), Some(refusal)) => refusal_matches(refusal, error),
            (Err(_), None) | (Ok(_), Some(_)) => false,
        };
        if result.is_err() {
            self.report.failures += 1;
        }
        self.check(consistent, Invariant::Model, || {
            format!(
                "status with size {} on {:?}: {:?}",
                args.size, before.entry, result
            )
        })?;
        self.settle(&view, !disturbance.other_writer)
    }

    /// An `ensure` and a `release` at once: the release in the middle of the ensure.
    fn race(&mut self, args: Args) -> Result<(), Violation> {
        let before = self.before();
        // The two serial orders.
        let ensure_first = self
            .tidied_model()
            .ensure(args.size, args.headroom, args.strategy);
        // A failed refill may leave the sparse file it found with its blocks dropped
        // (see `judge_ensure`): the release after it may find either.
        let mut found_by_release = vec![ensure_first.after];
        if let (Err(_), Entry::File { len, blocks }) = (ensure_first.result, ensure_first.after)
            && blocks > 0
            && blocks * BLOCK_BYTES < len
        {
            found_by_release.push(Entry::File { len, blocks: 0 });
        }
        // Either call, first under the lock, tidies a replacement an earlier double
        // fault left: whichever goes second finds it gone and its bytes free.
        let tidied = self.tidied_model();
        let releases_second: Vec<_> = found_by_release
            .into_iter()
            .map(|found| {
                let mut m = tidied.clone();
                m.set_entry(found);
                m.release()
            })
            .collect();
        let (release_first, after_release) = tidied.release();
        let mut m = tidied;
        // A shared reserve the release removed leaves its shared blocks with the
        // snapshot or the copy, where they still count (against the quota too).
        m.set_entry(after_release);
        let ensure_second = m.ensure(args.size, args.headroom, args.strategy);
        let end_b = ensure_second.after;

        // The release's turn comes just before the ensure's (1 + step mod 16)-th
        // filesystem call, on this thread: where the operation stands in the sequence
        // picks the interleaving, and an input replays exactly (two threads raced for
        // real before, which no fuzzer can replay, and cost a third of the run in
        // wake-ups). A release that finds the home locked gives up at once, as a second
        // process would start waiting, and runs again when the ensure is done; one that
        // does not has nothing to stop it but the lock, so a lock that does not exclude
        // breaks the serial order below.
        let turn = 1 + (self.step % 16) as u32;
        let in_turn = Arc::new(Mutex::new(None));
        let (fs, slot) = (self.fs.clone(), Arc::clone(&in_turn));
        self.fs.interleave(turn, move || {
            let released = panic::catch_unwind(AssertUnwindSafe(|| {
                scenario_reserve(&fs, args.config())
                    .lock_timeout(Some(std::time::Duration::ZERO))
                    .release()
            }));
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(released);
        });
        let ensured = panic::catch_unwind(AssertUnwindSafe(|| {
            scenario_reserve(&self.fs, args.config()).ensure()
        }));
        // The turn may not have come (the ensure made fewer calls).
        self.fs.interleave(0, || {});
        let in_turn = in_turn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let released = match in_turn {
            Some(Ok(Err(Error::LockTimeout { .. }))) | None => {
                self.report.releases_after_ensure += 1;
                panic::catch_unwind(AssertUnwindSafe(|| {
                    scenario_reserve(&self.fs, args.config()).release()
                }))
            }
            Some(released) => {
                self.report.releases_mid_ensure += 1;
                released
            }
        };
        let (Ok(ensured), Ok(released)) = (ensured, released) else {
            return Err(self.violation(Invariant::NoPanic, "a racing call panicked".into()));
        };
        let disturbance = self.disturbance(&before);
        let view = self.view();
        self.after_call(&before, &view, false, false, &[])?;
        let entry = view.entry();
        if let Err(error) = &released {
            self.check(
                !is_out_of_space(error) || disturbance.out_of_space_faults > 0,
                Invariant::ReleaseNeedsNoSpace,
                || format!("release failed: {error}"),
            )?;
        }
        if ensured.is_err() || released.is_err() {
            self.report.failures += 1;
        }
        if !disturbance.any() {
            let same_e = |f: &Result<Ensured, Refusal>| match (f, &ensured) {
                (Ok(a), Ok(b)) => a == b,
                (Err(r), Err(e)) => refusal_matches(*r, e),
                _ => false,
            };
            // Interleaved: the measured gain of the release is the ensure's to move.
            let same_r = |f: &Result<Released, Refusal>| match (f, &released) {
                (
                    Ok(Released::Released {
                        releasable_bytes: a,
                        ..
                    }),
                    Ok(Released::Released {
                        releasable_bytes: b,
                        ..
                    }),
                ) => a == b,
                (Ok(a), Ok(b)) => a == b,
                (Err(r), Err(e)) => refusal_matches(*r, e),
                _ => false,
            };
            let order_a = same_e(&ensure_first.result)
                && releases_second
                    .iter()
                    .any(|(release, end)| same_r(release) && entry == *end);
            let order_b = same_e(&ensure_second.result) && same_r(&release_first) && entry == end_b;
            self.check(order_a || order_b, Invariant::SerialOrder, || {
                format!(
                    "from {:?}: ensure {} and release {} left {entry:?}; \
                     ensure-then-release gives {:?}/{:?}, \
                     release-then-ensure gives {:?}/{:?}/{end_b:?}",
                    before.entry,
                    describe(&ensured),
                    describe(&released),
                    ensure_first.result,
                    releases_second,
                    release_first,
                    ensure_second.result,
                )
            })?;
        } else {
            let sane = match before.entry {
                Entry::Other(_) => entry == before.entry,
                // A fault may stop the release of a linked or shared file before it is
                // removed.
                Entry::Linked { .. } | Entry::Shared { .. } => {
                    entry == before.entry || matches!(entry, Entry::Absent | Entry::File { .. })
                }
                _ => matches!(entry, Entry::Absent | Entry::File { .. }),
            };
            self.check(sane, Invariant::SerialOrder, || {
                format!("from {:?} the race left {entry:?}", before.entry)
            })?;
        }
        self.durable.add(before.entry);
        self.durable.add(entry);
        self.durable.unknown = true;
        self.set_entry(entry);
        self.settle(&view, !disturbance.other_writer)
    }
}

/// What the driver reads of the disk after a step, in one pass over the tree
/// ([`SimFs::for_each_entry`]): no path is copied or looked up.
#[derive(Debug, Clone, Copy)]
struct View {
    /// The `lstat` of the reserve path.
    reserve: Option<Probe>,
    /// Bytes a snapshot shares with the file at the reserve path.
    reserve_shared: u64,
    /// The `lstat` of a replacement an earlier double fault left ([`REPLACING`]).
    replacing: Option<Probe>,
    /// Bytes all regular files hold. (Not `capacity - free - others`: when a crash
    /// brings back blocks other writers took meanwhile, `SimFs` is overcommitted.) A
    /// replacement a double fault left behind is not counted: the next call under the
    /// lock removes it, failing or not.
    file_bytes: u64,
    /// Whether every path outside the reserve path is as the scenario began.
    outside_unchanged: bool,
    /// Bytes other writers hold.
    other_writers_bytes: u64,
}

impl View {
    /// What the model calls the thing at the reserve path.
    fn entry(&self) -> Entry {
        entry_of_shared(self.reserve.as_ref(), self.reserve_shared)
    }
}

/// Whether `path` is neither the reserve path, nor a replacement, nor under them.
fn is_outside(path: &str) -> bool {
    let under = |dir: &str| {
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    !under(RESERVE) && !under(REPLACING)
}

/// Every path outside the reserve path, with its `lstat`, in the order
/// [`SimFs::for_each_entry`] visits them.
fn outside_entries(fs: &SimFs) -> Vec<(String, Probe)> {
    let mut outside = Vec::new();
    fs.for_each_entry(|path, probe, _| {
        if is_outside(path) {
            outside.push((path.to_owned(), *probe));
        }
    });
    outside
}

fn entry_blocks(entry: Entry) -> u64 {
    match entry {
        Entry::File { blocks, .. } => blocks,
        _ => 0,
    }
}

fn describe<T: fmt::Debug>(result: &Result<T, Error>) -> String {
    match result {
        Ok(value) => format!("{value:?}"),
        Err(error) => format!("error \"{error}\""),
    }
}
