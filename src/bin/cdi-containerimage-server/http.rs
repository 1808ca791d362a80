//! The HTTP/1.1 side: one thread per connection, persistent connections,
//! `GET` and `HEAD` only.
//!
//! Only the importer next to this server talks to it, over loopback, so it
//! does what that client needs and what Go's `http.FileServer` does for it:
//! the disk file with `Range` (one range; `If-Range` against
//! `Last-Modified`), `/info` with the environment, a listing at `/`, and
//! plain errors for the rest. Requests are bounded (head size, idle time,
//! connections), and a request with a body is answered and its connection
//! closed rather than read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::civil::Civil;
use crate::range::{self, Wanted};

/// Longest request head (request line and headers) read.
const MAX_HEAD: u64 = 64 << 10;

/// How long a connection may sit without sending a whole request head;
/// Go's server (with `ReadHeaderTimeout: 10s` and no other timeout) closes
/// idle connections after the same time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 64;

/// What is served.
#[derive(Debug)]
pub(crate) struct Site {
    /// The disk file.
    pub(crate) file: PathBuf,
    /// Its name, the one path served besides `/info` and `/`.
    pub(crate) name: String,
    /// The `/info` body, made once: the environment does not change.
    pub(crate) info: Vec<u8>,
    /// Connections being served.
    active: AtomicUsize,
}

impl Site {
    /// A site serving `file` as `/name`, with `info` at `/info`.
    pub(crate) fn new(file: PathBuf, name: String, info: Vec<u8>) -> Site {
        Site {
            file,
            name,
            info,
            active: AtomicUsize::new(0),
        }
    }
}

/// Accepts connections on `listener` for as long as the process runs.
pub(crate) fn accept_loop(listener: TcpListener, site: Arc<Site>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if site.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            site.active.fetch_sub(1, Ordering::SeqCst);
            let _ = plain(
                &mut &stream,
                503,
                "Service Unavailable",
                "too many connections\n",
                false,
                false,
            );
            continue;
        }
        let site2 = Arc::clone(&site);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                serve(&stream, &site2);
                site2.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            site.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Serves requests on one connection until it closes, times out or errs.
fn serve(stream: &TcpStream, site: &Site) {
    if stream.set_read_timeout(Some(HEAD_TIMEOUT)).is_err() {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(8 << 10, read_half);
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(HeadError::Io) => return,
            Err(HeadError::TooLarge) => {
                let _ = plain(
                    &mut &*stream,
                    431,
                    "Request Header Fields Too Large",
                    "request head too large\n",
                    false,
                    false,
                );
                return;
            }
            Err(HeadError::Malformed) => {
                let _ = plain(
                    &mut &*stream,
                    400,
                    "Bad Request",
                    "malformed request\n",
                    false,
                    false,
                );
                return;
            }
        };
        match respond(&req, &mut &*stream, site) {
            Ok(true) => continue,
            Ok(false) | Err(_) => return,
        }
    }
}

/// One request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    method: String,
    target: String,
    /// `HTTP/1.x`: the x.
    minor: u8,
    headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (any case).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after the answer: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `keep-alive`; never when the
    /// request has a body (it is not read).
    fn keep_alive(&self) -> bool {
        let tokens = |v: &str, t: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        let conn = self.header("connection").unwrap_or("");
        let body = self.header("transfer-encoding").is_some()
            || self
                .header("content-length")
                .is_some_and(|v| v.trim() != "0");
        if body {
            return false;
        }
        if self.minor == 0 {
            tokens(conn, "keep-alive")
        } else {
            !tokens(conn, "close")
        }
    }
}

/// Why no request was read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// The connection failed, timed out or closed mid-head.
    Io,
    /// The head is longer than [`MAX_HEAD`].
    TooLarge,
    /// Not an HTTP/1.x request head.
    Malformed,
}

/// Reads one request head; `None` when the connection closed between
/// requests.
pub(crate) fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, HeadError> {
    let mut budget = MAX_HEAD;
    let mut line = Vec::new();
    // RFC 9112 lets a server skip empty lines before the request line.
    loop {
        line.clear();
        let n = read_line(r, &mut line, &mut budget)?;
        if n == 0 {
            return Ok(None);
        }
        if !trim_eol(&line).is_empty() {
            break;
        }
    }
    let (method, target, minor) = request_line(trim_eol(&line))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if read_line(r, &mut line, &mut budget)? == 0 {
            return Err(HeadError::Io);
        }
        let l = trim_eol(&line);
        if l.is_empty() {
            break;
        }
        // Obsolete line folding is refused (RFC 9112, 5.2).
        if l.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(HeadError::Malformed);
        }
        let l = std::str::from_utf8(l).map_err(|_| HeadError::Malformed)?;
        let (name, value) = l.split_once(':').ok_or(HeadError::Malformed)?;
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(HeadError::Malformed);
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Some(Request {
        method,
        target,
        minor,
        headers,
    }))
}

/// `METHOD TARGET HTTP/1.x`: the method, the target and the x.
fn request_line(line: &[u8]) -> Result<(String, String, u8), HeadError> {
    let text = std::str::from_utf8(line).map_err(|_| HeadError::Malformed)?;
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(HeadError::Malformed),
    };
    if method.is_empty() || target.is_empty() {
        return Err(HeadError::Malformed);
    }
    Ok((method.to_string(), target.to_string(), minor))
}

/// Reads up to and including a `\n`, within `budget`; 0 at end of stream.
fn read_line(
    r: &mut impl BufRead,
    line: &mut Vec<u8>,
    budget: &mut u64,
) -> Result<usize, HeadError> {
    let n = (&mut *r)
        .take(*budget)
        .read_until(b'\n', line)
        .map_err(|_| HeadError::Io)?;
    *budget = budget.saturating_sub(n as u64);
    if n > 0 && line.last() != Some(&b'\n') {
        // Either the budget ran out or the peer closed mid-line.
        return Err(if *budget == 0 {
            HeadError::TooLarge
        } else {
            HeadError::Io
        });
    }
    Ok(n)
}

/// `line` without its `\r\n` or `\n`.
fn trim_eol(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// Answers `req`; returns whether the connection stays open.
fn respond(req: &Request, w: &mut impl Write, site: &Site) -> io::Result<bool> {
    let keep = req.keep_alive();
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        let mut h = head(405, "Method Not Allowed", keep);
        h.push_str("Allow: GET, HEAD\r\n");
        return body(
            w,
            h,
            "text/plain; charset=utf-8",
            b"405 method not allowed\n",
            head_only,
            keep,
        );
    }
    let Some(path) = clean_path(&req.target) else {
        return plain(w, 400, "Bad Request", "bad request path\n", head_only, keep);
    };
    if path == "/info" {
        return body(
            w,
            head(200, "OK", keep),
            "application/json",
            &site.info,
            head_only,
            keep,
        );
    }
    if path == "/" {
        let listing = listing(&site.name);
        return body(
            w,
            head(200, "OK", keep),
            "text/html; charset=utf-8",
            listing.as_bytes(),
            head_only,
            keep,
        );
    }
    if path.strip_prefix('/') == Some(site.name.as_str()) {
        return serve_file(req, w, site, head_only, keep);
    }
    plain(w, 404, "Not Found", "404 page not found\n", head_only, keep)
}

/// The request target's path, percent-decoded and cleaned of `.`, `..`
/// and empty segments (as Go's server cleans it); `None` when it cannot be
/// decoded. The absolute form (`http://host/path`) is taken too.
pub(crate) fn clean_path(target: &str) -> Option<String> {
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| rest.get(i..).unwrap_or("/")),
        None => target,
    };
    let raw = target.split(['?', '#']).next().unwrap_or_default();
    if !raw.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(raw)?;
    let mut segs: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    Some(format!("/{}", segs.join("/")))
}

/// `%XX` decoding; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The directory listing Go's file server writes for `/`.
fn listing(name: &str) -> String {
    let mut href = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            href.push(char::from(b));
        } else {
            href.push_str(&format!("%{b:02X}"));
        }
    }
    let text = name
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;");
    format!(
        "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n<a href=\"{href}\">{text}</a>\n</pre>\n"
    )
}

/// The disk file, whole or one range of it.
fn serve_file(
    req: &Request,
    w: &mut impl Write,
    site: &Site,
    head_only: bool,
    keep: bool,
) -> io::Result<bool> {
    let mut f = match File::open(&site.file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return plain(w, 404, "Not Found", "404 page not found\n", head_only, keep)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return plain(w, 403, "Forbidden", "403 Forbidden\n", head_only, keep)
        }
        Err(_) => {
            return plain(
                w,
                500,
                "Internal Server Error",
                "500 Internal Server Error\n",
                head_only,
                keep,
            )
        }
    };
    let meta = f.metadata()?;
    if meta.is_dir() {
        return plain(w, 404, "Not Found", "404 page not found\n", head_only, keep);
    }
    let size = meta.len();
    let modified = Civil::of(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)).http_date();
    let wanted = match req.header("range") {
        // A stale If-Range (another version of the file) gets it whole.
        Some(r) if req.header("if-range").is_none_or(|v| v == modified) => range::parse(r, size),
        _ => Wanted::Whole,
    };
    let (mut h, start, len) = match wanted {
        Wanted::Whole => (head(200, "OK", keep), 0, size),
        Wanted::Part { start, end } => {
            let mut h = head(206, "Partial Content", keep);
            h.push_str(&format!("Content-Range: bytes {start}-{end}/{size}\r\n"));
            (h, start, end - start + 1)
        }
        Wanted::Unsatisfiable => {
            let mut h = head(416, "Range Not Satisfiable", keep);
            h.push_str(&format!("Content-Range: bytes */{size}\r\n"));
            return body(
                w,
                h,
                "text/plain; charset=utf-8",
                b"invalid range: failed to overlap\n",
                head_only,
                keep,
            );
        }
    };
    h.push_str("Accept-Ranges: bytes\r\n");
    h.push_str(&format!("Last-Modified: {modified}\r\n"));
    h.push_str("Content-Type: application/octet-stream\r\n");
    h.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    w.write_all(h.as_bytes())?;
    if head_only {
        w.flush()?;
        return Ok(keep);
    }
    f.seek(SeekFrom::Start(start))?;
    let sent = io::copy(&mut f.take(len), w)?;
    if sent != len {
        // The file shrank under us: the length sent was a lie, so the
        // connection must end here.
        return Ok(false);
    }
    w.flush()?;
    Ok(keep)
}

/// A status line with `Date` and, when closing, `Connection: close`.
fn head(status: u16, reason: &str, keep: bool) -> String {
    let mut h = format!(
        "HTTP/1.1 {status} {reason}\r\nDate: {}\r\n",
        Civil::of(SystemTime::now()).http_date()
    );
    if !keep {
        h.push_str("Connection: close\r\n");
    }
    h
}

/// Sends `h` with a small body.
fn body(
    w: &mut impl Write,
    mut h: String,
    content_type: &str,
    b: &[u8],
    head_only: bool,
    keep: bool,
) -> io::Result<bool> {
    h.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        b.len()
    ));
    let mut out = h.into_bytes();
    if !head_only {
        out.extend_from_slice(b);
    }
    w.write_all(&out)?;
    w.flush()?;
    Ok(keep)
}

/// A plain-text answer.
fn plain(
    w: &mut impl Write,
    status: u16,
    reason: &str,
    text: &str,
    head_only: bool,
    keep: bool,
) -> io::Result<bool> {
    body(
        w,
        head(status, reason, keep),
        "text/plain; charset=utf-8",
        text.as_bytes(),
        head_only,
        keep,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Option<Request>, HeadError> {
        read_request(&mut io::Cursor::new(text.as_bytes().to_vec()))
    }

    #[test]
    fn heads() {
        let r = req("\r\nGET /disk.img HTTP/1.1\r\nHost: x\r\nRange:  bytes=0-1 \r\n\r\n")
            .expect("ok")
            .expect("some");
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/disk.img");
        assert_eq!(r.header("RANGE"), Some("bytes=0-1"));
        assert!(r.keep_alive());
        assert_eq!(req(""), Ok(None));
        assert_eq!(req("GET / HTTP/1.1\r\nHost"), Err(HeadError::Io));
        assert_eq!(req("GET / HTTP/2\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(req("GET /\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(
            req("GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            req("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70 << 10));
        assert_eq!(req(&long), Err(HeadError::TooLarge));
        let close = req("GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n")
            .expect("ok")
            .expect("some");
        assert!(!close.keep_alive());
        let old = req("GET / HTTP/1.0\r\n\r\n").expect("ok").expect("some");
        assert!(!old.keep_alive());
        let with_body = req("GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
            .expect("ok")
            .expect("some");
        assert!(!with_body.keep_alive());
    }

    #[test]
    fn paths() {
        assert_eq!(clean_path("/disk.img").as_deref(), Some("/disk.img"));
        assert_eq!(
            clean_path("/./a/../disk%2eimg?x=1").as_deref(),
            Some("/disk.img")
        );
        assert_eq!(clean_path("//disk.img#f").as_deref(), Some("/disk.img"));
        assert_eq!(
            clean_path("/../../etc/passwd").as_deref(),
            Some("/etc/passwd")
        );
        assert_eq!(
            clean_path("http://localhost:8100/info").as_deref(),
            Some("/info")
        );
        assert_eq!(clean_path("http://localhost:8100").as_deref(), Some("/"));
        assert_eq!(clean_path("/%zz"), None);
        assert_eq!(clean_path("/%ff"), None);
        assert_eq!(clean_path("*"), None);
    }

    #[test]
    fn listing_escapes() {
        assert!(listing("a b<.img").contains("<a href=\"a%20b%3C.img\">a b&lt;.img</a>"));
    }
}
