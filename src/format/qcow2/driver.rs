//! The driver: pulls the stream into the decoder and carries out its plan.
//!
//! Single pass whenever the layout allows. When the reorder window would
//! overflow, a seekable source (`RangeRead`) is asked for the missing tables,
//! the L1 first, then every L2 not seen yet, adjacent ranges coalesced, so the
//! whole mapping is known and the stream continues without ever downloading
//! the image twice. Otherwise the window spills or refuses (see `window.rs`).

use std::io::{self, BufRead};

use crate::format::ExtentSink;
use crate::source::RangeRead;

use super::map::MAPPING_BUDGET;
use super::stream::{Config, Feed, StreamDecoder};
use super::{DecodeReport, PlanOptions, Qcow2Error};

/// Largest single range request (bounds the fetch buffer).
const FETCH_MAX: u64 = 256 << 10;

/// `input` is consumed slice by slice where its buffer holds the bytes (the
/// network chunk, over HTTP): standard clusters go from there straight to
/// the sink, which copies them into its aligned write buffers.
pub fn decode(
    input: &mut dyn BufRead,
    mut range: Option<&mut dyn RangeRead>,
    opts: &PlanOptions,
    sink: &mut dyn ExtentSink,
) -> Result<DecodeReport, Qcow2Error> {
    let mut dec = StreamDecoder::new(Config {
        window: opts.window,
        spill: opts.spill.clone(),
        can_fetch: range.is_some(),
        mapping_budget: MAPPING_BUDGET,
    });
    let mut report = DecodeReport::default();
    loop {
        let whole = match input.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Qcow2Error::Read(e)),
        };
        let n = whole.len();
        let mut chunk = whole;
        while let Feed::NeedMetadata(used) = dec.feed(chunk, sink)? {
            chunk = chunk.get(used..).unwrap_or_default();
            let Some(r) = range.as_deref_mut() else {
                return Err(Qcow2Error::Invalid(
                    "internal: metadata fetch without a range reader".into(),
                ));
            };
            let before = report.range_requests;
            match fetch_metadata(&mut dec, r, sink, &mut report) {
                Ok(()) => {}
                // A server that advertises ranges but refuses them (or a
                // range read that fails for good) before any table arrived:
                // the stream alone can still finish the job, as it would on
                // a source without ranges. Once tables were supplied, the
                // decoder's state depends on them, so an error stays fatal.
                Err(Qcow2Error::Read(e)) if report.range_requests == before => {
                    tracing::warn!(
                        "reading the tables out of order failed ({e}); continuing with the stream alone: data ahead of its tables is held in memory, then spilled"
                    );
                    range = None;
                    dec.stop_fetching();
                }
                Err(e) => return Err(e),
            }
        }
        input.consume(n);
    }
    let (vsize, cs) = dec.finish(sink)?;
    report.virtual_size = vsize;
    report.cluster_size = cs;
    report.spilled_bytes = dec.spilled_bytes();
    Ok(report)
}

/// Reads the missing L1 (if any), then all missing L2 tables.
fn fetch_metadata(
    dec: &mut StreamDecoder,
    r: &mut dyn RangeRead,
    sink: &mut dyn ExtentSink,
    report: &mut DecodeReport,
) -> Result<(), Qcow2Error> {
    tracing::info!(
        position = dec.position(),
        "tables not seen yet and the bytes held for them reached the fetch threshold: reading the tables with range requests"
    );
    // Two rounds at most: the L1, then the L2 tables it names.
    for _ in 0..2 {
        let ranges = coalesce(dec.missing_metadata());
        if ranges.is_empty() {
            break;
        }
        let mut buf = Vec::new();
        for (a, b) in ranges {
            let mut at = a;
            while at < b {
                let n = (b - at).min(FETCH_MAX);
                buf.resize(n as usize, 0);
                r.read_exact_at(at, &mut buf).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        Qcow2Error::Invalid(format!(
                            "truncated: table at 0x{at:x} lies past the end of the image"
                        ))
                    } else {
                        Qcow2Error::Read(e)
                    }
                })?;
                report.range_requests += 1;
                report.range_bytes += n;
                dec.supply(at, &buf, sink)?;
                at += n;
            }
        }
    }
    if !dec.missing_metadata().is_empty() {
        return Err(Qcow2Error::Invalid(
            "tables still missing after range reads".into(),
        ));
    }
    Ok(())
}

/// Merges ranges that touch, after sorting.
fn coalesce(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn coalesces_adjacent_ranges() {
        assert_eq!(
            coalesce(vec![(20, 30), (0, 10), (10, 20), (40, 50)]),
            vec![(0, 30), (40, 50)]
        );
    }
}
