//! `viopath report --format perfetto`: a timeline in the Chrome JSON trace event
//! format, which the Perfetto UI (ui.perfetto.dev) and chrome://tracing open.
//!
//! - Process "guest IOs": one async track per IO, its slice named by op and size, with
//!   a child slice per layer (the same split as the report: children tile the IO).
//! - Process "layers": each layer's slices of every IO, grouped by layer name, so a
//!   layer's concurrency and outliers show at a glance.
//! - The traced process (QEMU) and the kernel: one track per thread, with its
//!   positioned syscalls as slices and QEMU's probe hits as instants.
//! - Process "block devices": each device's requests, issue → complete.
//!
//! Timestamps are µs from the trace's first event, with ns precision. Written as a
//! stream: memory does not grow with the trace beyond what the join holds.

use crate::join::{IoRow, OtherIo, Sink};
use crate::layers::{LAYER_NAMES, split};
use crate::layout::Layout;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use viopath_probes::abi::{EventKind, RawEvent, SYSCALLS};

const PID_IOS: u32 = 1;
const PID_LAYERS: u32 = 2;
const PID_DEVICES: u32 = 3;
/// The kernel's own context (interrupts, softirq: events with no task).
const PID_KERNEL: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum PerfettoError {
    #[error(transparent)]
    Read(#[from] crate::reader::ReadError),
    #[error("writing the timeline")]
    Io(#[from] std::io::Error),
}

/// What was written.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PerfettoStats {
    pub ios: u64,
    pub layer_slices: u64,
    pub syscalls: u64,
    pub requests: u64,
    pub instants: u64,
    /// Why the timeline stops short, if it does: a damaged or truncated trace is read
    /// to its last good chunk.
    pub damage: Option<crate::reader::Damage>,
    /// The recording was interrupted (no end chunk).
    pub interrupted: bool,
    pub events_lost_in_kernel: u64,
}

struct Out<'w> {
    w: &'w mut dyn Write,
    first: bool,
    t0: u64,
    error: Option<std::io::Error>,
    stats: PerfettoStats,
}

impl Out<'_> {
    fn ts(&self, ns: u64) -> f64 {
        // µs with ns precision; serde_json writes the shortest exact form.
        ns.saturating_sub(self.t0) as f64 / 1000.0
    }

    fn emit(&mut self, v: &Value) {
        if self.error.is_some() {
            return;
        }
        let sep: &[u8] = if self.first { b"\n" } else { b",\n" };
        self.first = false;
        let r = self
            .w
            .write_all(sep)
            .and_then(|_| serde_json::to_writer(&mut *self.w, v).map_err(Into::into));
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    fn name(&mut self, what: &str, pid: u32, tid: Option<u32>, name: &str) {
        let mut v = json!({"ph": "M", "name": what, "pid": pid, "args": {"name": name}});
        if let Some(t) = tid {
            v["tid"] = json!(t);
        }
        self.emit(&v);
    }
}

struct IoSink<'a, 'w> {
    out: &'a mut Out<'w>,
    layout: &'a Layout,
}

impl Sink for IoSink<'_, '_> {
    fn io(&mut self, row: &IoRow) {
        if row.partial != 0 {
            return;
        }
        let (layers, e2e) = split(&row.b);
        let Some(start) = row.b.iter().copied().filter(|&t| t != 0).min() else {
            return;
        };
        let end = start + e2e;
        let mut args = json!({
            "id": row.id,
            "op": row.op.name(),
            "bytes": row.bytes,
            "e2e_us": e2e as f64 / 1000.0,
        });
        if let Some(o) = row.offset {
            args["guest_offset"] = json!(o);
            if let Some(g) = self.layout.guest_name(row.disk, o) {
                args["guest_file"] = json!(g.what);
                if let Some(f) = g.file_offset {
                    args["guest_file_offset"] = json!(f);
                }
            }
        }
        if row.bottom_dev != 0 {
            args["device"] = json!(self.layout.device_name(row.bottom_dev));
        }
        if let Some(d) = row.disk.filter(|_| self.layout.disks.len() > 1) {
            args["disk"] = json!(self.layout.disk_name(d));
        }
        let name = format!("{} {}", row.op.name(), row.bytes);
        let (ts0, ts1) = (self.out.ts(start), self.out.ts(end));
        let id = format!("0x{:x}", row.id);
        self.out
            .emit(&json!({"ph": "b", "cat": "io", "id": id, "name": name,
            "pid": PID_IOS, "tid": PID_IOS, "ts": ts0, "args": args}));
        // Children tile the IO: each layer from its boundary to the next present one.
        let mut t = start;
        for &i in &crate::layers::LAYER_PATH {
            let Some(d) = layers[i] else { continue };
            let (a, b) = (self.out.ts(t), self.out.ts(t + d));
            let layer = LAYER_NAMES[i];
            self.out
                .emit(&json!({"ph": "b", "cat": "io", "id": id, "name": layer,
                "pid": PID_IOS, "tid": PID_IOS, "ts": a}));
            self.out
                .emit(&json!({"ph": "e", "cat": "io", "id": id, "name": layer,
                "pid": PID_IOS, "tid": PID_IOS, "ts": b}));
            // The same slice on the layer's own track.
            self.out
                .emit(&json!({"ph": "b", "cat": layer, "id": id, "name": layer,
                "pid": PID_LAYERS, "tid": PID_LAYERS, "ts": a, "args": {"io": row.id}}));
            self.out
                .emit(&json!({"ph": "e", "cat": layer, "id": id, "name": layer,
                "pid": PID_LAYERS, "tid": PID_LAYERS, "ts": b}));
            self.out.stats.layer_slices += 1;
            t += d;
        }
        self.out
            .emit(&json!({"ph": "e", "cat": "io", "id": id, "name": name,
            "pid": PID_IOS, "tid": PID_IOS, "ts": ts1}));
        self.out.stats.ios += 1;
    }

    fn other(&mut self, _: &OtherIo) {}
}

/// Thread and device tracks from the raw events.
struct Raw {
    pid: u32,
    probe_names: HashMap<u8, String>,
    /// tid → (syscall, enter ts, fd, offset, bytes).
    open_sys: HashMap<u32, (u8, u64, u64, u64, u64)>,
    /// Request pointer → (device, issue ts, sector, bytes).
    open_rq: HashMap<u64, (u32, u64, u64, u64)>,
    threads: HashMap<u32, &'static str>,
    devices: HashMap<u32, ()>,
}

impl Raw {
    fn pid_of(&self, tid: u32) -> u32 {
        if tid == 0 { PID_KERNEL } else { self.pid }
    }

    fn thread(&mut self, out: &mut Out, tid: u32, role: &'static str) {
        let known = self.threads.get(&tid).copied();
        // A thread is named once, by the first role that says most about it.
        if known.is_none() || (known == Some("thread") && role != "thread") {
            self.threads.insert(tid, role);
            let name = if tid == 0 {
                "kernel (interrupt context)".to_owned()
            } else {
                format!("{role} {tid}")
            };
            let pid = self.pid_of(tid);
            out.name("thread_name", pid, Some(tid), &name);
        }
    }

    fn event(&mut self, out: &mut Out, layout: &Layout, e: &RawEvent) {
        const QEMU: u8 = EventKind::Qemu as u8;
        const SYS_ENTER: u8 = EventKind::SysEnter as u8;
        const SYS_EXIT: u8 = EventKind::SysExit as u8;
        const RQ_ISSUE: u8 = EventKind::RqIssue as u8;
        const RQ_COMPLETE: u8 = EventKind::RqComplete as u8;
        match e.kind {
            QEMU => {
                use viopath_probes::abi::qemu_probe as q;
                let role = match e.sub {
                    q::HANDLE_AIOCB_RW => "qemu thread-pool worker",
                    q::VIRTIO_HANDLE_REQUEST | q::VIRTIO_REQ_COMPLETE => "qemu virtio-blk thread",
                    _ => "thread",
                };
                self.thread(out, e.tid, role);
                let name = self
                    .probe_names
                    .get(&e.sub)
                    .cloned()
                    .unwrap_or_else(|| format!("qemu probe {}", e.sub));
                let v = json!({"ph": "i", "s": "t", "name": name, "pid": self.pid_of(e.tid),
                    "tid": e.tid, "ts": out.ts(e.ts),
                    "args": {"a0": format!("0x{:x}", e.a[0]), "a1": e.a[1], "a2": e.a[2]}});
                out.emit(&v);
                out.stats.instants += 1;
            }
            SYS_ENTER => {
                self.open_sys
                    .insert(e.tid, (e.sub, e.ts, e.a[0], e.a[1], e.a[2]));
            }
            SYS_EXIT => {
                if let Some((sub, t0, fd, off, bytes)) = self.open_sys.remove(&e.tid)
                    && sub == e.sub
                {
                    self.thread(out, e.tid, "thread");
                    let name = SYSCALLS
                        .iter()
                        .find(|s| s.0 == sub)
                        .map(|s| s.1)
                        .unwrap_or("syscall");
                    let v = json!({"ph": "X", "name": name, "pid": self.pid_of(e.tid),
                        "tid": e.tid, "ts": out.ts(t0),
                        "dur": e.ts.saturating_sub(t0) as f64 / 1000.0,
                        "args": {"fd": fd, "offset": off, "bytes": bytes, "ret": e.a[0] as i64}});
                    out.emit(&v);
                    out.stats.syscalls += 1;
                }
            }
            RQ_ISSUE => {
                let dev = (e.a[2] >> 32) as u32;
                self.open_rq
                    .insert(e.a[0], (dev, e.ts, e.a[1], e.a[2] & 0xffff_ffff));
            }
            RQ_COMPLETE => {
                if let Some((dev, t0, sector, bytes)) = self.open_rq.remove(&e.a[0]) {
                    if self.devices.insert(dev, ()).is_none() {
                        out.name(
                            "thread_name",
                            PID_DEVICES,
                            Some(dev),
                            &layout.device_name(dev),
                        );
                    }
                    let id = format!("0x{:x}", e.a[0]);
                    let cat = layout.device_name(dev);
                    let name = format!("{} sectors", bytes / 512);
                    let args = json!({"sector": sector, "bytes": bytes});
                    out.emit(&json!({"ph": "b", "cat": cat, "id": id, "name": name,
                        "pid": PID_DEVICES, "tid": dev, "ts": out.ts(t0), "args": args}));
                    out.emit(&json!({"ph": "e", "cat": cat, "id": id, "name": name,
                        "pid": PID_DEVICES, "tid": dev, "ts": out.ts(e.ts)}));
                    out.stats.requests += 1;
                }
            }
            _ => {}
        }
    }
}

/// Write the timeline of the trace at `path` to `w`.
pub fn write(
    path: &Path,
    w: &mut dyn Write,
    progress: Option<&crate::input::Progress>,
) -> Result<PerfettoStats, PerfettoError> {
    let trace = crate::reader::Trace::open(path)?;
    let (layout, _) = crate::input::load_layout(&trace, &[]);
    let cfg = crate::input::join_config(&trace, &layout);
    let t0 = trace.events().next().map(|e| e.ts).unwrap_or(0);
    let mut out = Out {
        w,
        first: true,
        t0,
        error: None,
        stats: PerfettoStats::default(),
    };
    out.w
        .write_all(b"{\"displayTimeUnit\": \"ns\", \"traceEvents\": [")?;
    let pid = trace.header.target.pid.unwrap_or(5);
    let target = trace
        .header
        .target
        .command
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.rsplit('/').next())
        .unwrap_or("traced process")
        .to_owned();
    for (p, n) in [
        (PID_IOS, "guest IOs (one track per IO, a slice per layer)"),
        (PID_LAYERS, "layers"),
        (PID_DEVICES, "block devices (request issue → complete)"),
        (PID_KERNEL, "kernel"),
        (pid, target.as_str()),
    ] {
        out.name("process_name", p, None, n);
    }
    // Top to bottom as the IO goes down.
    for (p, n) in [
        (PID_IOS, 0),
        (PID_LAYERS, 1),
        (pid, 2),
        (PID_KERNEL, 3),
        (PID_DEVICES, 4),
    ] {
        out.emit(
            &json!({"ph": "M", "name": "process_sort_index", "pid": p, "args": {"sort_index": n}}),
        );
    }
    let probe_names: HashMap<u8, String> = trace
        .header
        .qemu_probes
        .iter()
        .map(|p| (p.id, p.symbol.clone()))
        .collect();
    let mut raw = Raw {
        pid,
        probe_names,
        open_sys: HashMap::new(),
        open_rq: HashMap::new(),
        threads: HashMap::new(),
        devices: HashMap::new(),
    };
    // The join's rows and the raw tracks go to the same stream; a row is written when
    // the join finishes it.
    {
        let sink = IoSink {
            out: &mut out,
            layout: &layout,
        };
        let mut join = crate::join::Join::new(&layout, sink, cfg);
        let events = crate::input::for_each_event(&trace, progress, |e| {
            join.event(e);
            raw.event(join.sink.out, &layout, e);
        });
        let damage = events
            .damage()
            .cloned()
            .or_else(|| trace.info.damage.clone());
        join.finish();
        out.stats.damage = damage;
    }
    out.stats.interrupted = !trace.info.complete;
    out.stats.events_lost_in_kernel = trace.info.events_lost_in_kernel;
    if let Some(e) = out.error.take() {
        return Err(e.into());
    }
    out.w.write_all(b"\n]}\n")?;
    Ok(out.stats)
}
