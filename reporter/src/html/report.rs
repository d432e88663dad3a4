//! The report page: the latency table and breakdown, histograms, the slowest IOs as
//! a waterfall, IOPS and latency over time, partial rows and other IO.

use super::page::{esc, page};
use super::svg::*;
use crate::compare::{E2E, Run};
use crate::join::{flag_names, reason_names};
use crate::layers::{Boundaries, LAYER_HELP, LAYER_NAMES};
use crate::pictures::{Pictures, Timeline};
use crate::report::{Report, size_class};
use crate::units::{self, fmt_axis, fmt_decade, fmt_ns, human_bytes};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The (layer index, start after the IO's first boundary, duration) of each layer an
/// IO passed, cut as [`split`] cuts them.
pub(super) fn segments(b: &Boundaries) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    let mut prev: Option<(crate::layers::Boundary, u64)> = None;
    let mut first = 0;
    for &at in &crate::layers::PATH {
        let t = b[at];
        if t == 0 {
            continue;
        }
        let t = prev.map_or(t, |(_, p)| t.max(p));
        match prev {
            Some((pb, p)) => {
                if let Some(l) = pb.starts() {
                    out.push((l, p - first, t - p));
                }
            }
            None => first = t,
        }
        prev = Some((at, t));
    }
    out
}

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
    if let Some(d) = &s.domain {
        kv("libvirt domain", d.clone());
    }
    if !s.vms.is_empty() {
        kv("VMs", s.vms.join("; "));
    }
    kv("duration", format!("{:.3} s", s.duration_ns as f64 / 1e9));
    kv("IOPS", format!("{:.0}", s.iops));
    kv("bytes", human_bytes(s.bytes));
    kv("events", crate::summary::events_note(s));
    if let Some(c) = crate::report::cut_note(s) {
        kv("recording window", c);
    }
    if let Some(t) = s.throttled.note() {
        kv("throttling", t);
    }
    for c in &s.cache_modes {
        kv("cache mode", format!("{}: {}", c.disk, c.describe()));
    }
    let disk_name = |d: u16| {
        s.cache_modes
            .get(d as usize)
            .map_or_else(|| format!("disk {d}"), |c| c.disk.clone())
    };
    for (what, line) in s.page_cache.notes(&disk_name) {
        kv(&what, line);
    }
    if s.requests_completion_lost > 0 {
        kv(
            "block requests",
            format!(
                "{} whose completion event was lost",
                s.requests_completion_lost
            ),
        );
    }
    kv("layers missing", crate::report::layers_missing_note(s));
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

pub(super) fn warnings(report: &Report, layout_note: &str) -> String {
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

pub(super) fn group_label(g: &std::collections::BTreeMap<String, String>) -> String {
    g.values().cloned().collect::<Vec<_>>().join(" ")
}

/// Stacked bars: per group, the mean time per IO in each layer (they add up to the
/// mean end-to-end time).
pub(super) fn breakdown(report: &Report) -> String {
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
                "{label} · {}: {} per IO on average ({} of end-to-end) — {}",
                LAYER_NAMES[i],
                fmt_ns(v),
                units::share(share),
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
    let items: Vec<(&str, &str)> = crate::layers::LAYER_PATH
        .iter()
        .filter(|i| used.contains(*i))
        .map(|&i| (LAYER_NAMES[i], LAYER_COLORS[i]))
        .collect();
    format!(
        "<h2 id=\"breakdown\">Where the time goes</h2><p class=\"note\">Mean time per complete IO in each layer; the layers of an IO add up to its end-to-end time. Hover a bar for its numbers.</p>{}<figure>{}</figure>",
        legend(&items),
        c.finish()
    )
}

pub(super) fn latency_table(report: &Report) -> String {
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
            "<td class=\"l\"><i style=\"display:inline-block;width:9px;height:9px;background:{};margin-right:5px\"></i>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            layer_color(&st.layer),
            esc(layer_title(&st.layer)),
            st.count,
            fmt_ns(st.mean_ns),
            fmt_ns(st.p50_ns as f64),
            fmt_ns(st.p90_ns as f64),
            fmt_ns(st.p99_ns as f64),
            fmt_ns(st.p999_ns as f64),
            fmt_ns(st.max_ns as f64),
            units::share(st.share)
        );
    }
    t.push_str("</table>");
    t
}

pub(super) fn histograms(run: &Run) -> String {
    let ops = ops_of(&[run]);
    let layers = layers_of(&[run]);
    let range = range_of(run.keys().filter_map(|(o, l)| run.get(o, l)));
    let mut s = String::from(
        "<h2 id=\"histograms\">Latency histograms</h2><p class=\"note\">Complete IOs per latency bucket (a quarter octave each): the log time axis and the IO axis are the same in every panel, so bars compare across them; the ops side by side in each bucket.</p>",
    );
    let items: Vec<(&str, &str)> = ops.iter().map(|o| (o.as_str(), op_color(o))).collect();
    s.push_str(&legend(&items));
    s.push_str("<div class=\"grid\">");
    let panels: Vec<(&str, Vec<Series>)> = layers
        .iter()
        .map(|&layer| {
            let series = ops
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
            (layer, series)
        })
        .collect();
    let top = y_max(panels.iter().map(|(_, s)| s.as_slice()));
    for (layer, series) in &panels {
        let _ = write!(
            s,
            "<figure data-layer=\"{layer}\">{}</figure>",
            hist_panel(layer_title(layer), range, top, series, Panel::Grouped)
        );
    }
    s.push_str("</div>");
    s
}

pub(super) fn waterfall(report: &Report) -> String {
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
        let mut detail = format!(
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
        if row_.throttle_ns > 0 {
            let _ = write!(
                detail,
                "; waited {} in QEMU's throttling",
                fmt_ns(row_.throttle_ns as f64)
            );
        }
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
    let items: Vec<(&str, &str)> = crate::layers::LAYER_PATH
        .iter()
        .filter(|i| used.contains(*i))
        .map(|&i| (LAYER_NAMES[i], LAYER_COLORS[i]))
        .collect();
    format!(
        "<h2 id=\"slowest\">The {} slowest IOs</h2><p class=\"note\">Each IO from its first boundary; a bar per layer it spent time in. Hover for offsets, files, devices and child IOs.</p>{}<figure>{}</figure>",
        ios.len(),
        legend(&items),
        c.finish()
    )
}

pub(super) fn over_time(tl: &Timeline) -> String {
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
        "<h2 id=\"time\">Over time</h2><p class=\"note\">Complete IOs by completion time in {} slots. Latency: end-to-end mean (dashed) and p99 (solid, from quarter-octave buckets: ±9%), log scale.</p>{}<figure><figcaption>IOPS</figcaption>{iops_svg}</figure><figure><figcaption>end-to-end latency</figcaption>{lat_svg}</figure>",
        fmt_ns(width as f64),
        legend(&items)
    )
}

pub(super) fn partial_and_other(report: &Report) -> String {
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

pub(super) fn layer_glossary() -> String {
    let mut s = String::from(
        "<h2 id=\"layers\">Layers</h2><p class=\"note\">An IO's time is cut at the boundaries it has; a layer that was not traced hands its time to the one above (docs/layers.md).</p><table>",
    );
    for i in crate::layers::LAYER_PATH {
        let name = LAYER_NAMES[i];
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
