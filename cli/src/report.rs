//! What a successful run reports: one human line, or one JSON object, and its exit status.

use std::borrow::Cow;
use std::fmt;

use camino::Utf8PathBuf;
use disk_reserve::{Condition, DeferReason, Ensured, HumanBytes, Observed, Plan, Released, Status};
use serde_json::{Value, json};

use super::exit::Exit;

/// The result of one subcommand, with the numbers every outcome reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The reserve file.
    pub path: Utf8PathBuf,
    /// The configured size, resolved (release: the length of the removed file).
    pub size_bytes: u64,
    /// Bytes the reserve really holds now.
    pub allocated_bytes: u64,
    /// Free bytes on the filesystem now.
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Free bytes ensure always leaves (release: 0).
    pub headroom_bytes: u64,
    /// Where the size came from (ensure, status).
    pub size_source: Option<SizeSource>,
    /// What happened.
    pub what: What,
}

/// Where the size an `ensure` or `status` used came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSource {
    /// `--size` (or `--headroom`) on the command line.
    Explicit,
    /// The record an earlier `ensure` left for the home.
    Remembered,
    /// Neither: the default size.
    Default,
}

impl SizeSource {
    /// The JSON word: `explicit`, `remembered`, `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            SizeSource::Explicit => "explicit",
            SizeSource::Remembered => "remembered",
            SizeSource::Default => "default",
        }
    }

    /// How the human line says it.
    fn phrase(self) -> &'static str {
        match self {
            SizeSource::Explicit => "size from --size",
            SizeSource::Remembered => "size remembered from an earlier ensure",
            SizeSource::Default => "default size",
        }
    }
}

/// The subcommand's own outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// `ensure`.
    Ensured(Ensured),
    /// `release`.
    Released(Released),
    /// `status`: what is there and what an ensure would do.
    Status {
        /// What is at the reserve path.
        observed: Observed,
        /// Its condition against the size.
        condition: Condition,
        /// What an ensure would do now.
        plan: Plan,
    },
}

impl Report {
    /// A report of the state `status` read after (or instead of) an action.
    pub fn from_status(
        path: Utf8PathBuf,
        status: &Status,
        size_source: SizeSource,
        what: What,
    ) -> Report {
        Report {
            path,
            size_bytes: status.size_bytes,
            allocated_bytes: status.observed.allocated_bytes(),
            free_bytes: status.space.free_bytes,
            total_bytes: status.space.total_bytes,
            headroom_bytes: status.headroom_bytes,
            size_source: Some(size_source),
            what,
        }
    }

    /// The exit status: 75 for a deferred ensure, 0 otherwise.
    pub fn exit(&self) -> Exit {
        match self.what {
            What::Ensured(Ensured::Deferred { .. }) => Exit::Deferred,
            _ => Exit::Done,
        }
    }

    /// The contract's `outcome` word.
    pub fn outcome(&self) -> &'static str {
        match &self.what {
            What::Ensured(ensured) => ensured.as_str(),
            What::Released(released) => released.as_str(),
            What::Status { .. } => "status",
        }
    }

    /// The JSON object for `--json`.
    pub fn to_json(&self) -> Value {
        let mut object = json!({
            "outcome": self.outcome(),
            "path": self.path.as_str(),
            "size_bytes": self.size_bytes,
            "allocated_bytes": self.allocated_bytes,
            "free_bytes": self.free_bytes,
            "total_bytes": self.total_bytes,
            "headroom_bytes": self.headroom_bytes,
        });
        let extra = match &self.what {
            What::Ensured(Ensured::ToppedUp {
                from_allocated_bytes,
                ..
            }) => json!({ "from_allocated_bytes": from_allocated_bytes }),
            What::Ensured(Ensured::Shrunk { from_len, .. }) => {
                json!({ "from_len_bytes": from_len })
            }
            What::Ensured(Ensured::Deferred {
                needed_bytes,
                reason,
                ..
            }) => {
                json!({ "needed_bytes": needed_bytes, "reason": reason.as_str() })
            }
            What::Ensured(_) => json!({}),
            What::Released(Released::Released {
                releasable_bytes,
                freed_bytes,
            }) => {
                json!({ "releasable_bytes": releasable_bytes, "freed_bytes": freed_bytes })
            }
            What::Released(_) => {
                json!({ "releasable_bytes": 0, "freed_bytes": 0 })
            }
            What::Status {
                observed,
                condition,
                plan,
            } => json!({
                "releasable_bytes": observed.releasable_bytes(),
                "condition": condition_word(*condition).replace(' ', "_"),
                "len_bytes": len_bytes(*observed),
                "kind": kind_word(*observed).replace(' ', "_"),
                "ensure_would": plan_word(*plan).replace(' ', "_"),
            }),
        };
        if let (Value::Object(object), Value::Object(extra)) = (&mut object, extra) {
            object.extend(extra);
        }
        if let (Value::Object(object), Some(source)) = (&mut object, self.size_source) {
            object.insert("size_source".to_owned(), source.as_str().into());
        }
        object
    }
}

/// The one human line; control characters in the path are escaped so it stays one line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = escape_controls(self.path.as_str());
        let allocated = natural(self.allocated_bytes);
        let free = natural(self.free_bytes);
        match &self.what {
            What::Ensured(Ensured::Present { .. }) => {
                write!(f, "present {path}: {allocated} allocated, {free} free")
            }
            What::Ensured(Ensured::Created { .. }) => {
                write!(f, "created {path}: {allocated} allocated, {free} free")
            }
            What::Ensured(Ensured::ToppedUp {
                from_allocated_bytes,
                ..
            }) => write!(
                f,
                "topped up {path}: {allocated} allocated (was {}), {free} free",
                natural(*from_allocated_bytes)
            ),
            What::Ensured(Ensured::Shrunk { from_len, .. }) => write!(
                f,
                "shrunk {path}: {allocated} allocated (was {} long), {free} free",
                natural(*from_len)
            ),
            What::Ensured(Ensured::Deferred {
                needed_bytes,
                reason,
                ..
            }) => {
                let why = match reason {
                    DeferReason::LowSpace => "",
                    DeferReason::Quota => {
                        "; the quota ran out while allocating and it was rolled back"
                    }
                    DeferReason::RanOut => {
                        "; the space ran out while allocating (another writer?) and it was rolled back"
                    }
                    _ => "",
                };
                write!(
                    f,
                    "deferred {path}: {free} free, {} needed ({} missing + {} headroom){why}; nothing changed, run ensure again once space is freed",
                    natural(*needed_bytes),
                    natural(needed_bytes.saturating_sub(self.headroom_bytes)),
                    natural(self.headroom_bytes),
                )
            }
            What::Ensured(other) => {
                write!(
                    f,
                    "{} {path}: {allocated} allocated, {free} free",
                    other.as_str()
                )
            }
            What::Released(Released::Released {
                releasable_bytes,
                freed_bytes,
            }) => {
                write!(
                    f,
                    "released {path}: expected to free {}, the filesystem gained {}, {free} free",
                    natural(*releasable_bytes),
                    natural(*freed_bytes)
                )?;
                if freed_bytes < releasable_bytes {
                    write!(
                        f,
                        " (less than expected: other writers took space meanwhile, or the filesystem still holds the blocks — a snapshot, a copy sharing them, a lower overlay layer)"
                    )?;
                }
                let home = shell_word(self.path.parent().map_or("", |home| home.as_str()));
                write!(
                    f,
                    "; now clean up, then run `disk-reserve ensure --home {}`, which lays the reserve down again once there is room (until then it defers, exit 75)",
                    escape_controls(&home)
                )
            }
            What::Released(Released::Absent) => {
                write!(f, "absent {path}: no reserve to release, {free} free")
            }
            What::Released(other) => write!(f, "{} {path}: {free} free", other.as_str()),
            What::Status {
                observed,
                condition,
                plan,
            } => {
                write!(f, "{} {path}: ", condition_word(*condition))?;
                if let Observed::Other(kind) = observed {
                    write!(f, "a {kind}, never touched")?;
                } else if let Observed::HardLinked { links } = observed {
                    write!(
                        f,
                        "a file with {links} names, never written; releasing frees nothing"
                    )?;
                } else if let Observed::Shared {
                    releasable_bytes, ..
                } = observed
                {
                    write!(
                        f,
                        "{allocated} allocated, only {} of it its own (the rest is shared with a copy or a snapshot); releasing frees only that",
                        natural(*releasable_bytes)
                    )?;
                } else {
                    write!(f, "{allocated} of {} allocated", natural(self.size_bytes))?;
                    if matches!(condition, Condition::Sparse | Condition::Oversized) {
                        write!(f, ", {} long", natural(len_bytes(*observed)))?;
                    }
                }
                write!(
                    f,
                    "; {free} free of {}, headroom {}; ensure would {}",
                    natural(self.total_bytes),
                    natural(self.headroom_bytes),
                    plan_phrase(*plan)
                )?;
                if let Some(source) = self.size_source {
                    write!(f, "; {}", source.phrase())?;
                }
                Ok(())
            }
        }
    }
}

/// A size as people read it: `1 byte`, `512 bytes`, `64 MiB`, `1.8 GiB` (see
/// [`HumanBytes`]' alternate form).
pub fn natural(bytes: u64) -> String {
    format!("{:#}", HumanBytes(bytes))
}

/// `text` with its control characters escaped as Rust writes them (`\n`, `\t`,
/// `\u{1b}`), and the Unicode line and paragraph separators too, so a path cannot split a
/// line of human output or move the cursor; everything else, UTF-8 included, is kept as
/// is. (JSON output needs none of this: serde_json escapes.)
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let needs_escape = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.contains(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// `text` as one shell word: as it is when it is plain, else in single quotes (as the
/// out-of-space hint writes a home).
pub fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The status word: `present absent partial sparse oversized`, `not a regular file`.
fn condition_word(condition: Condition) -> &'static str {
    match condition {
        Condition::Complete => "present",
        Condition::NotARegularFile(_) => "not a regular file",
        other => other.as_str(),
    }
}

/// What an ensure would do, as a word: `nothing create top up shrink defer refuse`.
fn plan_word(plan: Plan) -> &'static str {
    plan.as_str()
}

/// What an ensure would do, as the end of a sentence.
fn plan_phrase(plan: Plan) -> String {
    match plan {
        Plan::Nothing => "do nothing".to_owned(),
        Plan::Create => "create it".to_owned(),
        Plan::Replace { .. } => "replace the name with a fresh reserve".to_owned(),
        Plan::Extend { .. } | Plan::Refill { .. } => "top it up".to_owned(),
        Plan::Shrink { .. } => "shrink it".to_owned(),
        Plan::Refuse(kind) => format!("refuse (a {kind} is in the way)"),
        Plan::Defer {
            free_bytes,
            needed_bytes,
        } => format!(
            "defer ({} free, {} needed)",
            natural(free_bytes),
            natural(needed_bytes)
        ),
        other => other.as_str().to_owned(),
    }
}

fn len_bytes(observed: Observed) -> u64 {
    match observed {
        Observed::Regular { len, .. } | Observed::Shared { len, .. } => len,
        _ => 0,
    }
}

fn kind_word(observed: Observed) -> &'static str {
    match observed {
        Observed::Absent => "absent",
        Observed::Regular { .. } => "regular file",
        Observed::HardLinked { .. } => "hard-linked regular file",
        Observed::Shared { .. } => "regular file with shared blocks",
        Observed::Other(kind) => kind.as_str(),
        _ => "regular file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        for (text, want) in [
            ("/srv/app/.reserve", "/srv/app/.reserve"),
            ("/srv/a\nb/.reserve", "/srv/a\\nb/.reserve"),
            (
                "a\rb\tc\u{1b}[2Jd\u{7f}e\0",
                "a\\rb\\tc\\u{1b}[2Jd\\u{7f}e\\0",
            ),
            ("x\u{2028}y\u{85}z", "x\\u{2028}y\\u{85}z"),
            ("/srv/données/日本/.reserve", "/srv/données/日本/.reserve"),
            ("back\\slash 'quote\" space", "back\\slash 'quote\" space"),
        ] {
            assert_eq!(escape_controls(text), want, "{text:?}");
        }
        assert!(matches!(escape_controls("/plain"), Cow::Borrowed(_)));
    }
}
