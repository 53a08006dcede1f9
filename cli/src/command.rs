//! Running a subcommand: build the reserve, call the library, print the result.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use disk_reserve::{CancelToken, Error, FileKind, RealFs, Released, Reserve, ReserveConfig};

use super::args::{Cli, Command, EnsureArgs, HeadroomArg, ReleaseArgs, SizeArg, StatusArgs};
use super::exit::Exit;
use super::failure::Failure;
use super::interrupt::{self, Interrupts};
use super::lock_holder;
use super::progress::Progress;
use super::report::{Report, SizeSource, What, escape_controls};

/// Runs the parsed command line and prints its result; returns how the process exits.
pub fn run(cli: Cli) -> Exit {
    let (json, result) = match cli.command {
        Command::Ensure(args) => (args.common.json, ensure(args)),
        Command::Release(args) => (args.common.json, release(args)),
        Command::Status(args) => (args.common.json, status(args)),
    };
    match result {
        Ok(report) => {
            let text = if json {
                report.to_json().to_string()
            } else {
                report.to_string()
            };
            match print_stdout(&text) {
                Ok(()) => report.exit(),
                Err(error) => {
                    // The work is done (or deferred) but nobody was told: not a success.
                    unreported(&error);
                    Exit::Unreported
                }
            }
        }
        Err(failure) => {
            for line in failure.lines() {
                print_stderr(&line);
            }
            if json {
                // Exit 1 either way; stderr already holds the error.
                if let Err(error) = print_stdout(&failure.to_json().to_string()) {
                    unreported(&error);
                }
            }
            Exit::Failed
        }
    }
}

/// Writes one line on stdout and flushes it, so a failure shows here and not at exit.
/// Rust ignores SIGPIPE, so a closed pipe is an `EPIPE` error here, never a panic.
fn print_stdout(line: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

/// Writes one line on stderr; if stderr fails too there is no one left to tell.
fn print_stderr(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Says on stderr that the report could not be written, unless stdout was a closed pipe:
/// the reader left on purpose (`| head -c0`), which is quiet.
fn unreported(error: &io::Error) {
    if error.kind() != io::ErrorKind::BrokenPipe {
        print_stderr(&format!(
            "error: the report could not be written to stdout: {error}"
        ));
    }
}

/// The reserve in `home`, made absolute (not resolved: a symlinked home keeps its name)
/// so every path and hint the operator sees can be pasted from any directory.
fn open(home: &Path, config: ReserveConfig) -> Result<Reserve<RealFs>, Failure> {
    let home = std::path::absolute(home).unwrap_or_else(|_| home.to_path_buf());
    Reserve::new(RealFs::new(), home, config)
        .map(super::failure::with_command_hint)
        .map_err(Failure::early)
}

/// The configuration `--size` and `--headroom` describe, falling back to what an earlier
/// `ensure` was given for the home (its record), then to the defaults; and where the size
/// came from.
fn sized(
    home: &Path,
    size: &SizeArg,
    headroom: &HeadroomArg,
) -> Result<(ReserveConfig, SizeSource), Failure> {
    let (config, source) = match size.size {
        Some(size) => (ReserveConfig::default().size(size), SizeSource::Explicit),
        None => {
            let reserve = open(home, ReserveConfig::default())?;
            match reserve.remembered() {
                Ok(Some(remembered)) => (
                    remembered.apply(ReserveConfig::default()),
                    SizeSource::Remembered,
                ),
                Ok(None) => (ReserveConfig::default(), SizeSource::Default),
                // A missing home is reported by the command itself, as ever.
                Err(Error::HomeMissing { .. } | Error::HomeNotDirectory { .. }) => {
                    (ReserveConfig::default(), SizeSource::Default)
                }
                Err(error) => return Err(Failure::of(error, &reserve)),
            }
        }
    };
    Ok(match headroom.headroom {
        Some(headroom) => (config.headroom(headroom), source),
        None => (config, source),
    })
}

fn ensure(args: EnsureArgs) -> Result<Report, Failure> {
    let (config, source) = sized(&args.common.home, &args.size, &args.headroom)?;
    let config = config.strategy(args.strategy.into());
    // What the operator gave is kept for the home; a remembered or default size is not
    // written back.
    let given = args.size.size.is_some() || args.headroom.headroom.is_some();
    let mut reserve = say_when_waiting(open(&args.common.home, config)?, "").remember(given);
    let progress = Progress::for_terminal(reserve.path().as_str(), args.common.json).map(Arc::new);
    let pause = TestPause::from_env();
    if progress.is_some() || pause.is_some() {
        let progress = progress.clone();
        reserve = reserve.on_progress(move |done, total| {
            if let Some(progress) = &progress {
                progress.update(done, total);
            }
            if let Some(pause) = &pause {
                pause.after_chunk(done, total);
            }
        });
    }
    // SIGINT, SIGTERM, SIGHUP cancel the allocation, which rolls back; then the process
    // dies by the signal (the CLI contract).
    let token = CancelToken::new();
    let interrupts = match Interrupts::watch(token.clone()) {
        Ok(interrupts) => Some(interrupts),
        Err(error) => {
            tracing::warn!(%error, "could not catch SIGINT, SIGTERM and SIGHUP; an interrupt will not roll back");
            None
        }
    };
    reserve = reserve.cancel_token(token);
    let ensured = reserve.ensure_report();
    if let Some(progress) = &progress {
        progress.finish();
    }
    if let Some(signal) = interrupts.as_ref().and_then(Interrupts::caught) {
        interrupted(signal, &reserve, ensured);
    }
    // The figures of the call's own decision, read in the directory it opened: not a
    // second look that a concurrent call or a re-pointed home could change.
    let ensured = ensured.map_err(|e| Failure::of(e, &reserve))?;
    Ok(Report {
        path: reserve.path().to_owned(),
        size_bytes: ensured.size_bytes,
        allocated_bytes: ensured.allocated_bytes,
        free_bytes: ensured.space.free_bytes,
        total_bytes: ensured.space.total_bytes,
        headroom_bytes: ensured.headroom_bytes,
        size_source: Some(source),
        what: What::Ensured(ensured.outcome),
    })
}

/// The reserve, saying on stderr after a second of waiting for the home's lock who holds
/// it (rule 8: never wait on a lock without saying so); `advice` ends the line.
fn say_when_waiting(reserve: Reserve<RealFs>, advice: &'static str) -> Reserve<RealFs> {
    let home = reserve.home().as_std_path().to_owned();
    reserve.on_lock_wait(move || {
        print_stderr(&escape_controls(&format!(
            "disk-reserve: waiting for the lock on {}, {}{advice}",
            home.display(),
            lock_holder::held_by(&home)
        )));
    })
}

/// Ends an `ensure` that a signal interrupted: one line on stderr saying what became of
/// the reserve, then death by that same signal.
fn interrupted(
    signal: i32,
    reserve: &Reserve<RealFs>,
    ensured: Result<disk_reserve::EnsureReport, Error>,
) -> ! {
    let name = interrupt::name(signal);
    let path = escape_controls(reserve.path().as_str());
    match ensured {
        Err(Error::Cancelled { .. }) => print_stderr(&format!(
            "disk-reserve: interrupted by {name}; the allocation was rolled back and {path} is as it was before"
        )),
        // The signal came after the last point where the allocation could stop: the
        // reserve is complete (or the call failed on its own); say so, then die all the same.
        Ok(report) => print_stderr(&format!(
            "disk-reserve: interrupted by {name} after ensure had finished ({}); {path} is kept",
            report.outcome.as_str()
        )),
        Err(error) => {
            for line in Failure::of(error, reserve).lines() {
                print_stderr(&line);
            }
            print_stderr(&format!("disk-reserve: interrupted by {name}"));
        }
    }
    interrupt::die_by(signal)
}

/// TEST-ONLY, not part of the CLI contract and not in `--help`: the real-mount tests
/// (`cli/tests/real_mount.rs`) set `DISK_RESERVE_TEST_PAUSE` (to anything) to stop `ensure`
/// between two chunks of the write path and change the disk under it (re-point or rename
/// the home) at a known moment, with no sleeping. After each chunk the command prints
/// `disk-reserve: test pause after DONE of TOTAL bytes` on stderr and waits for one line
/// on stdin; once stdin is at its end (or fails) it stops pausing.
struct TestPause {
    /// Set when stdin reached its end: no more pauses.
    done: AtomicBool,
}

impl TestPause {
    const VAR: &str = "DISK_RESERVE_TEST_PAUSE";

    fn from_env() -> Option<TestPause> {
        std::env::var_os(Self::VAR).map(|_| TestPause {
            done: AtomicBool::new(false),
        })
    }

    fn after_chunk(&self, done: u64, total: u64) {
        if self.done.load(Ordering::Relaxed) {
            return;
        }
        let mut stderr = io::stderr().lock();
        let _ = writeln!(
            stderr,
            "disk-reserve: test pause after {done} of {total} bytes"
        );
        let _ = stderr.flush();
        drop(stderr);
        let mut line = String::new();
        if !matches!(io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) {
            self.done.store(true, Ordering::Relaxed);
        }
    }
}

fn release(args: ReleaseArgs) -> Result<Report, Failure> {
    let reserve = open(&args.common.home, ReserveConfig::default())?;
    let reserve = say_when_waiting(
        reserve.lock_timeout(args.timeout),
        "; --timeout SECS bounds the wait, --force releases without the lock",
    );
    // Only for the report: the length of what is about to be removed.
    let len_before = match reserve.probe() {
        Ok(Some(probe)) if probe.kind == FileKind::Regular => probe.len,
        _ => 0,
    };
    let released = if args.force {
        reserve.release_forced()
    } else {
        reserve.release()
    };
    let released = released.map_err(|e| {
        let holder = matches!(e, Error::LockTimeout { .. })
            .then(|| lock_holder::held_by(reserve.home().as_std_path()));
        let failure = Failure::of(e, &reserve);
        match holder {
            Some(holder) => failure.with_line(format!(
                "the lock on {} is {holder}; run `disk-reserve release --home {} --force` to remove the reserve without it",
                reserve.home(),
                reserve.home()
            )),
            None => failure,
        }
    })?;
    let space = reserve.space_now().map_err(|e| Failure::of(e, &reserve))?;
    Ok(Report {
        path: reserve.path().to_owned(),
        size_bytes: match released {
            Released::Released { .. } => len_before,
            _ => 0,
        },
        allocated_bytes: 0,
        free_bytes: space.free_bytes,
        total_bytes: space.total_bytes,
        headroom_bytes: 0,
        size_source: None,
        what: What::Released(released),
    })
}

fn status(args: StatusArgs) -> Result<Report, Failure> {
    let (config, source) = sized(&args.common.home, &args.size, &args.headroom)?;
    let reserve = open(&args.common.home, config)?;
    let status = reserve.status().map_err(|e| Failure::of(e, &reserve))?;
    Ok(Report::from_status(
        reserve.path().to_owned(),
        &status,
        source,
        What::Status {
            observed: status.observed,
            condition: status.condition,
            plan: status.plan,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command words the out-of-space hint with its own commands, not the library's
    /// default (which names the file to delete).
    #[test]
    fn the_command_names_its_own_commands_in_the_hint() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = open(dir.path(), ReserveConfig::with_size_bytes(1 << 20)).unwrap();
        let hint = reserve.out_of_space_hint();
        assert!(
            hint.contains(&format!("`disk-reserve ensure --home {}`", reserve.home())),
            "{hint}"
        );
    }
}
