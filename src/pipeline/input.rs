//! [`open_input`]: source, taps, wrappers, containers and format detection,
//! wired once for every front end.
//!
//! The order is what makes an import trustworthy:
//! 1. the taps (interrupt, progress count, checksum) sit directly on the raw
//!    source stream, so the checksum covers the bytes as received;
//! 2. wrappers are found by their signature in the format table and peeled
//!    off one by one; each one found tells the [`Pace`] that decompression
//!    sets it;
//! 3. the format is decided before the target is touched: a refused format
//!    stops here, by name; a raw stream on a seekable source has its last
//!    512 bytes checked first (a fixed VHD footer, a DMG trailer);
//! 4. an OVA (a tar whose first member is an `.ovf`) is opened as a
//!    container: its disk's member becomes the stream, and the table is
//!    asked again (the member may be gzip-wrapped, then it is an image);
//! 5. range reads are kept only when nothing (a wrapper, a container) sits
//!    between the source and the decoder (offsets would not match).

use std::io::{self, BufRead};
use std::sync::Arc;

use crate::checksum::Verifier;
use crate::container::{open_ova, OvaDisk, OvaError};
use crate::format::table::{self, Signature, Trailer, HEAD_LEN, TAIL_LEN};
use crate::format::{Decoder, DecoderConfig, Format, FormatError, PlanOptions, Tail};
use crate::io::{CountTap, HashTap, InterruptTap, Interrupted, PeekReader, RangeRead};
use crate::job::{Content, FormatChoice, ImportError, InputOptions};
use crate::pace::Pace;
use crate::progress::Counter;
use crate::source::OpenContext;
use crate::unwrap::{self, Wrapper};

/// Most wrappers peeled off one stream (`disk.raw.gz.xz` is two).
const MAX_WRAPPERS: usize = 4;

/// An opened, identified input, before a byte is written.
pub struct Input {
    /// The image stream from its first byte (after every wrapper and
    /// container); the head is still in it.
    pub reader: Box<dyn BufRead + Send>,
    /// Wrappers found, outermost first (around the OVA, then around its
    /// disk's member).
    pub wrappers: Vec<Wrapper>,
    /// The disk taken from an OVA, when the source is one.
    pub container: Option<OvaDisk>,
    /// The format to decode (for archives: `Raw`, meaning "the tar").
    pub format: Format,
    /// The first bytes of `reader` (up to [`HEAD_LEN`]).
    pub head: Vec<u8>,
    /// Random access to the same bytes as `reader`; only when nothing sits
    /// between the source and the image.
    pub range: Option<Box<dyn RangeRead>>,
    /// Length of the image stream, when known (an OVA member's size, when
    /// no wrapper sits inside it).
    pub size: Option<u64>,
    /// Length of the source as transferred, when known.
    pub source_size: Option<u64>,
    /// What is known about the stream's last bytes.
    pub tail: Tail,
    /// The source, for messages.
    pub display: String,
    /// Verifies the checksum once the stream is drained.
    pub verifier: Option<Verifier>,
    /// Who sets the pace.
    pub pace: Pace,
    /// What a registry said about the image (`None` for other sources).
    pub registry: Option<Box<crate::source::registry::ImageDetails>>,
}

impl Input {
    /// The decoder for this input.
    pub fn decoder(&self, plan: &PlanOptions) -> Result<Box<dyn Decoder>, FormatError> {
        crate::format::new_decoder(
            self.format,
            &DecoderConfig {
                plan: plan.clone(),
                can_fetch: self.range.is_some(),
                pace: self.pace.clone(),
                stream_len: self.size,
                tail: self.tail.clone(),
            },
        )
    }
}

/// Opens the source of `opts` and identifies what it holds.
///
/// Must run on a blocking thread (network sources wait on `rt`). `counter`
/// receives progress; `pace` is shared with the source.
pub fn open_input(
    opts: &InputOptions,
    rt: &tokio::runtime::Handle,
    counter: Arc<Counter>,
    pace: &Pace,
) -> Result<Input, ImportError> {
    let display = opts.source.display();
    let src = opts
        .source
        .open(&OpenContext {
            http: &opts.http,
            rt,
            pace,
            counter: &counter,
        })
        .map_err(|source| source_error(&display, source))?;
    if let (Some(n), false) = (src.size, src.counts_itself) {
        counter.set_total(n);
    }
    tracing::info!(source = %src.display, size = ?src.size, "source opened");
    let display = src.display.clone();
    let read_err = |e: io::Error| read_error(&display, e);

    let verifier = opts.checksum.clone().map(Verifier::new);
    let registry = src.registry;
    let counted: Box<dyn BufRead + Send> = if src.counts_itself {
        Box::new(InterruptTap::new(src.reader))
    } else {
        Box::new(CountTap::new(InterruptTap::new(src.reader), counter))
    };
    let tapped: Box<dyn BufRead + Send> = match &verifier {
        Some(v) => Box::new(HashTap::new(counted, v.digest())),
        None => Box::new(counted),
    };

    let mut reader = PeekReader::new(tapped);
    let mut wrappers = Vec::new();
    // The OVA disk, and how many wrappers were found before it.
    let mut container: Option<(OvaDisk, usize)> = None;
    let signature = loop {
        let head = reader.peek(HEAD_LEN).map_err(read_err)?;
        if head.is_empty() {
            return Err(read_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image is empty",
            )));
        }
        let sig = match opts.format {
            // Forced raw: no wrapper either, the bytes are taken as they are.
            FormatChoice::Exactly(Format::Raw) => Signature::None,
            _ => table::identify(head),
        };
        match sig {
            Signature::Wrapper(w) if wrappers.len() < MAX_WRAPPERS => {
                tracing::info!(wrapper = %w, "decompressing wrapper");
                pace.set_decompressing();
                wrappers.push(w);
                let inner: Box<dyn BufRead + Send> = Box::new(reader);
                reader = PeekReader::new(unwrap::decoder(w, inner).map_err(read_err)?);
            }
            // One OVA, and only for a disk import (archive content
            // extracts the tar as it is).
            Signature::Ova if container.is_none() && opts.content == Content::Disk => {
                let (disk, member) =
                    open_ova(reader, opts.disk).map_err(|e| ova_error(&display, e))?;
                tracing::info!(
                    member = %disk.member,
                    size = disk.member_size,
                    "OVA: importing disk {} of {}",
                    disk.disk,
                    disk.disks
                );
                let inner: Box<dyn BufRead + Send> = Box::new(member);
                reader = PeekReader::new(inner);
                let head = reader.peek(HEAD_LEN).map_err(read_err)?;
                disk.check_head(head)?;
                container = Some((disk, wrappers.len()));
            }
            other => break other,
        }
    };
    if let (Some(n), None, Content::Disk) = (opts.disk, &container, opts.content) {
        return Err(OvaError::NotContainer(n).into());
    }
    let head = reader.peek(HEAD_LEN).map_err(read_err)?.to_vec();
    let (mut range, size) = match &container {
        None if wrappers.is_empty() => (src.range, src.size),
        // The member's length is known from its tar header; range reads
        // would need offsets into the archive, and stop here.
        Some((disk, outer)) if wrappers.len() == *outer => (None, Some(disk.member_size)),
        _ => (None, None),
    };
    let container = container.map(|(disk, _)| disk);

    let (format, tail) = match opts.content {
        Content::Archive => (Format::Raw, Tail::Forced),
        Content::Disk => decide(opts.format, signature, &mut range, size)?,
    };
    tracing::info!(format = %format, "image format");
    Ok(Input {
        reader: Box::new(reader),
        wrappers,
        container,
        format,
        head,
        range,
        size,
        source_size: src.size,
        tail,
        display,
        verifier,
        pace: pace.clone(),
        registry,
    })
}

/// A source's failure to open; a registry blob that does not match its
/// digest is a checksum mismatch (the target is treated as after one).
fn source_error(display: &str, source: crate::source::SourceError) -> ImportError {
    match source {
        crate::source::SourceError::Registry(
            crate::source::registry::RegistryError::DigestMismatch {
                expected,
                calculated,
                ..
            },
        ) => ImportError::ChecksumMismatch {
            expected,
            calculated,
        },
        source => ImportError::Source {
            display: display.to_string(),
            source,
        },
    }
}

/// The checksum mismatch a registry blob's digest check put inside `e`.
pub(crate) fn digest_mismatch(e: &io::Error) -> Option<ImportError> {
    match crate::source::registry::blob::find_mismatch(e)? {
        crate::source::registry::RegistryError::DigestMismatch {
            expected,
            calculated,
            ..
        } => Some(ImportError::ChecksumMismatch {
            expected,
            calculated,
        }),
        _ => None,
    }
}

/// Picks the format from the signature and `--format`, checking the tail of
/// a seekable raw stream.
fn decide(
    choice: FormatChoice,
    sig: Signature,
    range: &mut Option<Box<dyn RangeRead>>,
    size: Option<u64>,
) -> Result<(Format, Tail), ImportError> {
    let found = match sig {
        Signature::Image(f) => Some(f),
        Signature::None => None,
        Signature::Refused(r) => return Err(FormatError::Refused(r).into()),
        // Only an OVA's disk can be another OVA.
        Signature::Ova => {
            return Err(FormatError::Refused(crate::format::Refusal {
                what: "OVA archives inside an OVA",
                plural: true,
                detail: "",
            })
            .into())
        }
        Signature::Wrapper(_) => {
            return Err(FormatError::Refused(crate::format::Refusal {
                what: "more than four nested compression wrappers",
                plural: true,
                detail: "",
            })
            .into())
        }
    };
    match (choice, found) {
        (FormatChoice::Exactly(Format::Raw), _) => Ok((Format::Raw, Tail::Forced)),
        (FormatChoice::Auto, Some(f)) => Ok((f, Tail::Clean)),
        (FormatChoice::Exactly(want), Some(f)) if want == f => Ok((f, Tail::Clean)),
        (FormatChoice::Exactly(want), Some(f)) => Err(FormatError::WrongFormat {
            asked: want.name(),
            found: f.name().to_string(),
        }
        .into()),
        (choice, None) => {
            let tail = check_tail(range, size)?;
            match (choice, &tail) {
                (FormatChoice::Auto | FormatChoice::Exactly(Format::Vpc), Tail::VhdFooter(_)) => {
                    Ok((Format::Vpc, tail))
                }
                (FormatChoice::Auto, _) => Ok((Format::Raw, tail)),
                // `--format vpc` on a stream whose end cannot be read first:
                // a fixed VHD, whose footer is checked when the stream ends.
                (FormatChoice::Exactly(Format::Vpc), Tail::Unchecked) => Ok((Format::Vpc, tail)),
                (FormatChoice::Exactly(want), _) => Err(FormatError::WrongFormat {
                    asked: want.name(),
                    found: "raw (no signature)".to_string(),
                }
                .into()),
            }
        }
    }
}

/// Reads the last [`TAIL_LEN`] bytes of a seekable stream for a trailer.
fn check_tail(
    range: &mut Option<Box<dyn RangeRead>>,
    size: Option<u64>,
) -> Result<Tail, ImportError> {
    let (Some(r), Some(size)) = (range.as_mut(), size) else {
        return Ok(Tail::Unchecked);
    };
    if size < TAIL_LEN as u64 {
        return Ok(Tail::Clean);
    }
    let mut tail = vec![0u8; TAIL_LEN];
    if let Err(e) = r.read_exact_at(size - TAIL_LEN as u64, &mut tail) {
        tracing::warn!(
            "reading the last bytes of the image failed ({e}); checking them at the end instead"
        );
        *range = None;
        return Ok(Tail::Unchecked);
    }
    match table::identify_tail(&tail) {
        Some(Trailer::Dmg) => Err(FormatError::Refused(table::dmg_refusal()).into()),
        Some(Trailer::VhdFooter) => Ok(Tail::VhdFooter(tail)),
        None => Ok(Tail::Clean),
    }
}

/// A read error, unless it is really the interrupt tap speaking.
pub(crate) fn read_error(display: &str, e: io::Error) -> ImportError {
    if let Some(m) = digest_mismatch(&e) {
        return m;
    }
    match Interrupted::find(&e) {
        Some(i) => ImportError::Interrupted(i),
        None => ImportError::Read {
            display: display.to_string(),
            source: e,
        },
    }
}

/// An OVA error, unless reading the archive failed because the interrupt
/// tap spoke.
fn ova_error(display: &str, e: OvaError) -> ImportError {
    match e {
        OvaError::Read(io) => read_error(display, io),
        other => ImportError::Ova(other),
    }
}

/// Reads up to `n` bytes from the start of `input` (fewer only at the end
/// of the stream), consuming them: for probes that read no further.
pub fn read_head(input: &mut Input, n: usize) -> Result<Vec<u8>, ImportError> {
    use std::io::Read;
    let mut head = Vec::new();
    (&mut input.reader)
        .take(n as u64)
        .read_to_end(&mut head)
        .map_err(|e| read_error(&input.display, e))?;
    Ok(head)
}
