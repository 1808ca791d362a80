//! Small documents fetched whole: a registry's manifests and image config,
//! a token service's answer. Same client, redirects, credentials rules and
//! retries as a download; the body is held in memory, up to a limit.

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::StatusCode;

use super::endpoint::{error_chain, Endpoint, Span};
use super::retry::{Failure, RetryState};
use crate::source::{HttpOptions, SourceError};

/// A document and what its answer said about it.
#[derive(Debug)]
pub(crate) struct Document {
    /// The body.
    pub body: Vec<u8>,
    /// `Content-Type`, parameters removed.
    pub content_type: Option<String>,
    /// Every response header.
    pub headers: HeaderMap,
}

/// Why a document could not be fetched: a status the caller may want to
/// read (401, 404), or any other source failure.
#[derive(Debug)]
pub(crate) enum DocumentError {
    /// The body is longer than the limit.
    TooLarge,
    /// Any other failure.
    Source(SourceError),
}

impl From<SourceError> for DocumentError {
    fn from(e: SourceError) -> Self {
        DocumentError::Source(e)
    }
}

/// GETs `url` with `accept` (when given), following redirects and retrying
/// as a download does, and returns a body of at most `limit` bytes.
pub(crate) async fn get(
    url: &str,
    opts: &HttpOptions,
    accept: Option<&str>,
    limit: u64,
) -> Result<Document, DocumentError> {
    let mut ep = Endpoint::new(url, opts)?;
    if let Some(a) = accept {
        ep.set_accept(a)?;
    }
    let mut retry = RetryState::new(opts);
    loop {
        let attempt = async {
            let resp = ep.send(Span::Whole, None).await?;
            if resp.status() != StatusCode::OK {
                return Err(Failure::Fatal(SourceError::Status {
                    status: resp.status().to_string(),
                    url: ep.display.clone(),
                    detail: String::new(),
                }));
            }
            read_body(&ep, resp, limit).await
        };
        match attempt.await {
            Ok(Some(doc)) => return Ok(doc),
            Ok(None) => return Err(DocumentError::TooLarge),
            Err(failure) => retry.backoff(failure).await?,
        }
    }
}

/// POSTs `form` to `url` (an OAuth2 token request), retrying transient
/// failures as a download does, and returns a 200 body of at most `limit`
/// bytes. No redirects are followed and no source credentials are sent.
pub(crate) async fn post_form(
    url: &str,
    opts: &HttpOptions,
    form: &[(&str, &str)],
    limit: u64,
) -> Result<Document, DocumentError> {
    let ep = Endpoint::new(url, opts)?;
    let mut retry = RetryState::new(opts);
    loop {
        let attempt = async {
            let resp = ep.post_form(form).await?;
            read_body(&ep, resp, limit).await
        };
        match attempt.await {
            Ok(Some(doc)) => return Ok(doc),
            Ok(None) => return Err(DocumentError::TooLarge),
            Err(failure) => retry.backoff(failure).await?,
        }
    }
}

/// Reads a whole body; `None` past `limit`.
async fn read_body(
    ep: &Endpoint,
    mut resp: reqwest::Response,
    limit: u64,
) -> Result<Option<Document>, Failure> {
    // Read now: reqwest's length is what remains of the body.
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let headers = resp.headers().clone();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_string());
    let mut body = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(ep.stall, resp.chunk()).await {
            Err(_) => {
                return Err(Failure::retry(SourceError::Stalled {
                    url: ep.display.clone(),
                    offset: body.len() as u64,
                    after: ep.stall,
                }))
            }
            Ok(Err(e)) => {
                return Err(Failure::retry(SourceError::Body {
                    url: ep.display.clone(),
                    offset: body.len() as u64,
                    detail: error_chain(&e),
                }))
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        if (body.len() as u64).saturating_add(chunk.len() as u64) > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    if let Some(n) = announced {
        if n != body.len() as u64 {
            return Err(Failure::retry(SourceError::Truncated {
                url: ep.display.clone(),
                offset: body.len() as u64,
                expected: n,
            }));
        }
    }
    Ok(Some(Document {
        body,
        content_type,
        headers,
    }))
}
