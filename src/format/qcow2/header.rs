//! The qcow2 header: fixed fields, feature bits and header extensions.
//!
//! We parse the header ourselves, with checked reads, because qcow2-rs's
//! `Qcow2Header::from_buf` cannot serve a streaming importer on its own: it
//! slices a fixed-size buffer (panics when short), refuses *every* incompatible
//! feature bit (dirty, zstd, extended L2 are all readable), and reads version 2
//! headers as if they had the v3 fields. qcow2-rs still gets a real role: once
//! our parser has validated the image, [`Header::qcow2rs_info`] feeds it a
//! normalized v3 copy and the resulting `Qcow2Info` drives L1/L2 entry decoding
//! (see `entry.rs`).

use qcow2_rs::dev::{Qcow2DevParams, Qcow2Info};
use qcow2_rs::meta::Qcow2Header;

use super::Qcow2Error;

/// qcow2 magic bytes, `QFI\xfb`.
pub(super) const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Bytes needed to read the fixed header fields up to `cluster_bits`.
pub(super) const FIXED_PREFIX: usize = 24;
/// Smallest cluster (`cluster_bits` 9) and largest (`cluster_bits` 21, QEMU's limit).
pub(super) const MIN_CLUSTER_BITS: u32 = 9;
pub(super) const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limit on the L1 table (32 MiB), which also bounds our L1 parsing work.
pub(super) const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on the refcount table (8 MiB).
pub(super) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU's limit on internal snapshots.
pub(super) const MAX_SNAPSHOTS: u32 = 65536;
/// Offsets in L1/L2 entries have 56 bits; nothing can live beyond.
pub(super) const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Largest virtual size we accept (64 PiB, the populated-cluster limit of the format).
pub(super) const MAX_VIRTUAL_SIZE: u64 = 1 << 56;

pub(super) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(super) const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub(super) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub(super) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub(super) const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible feature bit this reader knows.
pub(super) const INCOMPAT_KNOWN: u64 = 0x1f;
pub(super) const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionType {
    /// Raw deflate (QEMU calls it zlib; there is no zlib header).
    Zlib,
    /// zstd frames.
    Zstd,
}

/// Everything the decoder and `info` need from the header cluster.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: CompressionType,
    /// Raw compression type byte (for messages about unknown types).
    pub compression_type_raw: u8,
    pub external_data_file: Option<String>,
    pub has_crypto_ext: bool,
    pub has_bitmaps_ext: bool,
    /// Names from the feature name table, for incompatible bits.
    pub incompat_names: Vec<(u8, String)>,
}

/// The bytes `b[start..end]`, or [`Qcow2Error::HeaderTruncated`] when `b`
/// is shorter: a header given in pieces asks for more this way (the stream
/// decoder keeps collecting until the first cluster is in).
fn need(b: &[u8], start: usize, end: usize) -> Result<&[u8], Qcow2Error> {
    b.get(start..end).ok_or(Qcow2Error::HeaderTruncated {
        need: end as u64,
        have: b.len() as u64,
    })
}

/// Big-endian readers that report "need more" instead of panicking.
fn be_u32(b: &[u8], off: usize) -> Result<u32, Qcow2Error> {
    let mut a = [0u8; 4];
    a.copy_from_slice(need(b, off, off.saturating_add(4))?);
    Ok(u32::from_be_bytes(a))
}

fn be_u64(b: &[u8], off: usize) -> Result<u64, Qcow2Error> {
    let mut a = [0u8; 8];
    a.copy_from_slice(need(b, off, off.saturating_add(8))?);
    Ok(u64::from_be_bytes(a))
}

/// Cluster size announced by the first bytes, once 24 of them are available.
/// This is how many bytes the header parser (and `probe`) needs at most.
pub(super) fn cluster_size_hint(head: &[u8]) -> Option<u64> {
    let bits = be_u32(head, 20).ok()?;
    if (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        Some(1u64 << bits)
    } else {
        None
    }
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Parses and validates the header from the start of the image. `head` may
    /// be shorter than a cluster: if it ends before the header, its extensions
    /// or the backing file name, [`Qcow2Error::HeaderTruncated`] says how
    /// many bytes are needed.
    pub fn parse(head: &[u8]) -> Result<Header, Qcow2Error> {
        let mut h = Header::parse_raw(head)?;
        h.refuse_unsupported()?;
        h.validate()?;
        Ok(h)
    }

    /// Parses without refusing anything: fields, extensions, backing name.
    pub fn parse_raw(head: &[u8]) -> Result<Header, Qcow2Error> {
        if need(head, 0, 4)? != QCOW2_MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        let version = be_u32(head, 4)?;
        if version != 2 && version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(version));
        }
        let cluster_bits = be_u32(head, 20)?;
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Qcow2Error::ClusterBits(cluster_bits));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be_u64(head, 8)?,
            backing_file_size: be_u32(head, 16)?,
            backing_file: None,
            backing_format: None,
            cluster_bits,
            virtual_size: be_u64(head, 24)?,
            crypt_method: be_u32(head, 32)?,
            l1_size: be_u32(head, 36)?,
            l1_table_offset: be_u64(head, 40)?,
            refcount_table_offset: be_u64(head, 48)?,
            refcount_table_clusters: be_u32(head, 56)?,
            nb_snapshots: be_u32(head, 60)?,
            snapshots_offset: be_u64(head, 64)?,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: CompressionType::Zlib,
            compression_type_raw: 0,
            external_data_file: None,
            has_crypto_ext: false,
            has_bitmaps_ext: false,
            incompat_names: Vec::new(),
        };
        if version >= 3 {
            h.incompatible_features = be_u64(head, 72)?;
            h.compatible_features = be_u64(head, 80)?;
            h.autoclear_features = be_u64(head, 88)?;
            h.refcount_order = be_u32(head, 96)?;
            h.header_length = be_u32(head, 100)?;
            if h.header_length < 104
                || h.header_length % 8 != 0
                || u64::from(h.header_length) > cluster_size
            {
                return Err(Qcow2Error::HeaderLength {
                    len: h.header_length,
                    cluster_size,
                });
            }
            if h.header_length > 104 {
                if let [b] = need(head, 104, 105)? {
                    h.compression_type_raw = *b;
                }
            }
        }
        h.parse_extensions(head, cluster_size)?;
        if h.backing_file_offset != 0 {
            h.backing_file = Some(h.read_backing_name(head, cluster_size)?);
        }
        Ok(h)
    }

    fn read_backing_name(&self, head: &[u8], cluster_size: u64) -> Result<String, Qcow2Error> {
        let off = self.backing_file_offset;
        let len = u64::from(self.backing_file_size);
        match off.checked_add(len) {
            Some(end) if len <= 1023 && end <= cluster_size => {
                let name = need(head, to_usize(off)?, to_usize(end)?)?;
                Ok(String::from_utf8_lossy(name).into_owned())
            }
            // Still a backing file: name the problem even if the name is unreadable.
            _ => Ok(format!("<unreadable name at offset {off}, {len} bytes>")),
        }
    }

    fn parse_extensions(&mut self, head: &[u8], cluster_size: u64) -> Result<(), Qcow2Error> {
        let mut off = u64::from(self.header_length);
        loop {
            let past = |ty| Qcow2Error::HeaderExtension { at: off, ty };
            // Every offset here stays below the cluster size plus a u32, so
            // the checked additions only guard against a bug.
            let hdr_end = off.checked_add(8).ok_or(past(None))?;
            if hdr_end > cluster_size {
                return Err(past(None));
            }
            let at = to_usize(off)?;
            let ty = be_u32(head, at)?;
            let len = be_u32(head, at.saturating_add(4))?;
            if ty == EXT_END {
                return Ok(());
            }
            let data_end = hdr_end
                .checked_add(u64::from(len))
                .filter(|&e| e <= cluster_size)
                .ok_or(past(Some(ty)))?;
            let data = need(head, to_usize(hdr_end)?, to_usize(data_end)?)?;
            match ty {
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned())
                }
                EXT_DATA_FILE => {
                    self.external_data_file = Some(String::from_utf8_lossy(data).into_owned())
                }
                EXT_CRYPTO => self.has_crypto_ext = true,
                EXT_BITMAPS => self.has_bitmaps_ext = true,
                EXT_FEATURE_NAMES => {
                    for e in data.chunks_exact(48) {
                        if let (Some(0), Some(bit)) = (e.first(), e.get(1)) {
                            let name = e.get(2..).unwrap_or_default();
                            let name = String::from_utf8_lossy(name);
                            self.incompat_names
                                .push((*bit, name.trim_end_matches('\0').to_string()));
                        }
                    }
                }
                _ => {}
            }
            off = u64::from(len)
                .checked_add(7)
                .map(|v| v & !7)
                .and_then(|padded| hdr_end.checked_add(padded))
                .ok_or(past(Some(ty)))?;
        }
    }

    /// Refuses the features a raw import cannot honour.
    pub fn refuse_unsupported(&self) -> Result<(), Qcow2Error> {
        if let Some(name) = &self.backing_file {
            return Err(Qcow2Error::BackingFile { name: name.clone() });
        }
        match self.crypt_method {
            0 => {}
            1 => return Err(Qcow2Error::Encrypted("AES")),
            2 => return Err(Qcow2Error::Encrypted("LUKS")),
            m => return Err(Qcow2Error::UnknownEncryption(m)),
        }
        if self.has_crypto_ext {
            return Err(Qcow2Error::CryptoExtension);
        }
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Qcow2Error::UnknownIncompatible {
                bits: unknown,
                names: self.describe_bits(unknown),
            });
        }
        if self.incompatible_features & INCOMPAT_DATA_FILE != 0 || self.external_data_file.is_some()
        {
            let name = self.external_data_file.as_deref().unwrap_or("<unnamed>");
            return Err(Qcow2Error::ExternalDataFile {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// The structural checks that make the decoder's arithmetic safe.
    pub fn validate(&mut self) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        if self.incompatible_features & INCOMPAT_COMPRESSION != 0 {
            if self.header_length <= 104 {
                return Err(Qcow2Error::CompressionFieldMissing);
            }
            self.compression_type = match self.compression_type_raw {
                1 => CompressionType::Zstd,
                0 => {
                    return Err(Qcow2Error::CompressionTypeMismatch { raw: 0, bit: true });
                }
                t => return Err(Qcow2Error::UnknownCompressionType(t)),
            };
        } else if self.compression_type_raw != 0 {
            return Err(Qcow2Error::CompressionTypeMismatch {
                raw: self.compression_type_raw,
                bit: false,
            });
        }
        if self.extended_l2() && self.cluster_bits < 14 {
            return Err(Qcow2Error::ExtendedL2Clusters { cluster_size: cs });
        }
        if self.refcount_order > 6 {
            return Err(Qcow2Error::RefcountOrder(self.refcount_order));
        }
        if self.virtual_size > MAX_VIRTUAL_SIZE {
            return Err(Qcow2Error::VirtualSize(self.virtual_size));
        }
        // L1 geometry: each L1 entry maps one L2 table's worth of guest space.
        let needed = self.l1_entries_needed();
        if u64::from(self.l1_size) < needed {
            return Err(Qcow2Error::L1TooSmall {
                entries: self.l1_size,
                needed,
            });
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Qcow2Error::L1TooLarge {
                entries: self.l1_size,
            });
        }
        if self.l1_size > 0 {
            check_table_offset("L1 table", self.l1_table_offset, l1_bytes, cs)?;
        }
        if self.refcount_table_clusters == 0 {
            return Err(Qcow2Error::RefcountTableEmpty);
        }
        let rt_bytes = u64::from(self.refcount_table_clusters)
            .checked_mul(cs)
            .filter(|&b| b <= MAX_REFTABLE_BYTES.max(cs))
            .ok_or(Qcow2Error::RefcountTableTooLarge {
                clusters: self.refcount_table_clusters,
            })?;
        check_table_offset("refcount table", self.refcount_table_offset, rt_bytes, cs)?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Qcow2Error::TooManySnapshots(self.nb_snapshots));
        }
        if self.nb_snapshots > 0 {
            check_table_offset("snapshot table", self.snapshots_offset, 1, cs)?;
        }
        if self.l1_size > 0 {
            let (a0, a1) = (
                self.l1_table_offset,
                self.l1_table_offset + align_up(l1_bytes, cs),
            );
            let (b0, b1) = (
                self.refcount_table_offset,
                self.refcount_table_offset + rt_bytes,
            );
            if a0 < b1 && b0 < a1 {
                return Err(Qcow2Error::Overlap {
                    what: "L1 table",
                    at: a0,
                    other: "refcount table",
                    other_at: b0,
                });
            }
        }
        Ok(())
    }

    /// Guest bytes covered by one L1 entry (one L2 table).
    pub fn l2_span(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        let entry = if self.extended_l2() { 16 } else { 8 };
        self.cluster_size() / entry
    }

    /// L1 entries needed to map the whole virtual size.
    pub fn l1_entries_needed(&self) -> u64 {
        self.virtual_size.div_ceil(self.l2_span())
    }

    /// The incompatible feature bits set in `bits`, each with its name from
    /// the image's feature name table when it has one: `["40 (foo)", "41"]`.
    pub(super) fn feature_bit_names(&self, bits: u64) -> Vec<String> {
        (0u8..64)
            .filter(|b| bits & (1u64 << b) != 0)
            .map(
                |b| match self.incompat_names.iter().find(|(n, _)| *n == b) {
                    Some((_, name)) => format!("{b} ({name})"),
                    None => b.to_string(),
                },
            )
            .collect()
    }

    fn describe_bits(&self, bits: u64) -> String {
        self.feature_bit_names(bits).join(", ")
    }

    /// A normalized version-3 copy of this header that qcow2-rs's
    /// `Qcow2Header::from_buf` accepts: the incompatible bits we handle
    /// ourselves cleared, compression type 0, no backing file, no extensions.
    /// The geometry (cluster bits, sizes, table offsets) is the image's own.
    fn normalized_for_qcow2rs(&self) -> Vec<u8> {
        let mut b = vec![0u8; 120];
        let put32 = |b: &mut Vec<u8>, off: usize, v: u32| {
            if let Some(s) = b.get_mut(off..off + 4) {
                s.copy_from_slice(&v.to_be_bytes());
            }
        };
        let put64 = |b: &mut Vec<u8>, off: usize, v: u64| {
            if let Some(s) = b.get_mut(off..off + 8) {
                s.copy_from_slice(&v.to_be_bytes());
            }
        };
        if let Some(s) = b.get_mut(0..4) {
            s.copy_from_slice(&QCOW2_MAGIC);
        }
        put32(&mut b, 4, 3);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.virtual_size);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 96, self.refcount_order);
        put32(&mut b, 100, 112);
        // Bytes 112..120 stay zero: the end-of-extensions marker.
        b
    }

    /// qcow2-rs's view of the image geometry, built from the normalized copy.
    pub fn qcow2rs_info(&self) -> Result<Qcow2Info, Qcow2Error> {
        let buf = self.normalized_for_qcow2rs();
        let hdr = Qcow2Header::from_buf(&buf).map_err(|source| Qcow2Error::Qcow2Rs {
            what: "header",
            source,
        })?;
        // Slices of 512 bytes (bits 9) for the L2/refcount caches we never use:
        // qcow2-rs's default derives them with `cluster_bits - 12`, which
        // underflows for clusters smaller than 4 KiB.
        let params = Qcow2DevParams::new(9, Some((9, 4096)), Some((9, 4096)), true, false);
        Qcow2Info::new(&hdr, &params).map_err(|source| Qcow2Error::Qcow2Rs {
            what: "geometry",
            source,
        })
    }
}

/// Offsets inside the header cluster (at most 2 MiB) as `usize`.
fn to_usize(v: u64) -> Result<usize, Qcow2Error> {
    usize::try_from(v).map_err(|_| Qcow2Error::Internal("a header offset does not fit in usize"))
}

pub(super) fn align_up(v: u64, a: u64) -> u64 {
    // Callers pass values bounded by MAX_HOST_OFFSET, so this cannot overflow.
    v.div_ceil(a).saturating_mul(a)
}

fn check_table_offset(what: &'static str, off: u64, len: u64, cs: u64) -> Result<(), Qcow2Error> {
    if off == 0 {
        return Err(Qcow2Error::Overlap {
            what,
            at: 0,
            other: "image header",
            other_at: 0,
        });
    }
    if off % cs != 0 {
        return Err(Qcow2Error::Unaligned { what, offset: off });
    }
    match off.checked_add(len) {
        Some(end) if end <= MAX_HOST_OFFSET => Ok(()),
        _ => Err(Qcow2Error::OutOfRange { what, offset: off }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid v3 header cluster (64 KiB clusters, 1 GiB).
    pub(crate) fn v3_header() -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        b[0..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[36..40].copy_from_slice(&2u32.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        b[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    #[test]
    fn parses_minimal_v3() {
        let h = Header::parse(&v3_header()).expect("valid");
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.l1_entries_needed(), 2);
        assert!(h.qcow2rs_info().is_ok());
    }

    /// `v3_header` with `patch` applied, parsed.
    fn parse_patched(patch: impl FnOnce(&mut Vec<u8>)) -> Result<Header, Qcow2Error> {
        let mut b = v3_header();
        patch(&mut b);
        Header::parse(&b)
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    #[test]
    fn refusals_name_the_problem() {
        let e = parse_patched(|b| put32(b, 32, 2));
        assert!(matches!(e, Err(Qcow2Error::Encrypted("LUKS"))), "{e:?}");
        let e = parse_patched(|b| put32(b, 32, 7));
        assert!(matches!(e, Err(Qcow2Error::UnknownEncryption(7))), "{e:?}");

        let e = parse_patched(|b| {
            put64(b, 8, 512);
            put32(b, 16, 8);
            b[512..520].copy_from_slice(b"base.img");
        });
        assert!(
            matches!(&e, Err(Qcow2Error::BackingFile { name }) if name == "base.img"),
            "{e:?}"
        );
        // A name that cannot be read is still a backing file.
        let e = parse_patched(|b| {
            put64(b, 8, u64::MAX - 2);
            put32(b, 16, 8);
        });
        assert!(
            matches!(&e, Err(Qcow2Error::BackingFile { name }) if name.contains("unreadable")),
            "{e:?}"
        );

        let e = parse_patched(|b| put32(b, 20, 22));
        assert!(matches!(e, Err(Qcow2Error::ClusterBits(22))), "{e:?}");
        let e = parse_patched(|b| put32(b, 4, 4));
        assert!(matches!(e, Err(Qcow2Error::UnsupportedVersion(4))), "{e:?}");
        let e = parse_patched(|b| b[0] = b'X');
        assert!(matches!(e, Err(Qcow2Error::BadMagic)), "{e:?}");

        let e = parse_patched(|b| put64(b, 72, 1 << 40));
        assert!(
            matches!(&e, Err(Qcow2Error::UnknownIncompatible { bits, names })
                if *bits == 1 << 40 && names == "40"),
            "{e:?}"
        );

        let e = parse_patched(|b| put64(b, 40, (3 << 16) + 512));
        assert!(
            matches!(
                e,
                Err(Qcow2Error::Unaligned {
                    what: "L1 table",
                    offset: 0x30200
                })
            ),
            "{e:?}"
        );
        let e = parse_patched(|b| put64(b, 48, 0));
        assert!(
            matches!(
                e,
                Err(Qcow2Error::Overlap {
                    what: "refcount table",
                    other: "image header",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = parse_patched(|b| put64(b, 40, 1 << 16));
        assert!(
            matches!(
                e,
                Err(Qcow2Error::Overlap {
                    what: "L1 table",
                    other: "refcount table",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = parse_patched(|b| put64(b, 40, 1 << 56));
        assert!(
            matches!(
                e,
                Err(Qcow2Error::OutOfRange {
                    what: "L1 table",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = parse_patched(|b| put32(b, 36, 1));
        assert!(
            matches!(
                e,
                Err(Qcow2Error::L1TooSmall {
                    entries: 1,
                    needed: 2
                })
            ),
            "{e:?}"
        );
        let e = parse_patched(|b| put64(b, 24, u64::MAX));
        assert!(matches!(e, Err(Qcow2Error::VirtualSize(u64::MAX))), "{e:?}");
        let e = parse_patched(|b| put32(b, 100, 100));
        assert!(
            matches!(e, Err(Qcow2Error::HeaderLength { len: 100, .. })),
            "{e:?}"
        );
        let e = parse_patched(|b| put32(b, 56, 0));
        assert!(matches!(e, Err(Qcow2Error::RefcountTableEmpty)), "{e:?}");
        let e = parse_patched(|b| put32(b, 56, u32::MAX));
        assert!(
            matches!(
                e,
                Err(Qcow2Error::RefcountTableTooLarge { clusters: u32::MAX })
            ),
            "{e:?}"
        );
        let e = parse_patched(|b| put32(b, 96, 7));
        assert!(matches!(e, Err(Qcow2Error::RefcountOrder(7))), "{e:?}");
    }

    #[test]
    fn compression_type_and_feature_bit_must_agree() {
        let e = parse_patched(|b| put64(b, 72, INCOMPAT_COMPRESSION));
        assert!(
            matches!(
                e,
                Err(Qcow2Error::CompressionTypeMismatch { raw: 0, bit: true })
            ),
            "{e:?}"
        );
        let e = parse_patched(|b| b[104] = 1);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::CompressionTypeMismatch { raw: 1, bit: false })
            ),
            "{e:?}"
        );
        let e = parse_patched(|b| {
            put64(b, 72, INCOMPAT_COMPRESSION);
            b[104] = 9;
        });
        assert!(
            matches!(e, Err(Qcow2Error::UnknownCompressionType(9))),
            "{e:?}"
        );
        let e = parse_patched(|b| {
            put64(b, 72, INCOMPAT_COMPRESSION);
            put32(b, 100, 104);
        });
        assert!(
            matches!(e, Err(Qcow2Error::CompressionFieldMissing)),
            "{e:?}"
        );
        let h = parse_patched(|b| {
            put64(b, 72, INCOMPAT_COMPRESSION);
            b[104] = 1;
        })
        .expect("zstd");
        assert_eq!(h.compression_type, CompressionType::Zstd);
    }

    #[test]
    fn header_extensions_must_fit_the_first_cluster() {
        // An extension whose data runs past the cluster.
        let e = parse_patched(|b| {
            put32(b, 112, 0x1234_5678);
            put32(b, 116, 65536);
        });
        assert!(
            matches!(
                e,
                Err(Qcow2Error::HeaderExtension {
                    at: 112,
                    ty: Some(0x1234_5678)
                })
            ),
            "{e:?}"
        );
        // Extensions chained up to the end of the cluster, no end marker.
        let e = parse_patched(|b| {
            let mut at = 112;
            while at + 8 <= b.len() {
                put32(b, at, 0x1234_5678);
                put32(b, at + 4, 8);
                at += 16;
            }
        });
        assert!(
            matches!(e, Err(Qcow2Error::HeaderExtension { ty: None, .. })),
            "{e:?}"
        );
        let e = parse_patched(|b| put32(b, 112, 0x0537_be77));
        assert!(matches!(e, Err(Qcow2Error::CryptoExtension)), "{e:?}");
    }

    #[test]
    fn short_buffers_ask_for_more() {
        let b = v3_header();
        for n in [0, 3, 10, 50, 100] {
            let e = Header::parse(&b[..n]);
            assert!(
                matches!(e, Err(Qcow2Error::HeaderTruncated { need, have })
                    if have == n as u64 && need > have),
                "{n}: {e:?}"
            );
        }
        assert!(Header::parse(&b[..120]).is_ok());
    }
}
