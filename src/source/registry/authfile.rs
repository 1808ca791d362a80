//! Credentials from the auth files podman, skopeo and docker write, for
//! when none are given on the command line: `$REGISTRY_AUTH_FILE`, then
//! `$XDG_RUNTIME_DIR/containers/auth.json`, then `~/.docker/config.json`.
//! The first file with an entry for the registry wins.
//!
//! Entries are `{"auths": {"KEY": {"auth": base64("user:password")}}}`,
//! where KEY is a host (`quay.io`, `127.0.0.1:5000`), a host with a
//! repository namespace (`quay.io/org`, the most specific match wins), or a
//! URL (`https://index.docker.io/v1/`, as docker writes for Docker Hub).
//! Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;

/// Largest auth file read.
const MAX_FILE: u64 = 1 << 20;

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The auth files to look in, in order, from the environment.
pub(crate) fn default_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        files.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        files.push(Path::new(&p).join("containers/auth.json"));
    }
    if let Some(p) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        files.push(Path::new(&p).join(".docker/config.json"));
    }
    files
}

/// The user and password for `registry` (`host[:port]`) and `repository`
/// in the first of `files` that has an entry. Unreadable or malformed
/// files are logged (by path, never content) and skipped.
pub(crate) fn lookup(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Option<(String, String)> {
    for path in files {
        let text = match read_limited(path) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("cannot read auth file {}: {e}; skipped", path.display());
                continue;
            }
        };
        let file: AuthFile = match serde_json::from_slice(&text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    "auth file {} is not valid JSON ({e}); skipped",
                    path.display()
                );
                continue;
            }
        };
        if let Some(creds) = best_entry(&file, registry, repository) {
            tracing::info!("using credentials for {registry} from {}", path.display());
            return Some(creds);
        }
    }
    None
}

fn read_limited(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    match std::fs::File::open(path) {
        Ok(f) => {
            let mut buf = Vec::new();
            f.take(MAX_FILE).read_to_end(&mut buf)?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The most specific entry of `file` matching the image.
fn best_entry(file: &AuthFile, registry: &str, repository: &str) -> Option<(String, String)> {
    let image = format!("{registry}/{repository}");
    let mut best: Option<(usize, &Entry)> = None;
    for (key, entry) in &file.auths {
        let key = normalize_key(key);
        let matches = key == registry
            || (image.starts_with(&key) && image.as_bytes().get(key.len()) == Some(&b'/'));
        if matches && best.is_none_or(|(len, _)| key.len() > len) {
            best = Some((key.len(), entry));
        }
    }
    best.and_then(|(_, e)| decode(e))
}

/// A key as a `host[:port][/path]`: scheme and trailing slashes removed,
/// docker's Docker Hub names mapped to `docker.io`.
fn normalize_key(key: &str) -> String {
    let k = key.split_once("://").map_or(key, |(_, rest)| rest);
    let k = k.trim_end_matches('/');
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let host = match host.to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    };
    // Docker's `https://index.docker.io/v1/` names the registry, not a path.
    if path.is_empty() || (host == "docker.io" && path == "v1") {
        host
    } else {
        format!("{host}/{path}")
    }
}

fn decode(e: &Entry) -> Option<(String, String)> {
    if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (user, pass) = text.split_once(':')?;
        return Some((user.to_string(), pass.to_string()));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn most_specific_entry_of_the_first_file_wins() {
        let d = tempfile::tempdir().expect("tempdir");
        let first = d.path().join("auth.json");
        let second = d.path().join("config.json");
        std::fs::write(
            &first,
            format!(
                r#"{{"auths":{{"quay.io":{{"auth":"{}"}},"quay.io/org":{{"auth":"{}"}},"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
                b64("all:one"),
                b64("org:two"),
                b64("local:pa:ss")
            ),
        )
        .expect("write");
        std::fs::write(
            &second,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}},"credsStore":"desktop"}}"#,
                b64("hub:three")
            ),
        )
        .expect("write");
        let files = vec![d.path().join("missing.json"), first, second];
        let get = |r: &str, repo: &str| lookup(&files, r, repo);
        assert_eq!(
            get("quay.io", "org/disk"),
            Some(("org".into(), "two".into()))
        );
        assert_eq!(
            get("quay.io", "orgx/disk"),
            Some(("all".into(), "one".into()))
        );
        assert_eq!(
            get("127.0.0.1:5000", "x"),
            Some(("local".into(), "pa:ss".into()))
        );
        assert_eq!(
            get("docker.io", "library/fedora"),
            Some(("hub".into(), "three".into()))
        );
        assert_eq!(get("127.0.0.1:5001", "x"), None);
    }

    #[test]
    fn malformed_files_are_skipped() {
        let d = tempfile::tempdir().expect("tempdir");
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, "{not json").expect("write");
        let odd = d.path().join("odd.json");
        std::fs::write(&odd, r#"{"auths":{"h.io":{"auth":"!!!"}}}"#).expect("write");
        assert_eq!(lookup(&[bad, odd], "h.io", "x"), None);
    }
}
