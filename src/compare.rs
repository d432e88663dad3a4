//! `viopath compare`: base runs against new runs, per op and layer, in the manner of
//! benchstat.

use crate::ui::Bar;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use tabled::builder::Builder;
use tabled::settings::Style;
use viopath_reporter::compare::{self, Change, CompareOptions, METRICS, Run, Threshold, Verdict};
use viopath_reporter::units::{pct, us};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables for a terminal
    Table,
    /// GitHub-flavoured Markdown tables (for a pull request or a wiki)
    Markdown,
    /// Everything, as JSON
    Json,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The base side: traces, per-IO exports (.csv, .parquet), or directories of .parquet
    /// exports (e.g. `viopath report --format parquet` fleet directories)
    #[arg(required = true, num_args = 1..)]
    pub base: Vec<PathBuf>,
    /// The new side, as for the base
    #[arg(long = "vs", required = true, num_args = 1..)]
    pub new: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write to this file instead of standard output
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Exit with status 2 when a change beyond noise passes a threshold:
    /// `[LAYER.]METRIC:+N%` (slower by more than N%) or `:-N%` (faster); METRIC is
    /// mean, p50, p90, p99 or p99.9, LAYER e2e or a layer name. Repeatable.
    #[arg(long = "fail-on", value_name = "RULE")]
    pub fail_on: Vec<String>,
    /// Confidence level of the intervals
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Bootstrap resamples (at least 100)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(100..))]
    pub resamples: u32,
    /// Show every statistic, not only those that changed beyond noise
    #[arg(long)]
    pub all: bool,
    /// Also write the comparison as one self-contained HTML page with charts (each
    /// change with its interval, base and new latency distributions per layer)
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// The thresholds that a comparison broke (the binary exits with 2).
#[derive(Debug)]
pub struct Broken(pub Vec<String>);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thresholds broken: {}", self.0.join("; "))
    }
}

impl std::error::Error for Broken {}

fn method(opts: &CompareOptions) -> String {
    format!(
        "{:.0}% confidence intervals of the relative change: hierarchical bootstrap (runs, then IOs), {} resamples; quantiles from log buckets (±0.4%)",
        opts.confidence * 100.0,
        opts.resamples
    )
}

fn load_side(paths: &[PathBuf]) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for p in paths {
        let bar = Bar::new(&format!("reading {}", p.display()));
        let loaded = compare::load(p, Some(&bar.progress()))?;
        drop(bar);
        for r in &loaded {
            for w in &r.warnings {
                eprintln!("viopath: warning: {}: {w}", r.name);
            }
        }
        runs.extend(loaded);
    }
    Ok(runs)
}

fn mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Slower => "slower",
        Verdict::Faster => "faster",
        Verdict::NoChange => "~",
        Verdict::TooFew => "too few IOs",
    }
}

pub fn run(args: &CompareArgs, out: &mut dyn Write) -> Result<()> {
    let rules: Vec<Threshold> = args
        .fail_on
        .iter()
        .map(|r| r.parse())
        .collect::<Result<_, _>>()?;
    if !(0.5..1.0).contains(&args.confidence) {
        anyhow::bail!("--confidence must be in [0.5, 1), e.g. 0.95");
    }
    let base = load_side(&args.base)?;
    let new = load_side(&args.new)?;
    let opts = CompareOptions {
        resamples: args.resamples,
        confidence: args.confidence,
        ..CompareOptions::default()
    };
    let changes = compare::compare(&base, &new, &opts);
    let broken: Vec<String> = changes
        .iter()
        .flat_map(|c| {
            rules.iter().filter(|r| r.broken_by(c)).map(move |r| {
                format!(
                    "{} {} {} {} ({} → {} µs)",
                    c.op,
                    c.layer,
                    c.metric,
                    pct(c.delta),
                    us(c.base_ns),
                    us(c.new_ns)
                ) + &format!(" breaks {}", rule_text(r))
            })
        })
        .collect();

    if let Some(path) = &args.html {
        let page = viopath_reporter::html::compare_page(&viopath_reporter::html::ComparePage {
            base: &base,
            new: &new,
            changes: &changes,
            method: &method(&opts),
            confidence: opts.confidence,
            broken: &broken,
        });
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        crate::ui::note!("viopath: HTML comparison in {}", path.display());
    }
    let mut file;
    let w: &mut dyn Write = match &args.output {
        Some(p) => {
            file = BufWriter::new(
                File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
            &mut file
        }
        None => out,
    };
    match args.format {
        Format::Json => {
            let side = |runs: &[Run]| {
                runs.iter()
                    .map(|r| json!({"name": r.name, "ios": r.ios}))
                    .collect::<Vec<_>>()
            };
            serde_json::to_writer_pretty(
                &mut *w,
                &json!({
                    "method": method(&opts),
                    "base": side(&base),
                    "new": side(&new),
                    "changes": changes,
                    "fail_on": args.fail_on,
                    "broken": broken,
                }),
            )?;
            writeln!(w)?;
        }
        Format::Table | Format::Markdown => {
            tables(args, &base, &new, &changes, &opts, &broken, w)?;
        }
    }
    w.flush()?;
    if !broken.is_empty() {
        return Err(Broken(broken).into());
    }
    Ok(())
}

fn rule_text(r: &Threshold) -> String {
    format!(
        "{}{}:{}",
        r.layer
            .as_deref()
            .map(|l| format!("{l}."))
            .unwrap_or_default(),
        r.metric,
        pct(r.limit)
    )
}

fn tables(
    args: &CompareArgs,
    base: &[Run],
    new: &[Run],
    changes: &[Change],
    opts: &CompareOptions,
    broken: &[String],
    w: &mut dyn Write,
) -> Result<()> {
    let md = args.format == Format::Markdown;
    let ios = |r: &[Run]| r.iter().map(|r| r.ios).sum::<u64>();
    let head = format!(
        "viopath compare: base {} run{} ({} IOs) vs new {} run{} ({} IOs)",
        base.len(),
        if base.len() == 1 { "" } else { "s" },
        ios(base),
        new.len(),
        if new.len() == 1 { "" } else { "s" },
        ios(new)
    );
    if md {
        writeln!(w, "### {head}\n\n{}.", method(opts))?;
    } else {
        writeln!(
            w,
            "{head}\n{}",
            crate::ui::prose(&format!("{}.", method(opts)))
        )?;
        writeln!(
            w,
            "~ : the interval contains 0 (no change beyond noise); latencies in µs."
        )?;
    }
    let tested = changes
        .iter()
        .filter(|c| c.verdict != Verdict::TooFew)
        .count();
    if tested > 0 {
        writeln!(
            w,
            "{tested} statistics tested: about {:.0} of them may be marked by chance alone.",
            tested as f64 * (1.0 - opts.confidence)
        )?;
    }
    let shown: Vec<&Change> = changes
        .iter()
        .filter(|c| args.all || matches!(c.verdict, Verdict::Slower | Verdict::Faster))
        .collect();
    if changes.is_empty() {
        writeln!(w, "\nNo (op, layer) has complete IOs on both sides.")?;
    } else if shown.is_empty() {
        // Only statistics with enough IOs on both sides were tested at all.
        let too_few = changes.len() - tested;
        let untested = if too_few > 0 {
            format!("; {too_few} had too few IOs to test")
        } else {
            String::new()
        };
        writeln!(
            w,
            "\nNo change beyond noise in the {tested} statistics tested{untested} (--all shows them)."
        )?;
    }
    for metric in METRICS {
        let rows: Vec<&&Change> = shown.iter().filter(|c| c.metric == metric).collect();
        if rows.is_empty() {
            continue;
        }
        writeln!(w, "\n{}{metric}", if md { "#### " } else { "" })?;
        if md {
            writeln!(w)?;
        }
        let mut b = Builder::default();
        b.push_record([
            "op",
            "layer",
            "base",
            "new",
            "delta",
            "interval",
            "",
            "IOs base/new",
        ]);
        for c in rows {
            b.push_record([
                c.op.clone(),
                if c.layer == "e2e" {
                    "end-to-end".to_owned()
                } else {
                    c.layer.clone()
                },
                us(c.base_ns),
                us(c.new_ns),
                pct(c.delta),
                c.ci.map(|(lo, hi)| format!("[{}, {}]", pct(lo), pct(hi)))
                    .unwrap_or_else(|| "-".into()),
                mark(c.verdict).to_owned(),
                format!("{}/{}", c.n_base, c.n_new),
            ]);
        }
        let t = if md {
            let mut t = b.build();
            t.with(Style::markdown());
            t
        } else {
            crate::ui::table(b)
        };
        writeln!(w, "{t}")?;
    }
    if !broken.is_empty() {
        writeln!(w)?;
        for b in broken {
            writeln!(w, "FAIL: {b}")?;
        }
    }
    Ok(())
}
