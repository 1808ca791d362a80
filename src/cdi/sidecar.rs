//! Registry "node pull" imports: the importer next to an image-server sidecar.
//!
//! For `registry` sources with the `node` pull method, CDI runs the container
//! image itself as a sidecar serving its disk over `http://localhost:8100`, and
//! hands the importer an ordinary `http` job plus three variables:
//!
//! * `IMPORTER_READY_FILE`: wait (up to 10 minutes, where CDI waits 60 s) for the sidecar to create it; its
//!   content, when not empty, names the disk file, replacing the endpoint's
//!   trailing `disk.img`.
//! * `IMPORTER_DONE_FILE`: created after a successful import, which lets the
//!   sidecar exit (without it the pod never completes).
//! * `IMPORTER_PULL_METHOD=node`: the sidecar's `/info` lists the image's
//!   environment; `KUBEVIRT_IO_*` entries become labels in the termination
//!   message (the controller copies them onto the PVC).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

/// `IMPORTER_READY_FILE`.
pub(crate) const ENV_READY_FILE: &str = "IMPORTER_READY_FILE";
/// `IMPORTER_DONE_FILE`.
pub(crate) const ENV_DONE_FILE: &str = "IMPORTER_DONE_FILE";
/// `IMPORTER_PULL_METHOD`.
pub(crate) const ENV_PULL_METHOD: &str = "IMPORTER_PULL_METHOD";

/// How long to wait for the ready file: as long as a large image pull
/// takes on the node. CDI waits 60 s, which fails big pulls (its issue
/// #4253).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the wait says that it is still waiting.
pub(crate) const READY_LOG_EVERY: Duration = Duration::from_secs(30);

/// The endpoint's default file name, replaced by the ready file's content.
const DISK_IMAGE_NAME: &str = "disk.img";

/// Waits until `path` exists, polling every `poll`, for at most `timeout`.
/// The error text is CDI's.
/// A line is logged every `log_every` while waiting.
pub(crate) fn wait_ready(
    path: &Path,
    timeout: Duration,
    poll: Duration,
    log_every: Duration,
) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut next_log = log_every;
    loop {
        if path.exists() {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(format!("Timeout waiting for file {}", path.display()));
        }
        if waited >= next_log {
            tracing::info!(
                "waiting for {} (the image is being pulled on the node): {}s of at most {}s",
                path.display(),
                waited.as_secs(),
                timeout.as_secs()
            );
            next_log = next_log.saturating_add(log_every);
        }
        std::thread::sleep(poll);
    }
}

/// The endpoint to fetch: `endpoint` with its trailing `disk.img` replaced by
/// the ready file's content, when that is not empty.
pub(crate) fn endpoint(endpoint: &str, ready_file: &Path) -> Result<String, String> {
    let name = std::fs::read_to_string(ready_file)
        .map_err(|e| format!("Failed reading file {}: {e}", ready_file.display()))?;
    if name.is_empty() {
        return Ok(endpoint.to_string());
    }
    let base = endpoint.strip_suffix(DISK_IMAGE_NAME).unwrap_or(endpoint);
    Ok(format!("{base}{name}"))
}

/// Creates the done file (`O_CREAT|O_EXCL`, as CDI); failures are only logged.
pub(crate) fn touch_done(path: &Path) {
    let res = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path);
    if let Err(e) = res {
        tracing::error!(file = %path.display(), error = %e, "failed creating the done file");
    }
}

/// The `/info` URL of the sidecar serving `endpoint` (`scheme://host[:port]/info`).
pub(crate) fn info_url(endpoint: &str) -> Option<String> {
    let u = reqwest::Url::parse(endpoint).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{}://{host}:{p}/info", u.scheme()),
        None => format!("{}://{host}/info", u.scheme()),
    })
}

/// The labels the sidecar's `/info` lists for the image serving `endpoint`.
/// Failures are logged and give no labels, as in CDI.
pub(crate) fn fetch_labels(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
) -> BTreeMap<String, String> {
    let Some(url) = info_url(endpoint) else {
        return BTreeMap::new();
    };
    let handle = rt.handle().clone();
    let task = rt.spawn_blocking(move || {
        let opts = crate::source::HttpOptions {
            max_attempts: 1,
            // A small JSON document: no segments.
            connections: crate::source::Connections::Fixed(1),
            ..Default::default()
        };
        let spec = crate::source::SourceSpec::parse(&url)
            .map_err(|e| io::Error::other(crate::error_chain(&e)))?;
        let mut opened = spec
            .open(&crate::source::OpenContext {
                http: &opts,
                rt: &handle,
                pace: &crate::pace::Pace::new(),
                counter: &std::sync::Arc::new(crate::progress::Counter::default()),
            })
            .map_err(|e| io::Error::other(crate::error_chain(&e)))?;
        labels_from_info(&mut opened.reader)
    });
    match rt.block_on(task) {
        Ok(Ok(labels)) => labels,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not read the image server's info");
            BTreeMap::new()
        }
        Err(e) => {
            tracing::error!(error = %e, "could not read the image server's info");
            BTreeMap::new()
        }
    }
}

/// Reads at most this much of `/info` (a short JSON document).
const INFO_LIMIT: u64 = 1 << 20;

/// Parses the sidecar's `/info` body into PVC labels.
pub(crate) fn labels_from_info(body: &mut dyn Read) -> io::Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct ServerInfo {
        #[serde(default)]
        env: Vec<String>,
    }
    let mut text = Vec::new();
    body.take(INFO_LIMIT).read_to_end(&mut text)?;
    let info: ServerInfo = serde_json::from_slice(&text).map_err(io::Error::other)?;
    Ok(envs_to_labels(&info.env))
}

const KUBEVIRT_ENV_PREFIX: &str = "KUBEVIRT_IO_";
const KUBEVIRT_LABEL_PREFIX: &str = "kubevirt.io/";

/// CDI's `envsToLabels`: every `NAME=value` whose name contains `KUBEVIRT_IO_`.
pub(crate) fn envs_to_labels(envs: &[String]) -> BTreeMap<String, String> {
    envs.iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| k.contains(KUBEVIRT_ENV_PREFIX))
        .map(|(k, v)| (env_to_label(k), v.to_string()))
        .collect()
}

/// `INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE` ->
/// `instancetype.kubevirt.io/default-preference`.
fn env_to_label(env: &str) -> String {
    let (before, after) = env.split_once(KUBEVIRT_ENV_PREFIX).unwrap_or((env, ""));
    let mut label = String::new();
    let before = before.strip_suffix('_').unwrap_or(before);
    if !before.is_empty() {
        label.push_str(&before.split('_').collect::<Vec<_>>().join("."));
        label.push('.');
    }
    label.push_str(KUBEVIRT_LABEL_PREFIX);
    label.push_str(&after.split('_').collect::<Vec<_>>().join("-"));
    label.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_like_cdi() {
        let envs: Vec<String> = [
            "KUBEVIRT_IO_FOO_BAR=1",
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora",
            "A_B_KUBEVIRT_IO_X=y=z",
            "PATH=/bin",
            "NOEQUALS",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let l = envs_to_labels(&envs);
        let got: Vec<_> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("a.b.kubevirt.io/x", "y=z"),
                ("instancetype.kubevirt.io/default-preference", "fedora"),
                ("kubevirt.io/foo-bar", "1"),
            ]
        );
        let mut body = &br#"{"env":["KUBEVIRT_IO_OS=linux","HOME=/"]}"#[..];
        let l = labels_from_info(&mut body).expect("parse");
        assert_eq!(l.get("kubevirt.io/os").map(String::as_str), Some("linux"));
        assert!(labels_from_info(&mut &b"not json"[..]).is_err());
    }

    #[test]
    fn ready_file_renames_the_disk() {
        let d = tempfile::tempdir().expect("tempdir");
        let ready = d.path().join("ready");
        std::fs::write(&ready, "").expect("write");
        let ep = "http://localhost:8100/disk.img";
        assert_eq!(endpoint(ep, &ready).expect("ep"), ep);
        std::fs::write(&ready, "disk/fedora.qcow2").expect("write");
        assert_eq!(
            endpoint(ep, &ready).expect("ep"),
            "http://localhost:8100/disk/fedora.qcow2"
        );
        assert!(endpoint(ep, &d.path().join("missing")).is_err());
        assert_eq!(info_url(ep).as_deref(), Some("http://localhost:8100/info"));
    }

    #[test]
    fn waits_and_times_out() {
        let d = tempfile::tempdir().expect("tempdir");
        let ready = d.path().join("ready");
        let e = wait_ready(
            &ready,
            Duration::from_millis(50),
            Duration::from_millis(10),
            Duration::from_millis(20),
        )
        .expect_err("timeout");
        assert_eq!(e, format!("Timeout waiting for file {}", ready.display()));
        let r2 = ready.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(&r2, "").expect("write");
        });
        wait_ready(
            &ready,
            Duration::from_secs(5),
            Duration::from_millis(10),
            Duration::from_secs(1),
        )
        .expect("ready");
        t.join().expect("join");
        let done = d.path().join("done");
        touch_done(&done);
        assert!(done.exists());
        touch_done(&done); // exists already: logged, not fatal
    }
}
