//! The out-of-space classifier runtimes use to decide when to print the operator hint,
//! and the hint's default words.

use std::error::Error as StdError;
use std::io;

use camino::Utf8Path;

use crate::HumanBytes;

/// Whether `err`, or anything in its [`source`](StdError::source) chain, says the disk
/// (or the quota) is full (rule 12).
///
/// It matches an [`io::Error`] whose raw errno is `ENOSPC` or `EDQUOT` or whose kind is
/// [`StorageFull`](io::ErrorKind::StorageFull) or
/// [`QuotaExceeded`](io::ErrorKind::QuotaExceeded) — also one wrapped inside another
/// `io::Error` — and, for errors that were flattened to text on the way, a message
/// containing `No space left on device` or `Disk quota exceeded` (any case). Nothing
/// else: other errnos and unrelated text do not match.
///
/// ```
/// use std::io;
/// use disk_reserve::is_out_of_space;
/// let full = io::Error::from_raw_os_error(libc::ENOSPC);
/// assert!(is_out_of_space(&full));
/// let flattened = io::Error::other(format!("upload failed: {full}"));
/// assert!(is_out_of_space(&flattened));
/// assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
/// ```
pub fn is_out_of_space(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            if io_error_is_out_of_space(io_err) {
                return true;
            }
            // `io::Error::source()` skips the error it wraps; look at it directly.
            if let Some(inner) = io_err.get_ref()
                && is_out_of_space(inner)
            {
                return true;
            }
            // An OS error's message is `strerror` of its code, already judged above:
            // formatting it (a `strerror_r` and a `format!`) could only say the same.
            if io_err.raw_os_error().is_some() {
                next = err.source();
                continue;
            }
        }
        if message_is_out_of_space(&err.to_string()) {
            return true;
        }
        next = err.source();
    }
    false
}

fn io_error_is_out_of_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            err.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

fn message_is_out_of_space(message: &str) -> bool {
    const NEEDLES: [&str; 2] = ["no space left on device", "disk quota exceeded"];
    let lower = message.to_ascii_lowercase();
    NEEDLES.iter().any(|needle| lower.contains(needle))
}

/// The default operator hint for a reserve at `reserve_path` (absolute) holding
/// `reserve_bytes` (`None` or `Some(0)`: there is none): the file to delete and what
/// deleting it frees — words true for any program that keeps a reserve, whatever
/// commands it ships. [`Reserve::out_of_space_hint_with`](crate::Reserve::out_of_space_hint_with)
/// replaces it.
pub(crate) fn default_hint(reserve_path: &Utf8Path, reserve_bytes: Option<u64>) -> String {
    let path = shell_word(reserve_path.as_str());
    match reserve_bytes {
        Some(bytes) if bytes > 0 => format!(
            "hint: the disk is full; delete the disk reserve {path} to free {} for the cleanup",
            HumanBytes(bytes)
        ),
        _ => format!(
            "hint: the disk is full and there is no disk reserve at {path} to delete; free space by hand"
        ),
    }
}

/// Quotes a path for a shell command line when it needs it.
fn shell_word(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// The default hint promises bytes only when the reserve holds some.
    #[test]
    fn default_hint_names_the_file_and_its_bytes_only_when_there_are_some() {
        let path = Utf8Path::new("/srv/app/.reserve");
        assert_eq!(
            default_hint(path, Some(64 << 20)),
            "hint: the disk is full; delete the disk reserve /srv/app/.reserve to free 64.0 MiB for the cleanup"
        );
        for none in [None, Some(0)] {
            assert_eq!(
                default_hint(path, none),
                "hint: the disk is full and there is no disk reserve at /srv/app/.reserve to delete; free space by hand"
            );
        }
    }

    #[derive(Debug)]
    struct Wrap(Box<dyn StdError + Send + Sync>);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer layer")
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[derive(Debug)]
    struct Text(&'static str);
    impl fmt::Display for Text {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl StdError for Text {}

    /// Rule 12 positives: raw errnos, kinds, chains, io-in-io, flattened text.
    #[test]
    fn rule12_classifier_positives() {
        let cases: Vec<Box<dyn StdError>> = vec![
            Box::new(io::Error::from_raw_os_error(libc::ENOSPC)),
            Box::new(io::Error::from_raw_os_error(libc::EDQUOT)),
            Box::new(io::Error::from(io::ErrorKind::StorageFull)),
            Box::new(io::Error::from(io::ErrorKind::QuotaExceeded)),
            Box::new(Wrap(Box::new(Wrap(Box::new(
                io::Error::from_raw_os_error(libc::ENOSPC),
            ))))),
            Box::new(io::Error::other(io::Error::from_raw_os_error(libc::EDQUOT))),
            Box::new(Text(
                "Storage(\"write wal: No space left on device (os error 28)\")",
            )),
            Box::new(Text("DISK QUOTA EXCEEDED")),
            Box::new(Wrap(Box::new(Text("no space left on device")))),
        ];
        for err in &cases {
            assert!(is_out_of_space(err.as_ref()), "rule 12: missed {err:?}");
        }
    }

    /// Rule 12 negatives: other errnos and unrelated text.
    #[test]
    fn rule12_classifier_negatives() {
        let mut cases: Vec<Box<dyn StdError>> = [
            libc::EIO,
            libc::EACCES,
            libc::EROFS,
            libc::ENOENT,
            libc::EFBIG,
            libc::EINVAL,
            libc::ENOMEM,
        ]
        .into_iter()
        .map(|errno| Box::new(io::Error::from_raw_os_error(errno)) as Box<dyn StdError>)
        .collect();
        cases.push(Box::new(Text("no space")));
        cases.push(Box::new(Text("quota exceeded for API calls")));
        cases.push(Box::new(Text("device not found: no such file")));
        cases.push(Box::new(Wrap(Box::new(io::Error::from_raw_os_error(
            libc::EIO,
        )))));
        for err in &cases {
            assert!(
                !is_out_of_space(err.as_ref()),
                "rule 12: false positive {err:?}"
            );
        }
    }

    #[test]
    fn hint_quotes_paths_with_spaces() {
        let hint = default_hint(Utf8Path::new("/srv/my app/.reserve"), Some(1 << 30));
        assert_eq!(
            hint,
            "hint: the disk is full; delete the disk reserve '/srv/my app/.reserve' to free 1.0 GiB for the cleanup"
        );
        let none = default_hint(Utf8Path::new("/srv/app/.reserve"), None);
        assert!(
            none.contains("no disk reserve at /srv/app/.reserve"),
            "{none}"
        );
    }
}
