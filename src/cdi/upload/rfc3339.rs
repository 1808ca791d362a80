//! RFC 3339 timestamps, as Go's `time.Parse(time.RFC3339, s)` reads the
//! upload pod's `DEADLINE` (`2006-01-02T15:04:05Z07:00`, with optional
//! fractional seconds, which Go accepts even though the layout has none).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parsing time {text:?} as RFC 3339: {why}")]
pub(crate) struct TimeError {
    text: String,
    why: &'static str,
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub(crate) fn parse(text: &str) -> Result<SystemTime, TimeError> {
    let err = |why| TimeError {
        text: text.to_string(),
        why,
    };
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, TimeError> {
        let digits = b.get(from..from + len).ok_or_else(|| err("too short"))?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(err("expected digits"));
        }
        Ok(digits
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, c: u8| -> Result<(), TimeError> {
        (b.get(at) == Some(&c))
            .then_some(())
            .ok_or_else(|| err("bad separator"))
    };
    let year = num(0, 4)?;
    sep(4, b'-')?;
    let month = num(5, 2)?;
    sep(7, b'-')?;
    let day = num(8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't')) {
        return Err(err("expected T between date and time"));
    }
    let hour = num(11, 2)?;
    sep(13, b':')?;
    let minute = num(14, 2)?;
    sep(16, b':')?;
    let second = num(17, 2)?;
    let mut at = 19;
    let mut nanos: u32 = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        let mut scale = 100_000_000u32;
        while let Some(d) = b.get(at).filter(|d| d.is_ascii_digit()) {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
            at += 1;
        }
        if at == start {
            return Err(err("empty fraction"));
        }
    }
    let offset = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&s @ (b'+' | b'-')) if at + 6 == b.len() => {
            let h = num(at + 1, 2)?;
            sep(at + 3, b':')?;
            let m = num(at + 4, 2)?;
            if h > 23 || m > 59 {
                return Err(err("offset out of range"));
            }
            let o = h * 3600 + m * 60;
            if s == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err(err("expected Z or a ±HH:MM offset at the end")),
    };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(err("field out of range"));
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let whole = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    t.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        .ok_or_else(|| err("out of range"))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> i64 {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    #[test]
    fn parses_like_go() {
        // Values from `date -u -d ... +%s`.
        assert_eq!(secs(parse("1970-01-01T00:00:00Z").expect("epoch")), 0);
        assert_eq!(
            secs(parse("2026-12-01T10:20:30Z").expect("utc")),
            1_796_120_430
        );
        assert_eq!(
            secs(parse("2026-12-01T12:20:30+02:00").expect("offset")),
            1_796_120_430
        );
        assert_eq!(
            secs(parse("2026-12-01T05:20:30-05:00").expect("negative offset")),
            1_796_120_430
        );
        assert_eq!(
            secs(parse("2024-02-29T00:00:00Z").expect("leap day")),
            1_709_164_800
        );
        let frac = parse("1970-01-01T00:00:01.5Z").expect("fraction");
        assert_eq!(
            frac.duration_since(UNIX_EPOCH).expect("after").as_millis(),
            1500
        );
        assert_eq!(secs(parse("1969-12-31T23:59:59Z").expect("before")), -1);
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in [
            "",
            "2026-12-01",
            "2026-12-01 10:20:30Z",
            "2026-12-01T10:20:30",
            "2026-13-01T10:20:30Z",
            "2023-02-29T10:20:30Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T10:20:30+0200",
            "2026-12-01T10:20:30.Z",
            "2026-12-01T10:20:30Zjunk",
            "tomorrow",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
