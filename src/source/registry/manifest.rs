//! Manifests and the image config, as the OCI image spec and Docker's
//! schema 2 write them, and the choice of one platform's image from an
//! index (OCI) or manifest list (Docker).

use std::collections::BTreeMap;

use serde::Deserialize;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1, unsigned and signed.
const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header of manifest requests: every kind read here. Schema
/// 1 is not listed, so a registry that can convert answers with schema 2.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor: what a manifest says about a blob.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    /// The blob's media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
    /// For index entries: the image's platform.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An image's platform, as an index names it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, serde::Serialize)]
pub struct Platform {
    /// GOARCH names: `amd64`, `arm64`, `s390x`...
    pub architecture: String,
    /// `linux`...
    pub os: String,
    /// `v8`, `v7`... when the architecture has variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest document is.
#[derive(Debug)]
pub enum Manifest {
    /// An index or manifest list: one entry per platform.
    Index(Vec<Descriptor>),
    /// One image: its config and its layers, base first.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layers, base first.
        layers: Vec<Descriptor>,
    },
    /// Docker schema 1 (deprecated, signed, no config blob).
    Schema1,
    /// Something else, by media type.
    Other(String),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Parses a manifest body; `content_type` is the answer's header, used
    /// when the body names no media type (OCI makes it optional).
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest, String> {
        let raw: Raw = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let media_type = raw
            .media_type
            .clone()
            .or_else(|| content_type.map(str::to_string))
            .unwrap_or_default();
        if raw.schema_version == Some(1)
            || media_type == DOCKER_V1
            || media_type == DOCKER_V1_SIGNED
        {
            return Ok(Manifest::Schema1);
        }
        match (media_type.as_str(), raw.manifests, raw.config, raw.layers) {
            (OCI_INDEX | DOCKER_LIST, Some(m), _, _) => Ok(Manifest::Index(m)),
            (OCI_MANIFEST | DOCKER_MANIFEST, _, Some(config), Some(layers)) => {
                Ok(Manifest::Image { config, layers })
            }
            // No usable media type anywhere: go by the fields.
            (t, Some(m), None, None) if !is_known(t) => Ok(Manifest::Index(m)),
            (t, None, Some(config), Some(layers)) if !is_known(t) => {
                Ok(Manifest::Image { config, layers })
            }
            (OCI_INDEX | DOCKER_LIST | OCI_MANIFEST | DOCKER_MANIFEST, ..) => Err(format!(
                "a {media_type} document without its required fields"
            )),
            (t, ..) => Ok(Manifest::Other(t.to_string())),
        }
    }
}

fn is_known(t: &str) -> bool {
    matches!(t, OCI_INDEX | DOCKER_LIST | OCI_MANIFEST | DOCKER_MANIFEST)
}

/// The parts of an image config read here.
#[derive(Debug, Default, Deserialize)]
pub struct ImageConfig {
    /// GOARCH name.
    #[serde(default)]
    pub architecture: String,
    /// GOOS name.
    #[serde(default)]
    pub os: String,
    /// The runtime config.
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
}

/// `config.config`.
#[derive(Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    /// `NAME=value` entries.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// Image labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl ImageConfig {
    /// The config's environment.
    pub fn env(&self) -> &[String] {
        self.config
            .as_ref()
            .and_then(|c| c.env.as_deref())
            .unwrap_or_default()
    }

    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(name))
            .map(String::as_str)
    }

    /// Whether it is a bootc/ostree image, by CDI's rule.
    pub fn is_bootc(&self) -> bool {
        self.label("containers.bootc") == Some("1") || self.label("ostree.bootable") == Some("1")
    }
}

/// The platform wanted: an architecture (`ARCH` or `ARCH/VARIANT`) and an
/// OS. `explicit` is whether the user asked for it (then a single-platform
/// image must match it), rather than it being the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// GOARCH name.
    pub arch: String,
    /// Variant, when asked for.
    pub variant: Option<String>,
    /// GOOS name.
    pub os: String,
    /// Asked for by the user.
    pub explicit: bool,
}

impl Wanted {
    /// From the user's `--arch` / `--os` (either may be absent).
    pub fn new(arch: Option<&str>, os: Option<&str>) -> Wanted {
        let explicit = arch.is_some_and(|a| !a.is_empty());
        let (arch, variant) = match arch.filter(|a| !a.is_empty()) {
            Some(a) => match a.split_once('/') {
                Some((a, v)) => (a.to_string(), Some(v.to_string())),
                None => (a.to_string(), None),
            },
            None => (host_arch().to_string(), None),
        };
        Wanted {
            arch,
            variant,
            os: os.filter(|o| !o.is_empty()).unwrap_or("linux").to_string(),
            explicit,
        }
    }

    /// The entry of `entries` for this platform: the first whose OS and
    /// architecture match (and variant, when one is asked for).
    pub fn choose<'a>(&self, entries: &'a [Descriptor]) -> Option<&'a Descriptor> {
        entries.iter().find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == self.os
                    && p.architecture == self.arch
                    && self
                        .variant
                        .as_ref()
                        .is_none_or(|v| p.variant.as_ref() == Some(v))
            })
        })
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platforms an index lists, for messages.
pub fn platforms(entries: &[Descriptor]) -> String {
    let names: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
        .collect();
    if names.is_empty() {
        "no platform entries".to_string()
    } else {
        names.join(", ")
    }
}

/// This machine's architecture under its GOARCH name, as registries name it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "arm" => "arm",
        other => other,
    }
}

/// How a layer blob is compressed, from its media type (`None`: not a
/// layer type this client reads).
pub fn layer_compression(media_type: &str) -> Option<LayerCompression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => LayerCompression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => LayerCompression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => LayerCompression::Zstd,
        // An empty media type: go by the bytes.
        "" => LayerCompression::Sniff,
        _ => return None,
    })
}

/// A layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// Unknown: decided by the first bytes.
    Sniff,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
        }
    }

    #[test]
    fn kinds_by_media_type_header_and_fields() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(matches!(Manifest::parse(index, None), Ok(Manifest::Index(m)) if m.is_empty()));
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":2},"layers":[]}"#;
        assert!(matches!(
            Manifest::parse(image, Some(DOCKER_MANIFEST)),
            Ok(Manifest::Image { .. })
        ));
        assert!(matches!(
            Manifest::parse(image, None),
            Ok(Manifest::Image { .. })
        ));
        let v1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(matches!(Manifest::parse(v1, None), Ok(Manifest::Schema1)));
        let art =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#;
        assert!(matches!(Manifest::parse(art, None), Ok(Manifest::Other(_))));
        let broken =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert!(Manifest::parse(broken, None).is_err());
        assert!(Manifest::parse(b"[1", None).is_err());
    }

    #[test]
    fn platform_choice() {
        let entries = vec![
            desc("amd64", None),
            desc("arm", Some("v7")),
            desc("arm64", Some("v8")),
        ];
        let w = Wanted::new(Some("arm64"), None);
        assert_eq!(
            w.choose(&entries).map(|d| d.platform.clone()),
            Some(entries[2].platform.clone())
        );
        assert!(w.explicit);
        assert!(Wanted::new(Some("arm/v6"), None).choose(&entries).is_none());
        assert!(Wanted::new(Some("arm/v7"), None).choose(&entries).is_some());
        assert!(Wanted::new(Some("amd64"), Some("windows"))
            .choose(&entries)
            .is_none());
        let host = Wanted::new(None, None);
        assert!(!host.explicit);
        assert_eq!(host.os, "linux");
        assert_eq!(
            platforms(&entries),
            "linux/amd64, linux/arm/v7, linux/arm64/v8"
        );
    }

    #[test]
    fn bootc_labels() {
        let c: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Labels":{"containers.bootc":"1"},"Env":["A=b"]}}"#,
        )
        .expect("config");
        assert!(c.is_bootc());
        assert_eq!(c.env(), ["A=b".to_string()]);
        let c: ImageConfig =
            serde_json::from_str(r#"{"config":{"Labels":{"ostree.bootable":"0"}}}"#)
                .expect("config");
        assert!(!c.is_bootc());
        assert!(!ImageConfig::default().is_bootc());
    }
}
