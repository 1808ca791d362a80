//! OVA import: a tar whose first member is an OVF descriptor; the disk to
//! import is a later member, found by the descriptor.
//!
//! [`open`] walks the tar forward once: the descriptor is read whole
//! (bounded by [`MAX_OVF`]), disk N of its `DiskSection` (1 by default) is
//! looked up in its `References`, members are skipped until that file's
//! member (the manifest, certificates and other disks may come in any
//! order), and that member's bytes are handed on as a stream. What follows
//! it is drained once the member ends, so a checksum covers the whole
//! download. Nothing is extracted and nothing is seeked.
//!
//! The member is whatever the disk is (a streamOptimized VMDK, usually):
//! the caller identifies it by its signature, as any stream. A file the OVF
//! marks `ovf:compression="gzip"` must start with the gzip magic (the caller
//! checks the head with [`OvaDisk::check_head`]) and is then unwrapped like
//! any gzip stream.
//!
//! Files split into chunk members (`ovf:chunkSize`, members `NAME.000000000`,
//! `NAME.000000001`, ...) are refused by name: the forward tar walker hands
//! on one member, and such packages are rare (ovftool writes them only when
//! asked).

use std::io::{self, BufRead};

use serde::Serialize;

use super::ovf::{self, OvfError};
use super::tar::{MemberKind, TarError, TarReader};

/// Largest OVF descriptor read (real ones are a few KiB; the tree built
/// from it takes a few times its size).
pub(crate) const MAX_OVF: u64 = 1 << 20;

/// How the disk's file is stored in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// As it is (no `ovf:compression`, or `identity`).
    None,
    /// `ovf:compression="gzip"`.
    Gzip,
}

/// The disk chosen from an OVA, for logs and `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct OvaDisk {
    /// The descriptor's member name.
    pub ovf: String,
    /// The disk's member name (its `ovf:href`).
    pub member: String,
    /// The member's size in the archive.
    pub member_size: u64,
    /// Which disk of the `DiskSection`, from 1.
    pub disk: usize,
    /// How many disks the `DiskSection` lists.
    pub disks: usize,
    /// The disk's `ovf:diskId`.
    pub disk_id: String,
    /// How the file is stored.
    pub compression: Compression,
    /// The disk's `ovf:format` URI, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovf_format: Option<String>,
    /// The disk's capacity by the OVF, in bytes, when given as a number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovf_capacity: Option<u64>,
}

/// Why an OVA could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    /// The tar holds nothing.
    #[error("OVA: the tar archive holds no member")]
    Empty,
    /// The first member is not an `.ovf` file.
    #[error("not an OVA: the archive's first member is {0:?}, not an .ovf descriptor")]
    NotOva(String),
    /// The descriptor is larger than [`MAX_OVF`].
    #[error("OVA: the OVF descriptor {name} is {size} bytes (at most {MAX_OVF})")]
    OvfTooLarge {
        /// Its member name.
        name: String,
        /// Its size.
        size: u64,
    },
    /// The descriptor does not parse.
    #[error("OVA: reading the OVF descriptor {name}")]
    Ovf {
        /// Its member name.
        name: String,
        /// Why.
        #[source]
        error: OvfError,
    },
    /// `--disk 0`.
    #[error("OVA: there is no disk 0: disks are counted from 1")]
    DiskZero,
    /// The descriptor lists no disk.
    #[error("OVA: the OVF descriptor lists no disk (no DiskSection/Disk)")]
    NoDisks,
    /// Disk N is not there.
    #[error("OVA: there is no disk {asked}: the OVF lists {count} disk{s}", s = if *count == 1 { "" } else { "s" })]
    NoSuchDisk {
        /// The disk asked for, from 1.
        asked: usize,
        /// Disks listed.
        count: usize,
    },
    /// The disk has no file: an empty disk the deployment creates.
    #[error("OVA: disk {disk} ({id}) has no file (ovf:fileRef): it is an empty disk, created when deployed; there is nothing to import")]
    DiskWithoutFile {
        /// From 1.
        disk: usize,
        /// Its `ovf:diskId`.
        id: String,
    },
    /// The disk's `ovf:fileRef` names no `References/File`.
    #[error("OVA: disk {disk} ({id}) refers to file {file_ref:?}, which the OVF's References do not list")]
    UnknownFile {
        /// From 1.
        disk: usize,
        /// Its `ovf:diskId`.
        id: String,
        /// The `ovf:fileRef`.
        file_ref: String,
    },
    /// The file is split into chunks.
    #[error("OVA: {href} is split into chunks (ovf:chunkSize={chunk}); chunked OVA files are not supported (repack the OVA without ovftool's --chunkSize)")]
    Chunked {
        /// The file.
        href: String,
        /// The chunk size as written.
        chunk: String,
    },
    /// An `ovf:compression` other than gzip.
    #[error("OVA: {href} has ovf:compression={value:?}; only \"gzip\" is supported")]
    Compression {
        /// The file.
        href: String,
        /// The attribute as written.
        value: String,
    },
    /// The tar holds no member of that name.
    #[error("OVA: the archive holds no member {href:?} (the file of disk {disk})")]
    MissingMember {
        /// The file.
        href: String,
        /// From 1.
        disk: usize,
    },
    /// The member is a directory, link or device.
    #[error("OVA: member {href:?} is not a regular file")]
    NotAFile {
        /// The file.
        href: String,
    },
    /// The OVF says gzip and the bytes are not.
    #[error(
        "OVA: the OVF says {href} is gzip-compressed, but it does not start with the gzip magic"
    )]
    NotGzip {
        /// The file.
        href: String,
    },
    /// `--disk N` given for a source that is no OVA.
    #[error("--disk {0} applies to OVA archives, and this source is not one")]
    NotContainer(usize),
    /// The tar stream is damaged (truncated, a bad header); the cause is
    /// the tar walker's error.
    #[error("OVA: the tar archive is damaged")]
    Tar(#[source] io::Error),
    /// Reading the stream under the archive failed.
    #[error("OVA: reading the archive")]
    Read(#[source] io::Error),
}

impl From<TarError> for OvaError {
    fn from(e: TarError) -> OvaError {
        match e {
            TarError::Read(io) => OvaError::Read(io),
            other => OvaError::Tar(io::Error::new(io::ErrorKind::InvalidData, other)),
        }
    }
}

/// Opens the OVA `inner` (a tar stream from its first byte) and returns
/// disk `disk` (from 1; the first when `None`) as a stream of its member's
/// bytes, which fails if the archive ends inside the member and drains the
/// rest of the archive at the member's end.
pub fn open<R: BufRead>(
    inner: R,
    disk: Option<usize>,
) -> Result<(OvaDisk, impl BufRead), OvaError> {
    let mut tar = TarReader::new(inner);
    let first = tar.next_member()?.ok_or(OvaError::Empty)?;
    if first.kind != MemberKind::File || !first.name.to_ascii_lowercase().ends_with(".ovf") {
        return Err(OvaError::NotOva(first.name));
    }
    if first.size > MAX_OVF {
        return Err(OvaError::OvfTooLarge {
            name: first.name,
            size: first.size,
        });
    }
    let bytes = tar.read_member(MAX_OVF)?;
    let desc = ovf::parse(&bytes).map_err(|error| OvaError::Ovf {
        name: first.name.clone(),
        error,
    })?;
    drop(bytes);
    let n = disk.unwrap_or(1);
    let count = desc.disks.len();
    let d = match (n, desc.disks.get(n.wrapping_sub(1))) {
        (0, _) => return Err(OvaError::DiskZero),
        (_, Some(d)) => d,
        (_, None) if count == 0 => return Err(OvaError::NoDisks),
        (asked, None) => return Err(OvaError::NoSuchDisk { asked, count }),
    };
    let Some(file_ref) = &d.file_ref else {
        return Err(OvaError::DiskWithoutFile {
            disk: n,
            id: d.id.clone(),
        });
    };
    let Some(file) = desc.files.iter().find(|f| &f.id == file_ref) else {
        return Err(OvaError::UnknownFile {
            disk: n,
            id: d.id.clone(),
            file_ref: file_ref.clone(),
        });
    };
    if let Some(chunk) = &file.chunk_size {
        return Err(OvaError::Chunked {
            href: file.href.clone(),
            chunk: chunk.clone(),
        });
    }
    let compression = match file.compression.as_deref().map(str::trim) {
        None | Some("" | "identity") => Compression::None,
        Some(c) if c.eq_ignore_ascii_case("gzip") => Compression::Gzip,
        Some(other) => {
            return Err(OvaError::Compression {
                href: file.href.clone(),
                value: other.to_string(),
            })
        }
    };
    let member = loop {
        let Some(m) = tar.next_member()? else {
            return Err(OvaError::MissingMember {
                href: file.href.clone(),
                disk: n,
            });
        };
        if same_path(&m.name, &file.href) {
            break m;
        }
        tracing::debug!(member = %m.name, "OVA: skipping member");
    };
    if member.kind != MemberKind::File {
        return Err(OvaError::NotAFile {
            href: file.href.clone(),
        });
    }
    if let Some(size) = file.size.filter(|&s| s != member.size) {
        // The tar header decides how many bytes are the file; a wrong
        // ovf:size is the writer's mistake, not a reason to refuse.
        tracing::warn!(
            member = %member.name,
            ovf_size = size,
            tar_size = member.size,
            "OVA: the OVF's ovf:size differs from the member's size"
        );
    }
    let chosen = OvaDisk {
        ovf: first.name,
        member: member.name,
        member_size: member.size,
        disk: n,
        disks: count,
        disk_id: d.id.clone(),
        compression,
        ovf_format: d.format.clone(),
        ovf_capacity: d.capacity,
    };
    Ok((chosen, tar.into_member()))
}

impl OvaDisk {
    /// Checks the member's first bytes against the OVF's `ovf:compression`.
    pub fn check_head(&self, head: &[u8]) -> Result<(), OvaError> {
        if self.compression == Compression::Gzip && !head.starts_with(&[0x1f, 0x8b]) {
            return Err(OvaError::NotGzip {
                href: self.member.clone(),
            });
        }
        Ok(())
    }
}

/// Tar names and hrefs compared without leading `./`.
fn same_path(member: &str, href: &str) -> bool {
    fn strip(mut s: &str) -> &str {
        while let Some(rest) = s.strip_prefix("./") {
            s = rest;
        }
        s
    }
    strip(member) == strip(href)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::testing::Dribble;

    fn ovf(files: &[(&str, &str, &str)], disks: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut x = String::from(
            "<?xml version=\"1.0\"?>\n<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
             xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\">\n<References>\n",
        );
        for (id, href, extra) in files {
            x.push_str(&format!(
                "<File ovf:id=\"{id}\" ovf:href=\"{href}\" {extra}/>\n"
            ));
        }
        x.push_str("</References>\n<DiskSection><Info>disks</Info>\n");
        for (id, file) in disks {
            match file {
                Some(f) => x.push_str(&format!(
                    "<Disk ovf:diskId=\"{id}\" ovf:fileRef=\"{f}\" ovf:capacity=\"1\" \
                     ovf:capacityAllocationUnits=\"byte * 2^20\"/>\n"
                )),
                None => x.push_str(&format!("<Disk ovf:diskId=\"{id}\" ovf:capacity=\"1\"/>\n")),
            }
        }
        x.push_str("</DiskSection>\n</Envelope>\n");
        x.into_bytes()
    }

    fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = ::tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(::tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    fn two_disks() -> Vec<u8> {
        let desc = ovf(
            &[("f1", "a.img", "ovf:size=\"1000\""), ("f2", "./b.img", "")],
            &[("d1", Some("f1")), ("d2", Some("f2")), ("d3", None)],
        );
        tar(&[
            ("x.ovf", &desc),
            ("x.mf", b"SHA256(a.img)= 00\n"),
            ("b.img", &[2u8; 3000]),
            ("a.img", &[1u8; 1000]),
        ])
    }

    fn read(bytes: &[u8], disk: Option<usize>) -> Result<(OvaDisk, Vec<u8>), OvaError> {
        let (d, mut r) = open(Dribble::new(bytes, 77, 1500), disk)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("member");
        Ok((d, out))
    }

    #[test]
    fn picks_disks_by_position_in_any_member_order() {
        let bytes = two_disks();
        let (d, data) = read(&bytes, None).expect("disk 1");
        assert_eq!(data, vec![1u8; 1000]);
        assert_eq!((d.disk, d.disks, d.member.as_str()), (1, 3, "a.img"));
        assert_eq!(d.ovf_capacity, Some(1 << 20));
        let (d, data) = read(&bytes, Some(2)).expect("disk 2");
        assert_eq!(data, vec![2u8; 3000]);
        assert_eq!((d.disk, d.disk_id.as_str()), (2, "d2"));
    }

    #[test]
    fn refusals_are_named() {
        let bytes = two_disks();
        let e = read(&bytes, Some(4)).expect_err("no disk 4").to_string();
        assert!(e.contains("no disk 4: the OVF lists 3 disks"), "{e}");
        let e = read(&bytes, Some(3)).expect_err("empty disk").to_string();
        assert!(e.contains("empty disk"), "{e}");
        let e = read(&bytes, Some(0)).expect_err("disk 0").to_string();
        assert!(e.contains("counted from 1"), "{e}");

        let desc = ovf(&[("f1", "gone.vmdk", "")], &[("d1", Some("f1"))]);
        let e = read(&tar(&[("x.ovf", &desc), ("other", b"x")]), None)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("no member \"gone.vmdk\""), "{e}");

        let desc = ovf(&[("f1", "a", "")], &[("d1", Some("nope"))]);
        let e = read(&tar(&[("x.ovf", &desc)]), None)
            .expect_err("unknown file")
            .to_string();
        assert!(e.contains("\"nope\""), "{e}");

        let desc = ovf(
            &[("f1", "a", "ovf:chunkSize=\"4096\"")],
            &[("d1", Some("f1"))],
        );
        let e = read(&tar(&[("x.ovf", &desc)]), None)
            .expect_err("chunked")
            .to_string();
        assert!(e.contains("chunked"), "{e}");

        let desc = ovf(
            &[("f1", "a", "ovf:compression=\"lz4\"")],
            &[("d1", Some("f1"))],
        );
        let e = read(&tar(&[("x.ovf", &desc)]), None)
            .expect_err("compression")
            .to_string();
        assert!(e.contains("only \"gzip\""), "{e}");

        let desc = ovf(&[], &[]);
        let e = read(&tar(&[("x.ovf", &desc)]), None)
            .expect_err("no disks")
            .to_string();
        assert!(e.contains("lists no disk"), "{e}");

        let e = read(&tar(&[("x.ovf", b"<Envelope")]), None).expect_err("bad xml");
        assert!(matches!(e, OvaError::Ovf { .. }), "{e}");
        let e = read(&tar(&[("disk.img", b"x")]), None).expect_err("not an ova");
        assert!(matches!(e, OvaError::NotOva(_)), "{e}");
        let e = read(&[], None).expect_err("empty");
        assert!(matches!(e, OvaError::Empty), "{e}");
    }

    #[test]
    fn a_truncated_member_fails() {
        let bytes = two_disks();
        // Cut inside a.img's data, the last member.
        let cut = bytes.len() - 1024 - 512 - 100;
        let (_, mut r) = open(&bytes[..cut], None).expect("open");
        let err = r.read_to_end(&mut Vec::new()).expect_err("truncated");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        // Cut before it: the member is missing or the walk is truncated.
        assert!(open(&bytes[..2500], None).is_err());
    }

    #[test]
    fn gzip_is_checked_against_the_head() {
        let mut d = read(&two_disks(), None).expect("disk").0;
        assert!(d.check_head(b"QFI\xfb").is_ok());
        d.compression = Compression::Gzip;
        assert!(d.check_head(&[0x1f, 0x8b, 8]).is_ok());
        let e = d.check_head(b"QFI\xfb").expect_err("not gzip").to_string();
        assert!(e.contains("gzip magic"), "{e}");
    }
}
