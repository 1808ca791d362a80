//! The `Range` header (RFC 9110, 14.2), for one range of one file.
//!
//! Several ranges, or a header this does not understand, get the whole file:
//! a server may always ignore `Range`, and the importer asks for one range
//! at a time.

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// The whole file (200).
    Whole,
    /// Bytes `start..=end` (206); both within the file.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// The range starts at or past the end (416).
    Unsatisfiable,
}

/// Reads `header` for a file of `size` bytes.
pub(crate) fn parse(header: &str, size: u64) -> Wanted {
    // The unit is case-insensitive (RFC 9110, 14.1).
    let spec = match header.trim().split_once('=') {
        Some((unit, spec)) if unit.trim().eq_ignore_ascii_case("bytes") => spec,
        _ => return Wanted::Whole,
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    if first.is_empty() {
        // `-N`: the last N bytes.
        let Some(n) = number(last) else {
            return Wanted::Whole;
        };
        if n == 0 || size == 0 {
            return Wanted::Unsatisfiable;
        }
        return Wanted::Part {
            start: size.saturating_sub(n),
            end: size - 1,
        };
    }
    let Some(start) = number(first) else {
        return Wanted::Whole;
    };
    let end = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(e) if e >= start => Some(e),
            _ => return Wanted::Whole,
        }
    };
    if start >= size {
        return Wanted::Unsatisfiable;
    }
    let end = end.map_or(size - 1, |e| e.min(size - 1));
    Wanted::Part { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("bytes=0-9", 100), Wanted::Part { start: 0, end: 9 });
        assert_eq!(parse("bytes=90-", 100), Wanted::Part { start: 90, end: 99 });
        assert_eq!(
            parse("bytes=90-1000", 100),
            Wanted::Part { start: 90, end: 99 }
        );
        assert_eq!(parse("bytes=-10", 100), Wanted::Part { start: 90, end: 99 });
        assert_eq!(
            parse("bytes=-1000", 100),
            Wanted::Part { start: 0, end: 99 }
        );
        assert_eq!(parse("bytes=100-", 100), Wanted::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Wanted::Unsatisfiable);
        assert_eq!(parse("Bytes=1-1", 100), Wanted::Part { start: 1, end: 1 });
        assert_eq!(parse("bytes=0-", 0), Wanted::Unsatisfiable);
        // Ignored: another unit, several ranges, nonsense, end before start.
        assert_eq!(parse("items=0-1", 100), Wanted::Whole);
        assert_eq!(parse("bytes=0-1,5-6", 100), Wanted::Whole);
        assert_eq!(parse("bytes=a-b", 100), Wanted::Whole);
        assert_eq!(parse("bytes=+1-2", 100), Wanted::Whole);
        assert_eq!(parse("bytes=5-1", 100), Wanted::Whole);
        assert_eq!(parse("bytes=99999999999999999999-", 100), Wanted::Whole);
    }
}
