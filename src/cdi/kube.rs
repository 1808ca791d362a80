//! The Kubernetes API as a pod reaches it with its own service account,
//! as client-go's `rest.InClusterConfig` sets it up: the server at
//! `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, verified
//! against the service account's `ca.crt` alone, and its `token` as the
//! bearer token.
//!
//! The poller sends two requests (a GET and a JSON patch), so this is a few
//! calls on the reqwest client the binary already carries rather than a
//! Kubernetes client crate: `kube` with `k8s-openapi` would add several
//! megabytes of code to a static binary whose code pages count against the
//! pod's memory limit. No proxy is used, as CDI's poller turns it off for
//! API calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};

/// The service account's directory in every pod.
pub(crate) const SERVICE_ACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// One API request's time limit: a hung API server must not hold the
/// CronJob's pod (and with it the next polls) forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the API could not be reached or answered no.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubeError {
    /// Not in a pod (client-go's words).
    #[error("unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined")]
    NotInCluster,
    /// The token or CA file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("{}: {detail}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The HTTP client could not be built.
    #[error("building the API client: {0}")]
    Client(String),
    /// The request failed before an answer came.
    #[error("{what}")]
    Request {
        /// The request (`GET URL`).
        what: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{what}: {message} (HTTP {status})")]
    Status {
        /// The request.
        what: String,
        /// The status code.
        status: u16,
        /// The `Status` object's message, or the start of the body.
        message: String,
    },
    /// A success answer that is not the expected JSON.
    #[error("{what}: the answer is not JSON: {detail}")]
    BadBody {
        /// The request.
        what: String,
        /// The parser's words.
        detail: String,
    },
}

/// A client for the API server of the cluster this pod runs in.
pub(crate) struct InCluster {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl InCluster {
    /// client-go's in-cluster configuration, from `vars` and the service
    /// account directory `sa_dir`.
    pub(crate) fn new(vars: &[(String, String)], sa_dir: &Path) -> Result<InCluster, KubeError> {
        let get = |k: &str| super::config::env_value(vars, k);
        let (host, port) = (
            get("KUBERNETES_SERVICE_HOST"),
            get("KUBERNETES_SERVICE_PORT"),
        );
        if host.is_empty() || port.is_empty() {
            return Err(KubeError::NotInCluster);
        }
        // net.JoinHostPort: an IPv6 address goes in brackets.
        let base = if host.contains(':') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        };
        let read = |name: &str| {
            let path = sa_dir.join(name);
            std::fs::read(&path).map_err(|source| KubeError::Read { path, source })
        };
        let token = String::from_utf8_lossy(&read("token")?).trim().to_string();
        let ca_path = sa_dir.join("ca.crt");
        let ca = read("ca.crt")?;
        let tls = tls_config(&ca, &ca_path)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .hickory_dns(true)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!(
                "cdi-source-update-poller streamdisk/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| KubeError::Client(crate::error_chain(&e)))?;
        Ok(InCluster {
            base,
            token,
            client,
        })
    }

    /// The URL of `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs `path` as JSON.
    pub(crate) async fn get(&self, path: &str) -> Result<serde_json::Value, KubeError> {
        let url = self.url(path);
        let req = self.client.get(&url);
        self.send(format!("GET {url}"), req).await
    }

    /// PATCHes `path` with `body` of type `content_type`.
    pub(crate) async fn patch(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, KubeError> {
        let url = self.url(path);
        let req = self
            .client
            .patch(&url)
            .header(CONTENT_TYPE, content_type)
            .body(body);
        self.send(format!("PATCH {url}"), req).await
    }

    async fn send(
        &self,
        what: String,
        req: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, KubeError> {
        let resp = req
            .header(ACCEPT, "application/json, */*")
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .send()
            .await
            .map_err(|source| KubeError::Request {
                what: what.clone(),
                source,
            })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|source| KubeError::Request {
            what: what.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(KubeError::Status {
                what,
                status: status.as_u16(),
                message: status_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| KubeError::BadBody {
            what,
            detail: e.to_string(),
        })
    }
}

/// What a failed request's body says: a `Status` object's `message`
/// (`dataimportcrons.cdi.kubevirt.io "x" not found`), else its first line.
fn status_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

/// TLS trusting the cluster's CA only, HTTP/2 offered first.
fn tls_config(pem: &[u8], path: &Path) -> Result<rustls::ClientConfig, KubeError> {
    let bad = |detail: String| KubeError::BadCa {
        path: path.to_path_buf(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad("no usable CA certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_both_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = vec![(
            "KUBERNETES_SERVICE_HOST".to_string(),
            "10.0.0.1".to_string(),
        )];
        assert!(matches!(
            InCluster::new(&vars, dir.path()),
            Err(KubeError::NotInCluster)
        ));
        let vars = vec![
            ("KUBERNETES_SERVICE_HOST".to_string(), "fd00::1".to_string()),
            ("KUBERNETES_SERVICE_PORT".to_string(), "443".to_string()),
        ];
        // No token file in an empty directory.
        let e = InCluster::new(&vars, dir.path()).err().expect("error");
        assert!(crate::error_chain(&e).contains("token"), "{e}");
    }

    #[test]
    fn status_messages() {
        assert_eq!(
            status_message(br#"{"kind":"Status","message":"dataimportcrons.cdi.kubevirt.io \"x\" not found","code":404}"#),
            "dataimportcrons.cdi.kubevirt.io \"x\" not found"
        );
        assert_eq!(status_message(b"forbidden\nmore"), "forbidden");
    }
}
