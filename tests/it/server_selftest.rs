//! Checks of the test HTTP server itself (tests/common/server.rs), with a raw HTTP client,
//! so that a failure elsewhere can be trusted to be the importer's, not the server's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::server::{make_ca_and_cert, Body, TestServer};

/// Sends one request on a fresh connection and reads until the server closes or the body
/// announced by Content-Length is complete. Returns (status, headers, body).
fn get(port: u16, method: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} /img HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let body = all[split + 4..].to_vec();
    let status = head[9..12].parse().unwrap();
    (status, head, body)
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn ranges_head_and_416() {
    let d = data(100_000);
    let srv = TestServer::serve(Body::mem(d.clone()));
    let (st, head, body) = get(srv.port(), "GET", &[]);
    assert_eq!(st, 200);
    assert!(head.contains("Accept-Ranges: bytes"));
    assert_eq!(body, d);
    let (st, head, body) = get(srv.port(), "GET", &[("Range", "bytes=10-19")]);
    assert_eq!(st, 206);
    assert!(head.contains("Content-Range: bytes 10-19/100000"), "{head}");
    assert_eq!(body, &d[10..20]);
    let (st, _, body) = get(srv.port(), "GET", &[("Range", "bytes=99990-")]);
    assert_eq!((st, body.as_slice()), (206, &d[99990..]));
    let (st, _, body) = get(srv.port(), "GET", &[("Range", "bytes=-5")]);
    assert_eq!((st, body.as_slice()), (206, &d[99995..]));
    let (st, head, _) = get(srv.port(), "GET", &[("Range", "bytes=100000-")]);
    assert_eq!(st, 416);
    assert!(head.contains("Content-Range: bytes */100000"));
    let (st, head, body) = get(srv.port(), "HEAD", &[]);
    assert_eq!(st, 200);
    assert!(head.contains("Content-Length: 100000"));
    assert!(body.is_empty());
    let log = srv.log();
    assert_eq!(log.len(), 6);
    assert_eq!(log[1].range.as_deref(), Some("bytes=10-19"));
    assert_eq!(log[5].method, "HEAD");
}

#[test]
fn file_body_no_ranges_and_ignore_range() {
    let dir = crate::common::tempdir();
    let p = dir.path().join("f");
    let d = data(300_000);
    std::fs::write(&p, &d).unwrap();
    let srv = TestServer::builder(Body::file(&p)).ranges(false).start();
    let (st, head, body) = get(srv.port(), "GET", &[("Range", "bytes=5-9")]);
    assert_eq!(st, 200);
    assert!(!head.contains("Accept-Ranges"));
    assert_eq!(body, d);
    let srv = TestServer::builder(Body::file(&p))
        .ignore_range(true)
        .start();
    let (st, head, body) = get(srv.port(), "GET", &[("Range", "bytes=5-9")]);
    assert_eq!(st, 200);
    assert!(head.contains("Accept-Ranges: bytes"));
    assert_eq!(body.len(), d.len());
}

#[test]
fn drops_stall_and_failures() {
    let d = data(200_000);
    let srv = TestServer::builder(Body::mem(d.clone()))
        .fail_first(2, 503, Some(1))
        .drop_after(vec![1000, 5000])
        .stall(150_000, Duration::from_millis(1500))
        .start();
    let (st, head, _) = get(srv.port(), "GET", &[]);
    assert_eq!(st, 503);
    assert!(head.contains("Retry-After: 1"));
    assert_eq!(get(srv.port(), "GET", &[]).0, 503);
    let (st, _, body) = get(srv.port(), "GET", &[]);
    assert_eq!((st, body.len()), (200, 1000));
    let (st, _, body) = get(srv.port(), "GET", &[("Range", "bytes=1000-")]);
    assert_eq!((st, body.as_slice()), (206, &d[1000..6000]));
    let t = Instant::now();
    let (st, _, body) = get(srv.port(), "GET", &[("Range", "bytes=6000-")]);
    assert!(t.elapsed() >= Duration::from_millis(1500));
    assert_eq!((st, body.as_slice()), (206, &d[6000..]));
    // The stall happens once.
    let t = Instant::now();
    get(srv.port(), "GET", &[]);
    assert!(t.elapsed() < Duration::from_millis(1500));
}

#[test]
fn etag_change_and_if_range() {
    let srv = TestServer::builder(Body::mem(data(1000)))
        .change_after(2, Body::mem(vec![9u8; 1000]))
        .start();
    let (_, head, _) = get(srv.port(), "GET", &[("Range", "bytes=0-9")]);
    assert!(head.contains("ETag: \"v1\""));
    let (st, _, _) = get(
        srv.port(),
        "GET",
        &[("Range", "bytes=0-9"), ("If-Range", "\"v1\"")],
    );
    assert_eq!(st, 206);
    let (st, head, body) = get(
        srv.port(),
        "GET",
        &[("Range", "bytes=0-9"), ("If-Range", "\"v1\"")],
    );
    assert_eq!(st, 200, "If-Range mismatch must give the whole new body");
    assert!(head.contains("ETag: \"v2\""));
    assert_eq!(body, vec![9u8; 1000]);
}

#[test]
fn auth_header_and_redirect() {
    let srv = TestServer::builder(Body::mem(data(10)))
        .basic_auth("user", "secret")
        .require_header("X-Token", "abc")
        .start();
    assert_eq!(get(srv.port(), "GET", &[]).0, 401);
    let auth = format!("Basic {}", crate::common::server::base64(b"user:secret"));
    assert_eq!(get(srv.port(), "GET", &[("Authorization", &auth)]).0, 403);
    assert_eq!(
        get(
            srv.port(),
            "GET",
            &[("Authorization", &auth), ("X-Token", "abc")]
        )
        .0,
        200
    );
    assert_eq!(srv.log()[2].authorization.as_deref(), Some(auth.as_str()));
    let r = TestServer::builder(Body::mem(vec![]))
        .redirect_to(&srv.url("/img"))
        .start();
    let (st, head, _) = get(r.port(), "GET", &[]);
    assert_eq!(st, 302);
    assert!(head.contains(&format!("Location: {}", srv.url("/img"))));
}

#[test]
fn rate_limit_paces_the_body() {
    let srv = TestServer::builder(Body::mem(data(200_000)))
        .rate_limit(400_000)
        .start();
    let t = Instant::now();
    let (_, _, body) = get(srv.port(), "GET", &[]);
    assert_eq!(body.len(), 200_000);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn tls_serves_with_generated_cert() {
    let certs = make_ca_and_cert("localhost");
    let d = data(50_000);
    let srv = TestServer::builder(Body::mem(d.clone()))
        .tls(&certs.server_cert_pem, &certs.server_key_pem)
        .start();
    assert!(srv.base().starts_with("https://localhost:"));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut certs.ca_cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "localhost".try_into().unwrap())
            .unwrap();
    let sock = TcpStream::connect(("127.0.0.1", srv.port())).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nRange: bytes=100-199\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut all = Vec::new();
    let _ = tls.read_to_end(&mut all);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(all.starts_with(b"HTTP/1.1 206"));
    assert_eq!(&all[split + 4..], &d[100..200]);
}

#[test]
fn support_cgroup_runner_and_loop_device() {
    // The runner: the binary runs (whatever it does yet) inside a memory cgroup whose
    // peak is readable afterwards.
    if let Some(cg) = crate::common::MemCgroup::new(64 << 20) {
        let run = crate::common::Streamdisk::new()
            .arg("--help")
            .in_cgroup(&cg)
            .run();
        assert!(run.status.code().is_some(), "{run:?}");
        assert!(cg.peak().is_some_and(|p| p > 0), "no peak memory recorded");
    }
    let dir = crate::common::tempdir();
    let f = dir.path().join("backing");
    crate::common::fill_file(&f, 1 << 20, 0xA5);
    if let Some(l) = crate::common::LoopDevice::attach(&f) {
        assert!(l.dev.exists());
        crate::common::assert_same_prefix(&l.dev, &f, 1 << 20);
    }
}

#[test]
fn support_first_difference() {
    let dir = crate::common::tempdir();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    crate::common::make_raw(&a, 3 << 20, &[(100, 5000, crate::common::Fill::Random(1))]);
    std::fs::copy(&a, &b).unwrap();
    assert_eq!(crate::common::first_difference(&a, &b, 3 << 20), None);
    crate::common::qcow2::patch(&b, (2 << 20) + 77, &[1]);
    assert_eq!(
        crate::common::first_difference(&a, &b, 3 << 20),
        Some((2 << 20) + 77)
    );
}
