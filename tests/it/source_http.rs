//! Library-level tests of the HTTP source against the fault-injecting test
//! server: open the source, read everything, compare with the served bytes,
//! and check the server's request log for what was asked and sent.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::server::{make_ca_and_cert, Body, RequestRecord, TestServer};
use streamdisk::format::{identify, Signature};
use streamdisk::pace::Pace;
use streamdisk::source::{self, Connections, HttpOptions, OpenContext, OpenedSource, SourceSpec};
use streamdisk::testing::Prng;
use streamdisk::unwrap::{decoder, Wrapper};

/// A runtime for the network tasks; the test thread plays the pipeline's
/// blocking thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Short timeouts so that failure cases finish quickly.
fn fast_opts() -> HttpOptions {
    HttpOptions {
        stall_timeout: Duration::from_secs(3),
        max_attempts: 4,
        max_retry_time: Duration::from_secs(20),
        ..HttpOptions::default()
    }
}

/// Deterministic pseudo-random bytes (incompressible enough that every
/// offset is distinct in practice).
fn sample(len: usize, seed: u64) -> Vec<u8> {
    Prng::new(seed).bytes(len)
}

fn spec(url: &str) -> SourceSpec {
    SourceSpec::parse(url).expect("a valid URL")
}

fn open(
    url: &str,
    opts: &HttpOptions,
    rt: &tokio::runtime::Runtime,
) -> Result<OpenedSource, String> {
    source::open(&spec(url), opts, rt.handle()).map_err(|e| streamdisk::error_chain(&e))
}

/// Opens with a pace the test can read and set, as the pipeline does.
fn open_paced(url: &str, opts: &HttpOptions, rt: &tokio::runtime::Runtime) -> (OpenedSource, Pace) {
    let pace = Pace::new();
    let src = spec(url)
        .open(&OpenContext {
            http: opts,
            rt: rt.handle(),
            pace: &pace,
            counter: &std::sync::Arc::new(streamdisk::progress::Counter::default()),
        })
        .expect("open");
    (src, pace)
}

/// Opens and reads to the end; the error is the message a user would see.
fn fetch_all(url: &str, opts: &HttpOptions) -> Result<Vec<u8>, String> {
    let rt = runtime();
    let mut src = open(url, opts, &rt)?;
    let mut out = Vec::new();
    src.reader
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn gets(log: &[RequestRecord]) -> Vec<&RequestRecord> {
    log.iter().filter(|r| r.method == "GET").collect()
}

#[test]
fn survives_six_drops_resuming_at_exact_offsets() {
    let body = sample(1 << 20, 1);
    let drops = vec![100_000u64, 150_000, 50_000, 200_000, 10_000, 1];
    let srv = TestServer::builder(Body::mem(body.clone()))
        .drop_after(drops.clone())
        .start();
    let got = fetch_all(&srv.url("/disk.img"), &fast_opts()).expect("download survives drops");
    assert!(got == body, "bytes differ after resumes");

    let log = srv.log();
    let reqs = gets(&log);
    assert_eq!(
        reqs.len(),
        drops.len() + 1,
        "one request per drop plus the first: {log:#?}"
    );
    assert_eq!(reqs[0].range, None);
    let mut offset = 0u64;
    for (req, dropped_after) in reqs[1..].iter().zip(&drops) {
        offset += dropped_after;
        let last = body.len() - 1;
        assert_eq!(
            req.range.as_deref(),
            Some(format!("bytes={offset}-{last}").as_str())
        );
        assert_eq!(
            req.if_range.as_deref(),
            Some("\"v1\""),
            "resumes are guarded"
        );
        assert_eq!(req.status, 206);
    }
    // Nothing was downloaded twice.
    assert_eq!(srv.body_bytes_sent(), body.len() as u64);
}

#[test]
fn survives_connection_resets() {
    let body = sample(600_000, 2);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .drop_after(vec![70_000, 70_000, 70_000])
        .drop_with_reset(true)
        .start();
    let got = fetch_all(&srv.url("/x"), &fast_opts()).expect("download survives resets");
    assert!(got == body);
    let ranges: Vec<_> = gets(&srv.log()).iter().map(|r| r.range.clone()).collect();
    // A reset may lose bytes already in flight, so offsets are not fixed,
    // but every resume is a ranged request and nothing restarts from zero.
    assert_eq!(ranges.len(), 4, "{ranges:?}");
    assert!(ranges[1..].iter().all(|r| r
        .as_deref()
        .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-")));
}

#[test]
fn stall_triggers_a_reconnect_from_the_next_byte() {
    let body = sample(500_000, 3);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .stall(200_000, Duration::from_secs(8))
        .start();
    let opts = HttpOptions {
        stall_timeout: Duration::from_millis(700),
        ..fast_opts()
    };
    let started = Instant::now();
    let got = fetch_all(&srv.url("/x"), &opts).expect("stall is survived");
    assert!(got == body);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the client waited for the stalled server instead of reconnecting"
    );
    let log = srv.log();
    let reqs = gets(&log);
    assert_eq!(reqs.len(), 2, "{log:#?}");
    let resumed_at: u64 = reqs[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(n, _)| n.parse().ok())
        .expect("a resume range");
    assert!(
        resumed_at > 0 && resumed_at <= 200_000,
        "resumed at {resumed_at}"
    );
}

#[test]
fn retries_503_then_succeeds() {
    let body = sample(100_000, 4);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .fail_first(3, 503, Some(0))
        .start();
    let got = fetch_all(&srv.url("/x"), &fast_opts()).expect("succeeds after 503s");
    assert!(got == body);
    let statuses: Vec<u16> = srv.log().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 503, 200]);
}

#[test]
fn honours_retry_after_on_429() {
    let body = sample(10_000, 5);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .fail_first(1, 429, Some(1))
        .start();
    let started = Instant::now();
    let got = fetch_all(&srv.url("/x"), &fast_opts()).expect("succeeds after 429");
    assert!(got == body);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(srv.request_count(), 2);
}

#[test]
fn gives_up_after_max_attempts() {
    let srv = TestServer::builder(Body::mem(vec![1u8; 100]))
        .fail_first(1000, 503, None)
        .start();
    let opts = HttpOptions {
        max_attempts: 3,
        ..fast_opts()
    };
    let url = srv.url("/x");
    let err = fetch_all(&url, &opts).expect_err("server is down");
    assert!(err.starts_with("giving up after 3 attempts"), "{err}");
    assert!(
        err.contains(&format!("HTTP 503 Service Unavailable for {url}")),
        "{err}"
    );
    assert_eq!(srv.request_count(), 3);
}

#[test]
fn not_found_is_not_retried() {
    let srv = TestServer::builder(Body::mem(vec![1u8; 100]))
        .fail_first(1000, 404, None)
        .start();
    let url = srv.url("/missing.img");
    let err = fetch_all(&url, &fast_opts()).expect_err("404");
    assert_eq!(err, format!("HTTP 404 Not Found for {url}"));
    assert_eq!(srv.request_count(), 1);
}

#[test]
fn connection_refused_is_named() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let opts = HttpOptions {
        max_attempts: 2,
        ..fast_opts()
    };
    let url = format!("http://127.0.0.1:{port}/x");
    let err = fetch_all(&url, &opts).expect_err("nobody listens");
    assert!(
        err.contains(&format!("connection refused by {url}")),
        "{err}"
    );
}

/// Downloads `/x` from `srv`, expects the failure a changed file must give,
/// and returns what was delivered before it.
fn read_until_changed(srv: &TestServer) -> Vec<u8> {
    let rt = runtime();
    let mut src = open(&srv.url("/x"), &fast_opts(), &rt).expect("open");
    let mut got = Vec::new();
    let err = src
        .reader
        .read_to_end(&mut got)
        .expect_err("source changed");
    assert!(
        err.to_string()
            .starts_with("source changed during download"),
        "{err}"
    );
    got
}

#[test]
fn etag_change_during_download_fails_clearly() {
    let body = sample(300_000, 6);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .drop_after(vec![100_000])
        .change_after(1, Body::mem(sample(300_000, 7)))
        .start();
    let got = read_until_changed(&srv);
    // What was delivered before the failure is the old version only.
    assert!(got.len() <= 100_000 && got[..] == body[..got.len()]);
}

#[test]
fn last_modified_guards_resume_without_etag() {
    let srv = TestServer::builder(Body::mem(sample(300_000, 8)))
        .etag(false)
        .drop_after(vec![100_000])
        .change_after(1, Body::mem(sample(300_000, 9)))
        .start();
    let err = fetch_all(&srv.url("/x"), &fast_opts()).expect_err("source changed");
    assert!(err.starts_with("source changed during download"), "{err}");
    let log = srv.log();
    let if_range = log[1].if_range.clone().expect("If-Range sent");
    assert!(
        if_range.ends_with("GMT"),
        "Last-Modified used as validator: {if_range}"
    );
}

#[test]
fn length_change_is_caught_without_validators() {
    let srv = TestServer::builder(Body::mem(sample(300_000, 10)))
        .etag(false)
        .last_modified(false)
        .drop_after(vec![100_000])
        .change_after(1, Body::mem(sample(400_000, 11)))
        .start();
    let err = fetch_all(&srv.url("/x"), &fast_opts()).expect_err("length changed");
    assert!(err.starts_with("source changed during download"), "{err}");
    assert!(err.contains("length 300000 became 400000"), "{err}");
}

#[test]
fn shrunk_source_is_caught_by_416() {
    let srv = TestServer::builder(Body::mem(sample(300_000, 30)))
        .etag(false)
        .last_modified(false)
        .drop_after(vec![200_000])
        .change_after(1, Body::mem(sample(100_000, 31)))
        .start();
    let err = fetch_all(&srv.url("/x"), &fast_opts()).expect_err("file shrank");
    assert!(err.starts_with("source changed during download"), "{err}");
    assert!(err.contains("416"), "{err}");
    assert_eq!(srv.request_count(), 2, "a changed source is not retried");
}

#[test]
fn server_without_range_streams_but_cannot_resume() {
    let body = sample(300_000, 12);
    let plain = TestServer::builder(Body::mem(body.clone()))
        .ranges(false)
        .start();
    let rt = runtime();
    let mut src = open(&plain.url("/x"), &fast_opts(), &rt).expect("open");
    assert!(src.range.is_none(), "no range reads without Accept-Ranges");
    assert_eq!(src.size, Some(body.len() as u64));
    let mut got = Vec::new();
    src.reader
        .read_to_end(&mut got)
        .expect("fresh download works");
    assert!(got == body);

    let dropping = TestServer::builder(Body::mem(body.clone()))
        .ranges(false)
        .drop_after(vec![50_000])
        .start();
    let err = fetch_all(&dropping.url("/x"), &fast_opts()).expect_err("cannot resume");
    assert!(
        err.starts_with("server does not support Range; cannot resume")
            && err.contains("at byte 50000"),
        "{err}"
    );
}

#[test]
fn server_lying_about_range_fails_clearly() {
    let body = sample(300_000, 13);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .ignore_range(true)
        .drop_after(vec![50_000])
        .start();
    let err = fetch_all(&srv.url("/x"), &fast_opts()).expect_err("cannot resume");
    assert!(
        err.starts_with("server does not support Range; cannot resume"),
        "{err}"
    );

    let srv = TestServer::builder(Body::mem(body))
        .ignore_range(true)
        .start();
    let rt = runtime();
    let mut src = open(&srv.url("/x"), &fast_opts(), &rt).expect("open");
    let mut range = src.range.take().expect("advertised ranges");
    let err = range
        .read_exact_at(1000, &mut [0u8; 100])
        .expect_err("200 to a range read");
    assert!(
        err.to_string().starts_with("server does not support Range"),
        "{err}"
    );
}

#[test]
fn range_reads_are_exact_and_guarded() {
    let body = sample(500_000, 14);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .drop_after(vec![u64::MAX, 4_000])
        .start();
    let rt = runtime();
    let mut src = open(&srv.url("/x"), &fast_opts(), &rt).expect("open");
    let mut range = src.range.take().expect("range reads");
    // The first response (the stream's) stays open, unread; the first
    // range read's response drops after 4000 bytes and is resumed.
    let mut buf = vec![0u8; 100_000];
    range.read_exact_at(123_456, &mut buf).expect("range read");
    assert!(buf[..] == body[123_456..223_456]);
    range
        .read_exact_at(499_990, &mut buf[..10])
        .expect("read at the very end");
    assert!(buf[..10] == body[499_990..]);
    let err = range
        .read_exact_at(499_995, &mut buf[..10])
        .expect_err("past the end");
    assert!(err.to_string().contains("past the end"), "{err}");
    let ranges: Vec<_> = gets(&srv.log())
        .iter()
        .filter_map(|r| r.range.clone())
        .collect();
    assert_eq!(
        ranges,
        vec![
            "bytes=123456-223455",
            "bytes=127456-223455",
            "bytes=499990-499999"
        ]
    );
    drop(src);

    let changing = TestServer::builder(Body::mem(body.clone()))
        .change_after(1, Body::mem(sample(500_000, 15)))
        .start();
    let mut src = open(&changing.url("/x"), &fast_opts(), &rt).expect("open");
    let mut range = src.range.take().expect("range reads");
    let err = range.read_exact_at(0, &mut buf[..10]).expect_err("changed");
    assert!(
        err.to_string()
            .starts_with("source changed during download"),
        "{err}"
    );
}

#[test]
fn unknown_length_streams_to_the_end() {
    let body = sample(200_000, 16);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .omit_content_length(true)
        .keep_alive(false)
        .start();
    let rt = runtime();
    let mut src = open(&srv.url("/x"), &fast_opts(), &rt).expect("open");
    assert_eq!(src.size, None);
    assert!(src.range.is_none());
    let mut got = Vec::new();
    src.reader.read_to_end(&mut got).expect("read");
    assert!(got == body);
    let log = srv.log();
    let ranges: Vec<_> = gets(&log)
        .iter()
        .map(|r| (r.range.clone(), r.status))
        .collect();
    assert_eq!(
        ranges,
        vec![(None, 200), (Some("bytes=200000-".to_string()), 416)],
        "the end of a length-less body is confirmed"
    );
}

#[test]
fn close_delimited_body_cut_short_is_completed() {
    // Without Content-Length, a connection closed early looks like the end
    // of the body. With Range support the client asks what follows: a 206
    // continues the download, a 416 naming the length proves the end.
    let body = sample(200_000, 32);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .omit_content_length(true)
        .keep_alive(false)
        .drop_after(vec![50_000])
        .start();
    let got = fetch_all(&srv.url("/x"), &fast_opts()).expect("completed");
    assert!(got == body, "got {} of {} bytes", got.len(), body.len());
    let log = srv.log();
    let ranges: Vec<_> = gets(&log)
        .iter()
        .map(|r| (r.range.clone(), r.status))
        .collect();
    assert_eq!(
        ranges,
        vec![
            (None, 200),
            // The 206 has a Content-Length: its end needs no probe.
            (Some("bytes=50000-".to_string()), 206),
        ]
    );
}

#[test]
fn basic_auth_and_extra_headers_are_sent() {
    let body = sample(50_000, 17);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .basic_auth("alice", "s3cr:t")
        .require_header("X-Token", "abc")
        .start();
    let opts = HttpOptions {
        basic_auth: Some(("alice".into(), "s3cr:t".into())),
        extra_headers: vec![("X-Token".into(), "abc".into())],
        ..fast_opts()
    };
    assert!(fetch_all(&srv.url("/x"), &opts).expect("authorized") == body);

    let without_header = HttpOptions {
        extra_headers: Vec::new(),
        ..opts.clone()
    };
    let err = fetch_all(&srv.url("/x"), &without_header).expect_err("403");
    assert!(err.starts_with("HTTP 403 Forbidden for"), "{err}");

    let url = srv.url("/x");
    let err = fetch_all(&url, &fast_opts()).expect_err("401");
    assert_eq!(err, format!("HTTP 401 Unauthorized for {url}"));
}

#[test]
fn url_credentials_are_used_but_never_displayed() {
    let body = sample(20_000, 18);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .basic_auth("bob", "hunter2")
        .start();
    let url = format!("http://bob:hunter2@127.0.0.1:{}/x", srv.port());
    let rt = runtime();
    let mut src = open(&url, &fast_opts(), &rt).expect("URL credentials work");
    assert_eq!(src.display, srv.url("/x"));
    assert!(!SourceSpec::parse(&url)
        .expect("url")
        .display()
        .contains("hunter2"));
    let mut got = Vec::new();
    src.reader.read_to_end(&mut got).expect("read");
    assert!(got == body);

    let wrong = format!("http://bob:wrong@127.0.0.1:{}/x", srv.port());
    let err = open(&wrong, &fast_opts(), &rt).err().expect("401");
    assert!(!err.contains("wrong"), "{err}");
}

#[test]
fn cross_origin_redirect_drops_credentials() {
    let body = sample(80_000, 19);
    let target = TestServer::serve(Body::mem(body.clone()));
    let origin = TestServer::builder(Body::mem(Vec::new()))
        .redirect_to(&target.url("/elsewhere.img"))
        .start();
    let opts = HttpOptions {
        basic_auth: Some(("alice".into(), "pw".into())),
        extra_headers: vec![("X-Secret".into(), "xyz".into())],
        ..fast_opts()
    };
    let got = fetch_all(&origin.url("/disk.img"), &opts).expect("redirect followed");
    assert!(got == body);

    let first = &origin.log()[0];
    assert!(first.authorization.is_some() && first.header("x-secret") == Some("xyz"));
    let tlog = target.log();
    assert_eq!(tlog.len(), 1);
    assert_eq!(tlog[0].path, "/elsewhere.img");
    assert_eq!(
        tlog[0].authorization, None,
        "credentials leaked to another origin"
    );
    assert_eq!(
        tlog[0].header("x-secret"),
        None,
        "extra header leaked to another origin"
    );
}

#[test]
fn same_origin_redirect_keeps_credentials() {
    let body = b"same origin body".to_vec();
    let srv = PathRedirectServer::start(body.clone());
    let opts = HttpOptions {
        basic_auth: Some(("alice".into(), "pw".into())),
        extra_headers: vec![("X-Secret".into(), "xyz".into())],
        ..fast_opts()
    };
    let got = fetch_all(&format!("{}/start", srv.base), &opts).expect("redirect followed");
    assert_eq!(got, body);
    let log = srv.log();
    let paths: Vec<&str> = log.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, vec!["/start", "/final"]);
    assert!(
        log.iter().all(|(_, creds)| *creds),
        "same-origin hop lost credentials: {log:?}"
    );

    let err = fetch_all(&format!("{}/loop", srv.base), &opts).expect_err("redirect loop");
    assert!(err.contains("more than 10 redirects"), "{err}");
    assert_eq!(srv.log().len(), 2 + 11);
}

/// A minimal HTTP/1.0-style server for same-origin redirects, which the
/// shared test server cannot do (it redirects every path to one URL known
/// before its port is): `/start` redirects to `/final` (200, the body), and
/// `/loop` redirects to itself. It logs each path and whether both the
/// Authorization and the X-Secret headers came along.
struct PathRedirectServer {
    base: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
}

impl PathRedirectServer {
    fn start(body: Vec<u8>) -> PathRedirectServer {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (mut auth, mut secret) = (false, false);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    auth |= lower.starts_with("authorization: basic ");
                    secret |= lower.starts_with("x-secret: xyz");
                }
                log2.lock()
                    .expect("log")
                    .push((path.clone(), auth && secret));
                let response = match path.as_str() {
                    "/final" => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                    "/start" => b"HTTP/1.1 302 Found\r\nLocation: /final\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    _ => b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                };
                let _ = stream.write_all(&response);
            }
        });
        PathRedirectServer { base, log }
    }

    fn log(&self) -> Vec<(String, bool)> {
        self.log.lock().expect("log").clone()
    }
}

#[test]
fn custom_ca_directory_is_trusted() {
    let certs = make_ca_and_cert("localhost");
    let body = sample(120_000, 20);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .tls(&certs.server_cert_pem, &certs.server_key_pem)
        .start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.crt"), &certs.ca_cert_pem).expect("write CA");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").expect("write");
    std::fs::write(dir.path().join(".hidden"), "ignored").expect("write");
    let opts = HttpOptions {
        ca_dirs: vec![dir.path().to_path_buf()],
        ..fast_opts()
    };
    assert!(srv.url("/x").starts_with("https://localhost:"));
    assert!(fetch_all(&srv.url("/x"), &opts).expect("trusted via CA dir") == body);

    let err = fetch_all(&srv.url("/x"), &fast_opts()).expect_err("untrusted");
    assert!(
        err.starts_with("TLS failure connecting to https://localhost:"),
        "{err}"
    );
    // An untrusted certificate is not retried.
    assert_eq!(srv.log().len(), 1);
}

#[test]
fn insecure_tls_accepts_any_certificate() {
    let certs = make_ca_and_cert("localhost");
    let body = sample(60_000, 21);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .tls(&certs.server_cert_pem, &certs.server_key_pem)
        .drop_after(vec![20_000])
        .start();
    let opts = HttpOptions {
        insecure_tls: true,
        ..fast_opts()
    };
    assert!(fetch_all(&srv.url("/x"), &opts).expect("insecure TLS") == body);
}

#[test]
fn parallel_segments_deliver_identical_bytes_in_order() {
    let body = sample((1 << 20) + 123, 22);
    let srv = TestServer::serve(Body::mem(body.clone()));
    let segment = 64 << 10;
    let opts = HttpOptions {
        connections: Connections::Fixed(4),
        segment_size: segment,
        ..fast_opts()
    };
    let got = fetch_all(&srv.url("/x"), &opts).expect("segmented download");
    assert!(got == body);

    let log = srv.log();
    let mut ranges: Vec<String> = gets(&log).iter().filter_map(|r| r.range.clone()).collect();
    ranges.sort_by_key(|r| {
        r.trim_start_matches("bytes=")
            .split('-')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
    });
    let expected: Vec<String> = (0..body.len())
        .step_by(segment)
        .map(|start| format!("bytes={start}-{}", (start + segment).min(body.len()) - 1))
        .collect();
    assert_eq!(ranges, expected);
    assert!(
        srv.connection_count() >= 4,
        "used {} connections",
        srv.connection_count()
    );
}

#[test]
fn parallel_segments_resume_after_drops() {
    let body = sample(700_000, 23);
    let srv = TestServer::builder(Body::mem(body.clone()))
        // The first response is the probe (dropped by the client), then
        // segment responses break after a few bytes.
        .drop_after(vec![u64::MAX, 1_000, 5_000, 30_000, 7])
        .start();
    let opts = HttpOptions {
        connections: Connections::Fixed(4),
        segment_size: 100_000,
        ..fast_opts()
    };
    let got = fetch_all(&srv.url("/x"), &opts).expect("segmented download with drops");
    assert!(got == body);
}

#[test]
fn wrappers_unwrap_over_http() {
    let raw = sample(400_000, 24);
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).expect("gz");
        e.finish().expect("gz")
    };
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&raw).expect("xz");
        e.finish().expect("xz")
    };
    let zst = zstd::encode_all(&raw[..], 3).expect("zstd");
    for (wrapper, bytes) in [(Wrapper::Gzip, gz), (Wrapper::Xz, xz), (Wrapper::Zstd, zst)] {
        // A drop in the middle of the compressed stream: the decoder must
        // not notice.
        let srv = TestServer::builder(Body::mem(bytes.clone()))
            .drop_after(vec![bytes.len() as u64 / 2])
            .start();
        let rt = runtime();
        let src = open(&srv.url("/x"), &fast_opts(), &rt).expect("open");
        assert_eq!(identify(&bytes), Signature::Wrapper(wrapper));
        let mut reader = decoder(wrapper, src.reader).expect("decoder");
        let mut got = Vec::new();
        reader.read_to_end(&mut got).expect("decode");
        assert!(got == raw, "{wrapper} round trip");

        if wrapper != Wrapper::Zstd {
            let cut = TestServer::serve(Body::mem(bytes[..bytes.len() * 2 / 3].to_vec()));
            let src = open(&cut.url("/x"), &fast_opts(), &rt).expect("open");
            let mut reader = decoder(wrapper, src.reader).expect("decoder");
            let err = reader.read_to_end(&mut Vec::new()).expect_err("truncated");
            assert!(
                !err.to_string().is_empty(),
                "{wrapper}: truncated must fail"
            );
        }
    }
}

/// hickory must honour /etc/hosts (containers get names with --add-host).
/// Uses a name from this machine's /etc/hosts that maps to 127.0.0.1 other
/// than "localhost" (which resolvers special-case).
#[test]
fn host_names_resolve_through_etc_hosts() {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let name = hosts.lines().find_map(|line| {
        let mut fields = line.split('#').next()?.split_whitespace();
        (fields.next()? == "127.0.0.1")
            .then(|| fields.find(|n| !n.starts_with("localhost")))
            .flatten()
            .map(str::to_string)
    });
    let Some(name) = name else {
        eprintln!("skipped: /etc/hosts maps no name other than localhost to 127.0.0.1");
        return;
    };
    let body = sample(10_000, 25);
    let srv = TestServer::serve(Body::mem(body.clone()));
    let url = format!("http://{name}:{}/x", srv.port());
    assert!(fetch_all(&url, &fast_opts()).expect("resolved via /etc/hosts") == body);
}

#[test]
fn file_source_reads_and_range_reads() {
    let body = sample(300_000, 26);
    let mut file = tempfile::NamedTempFile::new().expect("tempfile");
    file.write_all(&body).expect("write");
    let rt = runtime();
    let mut src = source::open(
        &SourceSpec::parse(file.path().to_str().expect("utf8")).expect("path"),
        &HttpOptions::default(),
        rt.handle(),
    )
    .expect("open file");
    assert_eq!(src.size, Some(body.len() as u64));
    let mut range = src.range.take().expect("files are seekable");
    let mut buf = [0u8; 1000];
    range.read_exact_at(250_000, &mut buf).expect("pread");
    assert!(buf[..] == body[250_000..251_000]);
    let mut got = Vec::new();
    src.reader.read_to_end(&mut got).expect("read");
    assert!(got == body, "range reads must not move the stream");

    let err = source::open(
        &SourceSpec::parse("/nonexistent/image.qcow2").expect("path"),
        &HttpOptions::default(),
        rt.handle(),
    )
    .err()
    .expect("missing file");
    assert!(
        err.to_string()
            .starts_with("cannot open /nonexistent/image.qcow2"),
        "{err}"
    );
}

#[test]
fn whole_file_retry_works_without_range_support() {
    let body = sample(100_000, 27);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .ranges(false)
        .drop_after(vec![0])
        .start();
    // Broken before the first byte: asking again for the whole file is a
    // fresh start, not a resume, so a server without Range is fine.
    assert!(fetch_all(&srv.url("/x"), &fast_opts()).expect("fresh retry") == body);
    assert_eq!(gets(&srv.log()).len(), 2);
}

#[test]
fn works_from_a_spawn_blocking_thread() {
    // The pipeline runs on a tokio blocking thread; open() and the reader
    // must work there (block_on / blocking_recv are allowed on it).
    let body = sample(200_000, 28);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .drop_after(vec![50_000])
        .start();
    let url = srv.url("/x");
    let rt = runtime();
    let handle = rt.handle().clone();
    let got = rt
        .block_on(rt.spawn_blocking(move || {
            let mut src = source::open(&spec(&url), &fast_opts(), &handle)
                .map_err(|e| streamdisk::error_chain(&e))?;
            let mut out = Vec::new();
            src.reader
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(out)
        }))
        .expect("join")
        .expect("download");
    assert!(got == body);
}

/// What the h2 test server saw: each request's version and Range, and the
/// number of TCP connections.
#[derive(Default)]
struct H2Log {
    requests: Vec<(hyper::Version, Option<String>)>,
    connections: usize,
}

/// An HTTPS server that offers only h2 by ALPN (hyper), with Range support.
fn start_h2_server(
    rt: &tokio::runtime::Runtime,
    cert_pem: &str,
    key_pem: &str,
    body: Vec<u8>,
) -> (u16, std::sync::Arc<std::sync::Mutex<H2Log>>) {
    use http_body_util::Full;
    use hyper::header::{HeaderValue, ACCEPT_RANGES, CONTENT_RANGE, RANGE};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::{Arc, Mutex};

    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("key")
        .expect("a key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log = Arc::new(Mutex::new(H2Log::default()));
    let seen = log.clone();
    let body = bytes::Bytes::from(body);
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            seen.lock().expect("log").connections += 1;
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let seen = seen.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let range = req
                        .headers()
                        .get(RANGE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    seen.lock()
                        .expect("log")
                        .requests
                        .push((req.version(), range.clone()));
                    let span = range
                        .as_deref()
                        .and_then(|r| r.strip_prefix("bytes="))
                        .and_then(|r| r.split_once('-'))
                        .and_then(|(a, b)| {
                            Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                        });
                    let resp = match span {
                        Some((first, last)) => {
                            let mut resp =
                                hyper::Response::new(Full::new(body.slice(first..=last)));
                            *resp.status_mut() = hyper::StatusCode::PARTIAL_CONTENT;
                            resp.headers_mut().insert(
                                CONTENT_RANGE,
                                HeaderValue::from_str(&format!(
                                    "bytes {first}-{last}/{}",
                                    body.len()
                                ))
                                .expect("header"),
                            );
                            resp
                        }
                        None => hyper::Response::new(Full::new(body.clone())),
                    };
                    let mut resp = resp;
                    resp.headers_mut()
                        .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, log)
}

#[test]
fn http2_is_negotiated_when_offered() {
    let certs = make_ca_and_cert("localhost");
    let body = sample(300_000, 29);
    let rt = runtime();
    let (port, log) = start_h2_server(
        &rt,
        &certs.server_cert_pem,
        &certs.server_key_pem,
        body.clone(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), &certs.ca_cert_pem).expect("write CA");
    let opts = HttpOptions {
        ca_dirs: vec![dir.path().to_path_buf()],
        ..fast_opts()
    };
    let url = format!("https://localhost:{port}/x");
    let mut src = open(&url, &opts, &rt).expect("open");
    let mut got = Vec::new();
    src.reader.read_to_end(&mut got).expect("read");
    assert!(got == body);
    {
        let log = log.lock().expect("log");
        assert_eq!(log.requests, vec![(hyper::Version::HTTP_2, None)]);
    }
    drop(src);

    // Segments over HTTP/2 still use one connection each, so that
    // per-connection throughput caps are multiplied.
    let opts = HttpOptions {
        connections: Connections::Fixed(4),
        segment_size: 64 << 10,
        ..opts
    };
    let before = log.lock().expect("log").connections;
    let mut src = open(&url, &opts, &rt).expect("open");
    let mut got = Vec::new();
    src.reader.read_to_end(&mut got).expect("read");
    assert!(got == body);
    let log = log.lock().expect("log");
    let ranged = log
        .requests
        .iter()
        .filter(|(v, r)| *v == hyper::Version::HTTP_2 && r.is_some())
        .count();
    assert_eq!(ranged, 5, "300000 bytes in 64 KiB segments");
    assert!(
        log.connections - before >= 4,
        "{} connections",
        log.connections - before
    );
}

/// Auto mode (the default) needs files of at least this length to open a
/// second connection (`AUTO_MIN_LENGTH` in the HTTP source).
const AUTO_MIN: usize = 64 << 20;

/// The default segment size.
const SEGMENT: usize = source::DEFAULT_SEGMENT;

/// The start offsets of the ranged GETs, in request order.
fn range_starts(log: &[RequestRecord]) -> Vec<u64> {
    gets(log)
        .iter()
        .filter_map(|r| r.range.as_deref())
        .filter_map(|r| r.trim_start_matches("bytes=").split('-').next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A ranged GET asked for bytes up to the file's last byte. (Not always the
/// last one logged: the server logs a request when it answers, and two
/// requests sent a moment apart on two connections can be answered in
/// either order.)
fn assert_some_request_reaches_the_end(log: &[RequestRecord], len: usize) {
    let end = format!("-{}", len - 1);
    assert!(
        gets(log)
            .iter()
            .filter_map(|r| r.range.as_deref())
            .any(|r| r.ends_with(&end)),
        "no request for the end: {log:?}"
    );
}

#[test]
fn auto_mode_segments_large_files_over_two_connections() {
    let body = sample(AUTO_MIN + 3 * SEGMENT + 4567, 40);
    let srv = TestServer::serve(Body::mem(body.clone()));
    let rt = runtime();
    let (mut src, pace) = open_paced(&srv.url("/big"), &fast_opts(), &rt);
    assert!(pace.reads_ahead(), "a large file is segmented");
    let mut got = Vec::new();
    src.reader.read_to_end(&mut got).expect("download");
    assert!(got == body, "bytes differ");
    let log = srv.log();
    let starts = range_starts(&log);
    let segments = body.len().div_ceil(SEGMENT);
    // One ranged GET per segment. (On a loaded machine two answers slower
    // than 10 ms in a row may end the segments early: then the last GET
    // asks for the rest, still from a segment boundary. Four segments at
    // least come first: a connection's first answer is not timed.)
    assert!(
        starts.len() >= 5 && starts.len() <= segments,
        "{} ranged GETs for {segments} segments",
        starts.len()
    );
    assert!(starts.iter().all(|s| s % SEGMENT as u64 == 0), "{starts:?}");
    // The probe's connection, then one per segment connection.
    assert!(
        srv.connection_count() >= 3,
        "{} connections",
        srv.connection_count()
    );

    // Small files stream over the first response alone.
    let small = sample(300_000, 41);
    let srv = TestServer::serve(Body::mem(small.clone()));
    let rt = runtime();
    let (mut src, pace) = open_paced(&srv.url("/small"), &fast_opts(), &rt);
    assert!(!pace.reads_ahead());
    let mut got = Vec::new();
    src.reader.read_to_end(&mut got).expect("download");
    assert!(got == small);
    let log = srv.log();
    assert_eq!(gets(&log).len(), 1, "{log:?}");
}

#[test]
fn auto_mode_stops_reading_ahead_when_told() {
    let body = sample(AUTO_MIN + 5 * SEGMENT, 42);
    let srv = TestServer::serve(Body::mem(body.clone()));
    let rt = runtime();
    let (mut src, pace) = open_paced(&srv.url("/big"), &fast_opts(), &rt);
    assert!(pace.reads_ahead(), "segmented");
    // What the pipeline does when it finds a wrapper or a compressed cluster.
    pace.set_decompressing();
    let mut got = Vec::new();
    src.reader.read_to_end(&mut got).expect("download");
    assert!(got == body, "bytes differ");
    // At most the first segment (alone, before any read-ahead), then the
    // rest in one request.
    let log = srv.log();
    let starts = range_starts(&log);
    assert!(
        starts == [0] || starts == [0, SEGMENT as u64],
        "{starts:?}: {log:?}"
    );
    assert_some_request_reaches_the_end(&log, body.len());
}

#[test]
fn auto_mode_gives_up_segments_when_answers_are_slow() {
    let body = sample(AUTO_MIN + SEGMENT, 43);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .answer_delay(Duration::from_millis(25))
        .start();
    let got = fetch_all(&srv.url("/far"), &fast_opts()).expect("download");
    assert!(got == body, "bytes differ");
    // 33 segments without the switch; two slow answers on reused connections
    // (the first request of each connection does not count) end them.
    let log = srv.log();
    let ranged = range_starts(&log).len();
    assert!(ranged <= 8, "{ranged} ranged requests: {log:?}");
    assert_some_request_reaches_the_end(&log, body.len());
}

#[test]
fn auto_mode_falls_back_to_one_stream_when_ranges_are_ignored() {
    // Advertises ranges, then answers every range with the whole file.
    let body = sample(AUTO_MIN + 1000, 44);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .ignore_range(true)
        .start();
    let got = fetch_all(&srv.url("/liar"), &fast_opts()).expect("download");
    assert!(got == body, "bytes differ");
}

#[test]
fn auto_mode_falls_back_when_the_server_allows_one_download_at_a_time() {
    let body = sample(AUTO_MIN + 2 * SEGMENT, 45);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .one_at_a_time(true)
        // Paced, so that each response is still being sent when the next
        // segment's request comes (on loopback, a whole segment fits in the
        // socket buffers and its response could end before the next one
        // is asked for).
        .rate_limit(100 << 20)
        .start();
    let got = fetch_all(&srv.url("/single"), &fast_opts()).expect("download");
    assert!(got == body, "bytes differ");
    let log = srv.log();
    assert!(
        log.iter().any(|r| r.status == 503),
        "the server refused a second download"
    );
}

#[test]
fn explicit_connection_count_is_kept_for_slow_answers() {
    // A count given by hand is the user's call: no switch to one stream.
    let body = sample(600_000, 46);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .answer_delay(Duration::from_millis(15))
        .start();
    let opts = HttpOptions {
        connections: Connections::Fixed(2),
        segment_size: 64 << 10,
        ..fast_opts()
    };
    let got = fetch_all(&srv.url("/x"), &opts).expect("download");
    assert!(got == body);
    assert_eq!(
        range_starts(&srv.log()).len(),
        600_000usize.div_ceil(64 << 10)
    );
}

#[test]
fn auto_mode_reports_a_changed_file_as_changed() {
    // The file changes after the probe and the first segment: the segments
    // fail, the fallback stream fails the same way, and the message says why.
    let body = sample(AUTO_MIN + 4 * SEGMENT, 47);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .change_after(2, Body::mem(sample(AUTO_MIN + 4 * SEGMENT, 48)))
        .start();
    let got = read_until_changed(&srv);
    assert!(
        got[..] == body[..got.len()],
        "only the old version was delivered"
    );
}

/// Credentials computed per request: added for the original origin only,
/// refreshed once on a 401 (as a registry token or an expired signature
/// needs), never sent after a redirect to another origin.
#[derive(Debug, Default)]
struct TestAuthorizer {
    good: std::sync::atomic::AtomicBool,
    refreshes: std::sync::atomic::AtomicUsize,
}

impl streamdisk::source::Authorize for TestAuthorizer {
    fn authorize<'a>(
        &'a self,
        req: &'a mut reqwest::Request,
    ) -> streamdisk::source::auth::BoxFuture<'a, Result<(), streamdisk::source::SourceError>> {
        Box::pin(async move {
            let pass = if self.good.load(std::sync::atomic::Ordering::SeqCst) {
                "p"
            } else {
                "wrong"
            };
            let value = format!(
                "Basic {}",
                crate::common::server::base64(format!("u:{pass}").as_bytes())
            );
            req.headers_mut()
                .insert("authorization", value.parse().expect("a header value"));
            req.headers_mut()
                .insert("x-token", "secret".parse().expect("a header value"));
            Ok(())
        })
    }

    fn refresh<'a>(
        &'a self,
        challenge: Option<&'a str>,
    ) -> streamdisk::source::auth::BoxFuture<'a, Result<bool, streamdisk::source::SourceError>>
    {
        Box::pin(async move {
            assert!(
                challenge.is_some_and(|c| c.starts_with("Basic")),
                "{challenge:?}"
            );
            self.refreshes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.good.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(true)
        })
    }
}

#[test]
fn an_authorizer_is_refreshed_on_401_and_stays_on_its_origin() {
    let body = sample(100_000, 60);
    let srv = TestServer::builder(Body::mem(body.clone()))
        .basic_auth("u", "p")
        .start();
    let auth = std::sync::Arc::new(TestAuthorizer::default());
    let opts = HttpOptions {
        authorizer: Some(auth.clone()),
        ..fast_opts()
    };
    assert!(fetch_all(&srv.url("/x"), &opts).expect("authorized after a refresh") == body);
    assert_eq!(auth.refreshes.load(std::sync::atomic::Ordering::SeqCst), 1);
    let log = srv.log();
    assert_eq!(log.first().map(|r| r.status), Some(401), "{log:?}");
    assert!(log.iter().skip(1).all(|r| r.status / 100 == 2), "{log:?}");

    // A redirect to another origin carries none of it.
    let real = TestServer::serve(Body::mem(body.clone()));
    let hop = TestServer::builder(Body::mem(Vec::new()))
        .redirect_to(&real.url("/real"))
        .start();
    let auth = std::sync::Arc::new(TestAuthorizer::default());
    auth.good.store(true, std::sync::atomic::Ordering::SeqCst);
    let opts = HttpOptions {
        authorizer: Some(auth),
        ..fast_opts()
    };
    assert!(fetch_all(&hop.url("/start"), &opts).expect("redirected") == body);
    let first = hop.log();
    assert!(
        first
            .iter()
            .all(|r| r.headers.iter().any(|(n, _)| n == "x-token")),
        "the original origin gets the credentials: {first:?}"
    );
    let other = real.log();
    assert!(!other.is_empty());
    assert!(
        other
            .iter()
            .all(|r| r.authorization.is_none() && !r.headers.iter().any(|(n, _)| n == "x-token")),
        "no credentials after a cross-origin redirect: {other:?}"
    );
}
