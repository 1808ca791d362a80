//! The importer pod's environment, parsed into one typed [`PodConfig`].
//!
//! CDI's controller passes the whole job in environment variables (see
//! `docs/cdi-contract.md`). Parsing follows CDI's own rules so that a value CDI
//! accepts is accepted here and one it rejects is rejected the same way:
//! `PREALLOCATION` and `INSECURE_TLS` use Go's `strconv.ParseBool`,
//! `FILESYSTEM_OVERHEAD` an unparseable value counts as 0, `IMPORTER_IMAGE_SIZE`
//! is a Kubernetes quantity.

use std::path::PathBuf;

use crate::checksum::Checksum;

use super::quantity;

pub(crate) const ENV_SOURCE: &str = "IMPORTER_SOURCE";
pub(crate) const ENV_ENDPOINT: &str = "IMPORTER_ENDPOINT";
pub(crate) const ENV_CONTENT_TYPE: &str = "IMPORTER_CONTENTTYPE";
pub(crate) const ENV_IMAGE_SIZE: &str = "IMPORTER_IMAGE_SIZE";
pub(crate) const ENV_OVERHEAD: &str = "FILESYSTEM_OVERHEAD";
pub(crate) const ENV_PREALLOCATION: &str = "PREALLOCATION";
pub(crate) const ENV_CACHE_MODE: &str = "CACHE_MODE";
pub(crate) const ENV_OWNER_UID: &str = "OWNER_UID";
pub(crate) const ENV_INSECURE_TLS: &str = "INSECURE_TLS";
pub(crate) const ENV_ACCESS_KEY: &str = "IMPORTER_ACCESS_KEY_ID";
pub(crate) const ENV_SECRET_KEY: &str = "IMPORTER_SECRET_KEY";
pub(crate) const ENV_CERT_DIR: &str = "IMPORTER_CERT_DIR";
pub(crate) const ENV_REGISTRY_ARCH: &str = "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE";
pub(crate) const ENV_CHECKSUM: &str = "IMPORTER_CHECKSUM";
/// Prefix of the numbered extra-header variables (`IMPORTER_EXTRA_HEADER_0`, ...).
pub(crate) const ENV_EXTRA_HEADER_PREFIX: &str = "IMPORTER_EXTRA_HEADER_";

/// `IMPORTER_SOURCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceKind {
    Http,
    /// A registry image, pulled by the pod (`docker://` endpoint).
    Registry,
    /// An S3 object.
    S3,
    /// A GCS object.
    Gcs,
    /// A blank disk.
    None,
    /// A source CDI knows that streamdisk does not implement yet.
    Unsupported(String),
    /// Anything else.
    Unknown(String),
}

impl SourceKind {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "http" => SourceKind::Http,
            "none" => SourceKind::None,
            "registry" => SourceKind::Registry,
            "s3" => SourceKind::S3,
            "gcs" => SourceKind::Gcs,
            "imageio" | "vddk" => SourceKind::Unsupported(s.into()),
            other => SourceKind::Unknown(other.into()),
        }
    }
}

/// `IMPORTER_CONTENTTYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentType {
    /// A disk image (the default when unset, as in CDI's destination choice).
    KubeVirt,
    /// A tar archive extracted into the data volume.
    Archive,
}

/// One extra request header.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub name: String,
    pub value: String,
    /// Came from a mounted secret: the value must never be logged.
    pub secret: bool,
}

impl std::fmt::Debug for Header {
    // Values of any header may be credentials (CDI users put tokens in plain
    // env headers too), so Debug never shows them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Header({}: <redacted>)", self.name)
    }
}

impl Header {
    /// Parses `Name: value` as CDI does (split at the first colon), trimming the
    /// spaces Go's HTTP client trims when it sends the header. `None` when there
    /// is no colon or no name (CDI silently drops those).
    pub(crate) fn parse(line: &str, secret: bool) -> Option<Header> {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        Some(Header {
            name: name.to_string(),
            value: value.trim().to_string(),
            secret,
        })
    }
}

/// A value the pod cannot run with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// CDI's wording, logged before exit 1.
    #[error("the PREALLOCATION environment variable is with a wrong value \"{0}\"; should be \"true\" or \"false\"")]
    Preallocation(String),
    #[error("invalid {ENV_IMAGE_SIZE}: {0}")]
    ImageSize(#[from] quantity::QuantityError),
    #[error("invalid {ENV_OVERHEAD} {0:?}: must be a finite, non-negative fraction")]
    Overhead(String),
    #[error("Unknown content type: {0}")]
    ContentType(String),
    #[error("invalid checksum: {0}")]
    Checksum(#[from] crate::checksum::ParseChecksumError),
    #[error("invalid {ENV_RESOLVE}: {0}")]
    Resolve(String),
}

/// Everything the environment says about the job.
#[derive(Debug, Clone)]
pub(crate) struct PodConfig {
    pub source: SourceKind,
    /// The URL; may carry userinfo, so it is never logged as is.
    pub endpoint: String,
    pub content_type: ContentType,
    /// The PVC request in bytes (`None` when unset).
    pub image_size: Option<u64>,
    pub overhead: f64,
    pub preallocation: bool,
    pub cache_mode: String,
    pub insecure_tls: bool,
    /// Sent only when both user and password are non-empty, as in CDI.
    pub basic_auth: Option<(String, String)>,
    pub cert_dir: Option<PathBuf>,
    pub checksum: Option<Checksum>,
    /// From `IMPORTER_EXTRA_HEADER_*`, in environment order (secret headers are
    /// read from files separately, see `headers`).
    pub env_headers: Vec<Header>,
    /// From [`ENV_RESOLVE`]: host names connected to given addresses.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
}

/// Host names connected to given addresses (`HOST=ADDR:PORT,...`), as the
/// CLI's `--resolve`: CDI never sets it; it lets tests (and clusters with
/// split DNS) reach virtual-host S3 names without `/etc/hosts`.
pub(crate) const ENV_RESOLVE: &str = "STREAMDISK_RESOLVE";

/// The value of `name` in `vars`; an unset variable reads as empty, as Go's
/// `os.Getenv` (which CDI uses) makes it.
pub(crate) fn env_value<'a>(vars: &'a [(String, String)], name: &str) -> &'a str {
    vars.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Go's `strconv.ParseBool`.
pub(crate) fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

impl PodConfig {
    /// Parses the process environment (`vars` as from `std::env::vars_os`).
    ///
    /// Errors come in CDI's order: `PREALLOCATION` first (CDI checks it before
    /// anything else), then the rest.
    pub(crate) fn from_vars(vars: &[(String, String)]) -> Result<PodConfig, ConfigError> {
        let get = |name: &str| env_value(vars, name);

        let prealloc_raw = get(ENV_PREALLOCATION);
        let preallocation = go_parse_bool(prealloc_raw)
            .ok_or_else(|| ConfigError::Preallocation(prealloc_raw.to_string()))?;

        let source = SourceKind::parse(get(ENV_SOURCE));

        let content_type = match get(ENV_CONTENT_TYPE) {
            "" | "kubevirt" => ContentType::KubeVirt,
            "archive" => ContentType::Archive,
            other => return Err(ConfigError::ContentType(other.to_string())),
        };

        let size_raw = get(ENV_IMAGE_SIZE);
        let image_size = if size_raw.is_empty() {
            None
        } else {
            Some(quantity::parse_bytes(size_raw)?)
        };

        let overhead_raw = get(ENV_OVERHEAD);
        // CDI ignores the parse error (the value becomes 0); a negative or
        // non-finite value would make its arithmetic meaningless, so refuse it.
        let overhead = overhead_raw.trim().parse::<f64>().unwrap_or(0.0);
        if !overhead.is_finite() || overhead < 0.0 {
            return Err(ConfigError::Overhead(overhead_raw.to_string()));
        }

        let user = get(ENV_ACCESS_KEY);
        let password = get(ENV_SECRET_KEY);
        let basic_auth =
            (!user.is_empty() && !password.is_empty()).then(|| (user.into(), password.into()));

        let cert_dir = Some(get(ENV_CERT_DIR))
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);

        let checksum_raw = get(ENV_CHECKSUM);
        let checksum = if checksum_raw.is_empty() {
            None
        } else {
            Some(checksum_raw.parse::<Checksum>()?)
        };

        let env_headers = vars
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_EXTRA_HEADER_PREFIX))
            .filter_map(|(_, v)| Header::parse(v, false))
            .collect();

        let resolve = get(ENV_RESOLVE)
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .map(crate::source::parse_resolve)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Resolve)?;

        Ok(PodConfig {
            source,
            endpoint: get(ENV_ENDPOINT).to_string(),
            content_type,
            image_size,
            overhead,
            preallocation,
            cache_mode: get(ENV_CACHE_MODE).to_string(),
            insecure_tls: go_parse_bool(get(ENV_INSECURE_TLS)).unwrap_or(false),
            basic_auth,
            cert_dir,
            checksum,
            env_headers,
            resolve,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn full_http_job() {
        let c = PodConfig::from_vars(&vars(&[
            ("IMPORTER_SOURCE", "http"),
            ("IMPORTER_ENDPOINT", "https://u:p@h/x.qcow2"),
            ("IMPORTER_CONTENTTYPE", "kubevirt"),
            ("IMPORTER_IMAGE_SIZE", "1Gi"),
            ("FILESYSTEM_OVERHEAD", "0.055"),
            ("PREALLOCATION", "false"),
            ("CACHE_MODE", "TRYNONE"),
            ("OWNER_UID", "abc-123"),
            ("INSECURE_TLS", "true"),
            ("IMPORTER_ACCESS_KEY_ID", "user"),
            ("IMPORTER_SECRET_KEY", "pass"),
            ("IMPORTER_CERT_DIR", "/certs"),
            (
                "IMPORTER_CHECKSUM",
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            ("IMPORTER_EXTRA_HEADER_0", "X-One: 1"),
            ("IMPORTER_EXTRA_HEADER_1", "garbage"),
            ("IMPORTER_EXTRA_HEADER_2", "X-Two:two: parts "),
        ]))
        .expect("valid");
        assert_eq!(c.source, SourceKind::Http);
        assert_eq!(c.content_type, ContentType::KubeVirt);
        assert_eq!(c.image_size, Some(1 << 30));
        assert!((c.overhead - 0.055).abs() < 1e-12);
        assert!(!c.preallocation);
        assert!(c.insecure_tls);
        assert_eq!(c.basic_auth, Some(("user".into(), "pass".into())));
        assert_eq!(c.cert_dir, Some(PathBuf::from("/certs")));
        assert!(c.checksum.is_some());
        let h: Vec<_> = c
            .env_headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(h, vec![("X-One", "1"), ("X-Two", "two: parts")]);
        assert!(!format!("{c:?}").contains("two: parts"));
    }

    #[test]
    fn preallocation_must_be_a_go_bool() {
        for bad in ["", "yes", "on", "tRuE"] {
            let e =
                PodConfig::from_vars(&vars(&[("PREALLOCATION", bad), ("IMPORTER_SOURCE", "x")]))
                    .expect_err("invalid");
            assert!(matches!(e, ConfigError::Preallocation(_)), "{bad}");
        }
        for (good, v) in [("1", true), ("T", true), ("False", false), ("0", false)] {
            let c = PodConfig::from_vars(&vars(&[("PREALLOCATION", good)])).expect("valid");
            assert_eq!(c.preallocation, v);
        }
    }

    #[test]
    fn cdi_defaults_and_errors() {
        let c = PodConfig::from_vars(&vars(&[
            ("PREALLOCATION", "true"),
            ("IMPORTER_SOURCE", "s3"),
            ("FILESYSTEM_OVERHEAD", "bogus"),
            ("IMPORTER_ACCESS_KEY_ID", "only-user"),
            ("INSECURE_TLS", "maybe"),
        ]))
        .expect("valid");
        assert_eq!(c.source, SourceKind::S3);
        assert_eq!(SourceKind::parse("gcs"), SourceKind::Gcs);
        assert_eq!(
            SourceKind::parse("vddk"),
            SourceKind::Unsupported("vddk".into())
        );
        assert_eq!(c.overhead, 0.0);
        assert_eq!(c.basic_auth, None);
        assert!(!c.insecure_tls);
        assert_eq!(c.image_size, None);
        assert_eq!(SourceKind::parse("ftp"), SourceKind::Unknown("ftp".into()));
        let bad = |k: &str, v: &str| {
            PodConfig::from_vars(&vars(&[("PREALLOCATION", "false"), (k, v)])).is_err()
        };
        assert!(bad("IMPORTER_IMAGE_SIZE", "ten"));
        assert!(bad("FILESYSTEM_OVERHEAD", "-0.5"));
        assert!(bad("FILESYSTEM_OVERHEAD", "NaN"));
        assert!(bad("IMPORTER_CONTENTTYPE", "tarball"));
        assert!(bad("IMPORTER_CHECKSUM", "sha256:zz"));
        assert!(bad("STREAMDISK_RESOLVE", "host-without-address"));
        let c = PodConfig::from_vars(&vars(&[
            ("PREALLOCATION", "false"),
            (
                "STREAMDISK_RESOLVE",
                "b.s3.test=127.0.0.1:9000, other=[::1]:80",
            ),
        ]))
        .expect("resolve");
        assert_eq!(c.resolve.len(), 2);
        assert_eq!(c.resolve[0].0, "b.s3.test");
    }
}
