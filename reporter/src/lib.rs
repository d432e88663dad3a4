//! The reporter: reads a viopath trace, joins every guest IO across the layers it
//! passed through, and reports where the time went, layer by layer.
//!
//! Data flow: [`reader`] (memory-mapped trace → events in timestamp order) →
//! [`join`] (events → one row per guest IO, using [`layout`] to follow addresses
//! into the block layer) → [`report`] (rows → latency table, slowest IOs, partial and
//! non-guest IO; per-IO export). [`layers`] defines the boundaries an IO's time is cut
//! at; [`synth`] writes synthetic traces with known answers for tests and benchmarks.

pub mod join;
pub mod layers;
pub mod layout;
pub mod reader;
pub mod report;
pub mod synth;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use viopath_layouts::host::DevId;

pub use report::{ExportFormat, GroupBy, Report};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] reader::ReadError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
}

/// How to make a report.
#[derive(Debug, Clone)]
pub struct Options {
    pub top_n: usize,
    pub by: Vec<GroupBy>,
    /// Also write one row per IO here.
    pub export: Option<(PathBuf, ExportFormat)>,
    /// Take the layout from these images now instead of the trace's snapshot.
    pub images: Vec<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            top_n: 10,
            by: vec![GroupBy::Op],
            export: None,
            images: Vec::new(),
        }
    }
}

/// Where the layout used for the join came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayoutSource {
    pub from: &'static str,
    pub files: usize,
    pub errors: Vec<String>,
}

/// Layers the recording did not trace, from the header's probe list.
pub fn layers_missing(header: &serde_json::Value) -> Vec<String> {
    let mut attached = BTreeSet::new();
    let mut all = BTreeSet::new();
    for p in header["probes"].as_array().into_iter().flatten() {
        let Some(layer) = p["layer"].as_str() else {
            continue;
        };
        all.insert(layer.to_owned());
        if p["attached"] == true {
            attached.insert(layer.to_owned());
        }
    }
    all.difference(&attached).cloned().collect()
}

fn probe_attached(header: &serde_json::Value, name: &str) -> bool {
    header["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == name && p["attached"] == true)
}

fn from_snapshot(v: &serde_json::Value, from: &'static str) -> (layout::Layout, LayoutSource) {
    let l = layout::Layout::from_snapshot(v);
    let mut errors: Vec<String> = v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    if l.guest.images_with_guest.len() > 1 {
        errors.push(format!(
            "guest files are not named: {} images hold guest filesystems ({}) and the trace does not say which disk each request was for",
            l.guest.images_with_guest.len(),
            l.guest.images_with_guest.join(", ")
        ));
    }
    let files = l.file_count();
    (
        l,
        LayoutSource {
            from,
            files,
            errors,
        },
    )
}

/// The layout the join uses: from images (when given) or the trace's snapshot.
pub fn load_layout(trace: &reader::Trace, images: &[PathBuf]) -> (layout::Layout, LayoutSource) {
    if !images.is_empty() {
        let devices: BTreeSet<DevId> = trace.header["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str()?.parse().ok())
            .collect();
        let snap = viopath_layouts::snapshot::take(images, &devices);
        return from_snapshot(&snap, "images");
    }
    match &trace.layout {
        Some(v) => from_snapshot(v, "trace"),
        None => (
            layout::Layout::default(),
            LayoutSource {
                from: "none",
                files: 0,
                errors: vec!["the trace has no layout snapshot (recording interrupted?) and no --image was given: block IO is joined only where the submitting thread shows it".into()],
            },
        ),
    }
}

/// Read, join and report.
pub fn analyze(path: &Path, opts: &Options) -> Result<(Report, LayoutSource), Error> {
    let trace = reader::Trace::open(path)?;
    let (layout, source) = load_layout(&trace, &opts.images);
    let mut collector = report::Collector::new(&layout, opts.top_n);
    if let Some((p, f)) = &opts.export {
        collector.export_to(p, *f)?;
    }
    let cfg = join::JoinConfig {
        await_msi: probe_attached(&trace.header, "kvm_msi_set_irq"),
        expect_qcow2: layout.has_qcow2()
            && (probe_attached(&trace.header, "qcow2_co_preadv_part")
                || probe_attached(&trace.header, "qcow2_co_pwritev_part")),
    };
    let mut join = join::Join::new(&layout, collector, cfg);
    let mut events = trace.events();
    for e in &mut events {
        join.event(&e);
    }
    let damage = events
        .damage()
        .cloned()
        .or_else(|| trace.info.damage.clone());
    let late = events.late();
    let read = events.events_read();
    let (collector, stats) = join.finish();
    let summary = report::Summary {
        ios: 0,
        complete_ios: 0,
        partial_ios: 0,
        duration_ns: 0,
        iops: 0.0,
        bytes: 0,
        events: read,
        events_lost_in_kernel: trace.info.events_lost_in_kernel,
        events_unread: match &damage {
            Some(d) => d.bytes_unread / viopath_probes::trace::FILE_EVENT_SIZE as u64,
            None => 0,
        },
        events_late: late,
        trace_complete: trace.info.complete,
        damage,
        layers_missing: layers_missing(&trace.header),
        peak_in_flight: 0,
    };
    let report = collector.report(&opts.by, &stats, summary)?;
    Ok((report, source))
}
