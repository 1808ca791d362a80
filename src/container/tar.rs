//! [`TarReader`]: a tar stream read forward, member by member, so that one
//! member's bytes can be handed to the rest of the pipeline as a stream
//! ([`TarReader::into_member`]) without extracting anything.
//!
//! Header fields are decoded by the `tar` crate (`tar::Header`: octal and
//! GNU base-256 sizes, ustar prefixes; `tar::PaxExtensions`); this module
//! only walks the stream: PAX extended headers (`path`, `size`, for members
//! above 8 GiB), GNU long names (`L`), GNU sparse members (`S`, what
//! `tar -S` writes: the member streams expanded, its holes as zeros), the
//! header checksum, block padding, and the end-of-archive blocks. Extended
//! headers and long names are held in memory up to [`MAX_EXTENDED`], a sparse
//! map up to [`MAX_SPARSE_SEGMENTS`]; member data never is.

use std::io::{self, BufRead, Read};

/// Tar block size.
pub(crate) const BLOCK: u64 = 512;

/// Largest PAX extended header or GNU long name accepted (a hostile archive
/// could otherwise make us buffer gigabytes for a "name").
pub(crate) const MAX_EXTENDED: u64 = 1 << 20;

/// Most data segments accepted in one GNU sparse member's map (16 bytes
/// each in memory): a disk image with this many separate runs of data is
/// already pathological.
pub(crate) const MAX_SPARSE_SEGMENTS: usize = 1 << 18;

/// Zeros handed out for the holes of a sparse member.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Why a tar stream could not be walked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TarError {
    /// The stream ended inside a header or a member.
    #[error("truncated tar archive: the stream ended at byte {at}, inside {what}")]
    Truncated {
        /// Bytes of the archive read.
        at: u64,
        /// What was being read.
        what: &'static str,
    },
    /// A header block's checksum does not match.
    #[error("corrupt tar archive: bad header checksum at byte {at}")]
    Checksum {
        /// Offset of the header.
        at: u64,
    },
    /// A header field cannot be decoded.
    #[error("corrupt tar archive: bad header at byte {at}: {detail}")]
    Header {
        /// Offset of the header.
        at: u64,
        /// What is wrong.
        detail: String,
    },
    /// An extended header or long name is larger than [`MAX_EXTENDED`].
    #[error("tar archive has a {what} of {size} bytes at byte {at} (at most {MAX_EXTENDED})")]
    TooLarge {
        /// "PAX header" or "long name".
        what: &'static str,
        /// Its size.
        size: u64,
        /// Offset of its header.
        at: u64,
    },
    /// A kind of member this walker does not read, by name.
    #[error("tar archive member {name:?} at byte {at} is a {what}, which is not supported")]
    Unsupported {
        /// The member's name.
        name: String,
        /// Offset of its header.
        at: u64,
        /// What it is.
        what: &'static str,
    },
    /// Reading the stream failed.
    #[error("reading the tar archive")]
    Read(#[source] io::Error),
}

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberKind {
    /// A regular file (types `0`, NUL, `7`, and GNU sparse `S`, whose
    /// size is the expanded one).
    File,
    /// A directory (`5`).
    Dir,
    /// A symbolic or hard link (`2`, `1`).
    Link,
    /// Anything else (devices, FIFOs...), by type byte.
    Other(u8),
}

/// One member's header, with PAX and GNU extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The member's path as stored (lossily decoded UTF-8).
    pub name: String,
    /// Bytes of data.
    pub size: u64,
    /// What it is.
    pub kind: MemberKind,
    /// Offset of its data in the archive.
    pub offset: u64,
}

/// A tar stream read forward.
pub(crate) struct TarReader<R> {
    inner: R,
    /// Bytes of the archive consumed.
    pos: u64,
    /// Data bytes of the current member not consumed yet.
    left: u64,
    /// Padding after the current member's data.
    pad: u64,
    /// The end-of-archive marker (or a clean EOF) was seen.
    done: bool,
    /// The current member's sparse map, when it is a GNU sparse member.
    sparse: Option<SparseMap>,
}

/// Where a GNU sparse member's data goes: the stored bytes are the
/// concatenation of these segments, everything else reads as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SparseMap {
    /// `(offset, length)` in the expanded file, in order, not overlapping.
    segments: Vec<(u64, u64)>,
    /// The expanded size.
    real_size: u64,
}

impl<R: BufRead> TarReader<R> {
    /// Reads a tar archive from `inner`, which starts at a header.
    pub(crate) fn new(inner: R) -> TarReader<R> {
        TarReader {
            inner,
            pos: 0,
            left: 0,
            pad: 0,
            done: false,
            sparse: None,
        }
    }

    /// Bytes of the archive consumed so far.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Skips what is left of the current member and returns the next one's
    /// header; `None` at the end of the archive (two zero blocks, or the
    /// stream ending exactly at a header boundary).
    pub(crate) fn next_member(&mut self) -> Result<Option<Member>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.left + self.pad, "a member's data")?;
        self.left = 0;
        self.pad = 0;
        self.sparse = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let at = self.pos;
            let Some(block) = self.header_block()? else {
                self.done = true;
                return Ok(None);
            };
            if block.iter().all(|&b| b == 0) {
                // End of archive: one zero block is enough to stop; the
                // second (and the record padding) is drained with the rest.
                self.done = true;
                return Ok(None);
            }
            check_sum(&block, at)?;
            let header = tar::Header::from_byte_slice(&block);
            let size = header.entry_size().map_err(|e| TarError::Header {
                at,
                detail: format!("size: {e}"),
            })?;
            let kind = header.entry_type().as_byte();
            match kind {
                b'x' | b'g' | b'L' => {
                    let what = if kind == b'L' {
                        "long name"
                    } else {
                        "PAX header"
                    };
                    if size > MAX_EXTENDED {
                        return Err(TarError::TooLarge { what, size, at });
                    }
                    let data = self.read_exact_vec(size, what)?;
                    self.skip(padding(size), what)?;
                    match kind {
                        b'L' => {
                            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                            long_name = Some(data.get(..end).unwrap_or_default().to_vec());
                        }
                        // Global headers apply to every member; only `x`
                        // (this member) carries path and size in practice.
                        b'x' => {
                            for ext in tar::PaxExtensions::new(&data) {
                                let ext = ext.map_err(|e| TarError::Header {
                                    at,
                                    detail: format!("PAX record: {e}"),
                                })?;
                                match ext.key_bytes() {
                                    // GNU's PAX sparse formats (0.x, 1.0) store the
                                    // map elsewhere; copying such a member as is
                                    // would put the map into the disk.
                                    k if k.starts_with(b"GNU.sparse.") => {
                                        return Err(TarError::Unsupported {
                                            name: String::from_utf8_lossy(&header.path_bytes())
                                                .into_owned(),
                                            at,
                                            what: "PAX sparse file (GNU.sparse.*)",
                                        });
                                    }
                                    b"path" => pax_path = Some(ext.value_bytes().to_vec()),
                                    b"size" => {
                                        let v = std::str::from_utf8(ext.value_bytes())
                                            .ok()
                                            .and_then(|s| s.trim().parse::<u64>().ok())
                                            .ok_or_else(|| TarError::Header {
                                                at,
                                                detail: "PAX size is not a number".into(),
                                            })?;
                                        pax_size = Some(v);
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                _ => {
                    let size = pax_size.unwrap_or(size);
                    let name = pax_path
                        .or(long_name)
                        .unwrap_or_else(|| header.path_bytes().into_owned());
                    let name_text = String::from_utf8_lossy(&name).into_owned();
                    if kind == b'S' {
                        let map = self.sparse_map(header, size, at)?;
                        self.left = size;
                        self.pad = padding(size);
                        let real = map.real_size;
                        self.sparse = Some(map);
                        return Ok(Some(Member {
                            name: name_text,
                            size: real,
                            kind: MemberKind::File,
                            offset: self.pos,
                        }));
                    }
                    let kind = match kind {
                        b'0' | 0 | b'7' => MemberKind::File,
                        b'5' => MemberKind::Dir,
                        b'1' | b'2' => MemberKind::Link,
                        other => MemberKind::Other(other),
                    };
                    // Links and directories carry no data whatever the size says.
                    let size = match kind {
                        MemberKind::Dir | MemberKind::Link => 0,
                        _ => size,
                    };
                    self.left = size;
                    self.pad = padding(size);
                    return Ok(Some(Member {
                        name: name_text,
                        size,
                        kind,
                        offset: self.pos,
                    }));
                }
            }
        }
    }

    /// The sparse map of the GNU sparse member whose header is `header`
    /// (at `at`, `stored` bytes of data): the four entries in the header,
    /// then those of the extension blocks that follow it, checked.
    fn sparse_map(
        &mut self,
        header: &tar::Header,
        stored: u64,
        at: u64,
    ) -> Result<SparseMap, TarError> {
        let bad = |detail: String| TarError::Header { at, detail };
        let gnu = header
            .as_gnu()
            .ok_or_else(|| bad("a sparse member without a GNU header".into()))?;
        let real_size = gnu
            .real_size()
            .map_err(|e| bad(format!("sparse real size: {e}")))?;
        let mut segments = Vec::new();
        let mut push = |e: &tar::GnuSparseHeader| -> Result<(), TarError> {
            if e.is_empty() {
                return Ok(());
            }
            let off = e.offset().map_err(|e| bad(format!("sparse offset: {e}")))?;
            let len = e.length().map_err(|e| bad(format!("sparse length: {e}")))?;
            if segments.len() >= MAX_SPARSE_SEGMENTS {
                return Err(bad(format!(
                    "more than {MAX_SPARSE_SEGMENTS} sparse segments"
                )));
            }
            segments.push((off, len));
            Ok(())
        };
        for e in &gnu.sparse {
            push(e)?;
        }
        let mut extended = gnu.is_extended();
        while extended {
            let block = self.header_block()?.ok_or(TarError::Truncated {
                at: self.pos,
                what: "a sparse map",
            })?;
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for e in ext.sparse() {
                push(e)?;
            }
            extended = ext.is_extended();
        }
        // In order, not overlapping, inside the file, and exactly the stored bytes.
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &segments {
            let seg_end = off
                .checked_add(len)
                .filter(|&e| off >= end && e <= real_size)
                .ok_or_else(|| {
                    bad(format!(
                        "sparse segment {off}+{len} is out of order or past the size {real_size}"
                    ))
                })?;
            end = seg_end;
            total = total.saturating_add(len);
        }
        if total != stored {
            return Err(bad(format!(
                "sparse segments hold {total} bytes, the member stores {stored}"
            )));
        }
        Ok(SparseMap {
            segments,
            real_size,
        })
    }

    /// Reads the current member's data whole (a small descriptor such as
    /// an OVF file), refusing more than `max` bytes.
    pub(crate) fn read_member(&mut self, max: u64) -> Result<Vec<u8>, TarError> {
        if self.sparse.is_some() {
            return Err(TarError::Unsupported {
                name: String::new(),
                at: self.pos,
                what: "sparse file to read whole",
            });
        }
        if self.left > max {
            return Err(TarError::TooLarge {
                what: "member to read whole",
                size: self.left,
                at: self.pos,
            });
        }
        let data = self.read_exact_vec(self.left, "a member's data")?;
        self.left = 0;
        Ok(data)
    }

    /// The current member's data as a stream. When its last byte has been
    /// consumed, the rest of the underlying stream is read and discarded
    /// (so a digest or checksum over the whole archive is complete, and a
    /// cut archive is noticed), then the stream ends.
    pub(crate) fn into_member(self) -> MemberReader<R> {
        MemberReader {
            inner: self.inner,
            left: self.left,
            pos: self.pos,
            drained: false,
            sparse: self.sparse.map(|map| Expand {
                map,
                next: 0,
                logical: 0,
            }),
        }
    }

    /// Reads one header block; `None` on a clean EOF at a block boundary.
    fn header_block(&mut self) -> Result<Option<[u8; BLOCK as usize]>, TarError> {
        let mut block = [0u8; BLOCK as usize];
        let mut got = 0usize;
        while got < block.len() {
            let n = match self.inner.read(block.get_mut(got..).unwrap_or_default()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TarError::Read(e)),
            };
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(TarError::Truncated {
                    at: self.pos + got as u64,
                    what: "a header",
                });
            }
            got += n;
        }
        self.pos += BLOCK;
        Ok(Some(block))
    }

    fn read_exact_vec(&mut self, n: u64, what: &'static str) -> Result<Vec<u8>, TarError> {
        let mut out = Vec::new();
        let got = (&mut self.inner)
            .take(n)
            .read_to_end(&mut out)
            .map_err(TarError::Read)? as u64;
        self.pos += got;
        if got < n {
            return Err(TarError::Truncated { at: self.pos, what });
        }
        Ok(out)
    }

    fn skip(&mut self, mut n: u64, what: &'static str) -> Result<(), TarError> {
        while n > 0 {
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TarError::Read(e)),
            };
            if buf.is_empty() {
                return Err(TarError::Truncated { at: self.pos, what });
            }
            let k = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
            self.inner.consume(k);
            self.pos += k as u64;
            n -= k as u64;
        }
        Ok(())
    }
}

/// Padding after `size` bytes of data, up to the next block.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Checks a header's checksum (the sum of its bytes with the checksum field
/// read as spaces; some writers sum signed bytes, which is accepted too).
fn check_sum(block: &[u8; BLOCK as usize], at: u64) -> Result<(), TarError> {
    let field = block.get(148..156).unwrap_or_default();
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let stored = u32::from_str_radix(text.trim(), 8).map_err(|_| TarError::Checksum { at })?;
    let (mut unsigned, mut signed) = (0u32, 0i32);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned = unsigned.wrapping_add(u32::from(b));
        signed = signed.wrapping_add(i32::from(b as i8));
    }
    if stored == unsigned || i64::from(stored) == i64::from(signed) {
        Ok(())
    } else {
        Err(TarError::Checksum { at })
    }
}

/// One member's data as a `BufRead` (see [`TarReader::into_member`]).
pub(crate) struct MemberReader<R> {
    inner: R,
    /// Stored data bytes left.
    left: u64,
    /// Offset in the archive of the next byte.
    pos: u64,
    drained: bool,
    /// A sparse member's expansion.
    sparse: Option<Expand>,
}

/// Where a sparse member's reader is in its expanded file.
struct Expand {
    map: SparseMap,
    /// Index of the segment being read or next.
    next: usize,
    /// Offset in the expanded file.
    logical: u64,
}

/// What the next bytes of a sparse member are.
enum Piece {
    /// This many zeros (a hole).
    Hole(u64),
    /// Up to this many stored bytes.
    Data(u64),
    /// The end of the expanded file.
    End,
}

impl Expand {
    fn piece(&mut self) -> Piece {
        loop {
            match self.map.segments.get(self.next) {
                Some(&(off, len)) => {
                    if self.logical < off {
                        return Piece::Hole(off - self.logical);
                    }
                    let end = off.saturating_add(len);
                    if self.logical < end {
                        return Piece::Data(end - self.logical);
                    }
                    self.next += 1;
                }
                None if self.logical < self.map.real_size => {
                    return Piece::Hole(self.map.real_size - self.logical)
                }
                None => return Piece::End,
            }
        }
    }
}

impl<R: BufRead> MemberReader<R> {
    /// Drains the rest of the archive once, then reports the end.
    fn end(&mut self) -> io::Result<&[u8]> {
        if !self.drained {
            io::copy(&mut self.inner, &mut io::sink())?;
            self.drained = true;
        }
        Ok(&[])
    }

    /// Up to `max` stored bytes from the archive.
    fn stored(&mut self, max: u64) -> io::Result<&[u8]> {
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                TarError::Truncated {
                    at: self.pos,
                    what: "the member being imported",
                },
            ));
        }
        let n = usize::try_from(max).map_or(buf.len(), |l| l.min(buf.len()));
        Ok(buf.get(..n).unwrap_or_default())
    }
}

impl<R: BufRead> BufRead for MemberReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(x) = self.sparse.as_mut() {
            return match x.piece() {
                Piece::Hole(n) => {
                    let n = usize::try_from(n).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
                    Ok(ZEROS.get(..n).unwrap_or_default())
                }
                // The map was checked to hold exactly the stored bytes.
                Piece::Data(_) if self.left == 0 => Err(io::Error::other(TarError::Header {
                    at: self.pos,
                    detail: "the sparse map outruns the stored data".into(),
                })),
                Piece::Data(n) => self.stored(n.min(self.left)),
                Piece::End => self.end(),
            };
        }
        if self.left == 0 {
            return self.end();
        }
        self.stored(self.left)
    }

    fn consume(&mut self, amt: usize) {
        if let Some(x) = self.sparse.as_mut() {
            match x.piece() {
                Piece::Hole(n) => {
                    let amt = usize::try_from(n).map_or(amt, |n| n.min(amt));
                    x.logical += amt as u64;
                }
                Piece::Data(n) => {
                    let amt = usize::try_from(n.min(self.left)).map_or(amt, |n| n.min(amt));
                    x.logical += amt as u64;
                    self.left -= amt as u64;
                    self.pos += amt as u64;
                    self.inner.consume(amt);
                }
                Piece::End => {}
            }
            return;
        }
        let amt = usize::try_from(self.left).map_or(amt, |l| l.min(amt));
        self.left -= amt as u64;
        self.pos += amt as u64;
        self.inner.consume(amt);
    }
}

impl<R: BufRead> Read for MemberReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::io::read_via_buf(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Dribble;

    fn archive(members: &[(&str, Vec<u8>)], gnu: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = if gnu {
                tar::Header::new_gnu()
            } else {
                tar::Header::new_ustar()
            };
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, &data[..]).expect("append");
        }
        b.into_inner().expect("finish")
    }

    fn members(bytes: &[u8]) -> Vec<(Member, Vec<u8>)> {
        let mut t = TarReader::new(Dribble::new(bytes, 100, 3000));
        let mut out = Vec::new();
        while let Some(m) = t.next_member().expect("walk") {
            let data = t.read_member(1 << 30).expect("data");
            out.push((m, data));
        }
        out
    }

    #[test]
    fn walks_members_with_long_names_both_ways() {
        let long = format!("disk/{}/image.qcow2", "d".repeat(150));
        for gnu in [true, false] {
            let bytes = archive(
                &[
                    ("a.ovf", b"<xml/>".to_vec()),
                    (long.as_str(), vec![7u8; 1500]),
                ],
                gnu,
            );
            let got = members(&bytes);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].0.name, "a.ovf");
            assert_eq!(got[0].1, b"<xml/>");
            assert_eq!(got[1].0.name, long, "gnu {gnu}");
            assert_eq!(got[1].0.size, 1500);
            assert_eq!(got[1].1, vec![7u8; 1500]);
        }
    }

    #[test]
    fn a_member_streams_and_the_rest_is_drained() {
        let bytes = archive(
            &[
                ("one", vec![1u8; 700]),
                ("two", vec![2u8; 5000]),
                ("three", vec![3u8; 9]),
            ],
            true,
        );
        let mut t = TarReader::new(Dribble::new(&bytes, 7, 999));
        let m = t.next_member().expect("one").expect("a member");
        assert_eq!(m.name, "one");
        let m = t.next_member().expect("two").expect("a member");
        assert_eq!((m.name.as_str(), m.size), ("two", 5000));
        let mut r = t.into_member();
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("read");
        assert_eq!(got, vec![2u8; 5000]);
    }

    #[test]
    fn pax_size_and_path_win() {
        // A PAX header naming a path and a size (as writers do for members
        // above 8 GiB), then a member whose own fields say otherwise.
        let mut pax = Vec::new();
        for (k, v) in [("path", "disk/big.img"), ("size", "3")] {
            let rec = format!(" {k}={v}\n");
            let mut len = rec.len() + 1;
            if format!("{len}{rec}").len() != len {
                len += 1;
            }
            pax.extend_from_slice(format!("{len}{rec}").as_bytes());
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(pax.len() as u64);
        b.append_data(&mut h, "pax", &pax[..]).expect("pax");
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "short", &b"abc"[..]).expect("member");
        let bytes = b.into_inner().expect("finish");
        let got = members(&bytes);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.name, "disk/big.img");
        assert_eq!(got[0].1, b"abc");
    }

    #[test]
    fn base256_sizes_are_read() {
        let mut gnu = tar::Header::new_gnu();
        gnu.set_size(9 << 30); // needs base-256 in a GNU header
        gnu.set_entry_type(tar::EntryType::Regular);
        gnu.set_path("disk/huge.raw").expect("path");
        gnu.set_cksum();
        let mut bytes = gnu.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 4096]);
        let mut t = TarReader::new(&bytes[..]);
        let m = t.next_member().expect("header").expect("member");
        assert_eq!(m.size, 9 << 30);
        // Its data is cut short: streaming it fails rather than ending early.
        let mut r = t.into_member();
        let err = r.read_to_end(&mut Vec::new()).expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn damage_is_named() {
        let bytes = archive(&[("f", vec![5u8; 3000])], true);
        for cut in [100, 511, 600, 2000] {
            let mut t = TarReader::new(&bytes[..cut]);
            let r = t.next_member().and_then(|_| t.next_member());
            assert!(
                matches!(r, Err(TarError::Truncated { .. })),
                "cut {cut}: {r:?}"
            );
        }
        let mut bad = bytes.clone();
        bad[10] ^= 0x40;
        let err = TarReader::new(&bad[..])
            .next_member()
            .expect_err("checksum");
        assert!(matches!(err, TarError::Checksum { at: 0 }), "{err}");
        assert_eq!(members(&[]).len(), 0, "an empty stream holds no member");
    }

    /// Writes `n` as a 12-byte octal field.
    fn octal(field: &mut [u8; 12], n: u64) {
        let text = format!("{n:011o}\0");
        field.copy_from_slice(text.as_bytes());
    }

    /// A GNU sparse member of `real` bytes whose data segments are
    /// `segments` (more than four: an extension block follows the header),
    /// followed by a regular member.
    fn sparse_archive(segments: &[(u64, Vec<u8>)], real: u64) -> Vec<u8> {
        let stored: u64 = segments.iter().map(|(_, d)| d.len() as u64).sum();
        let mut h = tar::Header::new_gnu();
        h.set_path("disk.img").expect("path");
        h.set_mode(0o644);
        h.set_size(stored);
        h.set_entry_type(tar::EntryType::GNUSparse);
        let gnu = h.as_gnu_mut().expect("gnu");
        octal(&mut gnu.realsize, real);
        for (i, (off, data)) in segments.iter().take(4).enumerate() {
            octal(&mut gnu.sparse[i].offset, *off);
            octal(&mut gnu.sparse[i].numbytes, data.len() as u64);
        }
        let extended = segments.len() > 4;
        gnu.isextended[0] = u8::from(extended);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        if extended {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (i, (off, data)) in segments.iter().skip(4).enumerate() {
                octal(&mut ext.sparse[i].offset, *off);
                octal(&mut ext.sparse[i].numbytes, data.len() as u64);
            }
            out.extend_from_slice(ext.as_bytes());
        }
        for (_, d) in segments {
            out.extend_from_slice(d);
        }
        out.resize(out.len().div_ceil(512) * 512, 0);
        let mut rest = archive(&[("after", vec![9u8; 10])], true);
        out.append(&mut rest);
        out
    }

    fn expanded(segments: &[(u64, Vec<u8>)], real: u64) -> Vec<u8> {
        let mut want = vec![0u8; real as usize];
        for (off, d) in segments {
            want[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        want
    }

    #[test]
    fn gnu_sparse_members_stream_expanded() {
        let segs: Vec<(u64, Vec<u8>)> = (0..7u64)
            .map(|i| (i * 100_000 + 4096, vec![i as u8 + 1; 3000 + i as usize * 7]))
            .collect();
        let real = 1_000_000;
        let bytes = sparse_archive(&segs, real);
        let mut t = TarReader::new(Dribble::new(&bytes, 13, 4000));
        let m = t.next_member().expect("header").expect("member");
        assert_eq!(
            (m.name.as_str(), m.size, m.kind),
            ("disk.img", real, MemberKind::File)
        );
        let mut got = Vec::new();
        t.into_member().read_to_end(&mut got).expect("read");
        assert_eq!(got.len(), real as usize);
        assert!(got == expanded(&segs, real), "expanded contents");

        // Skipping a sparse member lands on the next one.
        let mut t = TarReader::new(&bytes[..]);
        t.next_member().expect("sparse").expect("member");
        let m = t.next_member().expect("next").expect("member");
        assert_eq!(m.name, "after");
        assert_eq!(t.read_member(100).expect("data"), vec![9u8; 10]);
    }

    #[test]
    fn bad_sparse_maps_are_refused() {
        // Overlapping segments.
        let bytes = sparse_archive(&[(0, vec![1; 100]), (50, vec![2; 100])], 1000);
        let err = TarReader::new(&bytes[..])
            .next_member()
            .expect_err("overlap");
        assert!(matches!(err, TarError::Header { .. }), "{err}");
        // A segment past the real size.
        let bytes = sparse_archive(&[(900, vec![1; 200])], 1000);
        let err = TarReader::new(&bytes[..])
            .next_member()
            .expect_err("past end");
        assert!(matches!(err, TarError::Header { .. }), "{err}");
        // A cut extension block.
        let segs: Vec<(u64, Vec<u8>)> = (0..6u64).map(|i| (i * 10, vec![1; 5])).collect();
        let bytes = sparse_archive(&segs, 100);
        let err = TarReader::new(&bytes[..700])
            .next_member()
            .expect_err("cut");
        assert!(matches!(err, TarError::Truncated { .. }), "{err}");
        // Truncated stored data.
        let bytes = sparse_archive(&[(0, vec![1; 5000])], 10_000);
        let mut t = TarReader::new(&bytes[..3000]);
        t.next_member().expect("header").expect("member");
        let err = t
            .into_member()
            .read_to_end(&mut Vec::new())
            .expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn pax_sparse_is_refused_by_name() {
        let rec = " GNU.sparse.major=1\n";
        let len = rec.len() + 2;
        let pax = format!("{len}{rec}");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(pax.len() as u64);
        b.append_data(&mut h, "pax", pax.as_bytes()).expect("pax");
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "GNUSparseFile.0/disk.img", &b"abc"[..])
            .expect("member");
        let bytes = b.into_inner().expect("finish");
        let err = TarReader::new(&bytes[..])
            .next_member()
            .expect_err("pax sparse");
        assert!(err.to_string().contains("PAX sparse"), "{err}");
    }
}
