//! Random access over HTTP for the qcow2 planner: each read is a ranged GET
//! guarded by If-Range, with the same retry and resume policy as the stream.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::endpoint::Endpoint;
use super::fetch::{fetch, Sink};
use super::retry::RetryState;
use super::validator::Validator;
use crate::io::RangeRead;
use crate::source::{HttpOptions, SourceError};

/// Range reads of one URL.
pub(super) struct HttpRange {
    pub ep: Arc<Endpoint>,
    pub validator: Arc<Validator>,
    pub opts: HttpOptions,
    pub rt: tokio::runtime::Handle,
    /// File length, from the first response.
    pub total: u64,
}

impl RangeRead for HttpRange {
    /// Called from the pipeline's blocking thread, hence `block_on`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = u64::try_from(buf.len()).map_err(io::Error::other)?;
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= self.total)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "range read of {len} bytes at {offset} is past the end of {} ({} bytes)",
                        self.ep.display, self.total
                    ),
                )
            })?;
        let mut sink = SliceSink {
            buf,
            filled: 0,
            display: &self.ep.display,
        };
        let mut retry = RetryState::new(&self.opts);
        self.rt
            .block_on(fetch(
                &self.ep,
                &self.validator,
                &mut retry,
                (offset, Some(end)),
                None,
                &mut sink,
            ))
            .map_err(SourceError::into_io)?;
        if sink.filled != sink.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short range read from {}", self.ep.display),
            ));
        }
        Ok(())
    }
}

/// Copies fetched bytes into the caller's buffer. `fetch` never delivers
/// more than the requested span, so the buffer cannot overflow; the check
/// below guards that anyway.
struct SliceSink<'a> {
    buf: &'a mut [u8],
    filled: usize,
    display: &'a str,
}

impl Sink for SliceSink<'_> {
    async fn put(&mut self, data: Bytes) -> Result<(), SourceError> {
        let dest = self
            .filled
            .checked_add(data.len())
            .and_then(|end| self.buf.get_mut(self.filled..end))
            .ok_or_else(|| SourceError::Internal {
                url: self.display.to_string(),
                detail: "range read received more bytes than asked".to_string(),
            })?;
        dest.copy_from_slice(&data);
        self.filled = self.filled.saturating_add(data.len());
        Ok(())
    }
}
