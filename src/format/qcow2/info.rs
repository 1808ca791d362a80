//! `streamdisk info`: what the header cluster says, without decoding anything.
//!
//! Unlike decoding, probing reports features it would refuse (a backing file,
//! encryption, an external data file, unknown incompatible bits) instead of
//! failing on them, so that `info` can show why an import would be refused.

use super::header::{
    cluster_size_hint, CompressionType, Header, COMPAT_LAZY_REFCOUNTS, FIXED_PREFIX,
    INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTL2, INCOMPAT_KNOWN,
};
use super::Qcow2Error;

/// Most bytes `probe` can need: one cluster of the largest size (2 MiB).
pub const PROBE_MAX_BYTES: usize = 2 << 20;

/// How many bytes `probe` needs, given the first bytes of the image: the
/// header cluster, once `cluster_bits` (byte 20..24) is known; before that,
/// at least 24. Reading fewer is fine when the stream ends first.
pub fn probe_len(head: &[u8]) -> usize {
    match cluster_size_hint(head) {
        Some(cs) => cs as usize,
        None if head.len() < FIXED_PREFIX => FIXED_PREFIX,
        None => head.len(),
    }
}

/// The header facts that matter for import.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageInfo {
    /// qcow2 version (2 or 3).
    pub version: u32,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// How compressed clusters are compressed.
    pub compression_type: CompressionType,
    /// The backing file an import would need (refused).
    pub backing_file: Option<String>,
    /// The backing file's format, when named.
    pub backing_format: Option<String>,
    /// "none", "aes", "luks" or "unknown(N)".
    pub encryption: String,
    /// Extended L2 entries (subclusters).
    pub extended_l2: bool,
    /// An external data file the image needs (refused).
    pub external_data_file: Option<String>,
    /// The dirty bit (lazy refcounts not flushed).
    pub dirty: bool,
    /// The corrupt bit.
    pub corrupt: bool,
    /// The lazy-refcounts compatible feature.
    pub lazy_refcounts: bool,
    /// Internal snapshots (ignored by an import).
    pub nb_snapshots: u32,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Entries in the L1 table.
    pub l1_entries: u32,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Bytes of the header (before its extensions).
    pub header_length: u32,
    /// Incompatible feature bits this reader does not know (with names when
    /// the image's feature name table has them).
    pub unknown_incompatible_bits: Vec<String>,
}

/// Reads the header cluster (or a prefix of it holding the header and its
/// extensions) into an [`ImageInfo`].
pub fn probe(head: &[u8]) -> Result<ImageInfo, Qcow2Error> {
    let h = parse_lenient(head)?;
    let encryption = match h.crypt_method {
        0 => "none".to_string(),
        1 => "aes".to_string(),
        2 => "luks".to_string(),
        m => format!("unknown({m})"),
    };
    Ok(ImageInfo {
        version: h.version,
        virtual_size: h.virtual_size,
        cluster_size: h.cluster_size(),
        compression_type: h.compression_type,
        backing_file: h.backing_file.clone(),
        backing_format: h.backing_format.clone(),
        encryption,
        extended_l2: h.incompatible_features & INCOMPAT_EXTL2 != 0,
        external_data_file: h.external_data_file.clone().or_else(|| {
            (h.incompatible_features & INCOMPAT_DATA_FILE != 0).then(|| "<unnamed>".to_string())
        }),
        dirty: h.incompatible_features & INCOMPAT_DIRTY != 0,
        corrupt: h.incompatible_features & INCOMPAT_CORRUPT != 0,
        lazy_refcounts: h.compatible_features & COMPAT_LAZY_REFCOUNTS != 0,
        nb_snapshots: h.nb_snapshots,
        l1_table_offset: h.l1_table_offset,
        l1_entries: h.l1_size,
        refcount_order: h.refcount_order,
        header_length: h.header_length,
        unknown_incompatible_bits: h.feature_bit_names(h.incompatible_features & !INCOMPAT_KNOWN),
    })
}

/// Parses a header while tolerating the refusable features: they are
/// reported, not errors. Structural problems still fail.
fn parse_lenient(head: &[u8]) -> Result<Header, Qcow2Error> {
    let mut h = Header::parse_raw(head)?;
    // The structural checks run on a copy without the refusable features.
    let mut check = h.clone();
    check.incompatible_features &= INCOMPAT_KNOWN & !INCOMPAT_DATA_FILE;
    check.external_data_file = None;
    check.validate()?;
    h.compression_type = check.compression_type;
    Ok(h)
}

/// The header as `qemu-img info --output json` reports it.
pub(super) fn image_info(h: &Header) -> crate::format::ImageInfo {
    use crate::format::{Format, FormatSpecific, ImageInfo};
    let compression = match h.compression_type {
        CompressionType::Zlib => "zlib",
        CompressionType::Zstd => "zstd",
    };
    let mut specific = FormatSpecific::new("qcow2")
        .with("compat", if h.version >= 3 { "1.1" } else { "0.10" })
        .with("compression-type", compression)
        .with(
            "lazy-refcounts",
            h.compatible_features & COMPAT_LAZY_REFCOUNTS != 0,
        )
        .with("refcount-bits", 1u64 << h.refcount_order.min(6))
        .with("corrupt", h.incompatible_features & INCOMPAT_CORRUPT != 0)
        .with("extended-l2", h.incompatible_features & INCOMPAT_EXTL2 != 0);
    if let Some(f) = &h.external_data_file {
        specific = specific.with("data-file", f.as_str());
    }
    ImageInfo {
        format: Format::Qcow2,
        virtual_size: Some(h.virtual_size),
        cluster_size: Some(h.cluster_size()),
        format_specific: Some(specific),
    }
}

/// A lenient probe's result as `qemu-img info --output json` reports it.
pub fn image_info_of(q: &ImageInfo) -> crate::format::ImageInfo {
    use crate::format::{Format, FormatSpecific};
    let compression = match q.compression_type {
        CompressionType::Zlib => "zlib",
        CompressionType::Zstd => "zstd",
    };
    let mut specific = FormatSpecific::new("qcow2")
        .with("compat", if q.version >= 3 { "1.1" } else { "0.10" })
        .with("compression-type", compression)
        .with("lazy-refcounts", q.lazy_refcounts)
        .with("refcount-bits", 1u64 << q.refcount_order.min(6))
        .with("corrupt", q.corrupt)
        .with("extended-l2", q.extended_l2);
    if let Some(f) = &q.external_data_file {
        specific = specific.with("data-file", f.as_str());
    }
    if let Some(b) = &q.backing_file {
        specific = specific.with("backing-filename", b.as_str());
    }
    if q.encryption != "none" {
        specific = specific.with("encrypt", q.encryption.as_str());
    }
    crate::format::ImageInfo {
        format: Format::Qcow2,
        virtual_size: Some(q.virtual_size),
        cluster_size: Some(q.cluster_size),
        format_specific: Some(specific),
    }
}
