//! Percent-encoding of URL parts: the one copy that the HTTP, S3 and GCS
//! sources share.

/// Percent-encodes every byte but the unreserved characters of RFC 3986
/// (letters, digits, `-._~`), and `/` too when `keep_slash` (an S3 key's
/// path; a GCS object name is one path segment, a form value has none).
pub(crate) fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as
/// it is.
pub(crate) fn decode_bytes(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        let hex = (b == b'%')
            .then(|| bytes.get(i.saturating_add(1)..i.saturating_add(3)))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i = i.saturating_add(3);
            }
            None => {
                out.push(b);
                i = i.saturating_add(1);
            }
        }
    }
    out
}

/// [`decode_bytes`] as text; `None` when the result is not UTF-8.
pub(crate) fn decode(s: &str) -> Option<String> {
    String::from_utf8(decode_bytes(s)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_odd_escapes() {
        assert_eq!(
            encode("dir/disk image~1.qcow2", false),
            "dir%2Fdisk%20image~1.qcow2"
        );
        assert_eq!(
            encode("dir/disk image.qcow2", true),
            "dir/disk%20image.qcow2"
        );
        assert_eq!(
            decode("dir%2Fdisk%20image.qcow2").as_deref(),
            Some("dir/disk image.qcow2")
        );
        assert_eq!(decode("100%").as_deref(), Some("100%"));
        assert_eq!(decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(decode("%ff"), None);
        assert_eq!(decode_bytes("%ff"), vec![0xff]);
    }
}
