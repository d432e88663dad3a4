//! The run loop: drain the rings as they fill and every 50 ms, watch the target, pick
//! up image files it opens, until the duration, the target's exit or a signal.

use super::child::GatedChild;
use super::rings::{RingSet, Window, drain};
use super::target::devices_for;
use crate::qemu;
use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use viopath_layouts::host::DevId;
use viopath_probes::abi;
use viopath_probes::chunks::OpenFile;
use viopath_probes::trace::TraceWriter;

/// What the loop works on.
pub(super) struct Running<'a, W: io::Write> {
    pub(super) pid: u32,
    pub(super) bpf: &'a mut Ebpf,
    pub(super) rings: &'a mut [RingBuf<MapData>],
    pub(super) writer: &'a mut TraceWriter<W>,
    /// Events per (type, sub): a flat array, since it is bumped for every event.
    pub(super) counts: &'a mut [u64],
    pub(super) window: &'a mut Window,
    pub(super) child: Option<&'a mut GatedChild>,
    pub(super) files: &'a mut Vec<PathBuf>,
    /// The image files its command line names (see `qemu::images_among`).
    pub(super) named: &'a [PathBuf],
    /// The regular files open and their flags, as last seen.
    pub(super) open_files: &'a mut Vec<OpenFile>,
    pub(super) devices: &'a mut BTreeSet<DevId>,
}

/// Record until the duration passes, the target exits, or SIGINT/SIGTERM arrives;
/// returns why it stopped.
pub(super) fn run<W: io::Write>(
    r: Running<'_, W>,
    ready: RingSet,
    duration: Option<Duration>,
) -> io::Result<String> {
    let Running {
        pid,
        bpf,
        rings,
        writer,
        counts,
        window,
        mut child,
        files,
        named,
        open_files,
        devices,
    } = r;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
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
                    if let Some(c) = child.as_mut() {
                        if let Some(st) = c.child.try_wait()? {
                            break format!("command exited ({st})");
                        }
                    } else if !Path::new(&format!("/proc/{pid}")).exists() {
                        break format!("process {pid} exited");
                    }
                    if last_scan.elapsed() > Duration::from_millis(500) {
                        last_scan = Instant::now();
                        rescan(pid, bpf, files, named, devices);
                        note_open_files(pid, open_files);
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
fn rescan(
    pid: u32,
    bpf: &mut Ebpf,
    files: &mut Vec<PathBuf>,
    named: &[PathBuf],
    devices: &mut BTreeSet<DevId>,
) {
    let now = qemu::images_among(qemu::open_files(pid), named);
    let new: Vec<PathBuf> = now.into_iter().filter(|f| !files.contains(f)).collect();
    if new.is_empty() {
        return;
    }
    let devs = devices_for(&new);
    files.extend(new);
    if let Some(m) = bpf.map_mut("devices")
        && let Ok(mut m) = BpfHashMap::<_, u32, u8>::try_from(m)
    {
        for d in devs.difference(devices) {
            let _ = m.insert(abi::kernel_dev(d.major, d.minor), 1, 0);
        }
    }
    devices.extend(devs);
}
