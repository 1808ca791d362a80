//! Checksum cost: the `--checksum` tap over the bytes as received.
//!
//! `cargo bench --bench checksum` reads 16 MiB through the hashing tap for
//! every algorithm and through a plain reader (verification off), so the
//! difference is what verification costs per byte. sha2 picks its SHA-NI
//! backend at run time (cpufeatures); the bench prints whether this CPU has it,
//! since sha256 throughput differs several-fold between the two backends.

use std::hint::black_box;
use std::io::Read;

use criterion::{Criterion, Throughput};
use streamdisk::checksum::{Checksum, Verifier};

const LEN: usize = 16 << 20;

fn drain(mut r: impl Read, buf: &mut [u8]) -> usize {
    let mut total = 0;
    loop {
        match r.read(buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

fn bench(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    println!(
        "SHA-NI available: {}",
        std::arch::is_x86_feature_detected!("sha")
    );
    let data = vec![0x5au8; LEN];
    let mut buf = vec![0u8; 256 << 10];
    let mut g = c.benchmark_group("checksum_tap");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("off", |b| {
        b.iter(|| black_box(drain(&data[..], &mut buf)));
    });
    for (name, zeros) in [("md5", 32), ("sha1", 40), ("sha256", 64), ("sha512", 128)] {
        let expected: Checksum = format!("{name}:{}", "0".repeat(zeros))
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        g.bench_function(name, |b| {
            b.iter(|| {
                let v = Verifier::new(expected.clone());
                let n = drain(v.tap(&data[..]), &mut buf);
                black_box((n, v.verify().is_ok()))
            });
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
