//! Attaching the catalog: kernel probes (tp_btf, tracepoints, fentry/fexit with their
//! kprobe twins) and QEMU's functions (one generic uprobe, a spec per function), each
//! with a one-line reason when it cannot.

use super::module_attach::{ModuleAttach, ModuleLink, Modules, NOT_IN_KERNEL};
use super::{KernelAttachMode, RecordError};
use crate::catalog::{
    KERNEL_PROBES, KernelAttach, Layer, OlderTracepoint, QEMU_FALLBACKS, QEMU_PROBES,
};
use crate::elf::{Missing, Symbols};
use crate::qemu::QemuInfo;
use aya::maps::Array;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint, UProbe};
use aya::{Btf, Ebpf, Pod};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;
use viopath_probes::abi::Uspec;
use viopath_probes::chunks::ProbeStatus;

/// `struct vp_uspec` as a map value.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct UspecValue([u8; 24]);
// SAFETY: plain bytes, no padding, valid for any bit pattern.
unsafe impl Pod for UspecValue {}

/// One probe tried: its layer, and what the trace says of it.
pub(super) struct Attempt {
    pub(super) layer: Layer,
    pub(super) status: ProbeStatus,
}

impl Attempt {
    fn new(layer: Layer, name: &str, attach: &str, result: Result<(), String>) -> Attempt {
        Attempt {
            layer,
            status: ProbeStatus {
                name: name.to_owned(),
                layer: layer.key().to_owned(),
                attach: attach.to_owned(),
                attached: result.is_ok(),
                note: result.err(),
            },
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

pub(super) fn validate_filter(filter: &Option<Vec<String>>) -> Result<(), RecordError> {
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

pub(super) struct Attached {
    pub(super) attempts: Vec<Attempt>,
    /// Programs on modules' code, attached outside aya (see `module_attach`).
    pub(super) module_links: Vec<ModuleLink>,
    /// QEMU probe id → symbol, for the summary.
    pub(super) qemu_names: BTreeMap<u8, &'static str>,
    /// What a QEMU found later gets attached.
    pub(super) qemu: QemuPlan,
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

// The loaded object, its BTF and the targets, and the three choices of what to attach.
#[allow(clippy::too_many_arguments)]
pub(super) fn attach_all(
    bpf: &mut Ebpf,
    btf: &Btf,
    pids: &[u32],
    qemu: &QemuInfo,
    syms: Option<&Symbols>,
    filter: &Option<Vec<String>>,
    aio_fsync_work: u64,
    mode: KernelAttachMode,
) -> Result<Attached, RecordError> {
    let mut attempts = Vec::new();
    let kernel = kernel_version();
    let mut modules = Modules::default();
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
        // What an attached probe's listing says of it (the older form it took).
        let mut attached_as: Option<String> = None;
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
            } => {
                let fb = if exit { "kretprobe" } else { "kprobe" };
                let how = if exit {
                    ModuleAttach::Fexit
                } else {
                    ModuleAttach::Fentry
                };
                let mut fentry = |bpf: &mut Ebpf| {
                    attach_function(bpf, btf, p.program, function, exit).or_else(|first| {
                        // Not in vmlinux's BTF: a module's function, in its own BTF.
                        if !first.contains("not in the kernel's BTF") {
                            return Err(first);
                        }
                        modules
                            .attach(bpf, btf, p.program, function, how)
                            .map(|module| attached_as = Some(format!("in module {module}")))
                            .map_err(|e| module_error(&first, e))
                    })
                };
                match mode {
                    KernelAttachMode::Auto => fentry(bpf).or_else(|first| {
                        attach_kprobe(bpf, fallback, function)
                            .map(|()| kind = fb)
                            .map_err(|second| format!("{kind}: {first}; {fb} fallback: {second}"))
                    }),
                    KernelAttachMode::Fentry => fentry(bpf)
                        .map_err(|e| format!("{e} (--kernel-attach fentry: no {fb} fallback)")),
                    KernelAttachMode::Kprobe => {
                        kind = fb;
                        attach_kprobe(bpf, fallback, function)
                    }
                }
            }
            _ => (|| {
                match p.attach {
                    KernelAttach::TpBtf { event, older } => {
                        let first = match load_tp_btf(bpf, p.program, event, btf)? {
                            // Not in vmlinux's BTF: a module's tracepoint.
                            Err(first) if first.contains("unknown BTF type") => modules
                                .attach(bpf, btf, p.program, event, ModuleAttach::TpBtf)
                                .map(|module| attached_as = Some(format!("in module {module}")))
                                .map_err(|e| module_error(&first, e)),
                            other => other,
                        };
                        if let Err(first) = first {
                            attached_as =
                                Some(attach_older(bpf, btf, event, older, first, kernel)?);
                        }
                    }
                    KernelAttach::Tracepoint { category, event } => {
                        let prog = bpf.program_mut(p.program).ok_or("not in the eBPF object")?;
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
        let mut attempt = Attempt::new(p.layer, event, kind, result);
        if attempt.status.attached {
            attempt.status.note = attached_as;
        }
        attempts.push(attempt);
    }

    // QEMU: one generic program, attached once per function and process with its spec
    // index as cookie.
    let plan = plan_qemu(bpf, qemu, syms, filter, &mut attempts)?;
    for (i, result) in attach_qemu(bpf, &plan, &qemu.binary, pids)
        .into_iter()
        .enumerate()
    {
        if let Err(why) = result {
            let a = &mut attempts[plan.points[i].attempt];
            a.status.attached = false;
            a.status.note = Some(why);
        }
    }
    if let Some(list) = filter {
        for a in &attempts {
            let s = &a.status;
            if !s.attached && list.iter().any(|w| w == &s.name) {
                return Err(RecordError::RequestedProbeFailed {
                    probe: s.name.clone(),
                    layer: a.layer.name(),
                    why: s.note.clone().unwrap_or_default(),
                });
            }
        }
    }
    Ok(Attached {
        attempts,
        module_links: modules.links,
        qemu_names: plan.names.clone(),
        qemu: plan,
    })
}

/// One QEMU function to attach in every traced process: where, and its spec's index
/// (the uprobe's cookie).
pub(super) struct QemuPoint {
    offset: u64,
    cookie: u32,
    /// Its entry in the attempts.
    attempt: usize,
}

/// The QEMU functions to attach, worked out once from the binary: a process found
/// later gets the same.
pub(super) struct QemuPlan {
    pub(super) points: Vec<QemuPoint>,
    /// QEMU probe id → symbol, for the summary.
    names: BTreeMap<u8, &'static str>,
}

/// Which QEMU functions can be probed in `qemu` and with which argument specs (written
/// into the `uspecs` map); an attempt each, attached unless a process refuses it. The
/// uprobe program is loaded here, once.
fn plan_qemu(
    bpf: &mut Ebpf,
    qemu: &QemuInfo,
    syms: Option<&Symbols>,
    filter: &Option<Vec<String>>,
    attempts: &mut Vec<Attempt>,
) -> Result<QemuPlan, RecordError> {
    let mut specs: Vec<(u32, Uspec)> = Vec::new();
    let mut plan = QemuPlan {
        points: Vec::new(),
        names: BTreeMap::new(),
    };
    let version = qemu.version.map(|(a, b, _)| (a, b));
    let mut loaded = false;
    let mut load_error: Option<String> = None;
    for p in QEMU_PROBES {
        if !wanted(filter, p.layer, &[p.symbol]) {
            continue;
        }
        // A fallback whose primary can attach is not needed (its primary comes first
        // in the catalog).
        if let Some((_, primary)) = QEMU_FALLBACKS.iter().find(|(f, _)| *f == p.symbol)
            && attempts
                .iter()
                .any(|a| a.status.name == *primary && a.status.attached)
        {
            continue;
        }
        plan.names.insert(p.id, p.symbol);
        let mut skipped = |why: String| {
            attempts.push(Attempt::new(p.layer, p.symbol, "uprobe", Err(why)));
        };
        // A command that is no QEMU (`record -- sh ...`): nothing of QEMU's to probe,
        // and no debug symbols would change that.
        if syms.is_some() && !qemu.is_qemu() {
            skipped(format!(
                "{} is not QEMU (no QEMU version text in it)",
                qemu.binary.display()
            ));
            continue;
        }
        let Some(layout) = p.layout_for(version) else {
            skipped(match &qemu.version {
                Some((a, b, c)) => format!(
                    "argument layout unknown for QEMU {a}.{b}.{c} (known: {})",
                    p.known_versions()
                ),
                None => format!(
                    "QEMU version unknown ('{}'); layouts known for {}",
                    qemu.version_line,
                    p.known_versions()
                ),
            });
            continue;
        };
        let Some(syms) = syms else {
            skipped("no QEMU binary to attach to".into());
            continue;
        };
        let offset = match syms.file_offset(p.symbol) {
            Ok(o) => o,
            Err(Missing::NotFound) => {
                skipped(if syms.full {
                    "not in this QEMU build".to_owned()
                } else {
                    format!(
                        "{} has no .symtab, only its exported symbols ({}), and this function is not exported: install its debug symbols (e.g. the -dbgsym package, found by build-id {}) or use a build with symbols",
                        syms.binary.display(),
                        syms.sources.join(", "),
                        syms.build_id.as_deref().unwrap_or("?")
                    )
                });
                continue;
            }
            Err(Missing::Ambiguous(n)) => {
                skipped(format!("{n} functions share this name"));
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
        if !loaded && load_error.is_none() {
            let prog: Result<&mut UProbe, String> = bpf
                .program_mut("qemu_entry")
                .ok_or_else(|| "no qemu_entry program".to_owned())
                .and_then(|p| p.try_into().map_err(|e| format!("{e}")));
            match prog.and_then(|p| p.load().map_err(|e| short_load_error(&e.to_string()))) {
                Ok(()) => loaded = true,
                Err(e) => load_error = Some(e),
            }
        }
        if let Some(err) = &load_error {
            skipped(err.clone());
            continue;
        }
        plan.points.push(QemuPoint {
            offset,
            cookie: index,
            attempt: attempts.len(),
        });
        attempts.push(Attempt::new(p.layer, p.symbol, "uprobe", Ok(())));
    }
    let mut map: Array<_, UspecValue> = Array::try_from(bpf.map_mut("uspecs").expect("uspecs map"))
        .map_err(|e| RecordError::Load(Box::new(e)))?;
    for (i, s) in &specs {
        map.set(*i, UspecValue(s.to_bytes()), 0)
            .map_err(|e| RecordError::Load(Box::new(e)))?;
    }
    Ok(plan)
}

/// Attach the plan's functions in each of `pids` (uprobes scoped to one process, so a
/// QEMU not traced pays nothing); per function, the first refusal.
pub(super) fn attach_qemu(
    bpf: &mut Ebpf,
    plan: &QemuPlan,
    binary: &Path,
    pids: &[u32],
) -> Vec<Result<(), String>> {
    plan.points
        .iter()
        .map(|pt| {
            let prog: &mut UProbe = bpf
                .program_mut("qemu_entry")
                .ok_or("no qemu_entry program")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            for &pid in pids {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(pt.offset),
                    cookie: Some(u64::from(pt.cookie)),
                };
                let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or("pid 0")?);
                prog.attach(point, binary, scope)
                    .map_err(|e| format!("attach to pid {pid}: {e}"))?;
            }
            Ok(())
        })
        .collect()
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

/// Why a probe neither vmlinux's BTF nor a module's took: the module's reason alone
/// where it says the kernel has no such function or tracepoint at all.
fn module_error(first: &str, module: String) -> String {
    if module.starts_with(NOT_IN_KERNEL) {
        module
    } else {
        format!("{first}; in a module's BTF: {module}")
    }
}

/// Loads and attaches a tp_btf program: `Err` for a program missing from the object,
/// `Ok(Err(why))` for one this kernel refuses (where an older form may do).
fn load_tp_btf(
    bpf: &mut Ebpf,
    program: &str,
    event: &str,
    btf: &Btf,
) -> Result<Result<(), String>, String> {
    let prog: &mut BtfTracePoint = bpf
        .program_mut(program)
        .ok_or("not in the eBPF object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    Ok((|| {
        prog.load(event, btf)
            .map_err(|e| short_load_error(&e.to_string()))?;
        prog.attach().map_err(|e| format!("attach: {e}"))?;
        Ok(())
    })())
}

/// A tracepoint this kernel refused (`first`, why) tried in its older forms, in order:
/// which one took (for the probe's listing), else why none did.
fn attach_older(
    bpf: &mut Ebpf,
    btf: &Btf,
    event: &str,
    older: &[OlderTracepoint],
    first: String,
    kernel: Option<(u32, u32)>,
) -> Result<String, String> {
    if older.is_empty() {
        return Err(first);
    }
    let mut why = vec![format!("{event}: {first}")];
    for o in older {
        if kernel.is_none_or(|k| k < o.since) {
            let (a, b) = o.since;
            why.push(format!(
                "{} ({}): arguments as read since {a}.{b} only",
                o.event, o.program
            ));
            continue;
        }
        match load_tp_btf(bpf, o.program, o.event, btf)? {
            Ok(()) => {
                return Ok(format!(
                    "as {} ({}), this kernel's form of it",
                    o.event, o.program
                ));
            }
            Err(e) => why.push(format!("{} ({}): {e}", o.event, o.program)),
        }
    }
    Err(why.join("; "))
}

/// This kernel's (major, minor), from its release string.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_kernel_version(&release)
}

fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_from_release_strings() {
        assert_eq!(parse_kernel_version("6.1.0-57-amd64\n"), Some((6, 1)));
        assert_eq!(parse_kernel_version("6.12.95+deb12-amd64"), Some((6, 12)));
        assert_eq!(parse_kernel_version("5.14.0-503.el9.x86_64"), Some((5, 14)));
        assert_eq!(parse_kernel_version("6.18"), Some((6, 18)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }

    #[test]
    fn a_verifier_log_becomes_one_line() {
        let log = "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). \
                   Verifier output: 0: R1=ctx() R10=fp0\n12: (79) r1 = *(u64 *)(r6 +0)\n\
                   R6 invalid mem access 'scalar'\nverification time 3338 usec\nstack depth 32\n\
                   processed 12 insns (limit 1000000)\n";
        let short = short_load_error(log);
        assert!(!short.contains('\n'), "{short}");
        assert!(
            short.ends_with("verifier: R6 invalid mem access 'scalar'"),
            "{short}"
        );
    }
}
