//! Replays the fuzzer's committed inputs (every crasher it ever found, in
//! `fuzz/regressions/`, and the minimized corpus in `fuzz/corpus/qcow2_decode/`)
//! through the decoder with the fuzz target's own harness (`fuzz/harness.rs`), on stable Rust, so a
//! fixed finding stays fixed without running the fuzzer.

use std::path::Path;

#[path = "../../fuzz/harness.rs"]
mod harness;

fn replay(dir: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let p = e.expect("entry").path();
        if p.is_file() && p.extension().is_none_or(|x| x != "md") {
            let data = std::fs::read(&p).expect("read");
            let r = std::panic::catch_unwind(|| harness::run_one(&data));
            assert!(r.is_ok(), "{} fails again", p.display());
            n += 1;
        }
    }
    n
}

#[test]
fn crashers_stay_fixed() {
    replay("fuzz/regressions");
}

#[test]
fn corpus_replays_cleanly() {
    let n = replay("fuzz/corpus/qcow2_decode") + replay("fuzz/seeds");
    assert!(n > 0, "no fuzz inputs found");
}
