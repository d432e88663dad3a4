//! The comparison page: per op, each layer's change with its interval, and the runs'
//! histograms side by side.

use super::page::{esc, page};
use super::svg::*;
use crate::compare::{Change, E2E, METRICS, Run, Verdict};
use crate::units::{fmt_ns, pct};
use std::fmt::Write as _;

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
pub(super) fn ratio_label(r: f64) -> String {
    if r >= 2.0 {
        format!("×{r:.1}")
    } else {
        format!("{:+.0}%", (r - 1.0) * 100.0)
    }
}

pub(super) fn verdict_color(v: Verdict) -> &'static str {
    match v {
        Verdict::Slower => SLOWER_COLOR,
        Verdict::Faster => FASTER_COLOR,
        _ => SAME_COLOR,
    }
}

pub(super) fn verdict_word(v: Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Slower => ("slower", "slower"),
        Verdict::Faster => ("faster", "faster"),
        Verdict::NoChange => ("~", "same"),
        Verdict::TooFew => ("too few IOs", "same"),
    }
}

/// Per op: a row per layer, a column per statistic; each cell the relative change with
/// its interval around zero.
pub(super) fn forest(op: &str, changes: &[&Change]) -> String {
    let layers: Vec<&str> = std::iter::once(E2E)
        .chain(crate::layers::path_layers())
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
            // Beyond the scale: the point sits on the edge, so it says its true value
            // (and which way it goes on), on the middle's side of the point.
            let true_lr = (1.0 + ch.delta).log2().abs();
            if true_lr.is_nan() || true_lr > span {
                let label = ratio_label(1.0 + ch.delta);
                if ch.delta > 0.0 {
                    c.text(
                        x(ch.delta) - 8.0,
                        y + 3.5,
                        "end",
                        "clamped",
                        &format!("{label} ▸"),
                    );
                } else {
                    c.text(
                        x(ch.delta) + 8.0,
                        y + 3.5,
                        "start",
                        "clamped",
                        &format!("◂ {label}"),
                    );
                }
            }
        }
    }
    c.finish()
}

pub(super) fn merged(runs: &[Run], op: &str, layer: &str) -> Option<(Vec<(usize, f64)>, u64)> {
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

    b.push_str("<h2 id=\"distributions\">Distributions</h2><p class=\"note\">Share of complete IOs per latency bucket (quarter octaves): base above the axis, new below it, every run of a side together. The log time axis and the share axis are the same in every panel.</p>");
    b.push_str(&legend(&[("base", BASE_COLOR), ("new", NEW_COLOR)]));
    let all: Vec<&Run> = p.base.iter().chain(p.new.iter()).collect();
    let range = range_of(
        all.iter()
            .flat_map(|r| r.keys().filter_map(|(o, l)| r.get(o, l))),
    );
    // Every panel first: they share one y scale.
    let mut panels: Vec<(&str, &str, Vec<Series>)> = Vec::new();
    for op in &ops {
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
            if !series.is_empty() {
                panels.push((op.as_str(), layer, series));
            }
        }
    }
    let top = y_max(panels.iter().map(|(_, _, s)| s.as_slice()));
    for op in &ops {
        let _ = write!(b, "<h3>{}</h3><div class=\"grid\">", esc(op));
        for (_, layer, series) in panels.iter().filter(|(o, _, _)| o == op) {
            let _ = write!(
                b,
                "<figure data-layer=\"{layer}\">{}</figure>",
                hist_panel(
                    &format!("{op} · {}", layer_title(layer)),
                    range,
                    top,
                    series,
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

    fn change(layer: &str, delta: f64) -> Change {
        Change {
            op: "read".into(),
            layer: layer.into(),
            metric: "p50",
            base_ns: 100_000.0,
            new_ns: 100_000.0 * (1.0 + delta),
            delta,
            ci: Some((delta * 0.9, delta * 1.1)),
            n_base: 1000,
            n_new: 1000,
            verdict: if delta > 0.0 {
                Verdict::Slower
            } else {
                Verdict::Faster
            },
        }
    }

    /// A change beyond the plot's scale sits on its edge and says its true value; one
    /// within it says nothing more.
    #[test]
    fn a_clamped_point_is_labelled_with_its_true_value() {
        let cs = [
            change("qemu", 200.0),
            change("device", -0.99),
            change("host_fs", 0.2),
        ];
        let refs: Vec<&Change> = cs.iter().collect();
        let svg = forest("read", &refs);
        assert!(svg.contains(">×201.0 ▸</text>"), "{svg}");
        assert!(svg.contains(">◂ -99%</text>"), "{svg}");
        assert_eq!(svg.matches("class=\"clamped\"").count(), 2, "{svg}");
    }
}
