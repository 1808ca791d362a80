//! Runs an [`ImportJob`]: source, unwrap, decode, write.
//!
//! This is the only place that wires the stages together. Each stage is
//! tested on its own; this module decides the order of operations that make
//! the import trustworthy:
//! 1. taps (progress, interrupt, checksum) sit directly on the raw source
//!    stream, so the checksum covers the bytes as received;
//! 2. range reads are offered to the qcow2 planner only when no compression
//!    wrapper sits between the source and the decoder (offsets would not match);
//! 3. the stream is drained to EOF even when the decoder needs no more, so a
//!    checksum covers every byte and trailing truncation is noticed;
//! 4. the checksum is verified *before* the target is declared durable, and
//!    success is reported only after `fdatasync`.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use anyhow::Context;

use crate::checksum::Verifier;
use crate::format::zeros::ZeroDetect;
use crate::format::{self, qcow2, raw, Format};
use crate::job::{FormatChoice, ImportError, ImportJob, ImportReport};
use crate::progress::{Counter, Tap};
use crate::source;
use crate::target::{Target, TargetError};
use crate::unwrap::{self, Wrapper};

/// Runs `job` to completion on the calling (blocking) thread, using `rt` for
/// network I/O. `counter` receives progress. Success means every byte of the
/// image is on stable storage and the checksum (if any) matched.
pub fn run(
    job: &ImportJob,
    rt: &tokio::runtime::Handle,
    counter: Arc<Counter>,
) -> Result<ImportReport, ImportError> {
    let src = source::open(&job.source, &job.http, rt)
        .with_context(|| format!("opening source {}", job.source.display()))?;
    if let Some(n) = src.size {
        counter.set_total(n);
    }
    let shown = src.display.clone();
    let read_ahead = src.read_ahead.clone();
    tracing::info!(source = %shown, size = ?src.size, "source opened");

    let verifier = job.checksum.clone().map(Verifier::new);
    let tapped: Box<dyn BufRead + Send> = {
        let t = Tap::new(src.reader, Arc::clone(&counter));
        match &verifier {
            Some(v) => Box::new(v.tap(t)),
            None => Box::new(t),
        }
    };
    let (wrapper, unwrapped) =
        unwrap::unwrap(tapped).map_err(|e| read_error(e, "reading the image header"))?;
    if wrapper != Wrapper::None {
        tracing::info!(wrapper = ?wrapper, "decompressing wrapper");
    }

    let (head, unwrapped) = peek(unwrapped, 4).map_err(|e| read_error(e, "reading the image"))?;
    let mut input = io::Cursor::new(head.clone()).chain(unwrapped);
    let detected = format::detect(&head);
    let fmt = match job.format {
        FormatChoice::Auto => detected,
        FormatChoice::Raw => Format::Raw,
        FormatChoice::Qcow2 if detected == Format::Qcow2 => Format::Qcow2,
        FormatChoice::Qcow2 => {
            return Err(anyhow::anyhow!(
                "--format qcow2 given, but the image is not qcow2 (bad magic)"
            )
            .into())
        }
    };
    tracing::info!(format = %fmt, "image format");

    let mut target = Target::open(&job.target, &job.target_opts).map_err(target_error)?;
    if wrapper != Wrapper::None || read_ahead.is_some() {
        // The wrapper's decompressor sets the pace, or the source smooths
        // it by reading ahead (see `ExtentSink::input_paced`).
        format::ExtentSink::input_paced(&mut target);
    }
    if wrapper != Wrapper::None {
        if let Some(r) = &read_ahead {
            r.stop();
        }
    }
    let mut range = if wrapper == Wrapper::None {
        src.range
    } else {
        None
    };
    let mut report = ImportReport::default();

    match fmt {
        Format::Qcow2 => {
            let mut relay = PaceRelay {
                inner: &mut target,
                read_ahead,
            };
            let mut sink = ZeroDetect::new(&mut relay);
            let r = qcow2::decode(
                &mut input,
                range
                    .as_deref_mut()
                    .map(|r| r as &mut dyn source::RangeRead),
                &job.plan,
                &mut sink,
            )
            .map_err(qcow2_error)?;
            sink.finish().map_err(sink_io_error)?;
            report.virtual_size = r.virtual_size;
            report.spilled_bytes = r.spilled_bytes;
            report.range_requests = r.range_requests;
            if r.spilled_bytes > 0 {
                tracing::info!(bytes = r.spilled_bytes, "spilled to scratch (removed)");
            }
        }
        Format::Raw => {
            let hint = if wrapper == Wrapper::None {
                src.size
            } else {
                None
            };
            let r = raw::decode(&mut input, hint, &mut target).map_err(sink_io_error)?;
            report.virtual_size = r.bytes_read;
        }
    }

    // Drain whatever the decoder did not need (qcow2 trailing metadata), so
    // the checksum covers the whole download and a cut stream is noticed.
    io::copy(&mut input, &mut io::sink()).map_err(|e| read_error(e, "reading the image"))?;
    if let Some(sig) = crate::signals::pending() {
        return Err(ImportError::Interrupted(sig));
    }
    if let Some(v) = &verifier {
        if let Err((expected, calculated)) = v.verify() {
            return Err(ImportError::ChecksumMismatch {
                expected,
                calculated,
            });
        }
    }
    let stats = target.finish().map_err(target_error)?;
    report.bytes_received = counter.received();
    report.bytes_written = stats.bytes_written;
    report.bytes_zeroed = stats.bytes_zeroed;
    Ok(report)
}

/// Passes the decoder's [`ExtentSink::input_paced`] hint on to the source
/// as well, so that a segmented download stops reading ahead once inflate
/// sets the pace.
struct PaceRelay<'a> {
    inner: &'a mut dyn format::ExtentSink,
    read_ahead: Option<source::ReadAhead>,
}

impl format::ExtentSink for PaceRelay<'_> {
    fn set_virtual_size(&mut self, size: u64) -> io::Result<()> {
        self.inner.set_virtual_size(size)
    }

    fn data(&mut self, guest_offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.data(guest_offset, data)
    }

    fn zero(&mut self, guest_offset: u64, len: u64) -> io::Result<()> {
        self.inner.zero(guest_offset, len)
    }

    fn input_paced(&mut self) {
        if let Some(r) = self.read_ahead.take() {
            r.stop();
        }
        self.inner.input_paced();
    }
}

/// Reads up to `n` bytes (fewer only at EOF) and returns them with the reader.
fn peek<R: Read>(mut r: R, n: usize) -> io::Result<(Vec<u8>, R)> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    if got == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the image is empty",
        ));
    }
    Ok((head, r))
}

/// A read error, unless it is really the interrupt tap speaking.
fn read_error(e: io::Error, what: &str) -> ImportError {
    if let Some(sig) = crate::signals::pending() {
        return ImportError::Interrupted(sig);
    }
    ImportError::Other(anyhow::Error::new(e).context(what.to_string()))
}

fn target_error(e: TargetError) -> ImportError {
    match e {
        TargetError::TooLarge { size, available } => ImportError::TooLarge { size, available },
        other => ImportError::Other(anyhow::Error::new(other).context("writing the target")),
    }
}

/// Sink errors arrive as `io::Error`s wrapping a [`TargetError`]; recover the
/// size refusal so front ends can report it exactly. (The raw decoder returns
/// read and sink errors alike through here; both carry their own context.)
fn sink_io_error(e: io::Error) -> ImportError {
    if let Some(TargetError::TooLarge { size, available }) =
        e.get_ref().and_then(|i| i.downcast_ref::<TargetError>())
    {
        return ImportError::TooLarge {
            size: *size,
            available: *available,
        };
    }
    if let Some(sig) = crate::signals::pending() {
        return ImportError::Interrupted(sig);
    }
    ImportError::Other(anyhow::Error::new(e))
}

fn qcow2_error(e: qcow2::Qcow2Error) -> ImportError {
    match e {
        qcow2::Qcow2Error::ScratchRequired(m) => ImportError::ScratchRequired(m),
        qcow2::Qcow2Error::Sink(e) => sink_io_error(e),
        qcow2::Qcow2Error::Read(e) => read_error(e, "reading the image"),
        other => ImportError::Other(anyhow::Error::new(other)),
    }
}
