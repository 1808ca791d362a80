//! Kubernetes resource quantities (`10Gi`, `500M`, `1e9`, `1.5Ti`), as CDI reads
//! `IMPORTER_IMAGE_SIZE`.
//!
//! CDI parses the PVC request with `resource.MustParse` and then uses
//! `Quantity.Value()`, which rounds *up* to a whole number of bytes. We do the
//! same in exact integer arithmetic (no floating point), so `1.5Gi` and
//! `1610612736` always agree and a fractional byte never shrinks the disk.

/// Why a quantity string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum QuantityError {
    #[error("quantity {0:?} is empty")]
    Empty(String),
    #[error("quantity {0:?} is not a number with an optional suffix (Ki Mi Gi Ti Pi Ei, k M G T P E, or an exponent)")]
    Format(String),
    #[error("quantity {0:?} has an unknown suffix")]
    Suffix(String),
    #[error("quantity {0:?} is negative")]
    Negative(String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// What a suffix multiplies the number by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Multiplier {
    /// `10^n` (SI suffixes and `eN` exponents; `n` may be negative).
    Decimal(i32),
    /// `2^n` (binary SI suffixes).
    Binary(u32),
}

/// Parses a quantity into whole bytes, rounding any fraction up.
///
/// Accepts what `k8s.io/apimachinery` accepts: an optional sign, digits with an
/// optional decimal point, and one suffix (`n u m "" k M G T P E`,
/// `Ki Mi Gi Ti Pi Ei`, or `e`/`E` followed by a signed integer). Negative values
/// and values above `i64::MAX` (Go's `int64`) are errors, since a disk size can be
/// neither.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    let fmt_err = || QuantityError::Format(s.to_string());
    if s.is_empty() {
        return Err(QuantityError::Empty(s.to_string()));
    }
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (int_part, rest) = rest.split_at(int_len);
    let (frac_part, suffix) = match rest.strip_prefix('.') {
        Some(after_dot) => {
            let n = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            after_dot.split_at(n)
        }
        None => ("", rest),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(fmt_err());
    }
    let multiplier = parse_suffix(suffix).ok_or_else(|| {
        if suffix
            .bytes()
            .all(|b| b"eEinumkKMGTP+-0123456789".contains(&b))
        {
            QuantityError::Suffix(s.to_string())
        } else {
            fmt_err()
        }
    })?;

    // Significant digits as one integer; the decimal point becomes a power of ten.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(s.to_string()));
    }
    let too_large = || QuantityError::TooLarge(s.to_string());
    // More than 38 significant digits cannot fit u128 and is never a disk size.
    let mantissa: u128 = digits.parse().map_err(|_| too_large())?;
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| too_large())?;

    let (mantissa, exp10) = match multiplier {
        Multiplier::Decimal(e) => (mantissa, e.checked_sub(frac_len).ok_or_else(too_large)?),
        Multiplier::Binary(e) => (
            mantissa
                .checked_mul(1u128.checked_shl(e).ok_or_else(too_large)?)
                .ok_or_else(too_large)?,
            -frac_len,
        ),
    };
    let value = scale_pow10_ceil(mantissa, exp10).ok_or_else(too_large)?;
    // Go's int64 bounds what CDI can represent.
    match i64::try_from(value) {
        Ok(v) => u64::try_from(v).map_err(|_| too_large()),
        Err(_) => Err(too_large()),
    }
}

/// `ceil(m * 10^e)`, or `None` on overflow.
fn scale_pow10_ceil(m: u128, e: i32) -> Option<u128> {
    if e >= 0 {
        let p = 10u128.checked_pow(u32::try_from(e).ok()?)?;
        return m.checked_mul(p);
    }
    let neg = e.unsigned_abs();
    match 10u128.checked_pow(neg) {
        // A divisor beyond u128 exceeds any mantissa: a non-zero value rounds up to 1.
        None => Some(u128::from(m > 0)),
        Some(p) => {
            let q = m / p;
            Some(if m % p == 0 { q } else { q.checked_add(1)? })
        }
    }
}

fn parse_suffix(suffix: &str) -> Option<Multiplier> {
    use Multiplier::{Binary, Decimal};
    Some(match suffix {
        "" => Decimal(0),
        "n" => Decimal(-9),
        "u" => Decimal(-6),
        "m" => Decimal(-3),
        "k" => Decimal(3),
        "M" => Decimal(6),
        "G" => Decimal(9),
        "T" => Decimal(12),
        "P" => Decimal(15),
        "E" => Decimal(18),
        "Ki" => Binary(10),
        "Mi" => Binary(20),
        "Gi" => Binary(30),
        "Ti" => Binary(40),
        "Pi" => Binary(50),
        "Ei" => Binary(60),
        _ => {
            // `e5`, `E-3`, `e+2`: a decimal exponent. "E" alone (exa) is handled above.
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Decimal(exp.parse::<i32>().ok()?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_suffixed() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("+7"), Ok(7));
        assert_eq!(parse_bytes("10Gi"), Ok(10 << 30));
        assert_eq!(parse_bytes("1Ki"), Ok(1024));
        assert_eq!(parse_bytes("3Mi"), Ok(3 << 20));
        assert_eq!(parse_bytes("2Ti"), Ok(2 << 40));
        assert_eq!(parse_bytes("1Pi"), Ok(1 << 50));
        assert_eq!(parse_bytes("1Ei"), Ok(1 << 60));
        assert_eq!(parse_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_bytes("1k"), Ok(1000));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1T"), Ok(1_000_000_000_000));
        assert_eq!(parse_bytes("1P"), Ok(1_000_000_000_000_000));
        assert_eq!(parse_bytes("2E"), Ok(2_000_000_000_000_000_000));
    }

    #[test]
    fn exponents_and_fractions() {
        assert_eq!(parse_bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1E9"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1e+3"), Ok(1000));
        assert_eq!(parse_bytes("15e-1"), Ok(2)); // 1.5 rounds up
        assert_eq!(parse_bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_bytes("0.5Ki"), Ok(512));
        assert_eq!(parse_bytes(".5Ki"), Ok(512));
        assert_eq!(parse_bytes("1.Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.1"), Ok(2));
        assert_eq!(parse_bytes("2.5k"), Ok(2500));
        assert_eq!(parse_bytes("1500m"), Ok(2));
        assert_eq!(parse_bytes("1n"), Ok(1));
        assert_eq!(parse_bytes("3u"), Ok(1));
        assert_eq!(parse_bytes("0.000Gi"), Ok(0));
        assert_eq!(parse_bytes("00012"), Ok(12));
        assert_eq!(parse_bytes("1e-400"), Ok(1));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(parse_bytes(""), Err(QuantityError::Empty(_))));
        assert!(matches!(parse_bytes("Gi"), Err(QuantityError::Format(_))));
        assert!(matches!(parse_bytes("."), Err(QuantityError::Format(_))));
        assert!(matches!(parse_bytes("1K"), Err(QuantityError::Suffix(_))));
        assert!(matches!(parse_bytes("1Gb"), Err(QuantityError::Format(_))));
        assert!(matches!(parse_bytes("1e"), Err(QuantityError::Suffix(_))));
        assert!(matches!(parse_bytes("1 Gi"), Err(QuantityError::Format(_))));
        assert!(matches!(
            parse_bytes("-1Gi"),
            Err(QuantityError::Negative(_))
        ));
        assert_eq!(parse_bytes("-0"), Ok(0));
        assert!(matches!(
            parse_bytes("8Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_bytes("1e19"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_bytes("1e99999"),
            Err(QuantityError::TooLarge(_))
        ));
        assert_eq!(parse_bytes("9223372036854775807"), Ok(i64::MAX as u64));
        assert!(parse_bytes("9223372036854775808").is_err());
    }
}
