//! One request, answered as CDI's upload server answers it.
//!
//! Order of checks on an upload route (CDI's): `HEAD` on an async route is
//! 200 for anyone (virtctl's probe); a method other than POST (or PUT, for
//! `curl -T`) is 404; no verified client certificate, or one whose CN is
//! not the client name, is 401; another upload in progress is 503; an
//! upload already done is 409. Then the body streams through the pipeline:
//! 200 (empty) on success, 400 when the image does not fit, 500 with
//! `Saving stream failed: ...` otherwise. An async upload is answered once
//! its body is received, and finished in the background; a failure then
//! ends the process (exit 1), as in CDI.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::checksum::Checksum;
use crate::progress::Counter;

use super::clone::{self, CloneKind};
use super::forward::{self, Verdict};
use super::routes::{Body, Content, Mode, Route};
use super::state::{Busy, State};
use super::write::{self, Kind, Upload, Volume, WriteError};

/// The request header carrying an expected checksum, `ALGO:HEX` as
/// `IMPORTER_CHECKSUM` (md5, sha1, sha256, sha512) over the image as the
/// client sends it (for a form, the `file` part).
pub(crate) const CHECKSUM_HEADER: &str = "x-cdi-checksum";

/// How often a running upload logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Who may upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// Anyone (the CLI without `--client-ca`).
    Anyone,
    /// A client whose certificate the client CA verified, with this CN when
    /// given (CDI: always `CLIENT_NAME`).
    Client { name: Option<String> },
}

/// The client of one connection, from its TLS session.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    /// The client presented a certificate that the client CA verified.
    pub verified: bool,
    /// Its subject CN.
    pub name: Option<String>,
}

impl Auth {
    fn allows(&self, peer: &Peer) -> bool {
        match self {
            Auth::Anyone => true,
            Auth::Client { name } => {
                peer.verified
                    && name
                        .as_deref()
                        .is_none_or(|n| peer.name.as_deref() == Some(n))
            }
        }
    }
}

/// Everything the handlers share.
pub(crate) struct App {
    pub volume: Volume,
    pub auth: Auth,
    pub state: State,
    /// Progress of the current upload.
    pub counter: Arc<Counter>,
    pub metrics: Registry,
    pub rt: tokio::runtime::Handle,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// An answer after which the connection closes (its body may be unread).
fn closing(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = respond(status, body);
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// CDI's body for a failed upload.
fn stream_failed(status: StatusCode, message: &str) -> Resp {
    tracing::error!(status = status.as_u16(), "Saving stream failed: {message}");
    closing(status, format!("Saving stream failed: {message}"))
}

/// Answers one request.
pub(crate) async fn handle(
    app: Arc<App>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let route = Route::of(req.uri().path());
    tracing::debug!(method = %req.method(), path = %req.uri().path(), ?route, "request");
    Ok(match route {
        Route::Healthz => respond(StatusCode::OK, "OK"),
        Route::Metrics => {
            let mut r = respond(StatusCode::OK, super::super::metrics::render(&app.metrics));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        Route::NotFound => respond(StatusCode::NOT_FOUND, "404 page not found\n"),
        Route::Upload {
            mode,
            body,
            content,
        } => upload(app, &peer, req, mode, body, content).await,
    })
}

/// The refusals that come before anything is read.
// A refusal is the response itself; it is built once per request, so its
// size on the stack costs nothing worth a box.
#[allow(clippy::result_large_err)]
fn admit(app: &App, peer: &Peer, req: &Request<Incoming>, mode: Mode) -> Result<(), Resp> {
    if mode == Mode::Async && req.method() == Method::HEAD {
        return Err(respond(StatusCode::OK, ""));
    }
    if req.method() != Method::POST && req.method() != Method::PUT {
        return Err(closing(StatusCode::NOT_FOUND, ""));
    }
    if !app.auth.allows(peer) {
        tracing::warn!(verified = peer.verified, name = ?peer.name, "refusing an upload from an unauthorized client");
        return Err(closing(StatusCode::UNAUTHORIZED, ""));
    }
    app.state.claim().map_err(|b| match b {
        Busy::InProgress | Busy::Closing => {
            tracing::warn!("Got concurrent upload request");
            closing(StatusCode::SERVICE_UNAVAILABLE, "")
        }
        Busy::Done => {
            tracing::warn!("Got upload request after already done");
            closing(StatusCode::CONFLICT, "")
        }
    })
}

/// What the request asks for, checked before its body is read; the server
/// is claimed, so every refusal here releases it.
// A refusal is the response itself; it is built once per request, so its
// size on the stack costs nothing worth a box.
#[allow(clippy::result_large_err)]
fn plan(
    req: &Request<Incoming>,
    mode: Mode,
    body: Body,
    content: Content,
) -> Result<(Kind, Option<Checksum>, Option<String>), Resp> {
    let header = req
        .headers()
        .get(clone::HEADER)
        .and_then(|v| v.to_str().ok());
    tracing::info!("Content type header is {:?}", header.unwrap_or_default());
    let clone = CloneKind::from_header(header);
    let checksum = match req.headers().get(CHECKSUM_HEADER) {
        None => None,
        Some(v) => {
            let parsed = v
                .to_str()
                .map_err(|_| "not text".to_string())
                .and_then(|s| s.trim().parse::<Checksum>().map_err(|e| e.to_string()));
            match parsed {
                Ok(c) => Some(c),
                Err(e) => {
                    return Err(closing(
                        StatusCode::BAD_REQUEST,
                        format!("invalid {CHECKSUM_HEADER} header: {e}"),
                    ))
                }
            }
        }
    };
    let kind = match (clone, content) {
        (Some(c), _) => Kind::Clone(c),
        (None, Content::Disk) => Kind::Disk,
        (None, Content::Archive) => Kind::Archive,
    };
    if let Kind::Clone(c) = kind {
        if mode == Mode::Async {
            return Err(stream_failed(
                StatusCode::INTERNAL_SERVER_ERROR,
                "async clone not supported",
            ));
        }
        if checksum.is_some() {
            return Err(closing(
                StatusCode::BAD_REQUEST,
                format!("{CHECKSUM_HEADER} is not supported with {}", c.name()),
            ));
        }
    }
    let boundary = match body {
        Body::Plain => None,
        Body::Form => {
            let ct = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            match forward::boundary(ct) {
                Ok(b) => Some(b),
                Err(e) => return Err(closing(StatusCode::BAD_REQUEST, e)),
            }
        }
    };
    Ok((kind, checksum, boundary))
}

async fn upload(
    app: Arc<App>,
    peer: &Peer,
    req: Request<Incoming>,
    mode: Mode,
    body: Body,
    content: Content,
) -> Resp {
    if let Err(r) = admit(&app, peer, &req, mode) {
        return r;
    }
    let (kind, checksum, boundary) = match plan(&req, mode, body, content) {
        Ok(p) => p,
        Err(r) => {
            app.state.release();
            return r;
        }
    };
    let length = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    app.counter.reset();
    if let Some(n) = length {
        app.counter.set_total(n);
    }
    tracing::info!(?kind, ?mode, form = boundary.is_some(), content_length = ?length, checksum = checksum.is_some(), "upload started");

    let (tx, rx) = super::body::pipe();
    let (received_tx, mut received) = oneshot::channel();
    let verdict = Verdict::default();
    let incoming = req.into_body();
    let size = match &boundary {
        None => length,
        // The length of the whole form, not of the file.
        Some(_) => None,
    };
    match boundary {
        None => tokio::spawn(forward::body(incoming, tx, received_tx)),
        Some(b) => tokio::spawn(forward::form(incoming, b, tx, received_tx, verdict.clone())),
    };
    let logger = tokio::spawn(log_progress(Arc::clone(&app.counter), Instant::now()));
    let up = Upload {
        kind,
        body: rx,
        size,
        checksum,
    };
    let worker = Arc::clone(&app);
    let mut job = tokio::task::spawn_blocking(move || {
        write::write(&worker.volume, up, &worker.rt, Arc::clone(&worker.counter))
    });

    let result = match mode {
        Mode::Sync => (&mut job).await,
        Mode::Async => {
            let first = tokio::select! {
                r = &mut job => Some(r),
                Ok(()) = &mut received => None,
            };
            match first {
                Some(r) => r,
                None => {
                    tracing::info!(
                        "Returning success to caller, continue processing in background"
                    );
                    app.state.processing();
                    let bg = Arc::clone(&app);
                    tokio::spawn(async move {
                        let r = job.await;
                        logger.abort();
                        if let Err((_, m)) = finished(&bg, r, &verdict) {
                            tracing::error!("Error during resumed processing: {m}");
                            bg.state.fatal(m);
                        }
                    });
                    return respond(StatusCode::OK, "");
                }
            }
        }
    };
    logger.abort();
    match finished(&app, result, &verdict) {
        Ok(()) => respond(StatusCode::OK, ""),
        Err((status, m)) => stream_failed(status, &m),
    }
}

/// Records the end of an upload's write: done, or released with the
/// status and message of its failure.
fn finished(
    app: &App,
    r: Result<Result<write::Written, WriteError>, tokio::task::JoinError>,
    verdict: &Verdict,
) -> Result<(), (StatusCode, String)> {
    let client_error = verdict.lock().ok().and_then(|v| v.clone());
    match r {
        Ok(Ok(w)) => {
            app.counter.set_done();
            tracing::info!(
                bytes = app.counter.received(),
                target = %app.volume.disk.display(),
                clone = w.clone,
                "Wrote data"
            );
            app.state.done(w);
            Ok(())
        }
        Ok(Err(e)) => {
            app.state.release();
            Err(match (client_error, e) {
                (Some(why), _) => (StatusCode::BAD_REQUEST, why),
                (None, WriteError::NoCapacity(m)) => (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "effective image size is larger than the reported available storage: {m}"
                    ),
                ),
                (None, WriteError::Failed(m)) => (StatusCode::INTERNAL_SERVER_ERROR, m),
            })
        }
        Err(e) => {
            app.state.release();
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the upload thread failed: {e}"),
            ))
        }
    }
}

/// Logs the upload's progress every [`LOG_EVERY`] until aborted.
async fn log_progress(counter: Arc<Counter>, start: Instant) {
    let mut tick = tokio::time::interval(LOG_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let received = counter.received();
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let rate = received as f64 / secs / f64::from(1u32 << 20);
        match counter.total() {
            Some(total) => tracing::info!(
                received,
                total,
                percent = format!("{:.1}", counter.percent()),
                mib_per_s = format!("{rate:.1}"),
                "upload progress"
            ),
            None => tracing::info!(
                received,
                mib_per_s = format!("{rate:.1}"),
                "upload progress"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_rules() {
        let anon = Peer::default();
        let named = |n: &str| Peer {
            verified: true,
            name: Some(n.to_string()),
        };
        assert!(Auth::Anyone.allows(&anon));
        let cdi = Auth::Client {
            name: Some("client.upload-server.cdi.kubevirt.io".into()),
        };
        assert!(!cdi.allows(&anon));
        assert!(cdi.allows(&named("client.upload-server.cdi.kubevirt.io")));
        assert!(!cdi.allows(&named("someone-else")));
        let unverified = Peer {
            verified: false,
            name: Some("client.upload-server.cdi.kubevirt.io".into()),
        };
        assert!(!cdi.allows(&unverified));
        let any_cert = Auth::Client { name: None };
        assert!(any_cert.allows(&named("x")));
        assert!(!any_cert.allows(&anon));
    }
}
