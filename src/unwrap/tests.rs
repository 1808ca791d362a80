//! Round trips through every wrapper, and the failure cases that must not
//! pass silently (truncation, corruption, limits).

use std::io::{Read, Write};

use super::*;

/// Deterministic, somewhat compressible test data.
fn sample(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            if i % 4096 < 2048 {
                0
            } else {
                (state >> 24) as u8
            }
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn xz(data: &[u8], preset: u32) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), preset);
    enc.write_all(data).expect("xz");
    enc.finish().expect("xz")
}

fn zstd_frame(data: &[u8], window_log: u32) -> Vec<u8> {
    let mut enc = ::zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
    enc.window_log(window_log).expect("window");
    // As the zstd CLI does by default; without it, corrupt literals are
    // undetectable by design of the format.
    enc.include_checksum(true).expect("checksum");
    enc.write_all(data).expect("zstd");
    enc.finish().expect("zstd")
}

fn bzip2(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = ::bzip2::write::BzEncoder::new(Vec::new(), ::bzip2::Compression::new(level));
    enc.write_all(data).expect("bzip2");
    enc.finish().expect("bzip2")
}

fn decode(bytes: Vec<u8>) -> (Option<Wrapper>, std::io::Result<Vec<u8>>) {
    use crate::format::table::{identify, Signature};
    let wrapper = match identify(&bytes) {
        Signature::Wrapper(w) => Some(w),
        _ => None,
    };
    let input: Box<dyn BufRead + Send> = Box::new(std::io::Cursor::new(bytes));
    let mut reader = match wrapper {
        Some(w) => match decoder(w, input) {
            Ok(r) => r,
            Err(e) => return (wrapper, Err(e)),
        },
        None => input,
    };
    let mut out = Vec::new();
    let result = reader.read_to_end(&mut out).map(|_| out);
    (wrapper, result)
}

#[test]
fn gzip_round_trip_multi_member() {
    let a = sample(300_000);
    let b = sample(70_001);
    let mut bytes = gzip(&a);
    bytes.extend(gzip(&b));
    let (wrapper, out) = decode(bytes);
    assert_eq!(wrapper.expect("a wrapper"), Wrapper::Gzip);
    let mut expected = a;
    expected.extend(b);
    assert_eq!(out.expect("gzip"), expected);
}

#[test]
fn xz_round_trip_concatenated() {
    let a = sample(300_000);
    let b = sample(12_345);
    let mut bytes = xz(&a, 1);
    bytes.extend(xz(&b, 6));
    let (wrapper, out) = decode(bytes);
    assert_eq!(wrapper.expect("a wrapper"), Wrapper::Xz);
    let mut expected = a;
    expected.extend(b);
    assert_eq!(out.expect("xz"), expected);
}

#[test]
fn zstd_round_trip_multi_frame() {
    let a = sample(300_000);
    let b = sample(999);
    let mut bytes = zstd_frame(&a, 20);
    bytes.extend(zstd_frame(&b, 20));
    let (wrapper, out) = decode(bytes);
    assert_eq!(wrapper.expect("a wrapper"), Wrapper::Zstd);
    let mut expected = a;
    expected.extend(b);
    assert_eq!(out.expect("zstd"), expected);
}

#[test]
fn bzip2_round_trip_multi_stream() {
    // Level 1 is 100 kB blocks: several blocks per stream, as pbzip2
    // writes several streams per file.
    let a = sample(300_000);
    let b = sample(4_321);
    let mut bytes = bzip2(&a, 1);
    bytes.extend(bzip2(&b, 9));
    bytes.extend(bzip2(&[], 9));
    let (wrapper, out) = decode(bytes);
    assert_eq!(wrapper.expect("a wrapper"), Wrapper::Bzip2);
    let mut expected = a;
    expected.extend(b);
    assert_eq!(out.expect("bzip2"), expected);
}

#[test]
fn bzip2_garbage_after_a_stream_fails() {
    let mut bytes = bzip2(&sample(10_000), 9);
    bytes.extend_from_slice(b"not bzip2 at all");
    let (_, out) = decode(bytes);
    let err = out.expect_err("trailing garbage");
    assert!(err.to_string().starts_with("bzip2: "), "{err}");
}

/// Every cut point class: inside the header, inside the data, inside the
/// trailer. None may decode "successfully". (The first cut keeps 10 bytes:
/// bzip2 is recognised by its 4-byte header and the block magic after it.)
#[test]
fn truncated_streams_fail() {
    let data = sample(200_000);
    for (name, bytes) in [
        ("gzip", gzip(&data)),
        ("xz", xz(&data, 1)),
        ("zstd", zstd_frame(&data, 20)),
        ("bzip2", bzip2(&data, 1)),
    ] {
        for cut in [
            10,
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len() - 9,
            bytes.len() - 1,
        ] {
            let (_, out) = decode(bytes[..cut].to_vec());
            let err = out.expect_err(&format!("{name} cut at {cut} of {} must fail", bytes.len()));
            assert!(!err.to_string().is_empty());
        }
    }
}

#[test]
fn corrupt_streams_fail() {
    let data = sample(200_000);
    for (name, mut bytes) in [
        ("gzip", gzip(&data)),
        ("xz", xz(&data, 1)),
        ("zstd", zstd_frame(&data, 20)),
        ("bzip2", bzip2(&data, 1)),
    ] {
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let (_, out) = decode(bytes);
        assert!(out.is_err(), "{name}: corruption must be detected");
    }
}

#[test]
fn xz_memory_limit_is_named() {
    // Preset 6 uses an 8 MiB dictionary: more than a 1 MiB limit.
    let bytes = xz(&sample(10_000), 6);
    let mut reader = xz::XzReader::new(std::io::Cursor::new(bytes), 1 << 20).expect("decoder");
    let err = reader
        .read_to_end(&mut Vec::new())
        .expect_err("over the limit");
    assert!(
        err.to_string().contains("1 MiB decoder memory limit"),
        "{err}"
    );
}

#[test]
fn zstd_window_limit_is_named() {
    let bytes = zstd_frame(&sample(10_000), 24);
    let mut reader = zst::ZstdReader::new(std::io::Cursor::new(bytes), 20).expect("decoder");
    let err = reader
        .read_to_end(&mut Vec::new())
        .expect_err("over the limit");
    assert!(err.to_string().contains("1 MiB limit"), "{err}");
}

#[test]
fn unwrapped_stream_can_be_peeked() {
    let data = sample(10_000);
    let reader = decoder(Wrapper::Gzip, Box::new(std::io::Cursor::new(gzip(&data)))).expect("gzip");
    let mut peek = crate::io::PeekReader::new(reader);
    assert_eq!(peek.peek(512).expect("peek"), &data[..512]);
    let mut out = Vec::new();
    peek.read_to_end(&mut out).expect("read");
    assert_eq!(out, data);
}

#[test]
fn truncation_messages_name_the_wrapper() {
    let data = sample(100_000);
    for (name, bytes) in [
        ("gzip", gzip(&data)),
        ("xz", xz(&data, 1)),
        ("zstd", zstd_frame(&data, 20)),
        ("bzip2", bzip2(&data, 1)),
    ] {
        let cut = bytes.len() / 2;
        let (_, out) = decode(bytes[..cut].to_vec());
        let err = out.expect_err("truncated");
        assert_eq!(
            err.to_string(),
            format!("{name}: the compressed stream is truncated")
        );
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
