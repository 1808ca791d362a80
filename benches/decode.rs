//! Micro benchmarks of the qcow2 decoder (no I/O, no target):
//! - `inflate_cluster` / `zstd_cluster`: one 64 KiB cluster decompressed with
//!   QEMU's acceptance rules (what every compressed cluster costs);
//! - `decode_*`: the whole decoder on an in-memory image made with qemu-img
//!   (64 MiB of mixed random, text, low-entropy and zero data), into a sink
//!   that only counts bytes. This is CPU cost per byte of image, not I/O.
//!
//! Run: `cargo bench --bench decode`. Needs qemu-img for the image benches.

// criterion_group! makes an undocumented public function.
#![allow(missing_docs)]

use std::io::Cursor;
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flate2::{Compress, Compression, FlushCompress};
use streamdisk::format::inflate::{Codec, Decompressor};
use streamdisk::format::qcow2::{decode, PlanOptions, SpillPolicy};
use streamdisk::testing::NullSink;

const CLUSTER: usize = 65536;

/// Half-compressible data, like a filesystem with binaries and text.
fn mixed(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut v = vec![0u8; n];
    for (i, chunk) in v.chunks_mut(CLUSTER).enumerate() {
        for (j, b) in chunk.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = match i % 4 {
                0 => x as u8,
                1 => b"streamdisk decodes qcow2 "[j % 25],
                2 => 0,
                _ => (x as u8) & 0x0f,
            };
        }
    }
    v
}

fn clusters(c: &mut Criterion) {
    let data = mixed(CLUSTER * 4);
    let cluster = &data[CLUSTER * 3..CLUSTER * 4];
    // Raw deflate as QEMU writes it (no zlib header).
    let mut z = Compress::new(Compression::default(), false);
    let mut deflated = Vec::with_capacity(CLUSTER * 2);
    z.compress_vec(cluster, &mut deflated, FlushCompress::Finish)
        .expect("deflate");
    let zst = zstd::bulk::compress(cluster, 3).expect("zstd");
    let mut out = vec![0u8; CLUSTER];
    let mut g = c.benchmark_group("cluster");
    g.throughput(Throughput::Bytes(CLUSTER as u64));
    let mut d = Decompressor::new(Codec::Deflate).expect("zlib");
    g.bench_function("inflate_cluster", |b| {
        b.iter(|| d.unit(&deflated, &mut out).expect("inflate"))
    });
    let mut d = Decompressor::new(Codec::Zstd).expect("zstd");
    g.bench_function("zstd_cluster", |b| {
        b.iter(|| d.unit(&zst, &mut out).expect("zstd"))
    });
    g.finish();
}

fn image(extra: &[&str]) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().ok()?;
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("img.qcow2");
    std::fs::write(&raw, mixed(64 << 20)).ok()?;
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .args(extra)
        .arg(&raw)
        .arg(&img)
        .status()
        .ok()?;
    st.success().then(|| std::fs::read(&img).ok()).flatten()
}

fn images(c: &mut Criterion) {
    let opts = PlanOptions {
        window: 4 << 20,
        spill: SpillPolicy::Forbid,
    };
    let cases: [(&str, &[&str]); 3] = [
        ("decode_plain", &[]),
        ("decode_zlib", &["-c"]),
        ("decode_zstd", &["-c", "-o", "compression_type=zstd"]),
    ];
    let mut g = c.benchmark_group("image");
    g.sample_size(10);
    for (name, args) in cases {
        let Some(bytes) = image(args) else {
            eprintln!("skipping {name}: qemu-img not available");
            continue;
        };
        g.throughput(Throughput::Bytes(64 << 20));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut sink = NullSink::default();
                decode(&mut Cursor::new(&bytes), None, &opts, &mut sink).expect("decode");
                sink.data_bytes + sink.zero_bytes
            })
        });
    }
    g.finish();
}

criterion_group!(benches, clusters, images);
criterion_main!(benches);
