//! Calendar dates from the system clock, in UTC: the poller's RFC 3339
//! time stamps, the image server's `Date` and `Last-Modified` headers and
//! its log lines. The images these tools run in have no time zone data, so
//! UTC is also what CDI's Go tools print there.
//!
//! Std only: `cdi-containerimage-server` compiles this file into its own
//! small binary (`#[path]`), which must not link the library.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    weekday: u32,
}

impl Civil {
    /// The UTC calendar time of `t` (times before 1970 count as 1970).
    pub(crate) fn of(t: SystemTime) -> Civil {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Civil::from_unix(secs)
    }

    /// The UTC calendar time `secs` seconds after the epoch.
    fn from_unix(secs: u64) -> Civil {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Howard Hinnant's days-to-civil, for days since 1970-01-01.
        let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month: u32::try_from(month).unwrap_or(1),
            day: u32::try_from(day).unwrap_or(1),
            hour: u32::try_from(rem / 3600).unwrap_or(0),
            minute: u32::try_from(rem % 3600 / 60).unwrap_or(0),
            second: u32::try_from(rem % 60).unwrap_or(0),
            // 1970-01-01 was a Thursday (0 = Sunday).
            weekday: u32::try_from((days + 4) % 7).unwrap_or(0),
        }
    }

    /// RFC 9110's IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub(crate) fn http_date(&self) -> String {
        const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let wd = DAYS.get(self.weekday as usize).copied().unwrap_or("Sun");
        let mon = MONTHS
            .get((self.month as usize).saturating_sub(1))
            .copied()
            .unwrap_or("Jan");
        format!(
            "{wd}, {:02} {mon} {:04} {:02}:{:02}:{:02} GMT",
            self.day, self.year, self.hour, self.minute, self.second
        )
    }

    /// RFC 3339, as Go's `time.RFC3339` formats a UTC time:
    /// `2006-01-02T15:04:05Z`.
    pub(crate) fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// Go's `log` prefix: `2009/11/10 23:00:00`.
    pub(crate) fn log_stamp(&self) -> String {
        format!(
            "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(
            Civil::from_unix(784_111_777).http_date(),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            Civil::from_unix(0).http_date(),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        // A leap day, and the log form.
        assert_eq!(
            Civil::from_unix(1_709_210_096).log_stamp(),
            "2024/02/29 12:34:56"
        );
        assert_eq!(
            Civil::from_unix(1_709_210_096).rfc3339(),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(
            Civil::from_unix(1_709_210_096).http_date(),
            "Thu, 29 Feb 2024 12:34:56 GMT"
        );
    }
}
