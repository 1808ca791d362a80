//! A small fault-injecting HTTP/1.1 test server (std::net, one thread per connection).
//!
//! Why not hyper: the tests need to misbehave on purpose at the byte level (close a
//! connection in the middle of a body, stall, lie about Range support), which is easier
//! to state precisely with a hand-written response loop than through a full server stack.
//!
//! # Use
//!
//! ```ignore
//! let srv = TestServer::builder(Body::file(&image_path))   // or Body::mem(bytes)
//!     .ranges(true)                 // Accept-Ranges + 206/416 (default: on)
//!     .drop_after(vec![100_000, 300_000]) // 1st GET body closes after 100000 bytes, 2nd after 300000
//!     .start();
//! let url = srv.url("/disk.qcow2");   // any path serves the body
//! // ... run streamdisk ...
//! let log = srv.log();                // every request, in arrival order
//! ```
//!
//! # Behaviour (all per server, shared by every connection)
//!
//! - Every path serves the one body (`GET`) or its headers (`HEAD`). Other methods: 405.
//! - `ranges(true)` (default): `Accept-Ranges: bytes`; a single `Range: bytes=a-b`, `a-` or
//!   `-n` gets `206` with `Content-Range`; an unsatisfiable one gets `416` with
//!   `Content-Range: bytes */LEN`. Multi-range requests get the whole body (`200`).
//!   `ranges(false)`: no `Accept-Ranges`, `Range` is ignored (`200`, whole body), as a plain
//!   server would. `ignore_range(true)`: advertises `Accept-Ranges: bytes` but still answers
//!   `200` with the whole body (a lying server/proxy).
//! - Every response carries an `ETag` (`"v1"`, `"v2"` after a change) and a `Last-Modified`,
//!   unless turned off with `etag(false)` / `last_modified(false)`. `If-Range` is honoured:
//!   when it matches neither the current ETag nor the current Last-Modified, the `Range` is
//!   ignored and the whole current body is sent with `200`.
//! - `change_after(n, new_body)`: requests numbered `n` and later (0-based, every request
//!   counts) see the new body, ETag `"v2"` and a later Last-Modified.
//! - `fail_first(n, status, retry_after)`: the first `n` requests get `status` (with
//!   `Retry-After: secs` when given) and a short text body.
//! - `drop_after(vec)`: the i-th response that sends a body (200/206 to GET) closes the
//!   connection after sending `vec[i]` body bytes (later responses are whole).
//!   `drop_with_reset(true)` makes those closes a TCP RST instead of a FIN.
//! - `stall(at, dur)`: once per server, the response that is about to send the body byte at
//!   absolute offset `at` sleeps `dur` first (so a client that resumes past `at` sees no stall).
//! - `basic_auth(user, pass)`: requests without the matching `Authorization` get 401.
//! - `require_header(name, value)`: requests without it get 403.
//! - `redirect_to(url)`: every request gets `302 Found` with `Location: url`.
//! - `rate_limit(bytes_per_sec)`: each connection's body is paced to that rate.
//! - `answer_delay(dur)`: every request waits `dur` before its answer (a distant server).
//! - `one_at_a_time(true)`: a request that arrives while another response is being sent
//!   gets `503` (a server that allows each client one download at a time).
//! - `keep_alive(false)`: `Connection: close` after each response (default: keep-alive,
//!   honouring a client's `Connection: close`).
//! - `omit_content_length(true)`: 200 bodies are close-delimited (no `Content-Length`).
//! - `tls(cert_pem, key_pem)`: serve HTTPS (rustls, ring provider). [`make_ca_and_cert`]
//!   makes a CA and a server certificate for a host name.
//!
//! The request log ([`TestServer::log`]) records method, path, Range, If-Range,
//! Authorization and every header of every request, including refused ones.
//! [`TestServer::body_bytes_sent`] counts body bytes written to all clients.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The resource a server serves: bytes in memory or a file read with `pread` per chunk
/// (so multi-GiB files are never loaded into memory).
#[derive(Clone)]
pub enum Body {
    Mem(Arc<Vec<u8>>),
    File(Arc<File>, u64),
}

impl Body {
    pub fn mem(bytes: impl Into<Vec<u8>>) -> Body {
        Body::Mem(Arc::new(bytes.into()))
    }

    pub fn file(path: &Path) -> Body {
        let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let len = f.metadata().expect("stat body file").len();
        Body::File(Arc::new(f), len)
    }

    pub fn len(&self) -> u64 {
        match self {
            Body::Mem(v) => v.len() as u64,
            Body::File(_, len) => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset` (caller keeps `offset + buf.len() <= len`).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Body::Mem(v) => {
                let start = offset as usize;
                buf.copy_from_slice(&v[start..start + buf.len()]);
                Ok(())
            }
            Body::File(f, _) => f.read_exact_at(buf, offset),
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Sequential number over the whole server (0-based).
    pub index: usize,
    /// Which TCP connection carried it (0-based, in accept order).
    pub connection: usize,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub authorization: Option<String>,
    /// All headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The status the server answered with.
    pub status: u16,
}

impl RequestRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Server behaviour; build with [`TestServer::builder`].
#[derive(Clone)]
pub struct ServerConfig {
    body: Body,
    ranges: bool,
    ignore_range: bool,
    etag: bool,
    last_modified: bool,
    change_after: Option<(usize, Body)>,
    fail_first: Option<(usize, u16, Option<u64>)>,
    drop_after: Vec<u64>,
    drop_with_reset: bool,
    stall: Option<(u64, Duration)>,
    basic_auth: Option<(String, String)>,
    require_header: Option<(String, String)>,
    redirect_to: Option<String>,
    rate_limit: Option<u64>,
    answer_delay: Option<Duration>,
    one_at_a_time: bool,
    keep_alive: bool,
    omit_content_length: bool,
    tls: Option<(String, String)>,
}

/// Builder for a [`TestServer`].
pub struct ServerBuilder {
    cfg: ServerConfig,
}

impl ServerBuilder {
    pub fn ranges(mut self, on: bool) -> Self {
        self.cfg.ranges = on;
        self
    }
    pub fn ignore_range(mut self, on: bool) -> Self {
        self.cfg.ignore_range = on;
        self
    }
    pub fn etag(mut self, on: bool) -> Self {
        self.cfg.etag = on;
        self
    }
    pub fn last_modified(mut self, on: bool) -> Self {
        self.cfg.last_modified = on;
        self
    }
    pub fn change_after(mut self, requests: usize, new_body: Body) -> Self {
        self.cfg.change_after = Some((requests, new_body));
        self
    }
    pub fn fail_first(mut self, n: usize, status: u16, retry_after: Option<u64>) -> Self {
        self.cfg.fail_first = Some((n, status, retry_after));
        self
    }
    pub fn drop_after(mut self, sizes: Vec<u64>) -> Self {
        self.cfg.drop_after = sizes;
        self
    }
    pub fn drop_with_reset(mut self, on: bool) -> Self {
        self.cfg.drop_with_reset = on;
        self
    }
    pub fn stall(mut self, at_offset: u64, dur: Duration) -> Self {
        self.cfg.stall = Some((at_offset, dur));
        self
    }
    pub fn basic_auth(mut self, user: &str, pass: &str) -> Self {
        self.cfg.basic_auth = Some((user.into(), pass.into()));
        self
    }
    pub fn require_header(mut self, name: &str, value: &str) -> Self {
        self.cfg.require_header = Some((name.to_ascii_lowercase(), value.into()));
        self
    }
    pub fn redirect_to(mut self, url: &str) -> Self {
        self.cfg.redirect_to = Some(url.into());
        self
    }
    pub fn rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.cfg.rate_limit = Some(bytes_per_sec.max(1));
        self
    }
    pub fn answer_delay(mut self, dur: Duration) -> Self {
        self.cfg.answer_delay = Some(dur);
        self
    }
    pub fn one_at_a_time(mut self, on: bool) -> Self {
        self.cfg.one_at_a_time = on;
        self
    }
    pub fn keep_alive(mut self, on: bool) -> Self {
        self.cfg.keep_alive = on;
        self
    }
    pub fn omit_content_length(mut self, on: bool) -> Self {
        self.cfg.omit_content_length = on;
        self
    }
    pub fn tls(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.cfg.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Binds 127.0.0.1:0 and starts accepting.
    pub fn start(self) -> TestServer {
        TestServer::start(self.cfg)
    }
}

/// State shared by all connections of one server.
struct Shared {
    cfg: ServerConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    log: Mutex<Vec<RequestRecord>>,
    requests: AtomicUsize,
    connections: AtomicUsize,
    body_responses: AtomicUsize,
    stall_done: AtomicBool,
    /// Responses being written right now.
    busy: AtomicUsize,
    bytes_sent: AtomicU64,
    stop: AtomicBool,
    started: SystemTime,
}

/// A running server; stops accepting when dropped.
pub struct TestServer {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn builder(body: Body) -> ServerBuilder {
        ServerBuilder {
            cfg: ServerConfig {
                body,
                ranges: true,
                ignore_range: false,
                etag: true,
                last_modified: true,
                change_after: None,
                fail_first: None,
                drop_after: Vec::new(),
                drop_with_reset: false,
                stall: None,
                basic_auth: None,
                require_header: None,
                redirect_to: None,
                rate_limit: None,
                answer_delay: None,
                one_at_a_time: false,
                keep_alive: true,
                omit_content_length: false,
                tls: None,
            },
        }
    }

    /// A server with default behaviour (Range support on).
    pub fn serve(body: Body) -> TestServer {
        Self::builder(body).start()
    }

    fn start(cfg: ServerConfig) -> TestServer {
        let tls = cfg
            .tls
            .as_ref()
            .map(|(cert, key)| Arc::new(rustls_server_config(cert, key)));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            cfg,
            tls,
            log: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            body_responses: AtomicUsize::new(0),
            stall_done: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            started: SystemTime::now() - Duration::from_secs(3600),
        });
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let id = sh.connections.fetch_add(1, Ordering::SeqCst);
                let sh2 = sh.clone();
                thread::spawn(move || {
                    let _ = handle_connection(&sh2, stream, id);
                });
            }
        });
        TestServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT` or `https://HOST:PORT` (TLS servers use "localhost").
    pub fn base(&self) -> String {
        if self.shared.tls.is_some() {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://127.0.0.1:{}", self.addr.port())
        }
    }

    /// The base URL plus `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base(), path)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A copy of the request log so far.
    pub fn log(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Body bytes written to clients so far (all responses).
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A byte stream that may be plain TCP or TLS.
trait Conn: Read + Write + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// Reads through a shared reference to the boxed connection (BufReader needs ownership).
struct ConnReader<'a>(&'a mut Box<dyn Conn>);

impl Read for ConnReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

fn handle_connection(sh: &Shared, stream: TcpStream, conn_id: usize) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut conn: Box<dyn Conn> = match &sh.tls {
        Some(cfg) => {
            let sc = rustls::ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
            Box::new(rustls::StreamOwned::new(sc, stream))
        }
        None => Box::new(stream),
    };
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Read the request head byte-wise through a small BufReader that is dropped before we
        // write; GET/HEAD requests have no body, so nothing is lost between requests unless the
        // client pipelines (our clients do not).
        let head = {
            let mut r = BufReader::with_capacity(1, ConnReader(&mut conn));
            read_head(&mut r)?
        };
        let Some((method, path, headers)) = head else {
            return Ok(());
        };
        let keep = respond(sh, &mut conn, conn_id, method, path, headers)?;
        conn.flush()?;
        if !keep {
            let _ = conn.tcp().shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

type Head = (String, String, Vec<(String, String)>);

/// Reads a request line and headers; `None` on a clean EOF before any byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some((method, path, headers)))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Counts a response in progress while it lives.
struct Busy<'a> {
    count: &'a AtomicUsize,
    /// Responses that were in progress when this one started.
    others: usize,
}

impl<'a> Busy<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let others = count.fetch_add(1, Ordering::SeqCst);
        Busy { count, others }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes one response; returns whether the connection may be reused.
fn respond(
    sh: &Shared,
    conn: &mut Box<dyn Conn>,
    conn_id: usize,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
) -> io::Result<bool> {
    let cfg = &sh.cfg;
    let index = sh.requests.fetch_add(1, Ordering::SeqCst);
    let client_close = header(&headers, "connection")
        .map(|v| v.eq_ignore_ascii_case("close"))
        .unwrap_or(false);
    let keep = cfg.keep_alive && !client_close;
    let conn_hdr = if keep { "keep-alive" } else { "close" };

    let mut record = RequestRecord {
        index,
        connection: conn_id,
        method: method.clone(),
        path,
        range: header(&headers, "range").map(str::to_string),
        if_range: header(&headers, "if-range").map(str::to_string),
        authorization: header(&headers, "authorization").map(str::to_string),
        headers: headers.clone(),
        status: 0,
    };

    // Which version of the resource this request sees.
    let changed = matches!(&cfg.change_after, Some((n, _)) if index >= *n);
    let body = match (&cfg.change_after, changed) {
        (Some((_, b)), true) => b.clone(),
        _ => cfg.body.clone(),
    };
    let etag = if changed { "\"v2\"" } else { "\"v1\"" };
    let mtime = if changed {
        sh.started + Duration::from_secs(1800)
    } else {
        sh.started
    };
    let last_mod = httpdate::fmt_http_date(mtime);
    let mut validators = String::new();
    if cfg.etag {
        validators.push_str(&format!("ETag: {etag}\r\n"));
    }
    if cfg.last_modified {
        validators.push_str(&format!("Last-Modified: {last_mod}\r\n"));
    }

    let simple = |conn: &mut Box<dyn Conn>, status: u16, extra: &str| -> io::Result<()> {
        let text = format!("{status} {}\n", reason(status));
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n{extra}\r\n",
            reason(status),
            text.len()
        );
        conn.write_all(head.as_bytes())?;
        if method != "HEAD" {
            conn.write_all(text.as_bytes())?;
        }
        Ok(())
    };
    let finish = |record: RequestRecord| {
        sh.log.lock().expect("log lock").push(record);
    };

    if let Some(dur) = cfg.answer_delay {
        std::thread::sleep(dur);
    }
    let _busy = Busy::enter(&sh.busy);
    if cfg.one_at_a_time && _busy.others > 0 {
        record.status = 503;
        finish(record);
        simple(conn, 503, "")?;
        return Ok(keep);
    }
    if let Some((n, status, retry_after)) = &cfg.fail_first {
        if index < *n {
            let extra = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            record.status = *status;
            finish(record);
            simple(conn, *status, &extra)?;
            return Ok(keep);
        }
    }
    if let Some(loc) = &cfg.redirect_to {
        record.status = 302;
        finish(record);
        simple(conn, 302, &format!("Location: {loc}\r\n"))?;
        return Ok(keep);
    }
    if let Some((user, pass)) = &cfg.basic_auth {
        let want = format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()));
        if record.authorization.as_deref() != Some(want.as_str()) {
            record.status = 401;
            finish(record);
            simple(
                conn,
                401,
                "WWW-Authenticate: Basic realm=\"streamdisk-test\"\r\n",
            )?;
            return Ok(keep);
        }
    }
    if let Some((name, value)) = &cfg.require_header {
        if header(&headers, name) != Some(value.as_str()) {
            record.status = 403;
            finish(record);
            simple(conn, 403, "")?;
            return Ok(keep);
        }
    }
    if method != "GET" && method != "HEAD" {
        record.status = 405;
        finish(record);
        simple(conn, 405, "Allow: GET, HEAD\r\n")?;
        return Ok(keep);
    }

    let len = body.len();
    // Decide between the whole body, a range, or 416.
    let mut range = None;
    if cfg.ranges && !cfg.ignore_range {
        if let Some(spec) = record.range.as_deref() {
            let if_range_ok = match record.if_range.as_deref() {
                None => true,
                Some(v) => (cfg.etag && v == etag) || (cfg.last_modified && v == last_mod),
            };
            if if_range_ok {
                match parse_range(spec, len) {
                    RangeAnswer::Whole => {}
                    RangeAnswer::Part(a, b) => range = Some((a, b)),
                    RangeAnswer::Unsatisfiable => {
                        record.status = 416;
                        finish(record);
                        simple(conn, 416, &format!("Content-Range: bytes */{len}\r\n"))?;
                        return Ok(keep);
                    }
                }
            }
        }
    }
    let accept_ranges = if cfg.ranges || cfg.ignore_range {
        "Accept-Ranges: bytes\r\n"
    } else {
        ""
    };
    let (status, start, end) = match range {
        Some((a, b)) => (206u16, a, b + 1),
        None => (200u16, 0, len),
    };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\n{accept_ranges}{validators}",
        reason(status)
    );
    let close_delimited = status == 200 && cfg.omit_content_length;
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        ));
    }
    if !close_delimited {
        head.push_str(&format!("Content-Length: {}\r\n", end - start));
    }
    let keep = keep && !close_delimited;
    head.push_str(&format!(
        "Connection: {}\r\n\r\n",
        if keep { "keep-alive" } else { "close" }
    ));
    record.status = status;
    finish(record);
    conn.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(keep);
    }

    let resp_no = sh.body_responses.fetch_add(1, Ordering::SeqCst);
    let drop_at = cfg.drop_after.get(resp_no).copied();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = start;
    let mut sent_here = 0u64;
    let t0 = Instant::now();
    while pos < end {
        let mut n = (end - pos).min(buf.len() as u64);
        if let Some(limit) = drop_at {
            n = n.min(limit.saturating_sub(sent_here));
        }
        if let Some((at, dur)) = cfg.stall {
            if pos <= at && at < pos + n.max(1) && !sh.stall_done.load(Ordering::SeqCst) {
                // Send up to the stall point, then sleep once.
                if at > pos {
                    n = at - pos;
                } else if !sh.stall_done.swap(true, Ordering::SeqCst) {
                    conn.flush()?;
                    thread::sleep(dur);
                }
            }
        }
        if let Some(rate) = cfg.rate_limit {
            n = n.min((rate / 10).max(1));
        }
        if n == 0 {
            // drop_after reached.
            conn.flush()?;
            if cfg.drop_with_reset {
                set_linger_zero(conn.tcp());
            }
            let _ = conn.tcp().shutdown(Shutdown::Both);
            return Ok(false);
        }
        let chunk = &mut buf[..n as usize];
        body.read_at(pos, chunk)?;
        conn.write_all(chunk)?;
        pos += n;
        sent_here += n;
        sh.bytes_sent.fetch_add(n, Ordering::SeqCst);
        if let Some(rate) = cfg.rate_limit {
            conn.flush()?;
            let due = Duration::from_secs_f64(sent_here as f64 / rate as f64);
            let elapsed = t0.elapsed();
            if due > elapsed {
                thread::sleep(due - elapsed);
            }
        }
    }
    Ok(keep)
}

enum RangeAnswer {
    Whole,
    /// Inclusive byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=` range against `len` (RFC 9110 section 14.1.2).
fn parse_range(spec: &str, len: u64) -> RangeAnswer {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if set.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(suffix) = b.parse::<u64>() else {
            return RangeAnswer::Whole;
        };
        if suffix == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Part(len - suffix.min(len), len - 1);
    }
    let Ok(first) = a.parse::<u64>() else {
        return RangeAnswer::Whole;
    };
    let last = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(l) if l >= first => l,
            _ => return RangeAnswer::Whole,
        }
    };
    if first >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Part(first, last.min(len - 1))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Makes the next close send RST instead of FIN (SO_LINGER with a zero timeout).
fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &l);
}

/// Standard base64 (RFC 4648) for Basic auth headers.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

pub fn rustls_server_config(cert_pem: &str, key_pem: &str) -> rustls::ServerConfig {
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("parse cert PEM");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("parse key PEM")
        .expect("a private key in the PEM");
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert")
}

/// A CA and a server certificate it signed, all PEM.
pub struct TestCerts {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// Makes a fresh CA and a server certificate for `host` (a DNS name or an IP address).
pub fn make_ca_and_cert(host: &str) -> TestCerts {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "streamdisk test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, &ca_key);

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec![host.to_string()]).expect("server params");
    params.distinguished_name.push(DnType::CommonName, host);
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    TestCerts {
        ca_cert_pem: ca_cert.pem(),
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

#[cfg(test)]
mod self_test {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
