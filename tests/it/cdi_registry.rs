//! CDI pod mode with `IMPORTER_SOURCE=registry` (pod pull), end to end: the
//! real binary as a subprocess (as `cdi.rs` runs it) against a real
//! registry (see `common::registry`), the result checked as the controller
//! sees it and the disk compared with `qemu-img convert` of the disk file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cdi::{progress_regex, scrape, Pod, SUCCESS};
use crate::common::registry::{Image, Push, Registry, TcpProxy};
use crate::common::{first_difference, make_raw, qcow2_from_raw, qemu_raw, tempdir, Fill};

const MIB: u64 = 1 << 20;

fn disk(dir: &Path, name: &str, virt: u64, data: u64, seed: u64) -> (PathBuf, PathBuf) {
    let raw = dir.join(format!("{name}.src.raw"));
    make_raw(
        &raw,
        virt,
        &[
            (MIB, data, Fill::Random(seed)),
            (virt - 4096, 4096, Fill::Byte(0x6b)),
        ],
    );
    let img = dir.join(format!("{name}.qcow2"));
    qcow2_from_raw(&raw, &img, false, "");
    let oracle = qemu_raw(&img);
    (img, oracle)
}

fn assert_disk(pod: &Pod, oracle: &Path, len: u64) {
    if let Some(off) = first_difference(&pod.disk(), oracle, len) {
        panic!("disk.img differs from the qemu-img oracle at offset {off}");
    }
}

fn registry_pod(reference: &str, size: &str) -> Pod {
    let mut pod = Pod::new();
    pod.env("IMPORTER_SOURCE", "registry")
        .env("IMPORTER_ENDPOINT", reference)
        .env("IMPORTER_IMAGE_SIZE", size);
    pod
}

#[test]
fn pod_pull_over_tls_with_credentials_and_labels_without_scratch() {
    let Some(reg) = Registry::builder()
        .tls()
        .htpasswd("cdi", "reg-secret-77")
        .start()
    else {
        return;
    };
    let work = tempdir();
    let (img, oracle) = disk(work.path(), "labelled", 16 * MIB, 2 * MIB, 21);
    let image = Image::new()
        .layer(&[(&img, "/disk/")])
        .env("INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora")
        .env("KUBEVIRT_IO_OS=linux")
        .env("PATH=/bin");
    let pushed = reg.push(&image, "kubevirt/fedora:41", Push::default());
    let mut pod = registry_pod(&pushed.reference, "16Mi");
    pod.env("IMPORTER_ACCESS_KEY_ID", "cdi")
        .env("IMPORTER_SECRET_KEY", "reg-secret-77")
        .env(
            "IMPORTER_CERT_DIR",
            reg.ca_dir().expect("ca").to_str().expect("utf8"),
        );
    // CDI mounts a scratch volume for registry imports: it stays unused.
    std::fs::create_dir(pod.path("scratch")).expect("mkdir scratch");
    let end = pod.run();
    end.assert_code(0).assert_message(
        r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{"instancetype.kubevirt.io/default-preference":"fedora","kubevirt.io/os":"linux"},"message":"Import Complete"}"#,
    );
    assert_disk(&pod, &oracle, 16 * MIB);
    assert!(!end.stderr.contains("reg-secret-77"), "secret logged");
    assert_eq!(
        std::fs::read_dir(pod.path("scratch"))
            .expect("scratch")
            .count(),
        0,
        "scratch was used"
    );

    // Without the CA directory the registry's certificate is not trusted.
    let mut pod = registry_pod(&pushed.reference, "16Mi");
    pod.env("IMPORTER_ACCESS_KEY_ID", "cdi")
        .env("IMPORTER_SECRET_KEY", "reg-secret-77");
    let end = pod.run();
    end.assert_code(1);
    assert!(
        end.message()
            .starts_with("Unable to process data: Failed to read registry image:")
            && end.message().contains("TLS"),
        "{}",
        end.message()
    );
}

#[test]
fn pod_architecture_and_insecure_tls() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (amd, _) = disk(work.path(), "amd", 8 * MIB, MIB, 22);
    let (arm, arm_oracle) = disk(work.path(), "arm", 8 * MIB, MIB, 23);
    let pushed = reg.push_index(
        &[
            ("amd64", &Image::new().layer(&[(&amd, "/disk/")])),
            ("arm64", &Image::new().layer(&[(&arm, "/disk/")])),
        ],
        "kubevirt/multi:1",
    );
    // A plain-http registry needs INSECURE_TLS (CDI's insecureRegistries).
    let mut pod = registry_pod(&pushed.reference, "8Mi");
    pod.env("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE", "arm64");
    let end = pod.run();
    end.assert_code(1);
    assert!(
        end.message().contains("Failed to read registry image"),
        "{}",
        end.message()
    );

    let mut pod = registry_pod(&pushed.reference, "8Mi");
    pod.env("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE", "arm64")
        .env("INSECURE_TLS", "true");
    pod.run().assert_code(0).assert_message(SUCCESS);
    assert_disk(&pod, &arm_oracle, 8 * MIB);

    // A single-platform image of another architecture: CDI's words.
    let single = reg.push(
        &Image::new().layer(&[(&amd, "/disk/")]),
        "kubevirt/amd:1",
        Push::default(),
    );
    let mut pod = registry_pod(&single.reference, "8Mi");
    pod.env("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE", "arm64")
        .env("INSECURE_TLS", "true");
    let end = pod.run();
    end.assert_code(1);
    assert!(
        end.message().contains(
            r#"manifest image architecture: "amd64" doesn't match requested architecture: "arm64""#
        ),
        "{}",
        end.message()
    );
}

#[test]
fn pod_refusals_in_cdi_words() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (img, _) = disk(work.path(), "bootc", 8 * MIB, MIB, 24);
    let pushed = reg.push(
        &Image::new()
            .layer(&[(&img, "/disk/")])
            .label("ostree.bootable=1"),
        "kubevirt/bootc:1",
        Push::default(),
    );
    let mut pod = registry_pod(&pushed.reference, "8Mi");
    pod.env("INSECURE_TLS", "true");
    let end = pod.run();
    end.assert_code(1);
    assert!(
        end.message().starts_with(
            "Unable to process data: Failed to read registry image: bootc image detected"
        ),
        "{}",
        end.message()
    );
    assert!(!pod.disk().exists());

    let mut pod = registry_pod(&pushed.reference, "8Mi");
    pod.env("IMPORTER_CONTENTTYPE", "archive");
    pod.run()
        .assert_code(1)
        .assert_message("Unsupported content type archive when importing from registry");
}

#[test]
fn pod_digest_mismatch_is_a_checksum_mismatch() {
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (img, _) = disk(work.path(), "corrupt", 8 * MIB, 3 * MIB, 25);
    let pushed = reg.push(
        &Image::new().layer(&[(&img, "/disk/")]),
        "kubevirt/corrupt:1",
        Push::default(),
    );
    let m = reg.manifest("kubevirt/corrupt", "1");
    let layer = m["layers"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let blob = reg.blob_path(&layer);
    let mut bytes = std::fs::read(&blob).expect("blob");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&blob, &bytes).expect("corrupt");
    let mut pod = registry_pod(&pushed.reference, "8Mi");
    pod.env("INSECURE_TLS", "true");
    let end = pod.run();
    end.assert_code(0);
    assert!(
        end.message().starts_with(&format!(
            r#"{{"message":"Unable to process data: checksum mismatch: expected {layer}, calculated sha256:"#
        )),
        "{}",
        end.message()
    );
    assert!(!pod.disk().exists(), "disk.img left after a mismatch");
}

#[test]
fn pod_progress_moves_during_the_pull() {
    if !crate::common::have_tool("curl") {
        eprintln!("SKIP: curl is not installed");
        return;
    }
    let Some(reg) = Registry::builder().start() else {
        return;
    };
    let work = tempdir();
    let (img, oracle) = disk(work.path(), "slow", 8 * MIB, 6 * MIB, 26);
    reg.push(
        &Image::new().layer(&[(&img, "/disk/")]),
        "kubevirt/slow:1",
        Push::default(),
    );
    // 6 MiB of random data at 1.5 MiB/s: about four seconds of pull.
    let proxy = TcpProxy::start(reg.port, None, Some(3 * MIB / 2));
    let reference = format!("docker://127.0.0.1:{}/kubevirt/slow:1", proxy.port);
    let mut pod = registry_pod(&reference, "8Mi");
    pod.env("INSECURE_TLS", "true");
    let re = progress_regex("0b1c7f5e-test");
    let mut running = pod.spawn();
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if running.child.try_wait().expect("wait").is_some() {
            break;
        }
        if let Some(body) = scrape(pod.metrics_port, "/metrics") {
            if let Some(c) = re.captures(&body) {
                seen.push(c[2].parse::<f64>().expect("number"));
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let end = pod.wait(running);
    eprintln!("progress values scraped: {seen:?}");
    end.assert_code(0).assert_message(SUCCESS);
    assert_disk(&pod, &oracle, 8 * MIB);
    let between: Vec<f64> = seen
        .iter()
        .copied()
        .filter(|v| *v > 0.0 && *v < 100.0)
        .collect();
    assert!(
        between.len() >= 2,
        "progress did not move during the pull: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went down: {seen:?}"
    );
}
