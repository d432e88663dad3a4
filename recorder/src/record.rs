//! `viopath record`: attach the catalog, stream events into a trace file, stop cleanly,
//! snapshot the layouts, say what was recorded and what was lost.

use crate::catalog::{KERNEL_PROBES, KernelAttach, Layer, QEMU_PROBES};
use crate::elf::{Missing, Symbols};
use crate::qemu::{self, QemuInfo};
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint, UProbe};
use aya::{Btf, Ebpf, EbpfLoader, Pod};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use viopath_layouts::host::{DevId, DeviceKind, FileMap, Topology};
use viopath_layouts::snapshot;
use viopath_probes::abi::{self, EventKind, RawEvent, Uspec};
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
    #[error("process {pid} runs {exe}, which does not look like QEMU ({version})")]
    NotQemu {
        pid: u32,
        exe: String,
        version: String,
    },
    #[error("cannot run {cmd}: {source}")]
    Spawn { cmd: String, source: io::Error },
    #[error("cannot write {path}: {source}")]
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
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    #[error("nothing could be attached; see the probe list above")]
    NothingAttached,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What to trace.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running QEMU.
    Pid(u32),
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
}

/// What one eBPF program cost while recording, from the kernel's run-time statistics.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub run_time_ns: u64,
    pub mean_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub name: String,
    pub layer: Layer,
    pub attach: &'static str,
    pub attached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub output: PathBuf,
    pub duration_s: f64,
    pub stop_reason: String,
    pub events: u64,
    pub bytes: u64,
    pub events_by_probe: BTreeMap<String, u64>,
    pub lost: u64,
    pub lost_by_probe: BTreeMap<String, u64>,
    pub lost_by_cpu: BTreeMap<u32, u64>,
    /// Probe runs the kernel skipped because the probe fired inside an interrupt that
    /// came while the same program ran on that CPU; it counts them per program
    /// (`recursion_misses`). Each would have made at most one event (none if it was
    /// for a device or process not traced), so this bounds those losses from above.
    pub missed: u64,
    pub missed_by_program: BTreeMap<String, u64>,
    /// Events left out because probes were still being attached (before the trace's
    /// start) or already being detached (after its stop): detaching takes seconds, and
    /// a completion probe gone while the issue probe still records would leave
    /// requests without an end.
    pub events_outside_window: u64,
    pub probes: Vec<ProbeStatus>,
    pub missing_layers: Vec<String>,
    /// Per-program cost, when BPF statistics were on (see `RecordOptions::bpf_stats`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bpf_cost: Vec<ProgramCost>,
    pub devices: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_exit: Option<i32>,
    pub qemu: Option<QemuInfo>,
}

/// `struct vp_uspec` as a map value.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct UspecValue([u8; 24]);
// SAFETY: plain bytes, no padding, valid for any bit pattern.
unsafe impl Pod for UspecValue {}

fn check_privileges() -> Result<(), RecordError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    if has(21) || (has(39) && has(38)) {
        Ok(())
    } else {
        Err(RecordError::NotPrivileged)
    }
}

fn check_kernel() -> Result<(), RecordError> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(RecordError::NoBtf);
    }
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let out = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success())
            && Path::new("/sys/kernel/tracing/events").exists();
        if !ok {
            let why = match out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            return Err(RecordError::NoTracefs(why));
        }
    }
    Ok(())
}

/// Every block device at or below `dev`: partitions lead to their disk, loop devices to
/// the device of their backing file, device-mapper to its targets' devices.
pub fn devices_below(topo: &mut Topology, dev: DevId, out: &mut BTreeSet<DevId>) {
    if !out.insert(dev) || out.len() > 256 {
        return;
    }
    let Ok(d) = topo.device(dev) else { return };
    match &d.kind {
        DeviceKind::Partition { parent, .. } => devices_below(topo, *parent, out),
        DeviceKind::Loop {
            backing_file: Some(p),
            ..
        } => {
            if let Ok(fm) = FileMap::load(p) {
                devices_below(topo, fm.dev, out);
            }
        }
        DeviceKind::DeviceMapper { targets, .. } => {
            for t in targets {
                match &t.kind {
                    viopath_layouts::host::DmTargetKind::Linear { dev, .. } => {
                        devices_below(topo, *dev, out)
                    }
                    viopath_layouts::host::DmTargetKind::Striped { stripes, .. } => {
                        for (d, _) in stripes {
                            devices_below(topo, *d, out);
                        }
                    }
                    viopath_layouts::host::DmTargetKind::Other { .. } => {}
                }
            }
        }
        _ => {}
    }
}

/// Devices holding `files`, and everything below them.
fn devices_for(files: &[PathBuf]) -> BTreeSet<DevId> {
    let mut topo = Topology::system();
    let mut out = BTreeSet::new();
    for f in files {
        use std::os::unix::fs::MetadataExt;
        if let Ok(md) = std::fs::metadata(f) {
            let dev = DevId::from_dev_t(md.dev());
            if dev.major != 0 {
                devices_below(&mut topo, dev, &mut out);
            }
        }
    }
    out
}

/// A child started stopped: a shell waits on a pipe, then `exec`s the command (keeping
/// its pid), so probes filtered on that pid are in place before QEMU's first
/// instruction. (A blocking `pre_exec` cannot do this: `spawn` waits for the exec.)
struct GatedChild {
    child: std::process::Child,
    gate: Option<std::os::fd::OwnedFd>,
}

/// Read one line from fd 3 (the gate) or give up, close it, become the command.
const GATE_SCRIPT: &str = "read -r _ <&3 || exit 125; exec 3<&-; exec \"$@\"";

impl GatedChild {
    fn spawn(argv: &[String]) -> Result<GatedChild, RecordError> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        let (r, w) = (fds[0], fds[1]);
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", GATE_SCRIPT, "viopath-gate"]).args(argv);
        // SAFETY: only async-signal-safe calls (dup2, fcntl, close) between fork and
        // exec; fd 3 loses CLOEXEC so the shell inherits the read end.
        unsafe {
            cmd.pre_exec(move || {
                // dup2(3, 3) is a no-op that keeps O_CLOEXEC, so clear it explicitly.
                if libc::dup2(r, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(w);
                Ok(())
            });
        }
        let child = cmd.spawn();
        // SAFETY: r is ours; the child has its own copy.
        unsafe { libc::close(r) };
        // SAFETY: w is a valid fd we own from here on.
        let gate = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(w) };
        let child = child.map_err(|source| RecordError::Spawn {
            cmd: argv.join(" "),
            source,
        })?;
        Ok(GatedChild {
            child,
            gate: Some(gate),
        })
    }

    fn release(&mut self) {
        if let Some(g) = self.gate.take() {
            // SAFETY: writing to our pipe fd; dropping `g` closes it.
            unsafe { libc::write(g.as_raw_fd(), b"go\n".as_ptr() as *const libc::c_void, 3) };
        }
    }
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        if self.gate.is_some() {
            // Never released (attach failed): do not leave it waiting forever.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wanted(filter: &Option<Vec<String>>, layer: Layer, names: &[&str]) -> bool {
    match filter {
        None => true,
        Some(list) => list
            .iter()
            .any(|w| w == layer.name() || names.contains(&w.as_str())),
    }
}

fn validate_filter(filter: &Option<Vec<String>>) -> Result<(), RecordError> {
    let Some(list) = filter else { return Ok(()) };
    for w in list {
        let known = Layer::ALL.iter().any(|l| l.name() == w)
            || KERNEL_PROBES
                .iter()
                .any(|p| p.program == w || p.attach.event() == w)
            || QEMU_PROBES.iter().any(|p| p.symbol == w);
        if !known {
            return Err(RecordError::UnknownProbe(w.clone()));
        }
    }
    Ok(())
}

struct Attached {
    statuses: Vec<ProbeStatus>,
    /// QEMU probe id → symbol, for the summary.
    qemu_names: BTreeMap<u8, &'static str>,
}

/// A kernel function's address from /proc/kallsyms (None where it is missing or hidden:
/// without root the addresses read as 0).
pub fn kernel_symbol(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split_ascii_whitespace();
        let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
        (sym == name && f.next().is_none())
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
            .filter(|&a| a != 0)
    })
}

fn attach_all(
    bpf: &mut Ebpf,
    btf: &Btf,
    pid: u32,
    qemu: &QemuInfo,
    syms: Option<&Symbols>,
    filter: &Option<Vec<String>>,
    aio_fsync_work: u64,
) -> Result<Attached, RecordError> {
    let mut statuses = Vec::new();
    for p in KERNEL_PROBES {
        let event = p.attach.event();
        let mut kind = match p.attach {
            KernelAttach::TpBtf { .. } => "tp_btf",
            KernelAttach::Tracepoint { .. } => "tracepoint",
            KernelAttach::Function { exit: false, .. } => "fentry",
            KernelAttach::Function { exit: true, .. } => "fexit",
        };
        if !wanted(filter, p.layer, &[p.program, event]) {
            continue;
        }
        let result: Result<(), String> = match p.attach {
            // Without the work function's address these programs match nothing.
            _ if p.program.starts_with("aio_fsync_") && aio_fsync_work == 0 => {
                Err("aio_fsync_work is not in /proc/kallsyms".to_owned())
            }
            KernelAttach::Function {
                function,
                exit,
                fallback,
                ..
            } => attach_function(bpf, btf, p.program, function, exit).or_else(|first| {
                let fb = if exit { "kretprobe" } else { "kprobe" };
                attach_kprobe(bpf, fallback, function)
                    .map(|()| kind = fb)
                    .map_err(|second| format!("{kind}: {first}; {fb} fallback: {second}"))
            }),
            _ => (|| {
                let prog = bpf.program_mut(p.program).ok_or("not in the eBPF object")?;
                match p.attach {
                    KernelAttach::TpBtf { event } => {
                        let prog: &mut BtfTracePoint =
                            prog.try_into().map_err(|e| format!("{e}"))?;
                        prog.load(event, btf).map_err(|e| format!("load: {e}"))?;
                        prog.attach().map_err(|e| format!("attach: {e}"))?;
                    }
                    KernelAttach::Tracepoint { category, event } => {
                        let prog: &mut TracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
                        prog.load().map_err(|e| format!("load: {e}"))?;
                        prog.attach(category, event)
                            .map_err(|e| format!("attach: {e}"))?;
                    }
                    KernelAttach::Function { .. } => unreachable!("handled above"),
                }
                Ok(())
            })(),
        };
        statuses.push(ProbeStatus {
            name: event.to_owned(),
            layer: p.layer,
            attach: kind,
            attached: result.is_ok(),
            note: result.err(),
        });
    }

    // QEMU: one generic program, attached once per function with its spec index as cookie.
    let mut specs: Vec<(u32, Uspec)> = Vec::new();
    let mut qemu_names = BTreeMap::new();
    let version = qemu.version.map(|(a, b, _)| (a, b));
    let mut loaded = false;
    let mut load_error: Option<String> = None;
    for p in QEMU_PROBES {
        if !wanted(filter, p.layer, &[p.symbol]) {
            continue;
        }
        qemu_names.insert(p.id, p.symbol);
        let status = |attached: bool, note: Option<String>| ProbeStatus {
            name: p.symbol.to_owned(),
            layer: p.layer,
            attach: "uprobe",
            attached,
            note,
        };
        let Some(layout) = p.layout_for(version) else {
            statuses.push(status(
                false,
                Some(match &qemu.version {
                    Some((a, b, c)) => format!(
                        "argument layout unknown for QEMU {a}.{b}.{c} (known: {})",
                        p.known_versions()
                    ),
                    None => format!(
                        "QEMU version unknown ('{}'); layouts known for {}",
                        qemu.version_line,
                        p.known_versions()
                    ),
                }),
            ));
            continue;
        };
        let Some(syms) = syms else {
            statuses.push(status(false, Some("no QEMU binary to attach to".into())));
            continue;
        };
        let offset = match syms.file_offset(p.symbol) {
            Ok(o) => o,
            Err(Missing::NotFound) => {
                let why = if syms.full {
                    "not in this QEMU build".to_owned()
                } else {
                    format!(
                        "{} has no symbol table ({}): install its debug symbols (e.g. the -dbgsym package, found by build-id {}) or use a build with symbols",
                        syms.binary.display(),
                        syms.sources.join(", "),
                        syms.build_id.as_deref().unwrap_or("?")
                    )
                };
                statuses.push(status(false, Some(why)));
                continue;
            }
            Err(Missing::Ambiguous(n)) => {
                statuses.push(status(
                    false,
                    Some(format!("{n} functions share this name")),
                ));
                continue;
            }
        };
        let index = specs.len() as u32;
        specs.push((
            index,
            Uspec {
                probe: p.id as u32,
                pad: 0,
                arg: layout,
            },
        ));
        if let Some(err) = &load_error {
            statuses.push(status(false, Some(err.clone())));
            continue;
        }
        let result: Result<(), String> = (|| {
            let prog: &mut UProbe = bpf
                .program_mut("qemu_entry")
                .ok_or("no qemu_entry program")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            if !loaded {
                if let Err(e) = prog.load() {
                    let short = short_load_error(&e.to_string());
                    load_error = Some(short.clone());
                    return Err(short);
                }
                loaded = true;
            }
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie: Some(index as u64),
            };
            let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or("pid 0")?);
            prog.attach(point, &qemu.binary, scope)
                .map_err(|e| format!("attach: {e}"))?;
            Ok(())
        })();
        statuses.push(status(result.is_ok(), result.err()));
    }
    let mut map: Array<_, UspecValue> = Array::try_from(bpf.map_mut("uspecs").expect("uspecs map"))
        .map_err(|e| RecordError::Load(e.to_string()))?;
    for (i, s) in &specs {
        map.set(*i, UspecValue(s.to_bytes()), 0)
            .map_err(|e| RecordError::Load(e.to_string()))?;
    }
    if let Some(list) = filter {
        for s in &statuses {
            if !s.attached && list.iter().any(|w| w == &s.name) {
                return Err(RecordError::RequestedProbeFailed {
                    probe: s.name.clone(),
                    layer: s.layer.name(),
                    why: s.note.clone().unwrap_or_default(),
                });
            }
        }
    }
    Ok(Attached {
        statuses,
        qemu_names,
    })
}

fn attach_function(
    bpf: &mut Ebpf,
    btf: &Btf,
    program: &str,
    function: &str,
    exit: bool,
) -> Result<(), String> {
    let prog = bpf.program_mut(program).ok_or("not in the eBPF object")?;
    if exit {
        let prog: &mut FExit = prog.try_into().map_err(|e| format!("{e}"))?;
        prog.load(function, btf)
            .map_err(|e| function_load_error(function, &e.to_string()))?;
        prog.attach().map_err(|e| format!("attach: {e}"))?;
    } else {
        let prog: &mut FEntry = prog.try_into().map_err(|e| format!("{e}"))?;
        prog.load(function, btf)
            .map_err(|e| function_load_error(function, &e.to_string()))?;
        prog.attach().map_err(|e| format!("attach: {e}"))?;
    }
    Ok(())
}

/// Why fentry/fexit did not load, in a few words.
fn function_load_error(function: &str, err: &str) -> String {
    if err.contains("unknown BTF type") {
        format!(
            "{function} is not in the kernel's BTF (not built, a module not loaded, or inlined)"
        )
    } else if err.contains("Operation not permitted") {
        "the kernel refused to load it (EPERM)".to_owned()
    } else {
        short_load_error(err)
    }
}

fn attach_kprobe(bpf: &mut Ebpf, program: &str, function: &str) -> Result<(), String> {
    if !Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        return Err("this kernel has no kprobe PMU".to_owned());
    }
    let prog: &mut KProbe = bpf
        .program_mut(program)
        .ok_or("not in the eBPF object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| short_load_error(&e.to_string()))?;
    prog.attach(function, 0)
        .map_err(|e| format!("attach: {e}"))?;
    Ok(())
}

/// A verifier log is hundreds of lines; keep what decides: its first line and the
/// line before "processed N insns".
fn short_load_error(full: &str) -> String {
    let lines: Vec<&str> = full.lines().collect();
    let first = lines.first().copied().unwrap_or("");
    let cause = lines
        .iter()
        .position(|l| l.starts_with("verification time") || l.starts_with("processed "))
        .and_then(|i| i.checked_sub(1))
        .map(|i| lines[i])
        .unwrap_or("");
    let first = first.split(". Verifier output").next().unwrap_or(first);
    if cause.is_empty() {
        format!("load: {first}")
    } else {
        format!("load: {first}: verifier: {cause}")
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

/// Record until the duration passes, the target exits, or SIGINT/SIGTERM arrives.
pub fn record(opts: &RecordOptions, log: &mut dyn FnMut(&str)) -> Result<Summary, RecordError> {
    check_privileges()?;
    check_kernel()?;
    validate_filter(&opts.probes)?;
    // Fail on an unwritable output before touching the target.
    let existed = opts.output.exists();
    if let Err(source) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.output)
    {
        return Err(RecordError::Output {
            path: opts.output.clone(),
            source,
        });
    }
    // Until the trace is written for real, an early failure must not leave an empty
    // file behind.
    let mut probe_file = (!existed).then(|| RemoveOnDrop(opts.output.clone()));

    let mut child = None;
    let (pid, binary, mut files) = match &opts.target {
        Target::Pid(pid) => {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map_err(|_| RecordError::PidNotFound(*pid))?;
            let info = QemuInfo::probe(&exe);
            if !info.is_qemu() {
                return Err(RecordError::NotQemu {
                    pid: *pid,
                    exe: exe.display().to_string(),
                    version: info.version_line,
                });
            }
            let cmdline: Vec<String> = read_trim(&format!("/proc/{pid}/cmdline"))
                .split('\0')
                .map(str::to_owned)
                .collect();
            let mut files = qemu::open_files(*pid);
            files.extend(qemu::files_in_args(&cmdline));
            (*pid, Some(exe), files)
        }
        Target::Command(argv) => {
            let binary = qemu::which(&argv[0]);
            let files = qemu::files_in_args(&argv[1..]);
            let c = GatedChild::spawn(argv)?;
            let pid = c.child.id();
            child = Some(c);
            (pid, binary, files)
        }
    };
    let qemu_info = binary.as_ref().map(|b| QemuInfo::probe(b));
    let syms = match &binary {
        Some(b) => Some(Symbols::load(b).map_err(|e| RecordError::Load(e.to_string()))?),
        None => None,
    };

    // Held until the end: statistics stay on while this fd is open.
    let _stats = if opts.bpf_stats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log(&format!("cannot turn on BPF statistics: {e}"));
                None
            }
        }
    } else {
        None
    };
    let btf = Btf::from_sys_fs().map_err(|e| RecordError::Load(format!("BTF: {e}")))?;
    let aio_fsync_work = kernel_symbol("aio_fsync_work").unwrap_or(0);
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global("target_tgid", &pid, true)
        .override_global("aio_fsync_work", &aio_fsync_work, true);
    // Shards no CPU maps to get one page instead of the full ring.
    let cpus =
        aya::util::nr_cpus().map_err(|(p, e)| RecordError::Load(format!("{p}: {e}")))? as u32;
    let ring_names: Vec<String> = (0..abi::RING_SHARDS)
        .map(|i| format!("events{i}"))
        .collect();
    for (i, name) in ring_names.iter().enumerate() {
        let used = (i as u32) < cpus;
        loader.map_max_entries(name, if used { RING_BYTES } else { 4096 });
    }
    let mut bpf = loader
        .load(viopath_probes::object())
        .map_err(|e| RecordError::Load(e.to_string()))?;
    let mut devices = devices_for(&files);
    {
        let mut map: BpfHashMap<_, u32, u8> =
            BpfHashMap::try_from(bpf.map_mut("devices").expect("devices map"))
                .map_err(|e| RecordError::Load(e.to_string()))?;
        for d in &devices {
            map.insert(abi::kernel_dev(d.major, d.minor), 1, 0)
                .map_err(|e| RecordError::Load(e.to_string()))?;
        }
    }
    let unknown_qemu = QemuInfo {
        binary: PathBuf::new(),
        version_line: String::new(),
        version: None,
    };
    let attached = attach_all(
        &mut bpf,
        &btf,
        pid,
        qemu_info.as_ref().unwrap_or(&unknown_qemu),
        syms.as_ref(),
        &opts.probes,
        aio_fsync_work,
    )?;
    for s in &attached.statuses {
        let mark = if s.attached { "attached" } else { "skipped " };
        let note = s
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        log(&format!(
            "{mark} {:<11} {:<10} {}{note}",
            s.layer.name(),
            s.attach,
            s.name
        ));
    }
    if !attached.statuses.iter().any(|s| s.attached) {
        return Err(RecordError::NothingAttached);
    }
    let covered: BTreeSet<Layer> = attached
        .statuses
        .iter()
        .filter(|s| s.attached)
        .map(|s| s.layer)
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

    let mono0 = now_ns(libc::CLOCK_MONOTONIC);
    let real0 = now_ns(libc::CLOCK_REALTIME);
    let header = serde_json::json!({
        "format": viopath_probes::trace::FORMAT_VERSION,
        "abi": abi::ABI_VERSION,
        "tool": concat!("viopath ", env!("CARGO_PKG_VERSION")),
        "host": read_trim("/proc/sys/kernel/hostname"),
        "kernel": read_trim("/proc/sys/kernel/osrelease"),
        "boot_id": read_trim("/proc/sys/kernel/random/boot_id"),
        "clock": "CLOCK_MONOTONIC",
        "monotonic_ns_at_start": mono0,
        "realtime_ns_at_start": real0,
        "realtime_offset_ns": real0 as i128 - mono0 as i128,
        "target": { "pid": pid, "command": match &opts.target { Target::Command(a) => Some(a.clone()), Target::Pid(_) => None } },
        "qemu": qemu_info,
        "symbols": syms,
        "probes": attached.statuses,
        "qemu_probes": QEMU_PROBES.iter().map(|p| serde_json::json!({"id": p.id, "symbol": p.symbol, "layer": p.layer, "records": p.records})).collect::<Vec<_>>(),
        "event_kinds": EventKind::ALL.iter().map(|k| (k.name(), *k as u8)).collect::<BTreeMap<_, _>>(),
        "devices": devices.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
    });
    let mut writer =
        TraceWriter::create(&opts.output, &header).map_err(|source| RecordError::Output {
            path: opts.output.clone(),
            source,
        })?;
    if let Some(p) = probe_file.as_mut() {
        p.disarm();
    }

    let mut rings = Vec::new();
    for name in &ring_names {
        let map = bpf
            .take_map(name)
            .ok_or_else(|| RecordError::Load(format!("no map {name}")))?;
        rings.push(RingBuf::try_from(map).map_err(|e| RecordError::Load(e.to_string()))?);
    }
    let ready = RingSet::new(&rings)?;
    // The trace holds what happened while every probe was attached: from here (the
    // header's start) to the stop, whatever the rings still hold from either side.
    let mut window = Window {
        start: mono0,
        end: u64::MAX,
        outside: 0,
    };
    if let Some(c) = child.as_mut() {
        c.release();
    }
    log(&format!(
        "recording pid {pid} into {} (Ctrl-C stops)",
        opts.output.display()
    ));
    let started = Instant::now();
    // Events per (type, sub): a flat array, since it is bumped for every event.
    let mut counts = vec![0u64; 256 * 256];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop_reason = rt.block_on(async {
        // One epoll fd stands for all the shards.
        // SAFETY: the epoll fd is owned by `ready`, which the registration owns.
        let mut afd = unsafe { AsyncFd::register(ready) }.map_err(|e| e.into_parts().1)?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
        let mut last_scan = Instant::now();
        let reason = loop {
            let sleep_until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = afd.readable_mut() => {
                    let mut guard = r?;
                    drain(&mut rings, &mut writer, &mut counts, &mut window)?;
                    guard.get_inner_mut().clear();
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    drain(&mut rings, &mut writer, &mut counts, &mut window)?;
                    writer.flush_events()?;
                    if let Some(c) = child.as_mut() {
                        if let Some(st) = c.child.try_wait()? {
                            break format!("command exited ({st})");
                        }
                    } else if !Path::new(&format!("/proc/{pid}")).exists() {
                        break format!("process {pid} exited");
                    }
                    if last_scan.elapsed() > Duration::from_millis(500) {
                        last_scan = Instant::now();
                        let now = qemu::open_files(pid);
                        let new: Vec<PathBuf> = now.into_iter().filter(|f| !files.contains(f)).collect();
                        if !new.is_empty() {
                            let devs = devices_for(&new);
                            files.extend(new);
                            if let Some(m) = bpf.map_mut("devices") && let Ok(mut m) = BpfHashMap::<_, u32, u8>::try_from(m) {
                                for d in devs.difference(&devices) {
                                    let _ = m.insert(abi::kernel_dev(d.major, d.minor), 1, 0);
                                }
                            }
                            devices.extend(devs);
                        }
                    }
                }
                _ = sigint.recv() => break "interrupted (SIGINT)".to_owned(),
                _ = sigterm.recv() => break "terminated (SIGTERM)".to_owned(),
                _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => break "duration reached".to_owned(),
            }
        };
        Ok::<_, io::Error>(reason)
    })?;
    // Stop the probes, then take what is still in the rings up to the stop.
    window.end = now_ns(libc::CLOCK_MONOTONIC);
    let lost = read_losses(&bpf);
    let missed = recursion_misses(&bpf);
    let bpf_cost = program_costs(&bpf);
    drop(bpf);
    drain(&mut rings, &mut writer, &mut counts, &mut window)?;
    let duration = started.elapsed();

    let mut child_exit = None;
    if let Some(c) = child.as_mut() {
        if c.child.try_wait()?.is_none() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
        }
        child_exit = c.child.wait().ok().and_then(|s| s.code());
    }

    let mut summary = Summary {
        output: opts.output.clone(),
        duration_s: duration.as_secs_f64(),
        stop_reason,
        probes: attached.statuses.clone(),
        missing_layers,
        bpf_cost,
        devices: devices.iter().map(|d| d.to_string()).collect(),
        child_exit,
        qemu: qemu_info.clone(),
        events_outside_window: window.outside,
        ..Default::default()
    };
    for (i, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
        let (kind, sub) = ((i >> 8) as u8, i as u8);
        *summary
            .events_by_probe
            .entry(probe_name(kind, sub, &attached.qemu_names))
            .or_default() += n;
        summary.events += n;
    }
    for (kind, cpu, n) in &lost {
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
    writer.json_chunk(ChunkKind::Losses, &serde_json::json!({
        "by_cpu_and_kind": lost.iter().map(|(k, c, n)| serde_json::json!({"kind": k, "cpu": c, "lost": n})).collect::<Vec<_>>(),
        "ring_full": summary.lost,
        "missed_by_program": summary.missed_by_program,
        "missed": summary.missed,
        "total": summary.lost + summary.missed,
    }))?;
    log("taking the layout snapshot (qcow2 maps, extents, block topology)");
    let snap = snapshot::take(&files, &devices);
    writer.json_chunk(ChunkKind::Layout, &snap)?;
    summary.bytes = writer.bytes_written;
    let end = serde_json::to_value(&summary).unwrap_or_default();
    writer.finish(&end)?;
    summary.bytes = std::fs::metadata(&opts.output)
        .map(|m| m.len())
        .unwrap_or(summary.bytes);
    Ok(summary)
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

/// The monotonic-clock span the trace keeps, and how many events fell outside it.
struct Window {
    start: u64,
    end: u64,
    outside: u64,
}

fn drain<T: std::borrow::Borrow<aya::maps::MapData>>(
    rings: &mut [RingBuf<T>],
    writer: &mut TraceWriter<impl io::Write>,
    counts: &mut [u64],
    window: &mut Window,
) -> io::Result<()> {
    for ring in rings {
        while let Some(item) = ring.next() {
            if let Some(e) = RawEvent::from_bytes(&item) {
                if e.ts < window.start || e.ts > window.end {
                    window.outside += 1;
                    continue;
                }
                counts[(e.kind as usize) << 8 | e.sub as usize] += 1;
                writer.push(&e)?;
            }
        }
    }
    Ok(())
}

/// Bytes per ring-buffer shard: ~170k events each, a third of a second of a
/// one-CPU flood at full speed.
const RING_BYTES: u32 = 8 << 20;

/// An epoll instance watching every ring-buffer shard, so one readiness source wakes
/// the reader whichever shard has data.
struct RingSet(std::os::fd::OwnedFd);

impl RingSet {
    fn new<T: std::borrow::Borrow<aya::maps::MapData>>(rings: &[RingBuf<T>]) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new, valid fd we own.
        let set = RingSet(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        for (i, r) in rings.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: both fds are valid; ev lives across the call.
            if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(set)
    }

    /// Consume the pending readiness (the shards themselves were drained).
    fn clear(&mut self) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: evs has room for 8 events; timeout 0 never blocks.
        unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), 8, 0) };
    }
}

impl AsRawFd for RingSet {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Run counts and times of the programs that ran (all zero unless statistics are on).
fn program_costs(bpf: &Ebpf) -> Vec<ProgramCost> {
    let mut out: Vec<ProgramCost> = bpf
        .programs()
        .filter_map(|(name, prog)| {
            let info = prog.info().ok()?;
            let runs = info.run_count();
            let ns = info.run_time().as_nanos() as u64;
            (runs > 0).then(|| ProgramCost {
                program: name.to_owned(),
                runs,
                run_time_ns: ns,
                mean_ns: ns as f64 / runs as f64,
            })
        })
        .collect();
    out.sort_by(|a, b| a.program.cmp(&b.program));
    out
}

/// Per program, the runs the kernel skipped because that program was already running on
/// the CPU (nested in an interrupt): `recursion_misses` in the program's fdinfo, which
/// aya's `ProgramInfo` does not expose. Only non-zero counts.
fn recursion_misses(bpf: &Ebpf) -> BTreeMap<String, u64> {
    use std::os::fd::AsFd;
    let mut out = BTreeMap::new();
    for (name, prog) in bpf.programs() {
        let Ok(fd) = prog.fd() else { continue };
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let Ok(info) = std::fs::read_to_string(path) else {
            continue;
        };
        let n = info
            .lines()
            .find_map(|l| l.strip_prefix("recursion_misses:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if n > 0 {
            out.insert(name.to_owned(), n);
        }
    }
    out
}

/// (event kind, cpu, lost) for every non-zero loss counter.
fn read_losses(bpf: &Ebpf) -> Vec<(u8, u32, u64)> {
    let mut out = Vec::new();
    let Some(m) = bpf.map("lost") else { return out };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(m) else {
        return out;
    };
    for kind in 0..abi::MAX_TYPES {
        if let Ok(vals) = arr.get(&kind, 0) {
            for (cpu, v) in vals.iter().enumerate() {
                if *v > 0 {
                    out.push((kind as u8, cpu as u32, *v));
                }
            }
        }
    }
    out
}

/// Removes a file when dropped, unless disarmed.
struct RemoveOnDrop(PathBuf);

impl RemoveOnDrop {
    fn disarm(&mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
