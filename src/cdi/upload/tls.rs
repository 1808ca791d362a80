//! The upload server's TLS: its certificate, the client CA, CDI's cipher
//! and version settings, and the client's name.
//!
//! CDI's server asks for a client certificate and verifies it when one is
//! given (`tls.VerifyClientCertIfGiven`); the handler then refuses (401) any
//! upload whose connection carries no verified chain, or whose certificate's
//! subject CN is not `CLIENT_NAME`. Here rustls' `WebPkiClientVerifier` does the
//! verification with unauthenticated clients allowed, and [`peer_name`] gives
//! the handler the CN to compare. `/healthz` (the kubelet's readiness probe
//! has no certificate) and `HEAD` on the async route answer anyone, as in CDI.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};

/// Where the certificates are and what CDI's TLS profile asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Verify client certificates against this CA; without it, no client
    /// certificate is asked for.
    pub client_ca_file: Option<PathBuf>,
    /// `TLS_CIPHERS` (OpenSSL or IANA names of TLS 1.2 suites).
    pub ciphers: Vec<String>,
    /// `TLS_MIN_VERSION`.
    pub min_version: String,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no {what}")]
    Missing { path: String, what: &'static str },
    #[error("{0}")]
    Rustls(String),
}

/// The names CDI accepts for each TLS 1.2 suite rustls implements (OpenSSL
/// names, as CDI's profiles spell them, then IANA names).
const SUITE_NAMES: &[(&str, &str)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// Whether `suite` is named by `names` (TLS 1.3 suites always are: like Go,
/// CDI's cipher list only configures TLS 1.2).
fn named(suite: &SupportedCipherSuite, names: &[String]) -> bool {
    let SupportedCipherSuite::Tls12(_) = suite else {
        return true;
    };
    let iana = suite.suite().as_str().unwrap_or_default();
    names.iter().any(|n| {
        n == iana
            || SUITE_NAMES
                .iter()
                .any(|(openssl, i)| *i == iana && n == openssl)
    })
}

/// The crypto provider: ring, with the suites `ciphers` names (all when empty).
fn provider(ciphers: &[String]) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if !ciphers.is_empty() {
        let before = p.cipher_suites.len();
        p.cipher_suites.retain(|s| named(s, ciphers));
        tracing::debug!(
            kept = p.cipher_suites.len(),
            of = before,
            "TLS cipher suites from {}",
            super::config::ENV_CIPHERS
        );
    }
    p
}

/// The protocol versions for `TLS_MIN_VERSION` (rustls has no TLS 1.0 or
/// 1.1: those minimums allow 1.2 and 1.3), without 1.2 when no TLS 1.2
/// suite is left.
fn versions(
    min: &str,
    provider: &CryptoProvider,
) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let any12 = provider
        .cipher_suites
        .iter()
        .any(|s| matches!(s, SupportedCipherSuite::Tls12(_)));
    if min == "VersionTLS13" || !any12 {
        vec![&rustls::version::TLS13]
    } else {
        if !matches!(min, "" | "VersionTLS10" | "VersionTLS11" | "VersionTLS12") {
            tracing::warn!(value = %min, "unknown {}, allowing TLS 1.2 and 1.3", super::config::ENV_MIN_VERSION);
        }
        vec![&rustls::version::TLS13, &rustls::version::TLS12]
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// The server configuration for `s`.
pub(crate) fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(&s.cert_file)?;
    let key_pem = read(&s.key_file)?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|source| TlsError::Read {
            path: s.key_file.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::Missing {
            path: s.key_file.display().to_string(),
            what: "PEM private key",
        })?;
    let provider = Arc::new(provider(&s.ciphers));
    let versions = versions(&s.min_version, &provider);
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &s.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The subject CN of the client's (verified) end-entity certificate.
///
/// rustls only hands out peer certificates it verified, so `certs` being
/// present means the chain reached the client CA. CDI compares the CN of any
/// certificate the client sent; only the end-entity one is looked at here,
/// which is what the upload proxy and clone sources present.
pub(crate) fn peer_name(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_names_select_suites() {
        let all = provider(&[]);
        let only = provider(&["ECDHE-RSA-AES128-GCM-SHA256".to_string()]);
        let tls12 = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
                .count()
        };
        assert_eq!(tls12(&all), 6);
        assert_eq!(tls12(&only), 1);
        assert_eq!(only.cipher_suites.len(), all.cipher_suites.len() - 5);
        let iana = provider(&["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_string()]);
        assert_eq!(tls12(&iana), 1);
        // Only suites rustls lacks: TLS 1.3 alone.
        let none = provider(&["AES128-SHA".to_string()]);
        assert_eq!(tls12(&none), 0);
        assert_eq!(versions("VersionTLS12", &none).len(), 1);
        assert_eq!(versions("VersionTLS12", &all).len(), 2);
        assert_eq!(versions("VersionTLS13", &all).len(), 1);
        assert_eq!(versions("", &all).len(), 2);
    }

    #[test]
    fn peer_name_reads_the_cn() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "client.upload-server.cdi.kubevirt.io",
        );
        let cert = params.self_signed(&key).expect("cert");
        let der = [cert.der().clone()];
        assert_eq!(
            peer_name(Some(&der)).as_deref(),
            Some("client.upload-server.cdi.kubevirt.io")
        );
        assert_eq!(peer_name(None), None);
        assert_eq!(peer_name(Some(&[])), None);
        assert_eq!(
            peer_name(Some(&[CertificateDer::from(vec![1, 2, 3])])),
            None
        );
    }
}
