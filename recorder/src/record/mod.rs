//! `viopath record`: attach the catalog, stream events into a trace file, stop cleanly,
//! snapshot the layouts, say what was recorded and what was lost.
//!
//! [`record`] reads as its phases, each in its own file: `preflight` (privileges,
//! kernel, output), `target` (the process, its files and devices; `child` holds a
//! command at its first instruction), `load` (the eBPF object), `attach` (the
//! catalog), the header, `run` (the loop over the `rings`), and the stop with its
//! summary (`stats`: what the kernel says each program cost and lost).

mod attach;
mod child;
mod load;
mod module_attach;
mod preflight;
mod rings;
mod run;
mod stats;
mod target;

pub use attach::kernel_symbol;
pub use target::devices_below;
pub use viopath_probes::chunks::{End as Summary, ProbeStatus, ProgramCost};

use crate::catalog::{Layer, QEMU_PROBES};
use crate::qemu::QemuInfo;
use rings::{RingSet, Window};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use viopath_layouts::snapshot;
use viopath_probes::abi::{self, EventKind};
use viopath_probes::chunks::{
    Header, Losses, Lost, QemuBinary, QemuProbe, SymbolSource, TargetInfo,
};
use viopath_probes::trace::{ChunkKind, TraceWriter};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "recording needs root, or CAP_BPF and CAP_PERFMON (this process has neither): run it with sudo"
    )]
    NotPrivileged,
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    NoTracefs(String),
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux): it needs CONFIG_DEBUG_INFO_BTF=y for the block-layer probes"
    )]
    NoBtf,
    #[error("no process {0}")]
    PidNotFound(u32),
    #[error(
        "cannot read which program process {pid} runs (/proc/{pid}/exe; a kernel thread runs none)"
    )]
    ExeUnreadable {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "process {pid} runs {exe}, another QEMU binary than the first process's ({first}): one recording traces one binary; record them separately"
    )]
    OtherBinary {
        pid: u32,
        exe: String,
        first: String,
    },
    #[error(
        "--all: no QEMU system emulator is running, so which binary to probe is not known; start a VM first, or name the binary with --qemu"
    )]
    NoQemuRunning,
    #[error(transparent)]
    Domain(#[from] crate::libvirt::DomainError),
    #[error("process {pid} runs {exe}, which does not look like QEMU ({version})")]
    NotQemu {
        pid: u32,
        exe: String,
        version: String,
    },
    #[error("cannot run {cmd}")]
    Spawn { cmd: String, source: io::Error },
    #[error("cannot write {path}")]
    Output { path: PathBuf, source: io::Error },
    #[error(
        "--probes: unknown probe or layer '{0}' (layers: kvm, virtio, qemu-block, qcow2, file-posix, syscall, io_uring, filesystem, block; or a probe name from the catalog)"
    )]
    UnknownProbe(String),
    #[error("--probes asked for {probe} ({layer}), which cannot attach: {why}")]
    RequestedProbeFailed {
        probe: String,
        layer: &'static str,
        why: String,
    },
    #[error("loading the eBPF programs failed")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("nothing could be attached; see the probe list above")]
    NothingAttached,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What to trace.
#[derive(Debug, Clone)]
pub enum Target {
    /// Running QEMUs (of one binary).
    Pids(Vec<u32>),
    /// Every QEMU system emulator of one binary, also those started while recording.
    All,
    /// The QEMU of a running libvirt domain, by its name.
    Domain(String),
    /// Start this command and trace it from its first instruction.
    Command(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub target: Target,
    pub output: PathBuf,
    pub duration: Option<Duration>,
    /// Layers or probe names to attach (default: all).
    pub probes: Option<Vec<String>>,
    /// Turn on the kernel's BPF run-time statistics while recording and report what
    /// each program cost (they are also reported when `kernel.bpf_stats_enabled` is on).
    pub bpf_stats: bool,
    /// With [`Target::All`]: the QEMU binary to probe (default: the running QEMUs').
    pub qemu: Option<PathBuf>,
    /// Say what attached a line per probe, not per layer.
    pub verbose: bool,
    /// How the kernel-function probes attach.
    pub kernel_attach: KernelAttachMode,
}

/// How the probes on kernel functions (ext4's file IO, device-mapper) attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KernelAttachMode {
    /// fentry/fexit (a trampoline: cheapest), else kprobe/kretprobe where the kernel
    /// refuses fentry.
    #[default]
    Auto,
    /// fentry/fexit only: a kernel that refuses them gets none.
    Fentry,
    /// kprobe/kretprobe only (breakpoints): for kernels whose fentry is broken, or to
    /// compare the two.
    Kprobe,
}

/// Record until the duration passes, the targets exit, or SIGINT/SIGTERM arrives.
pub fn record(opts: &RecordOptions, log: &mut dyn FnMut(&str)) -> Result<Summary, RecordError> {
    let mut output = preflight::check(opts)?;
    let mut traced = target::resolve(&opts.target, opts.qemu.as_deref())?;
    for s in &traced.skipped {
        log(&format!("not tracing pid {} ({}): {}", s.pid, s.exe, s.why));
    }
    // Held until the end: statistics stay on while this fd is open.
    let _stats = opts.bpf_stats.then(|| stats::enable(log)).flatten();
    let mut loaded = load::load(traced.single().unwrap_or(0))?;
    let all_files: Vec<PathBuf> = traced.vms.iter().flat_map(|v| v.files.clone()).collect();
    let mut devices = target::devices_for(&all_files);
    load::trace_devices(&mut loaded.bpf, &devices)?;
    let pids = traced.pids();
    if traced.single().is_none() {
        for (i, pid) in pids.iter().enumerate() {
            load::trace_process(&mut loaded.bpf, *pid, i as u32)?;
        }
    }
    let unknown_qemu = QemuInfo {
        binary: PathBuf::new(),
        version_line: String::new(),
        version: None,
    };
    let mut attached = attach::attach_all(
        &mut loaded.bpf,
        &loaded.btf,
        &pids,
        traced.qemu.as_ref().unwrap_or(&unknown_qemu),
        traced.symbols.as_ref(),
        &opts.probes,
        loaded.aio_fsync_work,
        opts.kernel_attach,
    )?;
    let missing_layers = say_what_attached(&attached, opts.verbose, log)?;

    let mono0 = now_ns(libc::CLOCK_MONOTONIC);
    for vm in &mut traced.vms {
        vm.traced_from_ns = mono0;
        vm.note_threads();
    }
    let header = header(&traced, &attached, &devices, mono0);
    let mut writer =
        TraceWriter::create(&opts.output, &header).map_err(|source| RecordError::Output {
            path: opts.output.clone(),
            source,
        })?;
    output.disarm();

    let mut rings = load::take_rings(&mut loaded)?;
    let ready = RingSet::new(&rings)?;
    // The trace holds what happened while every probe was attached: from here (the
    // header's start) to the stop, whatever the rings still hold from either side.
    let mut window = Window {
        start: mono0,
        end: u64::MAX,
        outside: 0,
    };
    if let Some(c) = traced.vms.first_mut().and_then(|v| v.child.as_mut()) {
        c.release();
    }
    let what: Vec<String> = traced
        .vms
        .iter()
        .map(|v| match &v.domain {
            Some(d) => format!("libvirt domain {}, pid {}", d.name, v.pid),
            None => format!("pid {}", v.pid),
        })
        .collect();
    log(&format!(
        "recording {}{} into {} (Ctrl-C stops)",
        what.join("; "),
        if traced.all {
            " and QEMUs started from now on"
        } else {
            ""
        },
        opts.output.display()
    ));
    let mut counts = vec![0u64; 256 * 256];
    for vm in &mut traced.vms {
        run::note_open_files(vm.pid, &mut vm.open_files);
    }
    let stop_reason = run::run(
        run::Running {
            bpf: &mut loaded.bpf,
            rings: &mut rings,
            writer: &mut writer,
            counts: &mut counts,
            window: &mut window,
            traced: &mut traced,
            qemu: &attached.qemu,
            devices: &mut devices,
            log,
        },
        ready,
        opts.duration,
    )?;

    // Stop the probes, then take what is still in the rings up to the stop.
    window.end = now_ns(libc::CLOCK_MONOTONIC);
    let lost = stats::read_losses(&loaded.bpf);
    let missed = stats::recursion_misses(&loaded.bpf);
    let recovered = stats::recovered(&loaded.bpf);
    let bpf_cost = stats::program_costs(&loaded.bpf);
    // The snapshot names the devices the filter followed bios to, too.
    let followed: Vec<viopath_layouts::host::DevId> = load::traced_devices(&loaded.bpf)
        .into_iter()
        .filter(|d| !devices.contains(d))
        .collect();
    let detaching = Instant::now();
    drop(std::mem::take(&mut attached.module_links));
    drop(loaded);
    let detach = detaching.elapsed();
    rings::drain(&mut rings, &mut writer, &mut counts, &mut window)?;
    // The recorded window: from the header's start to the stop, not the detaching.
    let duration = Duration::from_nanos(window.end.saturating_sub(window.start));
    let mut child_exit = None;
    if let Some(c) = traced.vms.first_mut().and_then(|v| v.child.as_mut()) {
        if c.child.try_wait()?.is_none() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
        }
        child_exit = c.child.wait().ok().and_then(|s| s.code());
    }

    let mut summary = Summary {
        output: opts.output.clone(),
        duration_s: duration.as_secs_f64(),
        detach_s: detach.as_secs_f64(),
        stop_reason,
        // What the header said of the probes and the binary; the devices may have
        // grown since (files opened while recording).
        probes: header.probes,
        missing_layers,
        bpf_cost,
        devices: devices.iter().map(|d| d.to_string()).collect(),
        child_exit,
        qemu: header.qemu,
        events_outside_window: window.outside,
        open_files: traced
            .vms
            .first()
            .map(|v| v.open_files.clone())
            .unwrap_or_default(),
        vms: traced.vms.iter().map(target::Vm::info).collect(),
        vms_skipped: traced.skipped.clone(),
        ..Default::default()
    };
    count_events(&mut summary, &counts, &attached.qemu_names);
    let losses = count_losses(&mut summary, &lost, missed, recovered);
    writer.json_chunk(ChunkKind::Losses, &losses)?;
    log("taking the layout snapshot (qcow2 maps, extents, block topology)");
    let mut files: Vec<PathBuf> = traced.vms.iter().flat_map(|v| v.files.clone()).collect();
    files.sort();
    files.dedup();
    let mut with_followed = devices.clone();
    with_followed.extend(followed);
    let snap = snapshot::take(&files, &with_followed);
    writer.json_chunk(ChunkKind::Layout, &snap)?;
    summary.bytes = writer.bytes_written;
    writer.finish(&summary)?;
    summary.bytes = std::fs::metadata(&opts.output)
        .map(|m| m.len())
        .unwrap_or(summary.bytes);
    Ok(summary)
}

/// What attached: a line per layer, each reason for skipping once (`verbose`: a line
/// per probe tried); the layers none of them covers. Nothing attached at all is an
/// error.
fn say_what_attached(
    attached: &attach::Attached,
    verbose: bool,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<String>, RecordError> {
    if verbose {
        for a in &attached.attempts {
            let s = &a.status;
            let mark = if s.attached { "attached" } else { "skipped " };
            let note = s
                .note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default();
            log(&format!(
                "{mark} {:<11} {:<10} {}{note}",
                a.layer.name(),
                s.attach,
                s.name
            ));
        }
    } else {
        let mut reasons: Vec<&str> = Vec::new();
        for layer in Layer::ALL {
            let of: Vec<&attach::Attempt> = attached
                .attempts
                .iter()
                .filter(|a| a.layer == layer)
                .collect();
            if of.is_empty() {
                continue;
            }
            let on = of.iter().filter(|a| a.status.attached).count();
            let mut line = format!("{:<11} {on} of {} probes attached", layer.name(), of.len());
            let skipped: Vec<String> = of
                .iter()
                .filter(|a| !a.status.attached)
                .map(|a| {
                    let why = a.status.note.as_deref().unwrap_or("not attached");
                    let n = match reasons.iter().position(|r| *r == why) {
                        Some(i) => i,
                        None => {
                            reasons.push(why);
                            reasons.len() - 1
                        }
                    };
                    format!("{} [{}]", a.status.name, n + 1)
                })
                .collect();
            if !skipped.is_empty() {
                line += "; skipped:";
            }
            // Wrapped to fit 120 columns with the "viopath: " before each line.
            for (i, name) in skipped.iter().enumerate() {
                let sep = if i + 1 < skipped.len() { "," } else { "" };
                if line.len() + 1 + name.len() + sep.len() > 110 {
                    log(&line);
                    line = " ".repeat(12);
                }
                line += &format!(" {name}{sep}");
            }
            log(&line);
        }
        for (i, r) in reasons.iter().enumerate() {
            log(&format!("  [{}] {r}", i + 1));
        }
        log("(record -v lists every probe)");
    }
    if !attached.attempts.iter().any(|a| a.status.attached) {
        return Err(RecordError::NothingAttached);
    }
    let covered: BTreeSet<Layer> = attached
        .attempts
        .iter()
        .filter(|a| a.status.attached)
        .map(|a| a.layer)
        .collect();
    let missing_layers: Vec<String> = Layer::ALL
        .iter()
        .filter(|l| !covered.contains(l))
        .map(|l| l.name().to_owned())
        .collect();
    if !missing_layers.is_empty() {
        log(&format!(
            "the report will lack these layers: {}",
            missing_layers.join(", ")
        ));
    }
    Ok(missing_layers)
}

/// The trace's first chunk.
fn header(
    traced: &target::Traced,
    attached: &attach::Attached,
    devices: &BTreeSet<viopath_layouts::host::DevId>,
    mono0: u64,
) -> Header {
    let real0 = now_ns(libc::CLOCK_REALTIME);
    Header {
        format: Some(u64::from(viopath_probes::trace::FORMAT_VERSION)),
        abi: Some(u64::from(abi::ABI_VERSION)),
        tool: concat!("viopath ", env!("CARGO_PKG_VERSION")).to_owned(),
        host: read_trim("/proc/sys/kernel/hostname"),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        clock: "CLOCK_MONOTONIC".to_owned(),
        monotonic_ns_at_start: Some(mono0),
        realtime_ns_at_start: Some(real0),
        realtime_offset_ns: real0 as i64 - mono0 as i64,
        target: traced
            .vms
            .first()
            .map(|v| TargetInfo {
                pid: Some(v.pid),
                command: (!v.command.is_empty()).then(|| v.command.clone()),
                domain: v.domain.clone(),
            })
            .unwrap_or_default(),
        qemu: traced.qemu.as_ref().map(QemuBinary::from),
        symbols: traced.symbols.as_ref().map(SymbolSource::from),
        probes: attached.attempts.iter().map(|a| a.status.clone()).collect(),
        qemu_probes: QEMU_PROBES
            .iter()
            .map(|p| QemuProbe {
                id: p.id,
                symbol: p.symbol.to_owned(),
                layer: p.layer.key().to_owned(),
                records: p.records.to_owned(),
            })
            .collect(),
        event_kinds: EventKind::ALL
            .iter()
            .map(|k| (k.name().to_owned(), *k as u8))
            .collect(),
        devices: devices.iter().map(|d| d.to_string()).collect(),
        kernel_hz: kernel_hz(),
    }
}

/// CONFIG_HZ of the running kernel, from its configuration (/proc/config.gz, else
/// /boot/config-RELEASE).
fn kernel_hz() -> Option<u32> {
    use std::io::Read;
    let config = std::fs::read("/proc/config.gz")
        .ok()
        .and_then(|gz| {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut text)
                .ok()?;
            Some(text)
        })
        .or_else(|| {
            let release = read_trim("/proc/sys/kernel/osrelease");
            std::fs::read_to_string(format!("/boot/config-{release}")).ok()
        })?;
    config_hz(&config)
}

fn config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&hz| hz > 0)
}

/// Events per probe, from the per-(type, sub) counts.
fn count_events(summary: &mut Summary, counts: &[u64], qemu_names: &BTreeMap<u8, &'static str>) {
    for (i, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
        let (kind, sub) = ((i >> 8) as u8, i as u8);
        *summary
            .events_by_probe
            .entry(probe_name(kind, sub, qemu_names))
            .or_default() += n;
        summary.events += n;
    }
}

/// The kernel's losses into the summary, and the Losses chunk.
fn count_losses(
    summary: &mut Summary,
    lost: &[(u8, u32, u64)],
    mut missed: BTreeMap<String, u64>,
    recovered: BTreeMap<String, u64>,
) -> Losses {
    // A skipped run whose event the second program wrote is not lost; the second
    // programs' own skips come only while one of them runs, inside a run of the
    // first that was itself skipped and is counted there.
    missed.retain(|name, _| !name.ends_with("_nested"));
    for (name, n) in &recovered {
        if let Some(m) = missed.get_mut(name) {
            *m = m.saturating_sub(*n);
        }
    }
    missed.retain(|_, n| *n > 0);
    for (kind, cpu, n) in lost {
        *summary
            .lost_by_probe
            .entry(
                EventKind::from_u8(*kind)
                    .map_or_else(|| format!("type {kind}"), |k| k.name().to_owned()),
            )
            .or_default() += n;
        *summary.lost_by_cpu.entry(*cpu).or_default() += n;
        summary.lost += n;
    }
    summary.missed = missed.values().sum();
    summary.missed_by_program = missed;
    Losses {
        by_cpu_and_kind: lost
            .iter()
            .map(|&(kind, cpu, lost)| Lost { kind, cpu, lost })
            .collect(),
        ring_full: summary.lost,
        missed_by_program: summary.missed_by_program.clone(),
        missed: summary.missed,
        total: summary.lost + summary.missed,
        recovered_by_program: recovered,
    }
}

fn probe_name(kind: u8, sub: u8, qemu: &BTreeMap<u8, &'static str>) -> String {
    match EventKind::from_u8(kind) {
        Some(EventKind::Qemu) => qemu
            .get(&sub)
            .map_or_else(|| format!("qemu probe {sub}"), |s| s.to_string()),
        Some(EventKind::SysEnter) | Some(EventKind::SysExit) => {
            let sc = abi::SYSCALLS
                .iter()
                .find(|(id, _)| *id == sub)
                .map_or("?", |(_, n)| n);
            format!(
                "{}_{sc}",
                if kind == EventKind::SysEnter as u8 {
                    "enter"
                } else {
                    "exit"
                }
            )
        }
        Some(k) => k.name().to_owned(),
        None => format!("type {kind}"),
    }
}

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into ts.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hz_from_a_kernel_config() {
        let cfg =
            "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_HZ_PERIODIC=n\n";
        assert_eq!(super::config_hz(cfg), Some(250));
        assert_eq!(super::config_hz("CONFIG_HZ_1000=y\n"), None);
        assert_eq!(super::config_hz("CONFIG_HZ=zero\n"), None);
    }
}
