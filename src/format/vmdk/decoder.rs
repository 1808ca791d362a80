//! [`VmdkDecoder`]: the [`Decoder`] for VMDK streams.
//!
//! The first sector decides: `KDMV` is a sparse extent, read by
//! [`super::body`]; anything else is taken as a text descriptor (as QEMU
//! does), collected (at most 1 MiB, what QEMU reads) and refused with the
//! extent files it names. So is a sparse header with no capacity and an
//! embedded descriptor, which QEMU also reads as a descriptor file.

use std::ops::Range;

use crate::format::{
    DecodeReport, Decoder, DecoderConfig, ExtentSink, Feed, FormatError, ImageInfo,
};
use crate::pace::Pace;

use super::body::{Body, AREA_END};
use super::descriptor::Descriptor;
use super::header::{Header, COWD_MAGIC, HEADER_LEN, MAGIC, SECTOR};
use super::VmdkError;

/// Most descriptor text read (QEMU reads up to 1 MiB - 1).
const TEXT_MAX: usize = (1 << 20) - 1;

enum State {
    /// Collecting the first sector.
    Head(Vec<u8>),
    /// A descriptor: its text from host offset `from`.
    Text {
        from: u64,
        buf: Vec<u8>,
        /// The Disk Data Base (which follows the extent lines) was seen.
        ddb: bool,
    },
    /// A sparse extent, after its header.
    Body(Box<Body>),
}

/// A streaming VMDK decoder (see the module documentation of
/// [`crate::format::vmdk`]).
pub struct VmdkDecoder {
    pace: Pace,
    /// Host offset of the next byte.
    pos: u64,
    state: State,
}

impl VmdkDecoder {
    /// A decoder told by `cfg` (only its pace matters: range reads and
    /// read-ahead are the driver's).
    pub fn new(cfg: &DecoderConfig) -> VmdkDecoder {
        VmdkDecoder {
            pace: cfg.pace.clone(),
            pos: 0,
            state: State::Head(Vec::with_capacity(HEADER_LEN)),
        }
    }

    /// The refusal for a descriptor's text.
    fn refuse(text: &[u8]) -> VmdkError {
        let d = Descriptor::parse(text);
        let create_type = d.create_type.clone().unwrap_or_else(|| "unknown".into());
        if !d.extents.is_empty() {
            VmdkError::SeparateExtents {
                create_type,
                files: d.files(),
            }
        } else if d.create_type.is_some() {
            VmdkError::NoExtents { create_type }
        } else {
            VmdkError::NotVmdk
        }
    }

    /// Text bytes at `self.pos`; refuses once the extent lines are in.
    fn text(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let State::Text { from, buf, ddb } = &mut self.state else {
            return Ok(());
        };
        let end = self.pos + bytes.len() as u64;
        if end > *from && buf.len() < TEXT_MAX {
            let skip = from.saturating_sub(self.pos) as usize;
            let fresh = bytes.get(skip..).unwrap_or_default();
            let fresh = fresh
                .get(..fresh.len().min(TEXT_MAX - buf.len()))
                .unwrap_or_default();
            let seen = buf.len().saturating_sub(3);
            buf.extend_from_slice(fresh);
            let tail = buf.get(seen..).unwrap_or_default();
            if !*ddb && tail.windows(4).any(|w| w == b"ddb.") {
                *ddb = true;
                if !Descriptor::parse(buf).extents.is_empty() {
                    return Err(Self::refuse(buf).into());
                }
            }
            if buf.len() >= TEXT_MAX {
                return Err(Self::refuse(buf).into());
            }
        }
        self.pos = end;
        Ok(())
    }

    /// The header sector is in: sets up the body (or the descriptor text).
    fn start(&mut self, head: Vec<u8>) -> Result<(), FormatError> {
        let hdr = Header::parse(&head)?;
        if hdr.capacity == 0 && hdr.desc_offset != 0 {
            self.state = State::Text {
                from: hdr.desc_offset.saturating_mul(SECTOR),
                buf: Vec::new(),
                ddb: false,
            };
            return Ok(());
        }
        let geo = hdr.geometry()?;
        let body = Body::new(hdr, geo, self.pos, self.pace.clone())?;
        self.state = State::Body(Box::new(body));
        Ok(())
    }

    /// Body bytes; returns how many were taken before tables were needed.
    fn body(
        &mut self,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<Option<usize>, FormatError> {
        let State::Body(body) = &mut self.state else {
            return Ok(Some(0));
        };
        let mut off = 0usize;
        while off < bytes.len() {
            let rest = bytes.get(off..).unwrap_or_default();
            // Stop at the end of the descriptor area, to check it first.
            let limit = if !body.desc_checked && self.pos < AREA_END {
                ((AREA_END - self.pos) as usize).min(rest.len())
            } else {
                rest.len()
            };
            let piece = rest.get(..limit).unwrap_or_default();
            let Some(n) = body.step(self.pos, piece, sink)? else {
                return Ok(Some(off));
            };
            if n == 0 {
                return Err(FormatError::Internal("vmdk: no progress"));
            }
            body.capture(self.pos, piece.get(..n).unwrap_or_default());
            self.pos += n as u64;
            off += n;
            if !body.desc_checked && self.pos >= AREA_END {
                body.check_descriptor()?;
            }
        }
        Ok(None)
    }
}

impl Decoder for VmdkDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        let mut off = 0usize;
        if let State::Head(head) = &mut self.state {
            let take = (HEADER_LEN - head.len()).min(chunk.len());
            head.extend_from_slice(chunk.get(..take).unwrap_or_default());
            off = take;
            self.pos += take as u64;
            if head.len() >= 4 && head.get(..4) != Some(MAGIC.as_slice()) {
                if head.get(..4) == Some(COWD_MAGIC.as_slice()) {
                    return Err(VmdkError::Cowd.into());
                }
                let buf = std::mem::take(head);
                self.pos = 0;
                self.state = State::Text {
                    from: 0,
                    buf: Vec::new(),
                    ddb: false,
                };
                self.text(&buf)?;
            } else if head.len() == HEADER_LEN {
                let head = std::mem::take(head);
                self.start(head)?;
            }
        }
        let rest = chunk.get(off..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(Feed::Done);
        }
        match &self.state {
            State::Head(_) => Ok(Feed::Done),
            State::Text { .. } => {
                self.text(rest)?;
                Ok(Feed::Done)
            }
            State::Body(_) => match self.body(rest, sink)? {
                None => Ok(Feed::Done),
                Some(n) => Ok(Feed::NeedMetadata(off + n)),
            },
        }
    }

    fn missing_metadata(&self) -> Vec<Range<u64>> {
        match &self.state {
            State::Body(b) => b.missing(),
            _ => Vec::new(),
        }
    }

    fn supply(
        &mut self,
        host: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let pos = self.pos;
        match &mut self.state {
            State::Body(b) => b.supply(host, bytes, pos, sink),
            _ => Err(FormatError::Internal(
                "metadata supplied before the VMDK header",
            )),
        }
    }

    fn stop_fetching(&mut self) -> bool {
        // Missing tables are then read from the stream ahead by the driver.
        true
    }

    fn finish(&mut self, sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        let pos = self.pos;
        match &mut self.state {
            State::Head(h) if h.is_empty() => Err(VmdkError::TruncatedHeader { len: 0 }.into()),
            State::Head(h) => Err(VmdkError::TruncatedHeader { len: h.len() }.into()),
            State::Text { buf, .. } => Err(Self::refuse(buf).into()),
            State::Body(b) => b.finish(pos, sink),
        }
    }

    fn info(&self) -> Option<ImageInfo> {
        match &self.state {
            State::Body(b) => b.info.clone(),
            _ => None,
        }
    }
}
