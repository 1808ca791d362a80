//! The qcow2 fuzz harness, shared by the fuzz target
//! (`fuzz_targets/qcow2_decode.rs`) and its stable-Rust replay in
//! `tests/qcow2_fuzz_regressions.rs` (both include this file with `#[path]`),
//! so the replay checks exactly what the fuzzer checked.
//!
//! It drives the qcow2 decoder on arbitrary bytes, as a stream (in pieces
//! whose size comes from the input), with a tiny reorder window, once refusing
//! to spill and once with range reads over the same bytes. The sink checks the
//! decoder's contract: virtual size first, nothing past it, nothing twice, and
//! an accepted image covered exactly.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};

use streamdisk::format::qcow2::{decode, PlanOptions, SpillPolicy};
use streamdisk::format::ExtentSink;
use streamdisk::source::RangeRead;

#[derive(Default)]
struct Checker {
    vsize: Option<u64>,
    covered: BTreeMap<u64, u64>,
}

impl Checker {
    fn cover(&mut self, a: u64, len: u64) -> io::Result<()> {
        let vs = self.vsize.expect("extent before set_virtual_size");
        let b = a.checked_add(len).expect("extent overflows");
        assert!(len > 0 && b <= vs, "extent [{a}, {b}) outside [0, {vs})");
        if let Some((&s, &e)) = self.covered.range(..b).next_back() {
            assert!(e <= a || s >= b, "guest [{a}, {b}) reported twice");
        }
        self.covered.insert(a, b);
        Ok(())
    }
}

impl ExtentSink for Checker {
    fn set_virtual_size(&mut self, size: u64) -> io::Result<()> {
        assert!(self.vsize.replace(size).is_none(), "virtual size set twice");
        Ok(())
    }
    fn data(&mut self, g: u64, d: &[u8]) -> io::Result<()> {
        self.cover(g, d.len() as u64)
    }
    fn zero(&mut self, g: u64, len: u64) -> io::Result<()> {
        self.cover(g, len)
    }
}

/// Hands out the input in pieces of varying size.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

/// Slices of varying size, as a network stream hands them out.
impl BufRead for Pieces<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(&self.data[..self.data.len().min(self.step)])
    }
    fn consume(&mut self, n: usize) {
        self.data = &self.data[n.min(self.data.len())..];
        self.step = self.step * 7 % 4093 + 1;
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = buf.len().min(avail.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

struct Mem<'a>(&'a [u8]);

impl RangeRead for Mem<'_> {
    fn read_exact_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = usize::try_from(off).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = s
            .checked_add(buf.len())
            .and_then(|e| self.0.get(s..e))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// One fuzz input: panics if the decoder breaks its contract.
pub fn run_one(data: &[u8]) {
    let opts = PlanOptions {
        window: 4096,
        spill: SpillPolicy::Forbid,
    };
    let step = data.get(30).map_or(512, |&b| usize::from(b) * 37 + 1);
    let mut sink = Checker::default();
    if decode(&mut Pieces { data, step }, None, &opts, &mut sink).is_ok() {
        let total: u64 = sink.covered.iter().map(|(a, b)| b - a).sum();
        assert_eq!(
            total,
            sink.vsize.unwrap_or(0),
            "accepted image not fully covered"
        );
    }
    let mut sink = Checker::default();
    let _ = decode(
        &mut Pieces { data, step: 4096 },
        Some(&mut Mem(data)),
        &opts,
        &mut sink,
    );
}
