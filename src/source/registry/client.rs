//! [`Client`]: one registry and repository over the distribution API: the
//! `/v2/` ping (which also settles https or, with `--insecure`, plain http),
//! manifests by tag or digest, small blobs whole, large blobs as streams.
//! Every request goes through the HTTP source's endpoint with
//! [`RegistryAuth`] as its authorizer.

use std::sync::Arc;

use super::auth::RegistryAuth;
use super::blob;
use super::manifest::{self, Descriptor, Manifest};
use super::reference::Reference;
use super::{authfile, RegistryError};
use crate::pace::Pace;
use crate::source::http::document::{self, Document, DocumentError};
use crate::source::{HttpOptions, OpenedSource, SourceError};

/// Largest manifest or image config read (the distribution spec suggests
/// registries accept manifests of 4 MiB).
const MAX_DOCUMENT: u64 = 4 << 20;

/// A manifest as fetched.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// What it is.
    pub manifest: Manifest,
    /// `sha256:HEX` of its bytes.
    pub digest: String,
}

/// One repository on one registry.
#[derive(Debug)]
pub(crate) struct Client {
    /// `https://host[:port]` or `http://...`.
    base: String,
    reference: Reference,
    /// Client settings with the registry's authorizer.
    http: HttpOptions,
    rt: tokio::runtime::Handle,
}

impl Client {
    /// Connects: builds the credentials (given ones first, then the auth
    /// files when `opts.registry.auth_files`), then pings `/v2/`.
    pub(crate) fn connect(
        reference: &Reference,
        opts: &HttpOptions,
        rt: &tokio::runtime::Handle,
    ) -> Result<Client, SourceError> {
        let creds = opts.basic_auth.clone().or_else(|| {
            if opts.registry.auth_files {
                authfile::lookup(
                    &authfile::default_files(),
                    &reference.registry,
                    &reference.repository,
                )
            } else {
                None
            }
        });
        let auth = RegistryAuth::new(&reference.registry, &reference.repository, creds, opts);
        let http = HttpOptions {
            // The registry says which scheme it wants; the authorizer
            // answers (basic auth is never sent unasked).
            basic_auth: None,
            authorizer: Some(Arc::new(auth)),
            ..opts.clone()
        };
        let mut client = Client {
            base: format!("https://{}", reference.api_host),
            reference: reference.clone(),
            http,
            rt: rt.clone(),
        };
        client.ping()?;
        Ok(client)
    }

    /// `GET /v2/`: the registry answers (after the token flow, if it asks).
    /// With `--insecure`, https is tried once and plain http after it.
    fn ping(&mut self) -> Result<(), SourceError> {
        let insecure = self.http.insecure_tls;
        let first = if insecure {
            let once = HttpOptions {
                max_attempts: 1,
                ..self.http.clone()
            };
            self.get_with(&format!("{}/v2/", self.base), &once, None)
        } else {
            self.get(&format!("{}/v2/", self.base), None)
        };
        match first {
            Ok(_) => Ok(()),
            Err(e) if insecure && !is_answer(&e) => {
                let http_base = format!("http://{}", self.reference.api_host);
                tracing::info!(
                    "{}: https failed ({}); trying plain http (insecure)",
                    self.reference.api_host,
                    crate::error_chain(&e)
                );
                self.get(&format!("{http_base}/v2/"), None)?;
                self.base = http_base;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn get(&self, url: &str, accept: Option<&str>) -> Result<Document, SourceError> {
        self.get_with(url, &self.http, accept)
    }

    fn get_with(
        &self,
        url: &str,
        opts: &HttpOptions,
        accept: Option<&str>,
    ) -> Result<Document, SourceError> {
        self.rt
            .block_on(document::get(url, opts, accept, MAX_DOCUMENT))
            .map_err(|e| match e {
                DocumentError::TooLarge => RegistryError::TooLarge {
                    what: url.to_string(),
                    limit: MAX_DOCUMENT,
                }
                .into(),
                DocumentError::Source(e) => e,
            })
    }

    /// The image, for messages.
    pub(crate) fn image(&self) -> String {
        self.reference.to_string()
    }

    /// The manifest named by `target` (a tag or digest); verified against
    /// `expected` when the caller knows its digest.
    pub(crate) fn manifest(
        &self,
        target: &str,
        expected: Option<&str>,
    ) -> Result<Fetched, SourceError> {
        let url = format!(
            "{}/v2/{}/manifests/{target}",
            self.base, self.reference.repository
        );
        let doc = self.get(&url, Some(manifest::ACCEPT))?;
        let digest = blob::digest_of(&doc.body);
        if let Some(want) = expected {
            blob::check_whole(&format!("manifest {want}"), &doc.body, want)?;
        } else if let Some(said) = doc
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if said != digest {
                tracing::warn!(
                    "{}: the registry names the manifest {said}, its bytes hash to {digest}",
                    self.image()
                );
            }
        }
        let manifest =
            Manifest::parse(&doc.body, doc.content_type.as_deref()).map_err(|detail| {
                RegistryError::BadDocument {
                    what: format!("the manifest of {}", self.image()),
                    detail,
                }
            })?;
        Ok(Fetched { manifest, digest })
    }

    fn blob_url(&self, digest: &str) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}",
            self.base, self.reference.repository
        )
    }

    /// A small blob (the image config) whole, verified.
    pub(crate) fn small_blob(&self, what: &str, d: &Descriptor) -> Result<Vec<u8>, SourceError> {
        if d.size > MAX_DOCUMENT {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit: MAX_DOCUMENT,
            }
            .into());
        }
        let doc = self.get(&self.blob_url(&d.digest), None)?;
        blob::check_whole(what, &doc.body, &d.digest)?;
        Ok(doc.body)
    }

    /// A blob as a stream, through the HTTP source (redirects, retries,
    /// resume at the exact byte).
    pub(crate) fn open_blob(
        &self,
        d: &Descriptor,
        pace: &Pace,
    ) -> Result<OpenedSource, SourceError> {
        crate::source::http::open(&self.blob_url(&d.digest), &self.http, &self.rt, pace)
    }
}

/// Whether `e` is the registry's answer (a status, an auth refusal) rather
/// than a failure to talk to it at all.
fn is_answer(e: &SourceError) -> bool {
    match e {
        SourceError::Status { .. } | SourceError::Registry(_) => true,
        SourceError::RetriesExhausted { last, .. } => is_answer(last),
        _ => false,
    }
}
