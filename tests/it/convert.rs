//! Issue 2 section 7: conversions compared byte for byte with `qemu-img convert -O raw`.
//!
//! Every image is made at test time (qemu-img, qemu-io, and a deterministic raw
//! generator), then read from a file, from stdin (a pipe) and over HTTP with Range support,
//! and written to a new file, to a file full of stale data, and to a loop block device
//! (root only). The matrix runner (tests/common/matrix.rs) lists every failing pair.
//!
//! Images stay small (a few MiB) so the whole file runs in well under two minutes.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::matrix::{assert_no_failures, run_matrix, SourceKind, TargetKind};
use crate::common::{
    make_raw, qcow2, qcow2_create, qcow2_from_raw, qemu_io, qemu_raw, wrap, Fill, Streamdisk,
    Wrapper,
};

const MIB: u64 = 1 << 20;

/// A 4 MiB raw disk mixing incompressible data, compressible text, explicit zeros, holes,
/// unaligned region boundaries and data in the very last bytes.
/// Smaller sizes keep the regions that fit.
fn mixed_raw(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let mut regions: Vec<(u64, u64, Fill)> = [
        (0, 256 * 1024, Fill::Random(1)),
        (512 * 1024, 256 * 1024, Fill::Text),
        (MIB + 4096 + 17, 100_000, Fill::Random(2)),
        (2 * MIB, 64 * 1024, Fill::Byte(0)),
        (3 * MIB - 333, 70_000, Fill::Text),
    ]
    .into_iter()
    .filter(|&(off, len, _)| off + len <= size - 4096)
    .collect();
    regions.push((size - 4096, 4096, Fill::Random(3)));
    make_raw(&p, size, &regions);
    p
}

/// Runs the core matrix (file/stdin/HTTP into new file, stale file and loop device).
fn check(label: &str, image: &Path) {
    let oracle = qemu_raw(image);
    let failures = run_matrix(
        label,
        image,
        &oracle,
        &SourceKind::CORE,
        &TargetKind::ALL,
        &[],
    );
    assert_no_failures(&failures);
}

/// qcow2 made by `qemu-img convert` from the mixed raw disk, at every cluster size,
/// compressed and not.
#[test]
fn qcow2_cluster_sizes_uncompressed() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "mixed.raw", 4 * MIB);
    for cs in [512u64, 4096, 65536, 2 * MIB] {
        let img = dir.path().join(format!("c{cs}.qcow2"));
        qcow2_from_raw(&raw, &img, false, &format!("cluster_size={cs}"));
        assert_eq!(qcow2::read_header(&img).cluster_size(), cs);
        check(&format!("qcow2 cluster {cs}"), &img);
    }
}

#[test]
fn qcow2_cluster_sizes_compressed() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "mixed.raw", 4 * MIB);
    for cs in [4096u64, 65536, 2 * MIB] {
        let img = dir.path().join(format!("c{cs}z.qcow2"));
        qcow2_from_raw(&raw, &img, true, &format!("cluster_size={cs}"));
        let lay = qcow2::layout(&img);
        assert!(
            !lay.compressed_offsets.is_empty(),
            "qemu-img -c made no compressed clusters"
        );
        check(&format!("compressed qcow2 cluster {cs}"), &img);
    }
}

/// Mostly unallocated: a 64 MiB disk with a few writes, v3 zero clusters, and data in
/// the very last 512 bytes.
#[test]
fn qcow2_sparse_with_data_at_the_end() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("sparse.qcow2");
    qcow2_create(&img, 64 * MIB, "");
    qemu_io(
        &img,
        &[
            "write -P 0x11 1M 64k",
            "write -P 0x22 40M 4k",
            "write -P 0x44 50M 256k",
            "write -z 50M 128k",
            "write -P 0x33 67108352 512",
        ],
    );
    check("sparse qcow2", &img);
}

/// Virtual sizes that are not a multiple of the cluster size (qcow2 rounds to 512).
#[test]
fn qcow2_odd_virtual_sizes() {
    let dir = crate::common::tempdir();
    for (size, opts) in [
        (1_000_000u64, "cluster_size=65536"),
        (5 * MIB + 512, "cluster_size=65536"),
        (5 * MIB + 512, "cluster_size=2097152"),
        (3 * MIB + 1536, "cluster_size=4096"),
    ] {
        let img = dir.path().join(format!("odd{size}-{}.qcow2", opts.len()));
        qcow2_create(&img, size, opts);
        let vsize = qcow2::read_header(&img).size;
        qemu_io(
            &img,
            &[
                "write -P 0x5a 0 70000",
                &format!("write -P 0x6b {} 512", vsize - 512),
            ],
        );
        check(&format!("qcow2 size {vsize} ({opts})"), &img);
    }
}

/// Raw input is passed through, including a size that is not a multiple of 512.
#[test]
fn raw_images() {
    let dir = crate::common::tempdir();
    let a = mixed_raw(dir.path(), "mixed.raw", 4 * MIB);
    check("raw 4 MiB", &a);
}

/// A raw image whose size is not a multiple of 512: qemu-img reports (and writes) the
/// size rounded up to whole 512-byte sectors, zero-padded; so must streamdisk.
#[test]
fn raw_size_not_a_multiple_of_512() {
    let dir = crate::common::tempdir();
    let b = dir.path().join("odd.raw");
    make_raw(
        &b,
        1_000_000,
        &[
            (0, 5000, Fill::Text),
            (1_000_000 - 999, 999, Fill::Random(9)),
        ],
    );
    check("raw 1000000 bytes", &b);
}

/// gzip, xz and zstd wrappers around a compressed qcow2 and a raw disk, from every core
/// source kind.
#[test]
fn wrapped_images() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "w.raw", 4 * MIB);
    let img = dir.path().join("w.qcow2");
    qcow2_from_raw(&raw, &img, true, "");
    let plain = dir.path().join("p.qcow2");
    qcow2_from_raw(&raw, &plain, false, "cluster_size=4096");
    let mut failures = Vec::new();
    for base in [&img, &plain, &raw] {
        let oracle = qemu_raw(base);
        for w in Wrapper::ALL {
            let Some(wrapped) = wrap(base, w) else {
                continue;
            };
            let label = wrapped.file_name().unwrap().to_string_lossy().into_owned();
            failures.extend(run_matrix(
                &label,
                &wrapped,
                &oracle,
                &SourceKind::CORE,
                &TargetKind::FILE_AND_LOOP,
                &[],
            ));
        }
    }
    assert_no_failures(&failures);
}

/// `--target-is-zero` onto a fresh (zeroed) target gives the same bytes.
#[test]
fn target_is_zero_on_fresh_targets() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("z.qcow2");
    qcow2_create(&img, 8 * MIB, "");
    qemu_io(&img, &["write -P 0x77 64k 64k", "write -P 0x78 7M 1M"]);
    let oracle = qemu_raw(&img);
    let failures = run_matrix(
        "target-is-zero",
        &img,
        &oracle,
        &[SourceKind::File],
        &[TargetKind::NewFile],
        &["--target-is-zero"],
    );
    assert_no_failures(&failures);
}

/// `--format raw` copies a qcow2 file as it is; `--format qcow2` refuses a raw file.
#[test]
fn format_override() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("f.qcow2");
    qcow2_create(&img, 2 * MIB, "");
    qemu_io(&img, &["write -P 0x42 0 100k"]);
    let out = dir.path().join("as-raw");
    Streamdisk::convert(&img, &out)
        .args(["--format", "raw"])
        .run()
        .assert_ok();
    let mut expected_len = fs::metadata(&img).unwrap().len();
    let got_len = fs::metadata(&out).unwrap().len();
    // A raw passthrough of the qcow2 file itself.
    assert_eq!(got_len, expected_len, "--format raw changed the size");
    crate::common::assert_same_bytes(&out, &img);

    let raw = mixed_raw(dir.path(), "r.raw", MIB);
    let out2 = dir.path().join("as-qcow2");
    let run = Streamdisk::convert(&raw, &out2)
        .args(["--format", "qcow2"])
        .run();
    run.assert_refused(&["qcow2", "magic", "format"]);
    expected_len = fs::metadata(&out2).map(|m| m.len()).unwrap_or(0);
    assert_eq!(expected_len, 0, "a refused import wrote into the target");
}

/// Hex digest of `data` with the given algorithm.
fn digest(algo: &str, data: &[u8]) -> String {
    use digest::Digest;
    match algo {
        "md5" => hex::encode(md5::Md5::digest(data)),
        "sha1" => hex::encode(sha1::Sha1::digest(data)),
        "sha256" => hex::encode(sha2::Sha256::digest(data)),
        "sha512" => hex::encode(sha2::Sha512::digest(data)),
        _ => unreachable!(),
    }
}

/// `--checksum ALGO:HEX` over the bytes as received: a match succeeds (with the right
/// output), a mismatch fails with a non-zero exit naming the checksum, from a file and over
/// HTTP, also when the image is wrapped (the checksum is of the wrapped bytes).
#[test]
fn checksum_match_and_mismatch() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "c.raw", 2 * MIB);
    let img = dir.path().join("c.qcow2");
    qcow2_from_raw(&raw, &img, true, "");
    let oracle = qemu_raw(&img);
    let mut inputs = vec![img.clone()];
    inputs.extend(wrap(&img, Wrapper::Gzip));
    for input in &inputs {
        let bytes = fs::read(input).unwrap();
        for algo in ["md5", "sha1", "sha256", "sha512"] {
            let good = format!("{algo}:{}", digest(algo, &bytes));
            let failures = run_matrix(
                &format!("checksum {algo} of {}", input.display()),
                input,
                &oracle,
                &[SourceKind::File, SourceKind::HttpRange],
                &[TargetKind::NewFile],
                &["--checksum", &good],
            );
            assert_no_failures(&failures);
        }
        // One wrong digit.
        let mut hexd = digest("sha256", &bytes).into_bytes();
        hexd[10] = if hexd[10] == b'0' { b'1' } else { b'0' };
        let bad = format!("sha256:{}", String::from_utf8(hexd).unwrap());
        for source in [input.as_os_str().to_owned(), "-".into()] {
            let out = dir.path().join("bad.raw");
            let input_kind = if source == "-" {
                crate::common::Input::Pipe(input.clone())
            } else {
                crate::common::Input::Null
            };
            let run = Streamdisk::convert(&source, &out)
                .args(["--checksum", &bad])
                .input(input_kind)
                .run();
            run.assert_refused(&["checksum"]);
        }
    }
}

/// Finds a value in a JSON document by key, ignoring case, `_`, `-` and nesting.
fn json_find<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '-', ' '], "");
    let want = norm(key);
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m {
                if norm(k) == want {
                    return Some(val);
                }
            }
            m.values().find_map(|val| json_find(val, key))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|val| json_find(val, key)),
        _ => None,
    }
}

fn json_str(v: &serde_json::Value, key: &str) -> String {
    match json_find(v, key) {
        Some(serde_json::Value::String(s)) => s.to_ascii_lowercase(),
        Some(other) => other.to_string().to_ascii_lowercase(),
        None => panic!("info JSON has no {key:?}: {v}"),
    }
}

fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    json_find(v, key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("info JSON has no numeric {key:?}: {v}"))
}

fn info_json(source: &Path) -> serde_json::Value {
    let run = Streamdisk::new()
        .args(["info"])
        .arg(source)
        .args(["--output", "json"])
        .run();
    run.assert_ok();
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "info --output json printed invalid JSON ({e}): {}",
            run.stdout
        )
    })
}

/// `info --output json` reports format, virtual size, cluster size and compression type,
/// matching what the image was made with, also through a wrapper and for raw input.
#[test]
fn info_json_reports_image_facts() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "i.raw", 2 * MIB);
    for (cs, ctype) in [(65536u64, "zlib"), (4096, "zstd"), (2 * MIB, "zlib")] {
        let img = dir.path().join(format!("i{cs}{ctype}.qcow2"));
        qcow2_from_raw(
            &raw,
            &img,
            true,
            &format!("cluster_size={cs},compression_type={ctype}"),
        );
        let mut inputs = vec![img.clone()];
        inputs.extend(wrap(&img, Wrapper::Xz));
        for input in inputs {
            let j = info_json(&input);
            assert_eq!(json_str(&j, "format"), "qcow2", "{j}");
            // qemu-img's names, as `qemu-img info --output json` prints them.
            assert_eq!(json_u64(&j, "virtual-size"), 2 * MIB, "{j}");
            assert_eq!(json_u64(&j, "cluster-size"), cs, "{j}");
            assert_eq!(json_str(&j, "compression-type"), ctype, "{j}");
        }
    }
    let j = info_json(&raw);
    assert_eq!(json_str(&j, "format"), "raw", "{j}");
    let gz = wrap(&raw, Wrapper::Gzip);
    if let Some(gz) = gz {
        let j = info_json(&gz);
        assert_eq!(json_str(&j, "format"), "raw", "{j}");
        assert!(json_str(&j, "wrappers").contains("gz"), "{j}");
        assert!(
            j["virtual-size"].is_null(),
            "unknown through a wrapper: {j}"
        );
    }
}

/// An existing target file much larger than the image, full of stale bytes, ends up exactly
/// the image: same size as the virtual size, and unallocated ranges read as zeros.
#[test]
fn stale_target_file_is_overwritten() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("s.qcow2");
    qcow2_create(&img, 16 * MIB, "cluster_size=65536");
    qemu_io(&img, &["write -P 0x99 3M 64k"]);
    let oracle = qemu_raw(&img);
    let out = dir.path().join("stale.raw");
    crate::common::fill_file(&out, 40 * MIB, crate::common::matrix::STALE);
    Streamdisk::convert(&img, &out).run().assert_ok();
    assert_eq!(fs::metadata(&out).unwrap().len(), 16 * MIB);
    crate::common::assert_same_bytes(&out, &oracle);
    assert!(crate::common::range_is(&out, 0, 3 * MIB, 0));
}

/// An HTTP source that redirects (302) to the server holding the image is followed.
#[test]
fn http_redirect_is_followed() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "rd.raw", 2 * MIB);
    let img = dir.path().join("rd.qcow2");
    qcow2_from_raw(&raw, &img, false, "");
    let oracle = qemu_raw(&img);
    let real = crate::common::server::TestServer::serve(crate::common::server::Body::file(&img));
    let hop =
        crate::common::server::TestServer::builder(crate::common::server::Body::mem(Vec::new()))
            .redirect_to(&real.url("/real.qcow2"))
            .start();
    let out = dir.path().join("o");
    Streamdisk::convert(hop.url("/start.qcow2"), &out)
        .run()
        .assert_ok();
    crate::common::assert_same_bytes(&out, &oracle);
    assert!(hop.request_count() >= 1 && real.request_count() >= 1);
}

/// A block device smaller than the virtual size is refused before anything is written
/// (CDI's wording of the refusal belongs to pod mode, see `cdi.rs`).
#[test]
fn block_device_too_small_is_refused_untouched() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("big.qcow2");
    qcow2_create(&img, 8 * MIB, "");
    qemu_io(&img, &["write -P 0x12 0 1M"]);
    let backing = dir.path().join("small.img");
    crate::common::fill_file(&backing, 4 * MIB, crate::common::matrix::STALE);
    let Some(lo) = crate::common::LoopDevice::attach(&backing) else {
        return;
    };
    let run = Streamdisk::convert(&img, &lo.dev).run();
    drop(lo);
    let line = run.assert_refused(&["larger than the target"]);
    assert!(
        line.contains(&(8 * MIB).to_string()) && line.contains(&(4 * MIB).to_string()),
        "message does not give both sizes: {line}"
    );
    assert!(
        crate::common::range_is(&backing, 0, 4 * MIB, crate::common::matrix::STALE),
        "the device was written before the refusal"
    );
}

/// An HTTP server that sends no Content-Length (a close-delimited body) and no Range
/// support: the image still converts, qcow2 and raw, also wrapped.
#[test]
fn http_without_content_length() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "ncl.raw", 2 * MIB);
    let img = dir.path().join("ncl.qcow2");
    qcow2_from_raw(&raw, &img, true, "");
    let mut inputs = vec![(img.clone(), qemu_raw(&img)), (raw.clone(), qemu_raw(&raw))];
    if let Some(gz) = wrap(&img, Wrapper::Gzip) {
        inputs.push((gz, qemu_raw(&img)));
    }
    for (input, oracle) in inputs {
        let srv =
            crate::common::server::TestServer::builder(crate::common::server::Body::file(&input))
                .ranges(false)
                .omit_content_length(true)
                .start();
        let out = dir.path().join("ncl.out");
        let _ = fs::remove_file(&out);
        Streamdisk::convert(srv.url("/image"), &out)
            .run()
            .assert_ok();
        crate::common::assert_same_bytes(&out, &oracle);
    }
}

/// `info` reads only as much as it needs: over HTTP, far less than the whole image.
#[test]
fn info_over_http_reads_only_the_start() {
    let dir = crate::common::tempdir();
    let raw = dir.path().join("big.raw");
    make_raw(&raw, 64 * MIB, &[(0, 64 * MIB, Fill::Random(21))]);
    let img = dir.path().join("big.qcow2");
    qcow2_from_raw(&raw, &img, false, "");
    let srv = crate::common::server::TestServer::serve(crate::common::server::Body::file(&img));
    let run = Streamdisk::new()
        .arg("info")
        .arg(srv.url("/big.qcow2"))
        .args(["--output", "json"])
        .run();
    run.assert_ok();
    let j: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("info JSON");
    assert_eq!(json_u64(&j, "virtual_size"), 64 * MIB, "{j}");
    let size = fs::metadata(&img).unwrap().len();
    let sent = srv.body_bytes_sent();
    assert!(
        sent < size / 2,
        "info made the server send {sent} of {size} bytes"
    );
}

/// HTTPS end to end through the CLI: a server certificate from a private CA is trusted
/// with `--ca-dir`, refused without it (naming the certificate problem), and accepted with
/// `--insecure`.
#[test]
fn https_with_private_ca() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "tls.raw", 2 * MIB);
    let img = dir.path().join("tls.qcow2");
    qcow2_from_raw(&raw, &img, true, "");
    let oracle = qemu_raw(&img);
    let certs = crate::common::server::make_ca_and_cert("localhost");
    let ca_dir = dir.path().join("ca");
    fs::create_dir(&ca_dir).unwrap();
    fs::write(ca_dir.join("test-ca.pem"), &certs.ca_cert_pem).unwrap();
    let srv = crate::common::server::TestServer::builder(crate::common::server::Body::file(&img))
        .tls(&certs.server_cert_pem, &certs.server_key_pem)
        .start();
    let url = srv.url("/tls.qcow2");
    assert!(url.starts_with("https://localhost:"));

    let out = dir.path().join("tls.out");
    Streamdisk::convert(&url, &out)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .run()
        .assert_ok();
    crate::common::assert_same_bytes(&out, &oracle);

    let out2 = dir.path().join("tls2.out");
    let run = Streamdisk::convert(&url, &out2)
        .args(["--retries", "1"])
        .run();
    run.assert_refused(&["certificate", "tls", "issuer", "trust"]);

    let out3 = dir.path().join("tls3.out");
    Streamdisk::convert(&url, &out3)
        .arg("--insecure")
        .run()
        .assert_ok();
    crate::common::assert_same_bytes(&out3, &oracle);
}

/// Images whose files are 64 MiB or more come over two connections by default
/// (segments), except where decompression sets the pace: a compressed qcow2
/// or a wrapper stops the read-ahead and the rest comes in one request. The
/// output is qemu-img's in every case.
#[test]
fn http_large_images_segmented_by_default() {
    let dir = crate::common::tempdir();
    let raw = dir.path().join("big.raw");
    // Compressible text first (so a compressed image meets a compressed
    // cluster early), then incompressible data that keeps the files large.
    make_raw(
        &raw,
        80 * MIB,
        &[
            (0, 4 * MIB, Fill::Text),
            (4 * MIB + 12_345, 70 * MIB, Fill::Random(60)),
            (80 * MIB - 4096, 4096, Fill::Random(61)),
        ],
    );
    let plain = dir.path().join("big.qcow2");
    qcow2_from_raw(&raw, &plain, false, "");
    let packed = dir.path().join("big-c.qcow2");
    qcow2_from_raw(&raw, &packed, true, "");
    let mut cases: Vec<(PathBuf, PathBuf, bool)> = vec![
        (plain.clone(), qemu_raw(&plain), true),
        (packed.clone(), qemu_raw(&packed), false),
    ];
    if let Some(gz) = wrap(&raw, Wrapper::Gzip) {
        cases.push((gz, raw.clone(), false));
    }
    for (image, oracle, segmented) in cases {
        let len = fs::metadata(&image).expect("image size").len();
        assert!(len >= 64 * MIB, "{} is only {len} bytes", image.display());
        let srv =
            crate::common::server::TestServer::serve(crate::common::server::Body::file(&image));
        let out = dir.path().join("out");
        Streamdisk::convert(srv.url("/img"), &out).run().assert_ok();
        crate::common::assert_same_bytes(&out, &oracle);
        let log = srv.log();
        let ranged = log
            .iter()
            .filter(|r| r.method == "GET" && r.range.is_some())
            .count();
        let segments = len.div_ceil(2 * MIB) as usize;
        if segmented {
            // One GET per segment, unless a loaded machine answered slowly
            // twice in a row and the rest came in one request (after four
            // segments at least: a connection's first answer is not timed).
            assert!(
                ranged >= 5 && ranged <= segments,
                "{}: {ranged} ranged GETs for {segments} segments",
                image.display()
            );
        } else {
            assert!(
                ranged < 8,
                "{}: {ranged} ranged GETs, read-ahead not stopped",
                image.display()
            );
        }
    }
}
