//! From joined rows to the report: the per-layer latency table (polars' aggregations
//! and quantiles over one compact row per IO, a column per group and layer), the
//! slowest IOs, the partial ones and the IO no guest request caused; the per-IO export
//! is [`crate::export`]'s.

pub use crate::export::ExportFormat;
use crate::export::Exporter;
use crate::join::{IoRow, JoinStats, Op, OtherClass, OtherIo, Sink, reason_names};
use crate::layers::{Boundary, LAYER_NAMES, NL, split};
use crate::layout::Layout;
pub use crate::summary::{Summary, Throttling, cut_note, layers_missing_note};
use polars_core::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("aggregation")]
    Polars(#[from] PolarsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What to group the latency table by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Op,
    Size,
    Device,
    /// The VM's disk (image chain) the IO was for.
    Disk,
    /// The VM (QEMU process) the IO was of.
    Vm,
    /// The guest file (or filesystem structure: journal, inode table) at the IO's
    /// guest offset, from the layout's map of the guest's filesystems.
    File,
}

/// A row's VM and disk as one group key: the VM above bit 16, the disk's index + 1
/// below (0 when unknown). A disk is one VM's, so grouping by disk also is by VM.
fn disk_key(vm: u16, disk: Option<u16>) -> u32 {
    u32::from(vm) << 16 | disk.map_or(0, |d| u32::from(d) + 1)
}

/// A size class label: the power of two at or above `bytes` ("4K", "64K", "1M").
pub fn size_class(bytes: u64) -> String {
    let p = bytes.max(1).next_power_of_two();
    match p {
        p if p >= 1 << 30 => format!("{}G", p >> 30),
        p if p >= 1 << 20 => format!("{}M", p >> 20),
        p if p >= 1 << 10 => format!("{}K", p >> 10),
        p => format!("{p}B"),
    }
}

/// Collects joined rows: compact columns for the aggregation, the N slowest, the
/// partial ones by reason, other IO by class, and (optionally) the per-IO export.
pub struct Collector<'l> {
    layout: &'l Layout,
    top_n: usize,
    /// What the latency table is grouped by.
    by: Vec<GroupBy>,
    /// The complete IOs' columns, one set per group: per (op, size class, device, disk,
    /// guest file) with the parts not in `by` left 0.
    groups: Vec<(FoldKey, GroupCols)>,
    /// Where each key is in `groups`, once there are too many to search.
    group_index: std::collections::HashMap<FoldKey, usize>,
    /// Complete IOs in `groups`.
    exact: usize,
    /// Disks (the first 64) that IOs were seen for: the slowest IOs name theirs only
    /// when there are several.
    disks_seen: u64,
    slowest: BinaryHeap<std::cmp::Reverse<(u64, u64, RowBox)>>,
    pub partial_by_reason: BTreeMap<String, u64>,
    pub partial_examples: Vec<IoRow>,
    pub other: BTreeMap<OtherClass, OtherAgg>,
    first_ts: u64,
    last_ts: u64,
    /// Boundaries some complete row had, one bit per [`Boundary`].
    boundaries_seen: u16,
    throttle: Throttling,
    page_cache: crate::summary::PageCache,
    bytes: u64,
    ios: u64,
    complete: u64,
    exporter: Option<Exporter>,
    pictures: Option<crate::pictures::Pictures>,
    /// Complete IOs kept as exact columns; beyond, everything is folded into `folded`.
    exact_cap: usize,
    folded: Option<Folded>,
    /// Guest files' names in the order first seen (`--by file`), and their indices.
    files: Vec<String>,
    file_index: std::collections::HashMap<String, u32>,
}

/// The exact columns of the complete IOs of one group of the latency table, one entry
/// per IO. A group's IOs lie together, so the aggregation takes each group as one chunk
/// of its columns instead of gathering its rows from all of them.
#[derive(Default)]
struct GroupCols {
    e2e: Vec<u64>,
    layer: [Vec<u64>; NL],
    layer_valid: [Vec<bool>; NL],
}

/// Groups searched one by one before `Collector::group_index` is used: a table usually
/// has a handful, which a scan finds without hashing a key per IO.
const GROUPS_SCANNED: usize = 16;

/// Complete IOs whose per-layer times are kept exactly, for exact quantiles (89 bytes
/// each: 356 MB at most). Beyond this many, the collector folds them all into
/// log-bucket histograms per group and layer (quantiles within 0.4%, means and maxima
/// exact) and memory stops growing with the trace.
pub const EXACT_IOS: usize = 4_000_000;

/// A group of the latency table: (op, size class, device, disk, guest file), the parts
/// it is not grouped by 0 ([`project`]). A guest file is its index + 1 in
/// `Collector::files` (0: none known).
type FoldKey = (u32, u32, u32, u32, u32);

/// Each group's latencies, folded: per column (end-to-end, then the layers) a histogram
/// and the maximum.
#[derive(Debug, Default)]
struct Folded {
    groups: std::collections::HashMap<FoldKey, Vec<(crate::compare::Hist, u64)>>,
}

impl Folded {
    fn add(&mut self, key: FoldKey, e2e: u64, layers: impl Iterator<Item = Option<u64>>) {
        let g = self
            .groups
            .entry(key)
            .or_insert_with(|| vec![Default::default(); NL + 1]);
        let mut put = |i: usize, v: u64| {
            g[i].0.add(v);
            g[i].1 = g[i].1.max(v);
        };
        put(0, e2e);
        for (i, l) in layers.enumerate() {
            if let Some(v) = l {
                put(i + 1, v);
            }
        }
    }
}

/// Ordering wrapper so rows can sit in a heap keyed by (e2e, id).
#[derive(Debug, Clone)]
struct RowBox(Box<IoRow>);
impl PartialEq for RowBox {
    fn eq(&self, o: &Self) -> bool {
        self.0.id == o.0.id
    }
}
impl Eq for RowBox {}
impl PartialOrd for RowBox {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for RowBox {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&o.0.id)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OtherAgg {
    pub count: u64,
    pub bytes: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

pub const PARTIAL_EXAMPLES: usize = 20;

impl<'l> Collector<'l> {
    /// A collector for a latency table grouped by `by`.
    pub fn new(layout: &'l Layout, top_n: usize, by: &[GroupBy]) -> Self {
        Collector {
            layout,
            top_n,
            by: by.to_vec(),
            groups: Vec::new(),
            group_index: std::collections::HashMap::new(),
            exact: 0,
            disks_seen: 0,
            slowest: BinaryHeap::new(),
            partial_by_reason: BTreeMap::new(),
            partial_examples: Vec::new(),
            other: BTreeMap::new(),
            first_ts: u64::MAX,
            last_ts: 0,
            boundaries_seen: 0,
            throttle: Throttling::default(),
            page_cache: Default::default(),
            bytes: 0,
            ios: 0,
            complete: 0,
            exporter: None,
            pictures: None,
            exact_cap: EXACT_IOS,
            folded: None,
            files: Vec::new(),
            file_index: std::collections::HashMap::new(),
        }
    }

    /// Keep at most `n` complete IOs exactly (tests; the default is [`EXACT_IOS`]).
    pub fn with_exact_cap(mut self, n: usize) -> Self {
        self.exact_cap = n;
        self
    }

    /// Move the exact columns into histograms and free them.
    fn fold(&mut self) {
        let mut f = Folded::default();
        for (key, g) in std::mem::take(&mut self.groups) {
            for i in 0..g.e2e.len() {
                let layers = (0..NL).map(|l| g.layer_valid[l][i].then(|| g.layer[l][i]));
                f.add(key, g.e2e[i], layers);
            }
        }
        self.group_index = Default::default();
        self.exact = 0;
        self.folded = Some(f);
    }

    /// The guest file at `row`'s offset, as an index + 1 into `files` (0: none known).
    fn file_of(&mut self, row: &IoRow) -> u32 {
        let Some(name) = row
            .offset
            .and_then(|o| self.layout.guest_name(row.disk, o))
            .map(|g| g.what)
        else {
            return 0;
        };
        if let Some(&i) = self.file_index.get(name) {
            return i;
        }
        self.files.push(name.to_owned());
        let i = self.files.len() as u32;
        self.file_index.insert(name.to_owned(), i);
        i
    }

    /// The columns of `key`'s group, made if new.
    fn group(&mut self, key: FoldKey) -> &mut GroupCols {
        let found = if self.groups.len() <= GROUPS_SCANNED {
            self.groups.iter().position(|(k, _)| *k == key)
        } else {
            self.group_index.get(&key).copied()
        };
        let i = match found {
            Some(i) => i,
            None => {
                self.groups.push((key, GroupCols::default()));
                if self.groups.len() > GROUPS_SCANNED {
                    if self.group_index.is_empty() {
                        self.group_index = self
                            .groups
                            .iter()
                            .enumerate()
                            .map(|(i, (k, _))| (*k, i))
                            .collect();
                    } else {
                        self.group_index.insert(key, self.groups.len() - 1);
                    }
                }
                self.groups.len() - 1
            }
        };
        &mut self.groups[i].1
    }

    /// Also collect what the HTML report draws (histograms, time series).
    pub fn with_pictures(mut self) -> Self {
        self.pictures = Some(crate::pictures::Pictures::default());
        self
    }

    /// Also write every row to `path` (`-`: standard output).
    pub fn export_to(&mut self, path: &Path, format: ExportFormat) -> Result<(), ReportError> {
        self.exporter = Some(Exporter::create(path, format, self.layout)?);
        Ok(())
    }

    /// Finish the export, if any.
    pub fn finish_export(&mut self) -> Result<(), ReportError> {
        match self.exporter.take() {
            Some(x) => x.finish(self.layout),
            None => Ok(()),
        }
    }
}

impl Sink for Collector<'_> {
    fn io(&mut self, row: &IoRow) {
        self.ios += 1;
        if let Some(d) = row.disk.filter(|&d| d < 64) {
            self.disks_seen |= 1 << d;
        }
        // Data moved: a discard's or write of zeroes' range carries none.
        if !matches!(row.op, Op::Discard | Op::WriteZeroes) {
            self.bytes = self.bytes.saturating_add(row.bytes);
        }
        let first = row.b.iter().copied().filter(|&t| t != 0).min().unwrap_or(0);
        if first != 0 {
            self.first_ts = self.first_ts.min(first);
        }
        self.last_ts = self.last_ts.max(row.b.iter().copied().max().unwrap_or(0));
        if row.throttle_ns > 0 {
            self.throttle.ios += 1;
            self.throttle.total_ns = self.throttle.total_ns.saturating_add(row.throttle_ns);
            self.throttle.max_ns = self.throttle.max_ns.max(row.throttle_ns);
        }
        self.page_cache.add(row);
        if row.partial == 0 {
            for (i, &t) in row.b.iter().enumerate() {
                if t != 0 {
                    self.boundaries_seen |= 1 << i;
                }
            }
        }
        if let Some(x) = &mut self.exporter {
            x.push(row, self.layout);
        }
        if row.partial != 0 {
            *self
                .partial_by_reason
                .entry(reason_names(row.partial))
                .or_default() += 1;
            if self.partial_examples.len() < PARTIAL_EXAMPLES {
                self.partial_examples.push(row.clone());
            }
            return;
        }
        if let Some(p) = &mut self.pictures {
            p.add(row);
        }
        let (layers, e2e) = split(&row.b);
        let size = row.bytes.max(1).next_power_of_two().trailing_zeros();
        let file = if self.by.contains(&GroupBy::File) {
            self.file_of(row)
        } else {
            0
        };
        let key = project(
            &self.by,
            (
                row.op as u32,
                size,
                row.bottom_dev,
                disk_key(row.vm, row.disk),
                file,
            ),
        );
        self.complete += 1;
        if let Some(f) = &mut self.folded {
            f.add(key, e2e, layers.into_iter());
        } else {
            let g = self.group(key);
            g.e2e.push(e2e);
            for (i, l) in layers.iter().enumerate() {
                g.layer[i].push(l.unwrap_or(0));
                g.layer_valid[i].push(l.is_some());
            }
            self.exact += 1;
            if self.exact >= self.exact_cap {
                self.fold();
            }
        }
        let key = (e2e, u64::MAX - row.id);
        let full = self.slowest.len() >= self.top_n;
        // A row is cloned only when it enters the N slowest, not for every IO.
        if self.top_n > 0 && (!full || self.slowest.peek().is_some_and(|m| (m.0.0, m.0.1) < key)) {
            if full {
                self.slowest.pop();
            }
            let item = std::cmp::Reverse((key.0, key.1, RowBox(Box::new(row.clone()))));
            self.slowest.push(item);
        }
    }

    fn other(&mut self, o: &OtherIo) {
        self.page_cache.other(o);
        let a = self.other.entry(o.class).or_default();
        a.count += 1;
        a.bytes = a.bytes.saturating_add(o.bytes);
        let d = o.end.saturating_sub(o.start);
        a.total_ns = a.total_ns.saturating_add(d);
        a.max_ns = a.max_ns.max(d);
    }
}

/// One line of the latency table: one layer (or the end-to-end time) in one group.
#[derive(Debug, Clone, Serialize)]
pub struct LayerStat {
    pub group: BTreeMap<String, String>,
    pub layer: String,
    pub count: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// This layer's time as a share of the group's end-to-end time.
    pub share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowIo {
    pub row: IoRow,
    pub e2e_ns: u64,
    pub layers: BTreeMap<&'static str, u64>,
    pub device: Option<String>,
    /// The VM's disk (top image path), when known and IOs went to several.
    pub disk: Option<String>,
    pub guest_file: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OtherLine {
    pub class: OtherClass,
    pub what: &'static str,
    #[serde(flatten)]
    pub agg: OtherAgg,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub by: Vec<GroupBy>,
    pub latency: Vec<LayerStat>,
    pub slowest: Vec<SlowIo>,
    pub partial: BTreeMap<String, u64>,
    pub partial_examples: Vec<IoRow>,
    pub other_io: Vec<OtherLine>,
    /// Where the per-IO export went (a directory export resolves to a partition file).
    #[serde(skip)]
    pub exported_to: Option<std::path::PathBuf>,
    /// Histograms and time series for the HTML report, when asked for.
    #[serde(skip)]
    pub pictures: Option<crate::pictures::Pictures>,
}

fn polars_arrow_bitmap(v: &[bool]) -> polars_arrow::bitmap::Bitmap {
    polars_arrow::bitmap::Bitmap::from_iter(v.iter().copied())
}

impl Collector<'_> {
    /// Aggregate and build the report. Consumes the compact columns.
    pub fn report(
        mut self,
        stats: &JoinStats,
        mut summary: Summary,
    ) -> Result<Report, ReportError> {
        self.finish_export()?;
        let n = self.exact;
        summary.ios = self.ios;
        summary.complete_ios = self.complete;
        summary.partial_ios = self.ios - self.complete;
        summary.exact_quantiles = self.folded.is_none();
        summary.bytes = self.bytes;
        summary.duration_ns = self.last_ts.saturating_sub(self.first_ts.min(self.last_ts));
        summary.iops = if summary.duration_ns > 0 {
            self.ios as f64 * 1e9 / summary.duration_ns as f64
        } else {
            0.0
        };
        summary.peak_in_flight = stats.peak_in_flight;
        summary.throttled = self.throttle;
        summary.page_cache = std::mem::take(&mut self.page_cache);
        if self.complete > 0 {
            // `entered` is only there for bios submitted to a partition, `fs_entered`
            // where the filesystem's functions can be probed, `bottom_queued` for IO
            // through stacked devices: their absence is no layer missing (the layer
            // above holds their time; docs/layers.md).
            let optional = [
                Boundary::Entered,
                Boundary::FsEntered,
                Boundary::BottomQueued,
            ];
            summary.boundaries_missing = crate::layers::PATH
                .iter()
                .filter(|&b| !optional.contains(b))
                .filter(|&&b| self.boundaries_seen & (1 << b as usize) == 0)
                .map(|&b| {
                    // A boundary starts the layer of its index; the last one ends the
                    // last layer.
                    let layer = LAYER_NAMES[b.layer()];
                    format!("{} ({layer})", b.name())
                })
                .collect();
        }
        summary.requests_completion_lost = stats.requests_lost;
        summary.cut_at_start = stats.cut_at_start;
        summary.cut_at_end = stats.cut_at_end;
        summary.events_of_unknown_threads = stats.events_of_unknown_threads;

        let by = std::mem::take(&mut self.by);
        let names = Names {
            layout: self.layout,
            files: &self.files,
        };
        let latency = if let Some(f) = self.folded.take() {
            aggregate_folded(f, &by, &names)
        } else if n == 0 {
            Vec::new()
        } else {
            aggregate(std::mem::take(&mut self.groups), &by, &names)?
        };
        let mut slowest: Vec<SlowIo> = self
            .slowest
            .into_sorted_vec()
            .into_iter()
            .map(|std::cmp::Reverse((e2e, _, RowBox(row)))| {
                let (l, _) = split(&row.b);
                SlowIo {
                    layers: LAYER_NAMES
                        .iter()
                        .zip(l)
                        .filter_map(|(n, v)| v.map(|v| (*n, v)))
                        .collect(),
                    e2e_ns: e2e,
                    device: (row.bottom_dev != 0).then(|| self.layout.device_name(row.bottom_dev)),
                    disk: row
                        .disk
                        .filter(|_| self.disks_seen.count_ones() > 1)
                        .map(|d| self.layout.disk_name(d).to_owned()),
                    guest_file: row
                        .offset
                        .and_then(|o| self.layout.guest_name(row.disk, o))
                        .map(|g| match g.file_offset {
                            Some(f) => format!("{} @{f}", g.what),
                            None => g.what.to_owned(),
                        }),
                    row: *row,
                }
            })
            .collect();
        slowest.sort_by(|a, b| b.e2e_ns.cmp(&a.e2e_ns).then(a.row.id.cmp(&b.row.id)));
        Ok(Report {
            summary,
            by: by.to_vec(),
            latency,
            slowest,
            partial: self.partial_by_reason,
            partial_examples: self.partial_examples,
            other_io: self
                .other
                .into_iter()
                .map(|(class, agg)| OtherLine {
                    class,
                    what: class.name(),
                    agg,
                })
                .collect(),
            exported_to: None,
            pictures: self.pictures,
        })
    }
}

const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];

/// The group of an IO's (op, size class, device, disk, file): the parts not in `by`
/// left 0.
fn project(by: &[GroupBy], (op, size, dev, disk, file): FoldKey) -> FoldKey {
    let part = |g: GroupBy, v: u32| if by.contains(&g) { v } else { 0 };
    (
        part(GroupBy::Op, op),
        part(GroupBy::Size, size),
        part(GroupBy::Device, dev),
        part(GroupBy::Disk, disk) | part(GroupBy::Vm, disk & !0xffff),
        part(GroupBy::File, file),
    )
}

/// A group's key as the latency table orders it: the parts asked for, in that order.
fn key_in_order(by: &[GroupBy], (op, size, dev, disk, file): FoldKey) -> Vec<u32> {
    by.iter()
        .map(|g| match g {
            GroupBy::Op => op,
            GroupBy::Size => size,
            GroupBy::Device => dev,
            GroupBy::Disk => disk & 0xffff,
            GroupBy::Vm => disk >> 16,
            GroupBy::File => file,
        })
        .collect()
}

/// What the latency table's group columns are named from.
struct Names<'a> {
    layout: &'a Layout,
    /// Guest files by index - 1 (see [`FoldKey`]).
    files: &'a [String],
}

/// The latency table from the groups' exact columns: per group, end-to-end and every
/// layer along the path, polars' aggregations over the column (count of the IOs that
/// have the layer, mean, sum, max, and nearest-rank quantiles). The groups are already
/// apart (the collector made one per key asked for), so each column is aggregated as it
/// is, without a group-by; the groups run side by side on polars' thread pool.
fn aggregate(
    mut groups: Vec<(FoldKey, GroupCols)>,
    by: &[GroupBy],
    names_of: &Names<'_>,
) -> Result<Vec<LayerStat>, ReportError> {
    use rayon::prelude::*;
    groups.sort_by_cached_key(|(k, _)| key_in_order(by, *k));
    // The table's order: end-to-end, then the layers along the path.
    let mut names: Vec<&str> = vec!["e2e"];
    names.extend(crate::layers::path_layers());
    let column_of = |name: &str| -> Option<usize> { LAYER_NAMES.iter().position(|n| *n == name) };
    let per_group: Vec<PolarsResult<Vec<LayerStat>>> =
        polars_core::runtime::THREAD_POOL.install(|| {
            groups
                .into_par_iter()
                .map(|(key, c)| {
                    let group = if by.is_empty() {
                        BTreeMap::new()
                    } else {
                        group_names(by, key, names_of)
                    };
                    let GroupCols {
                        e2e,
                        layer,
                        layer_valid,
                    } = c;
                    let e2e = column("e2e", e2e, None);
                    let e2e_sum = e2e.sum().unwrap_or(0).max(1) as f64;
                    let mut layer = layer.map(Some);
                    let mut valid = layer_valid.map(Some);
                    let mut out = Vec::new();
                    for name in &names {
                        let ca = match column_of(name) {
                            None => e2e.clone(),
                            Some(i) => {
                                let v = layer[i].take().unwrap_or_default();
                                let ok = valid[i].take().unwrap_or_default();
                                // No validity at all when every value is there: polars then
                                // takes its null-free paths.
                                let ok = (!ok.iter().all(|&x| x)).then_some(ok);
                                column(name, v, ok)
                            }
                        };
                        let count = (ca.len() - ca.null_count()) as u64;
                        if count == 0 {
                            continue;
                        }
                        let q = |q: f64| -> PolarsResult<u64> {
                            Ok(ca.quantile(q, QuantileMethod::Nearest)?.unwrap_or(0.0) as u64)
                        };
                        let [p50, p90, p99, p999] = QUANTILES.map(|(_, v)| v);
                        out.push(LayerStat {
                            group: group.clone(),
                            layer: (*name).to_owned(),
                            count,
                            mean_ns: ca.mean().unwrap_or(0.0),
                            p50_ns: q(p50)?,
                            p90_ns: q(p90)?,
                            p99_ns: q(p99)?,
                            p999_ns: q(p999)?,
                            max_ns: ca.max().unwrap_or(0),
                            share: ca.sum().unwrap_or(0) as f64 / e2e_sum,
                        });
                    }
                    Ok(out)
                })
                .collect()
        });
    let mut stats = Vec::new();
    for g in per_group {
        stats.extend(g?);
    }
    Ok(stats)
}

/// One group's values of a column as a polars array, without copying them.
fn column(name: &str, v: Vec<u64>, valid: Option<Vec<bool>>) -> UInt64Chunked {
    UInt64Chunked::from_chunk_iter(
        name.into(),
        std::iter::once(
            polars_arrow::array::PrimitiveArray::from_vec(v)
                .with_validity(valid.map(|v| polars_arrow_bitmap(&v))),
        ),
    )
}

/// The latency table's group columns for a (op, size, device, disk, file) key.
fn group_names(by: &[GroupBy], key: FoldKey, names: &Names<'_>) -> BTreeMap<String, String> {
    let (op, size, dev, disk, file) = key;
    let layout = names.layout;
    by.iter()
        .map(|g| match g {
            GroupBy::Op => {
                let name = Op::ALL
                    .iter()
                    .find(|o| **o as u32 == op)
                    .map_or("other", |o| o.name());
                ("op".to_owned(), name.to_owned())
            }
            GroupBy::Size => ("size".to_owned(), size_class(1u64 << size.min(63))),
            GroupBy::Device => (
                "device".to_owned(),
                if dev == 0 {
                    "-".to_owned()
                } else {
                    layout.device_name(dev)
                },
            ),
            GroupBy::Disk => (
                "disk".to_owned(),
                match (disk & 0xffff).checked_sub(1) {
                    Some(d) => layout.disk_name(d as u16).to_owned(),
                    None => "-".to_owned(),
                },
            ),
            GroupBy::Vm => (
                "vm".to_owned(),
                layout.vm_name((disk >> 16) as u16).to_owned(),
            ),
            GroupBy::File => (
                "file".to_owned(),
                file.checked_sub(1)
                    .and_then(|f| names.files.get(f as usize))
                    .map_or_else(|| "-".to_owned(), Clone::clone),
            ),
        })
        .collect()
}

/// The latency table from folded histograms: groups merged to the keys asked for, in
/// the same order and with the same columns as the exact path.
fn aggregate_folded(f: Folded, by: &[GroupBy], names: &Names<'_>) -> Vec<LayerStat> {
    // Folded by the keys asked for already; in the exact path's order.
    let mut groups: Vec<(FoldKey, Vec<(crate::compare::Hist, u64)>)> =
        f.groups.into_iter().collect();
    groups.sort_by_cached_key(|(k, _)| key_in_order(by, *k));
    let mut stats = Vec::new();
    for (key, cols) in groups {
        let group = group_names(by, key, names);
        let e2e_sum = cols[0].0.sum().max(1.0);
        // End-to-end, then the layers along the path (column 1 + position).
        let order = std::iter::once(0).chain(crate::layers::LAYER_PATH.iter().map(|&l| l + 1));
        for i in order {
            let (h, max) = &cols[i];
            if h.n == 0 {
                continue;
            }
            let q = |p: f64| h.quantile(p).round() as u64;
            stats.push(LayerStat {
                group: group.clone(),
                layer: if i == 0 { "e2e" } else { LAYER_NAMES[i - 1] }.to_owned(),
                count: h.n,
                mean_ns: h.sum() / h.n as f64,
                p50_ns: q(0.5),
                p90_ns: q(0.9),
                p99_ns: q(0.99),
                p999_ns: q(0.999),
                max_ns: *max,
                share: h.sum() / e2e_sum,
            });
        }
    }
    stats
}

/// Write `report` as JSON.
pub fn write_json(report: &Report, out: &mut dyn Write) -> Result<(), ReportError> {
    serde_json::to_writer_pretty(&mut *out, report).map_err(std::io::Error::other)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::{IoRow, reasons};
    use crate::layers::Boundaries;
    use viopath_layouts::GuestOffset;

    fn summary() -> Summary {
        Summary {
            trace_complete: true,
            exact_quantiles: true,
            ..Summary::default()
        }
    }

    /// Rows with spread-out layer times, reads and writes of two sizes, one partial.
    fn feed(c: &mut Collector) {
        let mut s = 0x1234_5678u64;
        let mut next = |m: u64| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 33) % m
        };
        for id in 0..20_000u64 {
            let mut b = Boundaries::new();
            let mut t = 1_000_000 + id * 10_000;
            for (i, at) in Boundary::ALL.into_iter().enumerate().skip(1).take(7) {
                b[at] = t;
                // The device layer has a long tail; the others are short.
                t += if i == 4 {
                    20_000 + next(5_000_000)
                } else {
                    500 + next(30_000)
                };
            }
            let row = IoRow {
                id,
                op: if next(3) == 0 { Op::Write } else { Op::Read },
                offset: Some(GuestOffset(id * 4096)),
                bytes: if next(2) == 0 { 4096 } else { 65536 },
                b,
                partial: if id == 7 { reasons::NO_COMPLETION } else { 0 },
                ..IoRow::example()
            };
            c.io(&row);
        }
    }

    /// The summary's bytes are data moved: a discard's or write of zeroes' range is
    /// not, though the rows keep their ranges.
    #[test]
    fn discarded_and_zeroed_ranges_are_not_bytes_moved() {
        let layout = Layout::default();
        let mut c = Collector::new(&layout, 3, &[GroupBy::Op]);
        for (id, op, bytes) in [
            (0, Op::Read, 4096),
            (1, Op::Discard, 1 << 20),
            (2, Op::WriteZeroes, 8192),
            (3, Op::Write, 512),
        ] {
            let row = IoRow {
                id,
                op,
                offset: Some(GuestOffset(0)),
                bytes,
                ..IoRow::example()
            };
            c.io(&row);
        }
        let r = c.report(&JoinStats::default(), summary()).unwrap();
        assert_eq!((r.summary.ios, r.summary.bytes), (4, 4096 + 512));
    }

    #[test]
    fn ios_are_grouped_and_named_by_their_disk() {
        // Two disks, each with a guest filesystem holding its own file at the same
        // guest offsets: an IO is named from its own disk's files, or not at all when
        // its disk is unknown.
        let disk = |path: &str, file: &str| {
            serde_json::json!({"path": path, "file_hosts": [], "guest": {
                "partitions": [{"start": 0, "sectors": 8192}],
                "extents": [{"offset": 0, "len": 4 << 20, "what": "file", "path": file, "file_offset": 0}]
            }})
        };
        let layout = Layout::from_json(&serde_json::json!({
            "images": [disk("/vm/a.qcow2", "/a.txt"), disk("/vm/b.qcow2", "/b.txt")],
            "devices": []
        }));
        let name = |d, o| {
            layout
                .guest_name(d, GuestOffset(o))
                .map(|g| (g.what, g.file_offset))
        };
        assert_eq!(name(Some(0), 8192), Some(("/a.txt", Some(8192))));
        assert_eq!(name(Some(1), 8192), Some(("/b.txt", Some(8192))));
        assert_eq!(name(None, 8192), None);
        assert_eq!(name(Some(2), 8192), None);
        // A snapshot without inode numbers (older recordings, which also listed the
        // guest's kernel as an image): no IO has a disk, and the one image with a
        // guest filesystem names them.
        let no_ino = |path: &str| serde_json::json!({"file": path, "len": 4096, "host": []});
        let mut a = disk("/vm/a.qcow2", "/a.txt");
        a["file_hosts"] = serde_json::json!([no_ino("/vm/a.qcow2")]);
        let old = Layout::from_json(&serde_json::json!({
            "images": [a, {"path": "/boot/vmlinuz", "file_hosts": [no_ino("/boot/vmlinuz")]}],
            "devices": []
        }));
        let g = old.guest_name(None, GuestOffset(8192)).map(|g| g.what);
        assert_eq!(g, Some("/a.txt"));

        // 300 IOs: disk a, disk b, unknown in turn; disk b's are the slow ones.
        let rows: Vec<IoRow> = (0..300u64)
            .map(|id| {
                let disk = [Some(0), Some(1), None][(id % 3) as usize];
                let mut b = Boundaries::new();
                b[Boundary::Parsed] = 1_000 + id;
                b[Boundary::HostDone] =
                    b[Boundary::Parsed] + if disk == Some(1) { 90_000 } else { 10_000 } + id;
                IoRow {
                    id,
                    offset: Some(GuestOffset(id * 4096)),
                    disk,
                    b,
                    ..IoRow::example()
                }
            })
            .collect();
        for cap in [usize::MAX, 50] {
            let mut c = Collector::new(&layout, 3, &[GroupBy::Disk]).with_exact_cap(cap);
            for r in &rows {
                c.io(r);
            }
            let r = c.report(&JoinStats::default(), summary()).unwrap();
            let counts: Vec<(String, u64)> = r
                .latency
                .iter()
                .filter(|l| l.layer == "e2e")
                .map(|l| (l.group["disk"].clone(), l.count))
                .collect();
            assert_eq!(
                counts,
                [
                    ("-".to_owned(), 100),
                    ("/vm/a.qcow2".to_owned(), 100),
                    ("/vm/b.qcow2".to_owned(), 100)
                ],
                "exact cap {cap}"
            );
            let b_max = r
                .latency
                .iter()
                .find(|l| l.layer == "e2e" && l.group["disk"] == "/vm/b.qcow2")
                .map(|l| l.max_ns);
            assert_eq!(b_max, Some(90_000 + 298), "exact cap {cap}");
            // The slowest are disk b's, named from disk b's files.
            for x in &r.slowest {
                assert_eq!(x.disk.as_deref(), Some("/vm/b.qcow2"));
                let off = x.row.offset.unwrap();
                assert_eq!(x.guest_file, Some(format!("/b.txt @{off}")));
            }
        }
        // The per-IO export names the disk and the file of that disk.
        let df = crate::export::export_frame(&rows[..3], &layout).unwrap();
        let strs = |c: &str| -> Vec<Option<String>> {
            let col = df.column(c).unwrap();
            (0..col.len())
                .map(|i| match col.get(i).unwrap() {
                    AnyValue::String(v) => Some(v.to_owned()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            strs("disk"),
            [Some("/vm/a.qcow2".into()), Some("/vm/b.qcow2".into()), None]
        );
        assert_eq!(
            strs("guest_file"),
            [Some("/a.txt".into()), Some("/b.txt".into()), None]
        );
    }

    #[test]
    fn folded_histograms_agree_with_the_exact_table() {
        let layout = Layout::default();
        let by = [GroupBy::Op, GroupBy::Size];
        let mut exact = Collector::new(&layout, 5, &by);
        feed(&mut exact);
        let exact = exact.report(&JoinStats::default(), summary()).unwrap();
        // Folded after 1000 IOs: the rest go straight into the histograms.
        let mut folded = Collector::new(&layout, 5, &by).with_exact_cap(1000);
        feed(&mut folded);
        let folded = folded.report(&JoinStats::default(), summary()).unwrap();
        assert!(exact.summary.exact_quantiles);
        assert!(!folded.summary.exact_quantiles);
        assert_eq!(folded.summary.complete_ios, 19_999);
        assert_eq!(folded.summary.partial_ios, 1);
        assert_eq!(exact.latency.len(), folded.latency.len());
        for (e, f) in exact.latency.iter().zip(&folded.latency) {
            let what = format!("{:?} {}", e.group, e.layer);
            assert_eq!((&e.group, &e.layer), (&f.group, &f.layer), "{what}");
            assert_eq!(e.count, f.count, "{what}");
            assert_eq!(e.max_ns, f.max_ns, "{what}");
            assert!((e.mean_ns / f.mean_ns - 1.0).abs() < 1e-9, "{what}");
            assert!((e.share - f.share).abs() < 1e-9, "{what}");
            // Nearest-rank definitions differ by at most one sample; buckets by 0.4%.
            for (a, b) in [
                (e.p50_ns, f.p50_ns),
                (e.p90_ns, f.p90_ns),
                (e.p99_ns, f.p99_ns),
                (e.p999_ns, f.p999_ns),
            ] {
                assert!(
                    (a as f64 / b as f64 - 1.0).abs() < 0.02,
                    "{what}: exact {a}, folded {b}"
                );
            }
        }
        // The slowest IOs do not depend on the folding.
        let ids = |r: &Report| r.slowest.iter().map(|s| s.row.id).collect::<Vec<_>>();
        assert_eq!(ids(&exact), ids(&folded));
    }
}
