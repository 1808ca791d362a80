//! The rustls client configuration: built-in web PKI roots plus the CA files
//! of the configured directories, or (insecure mode) a verifier that accepts
//! any certificate.
//!
//! Roots are built in (webpki-roots) rather than read from the system store
//! because the container image is `FROM scratch` and has no CA bundle.

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::source::{HttpOptions, SourceError};

/// Builds the client configuration for `opts`, with ALPN offering HTTP/2
/// first (reqwest uses a preconfigured config as is).
pub(super) fn client_config(opts: &HttpOptions) -> Result<ClientConfig, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::TlsSetup(e.to_string()))?;
    let mut config = if opts.insecure_tls {
        tracing::warn!("TLS certificate verification is disabled (insecure TLS)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for dir in &opts.ca_dirs {
            add_ca_dir(&mut roots, dir);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Adds every certificate of every non-hidden file in `dir`. Kubernetes
/// mounts secrets with `..data` symlinks and hidden timestamped directories,
/// hence the dot rule. Unreadable or unparsable files are logged and skipped:
/// one bad file should not hide the good CA beside it.
fn add_ca_dir(roots: &mut RootCertStore, dir: &Path) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!("cannot read CA directory {}: {e}", dir.display());
            return;
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    for path in paths {
        match load_pem_certs(&path) {
            Ok(certs) if certs.is_empty() => {
                tracing::warn!("no PEM certificate in {}; skipped", path.display());
            }
            Ok(certs) => {
                let (added, ignored) = roots.add_parsable_certificates(certs);
                tracing::debug!(
                    "CA file {}: {added} certificate(s) added, {ignored} ignored",
                    path.display()
                );
                if ignored > 0 {
                    tracing::warn!(
                        "{ignored} certificate(s) in {} could not be used as CA",
                        path.display()
                    );
                }
            }
            Err(e) => tracing::warn!("cannot load CA file {}: {e}; skipped", path.display()),
        }
    }
}

/// Reads all `CERTIFICATE` blocks of a PEM file.
fn load_pem_certs(path: &Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let file = fs::File::open(path)?;
    rustls_pemfile::certs(&mut BufReader::new(file)).collect()
}

/// Accepts any server certificate (the `insecure_tls` switch), but still
/// checks the handshake signatures so that the session keys belong to the
/// certificate presented.
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
