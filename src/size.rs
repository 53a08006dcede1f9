//! Sizes: a configured size (bytes or a share of the filesystem) and how sizes are shown.

use std::fmt;

/// A size as configured: a number of bytes, or a share of the filesystem's total size.
///
/// ```
/// use disk_reserve::SizeSpec;
/// assert_eq!(SizeSpec::Bytes(64 << 20).resolve(1 << 40), 64 << 20);
/// let one_percent = SizeSpec::percent(1.0).unwrap();
/// assert_eq!(one_percent.resolve(1_000_000_000), 10_000_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeSpec {
    /// Exactly this many bytes.
    Bytes(u64),
    /// This many millionths of the filesystem's total bytes (`10_000` is 1 %).
    PartsPerMillion(u32),
}

impl SizeSpec {
    /// A share of the filesystem given in percent (`0.5` → 0.5 %). `None` unless the
    /// share is finite, above 0 and at most 100.
    pub fn percent(percent: f64) -> Option<SizeSpec> {
        if !percent.is_finite() || percent <= 0.0 || percent > 100.0 {
            return None;
        }
        let ppm = (percent * 10_000.0).round();
        (ppm >= 1.0).then_some(SizeSpec::PartsPerMillion(ppm as u32))
    }

    /// Whether resolving needs the filesystem's total size (a share does).
    pub fn needs_total(self) -> bool {
        matches!(self, SizeSpec::PartsPerMillion(_))
    }

    /// The size in bytes on a filesystem of `total_bytes`.
    pub fn resolve(self, total_bytes: u64) -> u64 {
        match self {
            SizeSpec::Bytes(bytes) => bytes,
            SizeSpec::PartsPerMillion(ppm) => {
                (u128::from(total_bytes) * u128::from(ppm) / 1_000_000) as u64
            }
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SizeSpec::Bytes(bytes) => write!(f, "{}", HumanBytes(bytes)),
            SizeSpec::PartsPerMillion(ppm) => write!(f, "{}%", f64::from(ppm) / 10_000.0),
        }
    }
}

/// Shows a byte count in binary units with one decimal: `64.0 MiB`, `1.8 GiB`, `512 B`.
///
/// ```
/// use disk_reserve::HumanBytes;
/// assert_eq!(HumanBytes(64 << 20).to_string(), "64.0 MiB");
/// assert_eq!(HumanBytes(1_932_735_283).to_string(), "1.8 GiB");
/// assert_eq!(HumanBytes(512).to_string(), "512 B");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}
