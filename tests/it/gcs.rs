//! `gs://` sources against gcp-storage-emulator on loopback. The emulator
//! checks no credentials, so a [`Proxy`] in front of it answers 401 to any
//! request without a bearer token the test's [`TokenServer`] issued (and
//! that has not expired); the token server checks each JWT's RS256
//! signature against the public half of a key made with openssl. Every
//! conversion is compared with qemu-img's.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::objstore::{
    object_qcow2, object_raw, python_or_skip, Proxy, ProxyRules, Store, TestKey, TokenServer,
};
use crate::common::{assert_same_bytes, tempdir, wrap, Fill, Streamdisk, Wrapper};

/// A 5 MiB sparse disk.
fn raw_disk(dir: &Path, seed: u64) -> PathBuf {
    let regions = [
        (0, 1 << 20, Fill::Random(seed)),
        (2 << 20, 512 << 10, Fill::Text),
        (3 << 20, 1 << 20, Fill::Random(seed + 1)),
    ];
    object_raw(dir, seed, 5 << 20, &regions)
}

/// A qcow2 with compressed and plain clusters, and its oracle conversion.
fn mixed_qcow2(dir: &Path, seed: u64) -> (PathBuf, PathBuf) {
    object_qcow2(&raw_disk(dir, seed), "write -P 0x33 4M 256k")
}

fn store(py: &Path, objects: &[(&str, &Path)]) -> Store {
    let mut s = Store::start(py, "gcs");
    s.bucket("bkt");
    for (name, file) in objects {
        s.put("bkt", name, file, false);
    }
    s
}

fn convert(src: &str, out: &Path, key: Option<&Path>) -> Streamdisk {
    let sd = Streamdisk::convert(src, out).env_remove("STREAMDISK_RESOLVE");
    match key {
        Some(k) => sd.env("GOOGLE_APPLICATION_CREDENTIALS", k),
        None => sd.env_remove("GOOGLE_APPLICATION_CREDENTIALS"),
    }
}

#[test]
fn anonymous_public_object() {
    let Some(py) = python_or_skip("GCS tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 11);
    let s = store(&py, &[("images/disk.qcow2", &img)]);
    let proxy = Proxy::start(s.port, ProxyRules::default());
    let out = d.path().join("out.raw");
    convert("gs://bkt/images/disk.qcow2", &out, None)
        .args(["--gcs-endpoint", &proxy.url()])
        .run()
        .assert_ok();
    assert_same_bytes(&out, &expected);
    let heads = proxy.heads();
    assert!(
        heads.iter().all(|h| h
            .starts_with("GET /storage/v1/b/bkt/o/images%2Fdisk.qcow2?alt=media ")
            && !h.to_ascii_lowercase().contains("authorization:")),
        "{heads:?}"
    );

    let run = Streamdisk::new()
        .args([
            "info",
            "gs://bkt/images/disk.qcow2",
            "--gcs-endpoint",
            &proxy.url(),
        ])
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .run();
    run.assert_ok();
    assert!(run.stdout.contains("qcow2"), "{}", run.stdout);

    let run = convert("gs://bkt/missing.qcow2", &d.path().join("x.raw"), None)
        .args(["--gcs-endpoint", &proxy.url()])
        .run();
    run.assert_refused(&["gs://bkt/missing.qcow2 not found"]);
}

#[test]
fn service_account_tokens_and_a_wrong_key() {
    let Some(py) = python_or_skip("GCS tests") else {
        return;
    };
    let d = tempdir();
    let raw = raw_disk(d.path(), 12);
    let Some(xz) = wrap(&raw, Wrapper::Xz) else {
        return;
    };
    let s = store(&py, &[("raw/disk.raw.xz", &xz)]);
    // The key's token_uri must be known before the key file is written.
    let probe = TestKey::make(d.path(), "http://127.0.0.1:1/token");
    let Some(probe) = probe else { return };
    let tokens = TokenServer::start(probe.public_der.clone(), probe.email.clone(), 3600);
    let key = rewrite_token_uri(&probe, &tokens.uri());
    let proxy = Proxy::start(
        s.port,
        ProxyRules {
            bearer: Some(Arc::new(TokenServer::accepts(&tokens.issued))),
            ..ProxyRules::default()
        },
    );

    // Without a key the proxy refuses: the message says what to give.
    let run = convert("gs://bkt/raw/disk.raw.xz", &d.path().join("x.raw"), None)
        .args(["--gcs-endpoint", &proxy.url()])
        .run();
    let line = run.assert_refused(&["denied"]);
    assert!(line.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{line}");

    let out = d.path().join("out.raw");
    let run = convert("gs://bkt/raw/disk.raw.xz", &out, Some(&key))
        .args(["--gcs-endpoint", &proxy.url()])
        .run();
    run.assert_ok();
    assert_same_bytes(&out, &raw);
    assert_eq!(tokens.refused.load(Ordering::SeqCst), 0);
    assert_eq!(
        proxy.rejected.load(Ordering::SeqCst),
        1,
        "only the keyless run"
    );
    let issued = tokens.issued.lock().expect("lock").clone();
    assert_eq!(issued.len(), 1, "one token for the whole download");
    assert!(!run.stderr.contains(&issued[0].0), "token logged");
    assert!(proxy
        .heads()
        .iter()
        .all(|h| h.contains(&format!("Bearer {}", issued[0].0))));

    // A key the token server does not know (another RSA key, same account).
    let other_dir = d.path().join("other");
    std::fs::create_dir(&other_dir).expect("mkdir");
    let other = TestKey::make(&other_dir, &tokens.uri()).expect("key");
    let run = convert(
        "gs://bkt/raw/disk.raw.xz",
        &d.path().join("y.raw"),
        Some(&other.file),
    )
    .args(["--gcs-endpoint", &proxy.url(), "-q"])
    .run();
    let line = run.assert_refused(&["Invalid JWT Signature"]);
    assert!(
        line.contains(&format!(
            "GCS token from {} for {}",
            tokens.uri(),
            other.email
        )),
        "{line}"
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(tokens.refused.load(Ordering::SeqCst) >= 1);
}

/// The key file of `key` with another `token_uri`.
fn rewrite_token_uri(key: &TestKey, uri: &str) -> PathBuf {
    let text = std::fs::read_to_string(&key.file).expect("key");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["token_uri"] = serde_json::Value::String(uri.to_string());
    std::fs::write(&key.file, v.to_string()).expect("write");
    key.file.clone()
}

#[test]
fn expired_token_is_renewed_across_a_resume() {
    let Some(py) = python_or_skip("GCS tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 13);
    let s = store(&py, &[("disk.qcow2", &img)]);
    let Some(probe) = TestKey::make(d.path(), "http://127.0.0.1:1/token") else {
        return;
    };
    // Tokens live 2 s; the connection drops and the next one waits 2.5 s,
    // so the first token is dead when the download resumes.
    let tokens = TokenServer::start(probe.public_der.clone(), probe.email.clone(), 2);
    let key = rewrite_token_uri(&probe, &tokens.uri());
    let proxy = Proxy::start(
        s.port,
        ProxyRules {
            drop_after: Some(600 << 10),
            after_drop: Some(Box::new(|| std::thread::sleep(Duration::from_millis(2500)))),
            bearer: Some(Arc::new(TokenServer::accepts(&tokens.issued))),
        },
    );
    let out = d.path().join("out.raw");
    convert("gs://bkt/disk.qcow2", &out, Some(&key))
        .args(["--gcs-endpoint", &proxy.url(), "--connections", "1"])
        .run()
        .assert_ok();
    assert_same_bytes(&out, &expected);
    assert!(proxy.dropped.load(Ordering::SeqCst));
    let issued = tokens.issued.lock().expect("lock").len();
    assert!(issued >= 2, "the token was not renewed ({issued} issued)");
    assert_eq!(
        proxy.rejected.load(Ordering::SeqCst),
        0,
        "an expired token was presented instead of being renewed ahead"
    );
    assert!(
        proxy
            .heads()
            .iter()
            .any(|h| h.contains("Range: bytes=") || h.contains("range: bytes=")),
        "no resume"
    );
}

/// gcp-storage-emulator sends neither an ETag nor `x-goog-generation` with
/// a media download (real GCS sends both, and the ETag check is the one
/// tested against S3), so of a replaced object only a new length is visible
/// to any client: the replacement here is longer, and the resumed range's
/// `Content-Range` total must give it away.
#[test]
fn object_replaced_during_the_download_fails_with_changed() {
    let Some(py) = python_or_skip("GCS tests") else {
        return;
    };
    let d = tempdir();
    let (img, _) = mixed_qcow2(d.path(), 15);
    let other = d.path().join("longer.qcow2");
    let mut bytes = std::fs::read(&img).expect("read");
    bytes.extend_from_slice(&[0x5a; 64 << 10]);
    std::fs::write(&other, &bytes).expect("write");
    let s = Arc::new(std::sync::Mutex::new(store(&py, &[("disk.qcow2", &img)])));
    let proxy = Proxy::replacing_after_drop(&s, 700 << 10, ("bkt", "disk.qcow2"), &other);
    let run = convert("gs://bkt/disk.qcow2", &d.path().join("out.raw"), None)
        .args(["--gcs-endpoint", &proxy.url(), "--connections", "1"])
        .run();
    assert!(proxy.dropped.load(Ordering::SeqCst), "the proxy never cut");
    run.assert_refused(&["changed"]);
}

#[test]
fn pod_mode_gcs() {
    let Some(py) = python_or_skip("GCS pod tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 14);
    let s = store(&py, &[("dir/disk one.qcow2", &img)]);
    let Some(probe) = TestKey::make(d.path(), "http://127.0.0.1:1/token") else {
        return;
    };
    let tokens = TokenServer::start(probe.public_der.clone(), probe.email.clone(), 3600);
    let key = rewrite_token_uri(&probe, &tokens.uri());
    let open = Proxy::start(s.port, ProxyRules::default());
    let guarded = Proxy::start(
        s.port,
        ProxyRules {
            bearer: Some(Arc::new(TokenServer::accepts(&tokens.issued))),
            ..ProxyRules::default()
        },
    );

    // Anonymous: no /google/credentials.json. CDI's http(s)://HOST/BUCKET/OBJECT form.
    let mut pod = crate::cdi::Pod::new();
    pod.env("IMPORTER_SOURCE", "gcs").env(
        "IMPORTER_ENDPOINT",
        &format!("{}/bkt/dir/disk%20one.qcow2", open.url()),
    );
    pod.run().assert_code(0);
    assert_same_bytes(&pod.disk(), &expected);

    // The secret's key at /google/credentials.json.
    let mut pod = crate::cdi::Pod::new();
    std::fs::create_dir(pod.path("google")).expect("mkdir");
    std::fs::copy(&key, pod.path("google/credentials.json")).expect("copy");
    pod.env("IMPORTER_SOURCE", "gcs").env(
        "IMPORTER_ENDPOINT",
        &format!("{}/bkt/dir/disk%20one.qcow2", guarded.url()),
    );
    let end = pod.run();
    end.assert_code(0);
    assert_same_bytes(&pod.disk(), &expected);
    assert_eq!(tokens.issued.lock().expect("lock").len(), 1);

    // Without the key the guarded endpoint refuses.
    let mut pod = crate::cdi::Pod::new();
    pod.env("IMPORTER_SOURCE", "gcs").env(
        "IMPORTER_ENDPOINT",
        &format!("{}/bkt/dir/disk%20one.qcow2", guarded.url()),
    );
    let end = pod.run();
    end.assert_code(1);
    assert!(end.message().contains("denied"), "{}", end.message());
}

/// Answers every request with a redirect to `to` + the request's path.
fn redirector(to: String) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut r = BufReader::new(stream.try_clone().expect("clone"));
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: {to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn bearer_tokens_stay_on_the_storage_host() {
    let Some(py) = python_or_skip("GCS tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 15);
    let s = store(&py, &[("disk.qcow2", &img)]);
    let Some(probe) = TestKey::make(d.path(), "http://127.0.0.1:1/token") else {
        return;
    };
    let tokens = TokenServer::start(probe.public_der.clone(), probe.email.clone(), 3600);
    let key = rewrite_token_uri(&probe, &tokens.uri());
    // The storage endpoint redirects to another origin (another port),
    // which records what it is sent.
    let elsewhere = Proxy::start(s.port, ProxyRules::default());
    let endpoint = redirector(elsewhere.url());
    let out = d.path().join("out.raw");
    convert("gs://bkt/disk.qcow2", &out, Some(&key))
        .args(["--gcs-endpoint", &format!("http://127.0.0.1:{endpoint}")])
        .run()
        .assert_ok();
    assert_same_bytes(&out, &expected);
    assert_eq!(
        tokens.issued.lock().expect("lock").len(),
        1,
        "the storage host got a token"
    );
    let heads = elsewhere.heads();
    assert!(!heads.is_empty());
    assert!(
        heads
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("authorization:")),
        "a bearer token followed the redirect: {heads:?}"
    );
}
