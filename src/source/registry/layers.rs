//! The layer walk: layers base to top, each blob streamed, verified and
//! decompressed as it arrives, its tar entries read forward until the disk
//! entry (CDI's rule: the first entry that is not a directory and not a
//! whiteout, whose name starts with `disk` or `./disk`). Layers before it
//! are read to their end (their digests are checked too) and discarded;
//! layers after it are never downloaded.
//!
//! A layer before the disk that is not a readable tar is skipped with a
//! warning, as CDI skips it, once its blob is known to be intact (a layer
//! whose blob does not match its digest fails the import instead).

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use super::blob::{self, VerifiedBlob};
use super::client::Client;
use super::manifest::{layer_compression, Descriptor, LayerCompression};
use super::RegistryError;
use crate::container::tar::{Member, MemberKind, TarError, TarReader};
use crate::format::table::{self, Signature, HEAD_LEN};
use crate::io::PeekReader;
use crate::pace::Pace;
use crate::progress::Counter;
use crate::source::SourceError;
use crate::unwrap::{self, Wrapper};

/// Entry names kept for the "no disk" message.
const SEEN_NAMES: usize = 10;

/// Blobs larger than this are not downloaded a second time to tell a
/// corrupt blob from a broken stream.
const MAX_RECHECK: u64 = 2 << 30;

/// The disk entry, found.
pub(crate) struct Found {
    /// Its bytes, then (at its end) the rest of its layer, verified.
    pub reader: Box<dyn BufRead + Send>,
    /// Its name in the tar.
    pub name: String,
    /// Its length.
    pub size: u64,
    /// Index of its layer (from 0).
    pub layer: usize,
}

/// Whether `m` is the disk, by CDI's rule.
pub(crate) fn is_disk(m: &Member) -> bool {
    let base = m.name.rsplit('/').next().unwrap_or(&m.name);
    (m.name.starts_with("disk") || m.name.starts_with("./disk"))
        && !base.starts_with(".wh.")
        && m.kind != MemberKind::Dir
}

/// A layer blob, opened, checked and decompressed: its tar stream.
type LayerStream = Box<dyn BufRead + Send>;

/// Walks `layers` of the image `client` serves until the disk entry.
pub(crate) fn find_disk(
    client: &Arc<Client>,
    layers: &[Descriptor],
    counter: &Arc<Counter>,
    pace: &Pace,
) -> Result<Found, SourceError> {
    let n = layers.len();
    let mut seen: Vec<String> = Vec::new();
    for (i, d) in layers.iter().enumerate() {
        let what = format!("layer {} of {n} ({})", i + 1, d.digest);
        let Some(compression) = layer_compression(&d.media_type) else {
            tracing::warn!(
                "{what}: media type {} is not a layer type; skipped",
                d.media_type
            );
            continue;
        };
        let (stream, wrapper) = open_layer(client, d, &what, compression, counter, pace)?;
        tracing::info!(
            "reading {what}: {} bytes, {}",
            d.size,
            wrapper.map_or("uncompressed", Wrapper::name)
        );
        let mut tar = TarReader::new(stream);
        let disk = loop {
            match tar.next_member() {
                Ok(Some(m)) if is_disk(&m) => break Some(m),
                Ok(Some(m)) => {
                    if seen.len() < SEEN_NAMES {
                        seen.push(m.name.clone());
                    }
                }
                Ok(None) => break None,
                Err(e) => {
                    layer_failed(client, d, &what, e)?;
                    break None;
                }
            }
        };
        match disk {
            Some(m) => {
                tracing::info!("disk entry {:?} ({} bytes) in {what}", m.name, m.size);
                let reader = DiskStream {
                    inner: tar.into_member(),
                    client: Arc::clone(client),
                    desc: d.clone(),
                    what,
                    checked: false,
                };
                return Ok(Found {
                    reader: Box::new(reader),
                    name: m.name,
                    size: m.size,
                    layer: i,
                });
            }
            None => {
                // The rest of the layer: end blocks, padding, a compressed
                // trailer; read so that its digest is checked.
                let mut rest = tar.into_member();
                if let Err(e) = io::copy(&mut rest, &mut io::sink()) {
                    layer_failed(client, d, &what, TarError::Read(e))?;
                }
            }
        }
    }
    let seen = if seen.is_empty() {
        "none".to_string()
    } else {
        seen.join(", ")
    };
    Err(RegistryError::NoDisk {
        image: client.image(),
        seen,
    }
    .into())
}

/// Opens a layer blob and peels its compression, chosen by the first
/// bytes (a registry may name the wrong media type) with the media type as
/// the fallback.
fn open_layer(
    client: &Client,
    d: &Descriptor,
    what: &str,
    compression: LayerCompression,
    counter: &Arc<Counter>,
    pace: &Pace,
) -> Result<(LayerStream, Option<Wrapper>), SourceError> {
    let opened = client.open_blob(d, pace)?;
    let verified = VerifiedBlob::new(
        opened.reader,
        what.to_string(),
        &d.digest,
        d.size,
        Some(Arc::clone(counter)),
    );
    let mut peek = PeekReader::new(verified);
    let head = peek.peek(HEAD_LEN).map_err(|e| io_to_source(e, what))?;
    let sniffed = match table::identify(head) {
        Signature::Wrapper(w) => Some(w),
        _ => None,
    };
    let named = match compression {
        LayerCompression::Gzip => Some(Wrapper::Gzip),
        LayerCompression::Zstd => Some(Wrapper::Zstd),
        LayerCompression::None | LayerCompression::Sniff => None,
    };
    if sniffed != named && compression != LayerCompression::Sniff {
        tracing::warn!(
            "{what}: media type {} but the bytes are {}; going by the bytes",
            d.media_type,
            sniffed.map_or("a plain tar", Wrapper::name)
        );
    }
    let stream: LayerStream = match sniffed {
        Some(w) => {
            pace.set_decompressing();
            unwrap::decoder(w, Box::new(peek)).map_err(|e| io_to_source(e, what))?
        }
        None => Box::new(peek),
    };
    Ok((stream, sniffed))
}

/// A layer before the disk failed to read as tar: fatal when the cause is
/// the transfer or the blob's digest, skipped (as CDI skips it) otherwise.
fn layer_failed(
    client: &Client,
    d: &Descriptor,
    what: &str,
    e: TarError,
) -> Result<(), SourceError> {
    let e = match e {
        TarError::Read(io) if blob::has_source_error(&io) => return Err(io_to_source(io, what)),
        other => other,
    };
    recheck(client, d, what)?;
    tracing::warn!(
        "{what} is not a readable tar layer ({}); skipped",
        crate::error_chain(&e)
    );
    Ok(())
}

/// An io error of the layer stream as a source error: a digest mismatch
/// as itself, anything else with the io error (and its cause) kept.
fn io_to_source(e: io::Error, what: &str) -> SourceError {
    match blob::find_mismatch(&e) {
        Some(m) => m.into(),
        None => SourceError::Io {
            what: format!("reading {what}"),
            source: e,
        },
    }
}

/// Downloads a blob again, whole, to tell a corrupt blob (its digest does
/// not match: that is the error) from content that is merely unreadable.
fn recheck(client: &Client, d: &Descriptor, what: &str) -> Result<(), SourceError> {
    if d.size > MAX_RECHECK {
        tracing::info!(
            "{what}: {} bytes, too large to download again to check its digest",
            d.size
        );
        return Ok(());
    }
    tracing::info!("{what}: reading the blob again to check its digest");
    let opened = client.open_blob(d, &Pace::new())?;
    let mut v = VerifiedBlob::new(opened.reader, what.to_string(), &d.digest, d.size, None);
    match io::copy(&mut v, &mut io::sink()) {
        Ok(_) => Ok(()),
        Err(e) => Err(io_to_source(e, what)),
    }
}

/// The disk entry's bytes. At their end the rest of the layer is read, so
/// the blob's digest is checked before the stream ends; when the layer
/// fails to decompress or parse on the way, the blob is checked again so
/// that a corrupt blob is reported as a digest mismatch.
struct DiskStream {
    inner: crate::container::tar::MemberReader<LayerStream>,
    client: Arc<Client>,
    desc: Descriptor,
    what: String,
    /// A failure was examined already.
    checked: bool,
}

impl DiskStream {
    fn examine(&mut self, e: io::Error) -> io::Error {
        if self.checked || blob::has_source_error(&e) {
            return e;
        }
        self.checked = true;
        match recheck(&self.client, &self.desc, &self.what) {
            Err(mismatch @ SourceError::Registry(RegistryError::DigestMismatch { .. })) => {
                mismatch.into_io()
            }
            _ => e,
        }
    }
}

impl BufRead for DiskStream {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Two calls: the error path needs `self` while the happy path
        // returns a borrow of it.
        if let Err(e) = self.inner.fill_buf() {
            return Err(self.examine(e));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
    }
}

impl Read for DiskStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::io::read_via_buf(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, kind: MemberKind) -> Member {
        Member {
            name: name.into(),
            size: 1,
            kind,
            offset: 0,
        }
    }

    #[test]
    fn cdi_disk_rule() {
        assert!(is_disk(&m("disk/fedora.qcow2", MemberKind::File)));
        assert!(is_disk(&m("./disk/x.img", MemberKind::File)));
        assert!(is_disk(&m("disk.img", MemberKind::File)));
        assert!(is_disk(&m("diskette", MemberKind::File)));
        assert!(!is_disk(&m("disk/", MemberKind::Dir)));
        assert!(!is_disk(&m("disk/.wh.old.img", MemberKind::File)));
        assert!(!is_disk(&m("etc/disk", MemberKind::File)));
        assert!(!is_disk(&m("/disk/x", MemberKind::File)));
    }
}
