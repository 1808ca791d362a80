//! The format table: every signature streamdisk knows, in one place, and
//! what happens to a stream that carries it.
//!
//! A stream is recognised by the first bytes it holds ([`identify`]), and a
//! few formats by their last 512 bytes as well ([`identify_tail`]: a fixed
//! VHD's footer, a DMG's `koly` trailer). Each signature leads to one of:
//! - a compression wrapper, decoded, after which the table is asked again;
//! - an image format we decode;
//! - a container we open (an OVA: a tar whose first member is an `.ovf`);
//! - a refusal **by name**: a format we recognise and do not decode. It is
//!   never copied through as if it were a raw disk: the import stops with
//!   exit 1 before a byte is written (for a trailer seen only at the end of
//!   a stream, before the import is reported as done).
//!
//! Anything without a signature is a raw disk, as in CDI and qemu.
//!
//! Adding a decoder means one folder under `src/format/` and turning its row
//! here from a refusal into [`Signature::Image`].

use super::Format;
use crate::unwrap::Wrapper;

/// How many leading bytes [`identify`] looks at (the tar magic sits at 257).
pub(crate) const HEAD_LEN: usize = 512;

/// What the first bytes of a stream say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A compression wrapper: decode it and look again.
    Wrapper(Wrapper),
    /// An image format with a decoder.
    Image(Format),
    /// A tar archive whose first member is an OVF descriptor.
    Ova,
    /// A format we recognise and do not decode.
    Refused(Refusal),
    /// No signature: a raw disk (it may still end in a trailer, see
    /// [`identify_tail`]).
    None,
}

/// A format refused by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {are} not supported{detail}", are = if self.plural { "are" } else { "is" })]
pub struct Refusal {
    /// What was found, as users call it ("VMDK images", "zip archives").
    pub what: &'static str,
    /// Whether `what` is plural (for the message's grammar).
    pub plural: bool,
    /// Why, or what to do instead, starting with its separator (may be empty).
    pub detail: &'static str,
}

impl Refusal {
    const fn images(what: &'static str, detail: &'static str) -> Signature {
        Signature::Refused(Refusal {
            what,
            plural: true,
            detail,
        })
    }
}

/// A signature row: `magic` at `offset`.
struct Row {
    offset: usize,
    magic: &'static [u8],
    /// Extra condition on the head, when the magic alone is ambiguous.
    check: Option<fn(&[u8]) -> bool>,
    outcome: fn() -> Signature,
}

const TRY_RAW: &str = " (use --format raw to copy the bytes as they are)";

/// Every signature at the start of a stream, most specific first.
const ROWS: &[Row] = &[
    // Compression wrappers.
    Row {
        offset: 0,
        magic: &[0x1f, 0x8b],
        check: None,
        outcome: || Signature::Wrapper(Wrapper::Gzip),
    },
    Row {
        offset: 0,
        magic: &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
        check: None,
        outcome: || Signature::Wrapper(Wrapper::Xz),
    },
    Row {
        offset: 0,
        magic: &[0x28, 0xb5, 0x2f, 0xfd],
        check: None,
        outcome: || Signature::Wrapper(Wrapper::Zstd),
    },
    Row {
        offset: 0,
        magic: b"BZh",
        check: Some(bzip2_level),
        outcome: || Signature::Wrapper(Wrapper::Bzip2),
    },
    Row {
        offset: 0,
        magic: &[0x04, 0x22, 0x4d, 0x18],
        check: None,
        outcome: || Refusal::images("lz4-compressed images", ": decompress it first"),
    },
    Row {
        offset: 0,
        magic: b"LZIP",
        check: None,
        outcome: || Refusal::images("lzip-compressed images", ": decompress it first"),
    },
    Row {
        offset: 0,
        magic: b"PK\x03\x04",
        check: None,
        outcome: || Refusal::images("zip archives", ": extract the disk image first"),
    },
    Row {
        offset: 0,
        magic: &[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c],
        check: None,
        outcome: || Refusal::images("7z archives", ": extract the disk image first"),
    },
    Row {
        offset: 0,
        magic: b"Rar!\x1a\x07",
        check: None,
        outcome: || Refusal::images("rar archives", ": extract the disk image first"),
    },
    // Image formats we decode.
    Row {
        offset: 0,
        magic: b"QFI\xfb",
        check: Some(qcow_version_2_or_3),
        outcome: || Signature::Image(Format::Qcow2),
    },
    Row {
        offset: 0,
        magic: b"vhdxfile",
        check: None,
        outcome: || Signature::Image(Format::Vhdx),
    },
    // A VMDK sparse extent; a VMDK text descriptor goes to the VMDK decoder
    // too, which refuses it naming the extent files it needs (a name the
    // table cannot know).
    Row {
        offset: 0,
        magic: b"KDMV",
        check: None,
        outcome: || Signature::Image(Format::Vmdk),
    },
    Row {
        offset: 0,
        magic: b"# Disk DescriptorFile",
        check: None,
        outcome: || Signature::Image(Format::Vmdk),
    },
    // Recognised, not decoded (yet).
    Row {
        offset: 0,
        magic: b"QFI\xfb",
        check: None,
        outcome: || {
            Refusal::images(
                "qcow version 1 images",
                ": convert it to qcow2 with qemu-img first",
            )
        },
    },
    Row {
        offset: 0,
        magic: b"COWD",
        check: None,
        outcome: || Refusal::images("VMDK (ESX COWD sparse) images", TRY_RAW),
    },
    Row {
        offset: 0,
        magic: b"conectix",
        check: None,
        outcome: || Signature::Image(Format::Vpc),
    },
    Row {
        offset: 0x40,
        magic: &[0x7f, 0x10, 0xda, 0xbe],
        check: None,
        outcome: || Signature::Image(Format::Vdi),
    },
    Row {
        offset: 0,
        magic: b"QED\0",
        check: None,
        outcome: || Refusal::images("QED images", ": convert it with qemu-img first"),
    },
    Row {
        offset: 0,
        magic: b"LUKS\xba\xbe",
        check: None,
        outcome: || {
            Refusal::images(
                "LUKS-encrypted images",
                ": streamdisk does not decrypt images",
            )
        },
    },
    Row {
        offset: 0,
        magic: b"WithoutFreeSpace",
        check: None,
        outcome: || Refusal::images("Parallels images", ": convert it with qemu-img first"),
    },
    Row {
        offset: 0,
        magic: b"WithouFreSpacExt",
        check: None,
        outcome: || Refusal::images("Parallels images", ": convert it with qemu-img first"),
    },
    Row {
        offset: 0,
        magic: b"Bochs Virtual HD Image",
        check: None,
        outcome: || Refusal::images("Bochs images", ": convert it with qemu-img first"),
    },
    Row {
        offset: 0,
        magic: b"#!/bin/sh\n#V2.0 Format\n",
        check: None,
        outcome: || Refusal::images("cloop images", ": convert it with qemu-img first"),
    },
    // A tar: an OVA when its first member is the OVF descriptor.
    Row {
        offset: 257,
        magic: b"ustar",
        check: Some(first_member_is_ovf),
        outcome: || Signature::Ova,
    },
    Row {
        offset: 257,
        magic: b"ustar",
        check: None,
        outcome: || {
            Refusal::images(
                "tar archives that are not an OVA",
                ": extract the disk image first",
            )
        },
    },
];

/// Identifies a stream by its first bytes (up to [`HEAD_LEN`]; fewer only
/// when the stream is that short).
pub fn identify(head: &[u8]) -> Signature {
    for row in ROWS {
        let hit = row
            .offset
            .checked_add(row.magic.len())
            .and_then(|end| head.get(row.offset..end))
            .is_some_and(|b| b == row.magic);
        if hit && row.check.is_none_or(|c| c(head)) {
            return (row.outcome)();
        }
    }
    Signature::None
}

/// What the last 512 bytes of a stream without a leading signature say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trailer {
    /// A VHD footer (`conectix`): a fixed VHD, raw data followed by it.
    VhdFooter,
    /// A DMG (UDIF) `koly` trailer: an Apple disk image, refused.
    Dmg,
}

/// Size of the trailers [`identify_tail`] knows.
pub(crate) const TAIL_LEN: usize = 512;

/// Identifies a trailer in the last [`TAIL_LEN`] bytes of a stream.
///
/// A fixed VHD's footer is 512 bytes, but images made by old Microsoft tools
/// may end in a 511-byte one; both start with `conectix`.
pub(crate) fn identify_tail(tail: &[u8]) -> Option<Trailer> {
    if tail.len() < TAIL_LEN {
        return None;
    }
    let start = tail.len() - TAIL_LEN;
    let t = tail.get(start..)?;
    if t.starts_with(b"conectix") || t.get(1..).is_some_and(|s| s.starts_with(b"conectix")) {
        return Some(Trailer::VhdFooter);
    }
    if t.starts_with(b"koly") && t.get(4..8) == Some(&[0, 0, 0, 4]) {
        return Some(Trailer::Dmg);
    }
    None
}

/// The refusal for a DMG found by its trailer.
pub(crate) fn dmg_refusal() -> Refusal {
    Refusal {
        what: "DMG (Apple disk) images",
        plural: true,
        detail: ": convert it with qemu-img or hdiutil first",
    }
}

/// qcow2 is versions 2 and 3; version 1 is the old qcow format.
fn qcow_version_2_or_3(head: &[u8]) -> bool {
    matches!(
        head.get(4..8).map(|b| [b[0], b[1], b[2], b[3]]),
        Some([0, 0, 0, 2] | [0, 0, 0, 3])
    )
}

/// `BZh1`..`BZh9` followed by a block or end-of-stream magic.
fn bzip2_level(head: &[u8]) -> bool {
    head.get(3).is_some_and(|l| (b'1'..=b'9').contains(l))
        && head.get(4..10).is_some_and(|m| {
            m == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59] || m == [0x17, 0x72, 0x45, 0x38, 0x50, 0x90]
        })
}

/// A tar header's name field (the first 100 bytes) ends in `.ovf`.
fn first_member_is_ovf(head: &[u8]) -> bool {
    let Some(name) = head.get(..100) else {
        return false;
    };
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    name.get(..len)
        .is_some_and(|n| n.to_ascii_lowercase().ends_with(b".ovf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEAD_LEN];
        v[offset..offset + magic.len()].copy_from_slice(magic);
        v
    }

    fn refused(head: &[u8]) -> String {
        match identify(head) {
            Signature::Refused(r) => r.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn wrappers_and_decoded_formats() {
        assert_eq!(
            identify(&[0x1f, 0x8b, 8]),
            Signature::Wrapper(Wrapper::Gzip)
        );
        assert_eq!(
            identify(&at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0])),
            Signature::Wrapper(Wrapper::Xz)
        );
        assert_eq!(
            identify(&[0x28, 0xb5, 0x2f, 0xfd]),
            Signature::Wrapper(Wrapper::Zstd)
        );
        assert_eq!(
            identify(&at(0, b"QFI\xfb\0\0\0\x03")),
            Signature::Image(Format::Qcow2)
        );
        assert_eq!(
            identify(&at(0, b"QFI\xfb\0\0\0\x02")),
            Signature::Image(Format::Qcow2)
        );
        assert_eq!(
            identify(&at(0, b"BZh91AY&SY")),
            Signature::Wrapper(Wrapper::Bzip2)
        );
        // An empty bzip2 stream: the end-of-stream magic straight away.
        assert_eq!(
            identify(b"BZh9\x17\x72\x45\x38\x50\x90\0\0\0\0"),
            Signature::Wrapper(Wrapper::Bzip2)
        );
        // "BZh" alone is text, not bzip2.
        assert_eq!(identify(&at(0, b"BZh9 text")), Signature::None);
        assert_eq!(identify(&at(0, b"conectix")), Signature::Image(Format::Vpc));
        assert_eq!(
            identify(&at(0x40, &[0x7f, 0x10, 0xda, 0xbe])),
            Signature::Image(Format::Vdi)
        );
        assert_eq!(
            identify(&at(0, b"vhdxfile")),
            Signature::Image(Format::Vhdx)
        );
        assert_eq!(identify(&at(0, b"KDMV")), Signature::Image(Format::Vmdk));
        assert_eq!(
            identify(&at(0, b"# Disk DescriptorFile\nversion=1\n")),
            Signature::Image(Format::Vmdk)
        );
        assert_eq!(identify(&[0u8; 512]), Signature::None);
        assert_eq!(identify(&[]), Signature::None);
        assert_eq!(identify(&[0x1f]), Signature::None);
    }

    #[test]
    fn every_refused_signature_is_named() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"QFI\xfb\0\0\0\x01", 0, "qcow version 1"),
            (b"COWD", 0, "VMDK (ESX COWD"),
            (b"QED\0", 0, "QED"),
            (b"LUKS\xba\xbe", 0, "LUKS"),
            (b"WithoutFreeSpace", 0, "Parallels"),
            (b"WithouFreSpacExt", 0, "Parallels"),
            (b"Bochs Virtual HD Image", 0, "Bochs"),
            (b"#!/bin/sh\n#V2.0 Format\n", 0, "cloop"),
            (&[0x04, 0x22, 0x4d, 0x18], 0, "lz4"),
            (b"LZIP", 0, "lzip"),
            (b"PK\x03\x04", 0, "zip"),
            (&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c], 0, "7z"),
            (b"Rar!\x1a\x07\x00", 0, "rar"),
            (b"ustar", 257, "tar archives that are not an OVA"),
        ];
        for (magic, offset, name) in cases {
            let msg = refused(&at(*offset, magic));
            assert!(msg.starts_with(name), "{name}: {msg}");
            assert!(msg.contains("not supported"), "{msg}");
        }
    }

    #[test]
    fn an_ova_is_a_tar_whose_first_member_is_the_ovf() {
        let mut head = at(257, b"ustar");
        head[..12].copy_from_slice(b"appliance.ov");
        head[12] = b'f';
        assert_eq!(identify(&head), Signature::Ova);
    }

    #[test]
    fn trailers() {
        let mut tail = vec![0u8; 1024];
        assert_eq!(identify_tail(&tail), None);
        tail[512..520].copy_from_slice(b"conectix");
        assert_eq!(identify_tail(&tail), Some(Trailer::VhdFooter));
        // A 511-byte footer leaves the signature one byte later.
        let mut tail = vec![0u8; 512];
        tail[1..9].copy_from_slice(b"conectix");
        assert_eq!(identify_tail(&tail), Some(Trailer::VhdFooter));
        let mut tail = vec![0u8; 512];
        tail[..8].copy_from_slice(b"koly\0\0\0\x04");
        assert_eq!(identify_tail(&tail), Some(Trailer::Dmg));
        assert_eq!(identify_tail(&tail[..100]), None);
    }
}
