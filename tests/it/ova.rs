//! Issue 14: OVA import. Each OVA is built at test time: an `.ovf` written
//! here, tarred (the OVF first, with the `tar` CLI, ustar format as the OVF
//! spec asks) with disks made by qemu-img; each import is compared byte for
//! byte with `qemu-img convert -O raw` of the disk file itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::matrix::{assert_no_failures, run_matrix, SourceKind, TargetKind};
use crate::common::{
    assert_same_bytes, make_raw, qcow2_from_raw, qemu_img, qemu_raw_fmt, tempdir, wrap, Fill,
    Input, Streamdisk, Wrapper,
};

const MIB: u64 = 1 << 20;

/// A disk an OVF lists: its file name in the archive, and how the OVF
/// describes it.
struct DiskFile<'a> {
    href: &'a str,
    format: &'a str,
    compression: Option<&'a str>,
}

/// VMware's and qemu's format URIs, as ovftool and virt-v2v write them.
const STREAM_OPTIMIZED: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
const RAW_URI: &str = "http://www.gnome.org/~markmc/qcow-image-format.html";

/// An OVF 1.0 descriptor listing `disks` in order (file ids `file1`...,
/// disk ids `vmdisk1`...), with the other sections an appliance carries.
fn ovf_text(disks: &[DiskFile]) -> String {
    let mut refs = String::new();
    let mut section = String::new();
    for (i, d) in disks.iter().enumerate() {
        let n = i + 1;
        let comp = d
            .compression
            .map(|c| format!(" ovf:compression=\"{c}\""))
            .unwrap_or_default();
        refs.push_str(&format!(
            "    <File ovf:href=\"{}\" ovf:id=\"file{n}\"{comp}/>\n",
            d.href
        ));
        section.push_str(&format!(
            "    <Disk ovf:capacity=\"64\" ovf:capacityAllocationUnits=\"byte * 2^20\" \
             ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"{}\"/>\n",
            d.format
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
{refs}  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{section}  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="appliance">
    <Info>A virtual machine</Info>
    <Name>appliance</Name>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// Tars `members` (names inside `dir`, in this order) into `dir/name`.
fn tar_ova(dir: &Path, name: &str, members: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&out)
        .arg("-C")
        .arg(dir)
        .args(members)
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    out
}

/// Writes `appliance.ovf` for `disks` and tars it first, then `members`.
fn make_ova(dir: &Path, name: &str, disks: &[DiskFile], members: &[&str]) -> PathBuf {
    fs::write(dir.join("appliance.ovf"), ovf_text(disks)).expect("write ovf");
    let mut all = vec!["appliance.ovf"];
    all.extend_from_slice(members);
    tar_ova(dir, name, &all)
}

/// A 4 MiB raw disk: data at both ends and in between, zeros elsewhere.
fn raw_disk(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let p = dir.join(name);
    make_raw(
        &p,
        4 * MIB,
        &[
            (0, 300_000, Fill::Random(seed)),
            (MIB + 777, 200_000, Fill::Text),
            (4 * MIB - 8192, 8192, Fill::Random(seed + 1)),
        ],
    );
    p
}

/// A compressed qcow2 of a 64 MiB disk with data in a few places.
fn qcow2_disk(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let raw = dir.join(format!("{name}.src.raw"));
    make_raw(
        &raw,
        64 * MIB,
        &[
            (0, 500_000, Fill::Random(seed)),
            (20 * MIB, 300_000, Fill::Text),
            (64 * MIB - 65536, 65536, Fill::Random(seed + 7)),
        ],
    );
    let img = dir.join(name);
    qcow2_from_raw(&raw, &img, true, "");
    fs::remove_file(&raw).expect("remove source");
    img
}

fn check_matrix(label: &str, ova: &Path, oracle: &Path, extra: &[&str]) {
    let failures = run_matrix(
        label,
        ova,
        oracle,
        &SourceKind::CORE,
        &TargetKind::FILE_AND_LOOP,
        extra,
    );
    assert_no_failures(&failures);
}

#[test]
fn raw_disk_from_file_stdin_and_http_into_file_and_loop() {
    let dir = tempdir();
    let disk = raw_disk(dir.path(), "disk1.img", 1);
    let ova = make_ova(
        dir.path(),
        "raw.ova",
        &[DiskFile {
            href: "disk1.img",
            format: RAW_URI,
            compression: None,
        }],
        &["disk1.img"],
    );
    let oracle = qemu_raw_fmt(&disk, Some("raw"));
    check_matrix("raw disk in an OVA", &ova, &oracle, &[]);
}

#[test]
fn qcow2_disk_from_file_stdin_and_http_into_file_and_loop() {
    let dir = tempdir();
    let disk = qcow2_disk(dir.path(), "disk1.qcow2", 2);
    let ova = make_ova(
        dir.path(),
        "qcow2.ova",
        &[DiskFile {
            href: "disk1.qcow2",
            format: RAW_URI,
            compression: None,
        }],
        &["disk1.qcow2"],
    );
    let oracle = qemu_raw_fmt(&disk, Some("qcow2"));
    check_matrix("qcow2 disk in an OVA", &ova, &oracle, &[]);
}

#[test]
fn gzip_compressed_disk() {
    let dir = tempdir();
    let disk = qcow2_disk(dir.path(), "disk1.qcow2", 3);
    let Some(gz) = wrap(&disk, Wrapper::Gzip) else {
        return;
    };
    let href = gz.file_name().and_then(|n| n.to_str()).expect("name");
    let ova = make_ova(
        dir.path(),
        "gz.ova",
        &[DiskFile {
            href,
            format: RAW_URI,
            compression: Some("gzip"),
        }],
        &[href],
    );
    let oracle = qemu_raw_fmt(&disk, Some("qcow2"));
    check_matrix("gzip-compressed disk in an OVA", &ova, &oracle, &[]);
}

/// Two disks, the second one asked for, and the tar holding the manifest and
/// the second disk's file before the first one's.
#[test]
fn second_disk_and_members_in_any_order() {
    let dir = tempdir();
    let d1 = raw_disk(dir.path(), "system.img", 4);
    let d2 = qcow2_disk(dir.path(), "data.qcow2", 5);
    fs::write(dir.path().join("appliance.mf"), "SHA256(system.img)= 00\n").expect("mf");
    let ova = make_ova(
        dir.path(),
        "two.ova",
        &[
            DiskFile {
                href: "system.img",
                format: RAW_URI,
                compression: None,
            },
            DiskFile {
                href: "data.qcow2",
                format: RAW_URI,
                compression: None,
            },
        ],
        &["appliance.mf", "data.qcow2", "system.img"],
    );
    let o1 = qemu_raw_fmt(&d1, Some("raw"));
    let o2 = qemu_raw_fmt(&d2, Some("qcow2"));
    check_matrix("disk 2 of an OVA", &ova, &o2, &["--disk", "2"]);
    // The default is disk 1, after every other member.
    check_matrix("disk 1 of an OVA", &ova, &o1, &[]);
    let out = dir.path().join("out1.raw");
    Streamdisk::convert(&ova, &out)
        .args(["--disk", "1"])
        .run()
        .assert_ok();
    assert_same_bytes(&out, &o1);

    // A checksum covers the whole OVA, members after the disk included:
    // disk 2 is followed by system.img, which is drained, not imported.
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(fs::read(&ova).expect("read ova")));
    let out = dir.path().join("out2.raw");
    Streamdisk::convert("-", &out)
        .args(["--disk", "2", "--checksum", &format!("sha256:{sum}")])
        .input(Input::Pipe(ova.clone()))
        .run()
        .assert_ok();
    assert_same_bytes(&out, &o2);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = Streamdisk::convert("-", dir.path().join("out3.raw"))
        .args(["--disk", "2", "--checksum", &wrong])
        .input(Input::Pipe(ova.clone()))
        .run();
    run.assert_refused(&["checksum mismatch"]);
    assert!(
        run.last_stderr_line().contains(&sum),
        "the calculated sum is the whole OVA's: {}",
        run.last_stderr_line()
    );
}

#[test]
fn info_names_the_member_then_the_disk() {
    let dir = tempdir();
    let _d1 = raw_disk(dir.path(), "system.img", 6);
    let d2 = qcow2_disk(dir.path(), "data.qcow2", 7);
    let ova = make_ova(
        dir.path(),
        "info.ova",
        &[
            DiskFile {
                href: "system.img",
                format: RAW_URI,
                compression: None,
            },
            DiskFile {
                href: "data.qcow2",
                format: RAW_URI,
                compression: None,
            },
        ],
        &["system.img", "data.qcow2"],
    );
    let run = Streamdisk::new()
        .arg("info")
        .arg(&ova)
        .args(["--disk", "2"])
        .run();
    run.assert_ok();
    let size = fs::metadata(&d2).expect("stat").len();
    assert!(
        run.stdout.contains(&format!(
            "ova member: data.qcow2 (disk 2 of 2, {size} bytes)"
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("format: qcow2"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains(&format!("virtual size: {} bytes", 64 * MIB)),
        "{}",
        run.stdout
    );

    let run = Streamdisk::new()
        .arg("info")
        .arg(&ova)
        .args(["--output", "json"])
        .run();
    run.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(v["format"], "raw", "{v}");
    assert_eq!(v["virtual-size"], 4 * MIB, "{v}");
    assert_eq!(v["ova"]["member"], "system.img", "{v}");
    assert_eq!(v["ova"]["disk"], 1, "{v}");
    assert_eq!(v["ova"]["disks"], 2, "{v}");
    assert_eq!(v["ova"]["ovf-capacity"], 64 * MIB, "{v}");
}

/// The Done-when case of issue 14: an OVA made of an `.ovf` and a
/// streamOptimized VMDK imports its first disk.
#[test]
fn stream_optimized_vmdk_imports_its_first_disk() {
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    make_raw(
        &raw,
        32 * MIB,
        &[
            (0, 400_000, Fill::Random(11)),
            (9 * MIB + 512, 150_000, Fill::Text),
            (32 * MIB - 4096, 4096, Fill::Random(12)),
        ],
    );
    let vmdk = dir.path().join("appliance-disk1.vmdk");
    qemu_img(&[
        "convert".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "vmdk".as_ref(),
        "-o".as_ref(),
        "subformat=streamOptimized".as_ref(),
        raw.as_os_str(),
        vmdk.as_os_str(),
    ]);
    let ova = make_ova(
        dir.path(),
        "vmdk.ova",
        &[DiskFile {
            href: "appliance-disk1.vmdk",
            format: STREAM_OPTIMIZED,
            compression: None,
        }],
        &["appliance-disk1.vmdk"],
    );
    let oracle = qemu_raw_fmt(&vmdk, Some("vmdk"));
    let probe = Streamdisk::convert(&ova, dir.path().join("probe.raw")).run();
    probe.assert_ok();
    assert_same_bytes(&dir.path().join("probe.raw"), &oracle);
    check_matrix("streamOptimized VMDK in an OVA", &ova, &oracle, &[]);
}

/// One refusal: exit 1, the words, and no target written.
fn refused(ova: &Path, extra: &[&str], input: Option<&Path>, words: &[&str]) -> String {
    let dir = tempdir();
    let out = dir.path().join("out.raw");
    let (src, stdin) = match input {
        Some(p) => ("-".into(), Input::Pipe(p.to_path_buf())),
        None => (ova.as_os_str().to_owned(), Input::Null),
    };
    let run = Streamdisk::convert(&src, &out)
        .args(extra)
        .input(stdin)
        .run();
    let line = run.assert_refused(words);
    assert_eq!(run.status.code(), Some(1), "{line}");
    line
}

#[test]
fn refusals_name_the_problem() {
    let dir = tempdir();
    let d = dir.path();
    let _disk = raw_disk(d, "disk1.img", 8);
    let one = [DiskFile {
        href: "disk1.img",
        format: RAW_URI,
        compression: None,
    }];
    let ova = make_ova(d, "one.ova", &one, &["disk1.img"]);

    let line = refused(&ova, &["--disk", "2"], None, &["no disk 2"]);
    assert!(line.contains("the OVF lists 1 disk"), "{line}");
    refused(&ova, &["--disk", "3"], Some(&ova), &["no disk 3"]);

    // A member the OVF names and the tar does not hold.
    let missing = make_ova(
        d,
        "missing.ova",
        &[DiskFile {
            href: "disk-gone.img",
            format: RAW_URI,
            compression: None,
        }],
        &["disk1.img"],
    );
    refused(&missing, &[], None, &["no member \"disk-gone.img\""]);

    // An OVF that does not parse.
    fs::write(
        d.join("appliance.ovf"),
        "<Envelope xmlns='urn:x'><References>",
    )
    .expect("ovf");
    let bad = tar_ova(d, "bad.ova", &["appliance.ovf", "disk1.img"]);
    refused(&bad, &[], None, &["OVF descriptor", "well-formed"]);

    // The OVF says gzip; the file is not.
    let not_gz = make_ova(
        d,
        "notgz.ova",
        &[DiskFile {
            href: "disk1.img",
            format: RAW_URI,
            compression: Some("gzip"),
        }],
        &["disk1.img"],
    );
    refused(&not_gz, &[], None, &["gzip magic"]);

    // Truncated inside the disk's member, from a file and from a pipe.
    let bytes = fs::read(&ova).expect("read ova");
    let cut = d.join("cut.ova");
    fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    refused(&cut, &[], None, &["truncated"]);
    refused(&cut, &[], Some(&cut), &["truncated"]);
    // Truncated inside the descriptor.
    fs::write(&cut, &bytes[..700]).expect("write");
    refused(&cut, &[], None, &["truncated"]);

    // --disk for a source that is not an OVA.
    let line = refused(&d.join("disk1.img"), &["--disk", "1"], None, &["--disk 1"]);
    assert!(line.contains("not one"), "{line}");
}

/// The OVF says disk 1 is split into chunks: refused by name, before any
/// byte is written.
#[test]
fn chunked_files_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    let _disk = raw_disk(d, "disk1.img", 9);
    let text = ovf_text(&[DiskFile {
        href: "disk1.img",
        format: RAW_URI,
        compression: None,
    }])
    .replace(
        "ovf:id=\"file1\"",
        "ovf:id=\"file1\" ovf:chunkSize=\"1048576\"",
    );
    fs::write(d.join("appliance.ovf"), text).expect("ovf");
    fs::rename(d.join("disk1.img"), d.join("disk1.img.000000000")).expect("rename");
    let ova = tar_ova(d, "chunked.ova", &["appliance.ovf", "disk1.img.000000000"]);
    refused(&ova, &[], None, &["chunked OVA files are not supported"]);
}
