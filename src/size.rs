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
#[non_exhaustive]
pub enum SizeSpec {
    /// Exactly this many bytes.
    Bytes(u64),
    /// This many millionths of the filesystem's total bytes (`10_000` is 1 %).
    ///
    /// Any value is accepted here ([`percent`](SizeSpec::percent) checks a share given
    /// in percent); [`Reserve::ensure`](crate::Reserve::ensure) refuses a size that
    /// resolves to 0 bytes ([`Error::ZeroSize`](crate::Error::ZeroSize)) or to more than
    /// the filesystem ([`Error::SizeExceedsFilesystem`](crate::Error::SizeExceedsFilesystem)),
    /// and a size and headroom that can never fit ([`Error::NeverFits`](crate::Error::NeverFits)).
    /// `PartsPerMillion(0)` is a headroom of 0 bytes.
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
                let bytes = u128::from(total_bytes) * u128::from(ppm) / 1_000_000;
                u64::try_from(bytes).unwrap_or(u64::MAX)
            }
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SizeSpec::Bytes(bytes) => write!(f, "{:#}", HumanBytes(bytes)),
            SizeSpec::PartsPerMillion(ppm) => write!(f, "{}%", f64::from(ppm) / 10_000.0),
        }
    }
}

/// Shows a byte count in binary units with one decimal: `64.0 MiB`, `1.8 GiB`, `512 B`.
///
/// The alternate form `{:#}` reads naturally, for sentences meant for people: below
/// 1 KiB a count of bytes (`1 byte`, `512 bytes`), a whole number of units without a
/// decimal (`64 MiB`), anything else with one decimal, rounded (`1.8 GiB`; `1.0 GiB` is
/// a little over or under 1 GiB, never exactly it). It parses back as a SIZE.
///
/// ```
/// use disk_reserve::HumanBytes;
/// assert_eq!(HumanBytes(64 << 20).to_string(), "64.0 MiB");
/// assert_eq!(HumanBytes(1_932_735_283).to_string(), "1.8 GiB");
/// assert_eq!(HumanBytes(512).to_string(), "512 B");
///
/// assert_eq!(format!("{:#}", HumanBytes(64 << 20)), "64 MiB");
/// assert_eq!(format!("{:#}", HumanBytes(1_932_735_283)), "1.8 GiB");
/// assert_eq!(format!("{:#}", HumanBytes((1 << 30) + 1)), "1.0 GiB");
/// assert_eq!(format!("{:#}", HumanBytes(1536)), "1.5 KiB");
/// assert_eq!(format!("{:#}", HumanBytes(512)), "512 bytes");
/// assert_eq!(format!("{:#}", HumanBytes(1)), "1 byte");
/// assert_eq!(format!("{:#}", HumanBytes(0)), "0 bytes");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

/// Binary units from KiB up; `u64::MAX` is just under 16 EiB.
const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

impl HumanBytes {
    /// The `{:#}` form: `1 byte`, `512 bytes`, `64 MiB`, `1.8 GiB`.
    fn fmt_natural(self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = u128::from(self.0);
        match self.0 {
            1 => return f.write_str("1 byte"),
            0..1024 => return write!(f, "{bytes} bytes"),
            _ => {}
        }
        // The largest unit the count reaches, one step up when rounding to tenths
        // reaches 1024 of it (1023.96 KiB shows as 1.0 MiB, not 1024.0 KiB).
        let mut unit = 0;
        let mut scale: u128 = 1024;
        while bytes >= scale * 1024 && unit + 1 < UNITS.len() {
            scale *= 1024;
            unit += 1;
        }
        let tenths = |scale: u128| (bytes * 10 + scale / 2) / scale;
        if tenths(scale) >= 10 * 1024 && unit + 1 < UNITS.len() {
            scale *= 1024;
            unit += 1;
        }
        if bytes % scale == 0 {
            write!(f, "{} {}", bytes / scale, UNITS[unit])
        } else {
            let tenths = tenths(scale);
            write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
        }
    }
}

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return self.fmt_natural(f);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn natural(bytes: u64) -> String {
        format!("{:#}", HumanBytes(bytes))
    }

    #[test]
    fn natural_form_reads_like_a_person_wrote_it() {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        for (bytes, want) in [
            (0, "0 bytes"),
            (1, "1 byte"),
            (2, "2 bytes"),
            (1023, "1023 bytes"),
            (KIB, "1 KiB"),
            (KIB + 1, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (4 * KIB, "4 KiB"),
            (MIB - 1, "1.0 MiB"),
            (MIB - 52, "1023.9 KiB"),
            (MIB, "1 MiB"),
            (64 * MIB, "64 MiB"),
            (960 * MIB, "960 MiB"),
            (1_932_735_283, "1.8 GiB"),
            (GIB, "1 GiB"),
            (GIB + 1, "1.0 GiB"),
            (50 * GIB, "50 GiB"),
            (1 << 40, "1 TiB"),
            (1 << 60, "1 EiB"),
            (u64::MAX, "16.0 EiB"),
        ] {
            assert_eq!(natural(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn size_spec_shows_naturally() {
        assert_eq!(SizeSpec::Bytes(64 << 20).to_string(), "64 MiB");
        assert_eq!(SizeSpec::Bytes(1).to_string(), "1 byte");
        assert_eq!(SizeSpec::PartsPerMillion(5_000).to_string(), "0.5%");
    }
}
