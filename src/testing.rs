//! Shared test doubles, for unit tests, integration tests, benches and fuzz
//! targets (behind the `test-support` feature): a sink that checks the
//! decoder contract, a reader that hands out slices of varying size, range
//! reads over a byte slice, and one PRNG.
//!
//! These are test code: a broken contract panics, which is the assertion.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::format::{ExtentSink, SinkError};
use crate::io::RangeRead;

/// One call a sink received: `(guest offset, length, is data)`.
pub type Call = (u64, u64, bool);

/// A sink that checks the decoder contract on every call and keeps what it
/// was given: the virtual size first and once, no extent past it, no guest
/// byte twice. [`CheckingSink::assert_complete`] checks full coverage.
#[derive(Debug, Default)]
pub struct CheckingSink {
    /// The virtual size, once announced.
    pub vsize: Option<u64>,
    /// Every call, in order (data calls keep their bytes in `data`).
    pub calls: Vec<Call>,
    /// Covered ranges, start -> end, merged when they touch.
    covered: BTreeMap<u64, u64>,
    /// Data by guest offset, merged when contiguous (unless `forget_data`).
    data: BTreeMap<u64, Vec<u8>>,
    forget_data: bool,
    /// Allow extents without a virtual size (raw streams of unknown length).
    sizeless: bool,
}

impl CheckingSink {
    /// A sink that keeps the data it is given.
    pub fn new() -> CheckingSink {
        CheckingSink::default()
    }

    /// A sink that checks and counts but drops the data (large images).
    pub fn counting() -> CheckingSink {
        CheckingSink {
            forget_data: true,
            ..CheckingSink::default()
        }
    }

    /// Accepts extents before (or without) a virtual size, as for a raw
    /// stream of unknown length.
    pub fn sizeless(mut self) -> CheckingSink {
        self.sizeless = true;
        self
    }

    /// The data extents kept, by guest offset (contiguous ones merged).
    pub fn data(&self) -> &BTreeMap<u64, Vec<u8>> {
        &self.data
    }

    /// Bytes covered by data and zero extents.
    pub fn covered_bytes(&self) -> u64 {
        self.covered.iter().map(|(a, b)| b - a).sum()
    }

    /// Bytes reported as data.
    pub fn data_bytes(&self) -> u64 {
        self.calls.iter().filter(|c| c.2).map(|c| c.1).sum()
    }

    /// Panics unless `[0, virtual size)` is covered exactly.
    pub fn assert_complete(&self) {
        let vs = self.vsize.expect("virtual size never announced");
        if vs == 0 {
            return;
        }
        let first = self.covered.iter().next();
        assert!(
            self.covered.len() == 1 && first == Some((&0, &vs)),
            "coverage of [0, {vs}) has holes: {:?}",
            self.covered.iter().take(5).collect::<Vec<_>>()
        );
    }

    /// The disk as reported: data where data was given, zeros elsewhere, up
    /// to the virtual size (or the highest extent, without one).
    pub fn image(&self) -> Vec<u8> {
        assert!(!self.forget_data, "a counting sink keeps no data");
        let end = self
            .vsize
            .unwrap_or_else(|| self.covered.values().copied().max().unwrap_or(0));
        let mut out = vec![0u8; usize::try_from(end).expect("image fits in memory")];
        for (&g, d) in &self.data {
            let g = g as usize;
            out[g..g + d.len()].copy_from_slice(d);
        }
        out
    }

    /// Panics unless the reported disk equals the raw image at `raw` (what
    /// `qemu-img convert -O raw` wrote), byte for byte. Reads the raw file's
    /// data regions only (`SEEK_DATA`), so sparse terabyte images stay fast.
    pub fn assert_matches_raw(&self, raw: &Path) {
        assert!(!self.forget_data, "a counting sink keeps no data");
        let f = File::open(raw).expect("open the raw image");
        let len = f.metadata().expect("raw image metadata").len();
        let vs = self.vsize.unwrap_or(len);
        assert_eq!(len, vs, "virtual size differs from the raw image's length");
        self.assert_complete();
        for (&g, d) in &self.data {
            let mut want = vec![0u8; d.len()];
            f.read_exact_at(&mut want, g).expect("read the raw image");
            assert!(want == *d, "data differs at guest {g} (len {})", d.len());
        }
        let mut buf = vec![0u8; 1 << 20];
        for (d, h) in data_regions(&f, vs) {
            let mut p = d;
            while p < h {
                let n = ((h - p) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..n], p)
                    .expect("read the raw image");
                let mut i = 0usize;
                while i < n {
                    if buf[i] == 0 {
                        i += 1;
                        continue;
                    }
                    let q = p + i as u64;
                    let (&g, dd) = self
                        .data
                        .range(..=q)
                        .next_back()
                        .filter(|(&g, dd)| g + dd.len() as u64 > q)
                        .unwrap_or_else(|| {
                            panic!("the raw image has data at {q} reported as zeros")
                        });
                    i = ((g + dd.len() as u64 - p) as usize).min(n);
                }
                p += n as u64;
            }
        }
    }

    fn cover(&mut self, a: u64, len: u64) {
        assert!(len > 0, "empty extent at {a}");
        let b = a.checked_add(len).expect("extent end overflows");
        match self.vsize {
            Some(vs) => assert!(b <= vs, "extent [{a}, {b}) past the virtual size {vs}"),
            None => assert!(self.sizeless, "extent [{a}, {b}) before set_virtual_size"),
        }
        if let Some((&s, &e)) = self.covered.range(..b).next_back() {
            assert!(
                e <= a || s >= b,
                "guest [{a}, {b}) reported twice (overlaps [{s}, {e}))"
            );
        }
        let (mut start, mut end) = (a, b);
        if let Some((&s, &e)) = self.covered.range(..=a).next_back() {
            if e == a {
                start = s;
                self.covered.remove(&s);
            }
        }
        if let Some(e2) = self.covered.remove(&b) {
            end = e2;
        }
        self.covered.insert(start, end);
    }
}

impl ExtentSink for CheckingSink {
    fn set_virtual_size(&mut self, size: u64) -> Result<(), SinkError> {
        assert!(self.vsize.is_none(), "set_virtual_size called twice");
        assert!(self.covered.is_empty(), "set_virtual_size after an extent");
        self.vsize = Some(size);
        Ok(())
    }

    fn data(&mut self, guest_offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.cover(guest_offset, data.len() as u64);
        self.calls.push((guest_offset, data.len() as u64, true));
        if self.forget_data {
            return Ok(());
        }
        if let Some((&g, d)) = self.data.range_mut(..guest_offset).next_back() {
            if g + d.len() as u64 == guest_offset {
                d.extend_from_slice(data);
                return Ok(());
            }
        }
        self.data.insert(guest_offset, data.to_vec());
        Ok(())
    }

    fn zero(&mut self, guest_offset: u64, len: u64) -> Result<(), SinkError> {
        self.cover(guest_offset, len);
        self.calls.push((guest_offset, len, false));
        Ok(())
    }
}

/// The data regions of `f` below `end`, by `SEEK_DATA`/`SEEK_HOLE`.
fn data_regions(f: &File, end: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < end {
        let Ok(d) = lseek(f, off, Whence::SeekData) else {
            break;
        };
        let h = lseek(f, d, Whence::SeekHole).unwrap_or(end as i64);
        let (d, h) = (d as u64, (h as u64).min(end));
        if d >= h {
            break;
        }
        out.push((d, h));
        off = h as i64;
    }
    out
}

/// A `BufRead` over a byte slice that hands out slices of varying size (as
/// a network stream does), so that chunk boundaries land everywhere.
#[derive(Debug, Clone)]
pub struct Dribble<'a> {
    data: &'a [u8],
    step: usize,
    max: usize,
}

impl<'a> Dribble<'a> {
    /// Slices of sizes that vary from 1 to `max` bytes, starting at `first`.
    pub fn new(data: &'a [u8], first: usize, max: usize) -> Dribble<'a> {
        Dribble {
            data,
            step: first.clamp(1, max.max(1)),
            max: max.max(1),
        }
    }

    /// Slices of exactly `n` bytes (the last one shorter).
    pub fn fixed(data: &'a [u8], n: usize) -> Dribble<'a> {
        Dribble {
            data,
            step: n.max(1),
            max: 0,
        }
    }
}

impl BufRead for Dribble<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(&self.data[..self.data.len().min(self.step)])
    }

    fn consume(&mut self, n: usize) {
        self.data = &self.data[n.min(self.data.len())..];
        if self.max > 0 {
            self.step = self.step * 7 % self.max + 1;
        }
    }
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::io::read_via_buf(self, buf)
    }
}

/// Range reads over a byte slice, counting requests.
#[derive(Debug, Clone)]
pub struct SliceRange<'a> {
    data: &'a [u8],
    /// Requests served.
    pub requests: u64,
}

impl<'a> SliceRange<'a> {
    /// Range reads of `data`.
    pub fn new(data: &'a [u8]) -> SliceRange<'a> {
        SliceRange { data, requests: 0 }
    }
}

impl RangeRead for SliceRange<'_> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.requests += 1;
        let src = usize::try_from(offset)
            .ok()
            .and_then(|s| s.checked_add(buf.len()).map(|e| (s, e)))
            .and_then(|(s, e)| self.data.get(s..e))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Range reads over a file, counting requests.
#[derive(Debug)]
pub struct FileRange {
    file: File,
    /// Requests served.
    pub requests: u64,
}

impl FileRange {
    /// Range reads of the file at `path`.
    pub fn open(path: &Path) -> io::Result<FileRange> {
        Ok(FileRange {
            file: File::open(path)?,
            requests: 0,
        })
    }
}

impl RangeRead for FileRange {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.requests += 1;
        self.file.read_exact_at(buf, offset)
    }
}

/// A small deterministic PRNG (SplitMix64): test data, shuffles, sizes.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// A sink that only counts, for benchmarks: no checks, no copies.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink {
    /// Bytes reported as data.
    pub data_bytes: u64,
    /// Bytes reported as zeros.
    pub zero_bytes: u64,
}

impl ExtentSink for NullSink {
    fn set_virtual_size(&mut self, _: u64) -> Result<(), SinkError> {
        Ok(())
    }

    fn data(&mut self, _: u64, data: &[u8]) -> Result<(), SinkError> {
        self.data_bytes += data.len() as u64;
        Ok(())
    }

    fn zero(&mut self, _: u64, len: u64) -> Result<(), SinkError> {
        self.zero_bytes += len;
        Ok(())
    }
}
