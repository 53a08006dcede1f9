//! The command line as clap sees it: the contract `disk-reserve --help` states (arguments,
//! exit statuses, JSON fields).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use disk_reserve::{SizeSpec, Strategy};

use super::size_arg;

const ABOUT: &str = "Keep a structural disk reserve: a file of really-allocated blocks in a \
program's home directory that an operator deletes on a full disk to get room back.";

const LONG_ABOUT_TAIL: &str = "\
Exit status:
  0   done (ensure: present, created, topped up, shrunk; release: released or absent; status: read)
  75  ensure deferred: too little free space to lay the reserve down and keep the headroom;
      nothing was changed (EX_TEMPFAIL: try again later)
  1   an error, printed on stderr with the path and the cause
  2   bad usage (unknown option, malformed SIZE)
  74  the work was done but its report could not be written: stdout failed (one line on
      stderr says why) or was a closed pipe (quiet)
  SIGINT, SIGTERM or SIGHUP during ensure: the allocation is cancelled and rolled back
      (a reserve it created is removed, one it grew is cut back), one line on stderr says
      so, and the process dies by that same signal; a second signal meanwhile is ignored

SIZE is plain bytes (67108864, 512B), a size with a unit as in fallocate -l and
truncate -s (64M, 64MiB, 1G, 500MB: K M G T and KiB MiB GiB TiB are powers of 1024,
KB MB GB TB powers of 1000; case does not matter, so 64k is 64K = 65536; 1.5G is allowed,
rounded down to whole bytes) or a share of the filesystem (1%, 0.5%). Spaces around it
are ignored; a negative, malformed or too large (over 2^64-1 bytes) SIZE is bad usage.
The --size and --headroom an ensure was given are remembered for the home in
DIR/.reserve.conf (it survives release): ensure and status without --size use them, so
they neither shrink a custom reserve nor recreate it at the default 64MiB.

--json prints exactly one JSON object on stdout, sizes as integers in bytes:
  outcome         present created topped_up shrunk deferred released absent status, or error
  path            the reserve file
  size_bytes      the configured size, resolved (release: the length of the removed file)
  allocated_bytes bytes the reserve really holds now (release: 0)
  free_bytes      free bytes on the filesystem now
  total_bytes     size of the filesystem
  headroom_bytes  free bytes ensure always leaves (release: 0)
plus from_allocated_bytes (topped_up), from_len_bytes (shrunk), needed_bytes and reason
(deferred: low_space quota ran_out), releasable_bytes and freed_bytes (released), size_source (ensure, status: explicit, remembered or default: where
the size came from), and for status: condition (present absent partial sparse oversized
shared hard-linked not_a_regular_file), releasable_bytes, len_bytes, kind, ensure_would (nothing create top_up shrink defer refuse).
On an error (exit 1) stdout still holds one object, {\"outcome\": \"error\", \"error\": MESSAGE,
\"path\": PATH or null, \"out_of_space\": BOOL, \"hint\": TEXT or null}, and the error is also
printed on stderr. Usage errors (exit 2) print nothing on stdout.

Logs go to stderr; RUST_LOG sets the level (default: warn).";

/// `disk-reserve`: ensure, release or inspect a structural disk reserve.
#[derive(Debug, Parser)]
#[command(
    name = "disk-reserve",
    version,
    about = ABOUT,
    long_about = None,
    after_help = "Exit status: 0 done, 75 ensure deferred (not now), 1 error, 2 bad usage, \
                  74 done but stdout failed. --help tells more, with the JSON fields.",
    after_long_help = LONG_ABOUT_TAIL
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The three subcommands of the contract.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the reserve exist, complete, at its size — or defer (exit 75) when that would
    /// take free space below the headroom.
    #[command(after_help = "\
Example (at a service's start-up; 75 means \"not now\", not a failure):
  disk-reserve ensure --home /srv/app --size 1GiB
  created /srv/app/.reserve: 1 GiB allocated, 37.2 GiB free")]
    Ensure(EnsureArgs),

    /// Delete the reserve, giving its blocks back. Needs no free space: run it on a full
    /// disk.
    #[command(after_help = "\
Example (on a full disk, then clean up and run ensure again):
  disk-reserve release --home /srv/app
  released /srv/app/.reserve: freed 1 GiB, 1.3 GiB free; now clean up, then run `disk-reserve \
ensure --home /srv/app`, which lays the reserve down again once there is room (until then it \
defers, exit 75)

Waiting more than a second for the home's lock says which process holds it (/proc/locks);
--timeout bounds the wait, --force does without the lock.")]
    Release(ReleaseArgs),

    /// Show the reserve (present, absent, partial, sparse, oversized, shared, hard-linked,
    /// not a regular file), the free space, and what an ensure would do now. Changes nothing.
    #[command(after_help = "\
Example:
  disk-reserve status --home /srv/app --size 1GiB
  present /srv/app/.reserve: 1 GiB of 1 GiB allocated; 37.2 GiB free of 50 GiB, headroom 1 GiB; ensure would do nothing")]
    Status(StatusArgs),
}

/// Arguments every subcommand takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The program's home directory; the reserve is DIR/.reserve.
    #[arg(long, value_name = "DIR")]
    pub home: PathBuf,

    /// Print one JSON object on stdout instead of a line of text; on an error too,
    /// as {"outcome": "error", "error": ..., "hint": ...} (see disk-reserve --help).
    #[arg(long)]
    pub json: bool,
}

/// The reserve's size.
#[derive(Debug, Args)]
pub struct SizeArg {
    /// Reserve size: bytes, a unit as in fallocate -l (64M = 64MiB = 67108864; K M G T and
    /// KiB MiB GiB TiB are powers of 1024, KB MB GB TB of 1000) or a share of the
    /// filesystem (1%). An ensure remembers it (and --headroom) for the home, in
    /// DIR/.reserve.conf [default: the size an ensure was last given for this home, else
    /// 64MiB]
    // `allow_hyphen_values`: `--size -1` reaches our parser and its message, not clap's
    // "unexpected argument".
    #[arg(long, value_name = "SIZE", value_parser = size_arg::parse, allow_hyphen_values = true)]
    pub size: Option<SizeSpec>,
}

/// Free space ensure always leaves.
#[derive(Debug, Args)]
pub struct HeadroomArg {
    /// Free space ensure never goes below, a SIZE like --size (64M, 1GiB, 500MB, 1%)
    /// [default: the headroom an ensure was last given for this home, else the size].
    #[arg(long, value_name = "SIZE", value_parser = size_arg::parse, allow_hyphen_values = true)]
    pub headroom: Option<SizeSpec>,
}

/// `ensure` arguments.
#[derive(Debug, Args)]
pub struct EnsureArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub size: SizeArg,
    #[command(flatten)]
    pub headroom: HeadroomArg,
    /// How blocks are obtained: fallocate, falling back to writing data only where
    /// fallocate is unsupported (auto); fallocate only; or writing data only.
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    pub strategy: StrategyArg,
}

/// `release` arguments.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub common: Common,
    /// Wait at most SECS (e.g. 5, 0.5) for the home's lock, held by another ensure or by
    /// a program that locks its home; then exit 1 naming the holder, having changed
    /// nothing [default: wait as long as it takes, saying after a second who holds it].
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, conflicts_with = "force")]
    pub timeout: Option<Duration>,
    /// Remove the reserve without taking the home's lock, for a lock held for good.
    /// Unlinking is still safe (the blocks come back); what it gives up is the ordering
    /// with a concurrent ensure, which may be mid-write: that one may then report a
    /// reserve this release already removed (its blocks are freed when it ends). Run
    /// status afterwards.
    #[arg(long)]
    pub force: bool,
}

/// `--timeout SECS`: a non-negative number of seconds, fractions allowed.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("`{text}` is not a number of seconds (5, 0.5)"))
}

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub size: SizeArg,
    #[command(flatten)]
    pub headroom: HeadroomArg,
}

/// `--strategy` on the command line (the library stays free of clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// fallocate; write data only where it is unsupported or allocates nothing.
    Auto,
    /// fallocate only; an unsupported filesystem is an error.
    Fallocate,
    /// write incompressible data only, never fallocate.
    Write,
}

impl From<StrategyArg> for Strategy {
    fn from(arg: StrategyArg) -> Self {
        match arg {
            StrategyArg::Auto => Strategy::Auto,
            StrategyArg::Fallocate => Strategy::Fallocate,
            StrategyArg::Write => Strategy::Write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
