//! `viopath record`: capture QEMU and host-kernel IO events into a trace file.

use anyhow::{Result, bail};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tabled::builder::Builder;
use viopath_recorder::{KernelAttachMode, RecordOptions, Target};
use viopath_reporter::units::human_bytes;

#[derive(Args, Debug)]
pub struct RecordArgs {
    /// Trace this running QEMU process; repeat it for several (of one QEMU binary)
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Trace every running QEMU system emulator (found by its binary, not its name) and
    /// those started while recording, of one binary
    #[arg(long, conflicts_with_all = ["pid", "domain"])]
    pub all: bool,
    /// With --all: the QEMU binary to probe, when no VM runs yet
    #[arg(long, value_name = "BINARY", requires = "all")]
    pub qemu: Option<PathBuf>,
    /// Trace the QEMU of this running libvirt domain (its pid and disks from libvirt's
    /// runtime state in /run/libvirt/qemu)
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// Trace file to write (mode 0600)
    #[arg(short, long, default_value = "viopath.trace")]
    pub output: PathBuf,
    /// Stop after this long: 500ms, 10s, 2m
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Attach only these layers or probes, comma-separated (layers: kvm, virtio,
    /// qemu-block, qcow2, file-posix, syscall, io_uring, filesystem, block)
    #[arg(long, value_delimiter = ',')]
    pub probes: Option<Vec<String>>,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    /// List every probe tried, attached or not (default: a line per layer)
    #[arg(short, long)]
    pub verbose: bool,
    /// Measure what each eBPF program costs per run (turns on the kernel's BPF
    /// statistics while recording, which itself adds a little per run)
    #[arg(long)]
    pub bpf_stats: bool,
    /// How probes on kernel functions (ext4 file IO, device-mapper) attach: fentry/fexit,
    /// else kprobes where the kernel refuses fentry (auto); only fentry; only kprobes
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    pub kernel_attach: KernelAttachArg,
    /// Command to start and trace from its first instruction (after --)
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `--kernel-attach`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelAttachArg {
    Auto,
    Fentry,
    Kprobe,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let ns = crate::units::parse_time(s)?;
    if ns == 0 {
        return Err(format!("'{s}' must be positive"));
    }
    // Attaching the probes alone takes longer than this; a recording is not meant to
    // outlive a year (parse_time's limit).
    if ns < 10_000_000 {
        return Err(format!("'{s}' is too short: at least 10ms"));
    }
    Ok(Duration::from_nanos(ns))
}

pub fn run(args: &RecordArgs, out: &mut dyn Write) -> Result<()> {
    let pids = (!args.pid.is_empty()).then_some(&args.pid);
    let target = match (pids, &args.domain, args.all, args.command.is_empty()) {
        (Some(pids), None, false, true) => Target::Pids(pids.clone()),
        (None, Some(name), false, true) => Target::Domain(name.clone()),
        (None, None, true, true) => Target::All,
        (None, None, false, false) => Target::Command(args.command.clone()),
        (None, None, false, true) => bail!(
            "nothing to trace: give --pid PID, --all, --domain NAME or a command after -- (e.g. viopath record -- qemu-io ...)"
        ),
        _ => bail!("give one of --pid, --all, --domain or a command after --"),
    };
    let opts = RecordOptions {
        target,
        output: args.output.clone(),
        duration: args.duration,
        probes: args.probes.clone(),
        bpf_stats: args.bpf_stats,
        qemu: args.qemu.clone(),
        verbose: args.verbose,
        kernel_attach: match args.kernel_attach {
            KernelAttachArg::Auto => KernelAttachMode::Auto,
            KernelAttachArg::Fentry => KernelAttachMode::Fentry,
            KernelAttachArg::Kprobe => KernelAttachMode::Kprobe,
        },
    };
    let summary = viopath_recorder::record(&opts, &mut |line| eprintln!("viopath: {line}"))?;
    // The command failed on its own (not stopped by the recorder at the end): so does
    // the recording's command line, as a shell's `time CMD` would.
    let failed = summary.stop_reason.starts_with("command exited") && summary.child_exit != Some(0);
    let check = |summary: &viopath_recorder::Summary| -> Result<()> {
        if failed {
            bail!(
                "the traced command failed ({}); its recording is in {}",
                summary.stop_reason,
                summary.output.display()
            );
        }
        Ok(())
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return check(&summary);
    }
    writeln!(
        out,
        "recorded {} events in {:.2} s ({}), {} written to {}\n\
         detaching the probes took {:.2} s more (not in the recording)",
        summary.events,
        summary.duration_s,
        summary.stop_reason,
        human_bytes(summary.bytes),
        summary.output.display(),
        summary.detach_s
    )?;
    if summary.vms.len() > 1 || !summary.vms_skipped.is_empty() {
        let mut b = Builder::default();
        b.push_record(["VM", "pid", "images", "traced"]);
        for v in &summary.vms {
            let from = v.traced_from_ns;
            let start = summary
                .vms
                .iter()
                .map(|x| x.traced_from_ns)
                .min()
                .unwrap_or(from);
            let traced = match (&v.ended, v.traced_until_ns) {
                (Some(why), Some(until)) => format!(
                    "{:.1}–{:.1} s ({why})",
                    from.saturating_sub(start) as f64 / 1e9,
                    until.saturating_sub(start) as f64 / 1e9
                ),
                _ if from > start => {
                    format!("from {:.1} s", from.saturating_sub(start) as f64 / 1e9)
                }
                _ => "throughout".to_owned(),
            };
            b.push_record([
                v.name.clone(),
                v.pid.to_string(),
                v.images.len().to_string(),
                traced,
            ]);
        }
        for s in &summary.vms_skipped {
            b.push_record([
                "not traced".to_owned(),
                s.pid.to_string(),
                String::new(),
                s.why.clone(),
            ]);
        }
        let t = crate::ui::table(b);
        writeln!(out, "{t}")?;
    }
    if let Some(code) = summary.child_exit {
        writeln!(out, "traced command exited with status {code}")?;
    }
    if summary.events_outside_window > 0 {
        writeln!(
            out,
            "left out {} events from while probes were being attached or detached",
            summary.events_outside_window
        )?;
    }
    let mut b = Builder::default();
    b.push_record(["probe", "events", "lost"]);
    let mut names: Vec<&String> = summary
        .events_by_probe
        .keys()
        .chain(summary.lost_by_probe.keys())
        .collect();
    names.sort();
    names.dedup();
    for n in names {
        b.push_record([
            n.clone(),
            summary
                .events_by_probe
                .get(n)
                .copied()
                .unwrap_or(0)
                .to_string(),
            summary
                .lost_by_probe
                .get(n)
                .copied()
                .unwrap_or(0)
                .to_string(),
        ]);
    }
    let t = crate::ui::table(b);
    writeln!(out, "{t}")?;
    if summary.lost > 0 {
        let per_cpu: Vec<String> = summary
            .lost_by_cpu
            .iter()
            .map(|(c, n)| format!("cpu{c}: {n}"))
            .collect();
        let text = format!(
            "LOST {} events (ring buffer full): {}",
            summary.lost,
            per_cpu.join(", ")
        );
        writeln!(out, "{}", crate::ui::prose(&text))?;
    }
    if summary.missed > 0 {
        let per_prog: Vec<String> = summary
            .missed_by_program
            .iter()
            .map(|(p, n)| format!("{p}: {n}"))
            .collect();
        let text = format!(
            "MISSED up to {} events (the probe fired in an interrupt while its own program ran on that CPU; the kernel skips such runs): {}",
            summary.missed,
            per_prog.join(", ")
        );
        writeln!(out, "{}", crate::ui::prose(&text))?;
    }
    if summary.lost == 0 && summary.missed == 0 {
        writeln!(out, "no events lost")?;
    }
    if !summary.bpf_cost.is_empty() {
        let mut b = Builder::default();
        b.push_record(["eBPF program", "runs", "mean ns/run", "total ms"]);
        for c in &summary.bpf_cost {
            b.push_record([
                c.program.clone(),
                c.runs.to_string(),
                format!("{:.0}", c.mean_ns),
                format!("{:.1}", c.run_time_ns as f64 / 1e6),
            ]);
        }
        let t = crate::ui::table(b);
        writeln!(
            out,
            "cost of the eBPF programs (kernel BPF statistics; a uprobe's trap comes on top):\n{t}"
        )?;
    }
    if !summary.missing_layers.is_empty() {
        writeln!(
            out,
            "layers not traced: {}",
            summary.missing_layers.join(", ")
        )?;
    }
    check(&summary)
}
