//! The reporter: reads a viopath trace, joins every guest IO across the layers it
//! passed through, and reports where the time went, layer by layer.
//!
//! Data flow: [`reader`] (memory-mapped trace → events in timestamp order) →
//! [`join`] (events → one row per guest IO, using [`layout`] to follow addresses
//! into the block layer) → [`report`] (rows → latency table, slowest IOs, partial and
//! non-guest IO; per-IO export) → [`pictures`], [`html`] and [`perfetto`] (pictures
//! of it); [`compare`] sets runs against each other over [`hist`]. `input` gives each
//! of them the layout, the join's configuration and the events. [`layers`] defines the
//! boundaries an IO's time is cut at; [`units`] formats it for people; [`synth`] writes
//! synthetic traces with known answers for tests and benchmarks.

pub mod cache;
pub mod compare;
pub mod devices;
pub mod export;
pub mod filter;
pub mod hist;
pub mod html;
mod input;
pub mod join;
pub mod layers;
pub mod layout;
pub mod perfetto;
pub mod pictures;
pub mod reader;
pub mod report;
mod rng;
pub mod summary;
pub mod synth;
pub mod units;

use std::path::{Path, PathBuf};
use viopath_probes::chunks::Header;

pub use input::{
    LayoutSource, Progress, for_each_event, join_config, layers_missing, load_layout,
    qemu_probe_gives,
};
pub use report::{ExportFormat, GroupBy, Report};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] reader::ReadError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
}

/// What the join emits, in order.
enum Joined {
    Io(join::IoRow),
    Other(join::OtherIo),
}

/// A join sink that hands what it gets to another thread, in batches.
struct Handoff {
    batch: Vec<Joined>,
    tx: std::sync::mpsc::SyncSender<Vec<Joined>>,
}

impl Handoff {
    /// Rows per batch. The collector keeps up and sleeps between batches, so each batch
    /// wakes it: 4096 rows (about 720 KB) instead of 1024 took about 500 of the 1,500
    /// context switches of a report of 10M events.
    const BATCH: usize = 4096;

    fn new(tx: std::sync::mpsc::SyncSender<Vec<Joined>>) -> Handoff {
        Handoff {
            batch: Vec::with_capacity(Self::BATCH),
            tx,
        }
    }

    fn push(&mut self, j: Joined) {
        self.batch.push(j);
        if self.batch.len() >= Self::BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let b = std::mem::replace(&mut self.batch, Vec::with_capacity(Self::BATCH));
            // The receiver only goes away if the collector panicked, which the scope's
            // join reports.
            let _ = self.tx.send(b);
        }
    }
}

impl join::Sink for Handoff {
    fn io(&mut self, row: &join::IoRow) {
        self.push(Joined::Io(row.clone()));
    }
    fn other(&mut self, other: &join::OtherIo) {
        self.push(Joined::Other(other.clone()));
    }
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
    /// Partition keys when a Parquet export goes to a directory.
    pub partition: Partition,
    pub progress: Option<Progress>,
    /// Also collect what the HTML report draws ([`pictures::Pictures`]).
    pub pictures: bool,
    /// Only the IOs this keeps go into the report, the export and the pictures.
    pub filter: filter::Filter,
}

/// Hive-style partition keys of a Parquet export into a fleet directory:
/// `DIR/host=HOST/run=RUN/ios.parquet`.
#[derive(Debug, Clone, Default)]
pub struct Partition {
    /// Default: the host the trace was recorded on (its header).
    pub host: Option<String>,
    /// Default: the UTC time recording started, e.g. `20261122T101530Z`.
    pub run: Option<String>,
}

/// A partition value safe in a path and in every engine's hive parser.
fn partition_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() || v.chars().all(|c| c == '.') {
        "unknown".into()
    } else {
        v
    }
}

/// `YYYYMMDDTHHMMSSZ` for nanoseconds since the Unix epoch.
fn utc_stamp(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The file a Parquet export into directory `dir` goes to, from the trace's header
/// and the keys given.
pub fn partition_path(dir: &Path, header: &Header, p: &Partition) -> PathBuf {
    let host = p.host.clone().unwrap_or_else(|| header.host.clone());
    let run = p.run.clone().unwrap_or_else(|| {
        header
            .realtime_ns_at_start
            .map(utc_stamp)
            .unwrap_or_default()
    });
    dir.join(format!("host={}", partition_value(&host)))
        .join(format!("run={}", partition_value(&run)))
        .join("ios.parquet")
}

impl Default for Options {
    fn default() -> Self {
        Options {
            top_n: 10,
            by: vec![GroupBy::Op],
            export: None,
            images: Vec::new(),
            partition: Partition::default(),
            progress: None,
            pictures: false,
            filter: filter::Filter::default(),
        }
    }
}

/// Read, join and report.
pub fn analyze(path: &Path, opts: &Options) -> Result<(Report, LayoutSource), Error> {
    let trace = reader::Trace::open(path)?;
    let (layout, source) = load_layout(&trace, &opts.images);
    let layout_skipped = layout.skipped;
    let mut collector = report::Collector::new(&layout, opts.top_n, &opts.by);
    if opts.pictures {
        collector = collector.with_pictures();
    }
    let mut exported_to = None;
    if let Some((p, f)) = &opts.export {
        let mut p = p.clone();
        if *f == ExportFormat::Parquet
            && (p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/'))
        {
            p = partition_path(&p, &trace.header, &opts.partition);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(report::ReportError::Io)?;
            }
        }
        collector.export_to(&p, *f)?;
        exported_to = Some(p);
    }
    let mut filter = opts.filter.resolve(
        &layout,
        trace.header.monotonic_ns_at_start.filter(|&s| s > 0),
    )?;
    let cfg = join_config(&trace, &layout);
    // The collector (columns, histograms, export) runs on a thread of its own: the join
    // sets the pace, and this takes about an eighth of its work away.
    let (events, collector, stats, filter) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Joined>>(8);
        let layout = &layout;
        let collecting = scope.spawn(move || {
            let mut collector = collector;
            for batch in rx {
                for j in &batch {
                    match j {
                        Joined::Io(row) if filter.keep(row, layout) => {
                            join::Sink::io(&mut collector, row)
                        }
                        Joined::Other(o) if filter.keep_other(o) => {
                            join::Sink::other(&mut collector, o)
                        }
                        _ => {}
                    }
                }
            }
            (collector, filter)
        });
        let mut join = join::Join::new(layout, Handoff::new(tx), cfg);
        let events = for_each_event(&trace, opts.progress.as_ref(), |e| join.event(e));
        let (mut handoff, stats) = join.finish();
        handoff.flush();
        drop(handoff);
        let (collector, filter) = collecting.join().expect("the collector does not panic");
        (events, collector, stats, filter)
    });
    let damage = events
        .damage()
        .cloned()
        .or_else(|| trace.info.damage.clone());
    let late = events.late();
    let read = events.events_read();
    let summary = report::Summary {
        events: read,
        events_lost_in_kernel: trace.info.events_lost_in_kernel,
        events_unread: match &damage {
            Some(d) => d.bytes_unread / viopath_probes::trace::FILE_EVENT_SIZE as u64,
            None => 0,
        },
        events_late: late,
        events_impossible: events.impossible(),
        trace_complete: trace.info.complete,
        damage,
        trace_entries_skipped: trace.info.json_entries_skipped + layout_skipped as u64,
        layers_missing: layers_missing(&trace.header),
        domain: trace.header.target.domain.as_ref().map(|d| {
            let pid = trace.header.target.pid.map(|p| format!(" (pid {p})"));
            format!("{}{}", d.name, pid.unwrap_or_default())
        }),
        cache_modes: cache::disk_caches(&trace.header, trace.end.as_ref(), &layout),
        vms: input::vm_lines(&trace),
        exact_quantiles: true,
        filtered: filter.filtered(),
        ..report::Summary::default()
    };
    let mut report = collector.report(&stats, summary)?;
    report.exported_to = exported_to;
    Ok((report, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        // date -u -d @1795350930 +%Y%m%dT%H%M%SZ
        assert_eq!(utc_stamp(1_795_350_930_000_000_000), "20261122T123530Z");
        assert_eq!(utc_stamp(951_782_400_000_000_000), "20000229T000000Z");
    }

    #[test]
    fn partition_values_are_path_safe() {
        assert_eq!(partition_value("db-01.example"), "db-01.example");
        assert_eq!(partition_value("a/b=c d"), "a_b_c_d");
        assert_eq!(partition_value(".."), "unknown");
        assert_eq!(partition_value(""), "unknown");
    }
}
