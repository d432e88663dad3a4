//! The join: events in timestamp order in, one [`IoRow`] per guest-visible IO out, plus
//! [`OtherIo`] for IO no guest request caused. Streaming: state is kept only for
//! requests in flight and dropped when they finish, so memory follows the queue depth,
//! not the trace length.
//!
//! How events find their request (docs/layers.md has the full rules):
//! - inside QEMU by pointers: the VirtIOBlockReq (virtio-scsi: the SCSIRequest, and
//!   the DMA request moving its data), then the QEMUIOVector every block
//!   layer of one request shares, the thread-pool job, io_uring user_data; qcow2
//!   metadata reads by the L2 cache lookup that precedes them on the same thread;
//! - host syscalls by the thread-pool worker's thread id, or by offset and length;
//! - direct IO by position and length, then by kiocb;
//! - bios and requests by address: each host IO in flight registers the sectors it
//!   covers on every device below the image file (from the layout), and a bio queued on
//!   one of those sectors while it is in flight belongs to it; after that, by bio and
//!   request pointer until completion. Merged requests belong to every IO they carry.
//!
//! Every key is removed when its request ends, so a reused pointer starts fresh.
//!
//! The files follow docs/layers.md's sections, one owner each: `qemu` (QEMU's
//! probes), `scsi` (virtio-scsi's), `stripped` (virtio-blk from exported functions
//! alone), `host` (syscalls, io_uring, linux-aio, direct IO, fsync), `block` (bios
//! and requests), `finish` (every way a request ends, and the rows), over `state`
//! (the shared records and the [`Join`] itself), `row` (what comes out) and `slab`.
//! Calls run one way: scsi → qemu → stripped/host → finish → state, block → finish; this file only
//! dispatches.

mod block;
mod finish;
mod host;
mod qemu;
mod row;
mod scsi;
mod slab;
mod state;
mod stripped;
#[cfg(test)]
mod tests;
mod vms;

pub use row::{
    IoRow, Op, OtherClass, OtherIo, Sink, Source, flag_names, flags, reason_names, reasons,
};
pub use slab::IdHasher;
pub use state::{IDLE_NS, Join, JoinConfig, JoinStats, STALE_NS};

use crate::layout::Layout;
use slab::{Map, Slab};
use state::Threads;
use std::collections::VecDeque;
use viopath_probes::abi::{EventKind, RawEvent, qemu_probe as q};

/// An event's kind, or for a QEMU event its probe, as one number to dispatch on: one
/// jump table for both, so a QEMU event (half of them) takes one indirect jump, not
/// two (with the thread cache, a tenth off the join's time: docs/benchmarks.md).
mod code {
    use super::q;
    pub const QEMU: u16 = 256;
    pub const QEMU_LAST: u16 = QEMU + u8::MAX as u16;
    const fn qemu(probe: u8) -> u16 {
        QEMU + probe as u16
    }
    pub const VIRTIO_HANDLE_REQUEST: u16 = qemu(q::VIRTIO_HANDLE_REQUEST);
    pub const VIRTIO_RW_COMPLETE: u16 = qemu(q::VIRTIO_RW_COMPLETE);
    pub const VIRTIO_REQ_COMPLETE: u16 = qemu(q::VIRTIO_REQ_COMPLETE);
    pub const BLK_AIO_PREADV: u16 = qemu(q::BLK_AIO_PREADV);
    pub const BLK_AIO_PWRITEV: u16 = qemu(q::BLK_AIO_PWRITEV);
    pub const BLK_CO_PREADV_PART: u16 = qemu(q::BLK_CO_PREADV_PART);
    pub const BLK_CO_PWRITEV_PART: u16 = qemu(q::BLK_CO_PWRITEV_PART);
    pub const BDRV_CO_PREADV_PART: u16 = qemu(q::BDRV_CO_PREADV_PART);
    pub const BDRV_CO_PWRITEV_PART: u16 = qemu(q::BDRV_CO_PWRITEV_PART);
    pub const QCOW2_CO_PREADV_PART: u16 = qemu(q::QCOW2_CO_PREADV_PART);
    pub const QCOW2_CO_PWRITEV_PART: u16 = qemu(q::QCOW2_CO_PWRITEV_PART);
    pub const BDRV_CO_PDISCARD: u16 = qemu(q::BDRV_CO_PDISCARD);
    pub const THROTTLE_INTERCEPT: u16 = qemu(q::THROTTLE_INTERCEPT);
    pub const BLK_AIO_FLUSH: u16 = qemu(q::BLK_AIO_FLUSH);
    pub const QCOW2_CACHE_GET: u16 = qemu(q::QCOW2_CACHE_GET);
    pub const RAW_CO_PRW: u16 = qemu(q::RAW_CO_PRW);
    pub const THREAD_POOL_SUBMIT_AIO: u16 = qemu(q::THREAD_POOL_SUBMIT_AIO);
    pub const HANDLE_AIOCB_RW: u16 = qemu(q::HANDLE_AIOCB_RW);
    pub const LAIO_CO_SUBMIT: u16 = qemu(q::LAIO_CO_SUBMIT);
    pub const LURING_CO_SUBMIT: u16 = qemu(q::LURING_CO_SUBMIT);
    pub const QEMU_IO_AIO_READ_DONE: u16 = qemu(q::QEMU_IO_AIO_READ_DONE);
    pub const QEMU_IO_AIO_WRITE_DONE: u16 = qemu(q::QEMU_IO_AIO_WRITE_DONE);
    pub const SCSI_REQ_ENQUEUE: u16 = qemu(q::SCSI_REQ_ENQUEUE);
    pub const VIRTIO_SCSI_COMPLETE: u16 = qemu(q::VIRTIO_SCSI_COMPLETE);
    pub const BLK_AIO_PDISCARD: u16 = qemu(q::BLK_AIO_PDISCARD);
    pub const BLK_AIO_PWRITE_ZEROES: u16 = qemu(q::BLK_AIO_PWRITE_ZEROES);
    pub const SCSI_REQ_COMPLETE: u16 = qemu(q::SCSI_REQ_COMPLETE);
}

impl<'l, S: Sink> Join<'l, S> {
    pub fn new(layout: &'l Layout, sink: S, cfg: JoinConfig) -> Self {
        Join {
            layout,
            sink,
            stats: JoinStats::default(),
            cfg,
            roots: Slab::new(),
            hios: Slab::new(),
            active: Vec::new(),
            inflight: Vec::new(),
            inflight_at: Vec::new(),
            virtio: Map::default(),
            aio_opaque: Map::default(),
            scsi_dma: Map::default(),
            lun_disks: Vec::new(),
            qiov: Map::default(),
            file_children: Map::default(),
            aiocb: Map::default(),
            threads: Threads::default(),
            uring_wait: VecDeque::new(),
            flush_wait: VecDeque::new(),
            sync_wait: VecDeque::new(),
            falloc_wait: VecDeque::new(),
            fd_disks: Map::default(),
            child_disks: Map::default(),
            preflush: Vec::new(),
            syncing: Vec::new(),
            fills: VecDeque::new(),
            readahead: state::ReadAheads::default(),
            throttled: VecDeque::new(),
            user_data: Map::default(),
            kiocb: Map::default(),
            bios: Map::default(),
            entered: Map::default(),
            path_disks: Map::default(),
            reqs: Map::default(),
            plugged: Vec::new(),
            others: Slab::new(),
            other_ids: Map::default(),
            next_other: 0,
            msi_wait: Vec::new(),
            last_notify: vec![0; layout.vms.len().max(1)],
            vms: vms::Vms::new(&layout.vms),
            cur_vm: 0,
            next_id: 0,
            now: 0,
            next_sweep: 0,
        }
    }

    /// Requests, host IOs, bios, block requests and thread contexts currently held.
    pub fn in_flight(&self) -> usize {
        self.roots.live + self.hios.live + self.bios.len() + self.reqs.len() + self.threads.len()
    }

    pub fn event(&mut self, e: &RawEvent) {
        self.stats.events += 1;
        self.now = self.now.max(e.ts);
        if self.now >= self.next_sweep {
            self.sweep_now();
        }
        if self.vms.many {
            // A VM whose process exited: what it had in flight is cut by its end.
            while let Some(vm) = self.vms.ended_before(e.ts) {
                self.cut_in_flight(Some(vm));
            }
            let (vm, tagged) = self.vms.tag(e);
            self.cur_vm = vm;
            self.stats.events_of_unknown_threads = self.vms.unattributed;
            self.dispatch(&tagged);
        } else {
            self.dispatch(e);
        }
    }

    fn dispatch(&mut self, e: &RawEvent) {
        // Block events (kinds 1 to 9) on a path disk are its head disk's.
        let on_head;
        let e = if e.kind == EventKind::BioRemap as u8
            || (!self.path_disks.is_empty() && e.kind <= 9)
        {
            on_head = self.on_head_disk(e);
            &on_head
        } else {
            e
        };
        const QEMU: u8 = EventKind::Qemu as u8;
        const SYS_ENTER: u16 = EventKind::SysEnter as u16;
        const SYS_EXIT: u16 = EventKind::SysExit as u16;
        const BIO_QUEUE: u16 = EventKind::BioQueue as u16;
        const BIO_REMAP: u16 = EventKind::BioRemap as u16;
        const BIO_SPLIT: u16 = EventKind::BioSplit as u16;
        const BIO_MERGE: u16 = EventKind::BioMerge as u16;
        const BIO_COMPLETE: u16 = EventKind::BioComplete as u16;
        const RQ_INSERT: u16 = EventKind::RqInsert as u16;
        const RQ_ISSUE: u16 = EventKind::RqIssue as u16;
        const RQ_COMPLETE: u16 = EventKind::RqComplete as u16;
        const RQ_MERGE: u16 = EventKind::RqMerge as u16;
        const URING_SUBMIT: u16 = EventKind::UringSubmit as u16;
        const URING_COMPLETE: u16 = EventKind::UringComplete as u16;
        const DIO_BEGIN: u16 = EventKind::DioBegin as u16;
        const DIO_MAP: u16 = EventKind::DioMap as u16;
        const DIO_COMPLETE: u16 = EventKind::DioComplete as u16;
        const FS_ENTER: u16 = EventKind::FsEnter as u16;
        const FS_EXIT: u16 = EventKind::FsExit as u16;
        const KVM_MMIO: u16 = EventKind::KvmMmio as u16;
        const KVM_MSI: u16 = EventKind::KvmMsi as u16;
        const DM_SUBMIT: u16 = EventKind::DmSubmit as u16;
        const DM_ENDIO: u16 = EventKind::DmEndio as u16;
        const FS_SYNC: u16 = EventKind::FsSync as u16;
        const DIRTY_THROTTLE: u16 = EventKind::DirtyThrottle as u16;
        const THREAD: u16 = EventKind::Thread as u16;
        // QEMU's probe is dispatched in the same jump table as the event kind (see
        // `code`); each handler is out of line, so this saves no registers of its own.
        let code = if e.kind == QEMU {
            code::QEMU + e.sub as u16
        } else {
            e.kind as u16
        };
        match code {
            code::VIRTIO_HANDLE_REQUEST => self.virtio_handle_request(e),
            code::VIRTIO_RW_COMPLETE => self.virtio_rw_complete(e),
            code::VIRTIO_REQ_COMPLETE => self.virtio_req_complete(e),
            code::BLK_AIO_PREADV => self.blk_aio(e, Op::Read),
            code::BLK_AIO_PWRITEV => self.blk_aio(e, Op::Write),
            code::BLK_CO_PREADV_PART
            | code::BLK_CO_PWRITEV_PART
            | code::BDRV_CO_PREADV_PART
            | code::BDRV_CO_PWRITEV_PART
            | code::QCOW2_CO_PREADV_PART
            | code::QCOW2_CO_PWRITEV_PART => self.qemu_block(e),
            code::BDRV_CO_PDISCARD => self.bdrv_co_pdiscard(e),
            code::THROTTLE_INTERCEPT => self.throttle_intercept(e),
            code::BLK_AIO_FLUSH => self.blk_aio_flush(e),
            code::QCOW2_CACHE_GET => self.qcow2_cache_get(e),
            code::RAW_CO_PRW => self.raw_co_prw(e),
            code::THREAD_POOL_SUBMIT_AIO => self.thread_pool_submit_aio(e),
            code::HANDLE_AIOCB_RW => self.handle_aiocb_rw(e),
            code::LAIO_CO_SUBMIT => self.laio_co_submit(e),
            code::LURING_CO_SUBMIT => self.luring_co_submit(e),
            code::QEMU_IO_AIO_READ_DONE | code::QEMU_IO_AIO_WRITE_DONE => self.qemu_io_aio_done(e),
            code::SCSI_REQ_ENQUEUE => self.scsi_req_enqueue(e),
            code::VIRTIO_SCSI_COMPLETE => self.virtio_scsi_complete(e),
            code::SCSI_REQ_COMPLETE => self.scsi_req_complete(e),
            code::BLK_AIO_PDISCARD => self.blk_aio_nodata(e, Op::Discard),
            code::BLK_AIO_PWRITE_ZEROES => self.blk_aio_nodata(e, Op::WriteZeroes),
            // A probe this join does not use (a newer recorder's): ignored, as before
            // the probes shared this table, not counted as an unknown event.
            code::QEMU..=code::QEMU_LAST => {}
            SYS_ENTER => self.sys_enter(e),
            SYS_EXIT => self.sys_exit(e),
            BIO_QUEUE => self.bio_queue(e),
            BIO_REMAP => self.bio_remap(e),
            BIO_SPLIT => self.bio_split(e),
            BIO_MERGE => self.bio_merge(e),
            BIO_COMPLETE => self.bio_complete(e),
            RQ_INSERT | RQ_ISSUE => self.rq_start(e),
            RQ_COMPLETE => self.rq_complete(e),
            RQ_MERGE => self.rq_merge(e),
            URING_SUBMIT => self.uring_submit(e),
            URING_COMPLETE => self.uring_complete(e),
            DIO_BEGIN | FS_ENTER => self.dio_begin(e),
            DIO_COMPLETE => self.dio_complete(e),
            KVM_MMIO => {
                if let Some(n) = self.last_notify.get_mut(usize::from(self.cur_vm)) {
                    *n = e.ts;
                }
            }
            KVM_MSI => self.msi(e.ts),
            DIO_MAP => self.dio_map(e),
            FS_SYNC => self.fs_sync(e),
            DIRTY_THROTTLE => self.dirty_throttle(e),
            FS_EXIT => self.fs_exit(e),
            DM_SUBMIT | DM_ENDIO | THREAD => {}
            _ => self.stats.unknown_events += 1,
        }
    }
}
