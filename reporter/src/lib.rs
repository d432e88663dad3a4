//! The reporter: reads a viopath trace, joins every guest IO across the layers it
//! passed through, and reports where the time went, layer by layer.
//!
//! Data flow: [`reader`] (memory-mapped trace → events in timestamp order) →
//! [`join`] (events → one row per guest IO, using [`layout`] to follow addresses
//! into the block layer) → [`report`] (rows → latency table, slowest IOs, partial and
//! non-guest IO; per-IO export) → [`html`] and [`perfetto`] (pictures of it);
//! [`compare`] sets runs against each other. [`layers`] defines the boundaries an IO's time is cut
//! at; [`synth`] writes synthetic traces with known answers for tests and benchmarks.

pub mod compare;
pub mod hist;
pub mod html;
pub mod join;
pub mod layers;
pub mod layout;
pub mod perfetto;
pub mod pictures;
pub mod reader;
pub mod report;
mod rng;
pub mod synth;
pub mod units;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use viopath_layouts::host::DevId;
use viopath_layouts::snapshot::Snapshot;
use viopath_probes::chunks::Header;

pub use report::{ExportFormat, GroupBy, Report};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] reader::ReadError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
}

/// Called while a trace is read with (bytes of events read, bytes in the trace), a few
/// hundred times at most: for progress bars.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// Feed a trace's events to `each`, telling `progress` how far it got now and then.
///
/// Reading (checksums, decoding, the merge of the CPUs' streams into timestamp order)
/// runs on a thread of its own and hands events over in batches, so it overlaps with
/// `each` (the join): each costs about half the time per event. On a VM that hands
/// freed memory back to its host, a third thread keeps the file ahead of the reading in
/// the page cache ([`reader::Trace::read_ahead`], [`reader::free_pages_go_to_host`]).
pub fn for_each_event<'t>(
    trace: &'t reader::Trace,
    progress: Option<&Progress>,
    mut each: impl FnMut(&viopath_probes::abi::RawEvent),
) -> reader::Events<'t> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Vec<viopath_probes::abi::RawEvent>>(4);
    let (empty_tx, empty_rx) = sync_channel::<Vec<viopath_probes::abi::RawEvent>>(6);
    let ahead = std::sync::Arc::new(reader::ReadAhead::default());
    std::thread::scope(|scope| {
        let reading_ahead = ahead.clone();
        if reader::free_pages_go_to_host() {
            scope.spawn(move || trace.read_ahead(&reading_ahead));
        }
        let reading = scope.spawn(move || {
            let _finish = reader::FinishOnDrop(ahead.clone());
            let mut events = trace.events();
            events.report_to(ahead);
            let mut batches = 0u32;
            loop {
                let mut batch = empty_rx.try_recv().unwrap_or_default();
                if !events.next_batch(&mut batch) {
                    break;
                }
                if full_tx.send(batch).is_err() {
                    break;
                }
                batches = batches.wrapping_add(1);
                if let Some(p) = progress
                    && batches.is_multiple_of(64)
                {
                    let (done, total) = events.position();
                    (p.0)(done, total);
                }
            }
            if let Some(p) = progress {
                let (_, total) = events.position();
                (p.0)(total, total);
            }
            events
        });
        // Owned here, so that if `each` panics the receiver drops while unwinding and the
        // reader, blocked on a full channel, stops instead of holding the scope forever.
        let full_rx = full_rx;
        for batch in full_rx.iter() {
            for e in &batch {
                each(e);
            }
            // The reader makes a new one when none comes back in time.
            let _ = empty_tx.try_send(batch);
        }
        reading.join().expect("the trace reader does not panic")
    })
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
pub fn layers_missing(header: &Header) -> Vec<String> {
    let mut attached = BTreeSet::new();
    let mut all = BTreeSet::new();
    for p in &header.probes {
        all.insert(p.layer.as_str());
        if p.attached {
            attached.insert(p.layer.as_str());
        }
    }
    all.difference(&attached).map(|l| l.to_string()).collect()
}

fn from_snapshot(snap: &Snapshot, from: &'static str) -> (layout::Layout, LayoutSource) {
    let l = layout::Layout::from_snapshot(snap);
    let mut errors: Vec<String> = snap.errors.clone();
    let with_guest = l.disks.iter().filter(|d| !d.guest.is_empty()).count();
    if l.disks.len() > 1 && !l.files_have_inodes() {
        errors.push(format!(
            "the layout lists {} images but not their files' inode numbers: which disk an IO was for is not known{}",
            l.disks.len(),
            match with_guest {
                0 => String::new(),
                1 => "; guest files are named from the one image with a guest filesystem".into(),
                n => format!(" and guest files are not named ({n} images hold guest filesystems)"),
            }
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
        let devices: BTreeSet<DevId> = trace
            .header
            .devices
            .iter()
            .filter_map(|d| d.parse().ok())
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

/// How rows end, from which probes the trace's header says were attached.
pub fn join_config(trace: &reader::Trace, layout: &layout::Layout) -> join::JoinConfig {
    join::JoinConfig {
        await_msi: trace.header.attached("kvm_msi_set_irq"),
        expect_qcow2: layout.has_qcow2()
            && (trace.header.attached("qcow2_co_preadv_part")
                || trace.header.attached("qcow2_co_pwritev_part")),
        flush_syscalls: trace.header.attached("sys_enter_fdatasync"),
        fs_sync: trace.header.attached("ext4_sync_file_enter"),
        aio_fsync: trace.header.attached("workqueue_execute_start")
            && trace.header.attached("workqueue_execute_end"),
        falloc_syscalls: trace.header.attached("sys_enter_fallocate"),
    }
}

/// Read, join and report.
pub fn analyze(path: &Path, opts: &Options) -> Result<(Report, LayoutSource), Error> {
    let trace = reader::Trace::open(path)?;
    let (layout, source) = load_layout(&trace, &opts.images);
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
    let cfg = join_config(&trace, &layout);
    // The collector (columns, histograms, export) runs on a thread of its own: the join
    // sets the pace, and this takes about an eighth of its work away.
    let (events, collector, stats) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Joined>>(8);
        let collecting = scope.spawn(move || {
            let mut collector = collector;
            for batch in rx {
                for j in &batch {
                    match j {
                        Joined::Io(row) => join::Sink::io(&mut collector, row),
                        Joined::Other(o) => join::Sink::other(&mut collector, o),
                    }
                }
            }
            collector
        });
        let mut join = join::Join::new(&layout, Handoff::new(tx), cfg);
        let events = for_each_event(&trace, opts.progress.as_ref(), |e| join.event(e));
        let (mut handoff, stats) = join.finish();
        handoff.flush();
        drop(handoff);
        let collector = collecting.join().expect("the collector does not panic");
        (events, collector, stats)
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
        trace_complete: trace.info.complete,
        damage,
        layers_missing: layers_missing(&trace.header),
        exact_quantiles: true,
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
