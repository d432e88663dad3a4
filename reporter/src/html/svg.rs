//! SVG primitives the pages draw with: colours, a chart with its axes and legend,
//! histogram panels on a log time axis.

use super::page::esc;
use crate::compare::E2E;
use crate::compare::{Hist, Run};
use crate::layers::{LAYER_NAMES, NL};
use crate::pictures::{bin, bin_lo};
use crate::units::{fmt_decade, fmt_ns, share};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Layer colours, in LAYER_NAMES order (colour-blind-safe Tableau 10, then two of
/// Tableau 20's light tones for the layers added later).
pub(super) const LAYER_COLORS: [&str; NL] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#86bcb6", "#d4a6c8",
];
pub(super) const E2E_COLOR: &str = "#3b3b3b";
pub(super) const BASE_COLOR: &str = "#4e79a7";
pub(super) const NEW_COLOR: &str = "#e15759";
pub(super) const SLOWER_COLOR: &str = "#d62728";
pub(super) const FASTER_COLOR: &str = "#2ca02c";
pub(super) const SAME_COLOR: &str = "#8c8c8c";
pub(super) const AXIS: &str = "#666666";
pub(super) const GRID: &str = "#e4e4e4";

/// Op colours: dark and saturated, where the layers' are mid-tones, so that an op is
/// never taken for a layer (each is far from every layer colour and from the others).
pub(super) fn op_color(op: &str) -> &'static str {
    match op {
        "read" => "#000080",
        "write" => "#8b0000",
        "flush" => "#006400",
        "discard" => "#9400d3",
        "write_zeroes" => "#808000",
        "get_id" | "scsi_command" => "#00ced1",
        _ => "#000000",
    }
}

pub(super) fn layer_color(layer: &str) -> &'static str {
    LAYER_NAMES
        .iter()
        .position(|l| *l == layer)
        .map_or(E2E_COLOR, |i| LAYER_COLORS[i])
}

pub(super) fn layer_title(layer: &str) -> &str {
    if layer == E2E { "end-to-end" } else { layer }
}

/// An SVG chart being drawn; `colors` are the colours data was drawn in.
pub(super) struct Chart {
    pub(super) w: f64,
    pub(super) h: f64,
    pub(super) body: String,
    pub(super) colors: BTreeSet<&'static str>,
    pub(super) label: String,
}

impl Chart {
    pub(super) fn new(w: f64, h: f64, label: &str) -> Chart {
        Chart {
            w,
            h,
            body: String::new(),
            colors: BTreeSet::new(),
            label: label.to_owned(),
        }
    }

    pub(super) fn text(&mut self, x: f64, y: f64, anchor: &str, class: &str, s: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" class="{class}">{}</text>"#,
            esc(s)
        );
    }

    /// A y axis's label, read upwards along it, its middle at (x, y).
    pub(super) fn y_label(&mut self, x: f64, y: f64, s: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" class="tick ylabel" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            esc(s)
        );
    }

    pub(super) fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = write!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}"/>"#
        );
    }

    /// A data rectangle with a tooltip.
    pub(super) fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &'static str, tip: &str) {
        self.colors.insert(fill);
        let _ = write!(
            self.body,
            r#"<rect x="{x:.2}" y="{y:.2}" width="{:.2}" height="{:.2}" fill="{fill}" shape-rendering="crispEdges"><title>{}</title></rect>"#,
            w.max(0.0),
            h.max(0.0),
            esc(tip)
        );
    }

    pub(super) fn finish(self) -> String {
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
pub(super) struct LogAxis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    pub(super) x0: f64,
    pub(super) x1: f64,
}

impl LogAxis {
    /// Covering `lo..hi`, widened to whole decades.
    pub(super) fn decades(lo: f64, hi: f64, x0: f64, x1: f64) -> LogAxis {
        let lo = 10f64.powf(lo.max(1.0).log10().floor());
        let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
        LogAxis { lo, hi, x0, x1 }
    }

    pub(super) fn at(&self, v: f64) -> f64 {
        let f = (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        self.x0 + f.clamp(0.0, 1.0) * (self.x1 - self.x0)
    }

    pub(super) fn ticks(&self) -> Vec<f64> {
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
pub(super) fn nice_ticks(max: f64) -> Vec<f64> {
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

pub(super) fn fmt_count(v: f64) -> String {
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
pub(super) fn quarter_octaves(h: &Hist) -> Vec<(usize, u64)> {
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

/// How a panel's series share it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Panel {
    /// Side by side within each bucket, IO counts (one series per op).
    Grouped,
    /// Two series, shares of IOs: the first above the axis, the second below it, so
    /// neither hides the other (base against new).
    Mirrored,
}

/// One series of a histogram panel.
pub(super) struct Series {
    pub(super) name: String,
    pub(super) color: &'static str,
    /// (quarter-octave bin, IOs or share of IOs)
    pub(super) bins: Vec<(usize, f64)>,
    /// IOs in it.
    pub(super) n: u64,
}

/// The largest bar of any of these panels' series: their shared y scale.
pub(super) fn y_max<'a>(panels: impl Iterator<Item = &'a [Series]>) -> f64 {
    panels
        .flat_map(|p| p.iter().flat_map(|s| s.bins.iter().map(|x| x.1)))
        .fold(0.0, f64::max)
}

/// One histogram panel on a log time axis and a y scale (up to `y_top`) shared by the
/// panels of a grid, so that bars compare across panels.
pub(super) fn hist_panel(
    title: &str,
    axis_range: (f64, f64),
    y_top: f64,
    series: &[Series],
    mode: Panel,
) -> String {
    let (w, h) = (
        340.0,
        if mode == Panel::Mirrored {
            200.0
        } else {
            170.0
        },
    );
    let (l, r, t, b) = (56.0, 18.0, 22.0, 30.0);
    let mut c = Chart::new(w, h, &format!("histogram: {title}"));
    let ax = LogAxis::decades(axis_range.0, axis_range.1, l, w - r);
    c.text(l, 14.0, "start", "ttl", title);
    c.y_label(
        12.0,
        (t + h - b) / 2.0,
        match mode {
            Panel::Grouped => "IOs",
            Panel::Mirrored => "share of IOs",
        },
    );
    let ticks = nice_ticks(y_top);
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
                    Panel::Mirrored => format!("{} of {n} IOs", share(v)),
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

pub(super) fn legend(items: &[(&str, &str)]) -> String {
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

/// The ops present in a run, busiest first.
pub(super) fn ops_of(runs: &[&Run]) -> Vec<String> {
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
pub(super) fn layers_of(runs: &[&Run]) -> Vec<&'static str> {
    let present: BTreeSet<&str> = runs.iter().flat_map(|r| r.keys().map(|k| k.1)).collect();
    std::iter::once(E2E)
        .chain(crate::layers::path_layers())
        .filter(|l| present.contains(l))
        .collect()
}

pub(super) fn range_of<'a>(hists: impl Iterator<Item = &'a Hist>) -> (f64, f64) {
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
