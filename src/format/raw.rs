//! raw: streamed straight through; all-zero blocks become zero extents.
//!
//! The stream is read in large chunks and scanned in fixed-size granules
//! aligned to guest offsets. Consecutive data granules go to the sink as one
//! extent (one copy into the target's buffers), consecutive zero granules as one
//! zero extent, so a sparse raw image costs one zeroing call per run of zeros
//! instead of one write per block.

use std::io::BufRead;

use super::table::{self, Trailer, TAIL_LEN};
use super::{
    DecodeReport, Decoder, ExtentSink, Feed, Format, FormatError, ImageInfo, PlanOptions, SinkError,
};
use crate::io::ZeroRun;

/// Zero-detection granularity.
///
/// 64 KiB. The CPU cost does not decide it (every granule from 4 KiB to
/// 1 MiB scans far faster than any disk; BENCHMARKS.md, "Tuning").
/// What decides it is the writer: it writes zero gaps of up to 64 KiB between
/// data as zeros inside one large write anyway (see
/// `target::plan::assemble::INLINE_GAP`), so finer granules only add sink calls,
/// while at 1 MiB a real image's mostly-empty regions (one dirty 4 KiB block
/// per MiB is common after `mkfs`) would no longer be seen as zero.
pub const ZERO_GRANULE: usize = 64 << 10;

/// Largest zero-detection granule accepted (measurements only).
const MAX_GRANULE: usize = 1 << 20;

/// Zeros to pass on as data: the all-zero start of a granule that turns out
/// to hold data. One default granule: an immutable static lands in the
/// binary's read-only data, so a larger one would grow the binary (1 MiB
/// did) and its page cache.
static ZEROS: [u8; ZERO_GRANULE] = [0; ZERO_GRANULE];

/// What the raw pass saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawReport {
    /// Bytes of image read (the virtual size of a raw image).
    pub bytes_read: u64,
    /// Bytes passed on as data extents.
    pub data_bytes: u64,
    /// Bytes passed on as zero extents.
    pub zero_bytes: u64,
}

/// True if every byte of `buf` is zero.
///
/// Folds 16-byte words with OR in 256-byte blocks (the compiler turns this
/// into wide vector loads) and stops at the first non-zero block: fast on
/// zeros, and an early exit on data (BENCHMARKS.md, "Tuning").
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(256);
    for block in &mut blocks {
        let mut acc: u128 = 0;
        for w in block.chunks_exact(16) {
            let mut word = [0u8; 16];
            word.copy_from_slice(w);
            acc |= u128::from_ne_bytes(word);
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Why a raw stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    /// Less than one sector: almost always a failed download.
    #[error("the image is only {0} bytes: a disk image holds at least one 512-byte sector (truncated download?)")]
    TooShort(u64),
    /// The stream ended before its announced size.
    #[error("the image ended after {got} bytes, but its size is {size}")]
    Truncated {
        /// Bytes received.
        got: u64,
        /// The announced size.
        size: u64,
    },
    /// The stream goes on past its announced size.
    #[error("the image is longer than its announced size {0}")]
    TooLong(u64),
}

/// Streams a raw image from `input` into `sink` (see [`RawDecoder`]).
pub fn decode(
    input: &mut dyn BufRead,
    size_hint: Option<u64>,
    sink: &mut dyn ExtentSink,
) -> Result<RawReport, FormatError> {
    decode_with_granule(input, size_hint, sink, ZERO_GRANULE)
}

/// [`decode`] with an explicit zero-detection granule (for measurements).
pub fn decode_with_granule(
    input: &mut dyn BufRead,
    size_hint: Option<u64>,
    sink: &mut dyn ExtentSink,
    granule: usize,
) -> Result<RawReport, FormatError> {
    let mut dec = RawDecoder::new(size_hint).granule(granule);
    super::drive(&mut dec, input, None, &PlanOptions::default(), sink)?;
    Ok(dec.report)
}

/// The raw "decoder": the stream is the disk.
///
/// The image is scanned where the input buffers it (over HTTP, the network
/// chunk itself), so data is copied only once, by the sink. Granules are
/// aligned to guest offsets whatever the slices: a granule split between
/// two slices is judged on both halves, without copying either (see
/// [`Scanner`]).
///
/// With a size (the image size, when known) it calls `set_virtual_size`
/// first and fails if the stream is shorter or longer; nothing beyond the
/// size ever reaches the sink.
///
/// With [`RawDecoder::hold_tail`], the last 512 bytes are held back until
/// the stream ends, then checked for a trailer (`format::table::identify_tail`):
/// a fixed VHD's footer is checked and kept out of the disk (the stream was
/// a fixed VHD: see `format::vpc::finish_held`), and a DMG is refused. That
/// is how a stream that could not be checked up front (stdin, a wrapper,
/// HTTP without ranges) is kept from writing a footer into the disk. Such a
/// stream announces no size, even a known one: it is the disk's size only
/// if no footer ends it, which is known only at the end.
pub struct RawDecoder {
    size: Option<u64>,
    scanner: Scanner,
    announced: bool,
    /// Bytes passed to the scanner.
    pos: u64,
    /// The held-back last bytes, when holding.
    tail: Option<Vec<u8>>,
    /// Whether the last bytes are held back (and the size not announced).
    holding: bool,
    report: RawReport,
}

impl RawDecoder {
    /// A raw stream of `size` bytes, when known.
    pub fn new(size: Option<u64>) -> RawDecoder {
        RawDecoder {
            size,
            scanner: Scanner::new(ZERO_GRANULE),
            announced: false,
            pos: 0,
            tail: None,
            holding: false,
            report: RawReport::default(),
        }
    }

    /// Uses `granule` for zero detection (clamped to 512 B..1 MiB).
    pub fn granule(mut self, granule: usize) -> RawDecoder {
        self.scanner = Scanner::new(granule.clamp(512, MAX_GRANULE));
        self
    }

    /// Holds the last [`TAIL_LEN`] bytes back and checks them for a trailer.
    pub fn hold_tail(mut self) -> RawDecoder {
        self.tail = Some(Vec::with_capacity(2 * TAIL_LEN));
        self.holding = true;
        self
    }

    /// What the pass saw so far.
    pub fn report(&self) -> &RawReport {
        &self.report
    }

    /// Announces the size, once, unless the tail is held back.
    fn announce(&mut self, sink: &mut dyn ExtentSink) -> Result<(), SinkError> {
        if !self.announced {
            self.announced = true;
            if let (Some(n), false) = (self.size, self.holding) {
                sink.set_virtual_size(round_up_sector(n))?;
            }
        }
        Ok(())
    }

    /// The held tail is a fixed VHD footer: the bytes before it were the
    /// disk, and the footer decides its size.
    fn finish_fixed_vhd(
        &mut self,
        tail: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<DecodeReport, FormatError> {
        self.scanner.finish(sink, &mut self.report)?;
        let data_len = self.pos;
        if let Some(n) = self.size {
            let got = data_len + tail.len() as u64;
            if got < n {
                return Err(RawError::Truncated { got, size: n }.into());
            }
        }
        let virtual_size = super::vpc::finish_held(tail, data_len, sink)?;
        self.report.bytes_read = data_len + tail.len() as u64;
        self.report.data_bytes += virtual_size.min(self.report.bytes_read) - data_len;
        self.report.zero_bytes += virtual_size.saturating_sub(self.report.bytes_read);
        Ok(DecodeReport {
            virtual_size,
            ..DecodeReport::default()
        })
    }

    /// Scans `bytes` (the next ones of the disk), within the announced size.
    fn scan(&mut self, bytes: &[u8], sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let take = match self.size {
            Some(n) => usize::try_from(n.saturating_sub(self.pos))
                .map_or(bytes.len(), |r| r.min(bytes.len())),
            None => bytes.len(),
        };
        let slice = bytes.get(..take).unwrap_or_default();
        self.scanner.feed(slice, self.pos, sink, &mut self.report)?;
        self.pos += take as u64;
        if take < bytes.len() {
            // `pos` reached the announced size and bytes keep coming.
            return Err(RawError::TooLong(self.size.unwrap_or(self.pos)).into());
        }
        Ok(())
    }
}

impl Decoder for RawDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        self.announce(sink)?;
        let Some(mut tail) = self.tail.take() else {
            self.scan(chunk, sink)?;
            return Ok(Feed::Done);
        };
        // Everything but the last TAIL_LEN bytes seen so far goes on:
        // first from the held bytes, then from the chunk.
        let total = tail.len() + chunk.len();
        let pass = total.saturating_sub(TAIL_LEN);
        let from_tail = pass.min(tail.len());
        let from_chunk = pass - from_tail;
        let r = self
            .scan(tail.get(..from_tail).unwrap_or_default(), sink)
            .and_then(|()| self.scan(chunk.get(..from_chunk).unwrap_or_default(), sink));
        tail.drain(..from_tail);
        tail.extend_from_slice(chunk.get(from_chunk..).unwrap_or_default());
        self.tail = Some(tail);
        r.map(|()| Feed::Done)
    }

    fn finish(&mut self, sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        self.announce(sink)?;
        if let Some(tail) = self.tail.take() {
            match table::identify_tail(&tail) {
                Some(Trailer::Dmg) => return Err(table::dmg_refusal().into()),
                Some(Trailer::VhdFooter) => return self.finish_fixed_vhd(&tail, sink),
                None => self.scan(&tail, sink)?,
            }
        }
        self.scanner.finish(sink, &mut self.report)?;
        let pos = self.pos;
        if pos < SECTOR {
            return Err(RawError::TooShort(pos).into());
        }
        self.report.bytes_read = pos;
        if let Some(n) = self.size {
            if pos < n {
                return Err(RawError::Truncated { got: pos, size: n }.into());
            }
        }
        // qemu's raw driver rounds a disk up to whole sectors; so does the oracle
        // (`qemu-img convert -O raw`), so the tail of a partial sector reads as zeros.
        let padded = round_up_sector(pos);
        if padded > pos {
            sink.zero(pos, padded - pos)?;
            self.report.zero_bytes += padded - pos;
        }
        Ok(DecodeReport {
            virtual_size: padded,
            ..DecodeReport::default()
        })
    }

    fn info(&self) -> Option<ImageInfo> {
        self.size.map(|n| ImageInfo {
            format: Format::Raw,
            virtual_size: Some(round_up_sector(n)),
            cluster_size: None,
            format_specific: None,
        })
    }
}

/// The sector size raw images are rounded up to.
pub const SECTOR: u64 = 512;

fn round_up_sector(n: u64) -> u64 {
    n.div_ceil(SECTOR).saturating_mul(SECTOR)
}

/// Splits the stream into data and zero extents, granule by granule, over
/// slices of any length.
///
/// A granule is zero when all its bytes are. While a granule is all zero so
/// far, its bytes only extend the pending zero run (no copy: they are
/// zeros). If data shows up later in the same granule, the zero start of the
/// granule is passed on as data from [`ZEROS`], so the granule stays one
/// data extent; zero runs and data runs never alternate inside a granule.
struct Scanner {
    granule: u64,
    /// Zero bytes not reported yet: whole zero granules, plus the all-zero
    /// start of the current granule.
    zero_run: ZeroRun,
    /// The current granule has shown data: the rest of it is data.
    granule_has_data: bool,
}

impl Scanner {
    fn new(granule: usize) -> Self {
        Scanner {
            granule: granule as u64,
            zero_run: ZeroRun::new(),
            granule_has_data: false,
        }
    }

    /// Scans `chunk`, which starts at guest offset `pos`.
    fn feed(
        &mut self,
        chunk: &[u8],
        pos: u64,
        sink: &mut dyn ExtentSink,
        report: &mut RawReport,
    ) -> Result<(), SinkError> {
        // Start of the pending data run within `chunk`.
        let mut data_from: Option<usize> = None;
        let mut at = 0usize;
        while at < chunk.len() {
            let here = pos + at as u64;
            let into = here % self.granule;
            if into == 0 {
                self.granule_has_data = false;
            }
            let step = usize::try_from(self.granule - into).unwrap_or(usize::MAX);
            let end = at + step.min(chunk.len() - at);
            let piece = &chunk[at..end];
            if self.granule_has_data {
                data_from.get_or_insert(at);
            } else if is_zero(piece) {
                if let Some(from) = data_from.take() {
                    emit_data(sink, pos + from as u64, &chunk[from..at], report)?;
                }
                let len = piece.len() as u64;
                if let Some(done) = self.zero_run.add(here..here + len) {
                    emit_zero(sink, done.start, done.end - done.start, report)?;
                }
            } else {
                self.granule_has_data = true;
                if let Some(run) = self.zero_run.take() {
                    // The part of the run inside this granule becomes data.
                    let granule_start = here - into;
                    let cut = run.start.max(granule_start).min(run.end);
                    if cut > run.start {
                        emit_zero(sink, run.start, cut - run.start, report)?;
                    }
                    let mut at_zero = cut;
                    while at_zero < run.end {
                        let n = (run.end - at_zero).min(ZEROS.len() as u64);
                        let zeros = ZEROS.get(..n as usize).unwrap_or_default();
                        emit_data(sink, at_zero, zeros, report)?;
                        at_zero += n;
                    }
                }
                data_from.get_or_insert(at);
            }
            at = end;
        }
        if let Some(from) = data_from {
            emit_data(sink, pos + from as u64, &chunk[from..], report)?;
        }
        Ok(())
    }

    /// Reports the zero run still pending at the end of the stream.
    fn finish(
        &mut self,
        sink: &mut dyn ExtentSink,
        report: &mut RawReport,
    ) -> Result<(), SinkError> {
        match self.zero_run.take() {
            Some(r) => emit_zero(sink, r.start, r.end - r.start, report),
            None => Ok(()),
        }
    }
}

fn emit_data(
    sink: &mut dyn ExtentSink,
    offset: u64,
    data: &[u8],
    report: &mut RawReport,
) -> Result<(), SinkError> {
    report.data_bytes += data.len() as u64;
    sink.data(offset, data)
}

fn emit_zero(
    sink: &mut dyn ExtentSink,
    offset: u64,
    len: u64,
    report: &mut RawReport,
) -> Result<(), SinkError> {
    report.zero_bytes += len;
    sink.zero(offset, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Read};

    /// Records what a decoder reports and rebuilds the image from it.
    #[derive(Default)]
    struct Recorder {
        vsize: Option<u64>,
        calls: Vec<(u64, u64, bool)>,
        image: Vec<u8>,
    }

    impl ExtentSink for Recorder {
        fn set_virtual_size(&mut self, size: u64) -> Result<(), SinkError> {
            self.vsize = Some(size);
            Ok(())
        }
        fn data(&mut self, off: u64, data: &[u8]) -> Result<(), SinkError> {
            self.calls.push((off, data.len() as u64, true));
            let end = off as usize + data.len();
            if self.image.len() < end {
                self.image.resize(end, 0xEE);
            }
            self.image[off as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn zero(&mut self, off: u64, len: u64) -> Result<(), SinkError> {
            self.calls.push((off, len, false));
            let end = (off + len) as usize;
            if self.image.len() < end {
                self.image.resize(end, 0xEE);
            }
            self.image[off as usize..end].fill(0);
            Ok(())
        }
    }

    /// A reader that returns at most `step` bytes per call, to exercise refills.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    const READ_CHUNK: usize = 1 << 20;

    /// `data` in slices of at most `step` bytes, buffered `capacity` at a time.
    fn dribbled(data: &[u8], step: usize, capacity: usize) -> io::BufReader<Dribble<'_>> {
        io::BufReader::with_capacity(capacity, Dribble { data, step })
    }

    /// Calls with adjacent data calls merged (the sink's writer coalesces
    /// them; a data run is cut wherever the input's slices end).
    fn merged(calls: &[(u64, u64, bool)]) -> Vec<(u64, u64, bool)> {
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        for &(off, len, data) in calls {
            match out.last_mut() {
                Some(last) if data && last.2 && last.0 + last.1 == off => last.1 += len,
                _ => out.push((off, len, data)),
            }
        }
        out
    }

    fn sample() -> Vec<u8> {
        // 3 MiB + 1024: data, a long zero run crossing a chunk boundary, a
        // single non-zero byte inside a granule, and a tail shorter than a granule.
        let mut img = vec![0u8; 3 * READ_CHUNK + 1024];
        for (i, b) in img[..200_000].iter_mut().enumerate() {
            *b = (i % 253) as u8 + 1;
        }
        img[2 * READ_CHUNK + 5] = 9;
        img[3 * READ_CHUNK + 999] = 7;
        img
    }

    #[test]
    fn is_zero_finds_any_nonzero_byte() {
        let mut v = vec![0u8; 4096 + 17];
        assert!(is_zero(&v));
        assert!(is_zero(&[]));
        for i in [0, 15, 16, 255, 256, 4095, 4096, 4096 + 16] {
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i}");
            v[i] = 0;
        }
    }

    #[test]
    fn round_trips_and_reports_zero_runs() {
        let img = sample();
        let mut rec = Recorder::default();
        let mut input = dribbled(&img, 100_003, READ_CHUNK);
        let rep = decode(&mut input, None, &mut rec).expect("decode");
        assert_eq!(rec.image, img);
        assert_eq!(rec.vsize, None);
        assert_eq!(rep.bytes_read, img.len() as u64);
        assert_eq!(rep.data_bytes + rep.zero_bytes, img.len() as u64);
        let g = ZERO_GRANULE as u64;
        let calls = merged(&rec.calls);
        // Data [0, 4g) (200_000 bytes spans four granules; the slice ends
        // at 100_003 and 200_006 cut it, and the granule past 200_000 is
        // data although its second slice is all zero).
        assert_eq!(calls[0], (0, 4 * g, true));
        // One zero call up to the granule holding the byte at 2 MiB + 5,
        // although the run crosses many slice boundaries.
        assert_eq!(calls[1], (4 * g, 2 * READ_CHUNK as u64 - 4 * g, false));
        // That granule straddles the slice boundary at 2_100_063; its
        // second half is zero but still data.
        assert_eq!(calls[2], (2 * READ_CHUNK as u64, g, true));
        assert_eq!(rep.data_bytes, 5 * g + 1024);
        // Every guest byte is reported exactly once, in order.
        let mut next = 0;
        for &(off, len, _) in &rec.calls {
            assert_eq!(off, next);
            next += len;
        }
        assert_eq!(next, img.len() as u64);
    }

    #[test]
    fn a_granule_split_between_slices_is_judged_whole() {
        // Granule 1 is zero up to a byte in its last quarter; the slices cut
        // it in four. Granule 2 is zero, cut the same way.
        let g = ZERO_GRANULE;
        let mut img = vec![0u8; 3 * g];
        img[..10].fill(1);
        img[g + 3 * g / 4 + 1] = 2;
        for step in [g / 4, g / 4 + 7, 4096, 3] {
            let mut rec = Recorder::default();
            let mut input = dribbled(&img, step, g);
            decode(&mut input, None, &mut rec).expect("decode");
            assert_eq!(rec.image, img, "step {step}");
            let g = g as u64;
            assert_eq!(
                merged(&rec.calls),
                vec![(0, 2 * g, true), (2 * g, g, false)],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_zero_start_longer_than_the_zero_buffer_becomes_data() {
        // A 256 KiB granule whose first 200 KiB are zero, then data.
        let granule = 4 * ZERO_GRANULE;
        let mut img = vec![0u8; 2 * granule];
        img[200 << 10] = 3;
        let mut rec = Recorder::default();
        let mut input = dribbled(&img, 50_001, granule);
        decode_with_granule(&mut input, None, &mut rec, granule).expect("decode");
        assert_eq!(rec.image, img);
        let g = granule as u64;
        assert_eq!(merged(&rec.calls), vec![(0, g, true), (g, g, false)]);
    }

    #[test]
    fn size_hint_is_announced_and_enforced() {
        let img = sample();
        let n = img.len() as u64;
        let mut rec = Recorder::default();
        decode(&mut &img[..], Some(n), &mut rec).expect("exact");
        assert_eq!(rec.vsize, Some(n));
        assert_eq!(rec.image, img);

        let mut rec = Recorder::default();
        let err = decode(&mut &img[..], Some(n + 1), &mut rec).expect_err("short");
        assert!(
            matches!(err, FormatError::Raw(RawError::Truncated { got, size }) if got == n && size == n + 1),
            "{err}"
        );

        let mut rec = Recorder::default();
        let err = decode(&mut &img[..], Some(n - 10), &mut rec).expect_err("long");
        assert!(
            matches!(err, FormatError::Raw(RawError::TooLong(s)) if s == n - 10),
            "{err}"
        );
        assert!(
            rec.image.len() as u64 <= n - 10,
            "nothing past the hint reaches the sink"
        );
    }

    #[test]
    fn input_shorter_than_a_sector_is_refused() {
        for len in [0usize, 3, 511] {
            let img = vec![1u8; len];
            let mut rec = Recorder::default();
            let err = decode(&mut &img[..], None, &mut rec).expect_err("too small");
            assert!(
                matches!(err, FormatError::Raw(RawError::TooShort(l)) if l == len as u64),
                "{err}"
            );
        }
    }

    #[test]
    fn partial_last_sector_is_padded_with_zeros() {
        let img = vec![5u8; 1000];
        let mut rec = Recorder::default();
        let rep = decode(&mut &img[..], Some(1000), &mut rec).expect("decode");
        assert_eq!(rec.vsize, Some(1024));
        assert_eq!(rep.bytes_read, 1000);
        assert_eq!(&rec.image[..1000], &img[..]);
        assert_eq!(rec.image.len(), 1024);
        assert!(rec.image[1000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn read_errors_say_so() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "peer went away",
                ))
            }
        }
        let mut rec = Recorder::default();
        let err = decode(&mut io::BufReader::new(Broken), None, &mut rec).expect_err("fails");
        assert!(
            matches!(&err, FormatError::Read(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{err}"
        );
    }

    /// A stream whose tail is a footer or trailer: the footer never reaches
    /// the sink, and the refusal names the format.
    #[test]
    fn a_held_tail_is_checked_for_trailers() {
        let mut img = vec![7u8; 4096];
        let mut rec = Recorder::default();
        let mut dec = RawDecoder::new(None).hold_tail();
        crate::format::drive(
            &mut dec,
            &mut dribbled(&img, 999, 4096),
            None,
            &PlanOptions::default(),
            &mut rec,
        )
        .expect("plain data");
        assert_eq!(rec.image, img, "held bytes are written at the end");

        img[4096 - 512..4096 - 504].copy_from_slice(b"koly\0\0\0\x04");
        let mut rec = Recorder::default();
        let mut dec = RawDecoder::new(None).hold_tail();
        let err = crate::format::drive(
            &mut dec,
            &mut dribbled(&img, 100, 4096),
            None,
            &PlanOptions::default(),
            &mut rec,
        )
        .expect_err("dmg");
        assert!(err.to_string().starts_with("DMG"), "{err}");
        assert!(
            rec.image.len() <= 4096 - 512,
            "the trailer never reached the sink"
        );
    }

    /// A stream that turns out to be a fixed VHD: the footer is checked and
    /// kept out of the disk, which the footer sizes as qemu does (its bytes
    /// and zeros when it says more than the data). A known stream length is
    /// not announced as the size: it includes the footer.
    #[test]
    fn a_held_fixed_vhd_footer_is_not_part_of_the_disk() {
        for (vsize, size_hint) in [(4096u64, None), (4096, Some(4608u64)), (8192, None)] {
            let mut img = vec![7u8; 4096];
            img.extend_from_slice(&crate::format::vpc::test_footer(
                b"qem2",
                (1, 1, 1),
                vsize,
                2,
            ));
            let mut rec = Recorder::default();
            let mut dec = RawDecoder::new(size_hint).hold_tail();
            let rep = crate::format::drive(
                &mut dec,
                &mut dribbled(&img, 333, 4096),
                None,
                &PlanOptions::default(),
                &mut rec,
            )
            .expect("fixed VHD");
            assert_eq!(rep.virtual_size, vsize);
            assert_eq!(rec.vsize, None, "no size announced while holding");
            let mut want = img.clone();
            want.resize(vsize as usize, 0);
            assert_eq!(rec.image, want);
        }
        // A corrupt footer is refused by name, not written.
        let mut img = vec![7u8; 4096];
        let mut f = crate::format::vpc::test_footer(b"qem2", (1, 1, 1), 4096, 2);
        f[200] = 1;
        img.extend_from_slice(&f);
        let mut rec = Recorder::default();
        let mut dec = RawDecoder::new(None).hold_tail();
        let err = crate::format::drive(
            &mut dec,
            &mut dribbled(&img, 1000, 4096),
            None,
            &PlanOptions::default(),
            &mut rec,
        )
        .expect_err("bad checksum");
        assert!(err.to_string().starts_with("vpc: footer checksum"), "{err}");
        assert!(rec.image.len() <= 4096);
    }
}
