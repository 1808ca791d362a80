//! The progress metric, served over HTTPS as CDI's importer serves it.
//!
//! The import controller scrapes `https://<pod>:8443/metrics` (skipping
//! certificate verification) every few seconds and parses the body with
//!
//! ```text
//! (kubevirt_cdi_import_progress_total|kubevirt_cdi_clone_progress_total)\{ownerUID\="<uid>"\} (\d{1,3}\.?\d*)
//! ```
//!
//! so the line must carry exactly one label and a plain decimal value: no
//! exponent (Go's and Rust's shortest float formats both switch to one for
//! small numbers, which the regex would misread). We quantize the percentage to
//! hundredths, which keeps the text in plain decimals, and keep a high-water
//! mark so that it never goes down. It reaches 100 only when the import is
//! durable ([`Counter::set_done`]).
//!
//! The certificate is self-signed and made at start with ECDSA P-256, which
//! takes microseconds (CDI's RSA key takes long enough to miss early scrapes).
//! Every path answers with the metrics, as CDI's `promhttp.Handler` does.

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;

use crate::progress::Counter;

/// CDI's port for the importer's metrics.
pub(crate) const DEFAULT_PORT: u16 = 8443;
/// Overrides [`DEFAULT_PORT`]; meant for tests, which run many pods side by side.
pub(crate) const PORT_ENV: &str = "STREAMDISK_METRICS_PORT";

/// The metric's name as registered; the text encoding appends `_total`.
const METRIC: &str = "kubevirt_cdi_import_progress";

/// Reads the shared [`Counter`] at scrape time.
#[derive(Debug)]
struct ProgressCollector {
    counter: Arc<Counter>,
    /// The metric's name as registered (the text encoding appends `_total`).
    name: &'static str,
    help: &'static str,
    /// The `ownerUID` label; `None` serves the line without labels.
    owner_uid: Option<String>,
    /// Highest value served so far, in hundredths of a percent.
    high_water: AtomicU64,
    /// Bytes received at the last scrape: fewer now means the counter was
    /// reset for a new transfer, whose progress starts again from 0.
    last_received: AtomicU64,
}

impl ProgressCollector {
    /// The percentage to serve now, in hundredths: quantized, monotonic.
    fn hundredths(&self) -> u64 {
        let received = self.counter.received();
        if received < self.last_received.swap(received, Ordering::AcqRel) {
            self.high_water.store(0, Ordering::Release);
        }
        let p = self.counter.percent();
        // `as` saturates; percent() is within [0, 100].
        let now = if p.is_finite() {
            (p * 100.0).floor().clamp(0.0, 10_000.0) as u64
        } else {
            0
        };
        let prev = self.high_water.fetch_max(now, Ordering::AcqRel);
        prev.max(now)
    }
}

impl Collector for ProgressCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let value = self.hundredths() as f64 / 100.0;
        let counter = ConstCounter::new(value);
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
        match &self.owner_uid {
            Some(uid) => counter.encode(family.encode_family(&[("ownerUID", uid.as_str())])?),
            // Without a label set the line has no braces, as Go's client writes it.
            None => counter.encode(family),
        }
    }
}

/// The bytes received so far, read from the shared [`Counter`] at scrape time.
#[derive(Debug)]
struct BytesCollector {
    counter: Arc<Counter>,
    name: &'static str,
    help: &'static str,
}

impl Collector for BytesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.counter.received());
        let family =
            encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
        counter.encode(family)
    }
}

/// The registry serving the import progress metric for `owner_uid`.
pub(crate) fn registry(counter: Arc<Counter>, owner_uid: &str) -> Registry {
    let mut reg = Registry::default();
    register_progress(
        &mut reg,
        counter,
        METRIC,
        "The import progress in percentage",
        Some(owner_uid),
    );
    reg
}

/// Adds a progress percentage counter named `name` (`_total` is appended),
/// quantized and monotonic as the import's, with an `ownerUID` label when given.
pub(crate) fn register_progress(
    reg: &mut Registry,
    counter: Arc<Counter>,
    name: &'static str,
    help: &'static str,
    owner_uid: Option<&str>,
) {
    reg.register_collector(Box::new(ProgressCollector {
        counter,
        name,
        help,
        owner_uid: owner_uid.map(str::to_string),
        high_water: AtomicU64::new(0),
        last_received: AtomicU64::new(0),
    }));
}

/// Adds a counter of the bytes received, named `name` (`_total` is appended).
pub(crate) fn register_bytes(
    reg: &mut Registry,
    counter: Arc<Counter>,
    name: &'static str,
    help: &'static str,
) {
    reg.register_collector(Box::new(BytesCollector {
        counter,
        name,
        help,
    }));
}

/// The text exposition of `reg`.
pub(crate) fn render(reg: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, reg) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricsError {
    #[error("generating the metrics certificate: {0}")]
    Cert(String),
    #[error("binding port {port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// A self-signed ECDSA certificate and the TLS acceptor using it.
fn tls_acceptor() -> Result<tokio_rustls::TlsAcceptor, MetricsError> {
    let cert = rcgen::generate_simple_self_signed(vec!["cdi-importer".to_string()])
        .map_err(|e| MetricsError::Cert(e.to_string()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MetricsError::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| MetricsError::Cert(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Binds `port` on all interfaces (IPv6 dual-stack, else IPv4) and serves
/// `reg` over HTTPS on `rt` until the process exits. Returns the bound address.
pub(crate) fn start(
    rt: &tokio::runtime::Handle,
    port: u16,
    reg: Arc<Registry>,
) -> Result<SocketAddr, MetricsError> {
    let acceptor = tls_acceptor()?;
    let listener = rt.block_on(async {
        match tokio::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
            Ok(l) => Ok(l),
            Err(_) => tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await,
        }
    });
    let listener = listener.map_err(|source| MetricsError::Bind { port, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { port, source })?;
    rt.spawn(accept_loop(listener, acceptor, reg));
    Ok(addr)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    reg: Arc<Registry>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let reg = Arc::clone(&reg);
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "metrics TLS handshake failed");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = render(&reg);
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller's regex, applied by hand: name, `{ownerUID="uid"} `, then
    /// `\d{1,3}\.?\d*`.
    fn controller_parse(body: &str, uid: &str) -> Option<f64> {
        let prefix = format!("kubevirt_cdi_import_progress_total{{ownerUID=\"{uid}\"}} ");
        let line = body.lines().find(|l| l.starts_with(&prefix))?;
        let v = &line[prefix.len()..];
        let int: String = v.chars().take_while(char::is_ascii_digit).collect();
        if int.is_empty() || int.len() > 3 {
            return None;
        }
        let rest = &v[int.len()..];
        let (dot, frac) = match rest.strip_prefix('.') {
            Some(r) => (
                ".",
                r.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>(),
            ),
            None => ("", String::new()),
        };
        // The whole value must be consumed: anything else (an exponent) is a misparse.
        assert_eq!(v.len(), int.len() + dot.len() + frac.len(), "{line}");
        format!("{int}{dot}{frac}").parse().ok()
    }

    #[test]
    fn line_matches_controller_regex_and_is_monotonic() {
        let c = Arc::new(Counter::default());
        let reg = registry(Arc::clone(&c), "uid-1");
        assert_eq!(controller_parse(&render(&reg), "uid-1"), Some(0.0));
        c.set_total(10_000_000);
        c.add(1); // 1e-5 percent: would print with an exponent if not quantized
        assert_eq!(controller_parse(&render(&reg), "uid-1"), Some(0.0));
        c.add(1233);
        assert_eq!(controller_parse(&render(&reg), "uid-1"), Some(0.01));
        c.add(4_000_000);
        assert_eq!(controller_parse(&render(&reg), "uid-1"), Some(40.01));
        // A larger total would lower the raw percentage; the metric holds.
        c.set_total(100_000_000);
        assert_eq!(controller_parse(&render(&reg), "uid-1"), Some(40.01));
        c.add(96_000_000);
        // Everything received but not yet durable: below 100.
        let v = controller_parse(&render(&reg), "uid-1").expect("parse");
        assert!(v < 100.0, "{v}");
        c.set_done();
        assert_eq!(controller_parse(&render(&reg), "uid-1"), Some(100.0));
        // Exactly one sample line, no other labels.
        let body = render(&reg);
        assert_eq!(
            body.lines().filter(|l| !l.starts_with('#')).count(),
            1,
            "{body}"
        );
    }

    #[test]
    fn serves_https_on_any_path() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let c = Arc::new(Counter::default());
        c.set_total(4);
        c.add(1);
        let addr = start(rt.handle(), 0, Arc::new(registry(c, "u"))).expect("start");
        // Raw TLS client without verification, as the controller scrapes.
        let body = rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            #[derive(Debug)]
            struct NoVerify(Arc<rustls::crypto::CryptoProvider>);
            impl rustls::client::danger::ServerCertVerifier for NoVerify {
                fn verify_server_cert(
                    &self,
                    _: &rustls::pki_types::CertificateDer<'_>,
                    _: &[rustls::pki_types::CertificateDer<'_>],
                    _: &rustls::pki_types::ServerName<'_>,
                    _: &[u8],
                    _: rustls::pki_types::UnixTime,
                ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error>
                {
                    Ok(rustls::client::danger::ServerCertVerified::assertion())
                }
                fn verify_tls12_signature(
                    &self,
                    m: &[u8],
                    c: &rustls::pki_types::CertificateDer<'_>,
                    d: &rustls::DigitallySignedStruct,
                ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
                {
                    rustls::crypto::verify_tls12_signature(
                        m,
                        c,
                        d,
                        &self.0.signature_verification_algorithms,
                    )
                }
                fn verify_tls13_signature(
                    &self,
                    m: &[u8],
                    c: &rustls::pki_types::CertificateDer<'_>,
                    d: &rustls::DigitallySignedStruct,
                ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
                {
                    rustls::crypto::verify_tls13_signature(
                        m,
                        c,
                        d,
                        &self.0.signature_verification_algorithms,
                    )
                }
                fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                    self.0.signature_verification_algorithms.supported_schemes()
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", addr.port()))
                .await
                .expect("connect");
            let name = rustls::pki_types::ServerName::try_from("cdi-importer").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("tls");
            tls.write_all(b"GET /any/path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut out = String::new();
            tls.read_to_string(&mut out).await.ok();
            out
        });
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("kubevirt_cdi_import_progress_total{ownerUID=\"u\"} 25.0\n"),
            "{body}"
        );
    }

    #[test]
    fn busy_port_is_reported() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        // A dual-stack listener on [::] holds the port for IPv4 too; without
        // IPv6, hold it on 0.0.0.0. Either way both of start()'s binds fail.
        let taken = std::net::TcpListener::bind("[::]:0")
            .or_else(|_| std::net::TcpListener::bind("0.0.0.0:0"))
            .expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let reg = Arc::new(registry(Arc::new(Counter::default()), "u"));
        let e = start(rt.handle(), port, reg).expect_err("port in use");
        assert!(e.to_string().contains(&port.to_string()), "{e}");
    }
}
