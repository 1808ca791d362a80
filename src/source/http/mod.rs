//! HTTP(S) source.
//!
//! - [`endpoint`]: reqwest client (rustls with built-in roots + CA dirs,
//!   hickory DNS, env proxies, User-Agent) and hand-followed redirects that
//!   keep credentials on the original origin;
//! - [`fetch`]: the resumable transfer loop (Range + If-Range);
//! - [`retry`]: backoff and which failures are transient;
//! - [`validator`]: ETag / Last-Modified / length checks on resumes;
//! - [`reader`]: the blocking `Read` over a bounded channel;
//! - [`segments`]: the parallel segmented download;
//! - [`range`]: `RangeRead` for the planner;
//! - [`document`]: small documents fetched whole (registry manifests, tokens).

pub(crate) mod document;
mod endpoint;
mod error_body;
mod fetch;
mod range;
mod reader;
mod retry;
mod segments;
mod tls;
mod validator;

use std::sync::Arc;

use reqwest::StatusCode;

use self::endpoint::{Endpoint, Span};
use self::reader::{pipe, ChannelReader, ChannelSink};
use self::retry::RetryState;
use self::validator::Validator;
use super::{Connections, HttpOptions, OpenContext, OpenedSource, RangeRead, Source, SourceError};
use crate::pace::Pace;

/// Most parallel connections used, whatever is asked: beyond this a server
/// sees abuse rather than a download, and each connection costs a segment
/// of memory.
const MAX_CONNECTIONS: usize = 16;

/// Smallest segment: tinier ones spend more on request round trips than
/// they gain from parallelism.
const MIN_SEGMENT: usize = 64 << 10;

/// Connections in auto mode. A second connection keeps a second read going
/// on the server's disk (see [`segments`]); more would cost a segment of
/// memory each for little more.
const AUTO_SEGMENTED_CONNECTIONS: usize = 2;

/// Files below this length stream over one connection in auto mode: the
/// second connection's setup is not worth it.
const AUTO_MIN_LENGTH: u64 = 64 << 20;

/// An `http://` or `https://` URL.
#[derive(Debug, Clone)]
pub(crate) struct HttpSource {
    url: String,
}

impl HttpSource {
    pub(crate) fn new(url: &str) -> HttpSource {
        HttpSource {
            url: url.to_string(),
        }
    }
}

impl Source for HttpSource {
    fn display(&self) -> String {
        redact_url(&self.url)
    }

    fn open(&self, ctx: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        open(&self.url, ctx.http, ctx.rt, ctx.pace)
    }
}

/// Opens `url`: sends the first GET (with retries), learns the length and
/// validators, then streams the body from a task on `rt` (or, with
/// `connections > 1` and Range support, runs the segmented download).
pub(crate) fn open(
    url: &str,
    opts: &HttpOptions,
    rt: &tokio::runtime::Handle,
    pace: &Pace,
) -> Result<OpenedSource, SourceError> {
    let ep = {
        // The client spawns nothing at build time, but entering the runtime
        // keeps that an implementation detail of reqwest.
        let _guard = rt.enter();
        Arc::new(Endpoint::new(url, opts)?)
    };
    let mut retry = RetryState::new(opts);
    let first = rt.block_on(async {
        loop {
            match ep.send(Span::Whole, None).await {
                Ok(resp) if resp.status() == StatusCode::OK => return Ok(resp),
                Ok(resp) => {
                    // 2xx without a body we can use (204, 206 to no Range...).
                    return Err(SourceError::Status {
                        status: resp.status().to_string(),
                        url: ep.display.clone(),
                        detail: String::new(),
                    });
                }
                Err(failure) => retry.backoff(failure).await?,
            }
        }
    })?;
    let mut validator = Validator::from_response(&first);
    if opts.assume_ranges {
        validator.accept_ranges = true;
    }
    let validator = Arc::new(validator);
    let label = ep.display.clone();
    let size = validator.total;
    tracing::debug!(
        "{label}: length {size:?}, ETag {:?}, Last-Modified {:?}, ranges {}",
        validator.etag,
        validator.last_modified,
        validator.accept_ranges
    );
    if !validator.accept_ranges {
        tracing::warn!(
            "{label}: the server does not advertise Range support; the download cannot be resumed if the connection breaks"
        );
    } else if validator.if_range().is_none() {
        tracing::warn!(
            "{label}: the server sends neither a strong ETag nor Last-Modified; resumes are checked by length only"
        );
    }

    let range: Option<Box<dyn RangeRead>> = match (validator.accept_ranges, size) {
        (true, Some(total)) => Some(Box::new(range::HttpRange {
            ep: ep.clone(),
            validator: validator.clone(),
            opts: opts.clone(),
            rt: rt.clone(),
            total,
        })),
        _ => None,
    };

    let (sink, end) = pipe(&label);
    let (auto, connections) = match opts.connections {
        Connections::Auto => (true, AUTO_SEGMENTED_CONNECTIONS),
        Connections::Fixed(n) => (false, n.clamp(1, MAX_CONNECTIONS)),
    };
    let segment_size = opts.segment_size.max(MIN_SEGMENT);
    let worth_it = |total: u64| !auto || total >= AUTO_MIN_LENGTH;
    let task = match (connections > 1, validator.accept_ranges, size) {
        (true, true, Some(total)) if worth_it(total) => {
            tracing::info!(
                "{label}: downloading in segments of {segment_size} bytes over {connections} connections"
            );
            let opts = HttpOptions {
                segment_size,
                ..opts.clone()
            };
            // The first response only served to learn the file's identity.
            drop(first);
            pace.set_reads_ahead();
            let plan = segments::Plan {
                segment: u64::try_from(segment_size).unwrap_or(u64::MAX),
                adaptive: auto,
                pace: pace.clone(),
                connections,
            };
            rt.spawn(segments::run(
                ep.clone(),
                url.to_string(),
                validator.clone(),
                opts,
                plan,
                total,
                sink,
            ))
        }
        (multi, _, _) => {
            if multi && !auto {
                tracing::info!(
                    "{label}: one connection only (parallel download needs Range support and a known length)"
                );
            }
            rt.spawn(stream(ep.clone(), validator.clone(), retry, first, sink))
        }
    };
    Ok(OpenedSource {
        reader: Box::new(ChannelReader::new(end, task.abort_handle())),
        size,
        range,
        display: label,
        counts_itself: false,
        registry: None,
    })
}

/// The single-connection stream: the first response's body, then resumes.
async fn stream(
    ep: Arc<Endpoint>,
    validator: Arc<Validator>,
    mut retry: RetryState,
    first: reqwest::Response,
    mut sink: ChannelSink,
) {
    let result = fetch::fetch(
        &ep,
        &validator,
        &mut retry,
        (0, validator.total),
        Some(first),
        &mut sink,
    )
    .await;
    sink.finish(result).await;
}

/// `url` with any userinfo removed and its query shown as `?...`, for logs.
/// Unparsable URLs are cut at the last `@` of their authority and at their
/// query, so that neither a password nor a signature shows.
pub(super) fn redact_url(url: &str) -> String {
    if let Ok(parsed) = reqwest::Url::parse(url) {
        return endpoint::redact(&parsed);
    }
    let url = match url.split_once('?') {
        Some((before, _)) => before,
        None => url,
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redaction_removes_userinfo() {
        assert_eq!(
            redact_url("https://user:secret@example.com/a/b.img?x=1"),
            "https://example.com/a/b.img?..."
        );
        assert_eq!(redact_url("http://example.com/x"), "http://example.com/x");
        assert_eq!(redact_url("http://u:p@[bad/x"), "http://[bad/x");
        assert_eq!(redact_url("http://u:p@[bad/x?sig=1"), "http://[bad/x");
    }
}
