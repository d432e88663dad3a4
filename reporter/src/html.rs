//! Self-contained HTML pages with inline SVG charts: the report (`viopath report
//! --html`) and the comparison (`viopath compare --html`).
//!
//! A page loads nothing: no script, no style sheet, no font, no image from elsewhere,
//! so it opens offline and can be attached to a ticket. Charts are plain SVG drawn
//! here; hovering a bar or a point shows its numbers (SVG `<title>`). Each chart's
//! `<svg class="chart">` lists the colours it drew data in (`data-colors`), so a test
//! can look for them in a screenshot.

use crate::compare::{Change, E2E, Hist, METRICS, Run, Verdict};
use crate::join::IoRow;
use crate::join::{flag_names, reason_names};
use crate::layers::{Boundaries, LAYER_HELP, LAYER_NAMES, NL, split};
use crate::report::{Report, size_class};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// What the HTML report draws beyond the latency table, collected while rows stream
/// past: latency histograms per (op, layer) and IOPS and latency over time. Its size is
/// bounded (a few hundred KiB) whatever the trace length.
#[derive(Debug, Clone, Default)]
pub struct Pictures {
    pub hists: Run,
    pub timeline: Timeline,
}

impl Pictures {
    /// A complete row.
    pub fn add(&mut self, row: &IoRow) {
        let (layers, e2e) = split(&row.b);
        self.hists.add(row.op.name(), e2e, &layers);
        self.timeline.add(row, e2e);
    }
}

/// Time slots kept while recording; adjacent slots merge (and the slot width doubles)
/// when a trace outlasts them.
const SLOTS: usize = 512;
/// Latency bins per slot: a quarter octave each, from 256 ns.
const BINS: usize = 128;
/// Slot width to start with: 1 ms.
const FIRST_WIDTH: u64 = 1_000_000;

fn bin(ns: u64) -> usize {
    let x = (ns.max(256) as f64 / 256.0).log2() * 4.0;
    (x as usize).min(BINS - 1)
}

/// The geometric middle of a bin, ns.
fn bin_mid(b: usize) -> f64 {
    256.0 * 2f64.powf((b as f64 + 0.5) / 4.0)
}

#[derive(Debug, Clone)]
struct Slot {
    ios: u32,
    bytes: u64,
    sum_ns: f64,
    bins: [u32; BINS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            ios: 0,
            bytes: 0,
            sum_ns: 0.0,
            bins: [0; BINS],
        }
    }
}

impl Slot {
    fn merge(&mut self, o: &Slot) {
        self.ios += o.ios;
        self.bytes += o.bytes;
        self.sum_ns += o.sum_ns;
        for (a, b) in self.bins.iter_mut().zip(o.bins.iter()) {
            *a += b;
        }
    }

    /// The q-quantile from the bins (within a quarter octave, ±9%).
    fn quantile(&self, q: f64) -> f64 {
        let want = ((q * self.ios as f64).ceil() as u64).max(1);
        let mut acc = 0u64;
        for (i, &c) in self.bins.iter().enumerate() {
            acc += u64::from(c);
            if acc >= want {
                return bin_mid(i);
            }
        }
        bin_mid(BINS - 1)
    }
}

/// Complete IOs per op in time slots by completion time, from the first IO's start.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    t0: u64,
    width: u64,
    series: Vec<(&'static str, Vec<Slot>)>,
}

impl Timeline {
    fn add(&mut self, row: &IoRow, e2e: u64) {
        let start = row.b.iter().copied().filter(|&t| t != 0).min().unwrap_or(0);
        let end = row.b.iter().copied().max().unwrap_or(0);
        if end == 0 {
            return;
        }
        if self.width == 0 {
            self.t0 = start;
            self.width = FIRST_WIDTH;
        }
        let mut i = (end.saturating_sub(self.t0) / self.width) as usize;
        while i >= SLOTS {
            self.halve();
            i = (end.saturating_sub(self.t0) / self.width) as usize;
        }
        let op = row.op.name();
        let s = match self.series.iter().position(|(o, _)| *o == op) {
            Some(s) => s,
            None => {
                self.series.push((op, Vec::new()));
                self.series.len() - 1
            }
        };
        let slots = &mut self.series[s].1;
        if slots.len() <= i {
            slots.resize(i + 1, Slot::default());
        }
        let slot = &mut slots[i];
        slot.ios += 1;
        slot.bytes += row.bytes;
        slot.sum_ns += e2e as f64;
        slot.bins[bin(e2e)] += 1;
    }

    /// Merge slot pairs: twice as wide, half as many.
    fn halve(&mut self) {
        self.width *= 2;
        for (_, slots) in &mut self.series {
            *slots = merge_pairs(slots, 2);
        }
    }

    /// The series regrouped into at most `n` slots for drawing: (slot width in ns,
    /// per op the slots).
    fn coarse(&self, n: usize) -> (u64, Vec<(&'static str, Vec<Slot>)>) {
        let len = self.series.iter().map(|s| s.1.len()).max().unwrap_or(0);
        let k = len.div_ceil(n.max(1)).max(1);
        let series = self
            .series
            .iter()
            .map(|(op, slots)| {
                let mut v = merge_pairs(slots, k);
                v.resize(len.div_ceil(k), Slot::default());
                (*op, v)
            })
            .collect();
        (self.width * k as u64, series)
    }
}

fn merge_pairs(slots: &[Slot], k: usize) -> Vec<Slot> {
    slots
        .chunks(k)
        .map(|c| {
            let mut m = Slot::default();
            for s in c {
                m.merge(s);
            }
            m
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Drawing.

/// Layer colours, in LAYER_NAMES order (colour-blind-safe Tableau 10).
const LAYER_COLORS: [&str; NL] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f",
];
const E2E_COLOR: &str = "#3b3b3b";
const BASE_COLOR: &str = "#4e79a7";
const NEW_COLOR: &str = "#e15759";
const SLOWER_COLOR: &str = "#d62728";
const FASTER_COLOR: &str = "#2ca02c";
const SAME_COLOR: &str = "#8c8c8c";
const AXIS: &str = "#666666";
const GRID: &str = "#e4e4e4";

fn op_color(op: &str) -> &'static str {
    match op {
        "read" => "#1f77b4",
        "write" => "#d62728",
        "flush" => "#2ca02c",
        "discard" => "#9467bd",
        "write_zeroes" => "#8c564b",
        "get_id" => "#17becf",
        _ => "#7f7f7f",
    }
}

fn layer_color(layer: &str) -> &'static str {
    LAYER_NAMES
        .iter()
        .position(|l| *l == layer)
        .map_or(E2E_COLOR, |i| LAYER_COLORS[i])
}

fn layer_title(layer: &str) -> &str {
    if layer == E2E { "end-to-end" } else { layer }
}

/// Escape text for HTML and SVG (field data: guest file names, trace paths).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// A duration for people: 850 ns, 12.3 µs, 1.20 ms, 2.50 s.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e4 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Bytes for people: 512 B, 4.0 KiB, 1.5 GiB.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A round duration as an axis label: 50 µs, 1.5 ms (no trailing zeros).
fn fmt_axis(ns: f64) -> String {
    let (v, unit) = if ns == 0.0 {
        (0.0, "")
    } else if ns < 1e3 {
        (ns, " ns")
    } else if ns < 1e6 {
        (ns / 1e3, " µs")
    } else if ns < 1e9 {
        (ns / 1e6, " ms")
    } else {
        (ns / 1e9, " s")
    };
    // Ticks are 1, 2 or 5 × 10^k: three significant digits say them exactly.
    let r = format!("{v:.2}");
    let r = r.trim_end_matches('0').trim_end_matches('.');
    format!("{r}{unit}")
}

/// A power of ten of nanoseconds as an axis label: 100 ns, 1 µs, 10 ms.
fn fmt_decade(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{v:.0} {unit}")
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// An SVG chart being drawn; `colors` are the colours data was drawn in.
struct Chart {
    w: f64,
    h: f64,
    body: String,
    colors: BTreeSet<&'static str>,
    label: String,
}

impl Chart {
    fn new(w: f64, h: f64, label: &str) -> Chart {
        Chart {
            w,
            h,
            body: String::new(),
            colors: BTreeSet::new(),
            label: label.to_owned(),
        }
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, class: &str, s: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" class="{class}">{}</text>"#,
            esc(s)
        );
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = write!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}"/>"#
        );
    }

    /// A data rectangle with a tooltip.
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &'static str, tip: &str) {
        self.colors.insert(fill);
        let _ = write!(
            self.body,
            r#"<rect x="{x:.2}" y="{y:.2}" width="{:.2}" height="{:.2}" fill="{fill}" shape-rendering="crispEdges"><title>{}</title></rect>"#,
            w.max(0.0),
            h.max(0.0),
            esc(tip)
        );
    }

    fn finish(self) -> String {
        let colors: Vec<&str> = self.colors.into_iter().collect();
        format!(
            r#"<svg class="chart" role="img" aria-label="{}" data-colors="{}" width="{w}" height="{h}" viewBox="0 0 {w} {h}">{}</svg>"#,
            esc(&self.label),
            colors.join(" "),
            self.body,
            w = self.w,
            h = self.h,
        )
    }
}

/// A logarithmic axis over [lo, hi] (ns) onto [x0, x1] (px).
#[derive(Clone, Copy)]
struct LogAxis {
    lo: f64,
    hi: f64,
    x0: f64,
    x1: f64,
}

impl LogAxis {
    /// Covering `lo..hi`, widened to whole decades.
    fn decades(lo: f64, hi: f64, x0: f64, x1: f64) -> LogAxis {
        let lo = 10f64.powf(lo.max(1.0).log10().floor());
        let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
        LogAxis { lo, hi, x0, x1 }
    }

    fn at(&self, v: f64) -> f64 {
        let f = (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        self.x0 + f.clamp(0.0, 1.0) * (self.x1 - self.x0)
    }

    fn ticks(&self) -> Vec<f64> {
        let mut t = Vec::new();
        let mut v = self.lo;
        while v <= self.hi * 1.0001 {
            t.push(v);
            v *= 10.0;
        }
        t
    }
}

/// Round numbers (1, 2, 5 × 10^k) for a linear axis from 0 to at least `max`.
fn nice_ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = vec![0.0];
    while *t.last().unwrap_or(&0.0) < max - 1e-9 {
        t.push(t.len() as f64 * step);
    }
    t
}

fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Bars of a histogram drawn as bins of a quarter octave.
fn quarter_octaves(h: &Hist) -> Vec<(usize, u64)> {
    let mut out: Vec<(usize, u64)> = Vec::new();
    for (mid, c) in h.counts() {
        let b = bin(mid as u64);
        match out.last_mut() {
            Some((lb, lc)) if *lb == b => *lc += c,
            _ => out.push((b, c)),
        }
    }
    out
}

fn bin_lo(b: usize) -> f64 {
    256.0 * 2f64.powf(b as f64 / 4.0)
}

/// How a panel's series share it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Panel {
    /// Side by side within each bucket, IO counts (one series per op).
    Grouped,
    /// Two series, shares of IOs: the first above the axis, the second below it, so
    /// neither hides the other (base against new).
    Mirrored,
}

/// One series of a histogram panel.
struct Series {
    name: String,
    color: &'static str,
    /// (quarter-octave bin, IOs or share of IOs)
    bins: Vec<(usize, f64)>,
    /// IOs in it.
    n: u64,
}

/// One histogram panel on a log time axis shared by the panels of a grid.
fn hist_panel(title: &str, axis_range: (f64, f64), series: &[Series], mode: Panel) -> String {
    let (w, h) = (
        340.0,
        if mode == Panel::Mirrored {
            200.0
        } else {
            170.0
        },
    );
    let (l, r, t, b) = (44.0, 18.0, 22.0, 30.0);
    let mut c = Chart::new(w, h, &format!("histogram: {title}"));
    let ax = LogAxis::decades(axis_range.0, axis_range.1, l, w - r);
    c.text(l, 14.0, "start", "ttl", title);
    let ymax = series
        .iter()
        .flat_map(|s| s.bins.iter().map(|x| x.1))
        .fold(0.0, f64::max);
    let ticks = nice_ticks(ymax);
    let top = ticks.last().copied().unwrap_or(1.0).max(1e-12);
    // Bars grow from `base_y`, up (sign -1) or down (+1), `room` pixels at most.
    let (base_y, room) = match mode {
        Panel::Grouped => (h - b, h - b - t),
        Panel::Mirrored => ((t + h - b) / 2.0, (h - b - t) / 2.0),
    };
    let y = |v: f64, sign: f64| base_y + sign * v / top * room;
    let signs: &[f64] = if mode == Panel::Mirrored {
        &[-1.0, 1.0]
    } else {
        &[-1.0]
    };
    for &sign in signs {
        for &tv in &ticks {
            if tv == 0.0 && sign > 0.0 {
                continue;
            }
            c.line(l, y(tv, sign), w - r, y(tv, sign), GRID);
            let label = match mode {
                Panel::Mirrored => format!("{:.0}%", tv * 100.0),
                Panel::Grouped => fmt_count(tv),
            };
            c.text(l - 4.0, y(tv, sign) + 3.5, "end", "tick", &label);
        }
    }
    for tv in ax.ticks() {
        c.line(ax.at(tv), h - b, ax.at(tv), h - b + 4.0, AXIS);
        c.text(ax.at(tv), h - b + 15.0, "middle", "tick", &fmt_decade(tv));
    }
    c.line(l, h - b, w - r, h - b, AXIS);
    c.line(l, base_y, w - r, base_y, AXIS);
    let k = series.len().max(1) as f64;
    for (
        j,
        Series {
            name,
            color,
            bins,
            n,
        },
    ) in series.iter().enumerate()
    {
        let _ = write!(
            c.body,
            r#"<g class="series" data-name="{}" data-n="{n}">"#,
            esc(name)
        );
        if mode == Panel::Mirrored {
            let (ty, anchor) = if j == 0 {
                (t + 10.0, "↑")
            } else {
                (h - b - 4.0, "↓")
            };
            c.text(w - r, ty, "end", "tick", &format!("{name} {anchor}"));
        }
        for &(bi, v) in bins {
            if v <= 0.0 {
                continue;
            }
            let (x0, x1) = (ax.at(bin_lo(bi)), ax.at(bin_lo(bi + 1)));
            let (x, width, sign) = match mode {
                Panel::Grouped => {
                    let sub = (x1 - x0) / k;
                    (x0 + sub * j as f64, sub, -1.0)
                }
                Panel::Mirrored => (x0, x1 - x0, if j == 0 { -1.0 } else { 1.0 }),
            };
            let tip = format!(
                "{name}: {} in {} – {}",
                match mode {
                    Panel::Mirrored => format!("{:.1}% of {n} IOs", v * 100.0),
                    Panel::Grouped => format!("{v:.0} IOs"),
                },
                fmt_ns(bin_lo(bi)),
                fmt_ns(bin_lo(bi + 1))
            );
            let (y0, y1) = (y(v, sign), base_y);
            c.rect(x, y0.min(y1), width.max(1.0), (y1 - y0).abs(), color, &tip);
        }
        c.body.push_str("</g>");
    }
    c.finish()
}

fn legend(items: &[(&str, &str)]) -> String {
    let mut s = String::from(r#"<div class="legend">"#);
    for (name, color) in items {
        let _ = write!(
            s,
            r#"<span><i style="background:{color}"></i>{}</span>"#,
            esc(name)
        );
    }
    s.push_str("</div>");
    s
}

/// The (layer index, start after the IO's first boundary, duration) of each layer an
/// IO passed, cut as [`split`] cuts them.
fn segments(b: &Boundaries) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    let mut prev: Option<(usize, u64)> = None;
    let mut first = 0;
    for (i, &t) in b.iter().enumerate() {
        if t == 0 {
            continue;
        }
        let t = prev.map_or(t, |(_, p)| t.max(p));
        match prev {
            Some((pi, p)) => out.push((pi, p - first, t - p)),
            None => first = t,
        }
        prev = Some((i, t));
    }
    out
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;margin:0;background:#fff}
main{max-width:1100px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 4px}
p.sub,figcaption,.note{color:#555;font-size:13px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.l,th.l{text-align:left}
table.kv td:first-child{text-align:left;font-weight:600;background:#fafafa}table.kv td{text-align:left;white-space:normal}
.warn{background:#fff4e5;border:1px solid #f0b35a;padding:6px 10px;margin:8px 0;border-radius:4px}
.fail{background:#fdecea;border:1px solid #e57373;padding:6px 10px;margin:8px 0;border-radius:4px}
.grid{display:flex;flex-wrap:wrap;gap:6px 14px}
figure{margin:8px 0}
.legend{font-size:12px;margin:4px 0 2px}.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px;border-radius:2px}
svg text{font-family:inherit}svg .tick{font-size:10px;fill:#555}svg .lbl{font-size:11px;fill:#333}svg .ttl{font-size:12px;font-weight:600;fill:#222}
.slower{color:#c62828;font-weight:600}.faster{color:#2e7d32;font-weight:600}.same{color:#777}
"#;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>\n",
        esc(title)
    )
}

// ---------------------------------------------------------------------------------
// The report page.

/// The HTML report of one trace. `layout_note` says where the layout came from.
pub fn report_page(
    report: &Report,
    pictures: &Pictures,
    trace_name: &str,
    layout_note: &str,
) -> String {
    let mut b = String::new();
    let s = &report.summary;
    let _ = write!(
        b,
        "<h1>viopath report</h1><p class=\"sub\">{}</p>",
        esc(trace_name)
    );
    b.push_str(&warnings(report, layout_note));
    b.push_str("<table class=\"kv\">");
    let mut kv = |k: &str, v: String| {
        let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    };
    kv(
        "IOs",
        format!(
            "{} ({} complete, {} partial)",
            s.ios, s.complete_ios, s.partial_ios
        ),
    );
    kv("duration", format!("{:.3} s", s.duration_ns as f64 / 1e9));
    kv("IOPS", format!("{:.0}", s.iops));
    kv("bytes", human_bytes(s.bytes));
    kv(
        "events",
        format!(
            "{} read, {} lost in the kernel, {} unread (damage), {} out of order",
            s.events, s.events_lost_in_kernel, s.events_unread, s.events_late
        ),
    );
    if s.requests_completion_lost > 0 {
        kv(
            "block requests",
            format!(
                "{} whose completion event was lost",
                s.requests_completion_lost
            ),
        );
    }
    kv(
        "layers missing",
        if s.layers_missing.is_empty() {
            "none".into()
        } else {
            s.layers_missing.join(", ")
        },
    );
    kv("layout", layout_note.to_owned());
    if !s.exact_quantiles {
        kv(
            "quantiles",
            format!(
                "from log buckets, within 0.4% (more than {} complete IOs; means and maxima exact)",
                crate::report::EXACT_IOS
            ),
        );
    }
    b.push_str("</table>");

    if report.latency.is_empty() {
        b.push_str("<p class=\"note\">No complete IOs: nothing to draw.</p>");
    } else {
        b.push_str(&breakdown(report));
        b.push_str(&latency_table(report));
        b.push_str(&histograms(&pictures.hists));
        b.push_str(&waterfall(report));
        b.push_str(&over_time(&pictures.timeline));
    }
    b.push_str(&partial_and_other(report));
    b.push_str(&layer_glossary());
    page(&format!("viopath report: {trace_name}"), &b)
}

fn warnings(report: &Report, layout_note: &str) -> String {
    let s = &report.summary;
    let mut w = Vec::new();
    if let Some(d) = &s.damage {
        w.push(format!(
            "The trace is damaged at byte {} ({}): read up to there, {} bytes not read.",
            d.offset, d.problem, d.bytes_unread
        ));
    }
    if !s.trace_complete {
        w.push(
            "The recording was interrupted (no end chunk): read up to the last good chunk.".into(),
        );
    }
    if s.events_lost_in_kernel > 0 {
        w.push(format!(
            "{} events were lost in the kernel while recording: some IOs may be missing or partial.",
            s.events_lost_in_kernel
        ));
    }
    if s.partial_ios > 0 {
        w.push(format!(
            "{} of {} IOs are partial and not in the charts (see “Partial IOs”).",
            s.partial_ios, s.ios
        ));
    }
    if layout_note.contains("no layout") {
        w.push(layout_note.to_owned());
    }
    w.iter()
        .map(|m| format!("<div class=\"warn\">{}</div>", esc(m)))
        .collect()
}

fn group_label(g: &std::collections::BTreeMap<String, String>) -> String {
    g.values().cloned().collect::<Vec<_>>().join(" ")
}

/// Stacked bars: per group, the mean time per IO in each layer (they add up to the
/// mean end-to-end time).
fn breakdown(report: &Report) -> String {
    /// A bar: the group, its IOs, their mean, and per layer (index, mean per IO, share).
    struct Bar {
        label: String,
        n: u64,
        mean: f64,
        layers: Vec<(usize, f64, f64)>,
    }
    let mut groups: Vec<Bar> = Vec::new();
    for st in &report.latency {
        let label = group_label(&st.group);
        if st.layer == E2E {
            groups.push(Bar {
                label,
                n: st.count,
                mean: st.mean_ns,
                layers: Vec::new(),
            });
        } else if let Some(g) = groups.iter_mut().find(|g| g.label == label)
            && let Some(i) = LAYER_NAMES.iter().position(|l| *l == st.layer)
        {
            g.layers.push((i, st.share * g.mean, st.share));
        }
    }
    let max = groups.iter().map(|g| g.mean).fold(0.0, f64::max);
    let (l, r, row) = (150.0, 150.0, 30.0);
    let w = 1000.0;
    let h = 34.0 + row * groups.len() as f64;
    let mut c = Chart::new(w, h, "mean time per IO in each layer");
    let ticks = nice_ticks(max);
    let top = ticks.last().copied().unwrap_or(1.0).max(1.0);
    let x = |v: f64| l + v / top * (w - l - r);
    for &t in &ticks {
        c.line(x(t), 8.0, x(t), h - 20.0, GRID);
        c.text(x(t), h - 6.0, "middle", "tick", &fmt_axis(t));
    }
    for (
        k,
        Bar {
            label,
            n,
            mean,
            layers,
        },
    ) in groups.iter().enumerate()
    {
        let y = 10.0 + row * k as f64;
        c.text(l - 8.0, y + 15.0, "end", "lbl", label);
        let mut at = 0.0;
        for &(i, v, share) in layers {
            let tip = format!(
                "{label} · {}: {} per IO on average ({:.1}% of end-to-end) — {}",
                LAYER_NAMES[i],
                fmt_ns(v),
                share * 100.0,
                LAYER_HELP[i]
            );
            c.rect(x(at), y, x(at + v) - x(at), 20.0, LAYER_COLORS[i], &tip);
            at += v;
        }
        c.text(
            x(at) + 6.0,
            y + 15.0,
            "start",
            "lbl",
            &format!(
                "{} mean, {n} IO{}",
                fmt_ns(*mean),
                if *n == 1 { "" } else { "s" }
            ),
        );
    }
    let used: BTreeSet<usize> = groups
        .iter()
        .flat_map(|g| g.layers.iter().map(|x| x.0))
        .collect();
    let items: Vec<(&str, &str)> = used
        .iter()
        .map(|&i| (LAYER_NAMES[i], LAYER_COLORS[i]))
        .collect();
    format!(
        "<h2 id=\"breakdown\">Where the time goes</h2><p class=\"note\">Mean time per complete IO in each layer; the layers of an IO add up to its end-to-end time. Hover a bar for its numbers.</p>{}<figure>{}</figure>",
        legend(&items),
        c.finish()
    )
}

fn latency_table(report: &Report) -> String {
    let keys: Vec<String> = report
        .latency
        .first()
        .map(|l| l.group.keys().cloned().collect())
        .unwrap_or_default();
    let mut t = String::from("<h3>Latency by layer</h3><table><tr>");
    for k in &keys {
        let _ = write!(t, "<th class=\"l\">{}</th>", esc(k));
    }
    t.push_str("<th class=\"l\">layer</th><th>IOs</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>share</th></tr>");
    for st in &report.latency {
        t.push_str("<tr>");
        for k in &keys {
            let _ = write!(t, "<td class=\"l\">{}</td>", esc(&st.group[k]));
        }
        let _ = write!(
            t,
            "<td class=\"l\"><i style=\"display:inline-block;width:9px;height:9px;background:{};margin-right:5px\"></i>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td></tr>",
            layer_color(&st.layer),
            esc(layer_title(&st.layer)),
            st.count,
            fmt_ns(st.mean_ns),
            fmt_ns(st.p50_ns as f64),
            fmt_ns(st.p90_ns as f64),
            fmt_ns(st.p99_ns as f64),
            fmt_ns(st.p999_ns as f64),
            fmt_ns(st.max_ns as f64),
            st.share * 100.0
        );
    }
    t.push_str("</table>");
    t
}

/// The ops present in a run, busiest first.
fn ops_of(runs: &[&Run]) -> Vec<String> {
    let mut ops: Vec<(String, u64)> = Vec::new();
    for r in runs {
        for (op, layer) in r.keys() {
            if layer != E2E {
                continue;
            }
            let n = r.get(op, E2E).map_or(0, |h| h.n);
            match ops.iter_mut().find(|o| o.0 == op) {
                Some(o) => o.1 += n,
                None => ops.push((op.to_owned(), n)),
            }
        }
    }
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ops.into_iter().map(|o| o.0).collect()
}

/// e2e first, then the layers in path order.
fn layers_of(runs: &[&Run]) -> Vec<&'static str> {
    let present: BTreeSet<&str> = runs.iter().flat_map(|r| r.keys().map(|k| k.1)).collect();
    std::iter::once(E2E)
        .chain(LAYER_NAMES)
        .filter(|l| present.contains(l))
        .collect()
}

fn range_of<'a>(hists: impl Iterator<Item = &'a Hist>) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi: f64 = 0.0;
    for h in hists {
        for (mid, c) in h.counts() {
            if c > 0 {
                lo = lo.min(mid.max(1.0));
                hi = hi.max(mid);
            }
        }
    }
    if lo.is_finite() { (lo, hi) } else { (1e3, 1e6) }
}

fn histograms(run: &Run) -> String {
    let ops = ops_of(&[run]);
    let layers = layers_of(&[run]);
    let range = range_of(run.keys().filter_map(|(o, l)| run.get(o, l)));
    let mut s = String::from(
        "<h2 id=\"histograms\">Latency histograms</h2><p class=\"note\">Complete IOs per latency bucket (a quarter octave each, log time axis shared by all panels); the ops side by side in each bucket.</p>",
    );
    let items: Vec<(&str, &str)> = ops.iter().map(|o| (o.as_str(), op_color(o))).collect();
    s.push_str(&legend(&items));
    s.push_str("<div class=\"grid\">");
    for layer in layers {
        let series: Vec<_> = ops
            .iter()
            .filter_map(|op| {
                let h = run.get(op, layer)?;
                let bins = quarter_octaves(h)
                    .into_iter()
                    .map(|(b, c)| (b, c as f64))
                    .collect();
                Some(Series {
                    name: op.clone(),
                    color: op_color(op),
                    bins,
                    n: h.n,
                })
            })
            .collect();
        let _ = write!(
            s,
            "<figure data-layer=\"{layer}\">{}</figure>",
            hist_panel(layer_title(layer), range, &series, Panel::Grouped)
        );
    }
    s.push_str("</div>");
    s
}

fn waterfall(report: &Report) -> String {
    let ios = &report.slowest;
    if ios.is_empty() {
        return String::new();
    }
    let longest = ios.iter().map(|x| x.e2e_ns).max().unwrap_or(1).max(1) as f64;
    let (l, r, row) = (250.0, 90.0, 22.0);
    let w = 1000.0;
    let h = 30.0 + row * ios.len() as f64;
    let mut c = Chart::new(w, h, "the slowest IOs, layer by layer");
    let ticks = nice_ticks(longest);
    let top = ticks.last().copied().unwrap_or(1.0).max(1.0);
    let x = |v: f64| l + v / top * (w - l - r);
    for &t in &ticks {
        c.line(x(t), 4.0, x(t), h - 18.0, GRID);
        c.text(x(t), h - 5.0, "middle", "tick", &fmt_axis(t));
    }
    let mut used = BTreeSet::new();
    for (k, io) in ios.iter().enumerate() {
        let y = 6.0 + row * k as f64;
        let row_ = &io.row;
        let label = format!(
            "#{} {}{}{}",
            row_.id,
            row_.op.name(),
            if row_.op.moves_data() {
                format!(" {}", size_class(row_.bytes))
            } else {
                String::new()
            },
            io.guest_file
                .as_deref()
                .map(|f| format!(" {f}"))
                .unwrap_or_default()
        );
        let label = if label.chars().count() > 40 {
            format!("{}…", label.chars().take(39).collect::<String>())
        } else {
            label
        };
        let _ = write!(c.body, r#"<g class="io" data-id="{}">"#, row_.id);
        c.text(l - 8.0, y + 12.0, "end", "lbl", &label);
        let detail = format!(
            "#{} {} {} bytes at {}{}{}{}{} — {} host IOs, {} metadata IOs, {} bios, {} requests{}",
            row_.id,
            row_.op.name(),
            row_.bytes,
            row_.offset
                .map_or("?".to_owned(), |o| format!("guest offset {o}")),
            io.guest_file
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default(),
            io.disk
                .as_deref()
                .map(|d| format!(" of disk {d}"))
                .unwrap_or_default(),
            io.device
                .as_deref()
                .map(|d| format!(", device {d}"))
                .unwrap_or_default(),
            if row_.flags != 0 {
                format!(", {}", flag_names(row_.flags))
            } else {
                String::new()
            },
            row_.host_ios,
            row_.meta_ios,
            row_.bios,
            row_.requests,
            if row_.meta_ns > 0 {
                format!(" (metadata IO {})", fmt_ns(row_.meta_ns as f64))
            } else {
                String::new()
            }
        );
        for (i, start, dur) in segments(&row_.b) {
            used.insert(i);
            let tip = format!(
                "{}: {} (from +{}) — {detail}",
                LAYER_NAMES[i],
                fmt_ns(dur as f64),
                fmt_ns(start as f64)
            );
            let (x0, x1) = (x(start as f64), x((start + dur) as f64));
            // A layer too short to see still gets a hairline.
            c.rect(x0, y, (x1 - x0).max(1.0), 16.0, LAYER_COLORS[i], &tip);
        }
        c.text(
            x(io.e2e_ns as f64) + 6.0,
            y + 12.0,
            "start",
            "lbl",
            &fmt_ns(io.e2e_ns as f64),
        );
        c.body.push_str("</g>");
    }
    let items: Vec<(&str, &str)> = used
        .iter()
        .map(|&i| (LAYER_NAMES[i], LAYER_COLORS[i]))
        .collect();
    format!(
        "<h2 id=\"slowest\">The {} slowest IOs</h2><p class=\"note\">Each IO from its first boundary; a bar per layer it spent time in. Hover for offsets, files, devices and child IOs.</p>{}<figure>{}</figure>",
        ios.len(),
        legend(&items),
        c.finish()
    )
}

fn over_time(tl: &Timeline) -> String {
    let (width, series) = tl.coarse(150);
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(0);
    if n == 0 {
        return String::new();
    }
    let secs = width as f64 / 1e9;
    let (w, h) = (1000.0, 210.0);
    let (l, r, t, b) = (60.0, 20.0, 12.0, 34.0);
    let x = |i: f64| l + i / n as f64 * (w - l - r);
    let span = n as f64 * secs;
    let time_ticks = nice_ticks(span);
    let time_top = time_ticks.last().copied().unwrap_or(1.0);
    let draw_time_axis = |c: &mut Chart| {
        for &tv in &time_ticks {
            if tv > span + 1e-12 && tv != time_top {
                continue;
            }
            let px = l + tv / span * (w - l - r);
            if px > w - r + 0.5 {
                continue;
            }
            c.line(px, h - b, px, h - b + 4.0, AXIS);
            c.text(px, h - b + 15.0, "middle", "tick", &format!("{tv} s"));
        }
        c.line(l, h - b, w - r, h - b, AXIS);
        c.text(
            (l + w - r) / 2.0,
            h - 3.0,
            "middle",
            "tick",
            "seconds since the first IO",
        );
    };

    // IOPS per op.
    let mut c = Chart::new(w, h, "IOPS over time");
    let max_iops = series
        .iter()
        .flat_map(|s| s.1.iter().map(|x| x.ios as f64 / secs))
        .fold(0.0, f64::max);
    let ticks = nice_ticks(max_iops);
    let top = ticks.last().copied().unwrap_or(1.0).max(1e-9);
    let y = |v: f64| h - b - v / top * (h - b - t);
    for &tv in &ticks {
        c.line(l, y(tv), w - r, y(tv), GRID);
        c.text(l - 5.0, y(tv) + 3.5, "end", "tick", &fmt_count(tv));
    }
    draw_time_axis(&mut c);
    for (op, slots) in &series {
        let color = op_color(op);
        c.colors.insert(color);
        let mut pts = String::new();
        for (i, s) in slots.iter().enumerate() {
            let v = s.ios as f64 / secs;
            let _ = write!(
                pts,
                "{:.1},{:.1} {:.1},{:.1} ",
                x(i as f64),
                y(v),
                x(i as f64 + 1.0),
                y(v)
            );
        }
        let _ = write!(
            c.body,
            r#"<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.8"><title>{op}: IOPS per {} slot</title></polyline>"#,
            fmt_ns(width as f64)
        );
        for (i, s) in slots.iter().enumerate() {
            if s.ios > 0 {
                let _ = write!(
                    c.body,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="6" fill="{color}" fill-opacity="0"><title>{op} at {:.3} s: {:.0} IOPS, {} IOs, {}</title></rect>"#,
                    x(i as f64),
                    y(s.ios as f64 / secs) - 3.0,
                    (x(1.0) - x(0.0)).max(1.0),
                    i as f64 * secs,
                    s.ios as f64 / secs,
                    s.ios,
                    human_bytes(s.bytes)
                );
            }
        }
    }
    let iops_svg = c.finish();

    // Latency per op: mean (dashed) and p99 (solid), log scale.
    let mut c = Chart::new(w, h, "latency over time");
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for (_, slots) in &series {
        for s in slots.iter().filter(|s| s.ios > 0) {
            lo = lo.min(s.sum_ns / s.ios as f64);
            hi = hi.max(s.quantile(0.99));
        }
    }
    let ax = LogAxis::decades(lo, hi, h - b, t);
    for tv in ax.ticks() {
        c.line(l, ax.at(tv), w - r, ax.at(tv), GRID);
        c.text(l - 5.0, ax.at(tv) + 3.5, "end", "tick", &fmt_decade(tv));
    }
    draw_time_axis(&mut c);
    for (op, slots) in &series {
        let color = op_color(op);
        c.colors.insert(color);
        for (dash, q) in [("4 3", None), ("", Some(0.99))] {
            let mut runs: Vec<String> = vec![String::new()];
            for (i, s) in slots.iter().enumerate() {
                if s.ios == 0 {
                    // A gap: no IO completed in this slot.
                    if !runs.last().is_some_and(String::is_empty) {
                        runs.push(String::new());
                    }
                    continue;
                }
                let v = q.map_or(s.sum_ns / s.ios as f64, |q| s.quantile(q));
                let cur = runs.last_mut().expect("never empty");
                let _ = write!(cur, "{:.1},{:.1} ", x(i as f64 + 0.5), ax.at(v));
            }
            for pts in runs.iter().filter(|p| !p.is_empty()) {
                let _ = write!(
                    c.body,
                    r#"<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6" stroke-dasharray="{dash}"/>"#
                );
            }
        }
        for (i, s) in slots.iter().enumerate() {
            if s.ios == 0 {
                continue;
            }
            let p99 = s.quantile(0.99);
            let _ = write!(
                c.body,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{color}"><title>{op} at {:.3} s: mean {}, p99 ≈ {}, {} IOs</title></circle>"#,
                x(i as f64 + 0.5),
                ax.at(p99),
                i as f64 * secs,
                fmt_ns(s.sum_ns / s.ios as f64),
                fmt_ns(p99),
                s.ios
            );
        }
    }
    let lat_svg = c.finish();
    let items: Vec<(&str, &str)> = series.iter().map(|(o, _)| (*o, op_color(o))).collect();
    format!(
        "<h2 id=\"time\">Over time</h2><p class=\"note\">Complete IOs by completion time in {} slots. Latency: end-to-end mean (dashed) and p99 (solid, from quarter-octave buckets: ±9%), log scale.</p>{}<figure>{iops_svg}<figcaption>IOPS</figcaption></figure><figure>{lat_svg}<figcaption>end-to-end latency</figcaption></figure>",
        fmt_ns(width as f64),
        legend(&items)
    )
}

fn partial_and_other(report: &Report) -> String {
    let mut s = String::new();
    if !report.partial.is_empty() {
        s.push_str("<h2 id=\"partial\">Partial IOs</h2><p class=\"note\">Not in the charts or the latency table.</p><table><tr><th class=\"l\">reason</th><th>IOs</th></tr>");
        for (why, n) in &report.partial {
            let _ = write!(s, "<tr><td class=\"l\">{}</td><td>{n}</td></tr>", esc(why));
        }
        s.push_str("</table><table><tr><th>id</th><th class=\"l\">op</th><th>guest offset</th><th>bytes</th><th class=\"l\">reason</th></tr>");
        for x in report.partial_examples.iter().take(10) {
            let _ = write!(
                s,
                "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
                x.id,
                x.op.name(),
                x.offset.map_or("-".into(), |o| o.to_string()),
                x.bytes,
                esc(&reason_names(x.partial))
            );
        }
        s.push_str("</table>");
    }
    if !report.other_io.is_empty() {
        s.push_str("<h2 id=\"other\">IO not caused by a guest request</h2><table><tr><th class=\"l\">what</th><th>count</th><th>bytes</th><th>total</th><th>max</th></tr>");
        for o in &report.other_io {
            let _ = write!(
                s,
                "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(o.what),
                o.agg.count,
                human_bytes(o.agg.bytes),
                fmt_ns(o.agg.total_ns as f64),
                fmt_ns(o.agg.max_ns as f64)
            );
        }
        s.push_str("</table>");
    }
    s
}

fn layer_glossary() -> String {
    let mut s = String::from(
        "<h2 id=\"layers\">Layers</h2><p class=\"note\">An IO's time is cut at the boundaries it has; a layer that was not traced hands its time to the one above (docs/layers.md).</p><table>",
    );
    for (i, name) in LAYER_NAMES.iter().enumerate() {
        let _ = write!(
            s,
            "<tr><td class=\"l\"><i style=\"display:inline-block;width:9px;height:9px;background:{};margin-right:5px\"></i>{name}</td><td class=\"l\">{}</td></tr>",
            LAYER_COLORS[i],
            esc(LAYER_HELP[i])
        );
    }
    s.push_str("</table>");
    s
}

// ---------------------------------------------------------------------------------
// The comparison page.

/// What a comparison page shows besides the changes.
pub struct ComparePage<'a> {
    pub base: &'a [Run],
    pub new: &'a [Run],
    pub changes: &'a [Change],
    /// How the intervals were made, in words.
    pub method: &'a str,
    pub confidence: f64,
    /// Thresholds broken (`--fail-on`), in words.
    pub broken: &'a [String],
}

/// A ratio new/base as a change: -46%, +85%, ×3.2.
fn ratio_label(r: f64) -> String {
    if r >= 2.0 {
        format!("×{r:.1}")
    } else {
        format!("{:+.0}%", (r - 1.0) * 100.0)
    }
}

fn verdict_color(v: Verdict) -> &'static str {
    match v {
        Verdict::Slower => SLOWER_COLOR,
        Verdict::Faster => FASTER_COLOR,
        _ => SAME_COLOR,
    }
}

fn verdict_word(v: Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Slower => ("slower", "slower"),
        Verdict::Faster => ("faster", "faster"),
        Verdict::NoChange => ("~", "same"),
        Verdict::TooFew => ("too few IOs", "same"),
    }
}

/// Per op: a row per layer, a column per statistic; each cell the relative change with
/// its interval around zero.
fn forest(op: &str, changes: &[&Change]) -> String {
    let layers: Vec<&str> = std::iter::once(E2E)
        .chain(LAYER_NAMES)
        .filter(|l| changes.iter().any(|c| c.layer == *l))
        .collect();
    let (l, row, top) = (140.0, 22.0, 34.0);
    let cell = 168.0;
    let w = l + cell * METRICS.len() as f64 + 6.0;
    let h = top + row * layers.len() as f64 + 8.0;
    let mut c = Chart::new(w, h, &format!("relative changes: {op}"));
    for (m, metric) in METRICS.iter().enumerate() {
        let x0 = l + cell * m as f64;
        let cells: Vec<&&Change> = changes.iter().filter(|c| c.metric == *metric).collect();
        // A log-ratio scale (twice as slow and twice as fast are equally far from the
        // middle), symmetric per column, from ±10% to ×64; beyond is clipped.
        let lr = |d: f64| (1.0 + d).max(1.0 / 64.0).log2();
        let span = cells
            .iter()
            .filter(|c| c.verdict != Verdict::TooFew)
            .flat_map(|c| {
                let (lo, hi) = c.ci.unwrap_or((c.delta, c.delta));
                [lr(lo).abs(), lr(hi).abs(), lr(c.delta).abs()]
            })
            .filter(|v| v.is_finite())
            .fold(1.1f64.log2(), f64::max)
            .min(6.0)
            * 1.1;
        let (a, z) = (x0 + 24.0, x0 + cell - 24.0);
        let x = |d: f64| (a + z) / 2.0 + lr(d).clamp(-span, span) / span * (z - a) / 2.0;
        c.text((a + z) / 2.0, 13.0, "middle", "ttl", metric);
        c.text(a, 27.0, "middle", "tick", &ratio_label(2f64.powf(-span)));
        c.text((a + z) / 2.0, 27.0, "middle", "tick", "0");
        c.text(z, 27.0, "middle", "tick", &ratio_label(2f64.powf(span)));
        c.line(x(0.0), top - 4.0, x(0.0), h - 6.0, AXIS);
        for (k, layer) in layers.iter().enumerate() {
            let y = top + row * k as f64 + row / 2.0;
            if m == 0 {
                c.line(0.0, y + row / 2.0, w, y + row / 2.0, GRID);
                c.text(l - 8.0, y + 4.0, "end", "lbl", layer_title(layer));
            }
            let Some(ch) = cells.iter().find(|c| c.layer == *layer) else {
                continue;
            };
            let color = verdict_color(ch.verdict);
            let tip = format!(
                "{op} {} {metric}: {} → {} ({}){} — {} — {} / {} IOs",
                layer_title(layer),
                fmt_ns(ch.base_ns),
                fmt_ns(ch.new_ns),
                pct(ch.delta),
                ch.ci
                    .map(|(lo, hi)| format!(", interval [{}, {}]", pct(lo), pct(hi)))
                    .unwrap_or_default(),
                verdict_word(ch.verdict).0,
                ch.n_base,
                ch.n_new
            );
            if ch.verdict == Verdict::TooFew || !ch.delta.is_finite() {
                let _ = write!(
                    c.body,
                    r#"<circle cx="{:.1}" cy="{y:.1}" r="3.5" fill="none" stroke="{SAME_COLOR}"><title>{}</title></circle>"#,
                    x(if ch.delta.is_finite() { ch.delta } else { 0.0 }),
                    esc(&tip)
                );
                continue;
            }
            c.colors.insert(color);
            if let Some((lo, hi)) = ch.ci {
                let _ = write!(
                    c.body,
                    r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/>"#,
                    x(lo),
                    x(hi)
                );
            }
            let _ = write!(
                c.body,
                r#"<circle cx="{:.1}" cy="{y:.1}" r="5" fill="{color}"><title>{}</title></circle>"#,
                x(ch.delta),
                esc(&tip)
            );
        }
    }
    c.finish()
}

fn merged(runs: &[Run], op: &str, layer: &str) -> Option<(Vec<(usize, f64)>, u64)> {
    let mut bins: std::collections::BTreeMap<usize, f64> = std::collections::BTreeMap::new();
    let mut n = 0;
    for r in runs {
        if let Some(h) = r.get(op, layer) {
            n += h.n;
            for (b, c) in quarter_octaves(h) {
                *bins.entry(b).or_default() += c as f64;
            }
        }
    }
    (n > 0).then(|| {
        (
            bins.into_iter().map(|(b, c)| (b, c / n as f64)).collect(),
            n,
        )
    })
}

/// The comparison as one HTML page.
pub fn compare_page(p: &ComparePage) -> String {
    let mut b = String::new();
    let ios = |r: &[Run]| r.iter().map(|r| r.ios).sum::<u64>();
    let _ = write!(
        b,
        "<h1>viopath compare</h1><p class=\"sub\">base: {} run{} ({} IOs) · new: {} run{} ({} IOs)</p><p class=\"note\">{}.</p>",
        p.base.len(),
        if p.base.len() == 1 { "" } else { "s" },
        ios(p.base),
        p.new.len(),
        if p.new.len() == 1 { "" } else { "s" },
        ios(p.new),
        esc(p.method)
    );
    for x in p.broken {
        let _ = write!(b, "<div class=\"fail\">FAIL: {}</div>", esc(x));
    }
    b.push_str(
        "<table><tr><th class=\"l\">side</th><th class=\"l\">run</th><th>complete IOs</th></tr>",
    );
    for (side, runs) in [("base", p.base), ("new", p.new)] {
        for r in runs {
            let _ = write!(
                b,
                "<tr><td class=\"l\">{side}</td><td class=\"l\">{}</td><td>{}</td></tr>",
                esc(&r.name),
                r.ios
            );
        }
    }
    b.push_str("</table>");
    let tested = p
        .changes
        .iter()
        .filter(|c| c.verdict != Verdict::TooFew)
        .count();
    let marked = p
        .changes
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Slower | Verdict::Faster))
        .count();
    let _ = write!(
        b,
        "<p>{marked} of {tested} statistics tested changed beyond noise; about {:.0} would by chance alone at this confidence.</p>",
        tested as f64 * (1.0 - p.confidence)
    );
    if p.changes.is_empty() {
        b.push_str("<p class=\"note\">No (op, layer) has complete IOs on both sides: nothing to compare.</p>");
        return page("viopath compare", &b);
    }

    let base_refs: Vec<&Run> = p.base.iter().collect();
    let ops = ops_of(&base_refs);
    b.push_str("<h2 id=\"changes\">Changes</h2><p class=\"note\">Relative change new vs base with its interval, on a log-ratio scale per statistic (×2 slower and ×2 faster equally far from 0). Filled: tested; red: slower beyond noise, green: faster, grey: within noise; hollow: too few IOs to tell.</p>");
    b.push_str(&legend(&[
        ("slower", SLOWER_COLOR),
        ("faster", FASTER_COLOR),
        ("within noise", SAME_COLOR),
    ]));
    for op in &ops {
        let cs: Vec<&Change> = p.changes.iter().filter(|c| &c.op == op).collect();
        if cs.is_empty() {
            continue;
        }
        let _ = write!(
            b,
            "<h3>{}</h3><figure>{}</figure>",
            esc(op),
            forest(op, &cs)
        );
    }

    b.push_str("<h2 id=\"distributions\">Distributions</h2><p class=\"note\">Share of complete IOs per latency bucket (quarter octaves, log time axis shared by all panels): base above the axis, new below it, every run of a side together.</p>");
    b.push_str(&legend(&[("base", BASE_COLOR), ("new", NEW_COLOR)]));
    let all: Vec<&Run> = p.base.iter().chain(p.new.iter()).collect();
    let range = range_of(
        all.iter()
            .flat_map(|r| r.keys().filter_map(|(o, l)| r.get(o, l))),
    );
    for op in &ops {
        let _ = write!(b, "<h3>{}</h3><div class=\"grid\">", esc(op));
        for layer in layers_of(&all) {
            let mut series = Vec::new();
            for (name, color, runs) in [("base", BASE_COLOR, p.base), ("new", NEW_COLOR, p.new)] {
                if let Some((bins, n)) = merged(runs, op, layer) {
                    series.push(Series {
                        name: name.to_owned(),
                        color,
                        bins,
                        n,
                    });
                }
            }
            if series.is_empty() {
                continue;
            }
            let _ = write!(
                b,
                "<figure data-layer=\"{layer}\">{}</figure>",
                hist_panel(
                    &format!("{op} · {}", layer_title(layer)),
                    range,
                    &series,
                    Panel::Mirrored
                )
            );
        }
        b.push_str("</div>");
    }

    b.push_str("<h2 id=\"table\">Every statistic</h2><table><tr><th class=\"l\">op</th><th class=\"l\">layer</th><th class=\"l\">statistic</th><th>base</th><th>new</th><th>delta</th><th>interval</th><th class=\"l\"></th><th>IOs base/new</th></tr>");
    for c in p.changes {
        let (word, class) = verdict_word(c.verdict);
        let _ = write!(
            b,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l {class}\">{word}</td><td>{}/{}</td></tr>",
            esc(&c.op),
            esc(layer_title(&c.layer)),
            c.metric,
            fmt_ns(c.base_ns),
            fmt_ns(c.new_ns),
            pct(c.delta),
            c.ci.map(|(lo, hi)| format!("[{}, {}]", pct(lo), pct(hi)))
                .unwrap_or_else(|| "-".into()),
            c.n_base,
            c.n_new
        );
    }
    b.push_str("</table>");
    page("viopath compare", &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Boundary;

    #[test]
    fn bins_are_quarter_octaves_and_contain_their_values() {
        for ns in [256u64, 300, 1000, 4096, 123_456, 9_999_999, 3_000_000_000] {
            let b = bin(ns);
            assert!(bin_lo(b) <= ns as f64 * 1.000_001, "{ns} {b}");
            assert!(bin_lo(b + 1) > ns as f64, "{ns} {b}");
        }
        assert_eq!(bin(0), 0);
        assert_eq!(bin(u64::MAX), BINS - 1);
    }

    #[test]
    fn slot_quantiles_are_within_a_quarter_octave() {
        let mut s = Slot::default();
        for ns in 1..=1000u64 {
            s.ios += 1;
            s.bins[bin(ns * 1000)] += 1;
        }
        let p99 = s.quantile(0.99);
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.1, "{p99}");
    }

    #[test]
    fn segments_tile_the_io_like_split() {
        let mut b = Boundaries::new();
        b[Boundary::Parsed] = 1000;
        b[Boundary::Submitted] = 1100;
        b[Boundary::Dispatched] = 1050; // out of order: clamped
        b[Boundary::HostDone] = 1500;
        b[Boundary::Completed] = 1600;
        let segs = segments(&b);
        let (layers, e2e) = split(&b);
        assert_eq!(segs.iter().map(|s| s.2).sum::<u64>(), e2e);
        for (i, start, dur) in &segs {
            assert_eq!(layers[*i], Some(*dur));
            assert!(start + dur <= e2e);
        }
        // Contiguous.
        for w in segs.windows(2) {
            assert_eq!(w[0].1 + w[0].2, w[1].1);
        }
    }

    #[test]
    fn timelines_stay_bounded_and_keep_every_io() {
        let mut t = Timeline::default();
        let mut row = IoRow::example();
        for i in 0..10_000u64 {
            // Ten hours of IOs, one every 3.6 s.
            row.b[Boundary::Parsed] = 1 + i * 3_600_000_000;
            row.b[Boundary::Completed] = row.b[Boundary::Parsed] + 50_000;
            t.add(&row, 50_000);
        }
        let slots = &t.series[0].1;
        assert!(slots.len() <= SLOTS);
        assert_eq!(slots.iter().map(|s| u64::from(s.ios)).sum::<u64>(), 10_000);
        let (w, coarse) = t.coarse(150);
        assert!(coarse[0].1.len() <= 150);
        assert_eq!(
            coarse[0].1.iter().map(|s| u64::from(s.ios)).sum::<u64>(),
            10_000
        );
        assert!(w >= t.width);
    }

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(fmt_axis(0.0), "0");
        assert_eq!(fmt_axis(50_000.0), "50 µs");
        assert_eq!(fmt_axis(1_500_000.0), "1.5 ms");
        assert_eq!(fmt_axis(200.0), "200 ns");
        assert_eq!(fmt_decade(1e9), "1 s");
        assert_eq!(ratio_label(0.5), "-50%");
        assert_eq!(ratio_label(3.25), "×3.2");
    }

    #[test]
    fn field_text_is_escaped() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }
}
