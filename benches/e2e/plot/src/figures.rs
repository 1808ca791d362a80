//! The SVG figures: memory over time of one typical run per command, and throughput and peak
//! memory against image size. SVG with plotters' built-in text layout: the text is written as
//! SVG <text> elements and the viewer draws it, so no font library is needed here.

use crate::data::{read_samples, Image, Run};
use crate::report::describe;
use crate::stats::{typical_run, Stats};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

const GIB: f64 = 1_073_741_824.0;
const MIB: f64 = 1_048_576.0;

/// One fixed colour per command, the same in every figure; streamdisk's are the reds.
fn color(variant: &str) -> RGBColor {
    match variant {
        "streamdisk" => RGBColor(0xd6, 0x27, 0x28),
        "streamdisk@64" => RGBColor(0xff, 0x98, 0x96),
        "streamdisk@32" => RGBColor(0x8b, 0x00, 0x00),
        "streamdisk-c1" => RGBColor(0xf7, 0xb6, 0xd2),
        "streamdisk-c4" => RGBColor(0xe3, 0x77, 0xc2),
        "streamdisk-local" => RGBColor(0xbc, 0xbd, 0x22),
        "streamdisk-base" => RGBColor(0x9e, 0x4a, 0x4a),
        "cdi-http" => RGBColor(0x1f, 0x77, 0xb4),
        "cdi-none" => RGBColor(0x17, 0xbe, 0xcf),
        "nbdkit" => RGBColor(0x2c, 0xa0, 0x2c),
        "qemu-local" => RGBColor(0xff, 0x7f, 0x0e),
        "qemu-local-loaded" => RGBColor(0xff, 0xbb, 0x78),
        "dd" => RGBColor(0x7f, 0x7f, 0x7f),
        "xz-pipe" => RGBColor(0x94, 0x67, 0xbd),
        "http-floor" => RGBColor(0x17, 0x17, 0x17),
        _ => RGBColor(0x8c, 0x56, 0x4b),
    }
}

/// "64 MiB", "1 GiB", "16 GiB" for a size given as log2 of GiB.
fn size_label(log2_gib: f64) -> String {
    let gib = log2_gib.exp2();
    if gib >= 1.0 {
        format!("{gib:.0} GiB")
    } else {
        format!("{:.0} MiB", gib * 1024.0)
    }
}

/// One line of a memory figure: command, samples (seconds, MiB).
type TimeSeries = (String, Vec<(f64, f64)>);
/// One line of a size figure: command, points (GiB, median, min, max).
type SizeSeries = (String, Vec<(f64, f64, f64, f64)>);

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Short legend labels: the variant name and what it stands for.
fn label(variant: &str) -> String {
    let d = describe(variant);
    let short: String = d.chars().take(70).collect();
    format!("{variant}: {short}")
}

/// Memory over time on one image: the typical (median) run of each command.
pub fn memory_over_time(
    runs: &[Run],
    image: &str,
    img: &Image,
    variants: &[String],
    path: &Path,
) -> Result<bool, String> {
    let series: Vec<TimeSeries> = variants
        .iter()
        .filter_map(|v| {
            let r = typical_run(runs, image, v)?;
            let s = read_samples(r);
            (!s.is_empty()).then(|| (v.clone(), s))
        })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let xmax = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.02;
    let ymax = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(8.0, f64::max)
        * 1.6; // headroom: the legend sits above the lines
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "Memory over time: {image} ({:.1} GiB virtual, {:.1} GiB file), cgroup memory incl. page cache",
        img.virtual_bytes as f64 / GIB,
        img.file_bytes as f64 / GIB
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the command started (typical round)")
        .y_desc("cgroup memory (MiB)")
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()
        .map_err(err)?;
    for (v, s) in &series {
        let c = color(v);
        chart
            .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(label(v))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

/// Against image size (the scaling images): throughput as virtual GiB per wall second, or
/// peak cgroup memory, one line per command, with the min-max spread as a vertical bar.
pub fn against_size(
    stats: &Stats,
    images: &BTreeMap<String, Image>,
    scaling: &[String],
    variants: &[String],
    peak: bool,
    path: &Path,
) -> Result<bool, String> {
    // x is the position of the image in the size order: the sizes grow by a constant factor
    // (1, 4, 16 GiB), so equal steps are a log scale, labelled with the real sizes.
    let labels: Vec<String> = scaling
        .iter()
        .map(|i| {
            images
                .get(i)
                .map(|m| size_label((m.virtual_bytes as f64 / GIB).log2()))
                .unwrap_or_default()
        })
        .collect();
    let mut lines: Vec<SizeSeries> = Vec::new();
    for v in variants {
        let mut pts = Vec::new();
        for (x, image) in scaling.iter().enumerate() {
            let (Some(im), Some(st)) = (images.get(image), stats.get(&(image.clone(), v.clone())))
            else {
                continue;
            };
            let g = im.virtual_bytes as f64 / GIB;
            let x = x as f64;
            let point = if peak {
                st.peak.map(|p| (x, p.med / MIB, p.min / MIB, p.max / MIB))
            } else {
                st.wall
                    .filter(|w| w.min > 0.0)
                    .map(|w| (x, g / w.med, g / w.max, g / w.min))
            };
            pts.extend(point);
        }
        if !pts.is_empty() {
            lines.push((v.clone(), pts));
        }
    }
    if lines.is_empty() {
        return Ok(false);
    }
    let n = scaling.len() as i32;
    let ymax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.3))
        .fold(0.1, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (title, ydesc) = if peak {
        (
            "Peak cgroup memory against image size",
            "peak cgroup memory (MiB), median, bar = min-max",
        )
    } else {
        (
            "Throughput against image size",
            "virtual GiB per wall second, median, bar = min-max",
        )
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
        .map_err(err)?;
    let fmt = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| labels.get(i))
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .x_desc("image virtual size (log scale; 3/8 of it stored)")
        .y_desc(ydesc)
        .x_label_formatter(&fmt)
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    let at = |x: f64| SegmentValue::CenterOf(x as i32);
    for (v, pts) in &lines {
        let c = color(v);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (at(p.0), p.1)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(label(v))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((at(p.0), p.1), 4, c.filled())),
            )
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter().map(|p| {
                    PathElement::new(vec![(at(p.0), p.2), (at(p.0), p.3)], c.stroke_width(1))
                }),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}
