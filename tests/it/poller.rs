//! `cdi-source-update-poller` (the binary run by that name) against a real
//! registry (`docker-registry` with TLS and htpasswd, the image pushed by
//! buildah) and a stand-in for the Kubernetes API server
//! (`common::kube_api`): no API server can run on the test machines, so
//! the stand-in checks what one would (the bearer token, the patch's
//! content type, the patch document) and applies the patch.
//!
//! The poller runs as in CDI's CronJob: `-ns`, `-cron`, `-url`,
//! `-certdir`, the registry's credentials in `IMPORTER_ACCESS_KEY_ID` /
//! `IMPORTER_SECRET_KEY`, the service account's token and CA at their pod
//! path (re-rooted with `STREAMDISK_POD_ROOT`), and
//! `KUBERNETES_SERVICE_HOST` / `_PORT`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::kube_api::KubeApi;
use crate::common::registry::{Image, Push, Pushed, Registry};
use crate::common::{bin_as, make_raw, tempdir, Fill};

const NS: &str = "kubevirt-os-images";
const CRON: &str = "fedora-image-cron";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.test-service-account-token";
const DIGEST_ANN: &str = "cdi.kubevirt.io/storage.import.sourceDesiredDigest";
const TIME_ANN: &str = "cdi.kubevirt.io/storage.import.lastCronTime";
const OTHER_ANN: &str = "cdi.kubevirt.io/storage.import.nextCronTime";

/// A DataImportCron as the API server returns it, with annotations.
fn cron_object(annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataImportCron",
        "metadata": {"name": CRON, "namespace": NS, "annotations": annotations},
        "spec": {"schedule": "0 */12 * * *", "managedDataSource": "fedora"}
    })
}

/// A pod root holding the service account's token and `ca_pem`.
fn pod_root(dir: &Path, ca_pem: &str) -> PathBuf {
    let root = dir.join("pod");
    let sa = root.join("var/run/secrets/kubernetes.io/serviceaccount");
    fs::create_dir_all(&sa).expect("mkdir");
    fs::write(sa.join("token"), TOKEN).expect("token");
    fs::write(sa.join("ca.crt"), ca_pem).expect("ca");
    fs::write(sa.join("namespace"), NS).expect("namespace");
    root
}

/// A TLS registry with basic auth and one containerDisk pushed.
fn registry_with_image(work: &Path) -> Option<(Registry, Pushed)> {
    let reg = Registry::builder()
        .tls()
        .htpasswd("poller", "s3cret-pw")
        .start()?;
    let raw = work.join("disk.raw");
    make_raw(&raw, 1 << 20, &[(0, 4096, Fill::Byte(3))]);
    let pushed = reg.push(
        &Image::new().layer(&[(&raw, "/disk/")]),
        "os/fedora:42",
        Push::default(),
    );
    Some((reg, pushed))
}

/// One poll: exit code and stderr.
fn poll(root: &Path, api_port: u16, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let bins = tempdir();
    let out = Command::new(bin_as(bins.path(), "cdi-source-update-poller"))
        .args(args)
        .env_clear()
        .env("STREAMDISK_POD_ROOT", root)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", api_port.to_string())
        .envs(env.iter().copied())
        .output()
        .expect("run the poller");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), stderr)
}

/// The patch documents the stand-in accepted.
fn patches(api: &KubeApi) -> Vec<serde_json::Value> {
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == 200)
        .map(|r| serde_json::from_slice(&r.body).expect("patch json"))
        .collect()
}

#[test]
fn records_a_new_digest_then_only_the_time() {
    let work = tempdir();
    let Some((reg, pushed)) = registry_with_image(work.path()) else {
        return;
    };
    let api = KubeApi::start(
        NS,
        CRON,
        TOKEN,
        cron_object(
            serde_json::json!({OTHER_ANN: "2026-12-01T12:00:00Z", DIGEST_ANN: "sha256:0000"}),
        ),
    );
    let root = pod_root(work.path(), &api.certs.ca_cert_pem);
    let (user, pass) = reg.creds().expect("creds");
    let certdir = reg
        .ca_dir()
        .expect("ca dir")
        .to_str()
        .expect("utf8")
        .to_string();
    let args = [
        "-ns",
        NS,
        "-cron",
        CRON,
        "-url",
        &pushed.reference,
        "-certdir",
        &certdir,
    ];
    let env = [
        ("IMPORTER_ACCESS_KEY_ID", user),
        ("IMPORTER_SECRET_KEY", pass),
    ];

    let before = std::time::SystemTime::now();
    let (code, err) = poll(&root, api.port, &args, &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("Digest is {}", pushed.digest)),
        "{err}"
    );
    assert!(err.contains("Digest updated"), "{err}");
    assert!(!err.contains(pass), "the password is never logged");

    // CDI's two requests: a GET, then a JSON patch of two `add`s.
    let reqs = api.requests();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["GET", "PATCH"], "{reqs:?}");
    let patch = reqs.get(1).expect("patch");
    assert_eq!(
        patch.header("content-type"),
        Some("application/json-patch+json")
    );
    let ops = &patches(&api)[0];
    let ops = ops.as_array().expect("array");
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(ops[0]["op"], "add");
    assert_eq!(
        ops[0]["path"],
        "/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime"
    );
    assert_eq!(ops[1]["op"], "add");
    assert_eq!(
        ops[1]["path"],
        "/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest"
    );
    assert_eq!(ops[1]["value"], pushed.digest.as_str());
    let stamp = ops[0]["value"].as_str().expect("time");
    let parsed = httpdate_from_rfc3339(stamp);
    let now = std::time::SystemTime::now();
    assert!(
        parsed + std::time::Duration::from_secs(2) >= before && parsed <= now,
        "{stamp} is not the time of the poll"
    );

    // The object keeps its other annotations.
    let obj = api.object();
    assert_eq!(
        obj["metadata"]["annotations"][OTHER_ANN],
        "2026-12-01T12:00:00Z"
    );
    assert_eq!(
        obj["metadata"]["annotations"][DIGEST_ANN],
        pushed.digest.as_str()
    );

    // Polled again: the digest is the one recorded, only the time changes.
    let (code, err) = poll(&root, api.port, &args, &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("No digest update"), "{err}");
    let second = &patches(&api)[1];
    let second = second.as_array().expect("array");
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(
        second[0]["path"],
        "/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime"
    );
}

/// `2026-12-01T10:00:00Z` as a time (the poller writes UTC).
fn httpdate_from_rfc3339(s: &str) -> std::time::SystemTime {
    let (date, time) = s
        .strip_suffix('Z')
        .and_then(|t| t.split_once('T'))
        .expect("RFC 3339 UTC");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect("date")).collect();
    let t: Vec<u64> = time.split(':').map(|x| x.parse().expect("time")).collect();
    // Days from civil (Howard Hinnant).
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).expect("after 1970");
    std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
}

#[test]
fn insecure_registry_without_a_ca() {
    let work = tempdir();
    let Some((reg, pushed)) = registry_with_image(work.path()) else {
        return;
    };
    let api = KubeApi::start(
        NS,
        CRON,
        TOKEN,
        cron_object(serde_json::json!({OTHER_ANN: "x"})),
    );
    let root = pod_root(work.path(), &api.certs.ca_cert_pem);
    let (user, pass) = reg.creds().expect("creds");
    let args = ["-ns", NS, "-cron", CRON, "-url", &pushed.reference];
    let env = [
        ("IMPORTER_ACCESS_KEY_ID", user),
        ("IMPORTER_SECRET_KEY", pass),
    ];
    // Without the CA the registry's certificate is not trusted ...
    let (code, err) = poll(&root, api.port, &args, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Failed to get image digest"), "{err}");
    assert!(
        api.requests().is_empty(),
        "nothing is patched when the registry fails"
    );
    // ... unless CDI says the registry is insecure.
    let mut insecure = env.to_vec();
    insecure.push(("INSECURE_TLS", "true"));
    let (code, err) = poll(&root, api.port, &args, &insecure);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(patches(&api)[0][1]["value"], pushed.digest.as_str());
}

#[test]
fn failures_exit_1_with_cdis_words() {
    let work = tempdir();
    let Some((reg, pushed)) = registry_with_image(work.path()) else {
        return;
    };
    let api = KubeApi::start(
        NS,
        CRON,
        TOKEN,
        cron_object(serde_json::json!({OTHER_ANN: "x"})),
    );
    let root = pod_root(work.path(), &api.certs.ca_cert_pem);
    let (user, _) = reg.creds().expect("creds");
    let certdir = reg
        .ca_dir()
        .expect("ca dir")
        .to_str()
        .expect("utf8")
        .to_string();
    let args = [
        "-ns",
        NS,
        "-cron",
        CRON,
        "-url",
        &pushed.reference,
        "-certdir",
        &certdir,
    ];

    // Wrong registry password.
    let (code, err) = poll(
        &root,
        api.port,
        &args,
        &[
            ("IMPORTER_ACCESS_KEY_ID", user),
            ("IMPORTER_SECRET_KEY", "wrong-pw"),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Failed to get image digest"), "{err}");

    // A token the API server does not accept.
    let sa = root.join("var/run/secrets/kubernetes.io/serviceaccount");
    fs::write(sa.join("token"), "not-the-token").expect("token");
    let good = [
        ("IMPORTER_ACCESS_KEY_ID", user),
        ("IMPORTER_SECRET_KEY", reg.creds().expect("creds").1),
    ];
    let (code, err) = poll(&root, api.port, &args, &good);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("Failed getting DataImportCron {NS}/{CRON}")),
        "{err}"
    );
    assert!(err.contains("401"), "{err}");
    fs::write(sa.join("token"), TOKEN).expect("token");

    // A DataImportCron that does not exist.
    let other = [
        "-ns",
        NS,
        "-cron",
        "missing",
        "-url",
        &pushed.reference,
        "-certdir",
        &certdir,
    ];
    let (code, err) = poll(&root, api.port, &other, &good);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not found"), "{err}");

    // Not in a pod: client-go's words, before any registry request.
    let bins = tempdir();
    let out = Command::new(bin_as(bins.path(), "cdi-source-update-poller"))
        .args(args)
        .env_clear()
        .env("STREAMDISK_POD_ROOT", &root)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"));

    // An API server whose certificate the service account's CA did not sign.
    let stranger = KubeApi::start(NS, CRON, TOKEN, cron_object(serde_json::json!({})));
    let (code, err) = poll(&root, stranger.port, &args, &good);
    assert_eq!(code, Some(1), "{err}");
    assert!(stranger.requests().is_empty(), "no request got through TLS");

    // Mandatory flags, help, and the kubeconfig this poller does not read.
    let (code, err) = poll(&root, api.port, &["-ns", NS, "-cron", CRON], &good);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("One or more mandatory parameters are missing"),
        "{err}"
    );
    let (code, err) = poll(&root, api.port, &["-h"], &[]);
    assert_eq!(code, Some(0));
    assert!(err.contains("-certdir string"), "{err}");
    let (code, _) = poll(&root, api.port, &["-bogus"], &[]);
    assert_eq!(code, Some(2), "Go's exit code for a bad flag");
    let (code, err) = poll(&root, api.port, &args, &[("KUBECONFIG", "/etc/kubeconfig")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not supported"), "{err}");
    // The stand-in saw only refused attempts after the first patch-free runs.
    assert!(patches(&api).is_empty());
}
