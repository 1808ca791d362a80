//! Decompression of one compressed cluster, with QEMU's acceptance rules.
//!
//! The descriptor only gives the compressed size rounded up to 512-byte
//! sectors, so the input may carry trailing bytes (the start of the next
//! compressed cluster). Like QEMU, we require the output to be exactly one
//! cluster: deflate may stop there with or without reaching its end marker;
//! zstd (possibly several frames) must end exactly at the cluster's end.
//! Both report how many input bytes they consumed, which lets the reorder
//! window release exactly those bytes and keep the rest for a neighbour.
//!
//! zlib-rs (flate2's backend here) is pure Rust and streaming: it accepts a
//! deflate stream cut off once the cluster is full (QEMU accepts those too),
//! which a one-shot decoder such as libdeflate reports as an error.
//! libdeflate was not measured here (see the bench `decode` for zlib-rs numbers).

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use super::header::CompressionType;

/// Largest zstd window we accept: a cluster is at most 2 MiB, so a frame
/// compressing one never needs more, and a hostile frame cannot make us
/// allocate the 128 MiB default maximum.
const ZSTD_WINDOW_LOG_MAX: u32 = 22;

pub struct Decompressor {
    kind: CompressionType,
    inflate: Decompress,
    zstd: Option<ZstdDecoder<'static>>,
}

impl Decompressor {
    pub fn new(kind: CompressionType) -> Result<Decompressor, String> {
        let zstd = match kind {
            CompressionType::Zstd => {
                let mut d = ZstdDecoder::new().map_err(|e| format!("zstd init: {e}"))?;
                d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(|e| format!("zstd init: {e}"))?;
                Some(d)
            }
            CompressionType::Zlib => None,
        };
        Ok(Decompressor {
            kind,
            inflate: Decompress::new(false),
            zstd,
        })
    }

    /// Fills `out` (exactly one cluster) from `input`; returns the input bytes consumed.
    pub fn cluster(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, String> {
        match self.kind {
            CompressionType::Zlib => self.deflate(input, out),
            CompressionType::Zstd => self.zstd(input, out),
        }
    }

    fn deflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, String> {
        let d = &mut self.inflate;
        d.reset(false);
        let (mut ip, mut op) = (0usize, 0usize);
        loop {
            let (i, o) = (
                input.get(ip..).unwrap_or_default(),
                out.get_mut(op..).unwrap_or_default(),
            );
            let (in0, out0) = (d.total_in(), d.total_out());
            let st = d
                .decompress(i, o, FlushDecompress::Finish)
                .map_err(|e| format!("corrupt deflate data: {e}"))?;
            ip += (d.total_in() - in0) as usize;
            op += (d.total_out() - out0) as usize;
            if op == out.len() {
                return Ok(ip);
            }
            let progressed = d.total_in() != in0 || d.total_out() != out0;
            if st == Status::StreamEnd || !progressed {
                return Err(format!(
                    "deflate data decompresses to {op} bytes, not a cluster of {}",
                    out.len()
                ));
            }
        }
    }

    fn zstd(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, String> {
        let d = self.zstd.as_mut().ok_or("zstd decoder missing")?;
        d.reinit().map_err(|e| format!("zstd reset: {e}"))?;
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around(out);
        let mut hint;
        loop {
            let (ip, op) = (inb.pos(), outb.pos());
            hint = d
                .run(&mut inb, &mut outb)
                .map_err(|e| format!("corrupt zstd data: {e}"))?;
            if outb.pos() == outb.capacity() {
                break;
            }
            if inb.pos() == ip && outb.pos() == op {
                return Err(format!(
                    "zstd data decompresses to {} bytes, not a cluster of {}",
                    outb.pos(),
                    outb.capacity()
                ));
            }
        }
        if hint != 0 {
            return Err("zstd data decompresses to more than a cluster".into());
        }
        Ok(inb.pos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Finish)
            .expect("compress");
        out
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7) % 13) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    #[test]
    fn deflate_exact_cluster_with_trailing_bytes() {
        let data = sample(65536);
        let mut c = deflate(&data);
        let n = c.len();
        c.extend_from_slice(&[0xAA; 300]);
        let mut d = Decompressor::new(CompressionType::Zlib).expect("d");
        let mut out = vec![0u8; 65536];
        assert_eq!(d.cluster(&c, &mut out), Ok(n));
        assert_eq!(out, data);
        // Too short a stream, wrong size, garbage.
        assert!(d.cluster(&deflate(&data[..1000]), &mut out).is_err());
        assert!(d.cluster(&c[..n / 2], &mut out).is_err());
        assert!(d.cluster(&[0xff; 100], &mut out).is_err());
    }

    #[test]
    fn zstd_exact_cluster() {
        let data = sample(65536);
        let mut c = zstd::bulk::compress(&data, 3).expect("zstd");
        let n = c.len();
        c.extend_from_slice(&[0u8; 200]);
        let mut d = Decompressor::new(CompressionType::Zstd).expect("d");
        let mut out = vec![0u8; 65536];
        assert_eq!(d.cluster(&c, &mut out), Ok(n));
        assert_eq!(out, data);
        let big = zstd::bulk::compress(&sample(70000), 3).expect("zstd");
        assert!(d.cluster(&big, &mut out).is_err());
        let small = zstd::bulk::compress(&data[..60000], 3).expect("zstd");
        assert!(d.cluster(&small, &mut out).is_err());
        assert!(d.cluster(&c[..n - 5], &mut out).is_err());
    }
}
