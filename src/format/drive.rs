//! The driver: pulls the stream into a [`Decoder`] and gets it the metadata
//! it asks for.
//!
//! Single pass whenever the layout allows. When a decoder needs metadata
//! that lies ahead of the stream ([`Feed::NeedMetadata`]):
//! - on a seekable source (a [`RangeRead`]), the ranges are read out of
//!   order, in pieces of at most [`FETCH_MAX`], and the stream goes on; the
//!   image is never downloaded twice;
//! - otherwise the stream itself is read ahead into a [`Window`] (memory up
//!   to the plan's window, then an unlinked scratch file, or a refusal by
//!   [`SpillPolicy`](super::plan::SpillPolicy)) until the ranges have
//!   passed; they are handed over, and the held bytes are replayed into the
//!   decoder in order.
//!
//! A range read that fails before any metadata arrived (a server that
//! advertises ranges and refuses them) is not fatal: the decoder is asked to
//! carry on with the stream alone.

use std::io::{self, BufRead};
use std::ops::Range;

use super::decoder::{DecodeReport, Decoder, Feed};
use super::error::FormatError;
use super::info::ImageInfo;
use super::plan::{PlanOptions, Window};
use super::sink::ExtentSink;
use crate::io::RangeRead;

/// Largest single range request (bounds the fetch buffer).
pub(crate) const FETCH_MAX: u64 = 256 << 10;

/// Bytes replayed from the read-ahead window per call to `feed`.
const REPLAY_PIECE: usize = 256 << 10;

/// How many rounds of "supply, then ask again" a decoder may take for one
/// stop (a region table naming a metadata region naming a table...).
const MAX_ROUNDS: usize = 8;

/// Decodes `input` (the unwrapped image from its first byte) with `dec`.
///
/// `range`, when given, must read the same bytes at random (a plain file or
/// an HTTP server with `Range` support, and no wrapper in between).
pub fn drive(
    dec: &mut dyn Decoder,
    input: &mut dyn BufRead,
    mut range: Option<&mut dyn RangeRead>,
    plan: &PlanOptions,
    sink: &mut dyn ExtentSink,
) -> Result<DecodeReport, FormatError> {
    let mut d = Driver {
        plan,
        pos: 0,
        ahead: None,
        report: DecodeReport::default(),
    };
    loop {
        // Bytes read ahead earlier come first, in order.
        if d.replay(dec, &mut range, input, sink)? {
            continue;
        }
        let chunk = match input.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FormatError::Read(e)),
        };
        let n = chunk.len();
        match dec.feed(chunk, sink)? {
            Feed::Done => {
                input.consume(n);
                d.pos += n as u64;
            }
            Feed::NeedMetadata(used) => {
                let used = used.min(n);
                d.pos += used as u64;
                if range.is_none() || d.ahead.is_some() {
                    // The rest of this chunk is the start of the read-ahead.
                    let rest = chunk.get(used..).unwrap_or_default();
                    d.hold(rest)?;
                    input.consume(n);
                } else {
                    input.consume(used);
                }
                d.satisfy(dec, &mut range, input, sink)?;
            }
        }
    }
    let mut report = dec.finish(sink)?;
    report.range_requests += d.report.range_requests;
    report.range_bytes += d.report.range_bytes;
    report.spilled_bytes += d.report.spilled_bytes;
    Ok(report)
}

/// Feeds `dec` only until its header is parsed ([`Decoder::info`]), for
/// `info`: at most `budget` bytes of the stream are read, and what the
/// decoder emits on the way is discarded.
pub(crate) fn probe(
    dec: &mut dyn Decoder,
    input: &mut dyn BufRead,
    mut range: Option<&mut dyn RangeRead>,
    plan: &PlanOptions,
    budget: u64,
) -> Result<Option<ImageInfo>, FormatError> {
    let mut sink = Discard;
    let mut d = Driver {
        plan,
        pos: 0,
        ahead: None,
        report: DecodeReport::default(),
    };
    while d.pos < budget {
        if let Some(info) = dec.info() {
            return Ok(Some(info));
        }
        if d.replay(dec, &mut range, input, &mut sink)? {
            continue;
        }
        let chunk = match input.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FormatError::Read(e)),
        };
        // Small steps: the header is usually in the first few KiB.
        let n = chunk.len().min(64 << 10);
        let piece = chunk.get(..n).unwrap_or_default();
        match dec.feed(piece, &mut sink)? {
            Feed::Done => {
                input.consume(n);
                d.pos += n as u64;
            }
            Feed::NeedMetadata(used) => {
                let used = used.min(n);
                d.pos += used as u64;
                if range.is_none() {
                    let rest = piece.get(used..).unwrap_or_default().to_vec();
                    input.consume(n);
                    d.hold(&rest)?;
                } else {
                    input.consume(used);
                }
                d.satisfy(dec, &mut range, input, &mut sink)?;
            }
        }
    }
    Ok(dec.info())
}

/// A sink that accepts and forgets everything (for [`probe`]).
struct Discard;

impl ExtentSink for Discard {
    fn set_virtual_size(&mut self, _: u64) -> Result<(), super::SinkError> {
        Ok(())
    }
    fn data(&mut self, _: u64, _: &[u8]) -> Result<(), super::SinkError> {
        Ok(())
    }
    fn zero(&mut self, _: u64, _: u64) -> Result<(), super::SinkError> {
        Ok(())
    }
}

/// The stream read ahead: host bytes `[start, end)` held in `window`.
struct Ahead {
    window: Window,
    end: u64,
}

struct Driver<'a> {
    plan: &'a PlanOptions,
    /// Host offset of the next byte the decoder gets.
    pos: u64,
    ahead: Option<Ahead>,
    report: DecodeReport,
}

impl Driver<'_> {
    /// Appends stream bytes at the end of the read-ahead.
    fn hold(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let pos = self.pos;
        let plan = self.plan;
        let ahead = self.ahead.get_or_insert_with(|| Ahead {
            window: Window::new(plan.window, plan.spill.clone()),
            end: pos,
        });
        ahead.window.hold(ahead.end, bytes)?;
        ahead.end += bytes.len() as u64;
        Ok(())
    }

    /// Feeds the decoder one piece of the read-ahead, if any is left.
    /// Returns false once it is used up (and dropped).
    fn replay(
        &mut self,
        dec: &mut dyn Decoder,
        range: &mut Option<&mut dyn RangeRead>,
        input: &mut dyn BufRead,
        sink: &mut dyn ExtentSink,
    ) -> Result<bool, FormatError> {
        let Some(ahead) = self.ahead.as_mut() else {
            return Ok(false);
        };
        if self.pos >= ahead.end {
            self.report.spilled_bytes += ahead.window.spilled_bytes();
            self.ahead = None;
            return Ok(false);
        }
        let n = usize::try_from(ahead.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(REPLAY_PIECE);
        let mut buf = vec![0u8; n];
        if !ahead.window.take(self.pos, &mut buf, false)? {
            return Err(FormatError::Internal("read-ahead bytes missing"));
        }
        let used = match dec.feed(&buf, sink)? {
            Feed::Done => n,
            Feed::NeedMetadata(used) => used.min(n),
        };
        ahead.window.release(self.pos, self.pos + used as u64);
        self.pos += used as u64;
        if used < n {
            self.satisfy(dec, range, input, sink)?;
        }
        Ok(true)
    }

    /// Gets the decoder everything it says is missing.
    fn satisfy(
        &mut self,
        dec: &mut dyn Decoder,
        range: &mut Option<&mut dyn RangeRead>,
        input: &mut dyn BufRead,
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let mut last: Vec<Range<u64>> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let missing = coalesce(dec.missing_metadata());
            if missing.is_empty() {
                return Ok(());
            }
            if missing == last {
                return Err(FormatError::Internal(
                    "metadata still missing after it was supplied",
                ));
            }
            if missing.iter().any(|r| r.start < self.pos) {
                return Err(FormatError::Internal(
                    "a decoder asked for metadata the stream has passed",
                ));
            }
            match range.as_deref_mut() {
                Some(r) if self.ahead.is_none() => {
                    let before = self.report.range_requests;
                    match self.fetch(dec, r, &missing, sink) {
                        Ok(()) => {}
                        Err(FormatError::Read(e)) if self.report.range_requests == before => {
                            tracing::warn!(
                                "reading the tables out of order failed ({e}); continuing with the stream alone: what cannot be placed yet is held in memory, then spilled"
                            );
                            *range = None;
                            if dec.stop_fetching() {
                                return Ok(());
                            }
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => self.read_ahead(dec, input, &missing, sink)?,
            }
            last = missing;
        }
        Err(FormatError::Internal("too many rounds of metadata"))
    }

    /// Supplies `missing` by range reads.
    fn fetch(
        &mut self,
        dec: &mut dyn Decoder,
        r: &mut dyn RangeRead,
        missing: &[Range<u64>],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        tracing::info!(
            position = self.pos,
            "metadata lies ahead of the stream: reading it with range requests"
        );
        let mut buf = Vec::new();
        for m in missing {
            let mut at = m.start;
            while at < m.end {
                let n = (m.end - at).min(FETCH_MAX);
                buf.resize(n as usize, 0);
                r.read_exact_at(at, &mut buf).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        FormatError::MetadataPastEnd {
                            start: m.start,
                            end: m.end,
                        }
                    } else {
                        FormatError::Read(e)
                    }
                })?;
                self.report.range_requests += 1;
                self.report.range_bytes += n;
                dec.supply(at, &buf, sink)?;
                at += n;
            }
        }
        Ok(())
    }

    /// Supplies `missing` by reading the stream ahead until they have passed.
    fn read_ahead(
        &mut self,
        dec: &mut dyn Decoder,
        input: &mut dyn BufRead,
        missing: &[Range<u64>],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let want = missing.iter().map(|m| m.end).max().unwrap_or(self.pos);
        if self.ahead.is_none() {
            tracing::info!(
                position = self.pos,
                "metadata lies ahead of a stream that cannot be read out of order: holding the stream until it passes"
            );
        }
        while self.ahead.as_ref().map_or(self.pos, |a| a.end) < want {
            let chunk = match input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FormatError::Read(e)),
            };
            if chunk.is_empty() {
                let m = missing
                    .iter()
                    .find(|m| m.end > self.ahead.as_ref().map_or(self.pos, |a| a.end))
                    .cloned()
                    .unwrap_or(self.pos..want);
                return Err(FormatError::MetadataPastEnd {
                    start: m.start,
                    end: m.end,
                });
            }
            let n = chunk.len();
            let pos = self.pos;
            let plan = self.plan;
            let ahead = self.ahead.get_or_insert_with(|| Ahead {
                window: Window::new(plan.window, plan.spill.clone()),
                end: pos,
            });
            ahead.window.hold(ahead.end, chunk)?;
            ahead.end += n as u64;
            input.consume(n);
        }
        let Some(ahead) = self.ahead.as_mut() else {
            return Err(FormatError::Internal("read-ahead missing"));
        };
        let mut buf = Vec::new();
        for m in missing {
            let mut at = m.start;
            while at < m.end {
                let n = (m.end - at).min(FETCH_MAX);
                buf.resize(n as usize, 0);
                if !ahead.window.take(at, &mut buf, false)? {
                    return Err(FormatError::Internal("read-ahead lost metadata bytes"));
                }
                dec.supply(at, &buf, sink)?;
                at += n;
            }
        }
        Ok(())
    }
}

/// Sorts ranges and merges those that touch or overlap; drops empty ones.
pub(crate) fn coalesce(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.retain(|r| r.start < r.end);
    v.sort_unstable_by_key(|r| (r.start, r.end));
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_adjacent_and_overlapping_ranges() {
        assert_eq!(
            coalesce(vec![20..30, 0..10, 10..20, 40..50, 45..47, 60..60]),
            vec![0..30, 40..50]
        );
    }
}
