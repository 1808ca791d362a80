//! `s3://` sources against moto's S3 server on loopback, which verifies
//! SigV4 signatures (a wrong secret gets 403 SignatureDoesNotMatch) once
//! auth is on. Every conversion is compared with qemu-img's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::common::objstore::{
    object_qcow2, object_raw, python_or_skip, Keys, Proxy, ProxyRules, Store,
};
use crate::common::{
    assert_same_bytes, qemu_raw, qemu_raw_fmt, tempdir, wrap, Fill, Streamdisk, Wrapper,
};

/// A 6 MiB sparse disk with random, text and zero regions.
fn raw_disk(dir: &Path, seed: u64) -> PathBuf {
    let regions = [
        (0, 1 << 20, Fill::Random(seed)),
        (2 << 20, 1 << 20, Fill::Text),
        (4 << 20, 1536 << 10, Fill::Random(seed + 1)),
    ];
    object_raw(dir, seed, 6 << 20, &regions)
}

/// A qcow2 with compressed and plain clusters, and its oracle conversion.
fn mixed_qcow2(dir: &Path, seed: u64) -> (PathBuf, PathBuf) {
    object_qcow2(&raw_disk(dir, seed), "write -P 0x5a 1M 512k")
}

/// A store with buckets `priv` (auth on when `auth`) holding `objects`.
fn store(py: &Path, auth: bool, objects: &[(&str, &Path, bool)]) -> Store {
    let mut s = Store::start(py, "s3");
    s.bucket("priv");
    for (key, file, public) in objects {
        s.put("priv", key, file, *public);
    }
    if auth {
        s.require_auth();
    }
    s
}

/// `streamdisk convert s3://SRC OUT` with `keys` in the environment and
/// no shared credentials file.
fn convert(src: &str, out: &Path, home: &Path, keys: Option<&Keys>) -> Streamdisk {
    let mut sd = Streamdisk::convert(src, out)
        .env("HOME", home)
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("STREAMDISK_RESOLVE");
    if let Some(k) = keys {
        sd = sd
            .env("AWS_ACCESS_KEY_ID", &k.id)
            .env("AWS_SECRET_ACCESS_KEY", &k.secret);
        if let Some(t) = &k.token {
            sd = sd.env("AWS_SESSION_TOKEN", t);
        }
    }
    sd
}

#[test]
fn qcow2_path_style_and_raw_xz_virtual_host() {
    let Some(py) = python_or_skip("S3 tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 1);
    let raw = raw_disk(d.path(), 7);
    let Some(xz) = wrap(&raw, Wrapper::Xz) else {
        return;
    };
    let s = store(
        &py,
        true,
        &[
            ("images/disk.qcow2", &img, false),
            ("raw/disk.raw.xz", &xz, false),
        ],
    );
    let reader = s.keys("reader");

    // Path-style: automatic for an IP address with a port.
    let out = d.path().join("out-path.raw");
    let run = convert("s3://priv/images/disk.qcow2", &out, d.path(), Some(&reader))
        .args(["--s3-endpoint", &s.url()])
        .run();
    run.assert_ok();
    assert!(run.stderr.contains("path-style"), "{}", run.stderr);
    assert_same_bytes(&out, &expected);

    // Virtual-host style: an endpoint host name without a port, the
    // bucket's host name connected to the server by --resolve.
    let out = d.path().join("out-vh.raw");
    let run = convert("s3://priv/raw/disk.raw.xz", &out, d.path(), Some(&reader))
        .args(["--s3-endpoint", "http://s3.test", "--region", "us-east-1"])
        .args(["--resolve", &format!("priv.s3.test=127.0.0.1:{}", s.port)])
        .run();
    run.assert_ok();
    assert!(run.stderr.contains("virtual-host style"), "{}", run.stderr);
    assert!(
        run.stderr.contains("http://priv.s3.test/raw/disk.raw.xz"),
        "{}",
        run.stderr
    );
    assert_same_bytes(&out, &qemu_raw_fmt(&raw, Some("raw")));

    // The override through STREAMDISK_RESOLVE, and --s3-path-style forcing
    // the bucket into the path of a host name endpoint (moto takes the
    // first label of other names for a bucket).
    let out = d.path().join("out-forced.raw");
    convert("s3://priv/images/disk.qcow2", &out, d.path(), Some(&reader))
        .args([
            "--s3-endpoint",
            "http://s3.amazonaws.com",
            "--s3-path-style",
        ])
        .env(
            "STREAMDISK_RESOLVE",
            format!("s3.amazonaws.com=127.0.0.1:{}", s.port),
        )
        .run()
        .assert_ok();
    assert_same_bytes(&out, &expected);

    // info reads the object too.
    let run = Streamdisk::new()
        .args([
            "info",
            "s3://priv/images/disk.qcow2",
            "--s3-endpoint",
            &s.url(),
        ])
        .env("HOME", d.path())
        .env("AWS_ACCESS_KEY_ID", &reader.id)
        .env("AWS_SECRET_ACCESS_KEY", &reader.secret)
        .run();
    run.assert_ok();
    assert!(run.stdout.contains("qcow2"), "{}", run.stdout);
}

#[test]
fn wrong_secret_is_a_clear_one_line_error() {
    let Some(py) = python_or_skip("S3 tests") else {
        return;
    };
    let d = tempdir();
    let (img, _) = mixed_qcow2(d.path(), 2);
    let s = store(&py, true, &[("disk.qcow2", &img, false)]);
    let mut bad = s.keys("reader");
    bad.secret = "not-the-secret".to_string();
    let out = d.path().join("out.raw");
    let run = convert("s3://priv/disk.qcow2", &out, d.path(), Some(&bad))
        .args(["--s3-endpoint", &s.url(), "-q"])
        .run();
    let line = run.assert_refused(&["SignatureDoesNotMatch"]);
    assert!(
        line.contains("access to s3://priv/disk.qcow2 denied"),
        "{line}"
    );
    assert!(line.contains("403"), "{line}");
    assert!(line.contains(&format!("access key {}", bad.id)), "{line}");
    assert!(!run.stderr.contains("not-the-secret"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);

    // The session token of temporary credentials is signed and sent; a
    // wrong token is refused.
    let session = s.keys("session");
    assert!(session.token.is_some());
    let out = d.path().join("out-session.raw");
    convert("s3://priv/disk.qcow2", &out, d.path(), Some(&session))
        .args(["--s3-endpoint", &s.url()])
        .run()
        .assert_ok();
    assert_same_bytes(&out, &qemu_raw(&img));
    let mut wrong = session.clone();
    wrong.token = Some("not-the-token".to_string());
    let run = convert(
        "s3://priv/disk.qcow2",
        &d.path().join("x.raw"),
        d.path(),
        Some(&wrong),
    )
    .args(["--s3-endpoint", &s.url()])
    .run();
    run.assert_refused(&["denied"]);
    assert!(!run.stderr.contains("not-the-token"), "{}", run.stderr);
}

#[test]
fn shared_credentials_file_and_profile() {
    let Some(py) = python_or_skip("S3 tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 3);
    let s = store(&py, true, &[("disk.qcow2", &img, false)]);
    let reader = s.keys("reader");
    let creds = d.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = AKIAWRONG\naws_secret_access_key = wrong\n\n[ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            reader.id, reader.secret
        ),
    )
    .expect("write");
    let out = d.path().join("out.raw");
    convert("s3://priv/disk.qcow2", &out, d.path(), None)
        .args(["--s3-endpoint", &s.url()])
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_PROFILE", "ci")
        .run()
        .assert_ok();
    assert_same_bytes(&out, &expected);
}

#[test]
fn anonymous_bucket() {
    let Some(py) = python_or_skip("S3 tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 4);
    // Auth stays off: unsigned requests are allowed, and the object ACL
    // decides (public-read or private).
    let s = store(
        &py,
        false,
        &[("pub.qcow2", &img, true), ("private.qcow2", &img, false)],
    );
    let proxy = Proxy::start(s.port, ProxyRules::default());
    let out = d.path().join("out.raw");
    convert("s3://priv/pub.qcow2", &out, d.path(), None)
        .args(["--s3-endpoint", &proxy.url()])
        .run()
        .assert_ok();
    assert_same_bytes(&out, &expected);
    let heads = proxy.heads();
    assert!(!heads.is_empty());
    assert!(
        heads
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("authorization:")),
        "{heads:?}"
    );
    let run = convert(
        "s3://priv/private.qcow2",
        &d.path().join("x.raw"),
        d.path(),
        None,
    )
    .args(["--s3-endpoint", &proxy.url()])
    .run();
    let line = run.assert_refused(&["denied"]);
    assert!(
        line.contains("no credentials") && line.contains("anonymous reads"),
        "{line}"
    );
}

#[test]
fn dropped_connection_is_resumed_with_signed_ranges() {
    let Some(py) = python_or_skip("S3 tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 5);
    let s = store(&py, true, &[("disk.qcow2", &img, false)]);
    let proxy = Proxy::start(
        s.port,
        ProxyRules {
            drop_after: Some(700 << 10),
            ..ProxyRules::default()
        },
    );
    let out = d.path().join("out.raw");
    convert(
        "s3://priv/disk.qcow2",
        &out,
        d.path(),
        Some(&s.keys("reader")),
    )
    .args(["--s3-endpoint", &proxy.url(), "--connections", "1"])
    .run()
    .assert_ok();
    assert_same_bytes(&out, &expected);
    assert!(proxy.dropped.load(std::sync::atomic::Ordering::SeqCst));
    let heads = proxy.heads();
    let resumed: Vec<&String> = heads
        .iter()
        .filter(|h| h.to_ascii_lowercase().contains("\r\nrange: bytes="))
        .collect();
    assert!(
        !resumed.is_empty(),
        "no range request after the drop: {heads:?}"
    );
    assert!(resumed
        .iter()
        .all(|h| h.contains("AWS4-HMAC-SHA256") && h.to_ascii_lowercase().contains("if-range:")));
}

#[test]
fn object_replaced_during_the_download_fails_with_changed() {
    let Some(py) = python_or_skip("S3 tests") else {
        return;
    };
    let d = tempdir();
    let (img, _) = mixed_qcow2(d.path(), 6);
    let (other, _) = mixed_qcow2(d.path(), 60);
    let s = Arc::new(Mutex::new(store(&py, true, &[("disk.qcow2", &img, false)])));
    let reader = s.lock().expect("lock").keys("reader");
    let proxy = Proxy::replacing_after_drop(&s, 700 << 10, ("priv", "disk.qcow2"), &other);
    let run = convert(
        "s3://priv/disk.qcow2",
        &d.path().join("out.raw"),
        d.path(),
        Some(&reader),
    )
    .args(["--s3-endpoint", &proxy.url(), "--connections", "1"])
    .run();
    run.assert_refused(&["changed"]);
}

#[test]
fn pod_mode_s3() {
    let Some(py) = python_or_skip("S3 pod tests") else {
        return;
    };
    let d = tempdir();
    let (img, expected) = mixed_qcow2(d.path(), 8);
    let s = store(
        &py,
        true,
        &[
            ("dir/disk one.qcow2", &img, false),
            ("pub.qcow2", &img, true),
        ],
    );
    let reader = s.keys("reader");

    // CDI's endpoint form, keys from the secret.
    let mut pod = crate::cdi::Pod::new();
    pod.env("IMPORTER_SOURCE", "s3")
        .env(
            "IMPORTER_ENDPOINT",
            &format!("{}/priv/dir/disk%20one.qcow2", s.url()),
        )
        .env("IMPORTER_ACCESS_KEY_ID", &reader.id)
        .env("IMPORTER_SECRET_KEY", &reader.secret);
    let end = pod.run();
    end.assert_code(0);
    assert!(!end.stderr.contains(&reader.secret), "secret logged");
    assert_same_bytes(&pod.disk(), &expected);

    // A virtual-host URL (CDI cannot read these), through STREAMDISK_RESOLVE.
    let mut pod = crate::cdi::Pod::new();
    pod.env("IMPORTER_SOURCE", "s3")
        .env(
            "IMPORTER_ENDPOINT",
            "http://priv.s3.us-east-1.amazonaws.com/dir/disk%20one.qcow2",
        )
        .env(
            "STREAMDISK_RESOLVE",
            &format!("priv.s3.us-east-1.amazonaws.com=127.0.0.1:{}", s.port),
        )
        .env("IMPORTER_ACCESS_KEY_ID", &reader.id)
        .env("IMPORTER_SECRET_KEY", &reader.secret);
    let end = pod.run();
    end.assert_code(0);
    assert_same_bytes(&pod.disk(), &expected);

    // A wrong secret: the termination message says why.
    let mut pod = crate::cdi::Pod::new();
    pod.env("IMPORTER_SOURCE", "s3")
        .env("IMPORTER_ENDPOINT", &format!("{}/priv/pub.qcow2", s.url()))
        .env("IMPORTER_ACCESS_KEY_ID", &reader.id)
        .env("IMPORTER_SECRET_KEY", "wrong-secret");
    let end = pod.run();
    end.assert_code(1);
    assert!(
        end.message().contains("SignatureDoesNotMatch"),
        "{}",
        end.message()
    );
    assert!(!end.stderr.contains("wrong-secret"), "secret logged");
}
