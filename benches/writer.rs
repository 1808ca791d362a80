//! Micro benchmarks of the write side, plus an opt-in tuning sweep.
//!
//! `cargo bench --bench writer` runs the criterion groups:
//! - `zero_detect`: [`is_zero`] against simpler alternatives on 64 KiB blocks
//!   (all zero: a full scan; non-zero first/last byte: early exit);
//! - `raw_decode`: the raw decoder into a null sink at several zero-detection
//!   granules (the per-extent overhead);
//! - `aligned_pool`: a pool round trip and the copy into an aligned buffer,
//!   against allocating a fresh aligned buffer per block.
//!
//! With `STREAMDISK_TUNE=PATH` set (a scratch file path or a block device that
//! may be overwritten), it instead writes `STREAMDISK_TUNE_MIB` MiB (default
//! 512) of random data through the real target for each buffer size and queue
//! depth, `STREAMDISK_TUNE_ROUNDS` times (default 3) interleaved, and prints
//! the median MiB/s: how the defaults in `src/target/mod.rs` were chosen.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use rand::{RngCore, SeedableRng};
use streamdisk::format::raw::{decode_with_granule, is_zero};
use streamdisk::format::ExtentSink;
use streamdisk::target::pool::{AlignedBuf, BufferPool};
use streamdisk::target::{Depth, Target, TargetOptions};
use streamdisk::testing::NullSink;

/// Byte by byte, as a baseline.
fn is_zero_bytewise(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

/// 8-byte words folded with OR in 1 KiB blocks, stopping at the first
/// non-zero block.
fn is_zero_u64_blocks(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(1024);
    for block in &mut blocks {
        let acc = block.chunks_exact(8).fold(0u64, |acc, w| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            acc | u64::from_ne_bytes(a)
        });
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// 8-byte words folded with OR over the whole buffer (no early exit).
fn is_zero_u64_fold(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(8);
    let acc = (&mut words).fold(0u64, |acc, w| {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        acc | u64::from_ne_bytes(a)
    });
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

fn zero_detect(c: &mut Criterion) {
    let mut g = c.benchmark_group("zero_detect");
    let len = 64 << 10;
    let zero = vec![0u8; len];
    let mut first = vec![0u8; len];
    first[0] = 1;
    let mut last = vec![0u8; len];
    last[len - 1] = 1;
    g.throughput(Throughput::Bytes(len as u64));
    type ZeroFn = fn(&[u8]) -> bool;
    let impls: [(&str, ZeroFn); 4] = [
        ("is_zero", is_zero),
        ("u64_blocks_1k", is_zero_u64_blocks),
        ("bytewise", is_zero_bytewise),
        ("u64_fold", is_zero_u64_fold),
    ];
    for (name, f) in impls {
        for (case, buf) in [
            ("all_zero", &zero),
            ("first_byte", &first),
            ("last_byte", &last),
        ] {
            g.bench_with_input(BenchmarkId::new(name, case), buf, |b, buf| {
                b.iter(|| f(black_box(buf)))
            });
        }
    }
    g.finish();
}

/// 32 MiB alternating 4 KiB data and zero runs of varying length, like a
/// freshly made filesystem image.
fn mixed_image() -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut img = vec![0u8; 32 << 20];
    let mut off = 0usize;
    let mut i = 0usize;
    while off < img.len() {
        let data = 4096 * (1 + i % 7);
        let end = (off + data).min(img.len());
        rng.fill_bytes(&mut img[off..end]);
        off = end + 4096 * (i % 13) * 3;
        i += 1;
    }
    img
}

fn raw_decode(c: &mut Criterion) {
    let img = mixed_image();
    let mut g = c.benchmark_group("raw_decode");
    g.throughput(Throughput::Bytes(img.len() as u64));
    g.sample_size(10);
    for granule in [4usize << 10, 64 << 10, 1 << 20] {
        g.bench_with_input(
            BenchmarkId::from_parameter(granule),
            &granule,
            |b, &granule| {
                b.iter(|| {
                    let mut sink = NullSink::default();
                    decode_with_granule(&mut &img[..], None, &mut sink, granule).expect("decode");
                    sink.data_bytes + sink.zero_bytes
                })
            },
        );
    }
    g.finish();
}

fn aligned_pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("aligned_pool");
    let size = 1 << 20;
    let src = vec![7u8; size];
    g.throughput(Throughput::Bytes(size as u64));
    let pool = BufferPool::new(5, size, 4096);
    g.bench_function("pool_get_fill_put", |b| {
        b.iter(|| {
            let mut buf = pool.get().expect("buffer");
            buf.as_mut_slice().copy_from_slice(&src);
            pool.put(black_box(buf));
        })
    });
    g.bench_function("fresh_alloc_fill", |b| {
        b.iter(|| {
            let mut buf = AlignedBuf::new(size, 4096);
            buf.as_mut_slice().copy_from_slice(&src);
            black_box(buf);
        })
    });
    g.finish();
}

/// Writes `mib` MiB of random data in 64 KiB extents (qcow2's default
/// cluster) through a target at `path` with each setting, `rounds` times
/// interleaved; prints the median MiB/s (including the final fdatasync) and the
/// spread.
fn tune(path: &str, mib: u64, rounds: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut chunk = vec![0u8; 8 << 20];
    rng.fill_bytes(&mut chunk);
    let total = mib << 20;
    let extent = 64 << 10;
    let settings: Vec<(usize, usize)> = [256usize << 10, 1 << 20, 2 << 20, 4 << 20]
        .into_iter()
        .flat_map(|b| [1usize, 2, 4, 8].into_iter().map(move |d| (b, d)))
        .collect();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    for _ in 0..rounds {
        for (i, &(buffer_size, queue_depth)) in settings.iter().enumerate() {
            let opts = TargetOptions {
                buffer_size,
                depth: Depth::Fixed(queue_depth),
                ..TargetOptions::default()
            };
            let started = Instant::now();
            let mut t = Target::open(path.as_ref(), &opts).expect("open tuning target");
            t.set_virtual_size(total).expect("virtual size");
            let mut off = 0u64;
            while off < total {
                let at = (off as usize) % chunk.len();
                t.data(off, &chunk[at..at + extent]).expect("write");
                off += extent as u64;
            }
            t.finish().expect("finish");
            results[i].push(mib as f64 / started.elapsed().as_secs_f64());
        }
    }
    println!("tuning on {path}: {mib} MiB per run, 64 KiB extents, {rounds} rounds interleaved");
    println!(
        "{:>10} {:>6} {:>12} {:>8} {:>8}",
        "buffer", "depth", "median MiB/s", "min", "max"
    );
    for (&(b, d), r) in settings.iter().zip(results.iter_mut()) {
        r.sort_by(|a, b| a.total_cmp(b));
        let (min, max) = (
            r.first().copied().unwrap_or(0.0),
            r.last().copied().unwrap_or(0.0),
        );
        let median = r.get(r.len() / 2).copied().unwrap_or(0.0);
        println!("{b:>10} {d:>6} {median:>12.0} {min:>8.0} {max:>8.0}");
    }
}

fn main() {
    if let Ok(path) = std::env::var("STREAMDISK_TUNE") {
        let mib = std::env::var("STREAMDISK_TUNE_MIB")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(512);
        let rounds = std::env::var("STREAMDISK_TUNE_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        tune(&path, mib, rounds);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    zero_detect(&mut c);
    raw_decode(&mut c);
    aligned_pool(&mut c);
    c.final_summary();
}
