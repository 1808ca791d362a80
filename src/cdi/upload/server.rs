//! The listener: HTTPS connections served with hyper (HTTP/1.1) until one
//! upload succeeds, an async upload fails after its answer, or the deadline
//! passes with nothing in flight.
//!
//! After the last upload the listener closes, and the connections still
//! open get [`DRAIN_TIME`] to finish (the answer to that upload is on one
//! of them) before the process goes on to write its termination message.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::progress::Counter;

use super::handler::{self, App, Auth, Peer};
use super::linger::Linger;
use super::state::{Event, State};
use super::tls::{self, TlsError, TlsSettings};
use super::write::{Volume, Written};

/// CDI's `ReadHeaderTimeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish after the last upload.
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// How long a connection may still start a request after the last upload
/// (which is then refused: 409) before an idle one is closed.
const GRACE: Duration = Duration::from_secs(1);
/// How often a busy server checks again once the deadline has passed
/// (CDI: every 2 s).
const DEADLINE_RECHECK: Duration = Duration::from_secs(2);

/// What the server needs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Host to bind (empty: every interface).
    pub address: String,
    pub port: u16,
    pub tls: TlsSettings,
    pub auth: Auth,
    pub volume: Volume,
    /// Stop accepting uploads then (CDI's `DEADLINE`).
    pub deadline: Option<SystemTime>,
    /// The progress metric's `ownerUID` label, when one is known.
    pub owner_uid: Option<String>,
}

/// How the server ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
    /// One upload succeeded.
    Complete(Written),
    /// The deadline passed before any upload succeeded.
    DeadlinePassed,
}

/// Why the server stopped with an error (the process exits 1).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("Error getting TLS config")]
    Tls(#[source] TlsError),
    #[error("Error creating upload listener on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// An async upload failed after its answer (CDI's `errChan`).
    #[error("{0}")]
    Upload(String),
}

/// The progress metric. CDI's upload server has none (the DataVolume shows
/// N/A); the name follows the importer's and cloner's
/// `kubevirt_cdi_<operation>_progress_total` (a percentage, monotonic), so
/// the controller's regex pattern and dashboards extend to it with the
/// operation's name. A clone target serves it too: the clone source's own
/// `kubevirt_cdi_clone_progress_total` is scraped from the source pod, and a
/// second series of that name would be ambiguous. The bytes received come
/// with it, since a clone stream has no length and so no percentage.
fn metrics(
    counter: &Arc<Counter>,
    owner_uid: Option<&str>,
) -> prometheus_client::registry::Registry {
    let mut reg = prometheus_client::registry::Registry::default();
    super::super::metrics::register_progress(
        &mut reg,
        Arc::clone(counter),
        "kubevirt_cdi_upload_progress",
        "The upload progress in percentage",
        owner_uid,
    );
    super::super::metrics::register_bytes(
        &mut reg,
        Arc::clone(counter),
        "kubevirt_cdi_upload_received_bytes",
        "Bytes of the current upload received",
    );
    reg
}

/// Binds the listening socket: the named host, or every interface
/// (IPv6 dual-stack, else IPv4).
async fn bind(address: &str, port: u16) -> Result<TcpListener, ServeError> {
    let failed = |source| ServeError::Bind {
        addr: format!("{address}:{port}"),
        source,
    };
    if address.is_empty() {
        match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .await
                .map_err(failed),
        }
    } else {
        let host = address.trim_start_matches('[').trim_end_matches(']');
        TcpListener::bind((host, port)).await.map_err(failed)
    }
}

/// Runs the server on `rt` until it finishes; `listening` is told the bound
/// address once the socket is open.
pub(crate) fn run(
    settings: Settings,
    rt: &tokio::runtime::Runtime,
    listening: impl FnOnce(SocketAddr),
) -> Result<Finished, ServeError> {
    let config = tls::server_config(&settings.tls).map_err(ServeError::Tls)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let counter = Arc::new(Counter::default());
    let (state, mut events) = State::new();
    let app = Arc::new(App {
        volume: settings.volume.clone(),
        auth: settings.auth.clone(),
        state,
        metrics: metrics(&counter, settings.owner_uid.as_deref()),
        counter,
        rt: rt.handle().clone(),
    });
    rt.block_on(async move {
        let listener = bind(&settings.address, settings.port).await?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: format!("{}:{}", settings.address, settings.port),
            source,
        })?;
        tracing::info!(%addr, "Running server on {}:{}", settings.address, settings.port);
        listening(addr);

        let until_deadline = settings.deadline.map(|d| {
            d.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        let deadline = tokio::time::sleep(until_deadline.unwrap_or(Duration::MAX / 4));
        tokio::pin!(deadline);
        let mut past_deadline = false;
        let mut recheck = tokio::time::interval(DEADLINE_RECHECK);
        let mut conns = JoinSet::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let end = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        conns.spawn(connection(
                            tcp,
                            peer,
                            acceptor.clone(),
                            Arc::clone(&app),
                            stop_rx.clone(),
                        ));
                    }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(ev) = events.recv() => match ev {
                    Event::Done(w) => {
                        tracing::info!("Shutting down http server after successful upload");
                        break Ok(Finished::Complete(w));
                    }
                    Event::Fatal(m) => break Err(ServeError::Upload(m)),
                },
                () = &mut deadline, if until_deadline.is_some() && !past_deadline => {
                    tracing::info!("deadline exceeded, shutting down");
                    past_deadline = true;
                    recheck.reset_immediately();
                }
                _ = recheck.tick(), if past_deadline => match app.state.close_if_idle() {
                    None => tracing::info!("waiting for upload to finish"),
                    // The success's event is queued: the next turn takes it.
                    Some(true) => {}
                    Some(false) => {
                        tracing::info!("upload not done, process exiting");
                        break Ok(Finished::DeadlinePassed);
                    }
                },
                Some(_) = conns.join_next() => {}
            }
        };
        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIME, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!("closing connections still open");
            conns.abort_all();
        }
        end
    })
}

/// One connection: the TLS handshake, the client's identity, then HTTP/1.1.
async fn connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Arc<App>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Linger::new(tcp))).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::info!(peer = %addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    let certs = tls.get_ref().1.peer_certificates();
    let peer = Arc::new(Peer {
        verified: certs.is_some_and(|c| !c.is_empty()),
        name: tls::peer_name(certs),
    });
    tracing::debug!(peer = %addr, verified = peer.verified, name = ?peer.name, "connection");
    let service = hyper::service::service_fn(move |req| {
        handler::handle(Arc::clone(&app), Arc::clone(&peer), req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        () = async {
            let _ = stop.wait_for(|s| *s).await;
        } => {
            // The connection keeps being served through the grace, so a
            // request sent right after the last upload gets its 409.
            tokio::select! {
                r = conn.as_mut() => r,
                () = tokio::time::sleep(GRACE) => {
                    // Finishes a request in flight, closes an idle connection.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(peer = %addr, error = %e, "connection ended");
    }
}
