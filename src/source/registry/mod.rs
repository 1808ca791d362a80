//! Registry source: `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`, a
//! containerDisk streamed from an OCI registry into the pipeline, with no
//! scratch space.
//!
//! One pass, bounded memory: the manifest is fetched (an index or manifest
//! list is resolved to the wanted platform), the config blob is checked
//! (bootc images are refused, the environment kept for CDI's labels), then
//! the layers are streamed base to top through the HTTP source (redirects,
//! retries, resume), each verified against its digest as it passes and
//! decompressed as it arrives, until the tar entry that holds the disk.
//! That entry's bytes are what [`Source::open`] hands the pipeline: the
//! wrappers and format decoders see them as they would a downloaded file.
//!
//! | module | concern |
//! |---|---|
//! | [`reference`] | parsing the reference |
//! | [`challenge`], [`auth`], [`authfile`] | `WWW-Authenticate`, the token flow and basic auth, auth files |
//! | [`client`] | ping, manifests, blobs over the HTTP source |
//! | [`manifest`] | manifest and config types, platform choice |
//! | [`blob`] | digest and size checks as a blob streams |
//! | [`layers`] | the layer walk and the disk entry |
//!
//! Progress: the source counts the compressed blob bytes it receives itself
//! (the pipeline's tap would count the disk entry's decompressed bytes),
//! against the total of the layers up to the one holding the disk.

mod auth;
mod authfile;
pub mod blob;
mod challenge;
mod client;
mod error;
mod layers;
pub mod manifest;
pub mod reference;

use std::sync::Arc;

use serde::Serialize;

pub use error::RegistryError;
pub use manifest::Platform;
pub use reference::Reference;

use self::client::Client;
use self::manifest::{Descriptor, ImageConfig, Manifest, Wanted};
use super::{HttpOptions, OpenContext, OpenedSource, Source, SourceError};

/// Registry settings beside the HTTP client's: which platform to take from
/// an index, and whether to look for credentials in auth files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Architecture (`amd64`, `arm64`, `arm/v7`): `None` for the host's.
    /// When given, a single-platform image must be of this architecture.
    pub arch: Option<String>,
    /// Operating system: `None` for `linux`.
    pub os: Option<String>,
    /// Look in podman's, skopeo's and docker's auth files when no
    /// credentials are given (off in pod mode, where CDI passes them).
    pub auth_files: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            arch: None,
            os: None,
            auth_files: true,
        }
    }
}

/// What the registry said about the image, for `info` and CDI's labels.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageDetails {
    /// The reference, normalized.
    pub image: String,
    /// Digest of the manifest the reference names (an index, for a
    /// multi-platform image): what a DataImportCron records.
    pub digest: String,
    /// Digest of the platform's image manifest (equal to `digest` for a
    /// single-platform image).
    #[serde(rename = "manifest-digest")]
    pub manifest_digest: String,
    /// The platform of the image read.
    pub platform: Platform,
    /// The layers, base first.
    pub layers: Vec<LayerDetails>,
    /// The disk entry.
    pub disk: Option<DiskEntry>,
    /// The config's environment (`NAME=value`).
    #[serde(skip)]
    pub env: Vec<String>,
}

/// One layer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LayerDetails {
    /// `sha256:HEX`.
    pub digest: String,
    /// Its media type.
    #[serde(rename = "media-type")]
    pub media_type: String,
    /// Bytes as stored (compressed).
    pub size: u64,
}

/// The tar entry holding the disk.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiskEntry {
    /// Its name in the tar.
    pub name: String,
    /// Its length.
    pub size: u64,
    /// Its layer, from 1.
    pub layer: usize,
}

/// A `docker://` reference as a source.
#[derive(Debug, Clone)]
pub(crate) struct RegistrySource {
    reference: Reference,
}

impl RegistrySource {
    pub(crate) fn parse(s: &str) -> Result<RegistrySource, SourceError> {
        Ok(RegistrySource {
            reference: Reference::parse(s)?,
        })
    }
}

/// An image resolved to one platform, its config checked.
struct Resolved {
    client: Arc<Client>,
    details: ImageDetails,
    layers: Vec<Descriptor>,
}

/// Fetches the manifest (and the platform's, from an index) and the config,
/// and applies CDI's checks: schema 1 refused, the platform, bootc.
fn resolve(
    reference: &Reference,
    opts: &HttpOptions,
    rt: &tokio::runtime::Handle,
) -> Result<Resolved, SourceError> {
    let client = Arc::new(Client::connect(reference, opts, rt)?);
    let image = client.image();
    let wanted = Wanted::new(opts.registry.arch.as_deref(), opts.registry.os.as_deref());
    let expected = match &reference.target {
        reference::Target::Digest(d) => Some(d.as_str()),
        reference::Target::Tag(_) => None,
    };
    let top = client.manifest(reference.target_str(), expected)?;
    tracing::info!("{image}: manifest {}", top.digest);
    let (fetched, from_index) = match top.manifest {
        Manifest::Index(entries) => {
            let entry = wanted
                .choose(&entries)
                .ok_or_else(|| RegistryError::NoPlatform {
                    image: image.clone(),
                    wanted: wanted.to_string(),
                    available: manifest::platforms(&entries),
                })?;
            tracing::info!("{image}: index entry {} for {wanted}", entry.digest);
            let platform = entry.platform.clone();
            (
                client.manifest(&entry.digest, Some(&entry.digest))?,
                platform,
            )
        }
        other => (
            client::Fetched {
                manifest: other,
                digest: top.digest.clone(),
            },
            None,
        ),
    };
    let (config_desc, layers) = match fetched.manifest {
        Manifest::Image { config, layers } => (config, layers),
        Manifest::Schema1 => {
            return Err(RegistryError::UnsupportedManifest {
                image,
                what: "Docker schema 1".to_string(),
                hint: "; push the image again with a current tool (schema 2 or OCI)",
            }
            .into())
        }
        Manifest::Index(_) => {
            return Err(RegistryError::UnsupportedManifest {
                image,
                what: "nested index".to_string(),
                hint: "",
            }
            .into())
        }
        Manifest::Other(t) => {
            return Err(RegistryError::UnsupportedManifest {
                image,
                what: if t.is_empty() {
                    "untyped".to_string()
                } else {
                    t
                },
                hint: "",
            }
            .into())
        }
    };
    let config_body = client.small_blob(&format!("the config of {image}"), &config_desc)?;
    let config: ImageConfig =
        serde_json::from_slice(&config_body).map_err(|e| RegistryError::BadDocument {
            what: format!("the config of {image}"),
            detail: e.to_string(),
        })?;
    if wanted.explicit && from_index.is_none() && config.architecture != wanted.arch {
        return Err(RegistryError::WrongArchitecture {
            found: config.architecture.clone(),
            wanted: wanted.arch.clone(),
        }
        .into());
    }
    if !wanted.explicit && from_index.is_none() && config.architecture != wanted.arch {
        tracing::warn!(
            "{image} is a {} image; this host is {}",
            config.architecture,
            wanted.arch
        );
    }
    if config.is_bootc() {
        return Err(RegistryError::Bootc.into());
    }
    let platform = from_index.unwrap_or_else(|| Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        variant: None,
    });
    let details = ImageDetails {
        image,
        digest: top.digest,
        manifest_digest: fetched.digest,
        platform,
        layers: layers
            .iter()
            .map(|l| LayerDetails {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
            })
            .collect(),
        disk: None,
        env: config.env().to_vec(),
    };
    Ok(Resolved {
        client,
        details,
        layers,
    })
}

impl Source for RegistrySource {
    fn display(&self) -> String {
        self.reference.to_string()
    }

    fn open(&self, ctx: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        let resolved = resolve(&self.reference, ctx.http, ctx.rt)?;
        let total: u64 = resolved.layers.iter().map(|l| l.size).sum();
        ctx.counter.set_total(total);
        let found = layers::find_disk(&resolved.client, &resolved.layers, ctx.counter, ctx.pace)?;
        // Progress ends with the disk's layer: later ones are not read.
        let through: u64 = resolved
            .layers
            .iter()
            .take(found.layer.saturating_add(1))
            .map(|l| l.size)
            .sum();
        ctx.counter.set_total(through);
        let mut details = resolved.details;
        details.disk = Some(DiskEntry {
            name: found.name.clone(),
            size: found.size,
            layer: found.layer.saturating_add(1),
        });
        Ok(OpenedSource {
            reader: found.reader,
            size: Some(found.size),
            range: None,
            display: format!("{} ({})", self.reference, found.name),
            counts_itself: true,
            registry: Some(Box::new(details)),
        })
    }
}

/// The digest of the manifest `reference` names (for a multi-platform
/// image, the index's), as a DataImportCron poller records it: `sha256:HEX`.
/// Credentials, CA directories and `insecure_tls` come from `http`, as for
/// an import. Blocks; call it from a thread that is not driving `rt`.
pub fn resolve_digest(
    reference: &str,
    http: &HttpOptions,
    rt: &tokio::runtime::Handle,
) -> Result<String, SourceError> {
    let reference = Reference::parse(reference)?;
    let client = Client::connect(&reference, http, rt)?;
    let expected = match &reference.target {
        reference::Target::Digest(d) => Some(d.as_str()),
        reference::Target::Tag(_) => None,
    };
    Ok(client.manifest(reference.target_str(), expected)?.digest)
}
