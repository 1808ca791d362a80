//! e2e-report RESULTS_DIR
//!
//! Reads what benches/e2e/run.sh measured in RESULTS_DIR and writes there summary.md (also
//! printed), summary.json and figures/*.svg. Kept apart from the streamdisk crate so that the
//! product's dependency tree does not carry a plotting library.

mod data;
mod figures;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: e2e-report RESULTS_DIR");
        return ExitCode::from(2);
    };
    match run(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e-report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Names in the order they first appear, with the streamdisk variants first.
fn ordered(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for n in names {
        if !v.contains(&n) {
            v.push(n);
        }
    }
    v.sort_by_key(|n| !n.starts_with("streamdisk"));
    v
}

fn run(dir: &Path) -> Result<(), String> {
    let runs = data::read_runs(dir)?;
    let images = data::read_images(dir)?;
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap_or_default();
    let stats = stats::compute(&runs);

    let mut groups: Vec<String> = Vec::new();
    for r in &runs {
        if !groups.contains(&r.group) {
            groups.push(r.group.clone());
        }
    }
    let mut scaling: Vec<String> = ordered(
        runs.iter()
            .filter(|r| r.group == "scaling")
            .map(|r| r.image.clone()),
    );
    scaling.sort_by_key(|i| images.get(i).map(|m| m.virtual_bytes).unwrap_or(0));

    let checks = report::checks(&stats, &images, &scaling);
    let mut md = report::markdown(&meta, &stats, &images, &checks, &groups);

    let figdir = dir.join("figures");
    std::fs::create_dir_all(&figdir)
        .map_err(|e| format!("cannot create {}: {e}", figdir.display()))?;
    let mut drawn: Vec<(String, &str)> = Vec::new();
    for (image, name) in [
        ("mixed", "memory-over-time-mixed.svg"),
        ("rootfs-zlib", "memory-over-time-zlib.svg"),
    ] {
        let Some(img) = images.get(image) else {
            continue;
        };
        let variants = ordered(
            runs.iter()
                .filter(|r| r.image == image)
                .map(|r| r.variant.clone()),
        );
        if figures::memory_over_time(&runs, image, img, &variants, &figdir.join(name))? {
            drawn.push((
                name.to_string(),
                "memory over time, one typical (median) round per command",
            ));
        }
    }
    let variants = ordered(
        runs.iter()
            .filter(|r| r.group == "scaling")
            .map(|r| r.variant.clone()),
    );
    if figures::against_size(
        &stats,
        &images,
        &scaling,
        &variants,
        false,
        &figdir.join("throughput-vs-size.svg"),
    )? {
        drawn.push((
            "throughput-vs-size.svg".into(),
            "throughput against image size",
        ));
    }
    if figures::against_size(
        &stats,
        &images,
        &scaling,
        &variants,
        true,
        &figdir.join("peak-memory-vs-size.svg"),
    )? {
        drawn.push((
            "peak-memory-vs-size.svg".into(),
            "peak cgroup memory against image size",
        ));
    }
    if !drawn.is_empty() {
        md.push_str("## Figures\n\n");
        for (f, what) in &drawn {
            md.push_str(&format!("- `figures/{f}`: {what}\n"));
        }
    }

    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    write("summary.md", &md)?;
    write("summary.json", &report::json(&stats, &checks))?;
    print!("{md}");
    Ok(())
}
