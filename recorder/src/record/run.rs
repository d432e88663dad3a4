//! The run loop: drain the rings as they fill and every 50 ms, watch the targets, pick
//! up image files they open (and with `--all`, QEMUs started since), until the
//! duration, the targets' exit or a signal.

use super::attach::{QemuPlan, attach_qemu};
use super::load::{trace_devices, trace_process, untrace_process};
use super::rings::{RingSet, Window, drain};
use super::target::{Traced, Vm, devices_for, found, system_emulators};
use crate::qemu;
use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use viopath_layouts::host::DevId;
use viopath_probes::abi;
use viopath_probes::chunks::{OpenFile, VmSkipped};
use viopath_probes::trace::TraceWriter;

/// What the loop works on.
pub(super) struct Running<'a, 'l, W: io::Write> {
    pub(super) bpf: &'a mut Ebpf,
    pub(super) rings: &'a mut [RingBuf<MapData>],
    pub(super) writer: &'a mut TraceWriter<W>,
    /// Events per (type, sub): a flat array, since it is bumped for every event.
    pub(super) counts: &'a mut [u64],
    pub(super) window: &'a mut Window,
    pub(super) traced: &'a mut Traced,
    /// What a QEMU found while recording gets attached.
    pub(super) qemu: &'a QemuPlan,
    pub(super) devices: &'a mut BTreeSet<DevId>,
    pub(super) log: &'a mut (dyn FnMut(&str) + 'l),
}

/// Record until the duration passes, the targets exit, or SIGINT/SIGTERM arrives;
/// returns why it stopped.
pub(super) fn run<W: io::Write>(
    r: Running<'_, '_, W>,
    ready: RingSet,
    duration: Option<Duration>,
) -> io::Result<String> {
    let Running {
        bpf,
        rings,
        writer,
        counts,
        window,
        traced,
        qemu,
        devices,
        log,
    } = r;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut binaries = BTreeMap::new();
    rt.block_on(async {
        // One epoll fd stands for all the shards.
        // SAFETY: the epoll fd is owned by `ready`, which the registration owns.
        let mut afd = unsafe { AsyncFd::register(ready) }.map_err(|e| e.into_parts().1)?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let mut last_scan = Instant::now();
        let reason = loop {
            let sleep_until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = afd.readable_mut() => {
                    let mut guard = r?;
                    drain(rings, writer, counts, window)?;
                    guard.get_inner_mut().clear();
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    drain(rings, writer, counts, window)?;
                    writer.flush_events()?;
                    if let Some(reason) = note_exits(bpf, traced, log)? {
                        break reason;
                    }
                    if last_scan.elapsed() > Duration::from_millis(500) {
                        last_scan = Instant::now();
                        for vm in traced.vms.iter_mut().filter(|v| v.ended.is_none()) {
                            rescan(vm, bpf, devices);
                            note_open_files(vm.pid, &mut vm.open_files);
                            vm.note_threads();
                        }
                        if traced.all {
                            pick_up(bpf, traced, qemu, devices, &mut binaries, log);
                        }
                    }
                }
                _ = sigint.recv() => break "interrupted (SIGINT)".to_owned(),
                _ = sigterm.recv() => break "terminated (SIGTERM)".to_owned(),
                _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                    break "duration reached".to_owned()
                }
            }
        };
        Ok::<_, io::Error>(reason)
    })
}

/// Processes that exited since the last look end their tracing (the others go on);
/// the reason to stop once none is left, unless `--all` waits for more.
fn note_exits(
    bpf: &mut Ebpf,
    traced: &mut Traced,
    log: &mut dyn FnMut(&str),
) -> io::Result<Option<String>> {
    let single = traced.single().is_some();
    let now = super::now_ns(libc::CLOCK_MONOTONIC);
    let mut last = None;
    for vm in traced.vms.iter_mut().filter(|v| v.ended.is_none()) {
        let why = match vm.child.as_mut() {
            Some(c) => c
                .child
                .try_wait()?
                .map(|st| format!("command exited ({st})")),
            None => gone(vm.pid).then(|| format!("process {} exited", vm.pid)),
        };
        if let Some(why) = why {
            if !single {
                untrace_process(bpf, vm.pid);
                log(&format!("{} ({why}); the others go on", vm.name()));
            }
            vm.ended = Some((now, why.clone()));
            last = Some(why);
        }
    }
    let live = traced.vms.iter().any(|v| v.ended.is_none());
    Ok(match last {
        Some(why) if !live && !traced.all => Some(if single {
            why
        } else {
            "every traced process exited".to_owned()
        }),
        _ => None,
    })
}

/// Whether process `pid` has exited: no longer there, or a zombie its parent has not
/// reaped yet (it runs nothing more).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold
        // spaces and parentheses itself.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => !Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// `--all`: QEMUs started since the last look are traced from now on (those of another
/// binary are named, once, as not traced).
fn pick_up(
    bpf: &mut Ebpf,
    traced: &mut Traced,
    plan: &QemuPlan,
    devices: &mut BTreeSet<DevId>,
    binaries: &mut BTreeMap<(u64, u64), bool>,
    log: &mut dyn FnMut(&str),
) {
    for (pid, exe) in system_emulators(binaries) {
        let known = traced.vms.iter().any(|v| v.pid == pid && v.ended.is_none())
            || traced.skipped.iter().any(|s| s.pid == pid);
        if known {
            continue;
        }
        let mut vm = match found(pid, &exe, traced.binary_id) {
            Ok(vm) => vm,
            Err(s) => {
                log(&format!("not tracing pid {} ({}): {}", s.pid, s.exe, s.why));
                traced.skipped.push(s);
                continue;
            }
        };
        let index = traced.vms.len() as u32;
        let devs = devices_for(&vm.files);
        let new: Vec<DevId> = devs.difference(devices).copied().collect();
        let mut enrolled = trace_devices(bpf, &new)
            .and_then(|()| trace_process(bpf, pid, index))
            .map_err(|e| viopath_layouts::error_text(&e));
        if enrolled.is_ok() {
            let refused: Vec<String> = attach_qemu(bpf, plan, &exe, &[pid])
                .into_iter()
                .filter_map(Result::err)
                .collect();
            if let Some(first) = refused.first() {
                log(&format!(
                    "pid {pid}: {} QEMU probes did not attach, e.g. {first}",
                    refused.len()
                ));
            }
            if refused.len() == plan.points.len() && !refused.is_empty() {
                untrace_process(bpf, pid);
                enrolled = Err(format!("no QEMU probe attached: {}", refused[0]));
            }
        }
        if let Err(why) = enrolled {
            let s = VmSkipped {
                pid,
                exe: exe.display().to_string(),
                why,
            };
            log(&format!("not tracing pid {}: {}", s.pid, s.why));
            traced.skipped.push(s);
            continue;
        }
        devices.extend(devs);
        vm.traced_from_ns = super::now_ns(libc::CLOCK_MONOTONIC);
        vm.note_threads();
        note_open_files(pid, &mut vm.open_files);
        log(&format!(
            "tracing {} (pid {pid}), started after the recording",
            vm.name()
        ));
        traced.vms.push(vm);
    }
}

/// The process's open files and flags, merged into what earlier looks saw: a file
/// closed since keeps the flags it had.
pub(super) fn note_open_files(pid: u32, seen: &mut Vec<OpenFile>) {
    for f in qemu::open_modes(pid) {
        match seen.iter_mut().find(|s| s.path == f.path) {
            Some(s) => *s = f,
            None => seen.push(f),
        }
    }
}

/// Files the process opened since the last look (a disk hot-plugged, a backing file
/// opened late): their devices join the kernel's filter.
fn rescan(vm: &mut Vm, bpf: &mut Ebpf, devices: &mut BTreeSet<DevId>) {
    let now = qemu::images_among(qemu::open_files(vm.pid), &vm.named);
    let new: Vec<PathBuf> = now.into_iter().filter(|f| !vm.files.contains(f)).collect();
    if new.is_empty() {
        return;
    }
    let devs = devices_for(&new);
    vm.files.extend(new);
    if let Some(m) = bpf.map_mut("devices")
        && let Ok(mut m) = BpfHashMap::<_, u32, u8>::try_from(m)
    {
        for d in devs.difference(devices) {
            let _ = m.insert(abi::kernel_dev(d.major, d.minor), 1, 0);
        }
    }
    devices.extend(devs);
}

#[cfg(test)]
mod tests {
    /// A process that exited is gone as soon as it is a zombie, before its parent
    /// reaps it; a running one is not.
    #[test]
    fn an_exited_process_is_gone_before_it_is_reaped() {
        assert!(!super::gone(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !super::gone(pid) {
            assert!(std::time::Instant::now() < deadline, "pid {pid} never gone");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(super::gone(pid));
    }
}
