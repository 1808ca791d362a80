//! Medians and spreads per (image, variant), over the successful runs only: a run that failed
//! or was OOM-killed is counted and shown, but it has no meaningful time.

use crate::data::Run;
use std::collections::BTreeMap;

/// Median with the smallest and largest value beside it: these machines are noisy, so a
/// median alone would hide how far apart the rounds were.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub med: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let med = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            med,
            min: v[0],
            max: v[n - 1],
        })
    }
}

#[derive(Debug, Clone)]
pub struct Stat {
    pub group: String,
    pub limit_mib: u64,
    pub runs: usize,
    pub ok: usize,
    pub wall: Option<Spread>,
    pub cpu: Option<Spread>,
    pub peak: Option<Spread>,
    pub failcnt_max: u64,
    pub oom_max: u64,
    /// The reason of the last failed run, if any.
    pub failure: String,
}

/// Key: (image, variant).
pub type Stats = BTreeMap<(String, String), Stat>;

pub fn compute(runs: &[Run]) -> Stats {
    let mut by: BTreeMap<(String, String), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        by.entry((r.image.clone(), r.variant.clone()))
            .or_default()
            .push(r);
    }
    by.into_iter()
        .map(|(k, rs)| {
            let ok: Vec<&&Run> = rs.iter().filter(|r| r.ok()).collect();
            let pick =
                |f: fn(&Run) -> f64| Spread::of(&ok.iter().map(|r| f(r)).collect::<Vec<_>>());
            let failure = rs
                .iter()
                .filter(|r| !r.ok())
                .map(|r| {
                    if !r.note.is_empty() {
                        r.note.clone()
                    } else if r.oom_kills > 0 {
                        format!("OOM-killed (exit status {})", r.rc)
                    } else {
                        format!("exit status {}", r.rc)
                    }
                })
                .next_back()
                .unwrap_or_default();
            let first = rs[0];
            let stat = Stat {
                group: first.group.clone(),
                limit_mib: first.limit_mib,
                runs: rs.len(),
                ok: ok.len(),
                wall: pick(|r| r.wall_s),
                cpu: pick(|r| r.cpu_s),
                peak: pick(|r| r.peak_bytes as f64),
                failcnt_max: rs.iter().map(|r| r.failcnt).max().unwrap_or(0),
                oom_max: rs.iter().map(|r| r.oom_kills).max().unwrap_or(0),
                failure,
            };
            (k, stat)
        })
        .collect()
}

/// The run to draw for a variant: the successful one whose wall time is the median (the
/// lower middle one for an even count), so a figure shows a typical run, not the best.
pub fn typical_run<'a>(runs: &'a [Run], image: &str, variant: &str) -> Option<&'a Run> {
    let mut ok: Vec<&Run> = runs
        .iter()
        .filter(|r| r.image == image && r.variant == variant && r.ok())
        .collect();
    ok.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    let n = ok.len();
    if n == 0 {
        None
    } else {
        ok.get((n - 1) / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_median_odd_and_even() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.med, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!((s.med, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Spread::of(&[]).is_none());
    }
}
