//! `ALGO:HEX` checksums over the bytes as received, as a `Read` tap.
//!
//! The digest observes the raw source stream (before decompression), which is
//! what CDI's `IMPORTER_CHECKSUM` and the `--checksum` flag promise.

use std::io::BufRead;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use digest::DynDigest;

use crate::io::HashTap;

/// A supported digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// MD5.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Md5 => "md5",
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algo::Md5 => 32,
            Algo::Sha1 => 40,
            Algo::Sha256 => 64,
            Algo::Sha512 => 128,
        }
    }

    fn hasher(self) -> Box<dyn DynDigest + Send> {
        match self {
            Algo::Md5 => Box::new(md5::Md5::default()),
            Algo::Sha1 => Box::new(sha1::Sha1::default()),
            Algo::Sha256 => Box::new(sha2::Sha256::default()),
            Algo::Sha512 => Box::new(sha2::Sha512::default()),
        }
    }
}

/// An expected checksum, `ALGO:HEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algo: Algo,
    /// Lower-case hex.
    pub hex: String,
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algo.name(), self.hex)
    }
}

/// A malformed `ALGO:HEX` string.
#[derive(Debug, thiserror::Error)]
#[error("invalid checksum {0:?}: expected md5:HEX, sha1:HEX, sha256:HEX or sha512:HEX")]
pub struct ParseChecksumError(String);

impl FromStr for Checksum {
    type Err = ParseChecksumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseChecksumError(s.to_string());
        let (algo, hex) = s.split_once(':').ok_or_else(err)?;
        let algo = match algo.to_ascii_lowercase().as_str() {
            "md5" => Algo::Md5,
            "sha1" => Algo::Sha1,
            "sha256" => Algo::Sha256,
            "sha512" => Algo::Sha512,
            _ => return Err(err()),
        };
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() != algo.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        Ok(Checksum { algo, hex })
    }
}

/// A running digest shared between the tap (on the reading thread) and whoever
/// verifies at the end.
#[derive(Clone)]
pub struct Verifier {
    expected: Checksum,
    state: crate::io::hash::SharedDigest,
}

impl Verifier {
    /// A verifier for `expected`; its taps feed one shared digest.
    pub fn new(expected: Checksum) -> Self {
        let state = Arc::new(Mutex::new(expected.algo.hasher()));
        Verifier { expected, state }
    }

    /// Wraps `inner` so that every byte read is hashed.
    pub fn tap<R: BufRead>(&self, inner: R) -> HashTap<R> {
        HashTap::new(inner, self.digest())
    }

    /// The shared digest the taps feed.
    pub fn digest(&self) -> crate::io::hash::SharedDigest {
        Arc::clone(&self.state)
    }

    /// Compares the digest of everything read so far with the expected value.
    /// Returns `(expected, calculated)` as `ALGO:HEX` strings on mismatch.
    pub fn verify(&self) -> Result<(), (String, String)> {
        let digest = match self.state.lock() {
            Ok(mut h) => h.finalize_reset(),
            Err(poisoned) => poisoned.into_inner().finalize_reset(),
        };
        let calculated = hex::encode(digest);
        if calculated == self.expected.hex {
            Ok(())
        } else {
            Err((
                self.expected.to_string(),
                format!("{}:{}", self.expected.algo.name(), calculated),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Read};

    #[test]
    fn parses_and_rejects() {
        let c: Checksum = "SHA256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
            .parse()
            .expect("valid");
        assert_eq!(c.algo, Algo::Sha256);
        assert!("sha256:abc".parse::<Checksum>().is_err());
        assert!("crc32:00000000".parse::<Checksum>().is_err());
        assert!("nocolon".parse::<Checksum>().is_err());
    }

    #[test]
    fn bytes_shown_again_or_consumed_in_pieces_are_hashed_once() {
        use sha2::Digest;
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let want = hex::encode(sha2::Sha256::digest(&data));
        let v = Verifier::new(format!("sha256:{want}").parse().expect("valid"));
        let mut r = v.tap(io::BufReader::with_capacity(777, &data[..]));
        let mut seen = Vec::new();
        let mut step = 1;
        loop {
            // Look twice, consume part, sometimes read through `Read`.
            let n = r.fill_buf().expect("fill").len();
            let buf = r.fill_buf().expect("fill again");
            assert_eq!(buf.len(), n);
            if n == 0 {
                break;
            }
            let k = n.min(step);
            seen.extend_from_slice(&buf[..k]);
            r.consume(k);
            let mut out = [0u8; 5];
            let got = r.read(&mut out).expect("read");
            seen.extend_from_slice(&out[..got]);
            step = step * 3 % 400 + 1;
        }
        assert_eq!(seen, data);
        assert!(v.verify().is_ok(), "{:?}", v.verify());
    }

    #[test]
    fn verifies_bytes_read() {
        let c: Checksum = "md5:900150983cd24fb0d6963f7d28e17f72"
            .parse()
            .expect("valid");
        let v = Verifier::new(c);
        let mut out = Vec::new();
        v.tap(&b"abc"[..]).read_to_end(&mut out).expect("read");
        assert!(v.verify().is_ok());
        let v2 = Verifier::new(
            "md5:00000000000000000000000000000000"
                .parse()
                .expect("valid"),
        );
        v2.tap(&b"abc"[..]).read_to_end(&mut out).expect("read");
        let (exp, calc) = v2.verify().expect_err("mismatch");
        assert_eq!(exp, "md5:00000000000000000000000000000000");
        assert_eq!(calc, "md5:900150983cd24fb0d6963f7d28e17f72");
    }
}
