//! The join's tests, one file per handler module; the sinks and event builders they
//! share are here.

mod block;
mod cache;
mod finish;
mod host;
mod qemu;
mod scsi;
mod state;
mod stripped;
mod vms;

use super::row::*;
use super::slab::Ref;
use super::state::*;
use crate::layout::{DevRanges, Layout};
use viopath_layouts::{GuestOffset, HostFileOffset};

use viopath_probes::abi::{EventKind, RawEvent, kernel_dev, qemu_probe as q};

struct Nothing;

impl Sink for Nothing {
    fn io(&mut self, _: &IoRow) {}
    fn other(&mut self, _: &OtherIo) {}
}

#[derive(Default)]
struct Others(Vec<OtherIo>);

impl Sink for Others {
    fn io(&mut self, _: &IoRow) {}
    fn other(&mut self, o: &OtherIo) {
        self.0.push(o.clone());
    }
}

fn ev(ts: u64, tid: u32, kind: EventKind, a: [u64; 4]) -> RawEvent {
    RawEvent {
        ts,
        tid,
        kind: kind as u8,
        sub: 0,
        cpu: 0,
        a,
    }
}

/// A bio queued at `ts` and the block request made of it, inserted and issued.
fn block_request<S: Sink>(
    j: &mut Join<S>,
    ts: u64,
    tid: u32,
    bio: u64,
    rq: u64,
    sector: u64,
    dev_bytes: u64,
) {
    j.event(&ev(
        ts,
        tid,
        EventKind::BioQueue,
        [bio, sector, dev_bytes, 0],
    ));
    j.event(&ev(
        ts + 100,
        tid,
        EventKind::RqInsert,
        [rq, sector, dev_bytes, bio],
    ));
    j.event(&ev(
        ts + 200,
        tid,
        EventKind::RqIssue,
        [rq, sector, dev_bytes, bio],
    ));
}

/// Two image files (inodes 11 and 12) on one partition of sda, each 1 GiB, the
/// second right after the first.
fn two_file_layout(with_inodes: bool) -> Layout {
    let file = |name: &str, ino: u64, part_byte: u64| {
        let disk_byte = part_byte + (2048 * 512);
        serde_json::json!({
            "file": name,
            "len": 1u64 << 30,
            "ino": if with_inodes { Some(ino) } else { None },
            "host": [{"offset": 0, "len": 1u64 << 30, "hops": [
                {"hop": "file", "path": name, "offset": 0, "state": "mapped"},
                {"hop": "device", "device": "/dev/sda1", "dev": "8:1", "byte": part_byte, "via": "filesystem"},
                {"hop": "device", "device": "/dev/sda", "dev": "8:0", "byte": disk_byte, "via": "partition"}
            ]}]
        })
    };
    Layout::from_json(&serde_json::json!({
        "images": [{
            "path": "/vm/a.qcow2",
            "file_hosts": [file("/vm/a.qcow2", 11, 1 << 30), file("/vm/b.qcow2", 12, 2 << 30)]
        }],
        "devices": []
    }))
}

#[derive(Default)]
struct Rows(Vec<IoRow>);

impl Sink for Rows {
    fn io(&mut self, r: &IoRow) {
        self.0.push(r.clone());
    }
    fn other(&mut self, _: &OtherIo) {}
}

#[derive(Default)]
struct All(Vec<IoRow>, Vec<OtherIo>);

impl Sink for All {
    fn io(&mut self, r: &IoRow) {
        self.0.push(r.clone());
    }
    fn other(&mut self, o: &OtherIo) {
        self.1.push(o.clone());
    }
}

fn sub_ev(ts: u64, tid: u32, kind: EventKind, sub: u8, a: [u64; 4]) -> RawEvent {
    RawEvent {
        sub,
        ..ev(ts, tid, kind, a)
    }
}

/// A guest's flush on iothread 1 (virtio type 4), between a read already handed to
/// the block layer and a discard whose job was made: its thread-pool flush job of
/// fd 8 runs as fdatasync(8) on worker 3, which writes a metadata block and queues
/// a flush bio; the block layer's flush request (no bio) is issued by kworker 4.
/// Meanwhile QEMU flushes fd 9 on its own (no guest request) on worker 2, begun
/// first: jobs pair with syscalls by descriptor, not by order.
fn guest_flush(flush_syscalls: bool) -> All {
    let layout = Layout::default();
    let cfg = JoinConfig {
        flush_syscalls,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let q = |ts, tid, sub, a| sub_ev(ts, tid, EventKind::Qemu, sub, a);
    let job = |fd: u64, t: u64| fd << 32 | t;
    // The read: parsed, then in the block layer.
    j.event(&q(1_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xa1, 0, 0, 0]));
    j.event(&q(1_100, 1, q::BLK_AIO_PREADV, [0xa1, 4096, 4096, 0]));
    // The discard, its job made (not followed into the kernel).
    j.event(&q(1_200, 1, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
    j.event(&q(
        1_300,
        1,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0, 0, job(8, 0x10)],
    ));
    // The flush, and its job.
    j.event(&q(2_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
    j.event(&q(
        2_500,
        1,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe2, 0, 0, job(8, q::AIO_FLUSH)],
    ));
    j.event(&q(
        2_600,
        6,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe3, 0, 0, job(9, q::AIO_FLUSH)],
    ));
    j.event(&sub_ev(2_700, 2, EventKind::SysEnter, 11, [9, 0, 0, 0]));
    j.event(&sub_ev(3_000, 3, EventKind::SysEnter, 11, [8, 0, 0, 0]));
    // Its metadata write, then the flush bio and the device's flush request.
    block_request(&mut j, 3_400, 3, 0xb1, 0x71, 5_000, dev | 4096);
    j.event(&ev(
        4_000,
        0,
        EventKind::RqComplete,
        [0x71, 5_000, dev | 4096, 4096],
    ));
    j.event(&ev(4_100, 3, EventKind::BioQueue, [0xb2, 0, dev, 0]));
    j.event(&ev(4_300, 4, EventKind::RqIssue, [0x72, u64::MAX, dev, 0]));
    j.event(&ev(
        9_000,
        4,
        EventKind::RqComplete,
        [0x72, u64::MAX, dev, 0],
    ));
    j.event(&sub_ev(9_500, 3, EventKind::SysExit, 11, [0, 0, 0, 0]));
    j.event(&sub_ev(9_600, 2, EventKind::SysExit, 11, [0, 0, 0, 0]));
    j.event(&q(9_900, 1, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
    let (sink, _) = j.finish();
    sink
}

/// The row of `op` (the only one), or a panic listing all.
fn row_of(rows: &[IoRow], op: Op) -> &IoRow {
    rows.iter()
        .find(|r| r.op == op)
        .unwrap_or_else(|| panic!("{rows:?}"))
}

/// A thread-pool worker (thread 3) running job `aiocb`: syscall `sc` on `fd`, 100 to
/// 500 ns after `ts`.
fn pool_worker(j: &mut Join<'_, All>, ts: u64, aiocb: u64, sc: u8, fd: u64) {
    j.event(&sub_ev(
        ts,
        3,
        EventKind::Qemu,
        q::HANDLE_AIOCB_RW,
        [aiocb, 0, 0, 0],
    ));
    j.event(&sub_ev(ts + 100, 3, EventKind::SysEnter, sc, [fd, 0, 0, 0]));
    j.event(&sub_ev(ts + 500, 3, EventKind::SysExit, sc, [0; 4]));
}

/// A join awaiting interrupts that has seen a guest write of 4 KiB at 0x10_0000
/// through qcow2 on thread 1 (VirtIOBlockReq 0xd1): its L2 table, at 0x1_0000, was in
/// the cache (no read follows the lookup); its data went to 0x5_0000 by a thread-pool
/// job (2_000..2_500), and it was answered at 3_100, its interrupt not yet seen.
fn answered_write_after_a_cache_hit(layout: &Layout) -> Join<'_, All> {
    let cfg = JoinConfig {
        await_msi: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(layout, All::default(), cfg);
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    let (off, len) = (0x10_0000, 4096);
    j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
    j.event(&q(1_100, q::BLK_AIO_PWRITEV, [0xd1, off, len, 0xb1]));
    j.event(&q(1_200, q::BLK_CO_PWRITEV_PART, [0x9a, off, len, 0xb1]));
    j.event(&q(1_300, q::BDRV_CO_PWRITEV_PART, [0x9a, off, len, 0xc0]));
    j.event(&q(1_400, q::QCOW2_CO_PWRITEV_PART, [0x9a, off, len, 0xb5]));
    j.event(&q(1_500, q::QCOW2_CACHE_GET, [0xcac4e, 0x1_0000, 0, 0xb5]));
    j.event(&q(
        1_600,
        q::BDRV_CO_PWRITEV_PART,
        [0x9a, 0x5_0000, len, 0xf1],
    ));
    j.event(&q(1_700, q::RAW_CO_PRW, [0x9a, 0x5_0000, len, 2]));
    let job = 8 << 32 | q::AIO_WRITE;
    j.event(&q(
        1_800,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xa1, 0x5_0000, len, job],
    ));
    pool_worker(&mut j, 2_000, 0xa1, 2, 8);
    j.event(&q(3_000, q::VIRTIO_RW_COMPLETE, [0xd1, 0, 0, 0]));
    j.event(&q(3_100, q::VIRTIO_REQ_COMPLETE, [0xd1, off / 512, 1, len]));
    j
}

/// A VM with two disks, each one image file (inodes 11 and 12) on /dev/sda.
fn two_disks() -> Layout {
    let file = |name: &str, ino: u64| {
        serde_json::json!({"file": name, "len": 1u64 << 30, "ino": ino, "host": [
        {"offset": 0, "len": 1u64 << 30, "hops": [
            {"hop": "file", "path": name, "offset": 0, "state": "mapped"},
            {"hop": "device", "device": "/dev/sda", "dev": "8:0", "byte": ino << 30, "via": "filesystem"}
        ]}]})
    };
    let layout = Layout::from_json(&serde_json::json!({
        "images": [
            {"path": "/vm/a.qcow2", "file_hosts": [file("/vm/a.qcow2", 11)]},
            {"path": "/vm/b.qcow2", "file_hosts": [file("/vm/b.qcow2", 12)]}
        ],
        "devices": []
    }));
    assert_eq!(layout.disks.len(), 2);
    layout
}

/// Inside a kernel worker's fsync (thread 51): the flush bio queued at 2 100, the
/// device's flush request issued at 2 200 and done at 5 000.
fn worker_flushes_device<S: Sink>(j: &mut Join<S>, dev: u64) {
    j.event(&ev(2_100, 51, EventKind::BioQueue, [0xb1, 0, dev, 0]));
    j.event(&ev(2_200, 60, EventKind::RqIssue, [0x71, u64::MAX, dev, 0]));
    j.event(&ev(
        5_000,
        0,
        EventKind::RqComplete,
        [0x71, u64::MAX, dev, 0],
    ));
}

/// qemu-io's aio_read on thread 5: blk_aio_preadv with its context as opaque, the
/// data read by thread-pool worker 9 (pread64 returns 25 µs in), then, `cb` after
/// `t0`, qemu-io's callback with that context. Request `n` has its own context and
/// qiov pointers.
fn qemu_io_aio_read<S: Sink>(j: &mut Join<S>, n: u64, t0: u64, cb: Option<u64>) {
    qemu_io_aio_read_of(j, n, t0, cb, None)
}

/// [`qemu_io_aio_read`], its `pread64` a direct IO of the file with inode `ino`
/// when given (the kernel names the file).
fn qemu_io_aio_read_of<S: Sink>(
    j: &mut Join<S>,
    n: u64,
    t0: u64,
    cb: Option<u64>,
    ino: Option<u64>,
) {
    qemu_io_aio_read_on(j, n, t0, cb, ino, 0xc1);
}

/// [`qemu_io_aio_read_of`] from the drive whose root BdrvChild is `child`.
fn qemu_io_aio_read_on<S: Sink>(
    j: &mut Join<S>,
    n: u64,
    t0: u64,
    cb: Option<u64>,
    ino: Option<u64>,
    child: u64,
) {
    let qemu = |ts: u64, tid: u32, sub: u8, a: [u64; 4]| RawEvent {
        sub,
        ..ev(ts, tid, EventKind::Qemu, a)
    };
    let sys = |ts: u64, kind: EventKind, a: [u64; 4]| RawEvent {
        sub: 1, // pread64
        ..ev(ts, 9, kind, a)
    };
    let (ctx, qiov, aiocb, off, len) = QEMU_IO_READ;
    let (ctx, qiov) = (ctx + n * 0x100, qiov + n * 0x100);
    j.event(&qemu(t0, 5, q::BLK_AIO_PREADV, [ctx, off, len, 0xb1]));
    j.event(&qemu(
        t0 + 1_000,
        5,
        q::BDRV_CO_PREADV_PART,
        [qiov, off, len, child],
    ));
    j.event(&qemu(
        t0 + 2_000,
        5,
        q::RAW_CO_PRW,
        [qiov, off, len, q::AIO_READ],
    ));
    j.event(&qemu(
        t0 + 3_000,
        5,
        q::THREAD_POOL_SUBMIT_AIO,
        [aiocb, off, len, q::AIO_READ],
    ));
    j.event(&qemu(
        t0 + 4_000,
        9,
        q::HANDLE_AIOCB_RW,
        [aiocb, off, len, q::AIO_READ],
    ));
    j.event(&sys(t0 + 5_000, EventKind::SysEnter, [3, off, len, 0]));
    if let Some(ino) = ino {
        j.event(&ev(
            t0 + 6_000,
            9,
            EventKind::DioBegin,
            [0xa000 + n, off, len, ino],
        ));
    }
    j.event(&sys(t0 + 25_000, EventKind::SysExit, [len, 0, 0, 0]));
    if let Some(cb) = cb {
        j.event(&qemu(t0 + cb, 5, q::QEMU_IO_AIO_READ_DONE, [ctx, 0, 0, 0]));
    }
}

/// (context, qiov, aiocb, offset, length) of [`qemu_io_aio_read`].
const QEMU_IO_READ: (u64, u64, u64, u64, u64) =
    (0x5555_0000, 0x5555_1000, 0x7f00_2000, 0x10000, 4096);

/// Another process's events on thread 77 every 500 µs in `[from, to)`: the trace's
/// clock runs on while QEMU's threads are off the CPU.
fn others<S: Sink>(j: &mut Join<S>, from: u64, to: u64) {
    for ts in (from..to).step_by(500_000) {
        j.event(&ev(ts, 77, EventKind::BioComplete, [0xdead_0000, 0, 0, 0]));
    }
}
