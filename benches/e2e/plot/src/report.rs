//! The summary: per-image tables of medians and spreads, and the ratios that the issues set
//! goals for (issue 2 "Done when", issue 5 section 6, issue 7 "Done when"), each with its
//! verdict. Every ratio is of medians from the same run; the range beside it is the worst and
//! best pairing of the two commands' fastest and slowest rounds.

use crate::data::Image;
use crate::stats::{Spread, Stat, Stats};
use std::collections::BTreeMap;
use std::fmt::Write as _;

const MIB: f64 = 1_048_576.0;
const GIB: f64 = 1_073_741_824.0;

/// What each measured command stands for (see PEERS.md).
pub fn describe(variant: &str) -> String {
    match variant {
        "streamdisk" => "streamdisk convert URL DEV (default flags, no limit)".into(),
        "streamdisk-c1" => "streamdisk convert --connections 1 URL DEV (one stream)".into(),
        "streamdisk-c4" => "streamdisk convert --connections 4 URL DEV".into(),
        "streamdisk-local" => "streamdisk convert IMG DEV from the local file (no limit)".into(),
        "streamdisk-base" => {
            "the --base-bin build: streamdisk convert URL DEV (default flags, no limit)".into()
        }
        v if v.starts_with("streamdisk@") => {
            format!(
                "streamdisk convert URL DEV under a {} MiB limit",
                &v["streamdisk@".len()..]
            )
        }
        "cdi-http" => "CDI HTTP: curl to scratch, qemu-img convert -t writeback, sync".into(),
        "cdi-none" => "CDI after an OOM kill: the same with -t none".into(),
        "nbdkit" => "nbdkit curl (readahead, retry) + qemu-img convert -t writeback".into(),
        "qemu-local" => "qemu-img convert -t none -T none -W from the local file".into(),
        "qemu-local-loaded" => {
            "the same, while two curls download the file's halves from nginx beside it".into()
        }
        "dd" => "copy limit: dd bs=4M iflag=direct oflag=direct of the image file".into(),
        "xz-pipe" => "curl | xz -dc | dd oflag=direct (a streaming shell pipeline)".into(),
        "http-floor" => {
            "network floor: curl URL to /dev/null (one connection, nothing written)".into()
        }
        "streamdisk-s3" => {
            "streamdisk convert s3://BUCKET/KEY DEV from the local S3 server (SigV4)".into()
        }
        "streamdisk-s3-c1" => "the same with --connections 1 (one GET)".into(),
        "s3-floor" => {
            "S3 server floor: signed curl of the object to /dev/null (one connection)".into()
        }
        "cdi-s3" => {
            "CDI S3 stand-in: signed curl to scratch, qemu-img convert -t writeback, sync".into()
        }
        v => v.into(),
    }
}

#[derive(Clone, Copy)]
enum Metric {
    Wall,
    CpuPerGib,
}

#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    Within(f64, f64),
    Info,
}

pub struct Check {
    pub name: String,
    pub meaning: String,
    pub value: Option<Spread>,
    pub unit: &'static str,
    pub goal: String,
    pub verdict: String,
}

struct Ctx<'a> {
    stats: &'a Stats,
    images: &'a BTreeMap<String, Image>,
}

impl Ctx<'_> {
    fn stat(&self, image: &str, variant: &str) -> Option<&Stat> {
        self.stats.get(&(image.to_string(), variant.to_string()))
    }

    fn metric(&self, image: &str, variant: &str, m: Metric) -> Option<Spread> {
        let s = self.stat(image, variant)?;
        match m {
            Metric::Wall => s.wall,
            Metric::CpuPerGib => {
                let g = self.images.get(image)?.virtual_bytes as f64 / GIB;
                let c = s.cpu?;
                (g > 0.0).then(|| Spread {
                    med: c.med / g,
                    min: c.min / g,
                    max: c.max / g,
                })
            }
        }
    }

    /// Whether streamdisk's output on this image was verified identical (peers are not
    /// checked; a streamdisk number on an unverified image is not reported as a result).
    fn valid(&self, image: &str, variant: &str) -> bool {
        !variant.starts_with("streamdisk") || self.images.get(image).is_some_and(Image::verified)
    }

    #[allow(clippy::too_many_arguments)]
    fn ratio(
        &self,
        name: &str,
        meaning: &str,
        a: (&str, &str),
        b: (&str, &str),
        m: Metric,
        goal: Goal,
    ) -> Check {
        let va = self.metric(a.0, a.1, m);
        let vb = self.metric(b.0, b.1, m);
        let value = match (va, vb) {
            (Some(x), Some(y)) if y.med > 0.0 && y.min > 0.0 => Some(Spread {
                med: x.med / y.med,
                min: x.min / y.max,
                max: x.max / y.min,
            }),
            _ => None,
        };
        let valid = self.valid(a.0, a.1) && self.valid(b.0, b.1);
        finish(
            name,
            meaning,
            value,
            "x",
            goal,
            valid,
            self.missing(&[a, b]),
        )
    }

    fn missing(&self, what: &[(&str, &str)]) -> String {
        what.iter()
            .filter_map(|(i, v)| match self.stat(i, v) {
                None => Some(format!("{v} on {i} not measured")),
                Some(s) if s.ok == 0 => Some(format!("{v} on {i} failed: {}", s.failure)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn finish(
    name: &str,
    meaning: &str,
    value: Option<Spread>,
    unit: &'static str,
    goal: Goal,
    valid: bool,
    missing: String,
) -> Check {
    let goal_s = match goal {
        Goal::AtMost(g) => format!("<= {g}{unit}"),
        Goal::Within(lo, hi) => format!("{lo}..{hi}{unit}"),
        Goal::Info => "(for information)".into(),
    };
    let verdict = match (value, valid) {
        (None, _) => format!("n/a ({missing})"),
        (_, false) => "INVALID: streamdisk output not verified identical".into(),
        (Some(v), true) => match goal {
            Goal::AtMost(g) if v.med <= g => "PASS".into(),
            Goal::Within(lo, hi) if v.med >= lo && v.med <= hi => "PASS".into(),
            Goal::Info => "-".into(),
            _ => "MISS".into(),
        },
    };
    Check {
        name: name.into(),
        meaning: meaning.into(),
        value,
        unit,
        goal: goal_s,
        verdict,
    }
}

/// The checks against the goals of issues 2, 5 and 7.
pub fn checks(stats: &Stats, images: &BTreeMap<String, Image>, scaling: &[String]) -> Vec<Check> {
    let c = Ctx { stats, images };
    let sd = "streamdisk";
    let mut out = vec![
        c.ratio("mixed: streamdisk / copy limit", "wall time of the HTTP import into the loop device over dd of the image file with O_DIRECT on both sides", ("mixed", sd), ("mixed", "dd"), Metric::Wall, Goal::AtMost(1.15)),
        c.ratio("mixed: streamdisk / qemu-img local best", "over qemu-img convert -t none -T none -W from a local copy (no network at all)", ("mixed", sd), ("mixed", "qemu-local"), Metric::Wall, Goal::AtMost(1.0)),
        c.ratio("mixed: streamdisk / CDI HTTP", "over CDI's scratch download + qemu-img -t writeback + sync", ("mixed", sd), ("mixed", "cdi-http"), Metric::Wall, Goal::AtMost(0.45)),
        c.ratio("mixed: one connection / default", "--connections 1 over the default (two connections for files of 64 MiB or more)", ("mixed", "streamdisk-c1"), ("mixed", sd), Metric::Wall, Goal::Info),
        c.ratio("mixed: streamdisk local file / qemu-img local best", "both reading the same local file, no network", ("mixed", "streamdisk-local"), ("mixed", "qemu-local"), Metric::Wall, Goal::Info),
        c.ratio("mixed: network floor / qemu-img local best", "curl of the image to /dev/null (one connection, nothing written) over qemu-img's local conversion", ("mixed", "http-floor"), ("mixed", "qemu-local"), Metric::Wall, Goal::Info),
        c.ratio("mixed: streamdisk / network floor", "the import over just downloading the image once", ("mixed", sd), ("mixed", "http-floor"), Metric::Wall, Goal::Info),
        c.ratio("mixed: streamdisk / nbdkit streaming", "over nbdkit curl + qemu-img (CDI's node-pull path)", ("mixed", sd), ("mixed", "nbdkit"), Metric::Wall, Goal::Info),
        c.ratio("mixed: CPU s per GiB, streamdisk / CDI HTTP", "user+sys CPU seconds per GiB of virtual size, streamdisk over CDI's HTTP path", ("mixed", sd), ("mixed", "cdi-http"), Metric::CpuPerGib, Goal::AtMost(1.0)),
        c.ratio("mixed: 32 MiB limit / no limit", "streamdisk's wall time under a 32 MiB cgroup limit over its time without a limit", ("mixed", "streamdisk@32"), ("mixed", sd), Metric::Wall, Goal::AtMost(1.1)),
        c.ratio("mixed: 64 MiB limit / no limit", "the same at 64 MiB", ("mixed", "streamdisk@64"), ("mixed", sd), Metric::Wall, Goal::Info),
        c.ratio("mixed: streamdisk / base build", "the binary measured over the --base-bin build, in the same rounds", ("mixed", sd), ("mixed", "streamdisk-base"), Metric::Wall, Goal::Info),
        c.ratio("mixed: base build / qemu-img local best", "the --base-bin build's ratio to set beside streamdisk's", ("mixed", "streamdisk-base"), ("mixed", "qemu-local"), Metric::Wall, Goal::Info),
        c.ratio("mixed: base build / CDI HTTP", "the same against CDI's HTTP path", ("mixed", "streamdisk-base"), ("mixed", "cdi-http"), Metric::Wall, Goal::Info),
        c.ratio("zlib rootfs: streamdisk / qemu-img local best", "compressed qcow2 of a real filesystem, over HTTP, over qemu-img's best local conversion", ("rootfs-zlib", sd), ("rootfs-zlib", "qemu-local"), Metric::Wall, Goal::AtMost(0.7)),
        c.ratio("zlib rootfs: streamdisk / CDI HTTP", "the same over CDI's HTTP path", ("rootfs-zlib", sd), ("rootfs-zlib", "cdi-http"), Metric::Wall, Goal::Info),
        c.ratio("zlib rootfs: streamdisk / base build", "the binary measured over the --base-bin build, in the same rounds", ("rootfs-zlib", sd), ("rootfs-zlib", "streamdisk-base"), Metric::Wall, Goal::Info),
        c.ratio("zlib rootfs: base build / qemu-img local best", "the --base-bin build's ratio to set beside streamdisk's", ("rootfs-zlib", "streamdisk-base"), ("rootfs-zlib", "qemu-local"), Metric::Wall, Goal::Info),
        c.ratio("sparse: 1 TiB / dense", "the same data in a 1 TiB sparse image over a dense image of just that data", ("sparse-1t", sd), ("dense", sd), Metric::Wall, Goal::AtMost(1.3)),
        c.ratio("raw.xz: streamdisk / curl|xz|dd", "a raw.xz of the filesystem image over a streaming shell pipeline", ("rootfs-xz", sd), ("rootfs-xz", "xz-pipe"), Metric::Wall, Goal::Info),
        c.ratio("s3: streamdisk S3 / streamdisk nginx", "the same image from the local S3 server (s3s-fs, SigV4) over from nginx", ("s3-mixed", "streamdisk-s3"), ("s3-mixed", sd), Metric::Wall, Goal::AtMost(1.15)),
        c.ratio("s3: streamdisk S3 / S3 server floor", "over a signed curl of the object to /dev/null (one stream, nothing written); for information, since the server is built with 1 MiB reads and the goal is the import from nginx", ("s3-mixed", "streamdisk-s3"), ("s3-mixed", "s3-floor"), Metric::Wall, Goal::Info),
        c.ratio("s3: one stream / S3 server floor", "streamdisk with --connections 1 (one GET) over the signed curl", ("s3-mixed", "streamdisk-s3-c1"), ("s3-mixed", "s3-floor"), Metric::Wall, Goal::Info),
        c.ratio("s3: streamdisk S3 / CDI S3 stand-in", "over a signed download to scratch + qemu-img -t writeback + sync under 600 MiB", ("s3-mixed", "streamdisk-s3"), ("s3-mixed", "cdi-s3"), Metric::Wall, Goal::AtMost(0.45)),
        c.ratio("s3: S3 server floor / nginx floor", "what the S3 server serves over what nginx serves (the fixture, not streamdisk)", ("s3-mixed", "s3-floor"), ("s3-mixed", "http-floor"), Metric::Wall, Goal::Info),
        c.ratio("L1 at end: streamdisk / qemu-img local best", "an image grown with qemu-img resize (L1 table after the data)", ("l1end", sd), ("l1end", "qemu-local"), Metric::Wall, Goal::Info),
        c.ratio("VMDK rootfs: streamdisk / qemu-img local best", "a streamOptimized VMDK of a real filesystem over HTTP, over qemu-img's best local conversion of the same file", ("fmt-vmdk", sd), ("fmt-vmdk", "qemu-local"), Metric::Wall, Goal::AtMost(0.7)),
        c.ratio("VHDX: streamdisk / qemu-img local best", "the mixed image as an uncompressed dynamic VHDX, over HTTP, over qemu-img's local conversion", ("fmt-vhdx", sd), ("fmt-vhdx", "qemu-local"), Metric::Wall, Goal::AtMost(1.0)),
        c.ratio("VDI: streamdisk / qemu-img local best", "the same as a dynamic VDI", ("fmt-vdi", sd), ("fmt-vdi", "qemu-local"), Metric::Wall, Goal::AtMost(1.0)),
        c.ratio("VHDX: streamdisk / qemu-img local beside the download", "over qemu-img's local conversion run while the same file downloads beside it over two connections (the load an HTTP import puts on this one machine: nginx reads the same disk and shares the 2 cores)", ("fmt-vhdx", sd), ("fmt-vhdx", "qemu-local-loaded"), Metric::Wall, Goal::Info),
        c.ratio("VDI: streamdisk / qemu-img local beside the download", "the same for the VDI", ("fmt-vdi", sd), ("fmt-vdi", "qemu-local-loaded"), Metric::Wall, Goal::Info),
        c.ratio("registry: streamdisk / CDI registry stand-in", "a containerDisk (one gzip layer) from docker-registry, over the layer through gunzip and tar onto scratch + qemu-img -t writeback + sync", ("reg-mixed", sd), ("reg-mixed", "cdi-registry"), Metric::Wall, Goal::AtMost(0.45)),
        c.ratio("registry: streamdisk / gunzip floor", "the import over just downloading and gunzipping the layer to /dev/null (one gzip stream decodes on one core)", ("reg-mixed", sd), ("reg-mixed", "gunzip-floor"), Metric::Wall, Goal::Info),
        c.ratio("upload: streamdisk / CDI upload stand-in", "curl -T over TLS into streamdisk upload-server, over receiving into a scratch file + qemu-img -t writeback + sync", ("up-mixed", sd), ("up-mixed", "cdi-upload"), Metric::Wall, Goal::AtMost(0.45)),
    ];
    // Issues 15 and 17 allow 32 MiB for the registry and upload paths (a layer's gzip state,
    // the TLS server).
    for (image, what) in [("reg-mixed", "registry"), ("up-mixed", "upload")] {
        if let Some(p) = c.stat(image, sd).and_then(|s| s.peak) {
            out.push(finish(
                &format!("peak memory, streamdisk, {what}"),
                "the highest peak cgroup memory of the streamdisk runs on this image",
                Some(Spread {
                    med: p.max / MIB,
                    min: p.max / MIB,
                    max: p.max / MIB,
                }),
                " MiB",
                Goal::AtMost(32.0),
                c.valid(image, sd),
                String::new(),
            ));
        }
    }
    if let Some(img) = c
        .stats
        .keys()
        .find(|(_, v)| v == "streamdisk-c4")
        .map(|(i, _)| i.clone())
    {
        out.push(c.ratio(
            "throttled: 1 connection / 4 connections",
            "wall time with the default (one connection: the image is under 64 MiB) over --connections 4, against nginx limit_rate per connection (the speedup of 4 connections)",
            (&img, sd),
            (&img, "streamdisk-c4"),
            Metric::Wall,
            Goal::Info,
        ));
        out.push(c.ratio(
            "throttled: streamdisk 4 connections / CDI HTTP",
            "on the same throttled server",
            (&img, "streamdisk-c4"),
            (&img, "cdi-http"),
            Metric::Wall,
            Goal::Info,
        ));
    }
    if let (Some(first), Some(last)) = (scaling.first(), scaling.last()) {
        let peak = |i: &str| c.stat(i, sd).and_then(|s| s.peak);
        let value = match (peak(last), peak(first)) {
            (Some(a), Some(b)) if b.med > 0.0 => Some(Spread {
                med: a.med / b.med,
                min: a.min / b.max,
                max: a.max / b.min,
            }),
            _ => None,
        };
        out.push(finish(
            &format!("memory flatness: peak {last} / {first}"),
            "streamdisk's peak cgroup memory on the largest scaling image over the smallest",
            value,
            "x",
            Goal::Within(0.9, 1.1),
            c.valid(first, sd) && c.valid(last, sd),
            c.missing(&[(first, sd), (last, sd)]),
        ));
    }
    // Peak memory at default settings on every image without a wrapper window (xz has one).
    let mut worst: Option<(f64, String)> = None;
    let mut all_valid = true;
    for ((image, variant), s) in c.stats {
        if variant != sd || ["rootfs-xz", "reg-mixed", "up-mixed"].contains(&image.as_str()) {
            continue;
        }
        all_valid &= c.valid(image, sd);
        if let Some(p) = s.peak {
            if worst.as_ref().is_none_or(|(w, _)| p.max > *w) {
                worst = Some((p.max, image.clone()));
            }
        }
    }
    let (v, which) = match worst {
        Some((w, i)) => (
            Some(Spread {
                med: w / MIB,
                min: w / MIB,
                max: w / MIB,
            }),
            i,
        ),
        None => (None, String::new()),
    };
    out.push(finish(
        &format!("peak memory, streamdisk, worst image{}", if which.is_empty() { String::new() } else { format!(" ({which})") }),
        "the highest peak cgroup memory (page cache and binary included) of any streamdisk run at default settings, xz, registry and upload excepted",
        v,
        " MiB",
        Goal::AtMost(24.0),
        all_valid,
        "no streamdisk runs".into(),
    ));
    if let Some(p) = c.stat("s3-mixed", "streamdisk-s3").and_then(|s| s.peak) {
        out.push(finish(
            "peak memory, streamdisk, S3",
            "the peak cgroup memory of the S3 import (page cache and binary included)",
            Some(Spread {
                med: p.med / MIB,
                min: p.min / MIB,
                max: p.max / MIB,
            }),
            " MiB",
            Goal::AtMost(24.0),
            c.valid("s3-mixed", "streamdisk-s3"),
            String::new(),
        ));
    }
    if let Some(p) = c.stat("rootfs-xz", sd).and_then(|s| s.peak) {
        out.push(finish(
            "peak memory, streamdisk, raw.xz",
            "the same for the raw.xz image: the xz decoder's dictionary comes on top",
            Some(Spread {
                med: p.med / MIB,
                min: p.min / MIB,
                max: p.max / MIB,
            }),
            " MiB",
            Goal::Info,
            c.valid("rootfs-xz", sd),
            String::new(),
        ));
    }
    out
}

fn fmt_spread(s: Option<Spread>, scale: f64, prec: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.p$} [{:.p$}-{:.p$}]",
            s.med / scale,
            s.min / scale,
            s.max / scale,
            p = prec
        ),
        None => "-".into(),
    }
}

/// The Markdown summary (also what the program prints).
pub fn markdown(
    meta: &str,
    stats: &Stats,
    images: &BTreeMap<String, Image>,
    checks: &[Check],
    group_order: &[String],
) -> String {
    let m = |k| crate::data::meta_str(meta, k);
    let mut s = String::new();
    let _ = writeln!(s, "# streamdisk end-to-end benchmark: {} run", m("mode"));
    let _ = writeln!(s);
    if m("mode") == "quick" {
        let _ = writeln!(
            s,
            "> **Quick run: a sample for checking the harness.** Small images (512 MiB class), where\n\
             > start-up and noise weigh much more than in a `--full` run: these ratios are not the\n\
             > benchmark's results and must not be quoted as such.\n"
        );
    }
    let _ = writeln!(
        s,
        "`{}` on {} ({}), {}, cgroup {}, kernel {}; {} rounds; streamdisk {} (commit {}).",
        m("command"),
        m("date_utc"),
        m("cpu"),
        format_args!("{} GiB RAM", m("memory_gib")),
        m("cgroup"),
        m("kernel"),
        m("rounds"),
        if m("streamdisk").is_empty() {
            "not measured".into()
        } else {
            m("streamdisk")
        },
        m("git_commit"),
    );
    if !m("scale_note").is_empty() {
        let _ = writeln!(s, "\n**Scaled down:** {}.", m("scale_note"));
    }
    let _ = writeln!(s, "\n## Checks against the goals\n");
    let _ = writeln!(
        s,
        "| check | median [range] | goal | verdict |\n|---|---|---|---|"
    );
    for c in checks {
        let v = match c.value {
            Some(v) => format!("{:.2}{u} [{:.2}-{:.2}]", v.med, v.min, v.max, u = c.unit),
            None => "-".into(),
        };
        let _ = writeln!(s, "| {} | {} | {} | {} |", c.name, v, c.goal, c.verdict);
    }
    let _ = writeln!(s, "\nWhat each check compares:\n");
    for c in checks {
        let _ = writeln!(s, "- *{}*: {}.", c.name, c.meaning);
    }
    let _ = writeln!(
        s,
        "\n## Per image: medians [min-max] over the successful rounds\n"
    );
    for group in group_order {
        let mut imgs: Vec<&String> = stats
            .iter()
            .filter(|(_, st)| &st.group == group)
            .map(|((i, _), _)| i)
            .collect();
        imgs.dedup();
        for image in imgs {
            let Some(im) = images.get(image) else {
                continue;
            };
            let _ = writeln!(
                s,
                "### {group}: {image} (`{}`)\n\nvirtual {:.2} GiB, file {:.2} GiB, data {:.2} GiB{}; streamdisk output: **{}**\n",
                im.file,
                im.virtual_bytes as f64 / GIB,
                im.file_bytes as f64 / GIB,
                im.data_bytes as f64 / GIB,
                if im.note.is_empty() { String::new() } else { format!(", {}", im.note) },
                if im.verify.is_empty() { "not run" } else { &im.verify },
            );
            let _ = writeln!(
                s,
                "| command | limit MiB | ok/runs | wall s | CPU s | CPU s/GiB | peak MiB | limit hits | OOM kills |\n|---|---|---|---|---|---|---|---|---|"
            );
            let gib = im.virtual_bytes as f64 / GIB;
            for ((i, v), st) in stats.iter().filter(|((i, _), _)| i == image) {
                let _ = i;
                let cpu_gib = st
                    .cpu
                    .map(|c| format!("{:.2}", c.med / gib))
                    .unwrap_or_else(|| "-".into());
                let limit = if st.limit_mib == 0 {
                    "none".to_string()
                } else {
                    st.limit_mib.to_string()
                };
                let fail = if st.ok < st.runs {
                    format!(" ({})", st.failure)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {}/{}{} | {} | {} | {} | {} | {} | {} |",
                    describe(v),
                    limit,
                    st.ok,
                    st.runs,
                    fail,
                    fmt_spread(st.wall, 1.0, 2),
                    fmt_spread(st.cpu, 1.0, 2),
                    cpu_gib,
                    fmt_spread(st.peak, MIB, 1),
                    st.failcnt_max,
                    st.oom_max,
                );
            }
            let _ = writeln!(s);
        }
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_spread(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!(
            "{{\"median\": {}, \"min\": {}, \"max\": {}}}",
            s.med, s.min, s.max
        ),
        None => "null".into(),
    }
}

/// The machine-readable summary: the same medians and checks as the Markdown.
pub fn json(stats: &Stats, checks: &[Check]) -> String {
    let mut s = String::from("{\n  \"commands\": [\n");
    let rows: Vec<String> = stats
        .iter()
        .map(|((i, v), st)| {
            format!(
                "    {{\"image\": {}, \"variant\": {}, \"limit_mib\": {}, \"runs\": {}, \"ok\": {}, \"wall_s\": {}, \"cpu_s\": {}, \"peak_bytes\": {}, \"failcnt_max\": {}, \"oom_kills_max\": {}}}",
                json_str(i), json_str(v), st.limit_mib, st.runs, st.ok,
                json_spread(st.wall), json_spread(st.cpu), json_spread(st.peak), st.failcnt_max, st.oom_max
            )
        })
        .collect();
    s.push_str(&rows.join(",\n"));
    s.push_str("\n  ],\n  \"checks\": [\n");
    let rows: Vec<String> = checks
        .iter()
        .map(|c| {
            format!(
                "    {{\"name\": {}, \"value\": {}, \"unit\": {}, \"goal\": {}, \"verdict\": {}}}",
                json_str(&c.name),
                json_spread(c.value),
                json_str(c.unit.trim()),
                json_str(&c.goal),
                json_str(&c.verdict)
            )
        })
        .collect();
    s.push_str(&rows.join(",\n"));
    s.push_str("\n  ]\n}\n");
    s
}
