//! `docker://` sources against a real registry (Debian's `docker-registry`,
//! the CNCF distribution registry) on loopback, with images built by
//! buildah at test time (`FROM scratch`, the disk under `/disk/`). Every
//! import is compared with `qemu-img convert` of the disk file.

use std::path::{Path, PathBuf};

use crate::common::registry::{tar_layer, Compression, Image, Push, Registry, TcpProxy};
use crate::common::{
    assert_same_bytes, make_raw, qcow2_from_raw, qemu_raw, qemu_raw_fmt, read_at, tempdir, Fill,
    Streamdisk,
};

const MIB: u64 = 1 << 20;

/// A qcow2 disk of `virt` bytes with `data` bytes of random data (seeded)
/// at 1 MiB and a marker at the end, and its oracle raw.
fn disk_qcow2(dir: &Path, name: &str, virt: u64, data: u64, seed: u64) -> (PathBuf, PathBuf) {
    let raw = dir.join(format!("{name}.src.raw"));
    make_raw(
        &raw,
        virt,
        &[
            (MIB, data, Fill::Random(seed)),
            (virt - 4096, 4096, Fill::Byte(0x5a)),
        ],
    );
    let img = dir.join(format!("{name}.qcow2"));
    qcow2_from_raw(&raw, &img, false, "");
    let oracle = qemu_raw(&img);
    (img, oracle)
}

/// `streamdisk convert REF OUT` with the registry's CA and credentials.
fn convert(reg: &Registry, reference: &str, out: &Path) -> Streamdisk {
    let mut sd = Streamdisk::convert(reference, out);
    if let Some(ca) = reg.ca_dir() {
        sd = sd.arg("--ca-dir").arg(ca);
    }
    if let Some((u, p)) = reg.creds() {
        sd = sd
            .args(["--user", u, "--password-env", "SD_TEST_PASSWORD"])
            .env("SD_TEST_PASSWORD", p);
    }
    // No auth file of the machine's may answer for the test registry.
    sd.env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent")
        .env("XDG_RUNTIME_DIR", "/nonexistent")
}

#[test]
fn tls_and_basic_auth_qcow2_in_a_gzip_layer() {
    let Some(reg) = Registry::builder()
        .tls()
        .htpasswd("puller", "s3cr3t-pw")
        .start()
    else {
        return;
    };
    let work = tempdir();
    let (img, oracle) = disk_qcow2(work.path(), "fedora", 32 * MIB, 2 * MIB, 1);
    let pushed = reg.push(
        &Image::new().layer(&[(&img, "/disk/")]),
        "test/fedora:41",
        Push::default(),
    );
    let out = work.path().join("out.raw");
    let run = convert(&reg, &pushed.reference, &out).run();
    run.assert_ok();
    assert_same_bytes(&out, &oracle);
    assert!(
        !run.stderr.contains("s3cr3t-pw"),
        "password logged:\n{}",
        run.stderr
    );

    // Without credentials: refused by name.
    let out2 = work.path().join("anon.raw");
    Streamdisk::convert(&pushed.reference, &out2)
        .arg("--ca-dir")
        .arg(reg.ca_dir().expect("ca"))
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent")
        .run()
        .assert_refused(&["requires credentials", "127.0.0.1"]);

    // The credentials from an auth file (podman's format), matched by host.
    let auth = work.path().join("auth.json");
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("puller:s3cr3t-pw")
    };
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{b64}"}},"other.io":{{"auth":"eDp5"}}}}}}"#,
            reg.host()
        ),
    )
    .expect("auth file");
    let out3 = work.path().join("authfile.raw");
    let run = Streamdisk::convert(&pushed.reference, &out3)
        .arg("--ca-dir")
        .arg(reg.ca_dir().expect("ca"))
        .env("REGISTRY_AUTH_FILE", &auth)
        .run();
    run.assert_ok();
    assert_same_bytes(&out3, &oracle);

    // Without the CA the certificate is not trusted; --insecure accepts it.
    Streamdisk::convert(&pushed.reference, work.path().join("untrusted.raw"))
        .env("REGISTRY_AUTH_FILE", &auth)
        .run()
        .assert_refused(&["TLS", "127.0.0.1"]);
    let out4 = work.path().join("insecure.raw");
    Streamdisk::convert(&pushed.reference, &out4)
        .arg("--insecure")
        .env("REGISTRY_AUTH_FILE", &auth)
        .run()
        .assert_ok();
    assert_same_bytes(&out4, &oracle);
}

#[test]
fn token_flow_with_a_zstd_layer() {
    let Some(reg) = Registry::builder()
        .token("robot", "t0ken-pw", false)
        .start()
    else {
        return;
    };
    let work = tempdir();
    let (img, oracle) = disk_qcow2(work.path(), "zstd", 16 * MIB, MIB, 2);
    let pushed = reg.push(
        &Image::new().layer(&[(&img, "/disk/")]),
        "test/zstd:1",
        Push {
            compression: Compression::Zstd,
            ..Push::default()
        },
    );
    let m = reg.manifest("test/zstd", "1");
    let media = m["layers"][0]["mediaType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(media.ends_with("+zstd"), "{media}");
    let before = reg.token.as_ref().expect("token service").requests().len();
    let out = work.path().join("out.raw");
    let run = convert(&reg, &pushed.reference, &out)
        .arg("--insecure")
        .run();
    run.assert_ok();
    assert_same_bytes(&out, &oracle);
    assert!(!run.stderr.contains("t0ken-pw"), "{}", run.stderr);
    let reqs = reg.token.as_ref().expect("token service").requests();
    let ours: Vec<_> = reqs[before..].to_vec();
    assert!(
        ours.iter()
            .any(|(scope, user)| scope == "repository:test/zstd:pull" && user == "robot"),
        "token requests: {ours:?}"
    );

    // Anonymous pulls get a token without the pull action: refused.
    Streamdisk::convert(&pushed.reference, work.path().join("anon.raw"))
        .arg("--insecure")
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent")
        .run()
        .assert_refused(&["401"]);
    // Wrong password: the token service refuses it.
    Streamdisk::convert(&pushed.reference, work.path().join("bad.raw"))
        .args(["--insecure", "--user", "robot", "--password-env", "P"])
        .env("P", "wrong")
        .run()
        .assert_refused(&["token service", "credentials were refused"]);
}

#[test]
fn anonymous_token_pull_and_digest_references() {
    let Some(reg) = Registry::builder().token("robot", "pw", true).start() else {
        return;
    };
    let work = tempdir();
    let (img, oracle) = disk_qcow2(work.path(), "anon", 8 * MIB, MIB, 3);
    let pushed = reg.push(
        &Image::new().layer(&[(&img, "/disk/")]),
        "test/anon:v1",
        Push::default(),
    );
    let by_digest = format!("{}@{}", reg.reference("test/anon"), pushed.digest);
    let out = work.path().join("out.raw");
    let run = Streamdisk::convert(&by_digest, &out)
        .arg("--insecure")
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent")
        .run();
    run.assert_ok();
    assert_same_bytes(&out, &oracle);
    let reqs = reg.token.as_ref().expect("token").requests();
    assert!(reqs.iter().any(|(_, user)| user.is_empty()), "{reqs:?}");

    // The poller's call: the tag's manifest digest, through the token flow.
    let rt = streamdisk::source::runtime().expect("runtime");
    let opts = streamdisk::source::HttpOptions {
        insecure_tls: true,
        ..Default::default()
    };
    let d = streamdisk::source::registry::resolve_digest(&pushed.reference, &opts, rt.handle())
        .expect("resolve");
    assert_eq!(d, pushed.digest);
    let missing = streamdisk::source::registry::resolve_digest(
        &reg.reference("test/anon:nope"),
        &opts,
        rt.handle(),
    )
    .expect_err("no such tag");
    assert!(
        streamdisk::error_chain(&missing).contains("404"),
        "{missing}"
    );
}

#[test]
fn uncompressed_layer_with_a_raw_xz_disk_and_a_lying_media_type() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let raw = work.path().join("disk.raw");
    make_raw(
        &raw,
        8 * MIB,
        &[
            (2 * MIB, MIB, Fill::Random(4)),
            (7 * MIB, 4096, Fill::Byte(9)),
        ],
    );
    let xz = crate::common::wrap(&raw, crate::common::Wrapper::Xz).expect("xz");
    let xz_bytes = std::fs::read(&xz).expect("read xz");
    let layer = tar_layer(&[("disk/", b""), ("disk/disk.raw.xz", &xz_bytes)]);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {}});
    let plain = reg.push_raw(
        "test/rawxz:plain",
        &[("application/vnd.oci.image.layer.v1.tar", layer.clone())],
        &config,
    );
    let out = work.path().join("plain.raw");
    convert(&reg, &plain.reference, &out)
        .arg("--insecure")
        .run()
        .assert_ok();
    assert_same_bytes(&out, &raw);

    // A zstd layer named tar+gzip: read by its bytes.
    let zst = zstd::encode_all(&layer[..], 3).expect("zstd");
    let lying = reg.push_raw(
        "test/rawxz:lying",
        &[("application/vnd.oci.image.layer.v1.tar+gzip", zst)],
        &config,
    );
    let out = work.path().join("lying.raw");
    let run = convert(&reg, &lying.reference, &out)
        .arg("--insecure")
        .run();
    run.assert_ok();
    assert!(run.stderr.contains("going by the bytes"), "{}", run.stderr);
    assert_same_bytes(&out, &raw);
}

/// A containerDisk may hold any format qemu-img identifies: a VMDK in a gzip
/// layer and a VHDX in an uncompressed one convert like qemu-img.
#[test]
fn vmdk_and_vhdx_disks_in_layers_match_qemu_img() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (img, _) = disk_qcow2(work.path(), "src", 16 * MIB, 3 * MIB, 21);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {}});
    for (fmt, opts, media) in [
        (
            "vmdk",
            "subformat=streamOptimized",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "vhdx",
            "block_size=2M",
            "application/vnd.oci.image.layer.v1.tar",
        ),
    ] {
        let conv = work.path().join(format!("disk.{fmt}"));
        crate::common::qemu_convert(&img, "qcow2", fmt, opts, &conv);
        let oracle = qemu_raw_fmt(&conv, Some(fmt));
        let bytes = std::fs::read(&conv).expect("read image");
        let entry = format!("disk/disk.{fmt}");
        let mut layer = tar_layer(&[("disk/", b""), (&entry, &bytes)]);
        if media.ends_with("gzip") {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &layer).expect("gzip");
            layer = gz.finish().expect("gzip");
        }
        let pushed = reg.push_raw(&format!("test/{fmt}:v1"), &[(media, layer)], &config);
        let out = work.path().join(format!("{fmt}.raw"));
        convert(&reg, &pushed.reference, &out)
            .arg("--insecure")
            .run()
            .assert_ok();
        assert_same_bytes(&out, &oracle);
    }
}

#[test]
fn disk_in_the_second_layer_and_later_layers_not_downloaded() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let notes = work.path().join("notes.txt");
    std::fs::write(&notes, "not the disk\n").expect("write");
    let (img, oracle) = disk_qcow2(work.path(), "second", 16 * MIB, MIB, 5);
    let extra = work.path().join("extra.bin");
    make_raw(&extra, 2 * MIB, &[(0, 2 * MIB, Fill::Random(6))]);
    let image = Image::new()
        .layer(&[(&notes, "/etc/")])
        .layer(&[(&img, "/disk/")])
        .layer(&[(&extra, "/var/")]);
    let pushed = reg.push(&image, "test/layers:1", Push::default());
    let m = reg.manifest("test/layers", "1");
    let digests: Vec<String> = m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(digests.len(), 3);
    let out = work.path().join("out.raw");
    let run = convert(&reg, &pushed.reference, &out)
        .arg("--insecure")
        .run();
    run.assert_ok();
    assert_same_bytes(&out, &oracle);
    let log = reg.log();
    let fetched = |d: &str| {
        log.lines()
            .any(|l| l.contains("GET") && l.contains(&format!("/blobs/{d}")))
    };
    assert!(fetched(&digests[0]) && fetched(&digests[1]), "{log}");
    assert!(
        !fetched(&digests[2]),
        "the layer after the disk was downloaded:\n{log}"
    );

    // info: digest, layers, the disk entry, and the disk's format.
    let info = Streamdisk::new()
        .args(["info", "--insecure", "--output", "json", &pushed.reference])
        .run();
    info.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&info.stdout).expect("json");
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["virtual-size"], 16 * MIB);
    assert_eq!(v["registry"]["digest"], pushed.digest.as_str());
    assert_eq!(v["registry"]["layers"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["registry"]["disk"]["name"], "disk/second.qcow2");
    assert_eq!(v["registry"]["disk"]["layer"], 2);
    assert_eq!(v["registry"]["platform"]["architecture"], "amd64");
}

#[test]
fn index_picks_the_platform() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (amd, amd_oracle) = disk_qcow2(work.path(), "amd", 8 * MIB, MIB, 7);
    let (arm, arm_oracle) = disk_qcow2(work.path(), "arm", 8 * MIB, MIB, 8);
    let pushed = reg.push_index(
        &[
            ("amd64", &Image::new().layer(&[(&amd, "/disk/")])),
            ("arm64", &Image::new().layer(&[(&arm, "/disk/")])),
        ],
        "test/multi:1",
    );
    let out = work.path().join("arm.raw");
    convert(&reg, &pushed.reference, &out)
        .args(["--insecure", "--arch", "arm64"])
        .run()
        .assert_ok();
    assert_same_bytes(&out, &arm_oracle);
    if crate::common::registry::host_is_amd64() {
        let out = work.path().join("host.raw");
        convert(&reg, &pushed.reference, &out)
            .arg("--insecure")
            .run()
            .assert_ok();
        assert_same_bytes(&out, &amd_oracle);
    }
    // The index's own digest, as a DataImportCron records it.
    let rt = streamdisk::source::runtime().expect("runtime");
    let opts = streamdisk::source::HttpOptions {
        insecure_tls: true,
        ..Default::default()
    };
    assert_eq!(
        streamdisk::source::registry::resolve_digest(&pushed.reference, &opts, rt.handle())
            .expect("resolve"),
        pushed.digest
    );
    convert(&reg, &pushed.reference, &work.path().join("s390x.raw"))
        .args(["--insecure", "--arch", "s390x"])
        .run()
        .assert_refused(&[
            "no image for platform linux/s390x",
            "linux/amd64",
            "linux/arm64",
        ]);
}

#[test]
fn bootc_images_are_refused() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (img, _) = disk_qcow2(work.path(), "bootc", 8 * MIB, MIB, 9);
    let pushed = reg.push(
        &Image::new()
            .layer(&[(&img, "/disk/")])
            .label("containers.bootc=1"),
        "test/bootc:1",
        Push::default(),
    );
    let out = work.path().join("out.raw");
    convert(&reg, &pushed.reference, &out)
        .arg("--insecure")
        .run()
        .assert_refused(&["bootc image detected"]);
    assert!(!out.exists(), "the target was created");
}

#[test]
fn an_image_without_a_disk_names_its_entries() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let notes = work.path().join("readme.txt");
    std::fs::write(&notes, "hello").expect("write");
    let pushed = reg.push(
        &Image::new().layer(&[(&notes, "/doc/")]),
        "test/nodisk:1",
        Push::default(),
    );
    convert(&reg, &pushed.reference, &work.path().join("out.raw"))
        .arg("--insecure")
        .run()
        .assert_refused(&["Failed to find VM disk image file", "doc/readme.txt"]);
}

#[test]
fn schema1_is_refused_by_name() {
    let Some(reg) = Registry::builder().schema1().start() else {
        return;
    };
    let work = tempdir();
    let (img, _) = disk_qcow2(work.path(), "old", 8 * MIB, MIB, 10);
    let pushed = reg.push(
        &Image::new().layer(&[(&img, "/disk/")]),
        "test/old:1",
        Push {
            format: Some("v2s1"),
            ..Push::default()
        },
    );
    convert(&reg, &pushed.reference, &work.path().join("out.raw"))
        .arg("--insecure")
        .run()
        .assert_refused(&["Docker schema 1 manifests are not supported"]);
}

/// Flips one byte in the middle of the disk's layer blob on the
/// registry's disk: uncompressed (found at the blob's end by its digest)
/// and gzip (the gzip stream breaks first; the blob is checked again).
/// The uncompressed image is pushed by hand (buildah compresses anyway).
#[test]
fn corrupt_blob_is_a_checksum_mismatch_and_the_target_is_wiped() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (img, _) = disk_qcow2(work.path(), "corrupt", 8 * MIB, 3 * MIB, 11);
    let img_bytes = std::fs::read(&img).expect("read disk");
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {}});
    for tag in ["plain", "gz"] {
        let pushed = if tag == "plain" {
            reg.push_raw(
                "test/corrupt:plain",
                &[(
                    "application/vnd.oci.image.layer.v1.tar",
                    tar_layer(&[("disk/corrupt.qcow2", &img_bytes)]),
                )],
                &config,
            )
        } else {
            reg.push(
                &Image::new().layer(&[(&img, "/disk/")]),
                "test/corrupt:gz",
                Push::default(),
            )
        };
        let m = reg.manifest("test/corrupt", tag);
        let layer = m["layers"][0]["digest"]
            .as_str()
            .expect("digest")
            .to_string();
        let blob = reg.blob_path(&layer);
        let len = std::fs::metadata(&blob).expect("blob").len();
        let mut bytes = std::fs::read(&blob).expect("read blob");
        let at = (len / 2) as usize;
        bytes[at] ^= 0x01;
        std::fs::write(&blob, &bytes).expect("corrupt blob");
        let out = work.path().join(format!("{tag}.raw"));
        // A target that held a disk before: its first MiB must not survive.
        crate::common::fill_file(&out, 8 * MIB, 0x77);
        let run = convert(&reg, &pushed.reference, &out)
            .arg("--insecure")
            .run();
        let msg = run.assert_refused(&["checksum mismatch", &layer]);
        assert!(msg.contains("zeroed"), "{msg}");
        assert!(
            read_at(&out, 0, 4096).iter().all(|&b| b == 0),
            "{tag}: first MiB not zeroed"
        );
    }
}

#[test]
fn a_connection_cut_mid_layer_is_resumed() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (img, oracle) = disk_qcow2(work.path(), "cut", 8 * MIB, 3 * MIB, 12);
    reg.push(
        &Image::new().layer(&[(&img, "/disk/")]),
        "test/cut:1",
        Push {
            compression: Compression::None,
            ..Push::default()
        },
    );
    // Manifests and the config are a few KiB: the cut falls in the layer.
    let proxy = TcpProxy::start(reg.port, Some(MIB + 12345), None);
    let reference = format!("docker://127.0.0.1:{}/test/cut:1", proxy.port);
    let out = work.path().join("out.raw");
    let run = convert(&reg, &reference, &out)
        .arg("--insecure")
        .arg("-v")
        .run();
    run.assert_ok();
    assert_eq!(proxy.cuts(), 1, "the proxy did not cut");
    assert!(run.stderr.contains("resuming"), "{}", run.stderr);
    assert_same_bytes(&out, &oracle);
}

#[test]
fn qcow2_oracle_matches_for_format_detection_through_layers() {
    // The disk file's own compression inside the layer: a qcow2.gz in an
    // uncompressed layer goes through the gzip wrapper then qcow2.
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (img, oracle) = disk_qcow2(work.path(), "wrapped", 8 * MIB, MIB, 13);
    let gz = crate::common::wrap(&img, crate::common::Wrapper::Gzip).expect("gzip");
    let pushed = reg.push(
        &Image::new().layer(&[(&gz, "/disk/")]),
        "test/wrapped:1",
        Push {
            compression: Compression::None,
            format: Some("v2s2"),
        },
    );
    let out = work.path().join("out.raw");
    convert(&reg, &pushed.reference, &out)
        .arg("--insecure")
        .run()
        .assert_ok();
    assert_same_bytes(&out, &qemu_raw_fmt(&img, Some("qcow2")));
    assert_same_bytes(&out, &oracle);
}
