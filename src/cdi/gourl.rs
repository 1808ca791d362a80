//! Whether Go's `net/url.Parse` takes a string, for
//! `cdi-image-size-detection`: CDI parses `-scheme` + `-image-path` as a URL
//! and exits 3 ("invalid path") when that fails, before it looks at any file.
//!
//! Only the checks that can fail are kept (control bytes, the scheme, the
//! authority's user, host and port, `%` escapes); what Go builds from a
//! string that passes is not needed, only its scheme.

/// The scheme (lower case, empty when none) of `s` if Go's `url.Parse`
/// accepts it, else Go's error text.
pub(crate) fn parse_scheme(s: &str) -> Result<String, String> {
    let fail = |why: String| Err(format!("parse {}: {why}", go_quote(s)));
    let (main, fragment) = match s.split_once('#') {
        Some((m, f)) => (m, Some(f)),
        None => (s, None),
    };
    if main.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return fail("net/url: invalid control character in URL".into());
    }
    if main == "*" {
        return Ok(String::new());
    }
    let (scheme, rest) = match split_scheme(main) {
        Ok(x) => x,
        Err(e) => return fail(e.into()),
    };
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    if !rest.starts_with('/') {
        if !scheme.is_empty() {
            // An opaque URL (`scheme:opaque`): nothing more is checked.
            return check_fragment(s, fragment).map(|()| scheme);
        }
        let first = rest.split('/').next().unwrap_or_default();
        if first.contains(':') {
            return fail("first path segment in URL cannot contain colon".into());
        }
    }
    let mut path = rest;
    if let Some(after) = rest.strip_prefix("//") {
        if !scheme.is_empty() || !rest.starts_with("///") {
            let (authority, p) = match after.find('/') {
                Some(i) => (
                    after.get(..i).unwrap_or_default(),
                    after.get(i..).unwrap_or_default(),
                ),
                None => (after, ""),
            };
            if let Err(e) = check_authority(authority) {
                return fail(e);
            }
            path = p;
        }
    }
    if let Err(e) = unescape(path, Mode::Other) {
        return fail(e);
    }
    check_fragment(s, fragment).map(|()| scheme)
}

/// The fragment's `%` escapes.
fn check_fragment(s: &str, fragment: Option<&str>) -> Result<(), String> {
    match fragment.map(|f| unescape(f, Mode::Other)) {
        Some(Err(e)) => Err(format!("parse {}: {e}", go_quote(s))),
        _ => Ok(()),
    }
}

/// Go's `getScheme`.
fn split_scheme(s: &str) -> Result<(&str, &str), &'static str> {
    for (i, c) in s.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err("missing protocol scheme"),
            b':' => {
                return Ok((
                    s.get(..i).unwrap_or_default(),
                    s.get(i + 1..).unwrap_or_default(),
                ))
            }
            _ => return Ok(("", s)),
        }
    }
    Ok(("", s))
}

/// Go's `parseAuthority`: `[user[:password]@]host[:port]`.
fn check_authority(authority: &str) -> Result<(), String> {
    let (user, host) = match authority.rfind('@') {
        Some(i) => (
            Some(authority.get(..i).unwrap_or_default()),
            authority.get(i + 1..).unwrap_or_default(),
        ),
        None => (None, authority),
    };
    check_host(host)?;
    if let Some(u) = user {
        let ok = u
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&b));
        if !ok {
            return Err("net/url: invalid userinfo".into());
        }
        unescape(u, Mode::Other)?;
    }
    Ok(())
}

/// Go's `parseHost` (IPv6 zones are not checked further).
fn check_host(host: &str) -> Result<(), String> {
    let port = if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err("missing ']' in host".into());
        };
        host.get(i + 1..).unwrap_or_default()
    } else {
        host.rfind(':')
            .map_or("", |i| host.get(i..).unwrap_or_default())
    };
    let valid_port = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if !valid_port {
        return Err(format!("invalid port {} after host", go_quote(port)));
    }
    if host.starts_with('[') {
        return Ok(());
    }
    unescape(host, Mode::Host)
}

/// Which part of the URL is unescaped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Host,
    Other,
}

/// Go's `unescape` checks: every `%` starts two hex digits; in a host, a
/// `%` escape only for bytes above 0x7f (or `%25`) and no character that
/// would need escaping.
fn unescape(s: &str, mode: Mode) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3);
            let Some(&[h, l]) = hex else {
                return Err(escape_error(s, i));
            };
            if !h.is_ascii_hexdigit() || !l.is_ascii_hexdigit() {
                return Err(escape_error(s, i));
            }
            if mode == Mode::Host && h < b'8' && !(h == b'2' && l == b'5') {
                return Err(escape_error(s, i));
            }
            i += 3;
            continue;
        }
        if mode == Mode::Host && c < 0x80 && !host_char(c) {
            return Err(format!(
                "invalid character {} in host name",
                go_quote(&char::from(c).to_string())
            ));
        }
        i += 1;
    }
    Ok(())
}

/// Bytes a host may hold unescaped (Go's `shouldEscape` in host mode).
fn host_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!$&'()*+,;=:[]<>\"-_.~".contains(&c)
}

/// Go's `EscapeError`: `invalid URL escape "%zz"`.
fn escape_error(s: &str, i: usize) -> String {
    let end = (i + 3).min(s.len());
    let bad = s.get(i..end).unwrap_or("%");
    format!("invalid URL escape {}", go_quote(bad))
}

/// A Go `%q`-like quoting, for messages.
fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_go_accepts() {
        assert_eq!(parse_scheme("file:///data/disk.img").as_deref(), Ok("file"));
        assert_eq!(
            parse_scheme("FILE:///data/disk%20a.img").as_deref(),
            Ok("file")
        );
        assert_eq!(parse_scheme("/data/disk.img").as_deref(), Ok(""));
        assert_eq!(parse_scheme("file://data/disk.img").as_deref(), Ok("file"));
        assert_eq!(
            parse_scheme("file:///a?b%zz#c").as_deref(),
            Ok("file"),
            "the query is not checked"
        );
        assert_eq!(
            parse_scheme("nbd+unix:///x?socket=/s").as_deref(),
            Ok("nbd+unix")
        );
        assert_eq!(parse_scheme("file://u:p@h:1/x").as_deref(), Ok("file"));
        assert_eq!(parse_scheme("http:opaque").as_deref(), Ok("http"));
    }

    #[test]
    fn what_go_refuses() {
        let err = |s: &str| parse_scheme(s).expect_err(s);
        assert!(err("file:///data/\u{1}x").contains("invalid control character"));
        assert!(err("file:///data/disk\x7f").contains("invalid control character"));
        assert!(err("file:///data/disk%zz.img").contains("invalid URL escape \"%zz\""));
        assert!(err("file:///data/disk%4").contains("invalid URL escape \"%4\""));
        assert!(err("file:///data/disk.img#%g1").contains("invalid URL escape"));
        assert!(err("file://host:port/x").contains("invalid port \":port\" after host"));
        assert!(err("file://ho st/x").contains("invalid character \" \" in host name"));
        assert!(err("file://%41/x").contains("invalid URL escape \"%41\""));
        assert!(err("file://[::1/x").contains("missing ']'"));
        assert!(err("file://a b@h/x").contains("invalid userinfo"));
        assert!(err(":x").contains("missing protocol scheme"));
        assert!(err("1a:b/c").contains("first path segment in URL cannot contain colon"));
    }
}
