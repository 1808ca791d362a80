//! Replays the fuzzers' committed inputs (every crasher they ever found, in
//! `fuzz/regressions/<target>/`, the minimized corpora in
//! `fuzz/corpus/<target>/` and the seeds in `fuzz/seeds/<format>/`) through
//! the decoders with the fuzz targets' own harness (`fuzz/harness.rs`), on
//! stable Rust, so a fixed finding stays fixed without running the fuzzer.

use std::path::Path;

use streamdisk::format::Format;

#[path = "../../fuzz/harness.rs"]
mod harness;

/// Replays every file in `dir` (relative to the crate) for `format`;
/// returns how many there were.
fn replay(format: Format, dir: &str) -> usize {
    replay_with(dir, &|data| harness::check_format(format, data))
}

/// Replays every file in `dir` (relative to the crate) through `check`;
/// returns how many there were.
fn replay_with(dir: &str, check: &dyn Fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let p = e.expect("entry").path();
        if p.is_file() && p.extension().is_none_or(|x| x != "md") {
            let data = std::fs::read(&p).expect("read");
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            assert!(r.is_ok(), "{} fails again", p.display());
            n += 1;
        }
    }
    n
}

/// Replays a target's regressions, corpus and seeds; the corpus and seeds
/// must not be empty.
fn replay_target(format: Format, target: &str) {
    replay(format, &format!("fuzz/regressions/{target}"));
    let n = replay(format, &format!("fuzz/corpus/{target}"))
        + replay(format, &format!("fuzz/seeds/{}", format.name()));
    assert!(n > 0, "no fuzz inputs found for {target}");
}

#[test]
fn qcow2_inputs_replay_cleanly() {
    replay_target(Format::Qcow2, "qcow2_decode");
}

#[test]
fn ova_inputs_replay_cleanly() {
    let check = |data: &[u8]| harness::check_ova(data);
    replay_with("fuzz/regressions/ova_open", &check);
    let n = replay_with("fuzz/corpus/ova_open", &check) + replay_with("fuzz/seeds/ova", &check);
    assert!(n > 0, "no fuzz inputs found for ova_open");
}

#[test]
fn vpc_inputs_replay_cleanly() {
    replay_target(Format::Vpc, "vpc_decode");
}

#[test]
fn vdi_inputs_replay_cleanly() {
    replay_target(Format::Vdi, "vdi_decode");
}

#[test]
fn vhdx_inputs_replay_cleanly() {
    replay_target(Format::Vhdx, "vhdx_decode");
}

#[test]
fn vmdk_inputs_replay_cleanly() {
    replay_target(Format::Vmdk, "vmdk_decode");
}
