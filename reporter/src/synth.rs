//! Synthetic traces with known answers, for the reporter's tests and benchmarks.
//!
//! The generator plays a virtio-blk guest over QEMU (qcow2, aio=threads) on a host
//! filesystem on a partition of a disk, the way the real probes report it: the same
//! event kinds, arguments, threads and ordering rules (a QEMU thread runs one coroutine
//! at a time; a thread-pool worker serves one job at a time; completions arrive in IRQ
//! context on any CPU). It writes a real trace file through the recorder's writer,
//! including the recorder's interleaving of CPUs by drain cycle, and tells the caller
//! each IO's true boundary times.
//!
//! What it exercises: every layer; qcow2 L2 cache misses (a metadata read inside the
//! request); IOs split across two host extents (1:N); two IOs of the same direction
//! merged into one block request (N:1), half of them while that request still sits on
//! the submitter's plug list (the merge is traced before the request's insert);
//! pointers reused as soon as
//! they are free; events out of order across CPUs; and lost events (a worker's syscall
//! exit dropped, counted in a Losses chunk).

use crate::layers::{Boundaries, Boundary};
use crate::rng::Rng;
use serde_json::json;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use viopath_probes::abi::{EventKind, RawEvent, kernel_dev, qemu_probe as q};
use viopath_probes::chunks::{End, Header, Losses, Lost, ProbeStatus, TargetInfo};
use viopath_probes::trace::{ChunkKind, TraceWriter};

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub ios: u64,
    pub seed: u64,
    /// Mean IOs in flight.
    pub queue_depth: u32,
    pub workers: u32,
    /// Every n-th IO misses the L2 cache (0: never).
    pub l2_miss_every: u64,
    /// Every n-th IO is split across two host extents (0: never).
    pub split_every: u64,
    /// Every n-th IO is merged with the next one in the block layer (0: never).
    pub merge_every: u64,
    /// Every n-th IO loses its syscall-exit event (0: never).
    pub lose_every: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            ios: 1000,
            seed: 1,
            queue_depth: 8,
            workers: 16,
            l2_miss_every: 7,
            split_every: 11,
            merge_every: 13,
            lose_every: 0,
        }
    }
}

/// The true story of one IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truth {
    pub write: bool,
    pub offset: u64,
    pub bytes: u64,
    pub b: Boundaries,
    /// Its syscall exit was dropped: the reporter must call it partial.
    pub lost: bool,
    pub split: bool,
    pub merged: bool,
    pub l2_miss: bool,
}

/// Totals of a generated trace.
#[derive(Debug, Clone, Default)]
pub struct SynthStats {
    pub events: u64,
    pub lost: u64,
    pub bytes: u64,
}

const CLUSTER: u64 = 65536;
const PART_START: u64 = 2048 * 512;
const FS_OFFSET: u64 = 1 << 30;
const IMAGE_LEN: u64 = 64 << 30;
const IOTHREAD: u32 = 1000;
const VCPU: u32 = 1001;
const WORKER0: u32 = 2000;
const FD: u64 = 9;
const INODE: u64 = 12;

pub fn part_dev() -> u32 {
    kernel_dev(8, 1)
}
pub fn disk_dev() -> u32 {
    kernel_dev(8, 0)
}

/// A pool of pointers handed out lowest-free-first, so they are reused at once.
struct Pool {
    base: u64,
    free: BinaryHeap<Reverse<u64>>,
    next: u64,
}
impl Pool {
    fn new(base: u64) -> Pool {
        Pool {
            base,
            free: BinaryHeap::new(),
            next: 0,
        }
    }
    fn get(&mut self) -> u64 {
        match self.free.pop() {
            Some(Reverse(i)) => self.base + i * 0x100,
            None => {
                self.next += 1;
                self.base + (self.next - 1) * 0x100
            }
        }
    }
    fn put(&mut self, p: u64) {
        self.free.push(Reverse((p - self.base) / 0x100));
    }
}

/// Busy intervals of one thread: a thread does one thing at a time.
#[derive(Default)]
struct Busy(Vec<(u64, u64)>);
impl Busy {
    /// The earliest start ≥ `at` with `len` free ns.
    fn slot(&self, at: u64, len: u64) -> u64 {
        let mut t = at;
        for &(s, e) in &self.0 {
            if e <= t {
                continue;
            }
            if s >= t + len {
                break;
            }
            t = e;
        }
        t
    }
    fn take(&mut self, s: u64, e: u64) {
        let i = self.0.partition_point(|x| x.0 < s);
        self.0.insert(i, (s, e));
    }
    fn prune(&mut self, before: u64) {
        let n = self.0.partition_point(|x| x.1 < before);
        if n > 64 {
            self.0.drain(..n);
        }
    }
}

struct Gen<W: Write> {
    rng: Rng,
    out: TraceWriter<W>,
    heap: BinaryHeap<Reverse<(u64, u64, EvBox)>>,
    seq: u64,
    iothread: Busy,
    workers: Vec<Busy>,
    irq_cpu: u16,
    reqs: Pool,
    qiovs: Pool,
    aiocbs: Pool,
    kiocbs: Pool,
    bios: Pool,
    rqs: Pool,
    /// Pointers freed at a time: returned to their pool once the stream passes it.
    frees: BinaryHeap<Reverse<(u64, u8, u64)>>,
    stats: SynthStats,
    cycle: u64,
    pending: Vec<RawEvent>,
    /// The latest timestamp of any event: the recording's end.
    last_ts: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct EvBox(RawEvent);
impl PartialOrd for EvBox {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for EvBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// A host IO's kernel side, planned.
struct HostPlan {
    host_off: u64,
    bytes: u64,
    write: bool,
    worker: usize,
    run: u64,
    enter: u64,
    queued: u64,
    issue: u64,
    done: u64,
    exit: u64,
}

const DRAIN_NS: u64 = 1_000_000;
/// Longer than any IO: events older than the newest arrival minus this are final.
const HORIZON_NS: u64 = 50_000_000;

impl<W: Write> Gen<W> {
    fn ev(&mut self, ts: u64, tid: u32, cpu: u16, kind: EventKind, sub: u8, a: [u64; 4]) {
        self.seq += 1;
        self.last_ts = self.last_ts.max(ts);
        let e = RawEvent {
            ts,
            tid,
            kind: kind as u8,
            sub,
            cpu,
            a,
        };
        self.heap.push(Reverse((ts, self.seq, EvBox(e))));
    }

    fn qemu(&mut self, ts: u64, probe: u8, a: [u64; 4]) {
        self.ev(ts, IOTHREAD, 0, EventKind::Qemu, probe, a);
    }

    fn free_at(&mut self, ts: u64, pool: u8, p: u64) {
        self.frees.push(Reverse((ts, pool, p)));
    }

    /// Write out events older than `upto`, one drain cycle at a time, CPU by CPU (the
    /// recorder drains its rings one after another, so CPUs interleave by cycle).
    fn flush(&mut self, upto: u64) -> std::io::Result<()> {
        while let Some(Reverse((ts, _, _))) = self.heap.peek() {
            if *ts >= upto {
                break;
            }
            let Reverse((ts, _, EvBox(e))) = self.heap.pop().expect("peeked");
            let cycle = ts / DRAIN_NS;
            if cycle != self.cycle {
                self.drain()?;
                self.cycle = cycle;
            }
            self.pending.push(e);
        }
        while let Some(Reverse((ts, pool, p))) = self.frees.peek().copied() {
            if ts >= upto {
                break;
            }
            self.frees.pop();
            match pool {
                0 => self.reqs.put(p),
                1 => self.qiovs.put(p),
                2 => self.aiocbs.put(p),
                3 => self.kiocbs.put(p),
                4 => self.bios.put(p),
                _ => self.rqs.put(p),
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> std::io::Result<()> {
        let mut evs = std::mem::take(&mut self.pending);
        // CPU 1's ring is drained before CPU 0's in odd cycles: late events both ways.
        let first = (self.cycle % 2) as u16;
        evs.sort_by_key(|e| (e.cpu != first, e.cpu));
        for e in &evs {
            self.out.push(e)?;
        }
        self.stats.events += evs.len() as u64;
        evs.clear();
        self.pending = evs;
        Ok(())
    }

    /// Plan one host IO on a free worker, at or after `ready`.
    fn plan_host(&mut self, ready: u64, host_off: u64, bytes: u64, write: bool) -> HostPlan {
        let r = &mut self.rng;
        let d_run = r.range(2_000, 6_000);
        let d_enter = r.range(300, 900);
        let d_fs = r.range(1_000, 4_000);
        let d_queue = r.range(1_500, 8_000);
        let d_dev = r.range(20_000, 200_000) + bytes / 8;
        let d_up = r.range(2_000, 6_000);
        let total = d_enter + d_fs + d_queue + d_dev + d_up + 1;
        let (worker, run) = (0..self.workers.len())
            .map(|w| (w, self.workers[w].slot(ready + d_run, total)))
            .min_by_key(|x| (x.1, x.0))
            .expect("workers");
        let enter = run + d_enter;
        let queued = enter + d_fs;
        let issue = queued + d_queue;
        let done = issue + d_dev;
        let exit = done + d_up;
        self.workers[worker].take(run, exit + 1);
        HostPlan {
            host_off,
            bytes,
            write,
            worker,
            run,
            enter,
            queued,
            issue,
            done,
            exit,
        }
    }

    /// Emit the worker side of a host IO: its bio gets a request of its own, or
    /// (`merged`) back-merges into the one ahead of it. `plugged`: (insert time, request
    /// bytes) when this IO's request is held on the plug list and inserted only after
    /// another bio merged into it, so its insert carries both.
    fn emit_host(
        &mut self,
        h: &HostPlan,
        aiocb: u64,
        lose_exit: bool,
        merged: bool,
        plugged: Option<(u64, u64)>,
    ) {
        let tid = WORKER0 + h.worker as u32;
        let cpu = 1;
        self.ev(
            h.run,
            tid,
            cpu,
            EventKind::Qemu,
            q::HANDLE_AIOCB_RW,
            [
                aiocb,
                h.host_off,
                h.bytes,
                (FD << 32) | if h.write { 2 } else { 1 },
            ],
        );
        let sc = if h.write { 2 } else { 1 };
        self.ev(
            h.enter,
            tid,
            cpu,
            EventKind::SysEnter,
            sc,
            [FD, h.host_off, h.bytes, 0x7f00_0000],
        );
        let kiocb = self.kiocbs.get();
        self.ev(
            h.enter + 200,
            tid,
            cpu,
            EventKind::DioBegin,
            0,
            [kiocb, h.host_off, h.bytes, INODE],
        );
        let disk_byte = FS_OFFSET + h.host_off + PART_START;
        let sector = disk_byte / 512;
        let op = h.write as u8;
        let bio = self.bios.get();
        let part = part_dev() as u64;
        let disk = disk_dev() as u64;
        self.ev(
            h.queued,
            tid,
            cpu,
            EventKind::BioQueue,
            op,
            [bio, sector, (part << 32) | h.bytes, 0],
        );
        self.ev(
            h.queued + 50,
            tid,
            cpu,
            EventKind::BioRemap,
            op,
            [bio, sector, (disk << 32) | part, sector - PART_START / 512],
        );
        self.ev(
            h.queued + 100,
            tid,
            cpu,
            EventKind::BioQueue,
            op,
            [bio, sector, (disk << 32) | h.bytes, 0],
        );
        match merged {
            false => {
                let rq = self.rqs.get();
                let (insert, rq_bytes) = plugged.unwrap_or((h.queued + 300, h.bytes));
                self.ev(
                    insert,
                    tid,
                    cpu,
                    EventKind::RqInsert,
                    op,
                    [rq, sector, (disk << 32) | rq_bytes, bio],
                );
                self.ev(
                    h.issue,
                    tid,
                    cpu,
                    EventKind::RqIssue,
                    op,
                    [rq, sector, (disk << 32) | rq_bytes, bio],
                );
                let icpu = self.irq_cpu;
                self.irq_cpu ^= 1;
                self.ev(
                    h.done,
                    0,
                    icpu,
                    EventKind::RqComplete,
                    op,
                    [rq, sector, (disk << 32) | rq_bytes, rq_bytes],
                );
                self.free_at(h.done + 1, 5, rq);
            }
            true => {
                // Back-merged into the request ahead of it (emitted by the caller).
                self.ev(
                    h.queued + 200,
                    tid,
                    cpu,
                    EventKind::BioMerge,
                    op,
                    [bio, sector, (disk << 32) | h.bytes, 1],
                );
            }
        }
        self.free_at(h.done + 1, 4, bio);
        self.ev(
            h.done + 500,
            tid,
            cpu,
            EventKind::DioComplete,
            0,
            [kiocb, h.bytes, 0, 0],
        );
        self.free_at(h.done + 501, 3, kiocb);
        if lose_exit {
            self.stats.lost += 1;
        } else {
            self.ev(h.exit, tid, cpu, EventKind::SysExit, sc, [h.bytes, 0, 0, 0]);
        }
    }

    /// A worker free for all of `[s, e)`; a new one if none is.
    fn reserve(&mut self, s: u64, e: u64) -> usize {
        let w = (0..self.workers.len())
            .find(|&w| self.workers[w].slot(s, e - s) == s)
            .unwrap_or_else(|| {
                self.workers.push(Busy::default());
                self.workers.len() - 1
            });
        self.workers[w].take(s, e);
        w
    }

    /// Two adjacent 4 KiB IOs whose bios meet in one block request: the second's bio
    /// is queued while the first's request waits, and back-merges into it.
    #[allow(clippy::too_many_arguments)]
    fn plan_merge(
        &mut self,
        ready1: u64,
        ready2: u64,
        off1: u64,
        off2: u64,
        bytes: u64,
        write1: bool,
        write2: bool,
    ) -> (HostPlan, HostPlan) {
        let r = &mut self.rng;
        let run1 = ready1 + r.range(2_000, 6_000);
        let enter1 = run1 + r.range(300, 900);
        let queued1 = enter1 + r.range(1_000, 4_000);
        let run2 = ready2 + r.range(2_000, 6_000);
        let enter2 = run2 + r.range(300, 900);
        let queued2 = (enter2 + r.range(1_000, 4_000)).max(queued1 + 400);
        let issue = queued2 + 1_100 + r.range(0, 5_000);
        let done = issue + r.range(20_000, 100_000);
        let (exit1, exit2) = (done + 3_000, done + 4_000);
        let w1 = self.reserve(run1, exit1 + 1);
        let w2 = self.reserve(run2, exit2 + 1);
        let plan = |host_off, write, worker, run, enter, queued, exit| HostPlan {
            host_off,
            bytes,
            write,
            worker,
            run,
            enter,
            queued,
            issue,
            done,
            exit,
        };
        (
            plan(off1, write1, w1, run1, enter1, queued1, exit1),
            plan(off2, write2, w2, run2, enter2, queued2, exit2),
        )
    }

    /// The QEMU thread: a burst of `n` events starting no earlier than `at`.
    fn slot(&mut self, at: u64, n: u64) -> u64 {
        let len = n * 300 + 100;
        let s = self.iothread.slot(at, len);
        self.iothread.take(s, s + len);
        s
    }
}

/// Write a synthetic trace to `out`; `truth` gets each IO's true story.
/// When the synthetic recording began (CLOCK_MONOTONIC): its first IO comes just
/// after.
pub const START_NS: u64 = 1_000_000_000;

pub fn generate<W: Write>(
    cfg: &SynthConfig,
    out: W,
    mut truth: impl FnMut(Truth),
) -> std::io::Result<(W, SynthStats)> {
    let header = header();
    let mut g = Gen {
        rng: Rng(cfg.seed),
        out: TraceWriter::new(out, &header)?,
        heap: BinaryHeap::new(),
        seq: 0,
        iothread: Busy::default(),
        workers: (0..cfg.workers.max(2)).map(|_| Busy::default()).collect(),
        irq_cpu: 0,
        reqs: Pool::new(0x5555_0000_0000),
        qiovs: Pool::new(0x7fff_0000_0000),
        aiocbs: Pool::new(0x5555_1000_0000),
        kiocbs: Pool::new(0xffff_c900_0000_0000),
        bios: Pool::new(0xffff_8881_0000_0000),
        rqs: Pool::new(0xffff_8882_0000_0000),
        frees: BinaryHeap::new(),
        stats: SynthStats::default(),
        cycle: 0,
        pending: Vec::new(),
        last_ts: 0,
    };
    let every = |n: u64, i: u64| n != 0 && i % n == n - 1;
    let mean_latency = 150_000u64;
    let gap = mean_latency / cfg.queue_depth.max(1) as u64;
    let mut t = START_NS;
    let mut last_parse = 0u64;
    let mut i = 0u64;
    while i < cfg.ios {
        // Every doorbell comes after the requests of the one before it were parsed, so
        // "the last doorbell before the parse" is each request's own.
        t = (t + g.rng.range(gap / 2, gap * 3 / 2)).max(last_parse + 1);
        let merge_pair = every(cfg.merge_every, i) && i + 1 < cfg.ios;
        let n = if merge_pair { 2 } else { 1 };
        let host_base = (g.rng.range(16, (IMAGE_LEN / CLUSTER) - 16)) * CLUSTER;
        g.ev(t, VCPU, 1, EventKind::KvmMmio, 0, [0xfe00_3000, 0, 0, 0]);
        // (ready, host offset, bytes, write, aiocb, lose exit) per host IO.
        let mut kernel_todo: Vec<(u64, u64, u64, bool, u64, bool)> = Vec::new();
        let mut truths = Vec::new();
        let mut first_write = false;
        for k in 0..n {
            let id = i + k;
            let drawn = g.rng.next() % 3 == 0;
            // A bio merges only into a request of its own operation.
            let write = if merge_pair && k == 1 {
                first_write
            } else {
                drawn
            };
            first_write = write;
            let bytes = if merge_pair {
                4096
            } else {
                4096 << (g.rng.next() % 5)
            };
            // Guest offsets are unique per IO so tests can match rows to truths.
            let offset = id * 2 * CLUSTER + if merge_pair { k * 4096 } else { 0 };
            let req = g.reqs.get();
            let qiov = g.qiovs.get();
            let l2_miss = every(cfg.l2_miss_every, id);
            let split = every(cfg.split_every, id) && !merge_pair && bytes > 4096;
            let lost = every(cfg.lose_every, id);
            let mut b = Boundaries::new();
            b[Boundary::Notify] = t;
            let front = g.rng.range(3_000, 12_000);
            let burst = g.slot(t + front, 7);
            b[Boundary::Parsed] = burst;
            last_parse = last_parse.max(burst);
            let (aio, co, bdrv, q2) = if write {
                (
                    q::BLK_AIO_PWRITEV,
                    q::BLK_CO_PWRITEV_PART,
                    q::BDRV_CO_PWRITEV_PART,
                    q::QCOW2_CO_PWRITEV_PART,
                )
            } else {
                (
                    q::BLK_AIO_PREADV,
                    q::BLK_CO_PREADV_PART,
                    q::BDRV_CO_PREADV_PART,
                    q::QCOW2_CO_PREADV_PART,
                )
            };
            g.qemu(burst, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]);
            g.qemu(burst + 300, aio, [req, offset, bytes, 0xb1]);
            g.qemu(burst + 600, co, [qiov, offset, bytes, 0xb1]);
            g.qemu(burst + 900, bdrv, [qiov, offset, bytes, 0xc0]);
            g.qemu(burst + 1200, q2, [qiov, offset, bytes, 0xb5]);
            let l2_off = 0x10000 + (offset / (CLUSTER * 8192)) * CLUSTER;
            g.qemu(burst + 1500, q::QCOW2_CACHE_GET, [0xcac4e, l2_off, 0, 0xb5]);
            let mut ready = burst + 1800;
            if l2_miss {
                // The L2 table read: QEMU's own IO inside this request.
                let mq = g.qiovs.get();
                let ma = g.aiocbs.get();
                g.qemu(ready, q::BDRV_CO_PREADV_PART, [mq, l2_off, CLUSTER, 0xf1]);
                g.qemu(ready + 300, q::RAW_CO_PRW, [mq, l2_off, CLUSTER, 1]);
                g.qemu(
                    ready + 600,
                    q::THREAD_POOL_SUBMIT_AIO,
                    [ma, l2_off, CLUSTER, (FD << 32) | 1],
                );
                let h = g.plan_host(ready + 600, l2_off, CLUSTER, false);
                g.emit_host(&h, ma, false, false, None);
                g.free_at(h.run + 1, 2, ma);
                g.free_at(h.exit + 2_000, 1, mq);
                // The coroutine resumes after the read.
                let resume = h.exit + g.rng.range(3_000, 9_000);
                ready = g.slot(resume, 6);
            }
            let pieces: Vec<(u64, u64)> = if split {
                vec![(host_base, bytes / 2), (host_base + 7 * CLUSTER, bytes / 2)]
            } else {
                vec![(host_base + k * 4096, bytes)]
            };
            for (j, &(hoff, len)) in pieces.iter().enumerate() {
                let at = if j == 0 {
                    ready
                } else {
                    g.slot(ready + 1200, 3)
                };
                let aiocb = g.aiocbs.get();
                let ty = if write { 2 } else { 1 };
                g.qemu(at, bdrv, [qiov, hoff, len, 0xf1]);
                g.qemu(at + 300, q::RAW_CO_PRW, [qiov, hoff, len, ty]);
                g.qemu(
                    at + 600,
                    q::THREAD_POOL_SUBMIT_AIO,
                    [aiocb, hoff, len, (FD << 32) | ty],
                );
                kernel_todo.push((at + 600, hoff, len, write, aiocb, lost && j == 0));
            }
            truths.push((
                req,
                qiov,
                b,
                write,
                offset,
                bytes,
                lost,
                split,
                l2_miss,
                pieces.len(),
            ));
        }
        let mut kernel: Vec<HostPlan> = Vec::new();
        if merge_pair {
            let (a, b2) = (kernel_todo[0], kernel_todo[1]);
            let (h1, h2) = g.plan_merge(a.0, b2.0, a.1, b2.1, a.2, a.3, b2.3);
            // Every other pair: the first request is still plugged when the second bio
            // merges, and is inserted (with both bios) after the merge.
            let plugged = (i / cfg.merge_every.max(1)) % 2 == 1;
            let plug = plugged.then_some((h2.queued + 300, h1.bytes + h2.bytes));
            g.emit_host(&h1, a.4, a.5, false, plug);
            g.emit_host(&h2, b2.4, b2.5, true, None);
            g.free_at(h1.run + 1, 2, a.4);
            g.free_at(h2.run + 1, 2, b2.4);
            kernel.push(h1);
            kernel.push(h2);
        } else {
            for &(ready, hoff, len, write, aiocb, lose) in &kernel_todo {
                let h = g.plan_host(ready, hoff, len, write);
                g.emit_host(&h, aiocb, lose, false, None);
                g.free_at(h.run + 1, 2, aiocb);
                kernel.push(h);
            }
        }
        // Completions back in QEMU, and the truths.
        let mut ki = 0;
        for (req, qiov, mut b, write, offset, bytes, lost, split, l2_miss, n) in truths {
            let hs = &kernel[ki..ki + n];
            ki += n;
            b[Boundary::Submitted] = hs.iter().map(|h| h.enter).min().unwrap_or(0);
            b[Boundary::Queued] = hs.iter().map(|h| h.queued).min().unwrap_or(0);
            b[Boundary::Dispatched] = hs.iter().map(|h| h.issue).min().unwrap_or(0);
            b[Boundary::DeviceDone] = hs.iter().map(|h| h.done).max().unwrap_or(0);
            b[Boundary::HostDone] = hs.iter().map(|h| h.exit).max().unwrap_or(0);
            let delay = g.rng.range(4_000, 15_000);
            let back = g.slot(b[Boundary::HostDone] + delay, 3);
            b[Boundary::QemuDone] = back;
            b[Boundary::Completed] = back + 300;
            b[Boundary::Interrupt] = back + 600;
            g.qemu(b[Boundary::QemuDone], q::VIRTIO_RW_COMPLETE, [req, 0, 0, 0]);
            // The guest's request header as QEMU holds it: sector, type (0 IN, 1 OUT).
            g.qemu(
                b[Boundary::Completed],
                q::VIRTIO_REQ_COMPLETE,
                [req, offset / 512, u64::from(write), bytes],
            );
            g.ev(
                b[Boundary::Interrupt],
                IOTHREAD,
                0,
                EventKind::KvmMsi,
                0,
                [0xfee0_0000, 0x4021, 0, 0],
            );
            g.free_at(b[Boundary::Completed] + 1, 0, req);
            g.free_at(b[Boundary::Completed] + 1, 1, qiov);
            g.stats.bytes += bytes;
            truth(Truth {
                write,
                offset,
                bytes,
                b,
                lost,
                split,
                merged: merge_pair,
                l2_miss,
            });
        }
        i += n;
        g.iothread.prune(t.saturating_sub(HORIZON_NS));
        for w in &mut g.workers {
            w.prune(t.saturating_sub(HORIZON_NS));
        }
        g.flush(t.saturating_sub(HORIZON_NS))?;
    }
    g.flush(u64::MAX)?;
    g.drain()?;
    if g.stats.lost > 0 {
        g.out.json_chunk(
            ChunkKind::Losses,
            &Losses {
                by_cpu_and_kind: vec![Lost {
                    kind: EventKind::SysExit as u8,
                    cpu: 1,
                    lost: g.stats.lost,
                }],
                ring_full: g.stats.lost,
                total: g.stats.lost,
                ..Losses::default()
            },
        )?;
    }
    g.out.json_chunk(ChunkKind::Layout, &layout())?;
    let stats = g.stats.clone();
    let w = g.out.finish(&End {
        stop_reason: "synthetic".into(),
        events: stats.events,
        duration_s: g.last_ts.saturating_sub(START_NS) as f64 / 1e9,
        ..End::default()
    })?;
    Ok((w, stats))
}

fn header() -> Header {
    let probe = |name: &str, layer: &str| ProbeStatus {
        name: name.into(),
        layer: layer.into(),
        attach: "synthetic".into(),
        attached: true,
        note: None,
    };
    Header {
        format: Some(1),
        abi: Some(1),
        tool: "viopath synth".into(),
        host: "synthetic".into(),
        clock: "CLOCK_MONOTONIC".into(),
        target: TargetInfo {
            pid: Some(1),
            command: None,
            domain: None,
        },
        probes: vec![
            probe("kvm_fast_mmio", "kvm"),
            probe("kvm_msi_set_irq", "kvm"),
            probe("virtio_blk_handle_request", "virtio"),
            probe("blk_aio_preadv", "qemu-block"),
            probe("qcow2_co_preadv_part", "qcow2"),
            probe("qcow2_co_pwritev_part", "qcow2"),
            probe("raw_co_prw", "file-posix"),
            probe("sys_enter_pread64", "syscall"),
            probe("iomap_dio_rw_begin", "filesystem"),
            probe("block_bio_queue", "block"),
        ],
        devices: vec!["8:1".into(), "8:0".into()],
        monotonic_ns_at_start: Some(START_NS),
        ..Header::default()
    }
}

/// The layout of the synthetic host: the image on a filesystem on sda1, at a fixed
/// offset, and an L2 table every 64 KiB from 64 KiB on.
pub fn layout() -> serde_json::Value {
    let part_byte = FS_OFFSET;
    let disk_byte = FS_OFFSET + PART_START;
    let l2: Vec<serde_json::Value> = (0..16u64)
        .map(|i| json!({"start": 0x10000 + i * CLUSTER, "len": CLUSTER, "kind": "l2_table", "l1_index": i, "guest": i * CLUSTER * 8192}))
        .collect();
    json!({
        "images": [{
            "path": "/synthetic/disk.qcow2",
            "virtual_size": IMAGE_LEN,
            "files": [{"path": "/synthetic/disk.qcow2", "role": "qcow2", "depth": 0}],
            "map": [],
            "reverse": [{"file": "/synthetic/disk.qcow2", "file_len": IMAGE_LEN, "extents": l2}],
            "file_hosts": [{
                "file": "/synthetic/disk.qcow2",
                "len": IMAGE_LEN,
                "host": [{
                    "offset": 0,
                    "len": IMAGE_LEN,
                    "hops": [
                        {"hop": "file", "path": "/synthetic/disk.qcow2", "offset": 0, "state": "mapped"},
                        {"hop": "device", "device": "/dev/sda1", "dev": "8:1", "sector": part_byte / 512, "byte": part_byte, "via": "filesystem"},
                        {"hop": "device", "device": "/dev/sda", "dev": "8:0", "sector": disk_byte / 512, "byte": disk_byte, "via": "partition"}
                    ]
                }]
            }]
        }],
        "devices": [
            {"id": "8:1", "name": "sda1", "kind": {"kind": "partition", "parent": "8:0", "start": PART_START / 512}},
            {"id": "8:0", "name": "sda", "kind": {"kind": "disk"}}
        ],
        "errors": []
    })
}
