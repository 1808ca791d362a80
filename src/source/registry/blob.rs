//! [`VerifiedBlob`]: a blob's bytes as they stream, hashed and counted, and
//! checked against the manifest's digest and size at their end.
//!
//! The check happens when the stream reaches its end (the layer walk always
//! reads a blob it used to its end, see [`super::layers`]): a mismatch is
//! then a typed error ([`RegistryError::DigestMismatch`] inside the
//! `io::Error`) that the pipeline recognises wherever it surfaces, and the
//! import fails before the target is declared good. A blob that runs past
//! its announced size fails at once.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::RegistryError;
use crate::progress::Counter;
use crate::source::SourceError;

/// A blob stream checked against its descriptor.
pub(crate) struct VerifiedBlob<R> {
    inner: R,
    /// Which blob, for messages ("layer 2 of 3 (sha256:...)").
    what: String,
    expected_digest: String,
    expected_size: u64,
    hasher: Sha256,
    /// Bytes of the inner buffer already hashed.
    hashed: usize,
    /// Bytes hashed in all.
    seen: u64,
    /// Progress: bytes received, as they are consumed.
    counter: Option<Arc<Counter>>,
    /// The end was reached and the digest matched.
    verified: bool,
}

impl<R: BufRead> VerifiedBlob<R> {
    /// Checks `inner` against `digest` (`sha256:HEX`) and `size`, adding
    /// consumed bytes to `counter`.
    pub(crate) fn new(
        inner: R,
        what: String,
        digest: &str,
        size: u64,
        counter: Option<Arc<Counter>>,
    ) -> Self {
        VerifiedBlob {
            inner,
            what,
            expected_digest: digest.to_string(),
            expected_size: size,
            hasher: Sha256::new(),
            hashed: 0,
            seen: 0,
            counter,
            verified: false,
        }
    }

    /// Whether the whole blob passed and matched.
    #[cfg(test)]
    pub(crate) fn verified(&self) -> bool {
        self.verified
    }

    fn fail(&self, e: RegistryError) -> io::Error {
        SourceError::from(e).into_io()
    }

    fn at_end(&mut self) -> io::Result<()> {
        if self.verified {
            return Ok(());
        }
        if self.seen != self.expected_size {
            return Err(self.fail(RegistryError::SizeMismatch {
                what: self.what.clone(),
                got: self.seen,
                expected: self.expected_size,
            }));
        }
        let calculated = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if calculated != self.expected_digest {
            tracing::error!(
                "{}: digest mismatch: expected {}, calculated {calculated}",
                self.what,
                self.expected_digest
            );
            return Err(self.fail(RegistryError::DigestMismatch {
                what: self.what.clone(),
                expected: self.expected_digest.clone(),
                calculated,
            }));
        }
        tracing::debug!("{}: digest verified", self.what);
        self.verified = true;
        Ok(())
    }
}

impl<R: BufRead> BufRead for VerifiedBlob<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.inner.fill_buf()?.is_empty() {
            self.at_end()?;
            return Ok(&[]);
        }
        // What is hashed and returned is the one buffer of this call.
        let buf = self.inner.fill_buf()?;
        // Fields apart from `inner`, so `buf` can be returned as it is.
        if let Some(new) = buf.get(self.hashed..).filter(|n| !n.is_empty()) {
            self.hasher.update(new);
            self.seen = self.seen.saturating_add(new.len() as u64);
            self.hashed = buf.len();
            if self.seen > self.expected_size {
                return Err(SourceError::from(RegistryError::SizeMismatch {
                    what: self.what.clone(),
                    got: self.seen,
                    expected: self.expected_size,
                })
                .into_io());
            }
        }
        Ok(buf)
    }

    fn consume(&mut self, amt: usize) {
        self.hashed = self.hashed.saturating_sub(amt);
        if let Some(c) = &self.counter {
            c.add(amt as u64);
        }
        self.inner.consume(amt);
    }
}

impl<R: BufRead> Read for VerifiedBlob<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::io::read_via_buf(self, buf)
    }
}

/// Checks a blob held whole (a manifest, a config) against its digest.
pub(crate) fn check_whole(what: &str, body: &[u8], digest: &str) -> Result<(), RegistryError> {
    let calculated = format!("sha256:{}", hex::encode(Sha256::digest(body)));
    if calculated == digest {
        Ok(())
    } else {
        Err(RegistryError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            calculated,
        })
    }
}

/// The sha256 digest of `body`, `sha256:HEX`.
pub(crate) fn digest_of(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// The digest mismatch carried by `e` (or an error it wraps), if any, as
/// its own error.
pub fn find_mismatch(e: &io::Error) -> Option<RegistryError> {
    let mut found = None;
    walk(e, &mut |c| {
        if let Some(SourceError::Registry(RegistryError::DigestMismatch {
            what,
            expected,
            calculated,
        })) = c.downcast_ref::<SourceError>()
        {
            found = Some(RegistryError::DigestMismatch {
                what: what.clone(),
                expected: expected.clone(),
                calculated: calculated.clone(),
            });
            return true;
        }
        false
    });
    found
}

/// Whether `e` (or an error it wraps) is a source's error: a transfer
/// failure or a registry's, rather than a decoder's.
pub(crate) fn has_source_error(e: &io::Error) -> bool {
    let mut found = false;
    walk(e, &mut |c| {
        found = c.is::<SourceError>();
        found
    });
    found
}

/// Visits the errors `e` wraps (io errors' payloads and `source()`s) until
/// `visit` says stop.
fn walk(e: &io::Error, visit: &mut dyn FnMut(&(dyn std::error::Error + 'static)) -> bool) {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as _);
    while let Some(c) = cur {
        if visit(c) {
            return;
        }
        if let Some(inner) = c.downcast_ref::<io::Error>() {
            cur = inner.get_ref().map(|i| i as _);
            continue;
        }
        cur = c.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Dribble;

    #[test]
    fn verifies_counts_and_names_mismatches() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let digest = digest_of(&data);
        let counter = Arc::new(Counter::default());
        let mut b = VerifiedBlob::new(
            Dribble::new(&data, 7, 3000),
            "layer 1 of 1".into(),
            &digest,
            data.len() as u64,
            Some(counter.clone()),
        );
        let mut out = Vec::new();
        // Look at buffers twice before consuming them: hashed once.
        let _ = b.fill_buf().expect("fill");
        b.read_to_end(&mut out).expect("read");
        assert_eq!(out, data);
        assert!(b.verified());
        assert_eq!(counter.received(), data.len() as u64);

        let mut bad = data.clone();
        bad[40_000] ^= 1;
        let mut b = VerifiedBlob::new(
            &bad[..],
            "layer 1 of 1".into(),
            &digest,
            bad.len() as u64,
            None,
        );
        let err = b.read_to_end(&mut Vec::new()).expect_err("mismatch");
        assert!(
            matches!(find_mismatch(&err), Some(RegistryError::DigestMismatch { expected, .. }) if expected == digest)
        );
        assert!(
            err.to_string()
                .starts_with("checksum mismatch: layer 1 of 1"),
            "{err}"
        );

        let mut b = VerifiedBlob::new(&data[..100], "c".into(), &digest, data.len() as u64, None);
        let err = b.read_to_end(&mut Vec::new()).expect_err("short");
        assert!(err.to_string().contains("100 bytes received"), "{err}");
        let mut b = VerifiedBlob::new(&data[..], "c".into(), &digest, 10, None);
        assert!(b.read_to_end(&mut Vec::new()).is_err());
        assert!(check_whole("m", &data, &digest).is_ok());
        assert!(check_whole("m", &bad, &digest).is_err());
    }
}
