//! Comparing runs (`viopath compare`): per op and layer, how the mean and the
//! quantiles moved between a base side and a new side, each with a confidence interval,
//! in the manner of benchstat.
//!
//! Each run is reduced to log-bucketed latency histograms per (op, layer), so a run of
//! any length costs a few KiB and a fleet's worth of runs can be compared. Buckets are
//! 1/128 wide in relative terms: a quantile read from them is within 0.4% of the exact
//! one. Means are exact (sums are kept per bucket).
//!
//! The interval is a hierarchical bootstrap of the relative change: each resample draws
//! the side's runs with replacement (so run-to-run variation counts, not only IO-to-IO
//! variation), then resamples each drawn run's IOs (Poisson bootstrap: a bucket of `c`
//! IOs gets a Poisson(`c`) count), and takes the statistic's relative change. The
//! interval is the percentile interval of those changes; a change whose interval
//! excludes zero is marked as beyond noise.

pub use crate::hist::Hist;
use crate::hist::{Bucket, Weighted};
use crate::join::{IoRow, OtherIo, Sink};
use crate::layers::{LAYER_NAMES, NL, split};
use crate::rng::Rng;
use polars_core::prelude::*;
use polars_io::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Read(#[from] crate::reader::ReadError),
    #[error(
        "{path}: not a viopath trace, nor a per-IO .csv or .parquet export (viopath report --format csv|parquet)"
    )]
    Table { path: PathBuf, source: PolarsError },
    #[error("{path}: not a per-IO export of viopath: {why}")]
    NotAnExport { path: PathBuf, why: String },
    #[error(
        "{path}: no runs found (a trace, a .csv or .parquet export, or a directory of .parquet files)"
    )]
    Empty { path: PathBuf },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "bad threshold {0:?}: expected [LAYER.]METRIC:+N% or -N% (METRIC: mean, p50, p90, p99, p99.9)"
    )]
    Threshold(String),
}

/// The statistics compared, in output order.
pub const METRICS: [&str; 5] = ["mean", "p50", "p90", "p99", "p99.9"];
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];
/// The name of the end-to-end "layer".
pub const E2E: &str = "e2e";

/// Statistics in METRICS order from weighted buckets of one or more runs.
fn stats(buckets: &[Weighted]) -> Option<[f64; 5]> {
    let mut merged: Vec<(f64, f64, f64)> = Vec::new();
    for (b, w) in buckets {
        for (i, &(mid, c, s)) in b.iter().enumerate() {
            let k = w[i];
            if k > 0.0 {
                merged.push((mid, k, if c > 0 { s / c as f64 * k } else { 0.0 }));
            }
        }
    }
    let n: f64 = merged.iter().map(|m| m.1).sum();
    if n <= 0.0 {
        return None;
    }
    merged.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = [0.0; 5];
    out[0] = merged.iter().map(|m| m.2).sum::<f64>() / n;
    let mut acc = 0.0;
    let mut qi = 0;
    for m in &merged {
        acc += m.1;
        // The quantile q is the first value with at least ceil(q n) values at or below.
        while qi < QUANTILES.len() && acc >= (QUANTILES[qi] * n).ceil().max(1.0) - 1e-9 {
            out[qi + 1] = m.0;
            qi += 1;
        }
    }
    while qi < QUANTILES.len() {
        out[qi + 1] = merged.last().map(|m| m.0).unwrap_or(0.0);
        qi += 1;
    }
    Some(out)
}

/// One run's latency histograms.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Where it came from (a trace, an export, a file in a partitioned directory).
    pub name: String,
    /// What was wrong with it as input (a trace's damage, losses), to warn of.
    pub warnings: Vec<String>,
    /// Complete IOs.
    pub ios: u64,
    /// (op, layer, latencies); layer `e2e` is the end-to-end time. A handful of
    /// entries, searched without allocating (this runs per IO and layer).
    series: Vec<(String, &'static str, Hist)>,
}

impl Run {
    pub(crate) fn add(&mut self, op: &str, e2e: u64, layers: &[Option<u64>]) {
        self.ios += 1;
        self.hist(op, E2E).add(e2e);
        for (i, l) in layers.iter().enumerate() {
            if let Some(ns) = l {
                self.hist(op, LAYER_NAMES[i]).add(*ns);
            }
        }
    }

    fn hist(&mut self, op: &str, layer: &'static str) -> &mut Hist {
        let i = match self
            .series
            .iter()
            .position(|(o, l, _)| o == op && *l == layer)
        {
            Some(i) => i,
            None => {
                self.series.push((op.to_owned(), layer, Hist::default()));
                self.series.len() - 1
            }
        };
        &mut self.series[i].2
    }

    /// The latencies of `op` in `layer`.
    pub fn get(&self, op: &str, layer: &str) -> Option<&Hist> {
        self.series
            .iter()
            .find(|(o, l, _)| o == op && *l == layer)
            .map(|x| &x.2)
    }

    /// Every (op, layer) with IOs.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.series.iter().map(|(o, l, _)| (o.as_str(), *l))
    }
}

/// A join sink that keeps only the histograms of complete IOs.
struct RunSink(Run);

impl Sink for RunSink {
    fn io(&mut self, row: &IoRow) {
        if row.partial != 0 {
            return;
        }
        let (layers, e2e) = split(&row.b);
        self.0.add(row.op.name(), e2e, &layers);
    }
    fn other(&mut self, _: &OtherIo) {}
}

/// Join a trace into a run (with its own layout snapshot).
pub fn run_from_trace(
    path: &Path,
    progress: Option<&crate::input::Progress>,
) -> Result<Run, CompareError> {
    let trace = crate::reader::Trace::open(path)?;
    let (layout, _) = crate::input::load_layout(&trace, &[]);
    let cfg = crate::input::join_config(&trace, &layout);
    let sink = RunSink(Run {
        name: path.display().to_string(),
        ..Run::default()
    });
    let mut join = crate::join::Join::new(&layout, sink, cfg);
    let events = crate::input::for_each_event(&trace, progress, |e| join.event(e));
    let (mut sink, _) = join.finish();
    sink.0.warnings = crate::summary::input_warnings(
        events.damage().or(trace.info.damage.as_ref()),
        trace.info.events_lost_in_kernel,
        events.impossible(),
        trace.info.complete,
    );
    Ok(sink.0)
}

/// A per-IO export (`viopath report --format csv|parquet`) as a run.
pub fn run_from_export(path: &Path) -> Result<Run, CompareError> {
    let table = |source| CompareError::Table {
        path: path.to_owned(),
        source,
    };
    let df = if path.extension().is_some_and(|e| e == "csv") {
        CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.to_owned()))
            .and_then(|r| r.finish())
            .map_err(table)?
    } else {
        let f = std::fs::File::open(path).map_err(|source| CompareError::Io {
            path: path.to_owned(),
            source,
        })?;
        ParquetReader::new(f).finish().map_err(table)?
    };
    let bad = |why: String| CompareError::NotAnExport {
        path: path.to_owned(),
        why,
    };
    let col_u64 = |name: &str| -> Result<Vec<Option<u64>>, CompareError> {
        let c = df
            .column(name)
            .map_err(|_| bad(format!("no column {name}")))?;
        let c = c
            .cast(&DataType::UInt64)
            .map_err(|e| bad(format!("column {name}: {e}")))?;
        Ok(c.u64()
            .map_err(|e| bad(format!("column {name}: {e}")))?
            .downcast_iter()
            .flat_map(|a| a.iter().map(|v| v.copied()))
            .collect())
    };
    let col_str = |name: &str| -> Result<Vec<Option<String>>, CompareError> {
        let c = df
            .column(name)
            .map_err(|_| bad(format!("no column {name}")))?;
        let c = c
            .cast(&DataType::String)
            .map_err(|e| bad(format!("column {name}: {e}")))?;
        Ok(c.str()
            .map_err(|e| bad(format!("column {name}: {e}")))?
            .downcast_iter()
            .flat_map(|a| a.iter().map(|s| s.map(str::to_owned)))
            .collect())
    };
    let op = col_str("op")?;
    let partial = col_str("partial")?;
    let e2e = col_u64("e2e_ns")?;
    // A layer added after an export was written (blk_throttle) is absent from it: none
    // of its IOs has that layer.
    let layers: Vec<Vec<Option<u64>>> = LAYER_NAMES
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let name = format!("{l}_ns");
            if i >= ORIGINAL_LAYERS && df.column(&name).is_err() {
                Ok(vec![None; df.height()])
            } else {
                col_u64(&name)
            }
        })
        .collect::<Result<_, _>>()?;
    let mut run = Run {
        name: path.display().to_string(),
        ..Run::default()
    };
    let mut ls = [None; NL];
    for i in 0..df.height() {
        if partial[i].as_deref().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        let (Some(op), Some(e2e)) = (op[i].as_deref(), e2e[i]) else {
            continue;
        };
        for (k, l) in layers.iter().enumerate() {
            ls[k] = l[i];
        }
        run.add(op, e2e, &ls);
    }
    Ok(run)
}

/// The runs at `path`: a trace, an export file, or a directory holding `.parquet`
/// exports at any depth (a hive-partitioned fleet directory; each file is one run).
pub fn load(
    path: &Path,
    progress: Option<&crate::input::Progress>,
) -> Result<Vec<Run>, CompareError> {
    let io = |source| CompareError::Io {
        path: path.to_owned(),
        source,
    };
    if path.is_dir() {
        let mut files = Vec::new();
        let mut stack = vec![path.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(io)? {
                let p = e.map_err(io)?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "parquet") {
                    files.push(p);
                }
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(CompareError::Empty {
                path: path.to_owned(),
            });
        }
        return files.iter().map(|f| run_from_export(f)).collect();
    }
    let mut magic = [0u8; 8];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(io)?;
        f.read(&mut magic).map_err(io)?
    };
    if n >= 7 && magic.starts_with(b"VIOPATH") {
        return Ok(vec![run_from_trace(path, progress)?]);
    }
    Ok(vec![run_from_export(path)?])
}

/// What a change amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The interval is above zero.
    Slower,
    /// The interval is below zero.
    Faster,
    /// The interval contains zero.
    NoChange,
    /// Too few IOs on a side for this statistic: fewer than 5 beyond the quantile, or
    /// fewer than 30 in all.
    TooFew,
}

/// One statistic of one (op, layer), base against new.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub op: String,
    pub layer: String,
    pub metric: &'static str,
    pub base_ns: f64,
    pub new_ns: f64,
    /// (new - base) / base.
    pub delta: f64,
    /// The confidence interval of `delta`.
    pub ci: Option<(f64, f64)>,
    pub n_base: u64,
    pub n_new: u64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy)]
pub struct CompareOptions {
    pub resamples: u32,
    /// E.g. 0.95.
    pub confidence: f64,
    pub seed: u64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            resamples: 1000,
            confidence: 0.95,
            // Fixed, so the same inputs give the same intervals.
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// Whether `n` IOs are enough for statistic `m` (METRICS index): at least 30 IOs, and
/// at least 5 beyond the quantile. (The percentile bootstrap is too confident on
/// smaller samples: one outlier among a dozen IOs would read as a change.)
fn enough(n: u64, m: usize) -> bool {
    if n < 30 {
        return false;
    }
    match m {
        0 => true,
        _ => n as f64 * (1.0 - QUANTILES[m - 1]) >= 5.0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Layers every export has had a column for; those after them may be missing from
/// older ones.
const ORIGINAL_LAYERS: usize = 9;

/// Compare every (op, layer) present on both sides.
pub fn compare(base: &[Run], new: &[Run], opts: &CompareOptions) -> Vec<Change> {
    // End-to-end first, then the layers along the path.
    let rank = |l: &str| {
        if l == E2E {
            0
        } else {
            1 + crate::layers::path_layers()
                .position(|x| x == l)
                .unwrap_or(NL)
        }
    };
    let mut keys: Vec<(String, &'static str)> = base
        .iter()
        .flat_map(|r| r.keys())
        .filter(|(o, l)| new.iter().any(|r| r.get(o, l).is_some()))
        .map(|(o, l)| (o.to_owned(), l))
        .collect();
    keys.sort_by(|a, b| (&a.0, rank(a.1)).cmp(&(&b.0, rank(b.1))));
    keys.dedup();
    let mut rng = Rng(opts.seed);
    let mut out = Vec::new();
    for key in keys {
        let side = |runs: &[Run]| -> Vec<Vec<Bucket>> {
            runs.iter()
                .filter_map(|r| r.get(&key.0, key.1))
                .filter(|h| h.n > 0)
                .map(Hist::dense)
                .collect()
        };
        let (b, n) = (side(base), side(new));
        let count = |s: &Vec<Vec<Bucket>>| -> u64 { s.iter().flatten().map(|x| x.1).sum() };
        let (nb, nn) = (count(&b), count(&n));
        let point = |s: &Vec<Vec<Bucket>>| {
            let w: Vec<Vec<f64>> = s
                .iter()
                .map(|r| r.iter().map(|x| x.1 as f64).collect())
                .collect();
            let parts: Vec<Weighted> = s
                .iter()
                .zip(&w)
                .map(|(r, w)| (r.as_slice(), w.as_slice()))
                .collect();
            stats(&parts)
        };
        let (Some(pb), Some(pn)) = (point(&b), point(&n)) else {
            continue;
        };
        // Bootstrap: relative changes of every statistic per resample.
        let mut deltas: Vec<Vec<f64>> = (0..5)
            .map(|_| Vec::with_capacity(opts.resamples as usize))
            .collect();
        let resample = |s: &Vec<Vec<Bucket>>, rng: &mut Rng| {
            let picks: Vec<usize> = if s.len() > 1 {
                (0..s.len()).map(|_| rng.below(s.len())).collect()
            } else {
                vec![0]
            };
            let w: Vec<Vec<f64>> = picks
                .iter()
                .map(|&i| s[i].iter().map(|x| rng.poisson(x.1 as f64)).collect())
                .collect();
            let parts: Vec<Weighted> = picks
                .iter()
                .zip(&w)
                .map(|(&i, w)| (s[i].as_slice(), w.as_slice()))
                .collect();
            stats(&parts)
        };
        for _ in 0..opts.resamples {
            let (Some(rb), Some(rn)) = (resample(&b, &mut rng), resample(&n, &mut rng)) else {
                continue;
            };
            for m in 0..5 {
                if rb[m] > 0.0 {
                    deltas[m].push(rn[m] / rb[m] - 1.0);
                }
            }
        }
        let tail = (1.0 - opts.confidence) / 2.0;
        for (m, d) in deltas.iter_mut().enumerate() {
            let delta = if pb[m] > 0.0 {
                pn[m] / pb[m] - 1.0
            } else {
                0.0
            };
            let ok = enough(nb, m) && enough(nn, m) && d.len() >= 10;
            let ci = ok.then(|| {
                d.sort_by(f64::total_cmp);
                (percentile(d, tail), percentile(d, 1.0 - tail))
            });
            let verdict = match ci {
                None => Verdict::TooFew,
                Some((lo, _)) if lo > 0.0 => Verdict::Slower,
                Some((_, hi)) if hi < 0.0 => Verdict::Faster,
                Some(_) => Verdict::NoChange,
            };
            out.push(Change {
                op: key.0.clone(),
                layer: key.1.to_owned(),
                metric: METRICS[m],
                base_ns: pb[m],
                new_ns: pn[m],
                delta,
                ci,
                n_base: nb,
                n_new: nn,
                verdict,
            });
        }
    }
    out
}

/// A `--fail-on` rule: `[LAYER.]METRIC:+N%` fails on a change beyond noise larger
/// than +N% (slower); `-N%` on one below -N% (faster). Without a layer, any layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub layer: Option<String>,
    pub metric: &'static str,
    /// Relative: +0.10 for +10%.
    pub limit: f64,
}

impl std::str::FromStr for Threshold {
    type Err = CompareError;
    fn from_str(s: &str) -> Result<Self, CompareError> {
        let bad = || CompareError::Threshold(s.to_owned());
        let (what, limit) = s.split_once(':').ok_or_else(bad)?;
        // "p99.9" has a dot of its own: match the metric at the end.
        let (layer, metric) = METRICS
            .iter()
            .find_map(|&m| {
                if what == m {
                    Some((None, m))
                } else {
                    let l = what.strip_suffix(m)?.strip_suffix('.')?;
                    (!l.is_empty()).then_some((Some(l), m))
                }
            })
            .ok_or_else(bad)?;
        if let Some(l) = layer
            && l != E2E
            && !LAYER_NAMES.contains(&l)
        {
            return Err(bad());
        }
        let pct = limit.trim().strip_suffix('%').ok_or_else(bad)?;
        if !pct.starts_with(['+', '-']) {
            return Err(bad());
        }
        let v: f64 = pct
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(bad)?;
        Ok(Threshold {
            layer: layer.map(str::to_owned),
            metric,
            limit: v / 100.0,
        })
    }
}

impl Threshold {
    /// Whether this change breaks the rule.
    pub fn broken_by(&self, c: &Change) -> bool {
        if c.metric != self.metric || self.layer.as_deref().is_some_and(|l| l != c.layer) {
            return false;
        }
        if self.limit >= 0.0 {
            c.verdict == Verdict::Slower && c.delta > self.limit
        } else {
            c.verdict == Verdict::Faster && c.delta < self.limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: impl Iterator<Item = u64>) -> Run {
        let mut r = Run::default();
        for v in values {
            r.add("read", v, &[None; NL]);
        }
        r
    }

    #[test]
    fn quantiles_match_sorted_samples() {
        // 1..=10000 µs: p50 = 5000 µs, p99 = 9900 µs exactly (nearest rank).
        let r = run((1..=10_000).map(|i| i * 1000));
        let c = compare(
            std::slice::from_ref(&r),
            std::slice::from_ref(&r),
            &CompareOptions::default(),
        );
        let get = |m: &str| c.iter().find(|c| c.metric == m).unwrap();
        assert!((get("p50").base_ns - 5e6).abs() / 5e6 < 0.004);
        assert!((get("p99").base_ns - 9.9e6).abs() / 9.9e6 < 0.004);
        assert!((get("mean").base_ns - 5_000_500.0).abs() < 1.0);
        // The same data on both sides: no change, and the interval says so.
        for x in &c {
            assert_eq!(x.verdict, Verdict::NoChange, "{x:?}");
        }
    }

    #[test]
    fn a_shift_is_found_and_noise_is_not() {
        // Deterministic pseudo-random latencies, 20% slower on the new side.
        let mut g = Rng(7);
        let a = run((0..5000).map(|_| 50_000 + g.next() % 50_000));
        let b = run((0..5000).map(|_| 50_000 + g.next() % 50_000));
        let slow = run((0..5000).map(|_| (50_000 + g.next() % 50_000) * 6 / 5));
        let same = compare(std::slice::from_ref(&a), &[b], &CompareOptions::default());
        assert!(
            same.iter()
                .filter(|c| c.metric != "p99.9")
                .all(|c| c.verdict == Verdict::NoChange),
            "{same:?}"
        );
        let worse = compare(&[a], &[slow], &CompareOptions::default());
        let p50 = worse.iter().find(|c| c.metric == "p50").unwrap();
        assert_eq!(p50.verdict, Verdict::Slower);
        assert!((p50.delta - 0.2).abs() < 0.03, "{p50:?}");
        let (lo, hi) = p50.ci.unwrap();
        assert!(lo < 0.2 && 0.2 < hi, "{p50:?}");
        let rule: Threshold = "e2e.p50:+10%".parse().unwrap();
        assert!(rule.broken_by(p50));
        let rule: Threshold = "p50:+30%".parse().unwrap();
        assert!(!rule.broken_by(p50));
    }

    #[test]
    fn thresholds_parse() {
        let t: Threshold = "p99.9:+5%".parse().unwrap();
        assert_eq!((t.layer, t.metric, t.limit), (None, "p99.9", 0.05));
        let t: Threshold = "device.p99.9:-5%".parse().unwrap();
        assert_eq!(t.layer.as_deref(), Some("device"));
        assert_eq!(t.metric, "p99.9");
        for bad in ["p98:+5%", "p99:5%", "p99", "nolayer.p99:+1%", "p99:+x%"] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
    }

    #[test]
    fn too_few_ios_get_no_verdict() {
        let a = run((1..=100).map(|i| i * 1000));
        let c = compare(
            std::slice::from_ref(&a),
            std::slice::from_ref(&a),
            &CompareOptions::default(),
        );
        let get = |m: &str| c.iter().find(|c| c.metric == m).unwrap();
        assert_eq!(get("p99").verdict, Verdict::TooFew);
        assert_eq!(get("p90").verdict, Verdict::NoChange);
    }
}
