//! Decompression of one compressed unit (a qcow2 cluster, a VMDK grain) with
//! QEMU's acceptance rules.
//!
//! A qcow2 descriptor only gives the compressed size rounded up to 512-byte
//! sectors, so the input may carry trailing bytes (the start of the next
//! compressed cluster). Like QEMU, we require the output to fill the unit
//! exactly: deflate may stop there with or without reaching its end marker;
//! zstd (possibly several frames) must end exactly at the unit's end. Both
//! report how many input bytes they consumed, which lets the reorder window
//! release exactly those bytes and keep the rest for a neighbour.
//!
//! A VMDK grain (zlib) follows QEMU's `uncompress()` instead: its marker gives
//! the exact compressed size, the stream must reach its end marker (with a
//! valid checksum) within those bytes, and it may decompress to *less* than
//! the unit (the last grain of a disk whose size is not a multiple of the
//! grain); [`Decompressor::unit_vec`] truncates the output to what it made.
//!
//! zlib-rs (flate2's backend here) is pure Rust and streaming: it accepts a
//! deflate stream cut off once the unit is full (QEMU accepts those too),
//! which a one-shot decoder such as libdeflate reports as an error.

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

/// How the units are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Raw deflate, no header (qcow2's "zlib" compression type).
    Deflate,
    /// zlib: deflate with the RFC 1950 header and checksum (VMDK grains).
    Zlib,
    /// zstd frames (qcow2 compression type 1).
    Zstd,
}

/// Why a unit did not decompress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The compressed bytes are not a valid stream.
    #[error("corrupt {codec} data: {detail}")]
    Corrupt {
        /// The codec's name.
        codec: &'static str,
        /// What the decompressor said.
        detail: String,
    },
    /// The stream ended before the unit was full.
    #[error("{codec} data decompresses to {got} bytes, not {want}")]
    Short {
        /// The codec's name.
        codec: &'static str,
        /// Bytes produced.
        got: usize,
        /// Bytes the unit holds.
        want: usize,
    },
    /// The stream goes on past the unit.
    #[error("{codec} data decompresses to more than {want} bytes")]
    Long {
        /// The codec's name.
        codec: &'static str,
        /// Bytes the unit holds.
        want: usize,
    },
    /// The decompressor could not be set up.
    #[error("setting up the {codec} decoder: {detail}")]
    Init {
        /// The codec's name.
        codec: &'static str,
        /// What failed.
        detail: String,
    },
    /// A worker thread went away.
    #[error("a decompression worker stopped")]
    WorkerGone,
}

/// Largest zstd window we accept: a unit is at most 2 MiB, so a frame
/// compressing one never needs more, and a hostile frame cannot make us
/// allocate the 128 MiB default maximum.
const ZSTD_WINDOW_LOG_MAX: u32 = 22;

/// One decompressor, reused unit after unit.
pub struct Decompressor {
    codec: Codec,
    inflate: Decompress,
    zstd: Option<ZstdDecoder<'static>>,
}

impl Decompressor {
    /// A decompressor for `codec`.
    pub fn new(codec: Codec) -> Result<Decompressor, InflateError> {
        let init = |e: std::io::Error| InflateError::Init {
            codec: "zstd",
            detail: e.to_string(),
        };
        let zstd = match codec {
            Codec::Zstd => {
                let mut d = ZstdDecoder::new().map_err(init)?;
                d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(init)?;
                Some(d)
            }
            Codec::Deflate | Codec::Zlib => None,
        };
        Ok(Decompressor {
            codec,
            inflate: Decompress::new(codec == Codec::Zlib),
            zstd,
        })
    }

    /// Fills `out` exactly from `input`; returns the input bytes consumed.
    /// (For [`Codec::Zlib`] the stream must also end within `input`; use
    /// [`Decompressor::unit_vec`] to accept a shorter output.)
    pub fn unit(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, InflateError> {
        match self.codec {
            Codec::Deflate => self.deflate(input, out),
            Codec::Zlib => {
                let made = self.zlib_stream(input, out)?;
                if made < out.len() {
                    return Err(InflateError::Short {
                        codec: "zlib",
                        got: made,
                        want: out.len(),
                    });
                }
                Ok(input.len())
            }
            Codec::Zstd => self.zstd(input, out),
        }
    }

    /// Like [`Decompressor::unit`], but a [`Codec::Zlib`] stream may make
    /// fewer bytes than `out` holds: `out` is truncated to them. The other
    /// codecs fill `out` exactly, as with `unit`.
    pub fn unit_vec(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, InflateError> {
        match self.codec {
            Codec::Zlib => {
                let made = self.zlib_stream(input, out)?;
                out.truncate(made);
                Ok(input.len())
            }
            Codec::Deflate | Codec::Zstd => self.unit(input, out),
        }
    }

    /// One whole zlib stream, as QEMU's `uncompress()` reads a VMDK grain:
    /// it must end (checksum included) within `input` and make at most
    /// `out.len()` bytes; bytes after its end are ignored. Returns the bytes
    /// made.
    fn zlib_stream(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, InflateError> {
        let codec = "zlib";
        let d = &mut self.inflate;
        d.reset(true);
        let (mut ip, mut op) = (0usize, 0usize);
        loop {
            let (st, progressed) = inflate_step(d, codec, input, out, (&mut ip, &mut op))?;
            if st == Status::StreamEnd {
                return Ok(op);
            }
            if progressed {
                continue;
            }
            if op == out.len() {
                // Room is gone and the stream goes on.
                return Err(InflateError::Long {
                    codec,
                    want: out.len(),
                });
            }
            return Err(InflateError::Corrupt {
                codec,
                detail: format!("the stream ends after {ip} bytes without its end marker"),
            });
        }
    }

    fn deflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, InflateError> {
        let codec = "deflate";
        let d = &mut self.inflate;
        d.reset(false);
        let (mut ip, mut op) = (0usize, 0usize);
        loop {
            let (st, progressed) = inflate_step(d, codec, input, out, (&mut ip, &mut op))?;
            if op == out.len() {
                return Ok(ip);
            }
            if st == Status::StreamEnd || !progressed {
                return Err(InflateError::Short {
                    codec,
                    got: op,
                    want: out.len(),
                });
            }
        }
    }

    fn zstd(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, InflateError> {
        let codec = "zstd";
        let corrupt = |e: std::io::Error| InflateError::Corrupt {
            codec,
            detail: e.to_string(),
        };
        let d = self.zstd.as_mut().ok_or(InflateError::Init {
            codec,
            detail: "decoder missing".into(),
        })?;
        d.reinit().map_err(corrupt)?;
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around(out);
        let mut hint;
        loop {
            let (ip, op) = (inb.pos(), outb.pos());
            hint = d.run(&mut inb, &mut outb).map_err(corrupt)?;
            if outb.pos() == outb.capacity() {
                break;
            }
            if inb.pos() == ip && outb.pos() == op {
                return Err(InflateError::Short {
                    codec,
                    got: outb.pos(),
                    want: outb.capacity(),
                });
            }
        }
        if hint != 0 {
            return Err(InflateError::Long {
                codec,
                want: outb.capacity(),
            });
        }
        Ok(inb.pos())
    }
}

/// One `decompress` call on what is left of `input` and `out` (from `ip`
/// and `op`, which it advances): the status, and whether anything moved.
fn inflate_step(
    d: &mut Decompress,
    codec: &'static str,
    input: &[u8],
    out: &mut [u8],
    (ip, op): (&mut usize, &mut usize),
) -> Result<(Status, bool), InflateError> {
    let (i, o) = (
        input.get(*ip..).unwrap_or_default(),
        out.get_mut(*op..).unwrap_or_default(),
    );
    let (in0, out0) = (d.total_in(), d.total_out());
    let st = d
        .decompress(i, o, FlushDecompress::Finish)
        .map_err(|e| InflateError::Corrupt {
            codec,
            detail: e.to_string(),
        })?;
    let (took, made) = (d.total_in() - in0, d.total_out() - out0);
    *ip += took as usize;
    *op += made as usize;
    Ok((st, took != 0 || made != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn deflate(data: &[u8], zlib: bool) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), zlib);
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
    fn zlib_grains_follow_uncompress() {
        let data = sample(65536);
        let mut c = deflate(&data, true);
        let n = c.len();
        let mut d = Decompressor::new(Codec::Zlib).expect("d");
        // Exact, and with bytes after the stream's end (ignored).
        let mut out = vec![0u8; 65536];
        assert_eq!(d.unit_vec(&c, &mut out), Ok(n));
        assert_eq!(out, data);
        c.extend_from_slice(&[0xAA; 300]);
        let mut out = vec![0u8; 65536];
        assert_eq!(d.unit_vec(&c, &mut out), Ok(n + 300));
        assert_eq!(out, data);
        // A short grain (the disk's last) is kept short.
        let short = deflate(&data[..5000], true);
        let mut out = vec![0u8; 65536];
        assert_eq!(d.unit_vec(&short, &mut out), Ok(short.len()));
        assert_eq!(out, &data[..5000]);
        // ... but `unit` wants the unit full.
        let mut out = vec![0u8; 65536];
        assert!(matches!(
            d.unit(&short, &mut out),
            Err(InflateError::Short { got: 5000, .. })
        ));
        // Longer than the unit, cut before its end, a bad checksum: refused.
        let mut out = vec![0u8; 60000];
        assert!(matches!(
            d.unit_vec(&c, &mut out),
            Err(InflateError::Long { .. })
        ));
        let mut out = vec![0u8; 65536];
        assert!(d.unit_vec(&c[..n - 4], &mut out).is_err());
        let mut bad = c[..n].to_vec();
        bad[n - 1] ^= 1;
        let mut out = vec![0u8; 65536];
        assert!(matches!(
            d.unit_vec(&bad, &mut out),
            Err(InflateError::Corrupt { .. })
        ));
    }

    #[test]
    fn deflate_exact_unit_with_trailing_bytes() {
        let data = sample(65536);
        let mut c = deflate(&data, false);
        let n = c.len();
        c.extend_from_slice(&[0xAA; 300]);
        let mut d = Decompressor::new(Codec::Deflate).expect("d");
        let mut out = vec![0u8; 65536];
        assert_eq!(d.unit(&c, &mut out), Ok(n));
        assert_eq!(out, data);
        // Too short a stream, wrong size, garbage.
        assert!(matches!(
            d.unit(&deflate(&data[..1000], false), &mut out),
            Err(InflateError::Short { got: 1000, .. })
        ));
        assert!(d.unit(&c[..n / 2], &mut out).is_err());
        assert!(matches!(
            d.unit(&[0xff; 100], &mut out),
            Err(InflateError::Corrupt { .. })
        ));
    }

    #[test]
    fn zlib_and_raw_deflate_are_told_apart() {
        let data = sample(4096);
        let mut out = vec![0u8; 4096];
        let mut d = Decompressor::new(Codec::Deflate).expect("d");
        assert!(d.unit(&deflate(&data, true), &mut out).is_err());
        let mut z = Decompressor::new(Codec::Zlib).expect("d");
        let mut v = vec![0u8; 4096];
        assert!(z.unit_vec(&deflate(&data, false), &mut v).is_err());
    }

    #[test]
    fn zstd_exact_unit() {
        let data = sample(65536);
        let mut c = zstd::bulk::compress(&data, 3).expect("zstd");
        let n = c.len();
        c.extend_from_slice(&[0u8; 200]);
        let mut d = Decompressor::new(Codec::Zstd).expect("d");
        let mut out = vec![0u8; 65536];
        assert_eq!(d.unit(&c, &mut out), Ok(n));
        assert_eq!(out, data);
        let big = zstd::bulk::compress(&sample(70000), 3).expect("zstd");
        assert!(matches!(
            d.unit(&big, &mut out),
            Err(InflateError::Long { .. })
        ));
        let small = zstd::bulk::compress(&data[..60000], 3).expect("zstd");
        assert!(d.unit(&small, &mut out).is_err());
        assert!(d.unit(&c[..n - 5], &mut out).is_err());
    }
}
