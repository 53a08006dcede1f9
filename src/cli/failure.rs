//! How an error is reported: `error: …` on stderr naming the path and the cause, the
//! operator hint when the cause is out-of-space, and with `--json` one error object.

use camino::Utf8PathBuf;
use disk_reserve::{Error, HostFs, Reserve, is_out_of_space};
use serde_json::{Value, json};

/// A failed run (exit 1).
#[derive(Debug)]
pub struct Failure {
    error: Error,
    path: Option<Utf8PathBuf>,
    hint: Option<String>,
}

impl Failure {
    /// An error before there was a reserve to ask (an unusable `--home`).
    pub fn early(error: Error) -> Failure {
        Failure {
            error,
            path: None,
            hint: None,
        }
    }

    /// An error from `reserve`; when it is out-of-space, the hint names the bytes the
    /// reserve holds on disk right now (or says there is none).
    pub fn of<F: HostFs>(error: Error, reserve: &Reserve<F>) -> Failure {
        let hint = is_out_of_space(&error).then(|| reserve.out_of_space_hint());
        Failure {
            error,
            path: Some(reserve.path().to_owned()),
            hint,
        }
    }

    /// The lines for stderr: `error: …` and, when out of space, the hint.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("error: {}", self.error)];
        lines.extend(self.hint.clone());
        lines
    }

    /// The `--json` error object.
    pub fn to_json(&self) -> Value {
        json!({
            "outcome": "error",
            "error": self.error.to_string(),
            "path": self.path.as_ref().map(|p| p.as_str()),
            "out_of_space": is_out_of_space(&self.error),
            "hint": self.hint,
        })
    }
}
