//! Runs an [`ImportJob`]: open the input, decode into the target, drain,
//! verify, finish.
//!
//! This is the only place that wires the stages together ([`open_input`]
//! for the input side, [`run`] and [`extract_archive`] for the two kinds of
//! content). Each stage is tested on its own; this module decides the order
//! of operations that make the import trustworthy:
//! 1. everything about the input is decided before the target is opened
//!    (see [`input`]): a refused format never touches it;
//! 2. the stream is drained to EOF even when the decoder needs no more, so a
//!    checksum covers every byte and trailing truncation is noticed;
//! 3. the checksum is verified *before* the target is declared durable, and
//!    success is reported only after `fdatasync`.

pub mod input;

use std::io::{self, BufRead};
use std::path::Path;
use std::sync::Arc;

use crate::archive::{self, ExtractStats};
use crate::format::zeros::ZeroDetect;
use crate::format::{drive, ExtentSink, Format, FormatError};
use crate::io::Interrupted;
use crate::job::{ImportError, ImportJob, ImportReport};
use crate::pace::Pace;
use crate::progress::Counter;
use crate::target::Target;

pub use input::{open_input, Input};

/// Runs `job` to completion on the calling (blocking) thread, using `rt` for
/// network I/O. `counter` receives progress. Success means every byte of the
/// image is on stable storage and the checksum (if any) matched.
pub fn run(
    job: &ImportJob,
    rt: &tokio::runtime::Handle,
    counter: Arc<Counter>,
) -> Result<ImportReport, ImportError> {
    let pace = Pace::new();
    let mut input = open_input(&job.input, rt, Arc::clone(&counter), &pace)?;
    let registry = input.registry.take();
    let mut target = Target::open(&job.target, &job.target_opts)?;
    target.follow(pace);
    let mut report = decode_into(input, &job.plan, &mut target)?;
    let stats = target.finish()?;
    report.registry = registry;
    report.bytes_received = counter.received();
    report.bytes_written = stats.bytes_written;
    report.bytes_zeroed = stats.bytes_zeroed;
    Ok(report)
}

/// Decodes `input` into `sink`, drains the stream and verifies the
/// checksum; the caller makes the sink durable afterwards.
pub fn decode_into(
    mut input: Input,
    plan: &crate::format::PlanOptions,
    sink: &mut dyn ExtentSink,
) -> Result<ImportReport, ImportError> {
    let mut dec = input.decoder(plan)?;
    let mut range = input.range.take();
    let decoded = {
        let range = range
            .as_deref_mut()
            .map(|r| r as &mut dyn crate::io::RangeRead);
        if input.format == Format::Raw {
            // The raw decoder finds zeros as it scans.
            drive(dec.as_mut(), &mut input.reader, range, plan, sink)
        } else {
            let mut zd = ZeroDetect::new(sink);
            drive(dec.as_mut(), &mut input.reader, range, plan, &mut zd)
                .and_then(|r| zd.finish().map(|()| r).map_err(FormatError::from))
        }
    }
    .map_err(format_error)?;
    if decoded.spilled_bytes > 0 {
        tracing::info!(
            bytes = decoded.spilled_bytes,
            "spilled to scratch (removed)"
        );
    }
    finish_stream(&mut input)?;
    Ok(ImportReport {
        virtual_size: decoded.virtual_size,
        spilled_bytes: decoded.spilled_bytes,
        range_requests: decoded.range_requests,
        ..ImportReport::default()
    })
}

/// Extracts the archive `input` holds (a tar, after any wrapper) into `dir`,
/// then drains and verifies the stream as [`run`] does.
pub fn extract_archive(mut input: Input, dir: &Path) -> Result<ExtractStats, ImportError> {
    let stats = archive::extract(&mut input.reader, dir).map_err(|e| match e {
        archive::ArchiveError::Io { ref source, .. } => match Interrupted::find(source) {
            Some(i) => ImportError::Interrupted(i),
            None => ImportError::Archive(e),
        },
        other => ImportError::Archive(other),
    })?;
    tracing::info!(
        files = stats.files,
        dirs = stats.dirs,
        links = stats.links,
        skipped = stats.skipped,
        bytes = stats.bytes,
        "archive extracted"
    );
    finish_stream(&mut input)?;
    Ok(stats)
}

/// Drains whatever the decoder did not need (trailing metadata, tar
/// padding), so the checksum covers the whole download and a cut stream is
/// noticed; then verifies the checksum.
fn finish_stream(input: &mut Input) -> Result<(), ImportError> {
    io::copy(&mut input.reader, &mut io::sink())
        .map_err(|e| input::read_error(&input.display, e))?;
    if let Some(i) = Interrupted::pending() {
        return Err(ImportError::Interrupted(i));
    }
    if let Some(v) = &input.verifier {
        if let Err((expected, calculated)) = v.verify() {
            return Err(ImportError::ChecksumMismatch {
                expected,
                calculated,
            });
        }
    }
    Ok(())
}

/// A decoder's error, unless it is really the interrupt tap speaking.
fn format_error(e: FormatError) -> ImportError {
    if let FormatError::Read(io) = &e {
        // A registry blob's digest check fails at the blob's end, which a
        // decoder reading to the end of the stream meets first.
        if let Some(m) = input::digest_mismatch(io) {
            return m;
        }
        if let Some(i) = Interrupted::find(io) {
            return ImportError::Interrupted(i);
        }
    }
    ImportError::Format(e)
}

/// Reads everything `r` still has (for front ends that must answer only
/// after the body is consumed).
pub fn drain(r: &mut dyn BufRead) -> io::Result<u64> {
    io::copy(r, &mut io::sink())
}
