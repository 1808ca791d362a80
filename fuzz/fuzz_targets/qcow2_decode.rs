//! Drives the qcow2 decoder on arbitrary bytes, as a stream (in pieces whose
//! size comes from the input), with a tiny reorder window, once refusing to
//! spill and once with range reads over the same bytes. The sink checks the
//! decoder's contract: virtual size first, nothing past it, nothing twice.
#![no_main]

use std::collections::BTreeMap;
use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
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

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len()).min(self.step);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.step = self.step * 7 % 4093 + 1;
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

fuzz_target!(|data: &[u8]| {
    let opts = PlanOptions {
        window: 4096,
        spill: SpillPolicy::Forbid,
    };
    let step = data.get(30).map_or(512, |&b| usize::from(b) * 37 + 1);
    let mut sink = Checker::default();
    let r = decode(&mut Pieces { data, step }, None, &opts, &mut sink);
    if r.is_ok() {
        let vs = sink.vsize.unwrap_or(0);
        let total: u64 = sink.covered.iter().map(|(a, b)| b - a).sum();
        assert_eq!(total, vs, "accepted image not fully covered");
    }
    let mut sink = Checker::default();
    let mut mem = Mem(data);
    let _ = decode(&mut Pieces { data, step: 4096 }, Some(&mut mem), &opts, &mut sink);
});
