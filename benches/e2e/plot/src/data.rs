//! Reading what `run.sh` wrote: results.csv, images.csv, meta.json and the memory samples.
//!
//! The files are our own, written by a shell script, so the CSV dialect is small: plain fields,
//! and quoted fields (which may hold commas) for free text. A hand-written splitter keeps this
//! program's only dependency the plotting crate.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One measured command.
#[derive(Debug, Clone)]
pub struct Run {
    pub group: String,
    pub image: String,
    pub variant: String,
    pub limit_mib: u64,
    pub rc: i32,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub peak_bytes: u64,
    pub failcnt: u64,
    pub oom_kills: u64,
    pub t0: f64,
    pub note: String,
    /// The samples CSV of this run, `samples/<id>-<image>-<variant>.csv`.
    pub samples: PathBuf,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.rc == 0 && self.note.is_empty()
    }
}

/// One benchmark image.
#[derive(Debug, Clone)]
pub struct Image {
    pub file: String,
    pub virtual_bytes: u64,
    pub file_bytes: u64,
    pub data_bytes: u64,
    pub verify: String,
    pub note: String,
}

impl Image {
    pub fn verified(&self) -> bool {
        self.verify.starts_with("identical") && !self.verify.contains("FAILED")
    }
}

/// Split one CSV line into fields; double quotes group a field (no escaped quotes inside).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Rows of a CSV file as maps from the header's column names.
fn read_table(path: &Path) -> Result<Vec<BTreeMap<String, String>>, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header = split_csv(
        lines
            .next()
            .ok_or_else(|| format!("{} is empty", path.display()))?,
    );
    Ok(lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| header.iter().cloned().zip(split_csv(l)).collect())
        .collect())
}

fn field<'a>(row: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    row.get(key).map(String::as_str).unwrap_or("")
}

fn num<T: std::str::FromStr + Default>(row: &BTreeMap<String, String>, key: &str) -> T {
    field(row, key).trim().parse().unwrap_or_default()
}

pub fn read_runs(dir: &Path) -> Result<Vec<Run>, String> {
    let rows = read_table(&dir.join("results.csv"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: u32 = num(r, "run_id");
            let image = field(r, "image").to_string();
            let variant = field(r, "variant").to_string();
            Run {
                group: field(r, "group").to_string(),
                samples: dir
                    .join("samples")
                    .join(format!("{id:04}-{image}-{variant}.csv")),
                image,
                variant,
                limit_mib: num(r, "limit_mib"),
                rc: field(r, "rc").trim().parse().unwrap_or(-1),
                wall_s: num(r, "wall_s"),
                cpu_s: num(r, "cpu_s"),
                peak_bytes: num(r, "peak_bytes"),
                failcnt: num(r, "failcnt"),
                oom_kills: num(r, "oom_kills"),
                t0: num(r, "t0"),
                note: field(r, "note").to_string(),
            }
        })
        .collect())
}

pub fn read_images(dir: &Path) -> Result<BTreeMap<String, Image>, String> {
    let rows = read_table(&dir.join("images.csv"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                field(r, "image").to_string(),
                Image {
                    file: field(r, "file").to_string(),
                    virtual_bytes: num(r, "virtual_bytes"),
                    file_bytes: num(r, "file_bytes"),
                    data_bytes: num(r, "data_bytes"),
                    verify: field(r, "verify").to_string(),
                    note: field(r, "note").to_string(),
                },
            )
        })
        .collect())
}

/// The string value of `"key": "value"` in our flat meta.json (no nesting, no escapes).
pub fn meta_str(meta: &str, key: &str) -> String {
    let pat = format!("\"{key}\":");
    meta.find(&pat)
        .map(|i| {
            let rest = meta[i + pat.len()..].trim_start();
            // A quoted value ends at its closing quote only: the command line it may hold has
            // commas in it (`--groups mixed,zlib`). A bare value (a number) ends at the next
            // separator.
            match rest.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or(""),
                None => rest.split([',', '\n', '}']).next().unwrap_or(""),
            }
            .trim()
            .to_string()
        })
        .unwrap_or_default()
}

/// Memory samples of one run as (seconds since the command started, MiB).
pub fn read_samples(run: &Run) -> Vec<(f64, f64)> {
    let Ok(text) = fs::read_to_string(&run.samples) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (t, b) = l.split_once(',')?;
            let t: f64 = t.parse().ok()?;
            let b: f64 = b.trim().parse().ok()?;
            Some(((t - run.t0).max(0.0), b / 1_048_576.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoted_fields_keep_commas() {
        assert_eq!(split_csv(r#"a,"b, c",d"#), vec!["a", "b, c", "d"]);
        assert_eq!(split_csv("a,,"), vec!["a", "", ""]);
    }

    #[test]
    fn meta_values() {
        let m = "{\n  \"mode\": \"quick\",\n  \"rounds\": 3,\n  \"cgroup\": \"v1\"\n}";
        assert_eq!(meta_str(m, "mode"), "quick");
        assert_eq!(meta_str(m, "rounds"), "3");
        assert_eq!(meta_str(m, "missing"), "");
        let c = "{\"command\": \"run.sh --groups mixed,zlib --rounds 5\", \"rounds\": 5}";
        assert_eq!(
            meta_str(c, "command"),
            "run.sh --groups mixed,zlib --rounds 5"
        );
        assert_eq!(meta_str(c, "rounds"), "5");
    }
}
