//! Parsing a SIZE argument: plain bytes, a unit, or a share of the filesystem.

use disk_reserve::SizeSpec;

/// What a SIZE may look like, for error messages.
const EXPECTED: &str = "expected bytes (`67108864`), a size with a unit (`64MiB`, `1GiB`, `500MB`) or a share of the filesystem (`1%`, `0.5%`)";

/// Parses a SIZE: `67108864`, `64MiB`, `1GiB`, `500MB`, `1%`, `0.5%`.
///
/// Byte units go through `parse-size` (`KiB MiB GiB TiB` are powers of 1024, `KB MB GB
/// TB` powers of 1000, case-insensitive). A `%` suffix is a share of the filesystem
/// between 0 and 100. Zero is accepted here and refused by the library with a clear
/// error (exit 1), so "size 0" reads the same whichever way it was written.
///
/// # Errors
/// A message naming the rejected text, which clap prints as a usage error (exit 2).
pub fn parse(text: &str) -> Result<SizeSpec, String> {
    if let Some(number) = text.strip_suffix('%') {
        return parse_percent(number.trim()).map_err(|why| format!("`{text}`: {why}"));
    }
    parse_size::parse_size(text)
        .map(SizeSpec::Bytes)
        .map_err(|why| format!("`{text}` is not a size ({why}); {EXPECTED}"))
}

fn parse_percent(number: &str) -> Result<SizeSpec, String> {
    let percent: f64 = number
        .parse()
        .map_err(|_| format!("`{number}` is not a number; {EXPECTED}"))?;
    if !percent.is_finite() || percent < 0.0 {
        return Err(format!(
            "a share of the filesystem must be a number from 0 to 100; {EXPECTED}"
        ));
    }
    if percent > 100.0 {
        return Err("a share of the filesystem cannot exceed 100%".to_owned());
    }
    // Below one part per million (including 0 %) the share resolves to 0 bytes.
    Ok(SizeSpec::percent(percent).unwrap_or(SizeSpec::PartsPerMillion(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_shares() {
        let cases = [
            ("67108864", SizeSpec::Bytes(64 << 20)),
            ("64MiB", SizeSpec::Bytes(64 << 20)),
            ("64 MiB", SizeSpec::Bytes(64 << 20)),
            ("1GiB", SizeSpec::Bytes(1 << 30)),
            ("1TiB", SizeSpec::Bytes(1 << 40)),
            ("4KiB", SizeSpec::Bytes(4096)),
            ("500MB", SizeSpec::Bytes(500_000_000)),
            ("1KB", SizeSpec::Bytes(1000)),
            ("2GB", SizeSpec::Bytes(2_000_000_000)),
            ("1TB", SizeSpec::Bytes(1_000_000_000_000)),
            ("0", SizeSpec::Bytes(0)),
            ("1%", SizeSpec::PartsPerMillion(10_000)),
            ("0.5%", SizeSpec::PartsPerMillion(5_000)),
            ("100%", SizeSpec::PartsPerMillion(1_000_000)),
            ("0%", SizeSpec::PartsPerMillion(0)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_sizes_name_the_text() {
        for text in [
            "", "abc", "12XB", "-5", "1.5.5MiB", "%", "x%", "-1%", "101%", "inf%", "NaN%",
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(&format!("`{text}`")), "{text}: {err}");
        }
        assert!(parse("101%").unwrap_err().contains("cannot exceed 100%"));
    }
}
