//! What identifies the version of the file being downloaded (ETag,
//! Last-Modified, length), and the checks that keep a resumed or ranged
//! response from mixing two versions.

use reqwest::header::{HeaderMap, ACCEPT_RANGES, CONTENT_RANGE, ETAG, LAST_MODIFIED};
use reqwest::{Response, StatusCode};

use super::retry::Failure;
use crate::source::SourceError;

/// The identity of the file as first seen.
#[derive(Debug, Clone, Default)]
pub(super) struct Validator {
    /// The ETag exactly as sent (strong or weak).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Content-Length of the first full answer.
    pub total: Option<u64>,
    /// The server advertised `Accept-Ranges: bytes`.
    pub accept_ranges: bool,
}

impl Validator {
    /// Reads the validators of a full (200) response.
    pub(super) fn from_response(resp: &Response) -> Self {
        let headers = resp.headers();
        Validator {
            etag: header_str(headers, ETAG),
            last_modified: header_str(headers, LAST_MODIFIED),
            total: resp.content_length(),
            accept_ranges: headers
                .get_all(ACCEPT_RANGES)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|unit| unit.trim().eq_ignore_ascii_case("bytes")),
        }
    }

    /// The `If-Range` value: a strong ETag (weak ones are not allowed
    /// there), else Last-Modified.
    pub(super) fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(tag) if !tag.starts_with("W/") => Some(tag),
            _ => self.last_modified.as_deref(),
        }
    }

    /// Checks a 206 answer to `Range: bytes=start-` (or `start-end-1`):
    /// it must start exactly at `start`, and describe the same file.
    pub(super) fn check_partial(
        &self,
        resp: &Response,
        url: &str,
        start: u64,
    ) -> Result<(), Failure> {
        let headers = resp.headers();
        if let (Some(ours), Some(theirs)) = (&self.etag, header_str(headers, ETAG)) {
            if *ours != theirs {
                return Err(Failure::Fatal(SourceError::SourceChanged {
                    url: url.to_string(),
                    detail: format!("ETag {ours} became {theirs}"),
                }));
            }
        }
        let value = header_str(headers, CONTENT_RANGE).ok_or_else(|| {
            Failure::Fatal(SourceError::BadContentRange {
                url: url.to_string(),
                detail: "206 answer without Content-Range".to_string(),
            })
        })?;
        let range = ContentRange::parse(&value).ok_or_else(|| {
            Failure::Fatal(SourceError::BadContentRange {
                url: url.to_string(),
                detail: format!("cannot parse {value:?}"),
            })
        })?;
        if range.first != start {
            return Err(Failure::Fatal(SourceError::BadContentRange {
                url: url.to_string(),
                detail: format!("asked for byte {start}, got {value:?}"),
            }));
        }
        if let (Some(ours), Some(theirs)) = (self.total, range.total) {
            if ours != theirs {
                return Err(Failure::Fatal(SourceError::SourceChanged {
                    url: url.to_string(),
                    detail: format!("length {ours} became {theirs}"),
                }));
            }
        }
        Ok(())
    }

    /// Explains a 200 answer to a ranged request: either the file changed
    /// (If-Range did its job, or the validators differ), or the server
    /// ignores Range.
    pub(super) fn full_answer_to_range(
        &self,
        resp: &Response,
        url: &str,
        offset: u64,
    ) -> SourceError {
        let now = Validator::from_response(resp);
        let changed = match (&self.etag, &now.etag) {
            (Some(a), Some(b)) => a != b,
            _ => match (&self.last_modified, &now.last_modified) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            },
        } || matches!((self.total, now.total), (Some(a), Some(b)) if a != b);
        if changed {
            SourceError::SourceChanged {
                url: url.to_string(),
                detail: "the server sent a new version instead of the requested range".to_string(),
            }
        } else {
            SourceError::RangeIgnored {
                url: url.to_string(),
                offset,
            }
        }
    }

    /// Explains a 412/416 answer to a ranged request: the file we were
    /// reading is gone or shorter.
    pub(super) fn precondition_failed(status: StatusCode, url: &str) -> SourceError {
        SourceError::SourceChanged {
            url: url.to_string(),
            detail: format!("the server answered {status} to a ranged request"),
        }
    }
}

impl Validator {
    /// The current length from a 416's `Content-Range: bytes */LEN`.
    pub(super) fn unsatisfied_length(resp: &Response) -> Option<u64> {
        header_str(resp.headers(), CONTENT_RANGE)?
            .strip_prefix("bytes")?
            .trim_start()
            .strip_prefix("*/")?
            .trim()
            .parse()
            .ok()
    }
}

fn header_str(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// A parsed `Content-Range: bytes first-last/total` (total may be `*`).
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    first: u64,
    last: u64,
    total: Option<u64>,
}

impl ContentRange {
    fn parse(value: &str) -> Option<Self> {
        let rest = value.trim().strip_prefix("bytes")?.trim_start();
        let (span, total) = rest.split_once('/')?;
        let (first, last) = span.trim().split_once('-')?;
        let first: u64 = first.trim().parse().ok()?;
        let last: u64 = last.trim().parse().ok()?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        if last < first || total.is_some_and(|t| last >= t) {
            return None;
        }
        Some(ContentRange { first, last, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            ContentRange::parse("bytes 100-199/1000"),
            Some(ContentRange {
                first: 100,
                last: 199,
                total: Some(1000)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 0-0/*"),
            Some(ContentRange {
                first: 0,
                last: 0,
                total: None
            })
        );
        assert_eq!(ContentRange::parse("bytes 5-4/10"), None);
        assert_eq!(ContentRange::parse("bytes 5-10/10"), None);
        assert_eq!(ContentRange::parse("bytes */10"), None);
        assert_eq!(ContentRange::parse("items 1-2/3"), None);
        assert_eq!(ContentRange::parse("bytes 99999999999999999999-1/2"), None);
    }

    #[test]
    fn if_range_prefers_strong_etag() {
        let mut v = Validator {
            etag: Some("\"abc\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            ..Validator::default()
        };
        assert_eq!(v.if_range(), Some("\"abc\""));
        v.etag = Some("W/\"abc\"".into());
        assert_eq!(v.if_range(), Some("Wed, 21 Oct 2015 07:28:00 GMT"));
        v.last_modified = None;
        assert_eq!(v.if_range(), None);
    }
}
