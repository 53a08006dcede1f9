//! Parsing a SIZE argument: plain bytes, a unit, or a share of the filesystem.

use disk_reserve::SizeSpec;

/// What a SIZE may look like, for error messages.
const EXPECTED: &str = "expected bytes (`67108864`), a size with a unit (`64M`, `64MiB`, `1G`, \
`500MB`: K M G T and KiB MiB GiB TiB are powers of 1024, KB MB GB TB powers of 1000) or a \
share of the filesystem (`1%`, `0.5%`)";

/// At most this many digits after the decimal point (enough for any size; it keeps the
/// arithmetic exact).
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses a SIZE: `67108864`, `64M`, `64MiB`, `1G`, `500MB`, `1%`, `0.5%`.
///
/// Units as in `fallocate -l` / `truncate -s`: `K M G T` and `KiB MiB GiB TiB` are powers
/// of 1024, `KB MB GB TB` powers of 1000, `B` (or nothing) is bytes; case does not
/// matter (`64k` is `64K`). A number may have a decimal point (`1.5G`); the result is
/// rounded down to whole bytes. Spaces around the text, and between the number and the
/// unit, are ignored. A `%` suffix is a share of the filesystem between 0 and 100. Zero is
/// accepted here and refused by the library with a clear error (exit 1), so "size 0"
/// reads the same whichever way it was written.
///
/// # Errors
/// A message naming the rejected text, which clap prints as a usage error (exit 2):
/// malformed, negative, or more than `u64::MAX` bytes.
pub fn parse(text: &str) -> Result<SizeSpec, String> {
    let trimmed = text.trim();
    if trimmed.starts_with("--") {
        return Err(format!(
            "`{text}` looks like an option, not a size: give the SIZE right after the flag"
        ));
    }
    if trimmed.starts_with('-') {
        return Err(format!("`{text}`: a size cannot be negative; {EXPECTED}"));
    }
    if let Some(number) = trimmed.strip_suffix('%') {
        return parse_percent(number.trim_end()).map_err(|why| format!("`{text}`: {why}"));
    }
    parse_bytes(trimmed)
        .map(SizeSpec::Bytes)
        .map_err(|bad| match bad {
            Bad::Malformed(why) => format!("`{text}` is not a size ({why}); {EXPECTED}"),
            Bad::TooLarge => format!(
                "`{text}` is too large: a size is at most {} bytes (16 EiB)",
                u64::MAX
            ),
        })
}

/// Why a byte count was refused.
enum Bad {
    /// Not a number with a unit; says what is wrong.
    Malformed(String),
    /// More than `u64::MAX` bytes.
    TooLarge,
}

impl From<String> for Bad {
    fn from(why: String) -> Self {
        Bad::Malformed(why)
    }
}

/// `NUMBER [UNIT]` to bytes, exactly, rounding a fraction of a byte down.
fn parse_bytes(text: &str) -> Result<u64, Bad> {
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    let multiplier = unit_multiplier(unit.trim_start())?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(fraction)) {
        return Err(Bad::Malformed("no number".to_owned()));
    }
    if fraction.len() > MAX_FRACTION_DIGITS {
        return Err(Bad::Malformed(format!(
            "more than {MAX_FRACTION_DIGITS} digits after the decimal point"
        )));
    }
    // Digits only, so a parse error can only be too many of them.
    let whole: u128 = whole.parse().map_err(|_| Bad::TooLarge)?;
    let mut bytes = whole.checked_mul(multiplier).ok_or(Bad::TooLarge)?;
    if !fraction.is_empty() {
        // Below 10^18 × 10^12: no overflow in u128.
        let numerator: u128 = fraction.parse().map_err(|_| Bad::TooLarge)?;
        let denominator = 10u128.pow(fraction.len() as u32);
        bytes += numerator * multiplier / denominator;
    }
    u64::try_from(bytes).map_err(|_| Bad::TooLarge)
}

/// The bytes one `unit` stands for; case-insensitive.
fn unit_multiplier(unit: &str) -> Result<u128, String> {
    const KIB: u128 = 1 << 10;
    const KB: u128 = 1000;
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => KIB.pow(2),
        "g" | "gib" => KIB.pow(3),
        "t" | "tib" => KIB.pow(4),
        "kb" => KB,
        "mb" => KB.pow(2),
        "gb" => KB.pow(3),
        "tb" => KB.pow(4),
        _ => return Err(format!("unknown unit `{unit}`")),
    };
    Ok(multiplier)
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

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    #[track_caller]
    fn bytes(text: &str) -> u64 {
        match parse(text) {
            Ok(SizeSpec::Bytes(bytes)) => bytes,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn plain_bytes_with_or_without_b() {
        for (text, want) in [
            ("0", 0),
            ("1", 1),
            ("67108864", 64 * MIB),
            ("512B", 512),
            ("512b", 512),
            ("512 B", 512),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(bytes(text), want, "{text}");
        }
    }

    #[test]
    fn single_letters_are_powers_of_1024_like_fallocate() {
        for (text, want) in [
            ("64K", 64 * KIB),
            ("64k", 64 * KIB),
            ("64M", 64 * MIB),
            ("64m", 64 * MIB),
            ("1G", GIB),
            ("1g", GIB),
            ("2T", 2 * TIB),
            ("2t", 2 * TIB),
        ] {
            assert_eq!(bytes(text), want, "{text}");
        }
        assert_eq!(bytes("64M"), 67_108_864);
        assert_eq!(bytes("64k"), 65_536);
    }

    #[test]
    fn binary_units_are_powers_of_1024() {
        for (text, want) in [
            ("4KiB", 4 * KIB),
            ("64MiB", 64 * MIB),
            ("1GiB", GIB),
            ("1TiB", TIB),
            ("64mib", 64 * MIB),
            ("64MIB", 64 * MIB),
            ("64 MiB", 64 * MIB),
        ] {
            assert_eq!(bytes(text), want, "{text}");
        }
    }

    #[test]
    fn decimal_units_are_powers_of_1000() {
        for (text, want) in [
            ("1KB", 1_000),
            ("1kB", 1_000),
            ("500MB", 500_000_000),
            ("500mb", 500_000_000),
            ("2GB", 2_000_000_000),
            ("1TB", 1_000_000_000_000),
        ] {
            assert_eq!(bytes(text), want, "{text}");
        }
    }

    #[test]
    fn fractions_are_exact_and_round_down_to_whole_bytes() {
        for (text, want) in [
            ("1.5G", GIB + GIB / 2),
            ("1.5GiB", GIB + GIB / 2),
            ("0.5K", 512),
            ("1.5KB", 1_500),
            ("1.0001K", 1_024), // 1024.1024 bytes
            ("0.999K", 1_022),  // 1022.976 bytes
            ("1.9", 1),         // a fraction of a byte is dropped
            ("0.000000000000000001T", 0),
            ("1.50", 1),
        ] {
            assert_eq!(bytes(text), want, "{text}");
        }
    }

    #[test]
    fn spaces_around_are_trimmed_both_sides() {
        for text in [" 64M", "64M ", " 64M ", "\t64M\n", "  64 M  "] {
            assert_eq!(bytes(text), 64 * MIB, "{text:?}");
        }
        assert_eq!(parse(" 1% "), Ok(SizeSpec::PartsPerMillion(10_000)));
        assert_eq!(parse("1 %"), Ok(SizeSpec::PartsPerMillion(10_000)));
    }

    #[test]
    fn shares_of_the_filesystem() {
        for (text, want) in [
            ("1%", SizeSpec::PartsPerMillion(10_000)),
            ("0.5%", SizeSpec::PartsPerMillion(5_000)),
            ("100%", SizeSpec::PartsPerMillion(1_000_000)),
            ("0%", SizeSpec::PartsPerMillion(0)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        for text in [
            "99999999999T",
            "18446744073709551616",
            "16777216T", // exactly 2^64
            "18446744073709551616B",
            "99999999999999999999999999999999999999999999",
            "20000000TB",
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(&format!("`{text}`")), "{text}: {err}");
            assert!(
                err.contains("is too large: a size is at most 18446744073709551615 bytes"),
                "{err}"
            );
        }
        assert_eq!(bytes("16777215T"), 16_777_215 * TIB);
    }

    #[test]
    fn negative_sizes_say_so() {
        for text in ["-1", "-5", "-1M", " -1", "-0", "-1%"] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(&format!("`{text}`")), "{text}: {err}");
            assert!(
                err.contains("negative") || err.contains("from 0 to 100"),
                "{text}: {err}"
            );
        }
        assert!(parse("-1").unwrap_err().contains("cannot be negative"));
    }

    #[test]
    fn an_option_taken_for_a_size_says_so() {
        let err = parse("--json").unwrap_err();
        assert!(err.contains("`--json` looks like an option"), "{err}");
    }

    #[test]
    fn malformed_sizes_name_the_text() {
        for text in [
            "",
            " ",
            "abc",
            "M",
            "12XB",
            "1.5.5MiB",
            "1.",
            ".5M",
            "1e3",
            "0x10",
            "+5",
            "1_000",
            "64 M B",
            "64Mi",
            "64iB",
            "1P",
            "1KiBB",
            "%",
            "x%",
            "101%",
            "inf%",
            "NaN%",
            "1.0000000000000000001K",
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(&format!("`{text}`")), "{text}: {err}");
        }
        assert!(parse("101%").unwrap_err().contains("cannot exceed 100%"));
        assert!(parse("12XB").unwrap_err().contains("unknown unit `XB`"));
    }
}
