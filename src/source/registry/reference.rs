//! [`Reference`]: `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`, parsed
//! once, as the distribution spec names its parts.
//!
//! Docker Hub short names are expanded the way docker and containers/image
//! expand them (`fedora` is `docker.io/library/fedora`, served by
//! `registry-1.docker.io`): a first component without a dot, a colon or the
//! name `localhost` is a repository path, not a host.

use super::RegistryError;

/// The Docker Hub name users write, and the host that serves its API.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// What the reference names inside the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tag (`latest` when none is given).
    Tag(String),
    /// A manifest digest, `sha256:` and 64 lower-case hex digits.
    Digest(String),
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`docker.io` for Docker Hub), with its port:
    /// the key for credentials in auth files.
    pub registry: String,
    /// The host (and port) that serves the API.
    pub api_host: String,
    /// The repository path (`library/fedora`).
    pub repository: String,
    /// The tag or digest.
    pub target: Target,
}

impl Reference {
    /// Parses `docker://...` (the scheme is optional).
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &str| RegistryError::BadReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("docker") => rest,
            Some(_) => return Err(bad("only docker:// references are registry images")),
            None => s,
        };
        if rest.is_empty() {
            return Err(bad("no image named"));
        }
        let (name, digest) = match rest.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (rest, None),
        };
        // A tag is after the last colon that follows the last slash (a
        // colon before it belongs to the port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name.get(last_slash..).and_then(|t| t.rfind(':')) {
            Some(i) => {
                let at = last_slash + i;
                (
                    name.get(..at).unwrap_or_default(),
                    name.get(at + 1..).map(str::to_string),
                )
            }
            None => (name, None),
        };
        let (first, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = first.to_ascii_lowercase();
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        check_host(&registry).map_err(|r| bad(&r))?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        check_repository(&repository).map_err(|r| bad(&r))?;
        let target = match (digest, tag) {
            (Some(d), _) => Target::Digest(check_digest(d).map_err(|r| bad(&r))?),
            (None, Some(t)) => Target::Tag(check_tag(&t).map_err(|r| bad(&r))?),
            (None, None) => Target::Tag("latest".to_string()),
        };
        let api_host = if registry == DOCKER_HUB {
            DOCKER_HUB_API.to_string()
        } else {
            registry.clone()
        };
        Ok(Reference {
            registry,
            api_host,
            repository,
            target,
        })
    }

    /// The tag or digest as it goes into a manifest URL.
    pub fn target_str(&self) -> &str {
        match &self.target {
            Target::Tag(t) | Target::Digest(t) => t,
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = match self.target {
            Target::Tag(_) => ':',
            Target::Digest(_) => '@',
        };
        write!(
            f,
            "docker://{}/{}{sep}{}",
            self.registry,
            self.repository,
            self.target_str()
        )
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((n, p)) if !p.contains(']') => (n, Some(p)),
        _ => (host, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("bad port {p:?}"));
        }
    }
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("bad registry host {name:?}"))
    }
}

/// Path components are lower-case alphanumerics joined by `.`, `_`, `__`
/// or dashes (the distribution spec's grammar, without its length limit).
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("no repository".to_string());
    }
    for part in repo.split('/') {
        let ok = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "bad repository component {part:?} (lower-case letters, digits and . _ - only)"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&tag.len())
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(tag.to_string())
    } else {
        Err(format!("bad tag {tag:?}"))
    }
}

/// Only sha256 digests are accepted: it is the one algorithm every
/// registry serves, and the one this client verifies.
pub(crate) fn check_digest(d: &str) -> Result<String, String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("bad digest {d:?} (sha256:HEX only)"))?;
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
    } else {
        Err(format!("bad digest {d:?} (sha256: and 64 hex digits)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn hosts_ports_tags_digests() {
        let r = p("docker://127.0.0.1:5000/kubevirt/fedora:41");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.api_host, "127.0.0.1:5000");
        assert_eq!(r.repository, "kubevirt/fedora");
        assert_eq!(r.target, Target::Tag("41".into()));
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/kubevirt/fedora:41");

        let d = format!("sha256:{}", "A".repeat(64));
        let r = p(&format!("docker://quay.io/containerdisks/fedora:41@{d}"));
        assert_eq!(
            r.target,
            Target::Digest(format!("sha256:{}", "a".repeat(64)))
        );

        let r = p("docker://localhost/x");
        assert_eq!(
            (r.registry.as_str(), r.target_str()),
            ("localhost", "latest")
        );
    }

    #[test]
    fn docker_hub_short_names() {
        let r = p("docker://fedora");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host, "registry-1.docker.io");
        assert_eq!(r.repository, "library/fedora");
        let r = p("docker://kubevirt/fedora-cloud-container-disk-demo:v1");
        assert_eq!(r.repository, "kubevirt/fedora-cloud-container-disk-demo");
        assert_eq!(r.registry, "docker.io");
        let r = p("docker://index.docker.io/library/alpine");
        assert_eq!(r.api_host, "registry-1.docker.io");
    }

    #[test]
    fn bad_references_are_named() {
        for bad in [
            "docker://",
            "http://h/x",
            "docker://h.io/UPPER",
            "docker://h.io/x:bad tag",
            "docker://h.io/x@md5:00",
            "docker://h.io/x@sha256:abc",
            "docker://h.io:99999/x",
            "docker://h.io//x",
        ] {
            let e = Reference::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("invalid image reference"), "{e}");
        }
    }
}
