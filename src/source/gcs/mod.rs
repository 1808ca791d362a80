//! GCS source: `gs://BUCKET/OBJECT`, read through the HTTP source (resume,
//! retries, two connections, range reads, the ETag check) from the JSON
//! API's media download, `{endpoint}/storage/v1/b/BUCKET/o/OBJECT?alt=media`,
//! which Google and the emulators all serve.
//!
//! | module | concern |
//! |---|---|
//! | [`key`] | the service-account key file |
//! | [`token`] | the JWT bearer flow and the token cache |
//!
//! Public objects are read anonymously; with a service-account key every
//! request carries a bearer token renewed before it expires, so a download
//! may take as long as it takes (CDI's is bound to a 60-second context).

mod error;
mod key;
mod token;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::GcsError;

use super::{percent, HttpOptions, OpenContext, OpenedSource, Source, SourceError};

/// Google's storage endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// Where the credentials of a `gs://` source come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GcsCredentials {
    /// The key file named by `GOOGLE_APPLICATION_CREDENTIALS`, else
    /// anonymous.
    #[default]
    Default,
    /// This service-account key file.
    File(PathBuf),
    /// No credentials.
    Anonymous,
}

/// GCS settings beside the HTTP client's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcsOptions {
    /// The service's URL (`--gcs-endpoint`, for emulators and private
    /// endpoints); [`DEFAULT_ENDPOINT`] when `None`.
    pub endpoint: Option<String>,
    /// Where credentials come from.
    pub credentials: GcsCredentials,
}

/// A bucket and an object in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    pub bucket: String,
    pub name: String,
}

impl Object {
    fn new(bucket: &str, name: &str) -> Result<Object, String> {
        if bucket.is_empty()
            || bucket
                .chars()
                .any(|c| c.is_whitespace() || "/?#@:".contains(c))
        {
            return Err(format!("{bucket:?} is not a bucket name"));
        }
        if name.is_empty() {
            return Err("the object name is empty".to_string());
        }
        if name.chars().any(char::is_control) {
            return Err("the object name holds control characters".to_string());
        }
        Ok(Object {
            bucket: bucket.to_string(),
            name: name.to_string(),
        })
    }

    /// `gs://BUCKET/OBJECT`.
    fn display(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.name)
    }
}

/// A `gs://BUCKET/OBJECT` locator, with the endpoint CDI's `http(s)` form
/// names (the options' otherwise).
#[derive(Debug, Clone)]
pub(crate) struct GcsSource {
    object: Object,
    endpoint: Option<String>,
}

impl GcsSource {
    /// Parses `gs://BUCKET/OBJECT` (the object name taken literally).
    pub(crate) fn parse(s: &str) -> Result<GcsSource, SourceError> {
        let bad = |reason: String| GcsError::BadLocation {
            location: s.to_string(),
            reason,
        };
        let rest = s
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("gs://"))
            .and_then(|_| s.get(5..))
            .ok_or_else(|| bad("expected gs://BUCKET/OBJECT".to_string()))?;
        let (bucket, name) = rest.split_once('/').ok_or_else(|| {
            bad("no object after the bucket (expected gs://BUCKET/OBJECT)".to_string())
        })?;
        Ok(GcsSource {
            object: Object::new(bucket, name).map_err(bad)?,
            endpoint: None,
        })
    }

    /// CDI's endpoint forms: `gs://BUCKET/OBJECT`, or
    /// `http(s)://HOST/BUCKET/OBJECT` for the service at `http(s)://HOST`
    /// (the path percent-decoded, as CDI's URL parser decodes it).
    pub(crate) fn parse_pod(s: &str) -> Result<GcsSource, SourceError> {
        if s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("gs://")) {
            return Self::parse(s);
        }
        let bad = |reason: String| GcsError::BadLocation {
            location: super::http::redact_url(s),
            reason,
        };
        let url = reqwest::Url::parse(s).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!("unsupported scheme {:?}", url.scheme())).into());
        }
        let host = url.host_str().unwrap_or_default();
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let path = percent::decode(url.path().trim_start_matches('/'))
            .ok_or_else(|| bad("the path is not valid UTF-8 once decoded".to_string()))?;
        let (bucket, name) = path.split_once('/').unwrap_or((path.as_str(), ""));
        Ok(GcsSource {
            object: Object::new(bucket, name).map_err(|r| {
                bad(format!(
                    "{r} (expected {}://{host}{port}/BUCKET/OBJECT)",
                    url.scheme()
                ))
            })?,
            endpoint: Some(format!("{}://{host}{port}", url.scheme())),
        })
    }

    /// [`Self::parse_pod`]'s `gs://BUCKET/OBJECT` and the endpoint its
    /// `http(s)` form names, for the pod to hand to the source options.
    pub(crate) fn pod_parts(s: &str) -> Result<(String, Option<String>), SourceError> {
        let src = Self::parse_pod(s)?;
        Ok((src.object.display(), src.endpoint))
    }

    /// The media download URL on `endpoint`.
    fn url(&self, endpoint: &str) -> Result<String, GcsError> {
        let bad = |reason: String| GcsError::BadEndpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let base = reqwest::Url::parse(endpoint).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none_or(str::is_empty) {
            return Err(bad("expected an http(s) URL with a host".to_string()));
        }
        if base.query().is_some() || !base.username().is_empty() || base.password().is_some() {
            return Err(bad(
                "an endpoint has no query and no credentials".to_string()
            ));
        }
        Ok(format!(
            "{}/storage/v1/b/{}/o/{}?alt=media",
            base.as_str().trim_end_matches('/'),
            percent::encode(&self.object.bucket, false),
            percent::encode(&self.object.name, false)
        ))
    }
}

/// The key file to use, if any.
fn key_path(how: &GcsCredentials) -> Option<PathBuf> {
    match how {
        GcsCredentials::Anonymous => None,
        GcsCredentials::File(p) => Some(p.clone()),
        GcsCredentials::Default => std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    }
}

impl Source for GcsSource {
    fn display(&self) -> String {
        self.object.display()
    }

    fn open(&self, ctx: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        let object = self.object.display();
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| ctx.http.gcs.endpoint.clone())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let url = self.url(&endpoint)?;
        let auth = match key_path(&ctx.http.gcs.credentials) {
            Some(path) => Some(Arc::new(token::TokenAuth::new(
                key::ServiceAccount::load(&path)?,
                ctx.http,
            ))),
            None => None,
        };
        let credentials = match &auth {
            Some(a) => format!("service account {}", a.email()),
            None => "no credentials (anonymous requests)".to_string(),
        };
        tracing::info!("{object}: {}, {credentials}", super::http::redact_url(&url));
        let opts = HttpOptions {
            basic_auth: None,
            authorizer: auth.map(|a| a as Arc<dyn super::Authorize>),
            assume_ranges: true,
            ..ctx.http.clone()
        };
        let mut opened = super::http::open(&url, &opts, ctx.rt, ctx.pace)
            .map_err(|e| explain(e, &object, &credentials))?;
        opened.display = object;
        Ok(opened)
    }
}

/// Turns a refusal into a message that says what to check.
fn explain(e: SourceError, object: &str, credentials: &str) -> SourceError {
    let last = match &e {
        SourceError::RetriesExhausted { last, .. } => last.as_ref(),
        other => other,
    };
    let SourceError::Status { status, .. } = last else {
        return e;
    };
    let cause = last.to_string();
    let anonymous = credentials.starts_with("no credentials");
    let err = match status.split_whitespace().next().unwrap_or_default() {
        "401" | "403" => GcsError::AccessDenied {
            object: object.to_string(),
            cause,
            credentials: credentials.to_string(),
            hint: if anonymous {
                "the object is not public: give a service-account key (GOOGLE_APPLICATION_CREDENTIALS)"
            } else {
                "check that the service account may read the object (roles/storage.objectViewer)"
            },
        },
        "404" => GcsError::NotFound {
            object: object.to_string(),
            cause,
        },
        _ => return e,
    };
    err.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_and_urls() {
        let s = GcsSource::parse("gs://bkt/dir/disk image.qcow2").expect("parse");
        assert_eq!(s.object.display(), "gs://bkt/dir/disk image.qcow2");
        assert_eq!(
            s.url(DEFAULT_ENDPOINT).expect("url"),
            "https://storage.googleapis.com/storage/v1/b/bkt/o/dir%2Fdisk%20image.qcow2?alt=media"
        );
        assert_eq!(
            s.url("http://127.0.0.1:4443/").expect("url"),
            "http://127.0.0.1:4443/storage/v1/b/bkt/o/dir%2Fdisk%20image.qcow2?alt=media"
        );
        for bad in ["gs://bkt", "gs://bkt/", "gs:///o", "s3://b/o"] {
            assert!(GcsSource::parse(bad).is_err(), "{bad}");
        }
        for bad in ["ftp://x", "http://u:p@h", "http://h/?q=1", "junk"] {
            assert!(s.url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cdi_endpoint_forms() {
        let s = GcsSource::parse_pod("gs://bkt/a/b.img").expect("gs");
        assert_eq!((s.object.name.as_str(), s.endpoint), ("a/b.img", None));
        let s =
            GcsSource::parse_pod("https://storage.googleapis.com/bkt/a/b%20c.img").expect("https");
        assert_eq!(s.object, Object::new("bkt", "a/b c.img").expect("o"));
        assert_eq!(
            s.endpoint.as_deref(),
            Some("https://storage.googleapis.com")
        );
        let s = GcsSource::parse_pod("http://127.0.0.1:4443/bkt/o").expect("emulator");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        for bad in ["http://h/bkt", "ftp://h/b/o", "http://h/"] {
            assert!(GcsSource::parse_pod(bad).is_err(), "{bad}");
        }
    }
}
