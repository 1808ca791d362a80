//! `streamdisk info`: what an image is, from as few bytes as possible.
//!
//! It reads the first bytes of the (unwrapped) stream; for qcow2 it reads on
//! up to the end of the header cluster (the header and its extensions live
//! there) and never further, so probing a multi-GiB URL costs one small read.

use std::io::{self, Read};

use serde::Serialize;

use crate::format::{self, qcow2, Format};
use crate::source::{self, HttpOptions, SourceSpec};
use crate::unwrap::{self, Wrapper};

/// What `info` reports.
#[derive(Debug, Serialize)]
pub struct SourceInfo {
    /// Compression wrapper around the image, if any.
    pub wrapper: Wrapper,
    /// Image format inside the wrapper.
    pub format: Format,
    /// Size of the source as transferred (Content-Length, file size), when known.
    pub source_size: Option<u64>,
    /// Guest-visible size. For raw this is the unwrapped length, known only without a wrapper.
    pub virtual_size: Option<u64>,
    /// Whether the source answers range reads (enables out-of-order metadata reads).
    pub seekable: bool,
    /// qcow2 header details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qcow2: Option<qcow2::ImageInfo>,
}

/// Why `info` failed.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("opening source: {0}")]
    Source(#[from] source::SourceError),
    #[error("reading the image: {0}")]
    Read(#[from] io::Error),
    #[error(transparent)]
    Qcow2(#[from] qcow2::Qcow2Error),
}

/// Offset of the qcow2 `cluster_bits` field.
const CLUSTER_BITS_AT: usize = 20;

/// Opens `spec` and describes the image it holds.
pub fn probe_source(
    spec: &SourceSpec,
    http: &HttpOptions,
    rt: &tokio::runtime::Handle,
) -> Result<SourceInfo, InfoError> {
    // One connection: info reads the start of the image and range reads,
    // so a segment read ahead would be fetched for nothing.
    let http = HttpOptions {
        connections: 1,
        ..http.clone()
    };
    let src = source::open(spec, &http, rt)?;
    let seekable = src.range.is_some();
    let (wrapper, mut r) = unwrap::unwrap(src.reader)?;
    let mut head = Vec::new();
    read_up_to(&mut r, &mut head, 512)?;
    if head.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the image is empty").into());
    }
    let fmt = format::detect(&head);
    let mut info = SourceInfo {
        wrapper,
        format: fmt,
        source_size: src.size,
        virtual_size: None,
        seekable,
        qcow2: None,
    };
    match fmt {
        Format::Raw => {
            if wrapper == Wrapper::None {
                info.virtual_size = src.size;
            }
        }
        Format::Qcow2 => {
            // The header cluster holds everything `probe` needs; its size is
            // known from `cluster_bits`, clamped to the range qcow2 allows so a
            // hostile value cannot make us read more than 2 MiB.
            let bits = head
                .get(CLUSTER_BITS_AT..CLUSTER_BITS_AT + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(16)
                .clamp(9, 21);
            read_up_to(&mut r, &mut head, 1usize << bits)?;
            let q = qcow2::probe(&head)?;
            info.virtual_size = Some(q.virtual_size);
            info.qcow2 = Some(q);
        }
    }
    Ok(info)
}

/// Reads until `buf` holds `want` bytes or the stream ends.
fn read_up_to(r: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    if buf.len() >= want {
        return Ok(());
    }
    let need = (want - buf.len()) as u64;
    r.take(need).read_to_end(buf)?;
    Ok(())
}

impl SourceInfo {
    /// The human-readable form, one `key: value` per line.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let size = |v: Option<u64>| v.map_or("unknown".to_string(), |n| format!("{n} bytes"));
        s.push_str(&format!("format: {}\n", self.format));
        s.push_str(&format!("wrapper: {:?}\n", self.wrapper).to_lowercase());
        s.push_str(&format!("virtual size: {}\n", size(self.virtual_size)));
        s.push_str(&format!("source size: {}\n", size(self.source_size)));
        s.push_str(&format!("seekable: {}\n", self.seekable));
        if let Some(q) = &self.qcow2 {
            if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(q) {
                for (k, v) in m {
                    if k == "virtual_size" {
                        continue;
                    }
                    let v = match v {
                        serde_json::Value::Null => "none".to_string(),
                        serde_json::Value::String(t) => t,
                        other => other.to_string(),
                    };
                    s.push_str(&format!("{}: {}\n", k.replace('_', " "), v));
                }
            }
        }
        s
    }
}
