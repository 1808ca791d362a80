//! The resumable transfer loop: read a byte span of the file, and when the
//! body breaks (reset, early EOF, stall), ask again from the exact next byte
//! with `Range` + `If-Range`, so that the sink sees one seamless stream.

use std::future::Future;

use bytes::Bytes;
use reqwest::{Response, StatusCode};

use super::endpoint::{error_chain, Endpoint, Span};
use super::retry::{Failure, RetryState};
use super::validator::Validator;
use crate::source::SourceError;

/// Where fetched bytes go, in order. `put` may wait (backpressure).
pub(super) trait Sink: Send {
    fn put(&mut self, data: Bytes) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// Fetches bytes `[start, end)` (to the end of the file when `end` is
/// `None`) into `sink`. `first`, if given, is a response already open at
/// `start` (the initial 200 of a stream). Retries follow `retry`.
pub(super) async fn fetch<S: Sink>(
    ep: &Endpoint,
    validator: &Validator,
    retry: &mut RetryState,
    span: (u64, Option<u64>),
    mut first: Option<Response>,
    sink: &mut S,
) -> Result<(), SourceError> {
    let (start, end) = span;
    let mut pos = start;
    loop {
        if end == Some(pos) && first.is_none() {
            return Ok(());
        }
        let resp = match first.take() {
            Some(resp) => resp,
            None => match open_range(ep, validator, pos, end).await {
                Ok(Some(resp)) => resp,
                // Nothing after `pos`: a length-less body was complete.
                Ok(None) => return Ok(()),
                Err(failure) => {
                    retry.backoff(failure).await?;
                    continue;
                }
            },
        };
        match pump(ep, resp, &mut pos, end, retry, sink).await {
            Ok(Ended::Complete) => return Ok(()),
            Ok(Ended::ByClose) if validator.accept_ranges => {
                // Ask for the bytes after `pos`: a 416 naming `pos` as the
                // length proves the body was whole; a 206 carries on.
                tracing::debug!(
                    "{}: body ended by connection close at byte {pos}; checking that nothing follows",
                    ep.display
                );
            }
            Ok(Ended::ByClose) => {
                tracing::warn!(
                    "{}: the body had no length and ended with the connection at byte {pos}; completeness cannot be verified",
                    ep.display
                );
                return Ok(());
            }
            Err(failure) => {
                retry.backoff(failure).await?;
                tracing::info!("resuming {} at byte {pos}", ep.display);
            }
        }
    }
}

/// Sends a ranged GET guarded by If-Range and checks that the answer is the
/// requested part of the same file. `Ok(None)` means that the file, whose
/// length was not known, ends exactly at `start`.
async fn open_range(
    ep: &Endpoint,
    validator: &Validator,
    start: u64,
    end: Option<u64>,
) -> Result<Option<Response>, Failure> {
    let resp = ep
        .send(Span::From { start, end }, validator.if_range())
        .await?;
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            validator.check_partial(&resp, &ep.display, start)?;
            Ok(Some(resp))
        }
        StatusCode::OK => {
            // A retry of a whole-file stream that broke before its first
            // byte may get the whole file back, which is what it needs, if
            // it is still the same file.
            let whole = start == 0 && (end.is_none() || end == validator.total);
            match validator.full_answer_to_range(&resp, &ep.display, start) {
                SourceError::RangeIgnored { .. } if whole => Ok(Some(resp)),
                err => Err(Failure::Fatal(err)),
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE
            if end.is_none() && Validator::unsatisfied_length(&resp) == Some(start) =>
        {
            Ok(None)
        }
        status @ (StatusCode::RANGE_NOT_SATISFIABLE | StatusCode::PRECONDITION_FAILED) => {
            // The file is gone, shorter than where we are, or different.
            Err(Failure::Fatal(Validator::precondition_failed(
                status,
                &ep.display,
            )))
        }
        other => Err(Failure::Fatal(SourceError::Status {
            status: other.to_string(),
            url: ep.display.clone(),
            detail: String::new(),
        })),
    }
}

/// How a response body ended without error.
enum Ended {
    /// At its announced length (Content-Length, chunked end, HTTP/2 end of
    /// stream), or at the end of the requested span.
    Complete,
    /// By the server closing the connection, with no length announced: a
    /// cut connection looks the same.
    ByClose,
}

/// Whether a response has no framing of its own (HTTP/1 with neither
/// Content-Length nor chunked encoding), so only the connection close ends it.
fn delimited_by_close(resp: &Response) -> bool {
    resp.version() <= reqwest::Version::HTTP_11
        && resp.content_length().is_none()
        && !resp
            .headers()
            .get_all(reqwest::header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// Moves one response body into `sink`, advancing `pos`. Ends with `Ok` when
/// the body ended cleanly, or a retryable failure when it broke.
async fn pump<S: Sink>(
    ep: &Endpoint,
    mut resp: Response,
    pos: &mut u64,
    end: Option<u64>,
    retry: &mut RetryState,
    sink: &mut S,
) -> Result<Ended, Failure> {
    let by_close = delimited_by_close(&resp);
    loop {
        let chunk = match tokio::time::timeout(ep.stall, resp.chunk()).await {
            Err(_) => {
                return Err(Failure::retry(SourceError::Stalled {
                    url: ep.display.clone(),
                    offset: *pos,
                    after: ep.stall,
                }))
            }
            Ok(Err(e)) => {
                return Err(Failure::retry(SourceError::Body {
                    url: ep.display.clone(),
                    offset: *pos,
                    detail: error_chain(&e),
                }))
            }
            Ok(Ok(chunk)) => chunk,
        };
        let Some(data) = chunk else {
            return match end {
                Some(expected) if *pos < expected => Err(Failure::retry(SourceError::Truncated {
                    url: ep.display.clone(),
                    offset: *pos,
                    expected,
                })),
                Some(_) => Ok(Ended::Complete),
                None if by_close => Ok(Ended::ByClose),
                None => Ok(Ended::Complete),
            };
        };
        if data.is_empty() {
            continue;
        }
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let next = pos.checked_add(len);
        match (next, end) {
            (Some(next), Some(expected)) if next <= expected => *pos = next,
            (Some(next), None) => *pos = next,
            (_, expected) => {
                return Err(Failure::Fatal(SourceError::TooLong {
                    url: ep.display.clone(),
                    expected: expected.unwrap_or(u64::MAX),
                }))
            }
        }
        retry.progress();
        sink.put(data).await.map_err(Failure::Fatal)?;
    }
}
