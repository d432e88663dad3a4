//! `viopath report`: join a trace and show where the time went, layer by layer.

use crate::ui::{Bar, note};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tabled::builder::Builder;
use viopath_reporter::filter::Filter;
use viopath_reporter::join::{Op, flag_names, reason_names};
use viopath_reporter::report::{Report, write_json};
use viopath_reporter::units::{self, human_bytes};
use viopath_reporter::{ExportFormat, GroupBy, LayoutSource, Options};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The report, as tables for a terminal
    Table,
    /// The report as JSON
    Json,
    /// One row per IO, one column per layer and boundary
    Csv,
    /// One row per IO, as Parquet (needs -o). When -o is a directory (or ends in /),
    /// the file goes to DIR/host=HOST/run=RUN/ios.parquet, a hive-partitioned fleet
    /// directory that DuckDB, Spark, Trino and polars read as one table (and
    /// `viopath compare` as runs)
    Parquet,
    /// A timeline for the Perfetto UI (ui.perfetto.dev) or chrome://tracing: each IO a
    /// slice with a child per layer, a track per layer, per QEMU thread, per device
    Perfetto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    Op,
    /// Size class: the power of two at or above the IO's size
    Size,
    /// The bottom host device
    Device,
    /// The VM's disk (image chain) the IO was for
    Disk,
    /// The VM (QEMU process): its libvirt domain, QEMU's -name, else its pid
    Vm,
    /// The guest file at the IO's offset (or the filesystem's own structure: its
    /// journal, inode tables), from the layout's map of the guest's filesystems; "-"
    /// where none is known (no map, a flush, unallocated space)
    File,
}

impl By {
    /// Its column in the latency table.
    fn name(&self) -> &'static str {
        match self {
            By::Op => "op",
            By::Size => "size",
            By::Device => "device",
            By::Disk => "disk",
            By::Vm => "vm",
            By::File => "file",
        }
    }
}

/// A guest op, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OpName {
    Read,
    Write,
    Flush,
    Discard,
    #[value(name = "write_zeroes")]
    WriteZeroes,
    #[value(name = "get_id")]
    GetId,
    /// A SCSI command that moves no disk data
    #[value(name = "scsi_command")]
    ScsiCommand,
    Other,
}

impl OpName {
    fn op(self) -> Op {
        match self {
            OpName::Read => Op::Read,
            OpName::Write => Op::Write,
            OpName::Flush => Op::Flush,
            OpName::Discard => Op::Discard,
            OpName::WriteZeroes => Op::WriteZeroes,
            OpName::GetId => Op::GetId,
            OpName::ScsiCommand => Op::Command,
            OpName::Other => Op::Other,
        }
    }
}

/// Which IOs to keep: for the report, its exports and its HTML page.
#[derive(Args, Debug, Default)]
pub struct FilterArgs {
    /// Only these ops, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', help_heading = "Filters")]
    pub op: Vec<OpName>,
    /// Only this VM disk: its image's path or file name, or its guest name (vda, a SCSI
    /// address) as `--by disk` shows it; repeat for several
    #[arg(long, help_heading = "Filters")]
    pub disk: Vec<String>,
    /// Only IOs whose end-to-end latency is at least this (250us, 1.5ms, 2s); partial
    /// IOs, whose latency is not known, are left out
    #[arg(long, value_name = "TIME", value_parser = crate::units::parse_time, help_heading = "Filters")]
    pub min_latency: Option<u64>,
    /// Only IOs that began at least this long after the recording started
    #[arg(long, value_name = "TIME", value_parser = crate::units::parse_time, help_heading = "Filters")]
    pub from: Option<u64>,
    /// Only IOs that began less than this long after the recording started
    #[arg(long, value_name = "TIME", value_parser = crate::units::parse_time, help_heading = "Filters")]
    pub to: Option<u64>,
}

impl FilterArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            ops: self.op.iter().map(|o| o.op()).collect(),
            disks: self.disk.clone(),
            min_latency_ns: self.min_latency,
            from_ns: self.from,
            to_ns: self.to,
        }
    }
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Trace written by `viopath record`
    pub trace: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write to this file instead of standard output
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// How many of the slowest IOs to show
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Group the latency table by these, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "op")]
    pub by: Vec<By>,
    /// Take the layout from these images now, instead of the snapshot in the trace
    /// (offline analysis where the images are at hand; repeat for several)
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// Partition key `host` of a Parquet export into a directory (default: the host
    /// the trace was recorded on)
    #[arg(long)]
    pub host: Option<String>,
    /// Partition key `run` of a Parquet export into a directory (default: the UTC time
    /// recording started, e.g. 20261122T101530Z)
    #[arg(long)]
    pub run: Option<String>,
    /// Also write the report as one self-contained HTML page with charts (per-layer
    /// breakdown, latency histograms, the slowest IOs, IOPS and latency over time)
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// A duration in the tables' µs columns.
fn us(ns: u64) -> String {
    units::us(ns as f64)
}

pub fn run(args: &ReportArgs, out: &mut dyn Write) -> Result<()> {
    let filter = args.filter.filter();
    if args.format == Format::Perfetto {
        if !filter.is_empty() {
            bail!(
                "--op, --disk, --min-latency, --from and --to apply to the report, its CSV and Parquet exports and its HTML page; the Perfetto timeline shows the whole trace"
            );
        }
        if args.html.is_some() {
            bail!(
                "--html and --format perfetto each read the whole trace: run `viopath report` once for each"
            );
        }
        return perfetto(args, out);
    }
    let by: Vec<GroupBy> = args
        .by
        .iter()
        .map(|b| match b {
            By::Op => GroupBy::Op,
            By::Size => GroupBy::Size,
            By::Device => GroupBy::Device,
            By::Disk => GroupBy::Disk,
            By::Vm => GroupBy::Vm,
            By::File => GroupBy::File,
        })
        .collect();
    let export = match args.format {
        Format::Csv => Some((
            args.output.clone().unwrap_or_else(|| PathBuf::from("-")),
            ExportFormat::Csv,
        )),
        Format::Parquet => match &args.output {
            Some(p) => Some((p.clone(), ExportFormat::Parquet)),
            None => bail!("--format parquet writes a file: give it with -o PATH"),
        },
        _ => None,
    };
    let opts = Options {
        top_n: args.top,
        by,
        export,
        images: args.images.clone(),
        partition: viopath_reporter::Partition {
            host: args.host.clone(),
            run: args.run.clone(),
        },
        progress: None,
        pictures: args.html.is_some(),
        filter,
    };
    let bar = Bar::new("joining");
    let opts = Options {
        progress: Some(bar.progress()),
        ..opts
    };
    let (report, source) = viopath_reporter::analyze(&args.trace, &opts)?;
    drop(bar);
    // Grouped by guest file where no IO could be named: one group "-", said why.
    if args.by.contains(&By::File)
        && !report.latency.is_empty()
        && report
            .latency
            .iter()
            .all(|l| l.group.get("file").is_some_and(|f| f == "-"))
    {
        eprintln!(
            "viopath: warning: --by file: no IO could be named by a guest file (the layout has no map of the guest's filesystems, or the IOs had no guest offset)"
        );
    }
    // Said on every output, even quiet: rows that do not join for this reason would
    // otherwise be blamed on the trace.
    if !source.mismatch.is_empty() {
        eprintln!(
            "viopath: warning: {}",
            crate::ui::prose(&format!(
                "the layout from --image does not match the one recorded in {}: {}. IO below QEMU is followed by these files' inodes and sectors, so its rows will be partial; without --image the trace's own layout is used",
                args.trace.display(),
                source.mismatch.join("; ")
            ))
        );
    }
    if let Some(path) = &args.html {
        let page = viopath_reporter::html::report_page(
            &report,
            report.pictures.as_ref().expect("asked for pictures"),
            &args.trace.display().to_string(),
            &layout_note(&source),
        );
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        note!("viopath: HTML report in {}", path.display());
    }
    // The table says what is wrong with the input; the other outputs warn on stderr.
    if args.format != Format::Table {
        let s = &report.summary;
        for w in viopath_reporter::summary::input_warnings(
            s.damage.as_ref(),
            s.events_lost_in_kernel,
            s.events_impossible,
            s.trace_complete,
        ) {
            eprintln!("viopath: warning: {}: {w}", args.trace.display());
        }
    }
    let mut file;
    let w: &mut dyn Write = match (&args.output, args.format) {
        (Some(p), Format::Table | Format::Json) => {
            file = BufWriter::new(
                File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
            &mut file
        }
        _ => out,
    };
    match args.format {
        Format::Table => {
            let order: Vec<&str> = args.by.iter().map(By::name).collect();
            table(&report, &source, &args.trace, &order, w)?
        }
        Format::Json => write_json(&report, w)?,
        Format::Perfetto => unreachable!("written before the report"),
        Format::Csv | Format::Parquet => {
            // The rows went to the export; say what happened on stderr.
            note!(
                "viopath: {} IOs ({} complete, {} partial) exported{}",
                report.summary.ios,
                report.summary.complete_ios,
                report.summary.partial_ios,
                match &report.exported_to {
                    Some(p) if p != Path::new("-") => format!(" to {}", p.display()),
                    _ => String::new(),
                }
            );
        }
    }
    w.flush()?;
    // For benchmarks: this process's own peak RSS (a parent's wait4 rusage also counts
    // the pre-exec copy of the parent).
    if std::env::var_os("VIOPATH_PEAK_RSS").is_some()
        && let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(l) = status.lines().find(|l| l.starts_with("VmHWM:"))
    {
        eprintln!(
            "viopath: peak RSS {}",
            l.trim_start_matches("VmHWM:").trim()
        );
    }
    Ok(())
}

fn quantile_note() -> String {
    format!(
        "from log buckets, within 0.4% (more than {} complete IOs: folded into histograms so memory stays bounded; means and maxima exact)",
        viopath_reporter::report::EXACT_IOS
    )
}

fn layout_note(source: &LayoutSource) -> String {
    format!(
        "from {} ({} image files){}{}",
        source.from,
        source.files,
        if source.errors.is_empty() {
            String::new()
        } else {
            format!("; {}", source.errors.join("; "))
        },
        if source.mismatch.is_empty() {
            String::new()
        } else {
            format!(
                "; DOES NOT MATCH THE RECORDING: {}",
                source.mismatch.join("; ")
            )
        }
    )
}

/// A disk's image path for a summary line: its file name, with its directory when short.
fn short_path(p: &str) -> String {
    if p.len() <= 48 {
        return p.to_owned();
    }
    Path::new(p)
        .file_name()
        .map_or_else(|| p.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// A disk's name in the latency table: its image's file name and how the guest knows
/// it (`vm.qcow2 (vda)`), so that group columns stay narrow; JSON and the exports keep
/// the whole path.
fn disk_label(name: &str) -> String {
    let (path, rest) = match name.rsplit_once(" (") {
        Some((p, r)) if r.ends_with(')') => (p, Some(r)),
        _ => (name, None),
    };
    let file = Path::new(path)
        .file_name()
        .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned());
    match rest {
        Some(r) => format!("{file} ({r}"),
        None => file,
    }
}

fn table(
    r: &Report,
    source: &LayoutSource,
    trace: &Path,
    order: &[&str],
    w: &mut dyn Write,
) -> Result<()> {
    let s = &r.summary;
    writeln!(w, "viopath report: {}", trace.display())?;
    let mut b = Builder::default();
    if let Some(d) = &s.domain {
        b.push_record(["libvirt domain".to_owned(), d.clone()]);
    }
    for (i, v) in s.vms.iter().enumerate() {
        let key = if i == 0 { "VMs" } else { "" };
        b.push_record([key.to_owned(), v.clone()]);
    }
    if s.events_of_unknown_threads > 0 {
        b.push_record([
            "unattributed".to_owned(),
            format!(
                "{} events of threads no VM was known to have (joined as the first VM's)",
                s.events_of_unknown_threads
            ),
        ]);
    }
    if let Some(f) = &s.filtered {
        b.push_record([
            "filter".to_owned(),
            format!(
                "{}: {} IOs kept, {} left out (IO no guest request caused: by time and disk only)",
                f.filter, f.kept, f.left_out
            ),
        ]);
    }
    b.push_record([
        "IOs".to_owned(),
        format!(
            "{} ({} complete, {} partial)",
            s.ios, s.complete_ios, s.partial_ios
        ),
    ]);
    b.push_record([
        "duration".to_owned(),
        format!("{:.3} s", s.duration_ns as f64 / 1e9),
    ]);
    b.push_record(["IOPS".to_owned(), format!("{:.0}", s.iops)]);
    b.push_record(["bytes".to_owned(), human_bytes(s.bytes)]);
    b.push_record([
        "events".to_owned(),
        viopath_reporter::summary::events_note(s),
    ]);
    if let Some(c) = viopath_reporter::report::cut_note(s) {
        b.push_record(["recording window".to_owned(), c]);
    }
    if let Some(t) = s.throttled.note() {
        b.push_record(["throttling".to_owned(), t]);
    }
    for c in &s.cache_modes {
        let label = if s.cache_modes.len() > 1 {
            format!("cache ({})", short_path(&c.disk))
        } else {
            "cache mode".to_owned()
        };
        b.push_record([label, c.describe()]);
    }
    let disk_name = |d: u16| {
        s.cache_modes
            .get(d as usize)
            .map_or_else(|| format!("disk {d}"), |c| short_path(&c.disk))
    };
    for (what, line) in s.page_cache.notes(&disk_name) {
        b.push_record([what, line]);
    }
    if s.requests_completion_lost > 0 {
        b.push_record([
            "block requests".to_owned(),
            format!(
                "{} whose completion event was lost",
                s.requests_completion_lost
            ),
        ]);
    }
    if s.trace_entries_skipped > 0 {
        b.push_record([
            "trace".to_owned(),
            format!(
                "{} malformed entries of its JSON chunks (header, losses, layout, end) skipped",
                s.trace_entries_skipped
            ),
        ]);
    }
    if !s.trace_complete {
        b.push_record([
            "recording".to_owned(),
            "interrupted (no end chunk): read up to the last good chunk".to_owned(),
        ]);
    }
    if let Some(d) = &s.damage {
        b.push_record([
            "damage".to_owned(),
            format!(
                "at byte {}: {} ({} bytes not read)",
                d.offset, d.problem, d.bytes_unread
            ),
        ]);
    }
    b.push_record([
        "layers missing".to_owned(),
        viopath_reporter::report::layers_missing_note(s),
    ]);
    b.push_record(["layout".to_owned(), layout_note(source)]);
    if !s.exact_quantiles {
        b.push_record(["quantiles".to_owned(), quantile_note()]);
    }
    writeln!(w, "{}", crate::ui::table(b))?;

    if !r.latency.is_empty() {
        writeln!(
            w,
            "\nLatency by layer (µs; complete IOs; share = layer time / end-to-end time)"
        )?;
        let mut b = Builder::default();
        // The group columns in the order `--by` gave them.
        let mut keys: Vec<String> = r
            .latency
            .first()
            .map(|l| l.group.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort_by_key(|k| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
        let mut head = keys.clone();
        head.extend(
            [
                "layer", "count", "mean", "p50", "p90", "p99", "p99.9", "max", "share",
            ]
            .map(String::from),
        );
        b.push_record(head);
        for l in &r.latency {
            let mut row: Vec<String> = keys
                .iter()
                .map(|k| match k.as_str() {
                    "disk" => disk_label(&l.group[k]),
                    _ => l.group[k].clone(),
                })
                .collect();
            row.extend([
                if l.layer == "e2e" {
                    "end-to-end".to_owned()
                } else {
                    l.layer.clone()
                },
                l.count.to_string(),
                units::us(l.mean_ns),
                us(l.p50_ns),
                us(l.p90_ns),
                us(l.p99_ns),
                us(l.p999_ns),
                us(l.max_ns),
                units::share(l.share),
            ]);
            b.push_record(row);
        }
        writeln!(w, "{}", crate::ui::table(b))?;
    }

    if !r.slowest.is_empty() {
        writeln!(w, "\nSlowest {} IOs (µs)", r.slowest.len())?;
        let mut b = Builder::default();
        // The guest file column only when the trace can name guest files.
        let files = r.slowest.iter().any(|x| x.guest_file.is_some());
        // The disk column only for a VM with several disks.
        let disks = r.slowest.iter().any(|x| x.disk.is_some());
        let mut head = vec!["id", "op", "offset", "bytes"];
        if disks {
            head.push("disk");
        }
        if files {
            head.push("guest file");
        }
        head.extend(["e2e", "device", "flags"]);
        b.push_record(head);
        for x in &r.slowest {
            let mut row = vec![
                x.row.id.to_string(),
                x.row.op.name().to_owned(),
                x.row.offset.map(|o| o.to_string()).unwrap_or("-".into()),
                x.row.bytes.to_string(),
            ];
            if disks {
                // The image's file name: the whole path is in the JSON and exports.
                row.push(x.disk.as_deref().map_or("-".into(), |d| {
                    Path::new(d)
                        .file_name()
                        .map_or(d.into(), |n| n.to_string_lossy().into_owned())
                }));
            }
            if files {
                row.push(x.guest_file.clone().unwrap_or("-".into()));
            }
            row.extend([
                us(x.e2e_ns),
                x.device.clone().unwrap_or("-".into()),
                flag_names(x.row.flags).replace(", ", " "),
            ]);
            b.push_record(row);
        }
        writeln!(w, "{}", crate::ui::table(b))?;
        // Their layers in a table of their own, a column per layer any of them has
        // (named on two lines, at the underscore), so both fit a terminal.
        let present: Vec<&str> = viopath_reporter::layers::path_layers()
            .filter(|n| r.slowest.iter().any(|x| x.layers.contains_key(*n)))
            .collect();
        let mut b = Builder::default();
        let mut head = vec!["id".to_owned()];
        head.extend(present.iter().map(|n| n.replacen('_', "\n", 1)));
        b.push_record(head);
        for x in &r.slowest {
            let mut row = vec![x.row.id.to_string()];
            row.extend(
                present
                    .iter()
                    .map(|n| x.layers.get(*n).map_or("-".into(), |v| us(*v))),
            );
            b.push_record(row);
        }
        writeln!(w, "their time by layer (µs):\n{}", crate::ui::table(b))?;
    }

    if !r.partial.is_empty() {
        writeln!(w, "\nPartial IOs (not in the latency table)")?;
        let mut b = Builder::default();
        b.push_record(["reason", "IOs"]);
        for (why, n) in &r.partial {
            b.push_record([why.clone(), n.to_string()]);
        }
        writeln!(w, "{}", crate::ui::table(b))?;
        let mut b = Builder::default();
        b.push_record(["id", "op", "offset", "bytes", "reason"]);
        for x in r.partial_examples.iter().take(5) {
            b.push_record([
                x.id.to_string(),
                x.op.name().to_owned(),
                x.offset.map(|o| o.to_string()).unwrap_or("-".into()),
                x.bytes.to_string(),
                reason_names(x.partial),
            ]);
        }
        writeln!(w, "examples:\n{}", crate::ui::table(b))?;
    }

    if !r.other_io.is_empty() {
        writeln!(w, "\nIO not caused by a guest request")?;
        let mut b = Builder::default();
        b.push_record(["what", "count", "bytes", "total µs", "max µs"]);
        for o in &r.other_io {
            b.push_record([
                o.what.to_owned(),
                o.agg.count.to_string(),
                human_bytes(o.agg.bytes),
                us(o.agg.total_ns),
                us(o.agg.max_ns),
            ]);
        }
        writeln!(w, "{}", crate::ui::table(b))?;
    }
    Ok(())
}

fn perfetto(args: &ReportArgs, out: &mut dyn Write) -> Result<()> {
    let mut file;
    let w: &mut dyn Write = match &args.output {
        Some(p) => {
            file = BufWriter::with_capacity(
                1 << 20,
                File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
            &mut file
        }
        None => out,
    };
    let bar = Bar::new("timeline");
    let stats = viopath_reporter::perfetto::write(&args.trace, w, Some(&bar.progress()))
        .with_context(|| format!("timeline of {}", args.trace.display()))?;
    drop(bar);
    w.flush()?;
    note!(
        "viopath: timeline of {} IOs ({} layer slices, {} syscalls, {} device requests){}; open it at https://ui.perfetto.dev",
        stats.ios,
        stats.layer_slices,
        stats.syscalls,
        stats.requests,
        args.output
            .as_ref()
            .map(|p| format!(" in {}", p.display()))
            .unwrap_or_default()
    );
    // Said even with --quiet: the timeline is not the whole recording.
    if let Some(d) = &stats.damage {
        eprintln!(
            "viopath: warning: the trace is damaged at byte {} ({}): the timeline stops there, {} bytes unread",
            d.offset, d.problem, d.bytes_unread
        );
    }
    if stats.interrupted {
        eprintln!(
            "viopath: warning: the recording was interrupted (no end chunk): the timeline ends where the trace does"
        );
    }
    if stats.events_lost_in_kernel > 0 {
        eprintln!(
            "viopath: warning: {} events were lost in the kernel while recording: some IOs may be missing or partial",
            stats.events_lost_in_kernel
        );
    }
    Ok(())
}
