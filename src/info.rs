//! `streamdisk info`: what an image is, from as few bytes as possible.
//!
//! The input is opened as for an import ([`crate::pipeline::open_input`]),
//! so wrappers, containers and refusals are found the same way. For qcow2
//! the header cluster is read and probed leniently (features an import would
//! refuse are reported, not errors); for other formats the decoder is fed
//! only until its header is parsed. A raw image reads nothing further.

use std::sync::Arc;

use serde::Serialize;

use crate::container::OvaDisk;
use crate::format::{drive, qcow2, Format, ImageInfo, PlanOptions};
use crate::job::{ImportError, InputOptions};
use crate::pace::Pace;
use crate::progress::Counter;
use crate::unwrap::Wrapper;

/// Most bytes of the (unwrapped) stream a probe reads to find a header.
const PROBE_BUDGET: u64 = 64 << 20;

/// What `info` reports.
#[derive(Debug, Serialize)]
pub struct SourceInfo {
    /// The image, named as `qemu-img info --output json` names it; its
    /// virtual size is absent for a raw stream of unknown length.
    #[serde(flatten)]
    pub image: ImageInfo,
    /// Compression wrappers around the image, outermost first.
    pub wrappers: Vec<Wrapper>,
    /// The disk taken from an OVA: its member, which disk of how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ova: Option<OvaDisk>,
    /// Size of the source as transferred (Content-Length, file size), when known.
    #[serde(rename = "source-size")]
    pub source_size: Option<u64>,
    /// Whether the source answers range reads (enables out-of-order metadata reads).
    pub seekable: bool,
    /// qcow2 header details as the decoder sees them, with what an import
    /// would refuse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qcow2: Option<qcow2::ImageInfo>,
    /// For a registry image: its digest, platform, layers and disk entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<Box<crate::source::registry::ImageDetails>>,
}

/// Opens the input of `opts` and describes the image it holds.
pub fn probe_source(
    opts: &InputOptions,
    rt: &tokio::runtime::Handle,
) -> Result<SourceInfo, ImportError> {
    // One connection: info reads the start of the image and range reads,
    // so a segment read ahead would be fetched for nothing.
    let mut opts = opts.clone();
    opts.http.connections = crate::source::Connections::Fixed(1);
    let pace = Pace::new();
    let mut input = crate::pipeline::open_input(&opts, rt, Arc::new(Counter::default()), &pace)?;
    let seekable = input.range.is_some();
    let mut info = SourceInfo {
        image: ImageInfo {
            format: input.format,
            virtual_size: None,
            cluster_size: None,
            format_specific: None,
        },
        wrappers: input.wrappers.clone(),
        ova: input.container.clone(),
        source_size: input.source_size,
        seekable,
        qcow2: None,
        registry: input.registry.take(),
    };
    match input.format {
        Format::Qcow2 => {
            let head = crate::pipeline::input::read_head(&mut input, qcow2::PROBE_MAX_BYTES)?;
            let head = head
                .get(..qcow2::probe_len(&head).min(head.len()))
                .unwrap_or_default();
            let q = qcow2::probe(head).map_err(crate::format::FormatError::from)?;
            info.image = qcow2::image_info_of(&q);
            info.qcow2 = Some(q);
        }
        _ => {
            let plan = PlanOptions::default();
            let mut dec = input.decoder(&plan)?;
            let range = input
                .range
                .as_deref_mut()
                .map(|r| r as &mut dyn crate::io::RangeRead);
            match drive::probe(dec.as_mut(), &mut input.reader, range, &plan, PROBE_BUDGET)? {
                Some(i) => info.image = i,
                None if input.format == Format::Raw => {}
                None => {
                    return Err(crate::format::FormatError::Internal(
                        "no header found within the probe budget",
                    )
                    .into())
                }
            }
        }
    }
    Ok(info)
}

impl SourceInfo {
    /// The human-readable form, one `key: value` per line.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if let Some(o) = &self.ova {
            s.push_str(&format!(
                "ova member: {} (disk {} of {}, {} bytes)\n",
                o.member, o.disk, o.disks, o.member_size
            ));
        }
        s.push_str(&format!("format: {}\n", self.image.format));
        let wrappers: Vec<&str> = self.wrappers.iter().map(|w| w.name()).collect();
        s.push_str(&format!(
            "wrapper: {}\n",
            if wrappers.is_empty() {
                "none".to_string()
            } else {
                wrappers.join(", ")
            }
        ));
        s.push_str(&format!(
            "virtual size: {}\n",
            self.image
                .virtual_size
                .map_or("unknown".to_string(), |n| format!("{n} bytes"))
        ));
        s.push_str(&format!(
            "source size: {}\n",
            self.source_size
                .map_or("unknown".to_string(), |n| format!("{n} bytes"))
        ));
        s.push_str(&format!("seekable: {}\n", self.seekable));
        if let Some(r) = &self.registry {
            push_registry(&mut s, r);
        }
        if let Some(c) = self.image.cluster_size {
            s.push_str(&format!("cluster size: {c}\n"));
        }
        if let Some(q) = &self.qcow2 {
            push_fields(&mut s, q, &["virtual_size", "cluster_size"]);
        } else if let Some(f) = &self.image.format_specific {
            for (k, v) in &f.data {
                s.push_str(&format!("{}: {}\n", k.replace('-', " "), plain(v)));
            }
        }
        s
    }
}

/// The registry lines: image, digests, platform, layers, disk entry.
fn push_registry(s: &mut String, r: &crate::source::registry::ImageDetails) {
    s.push_str(&format!("image: {}\n", r.image));
    s.push_str(&format!("digest: {}\n", r.digest));
    if r.manifest_digest != r.digest {
        s.push_str(&format!("manifest digest: {}\n", r.manifest_digest));
    }
    s.push_str(&format!("platform: {}\n", r.platform));
    for (i, l) in r.layers.iter().enumerate() {
        s.push_str(&format!(
            "layer {}: {} {} bytes {}\n",
            i + 1,
            l.digest,
            l.size,
            l.media_type
        ));
    }
    if let Some(d) = &r.disk {
        s.push_str(&format!(
            "disk entry: {} ({} bytes, layer {})\n",
            d.name, d.size, d.layer
        ));
    }
}

/// Adds every field of `v` (a struct serialized as an object) but `skip`.
fn push_fields(s: &mut String, v: &impl Serialize, skip: &[&str]) {
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(v) {
        for (k, v) in m {
            if skip.contains(&k.as_str()) {
                continue;
            }
            s.push_str(&format!("{}: {}\n", k.replace('_', " "), plain(&v)));
        }
    }
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none".to_string(),
        serde_json::Value::String(t) => t.clone(),
        other => other.to_string(),
    }
}
