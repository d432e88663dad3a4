//! QEMU's side of a request: virtio-blk, the block layer, qcow2 and file-posix probes
//! (virtio-scsi's own two are in `scsi`).
//! A guest request is made here and found again by its pointers (the VirtIOBlockReq,
//! the QEMUIOVector every block layer of one request shares); its host IOs are made
//! through [`super::host`].

use super::row::{Op, Sink, Source, flags, reasons};
use super::slab::Ref;
use super::state::{Api, HioKind, Join, QiovBind, level};
use crate::layers::Boundary;
use smallvec::SmallVec;
use viopath_layouts::{GuestOffset, HostFileOffset};
use viopath_probes::abi::{RawEvent, qemu_probe as q};

impl<S: Sink> Join<'_, S> {
    /// virtio-blk popped a request from its queue: a new guest request, keyed by its
    /// VirtIOBlockReq until it completes.
    #[inline(never)]
    pub(super) fn virtio_handle_request(&mut self, e: &RawEvent) {
        let req = e.a[0];
        if let Some(old) = self.virtio.remove(&req) {
            self.finish_root(old, reasons::KEY_REUSED);
        }
        self.new_guest_request(e, req, Op::Other);
    }

    /// `blk_aio_flush` of a virtio request: a flush, known before its completion says
    /// so. virtio-blk hands a flush to the block layer as it pops it, before the reads
    /// popped ahead of it in the same batch (it sends only pending writes first), so
    /// the flush job that follows is this request's, not theirs (see `job_root`).
    #[inline(never)]
    pub(super) fn blk_aio_flush(&mut self, e: &RawEvent) {
        match self.virtio.get(&e.a[0]) {
            Some(&r) => {
                if let Some(root) = self.roots.get_mut(r) {
                    root.op = Op::Flush;
                }
            }
            None if self.cfg.virtio_from_block => {
                self.virtio_from_block(e, e.a[0], Op::Flush);
            }
            None => {}
        }
    }

    /// `blk_aio_preadv`/`blk_aio_pwritev`: the block request of a virtio request, or,
    /// with no virtio request at that pointer, a request of QEMU's own caller (qemu-io),
    /// keyed by its opaque pointer until its completion callback.
    #[inline(never)]
    pub(super) fn blk_aio(&mut self, e: &RawEvent, op: Op) {
        let [a0, a1, a2, a3] = e.a;
        let r = match self
            .virtio
            .get(&a0)
            .copied()
            .or_else(|| self.scsi_dma_request(e, op))
        {
            Some(r) => r,
            None if self.cfg.virtio_from_block => self.virtio_from_block(e, a0, op),
            None => {
                if let Some(old) = self.aio_opaque.remove(&a0) {
                    self.finish_root(old, 0);
                }
                let r = self.new_root(e, Source::QemuBlock);
                self.aio_opaque.insert(a0, r);
                if let Some(root) = self.roots.get_mut(r) {
                    root.aio_opaque = a0;
                    root.top_probe = e.sub;
                    root.top_child = a3;
                }
                r
            }
        };
        self.set_io(r, op, GuestOffset(a1), a2);
        self.threads.at(e.tid, e.ts).pending_co = Some(r);
    }

    /// The virtio-scsi command whose data a `blk_aio_*` call moves: the one whose DMA
    /// request (its opaque) was seen before, or the command this thread just handed
    /// its device, if it is of that direction and has no data request yet.
    fn scsi_dma_request(&mut self, e: &RawEvent, op: Op) -> Option<super::slab::Ref> {
        let dma = e.a[0];
        if let Some(&r) = self.scsi_dma.get(&dma) {
            if self.roots.get(r).is_some_and(|x| !x.completed) {
                return Some(r);
            }
            // Freed with its command, and now another's.
            self.scsi_dma.remove(&dma);
        }
        let req = self.threads.get(e.tid)?.scsi_pending?;
        let r = *self.virtio.get(&req)?;
        let root = self.roots.get_mut(r)?;
        if root.completed || root.op != op || root.offset.is_some() {
            return None;
        }
        root.scsi_dma = dma;
        self.scsi_dma.insert(dma, r);
        self.threads.at(e.tid, e.ts).scsi_pending = None;
        Some(r)
    }

    /// `throttle_group_co_io_limits_intercept`: the request this thread's coroutine
    /// just announced enters QEMU's IO throttling; it waits there until its first call
    /// below the block backend.
    #[inline(never)]
    pub(super) fn throttle_intercept(&mut self, e: &RawEvent) {
        if let Some(r) = self.threads.get(e.tid).and_then(|t| t.pending_co)
            && let Some(root) = self.roots.get_mut(r)
            && root.throttle_at == 0
            && !root.has_data_qiov
        {
            root.throttle_at = e.ts;
            self.throttled.push_back(r);
        }
    }

    /// `bdrv_co_pdiscard`: a discard on a block node.
    #[inline(never)]
    pub(super) fn bdrv_co_pdiscard(&mut self, e: &RawEvent) {
        self.qemu_block_without_data(e, Op::Discard, true);
    }

    /// `qcow2_cache_get`: an L2 or refcount table looked up; a read of that table
    /// (a cache miss) follows on this thread.
    #[inline(never)]
    pub(super) fn qcow2_cache_get(&mut self, e: &RawEvent) {
        let ctx = self.qcow2_serving(e.tid);
        self.threads.at(e.tid, e.ts).meta = Some((ctx, HostFileOffset(e.a[1])));
    }

    /// `raw_co_prw`: file-posix's request, which a host IO carries.
    #[inline(never)]
    pub(super) fn raw_co_prw(&mut self, e: &RawEvent) {
        let [qiov, off, bytes, _] = e.a;
        self.new_file_io(e, qiov, HostFileOffset(off), bytes);
    }

    /// `thread_pool_submit_aio`: a job for QEMU's thread pool, run by a worker's
    /// syscall.
    #[inline(never)]
    pub(super) fn thread_pool_submit_aio(&mut self, e: &RawEvent) {
        let [aiocb, a1, a2, a3] = e.a;
        let fd = a3 >> 32;
        match a3 & 0xff {
            // Only read/write jobs reach handle_aiocb_rw.
            q::AIO_READ | q::AIO_WRITE => {
                let h = self.file_io_for(e, HostFileOffset(a1), a2, Api::Threads);
                if let Some(x) = self.hios.get_mut(h) {
                    x.fd = fd;
                }
                self.aiocb.insert(aiocb, h);
            }
            q::AIO_FLUSH if self.cfg.flush_syscalls => {
                let h = self.job_io(e, Api::Threads, None);
                self.fd_names_disks(h, fd);
                self.flush_wait.push_back((fd, h));
            }
            // A write of zeroes that may unmap is both (0x30).
            // qcow2's zeroing for the write it serves (see qemu_block_without_data):
            // that write's metadata IO, its fallocate followed like any job's.
            t if t & q::AIO_WRITE_ZEROES != 0
                && self.cfg.falloc_syscalls
                && let Some((r, zoff, zlen)) = self.threads.get(e.tid).and_then(|t| t.zeroing)
                && zoff == HostFileOffset(a1)
                && zlen == a2
                && self.roots.get(r).is_some_and(|x| !x.completed) =>
            {
                self.threads.at(e.tid, e.ts).zeroing = None;
                let h = self.add_hio(Some(r), HioKind::Meta, HostFileOffset(a1), a2, e.ts);
                if let Some(x) = self.hios.get_mut(h) {
                    x.api = Api::Threads;
                    x.job = true;
                }
                self.fd_names_disks(h, fd);
                self.falloc_wait.push_back(([fd, a1, a2], h));
            }
            t if t & (q::AIO_DISCARD | q::AIO_WRITE_ZEROES) != 0
                && t & !(q::AIO_DISCARD | q::AIO_WRITE_ZEROES) == 0
                && self.cfg.falloc_syscalls =>
            {
                // Its range is the file's, but what it does there is the
                // filesystem's (extents, no data): it keeps no device ranges, and
                // the bios its worker queues inside fallocate are its own.
                let h = self.job_io(e, Api::Threads, Some((HostFileOffset(a1), a2)));
                if let Some(x) = self.hios.get_mut(h) {
                    x.offset = HostFileOffset(a1);
                    x.bytes = a2;
                }
                self.fd_names_disks(h, fd);
                self.falloc_wait.push_back(([fd, a1, a2], h));
            }
            // Not followed into the kernel (its probes missing, or a type no
            // request of the guest's makes), but the request it serves must not
            // be taken for a flush's.
            _ => {
                if let Some(r) = self.job_root(e.tid, Some((HostFileOffset(a1), a2)))
                    && let Some(root) = self.roots.get_mut(r)
                {
                    root.host_job = true;
                }
            }
        }
    }

    /// `handle_aiocb_rw`: a thread-pool worker runs a read/write job; its syscall is
    /// that job's.
    #[inline(never)]
    pub(super) fn handle_aiocb_rw(&mut self, e: &RawEvent) {
        if let Some(h) = self.aiocb.remove(&e.a[0]) {
            self.threads.at(e.tid, e.ts).worker = Some(h);
        }
    }

    /// `laio_co_submit`: a host IO for linux-aio, submitted by this thread's next
    /// io_submit.
    #[inline(never)]
    pub(super) fn laio_co_submit(&mut self, e: &RawEvent) {
        let [_, a1, a2, a3] = e.a;
        let h = if a3 & 0xff == q::AIO_FLUSH {
            // Without the fsync probes nothing would end it.
            if !self.cfg.fs_sync && !self.cfg.aio_fsync {
                return;
            }
            let h = self.job_io(e, Api::Native, None);
            self.sync_wait.push_back(h);
            h
        } else {
            self.file_io_for(e, HostFileOffset(a1), a2, Api::Native)
        };
        self.set_fd(h, a3 >> 32);
        if let Some(x) = self.hios.get_mut(h) {
            x.aio_write = a3 & 0xff == q::AIO_WRITE;
        }
        self.threads.at(e.tid, e.ts).laio_wait.push(h);
    }

    /// `luring_co_submit`: a host IO for io_uring, in submission order.
    #[inline(never)]
    pub(super) fn luring_co_submit(&mut self, e: &RawEvent) {
        let [_, a1, a2, a3] = e.a;
        let h = if a3 & 0xff == q::AIO_FLUSH {
            let h = self.job_io(e, Api::Uring, None);
            if self.cfg.fs_sync {
                self.sync_wait.push_back(h);
            }
            h
        } else {
            self.file_io_for(e, HostFileOffset(a1), a2, Api::Uring)
        };
        self.set_fd(h, a3 >> 32);
        self.uring_wait.push_back(h);
    }

    /// `virtio_blk_rw_complete`: QEMU's block layer finished a virtio request.
    #[inline(never)]
    pub(super) fn virtio_rw_complete(&mut self, e: &RawEvent) {
        if let Some(&r) = self.virtio.get(&e.a[0])
            && let Some(root) = self.roots.get_mut(r)
        {
            // Copied before the store, not after: a wide read of a word just
            // written waits for the store to retire.
            let mut b = root.b;
            b[Boundary::QemuDone] = e.ts;
            root.b[Boundary::QemuDone] = e.ts;
            root.last = e.ts;
            let snapshot = (root.id, b, e.ts, root.disks);
            self.threads.at(e.tid, e.ts).completion_batch = Some(snapshot);
        }
    }

    /// qemu-io's `aio_read_done`/`aio_write_done`: the caller's completion callback.
    /// QEMU is done with the request, as virtio_blk_rw_complete says for a virtio
    /// one. Nothing of it follows.
    #[inline(never)]
    pub(super) fn qemu_io_aio_done(&mut self, e: &RawEvent) {
        if let Some(&r) = self.aio_opaque.get(&e.a[0]) {
            if let Some(root) = self.roots.get_mut(r) {
                root.b[Boundary::QemuDone] = e.ts;
                root.last = root.last.max(e.ts);
            }
            self.finish_root(r, 0);
        }
    }

    /// `virtio_blk_req_complete`: the completion pushed to the guest's ring.
    #[inline(never)]
    pub(super) fn virtio_req_complete(&mut self, e: &RawEvent) {
        let [a0, a1, a2, a3] = e.a;
        let Some(r) = self.virtio.remove(&a0) else {
            if !(self.cfg.virtio_from_block && self.virtio_answered_unseen(e)) {
                self.virtio_cut_at_start(e);
            }
            return;
        };
        let batch = self.threads.get(e.tid).and_then(|t| t.completion_batch);
        let Some(root) = self.roots.get_mut(r) else {
            return;
        };
        root.b[Boundary::Completed] = e.ts;
        root.last = e.ts;
        root.completed = true;
        root.virtio_req = 0;
        // The request header the guest wrote: type and sector; and the data
        // size. Zero in traces from recorders that did not read them.
        let vop = Op::from_virtio(a2 as u32);
        let known_type = a1 != 0 || a2 != 0 || a3 != 0;
        let had_block = root.offset.is_some();
        if self.cfg.virtio_from_block
            && let Some(at) = root.offset
        {
            // Requests merged into its block request complete next (see `stripped`).
            let (op, len, snapshot) = (root.op, root.bytes, (root.id, root.b, e.ts, root.disks));
            self.note_batch_range(e.tid, e.ts, op, at, len);
            self.threads.at(e.tid, e.ts).completion_batch = Some(snapshot);
        }
        let Some(root) = self.roots.get_mut(r) else {
            return;
        };
        // The guest's own range: the block request of the first of several requests
        // virtio-blk merged carries all of theirs, and each merged one is a row of its
        // own. (Recorders before the request's own size read the qiov's, emptied by
        // then for that first request: 0, and its block range is kept.)
        if had_block && known_type && vop.moves_data() && a3 != 0 {
            root.offset = Some(GuestOffset(a1.saturating_mul(512)));
            root.bytes = a3;
        }
        if !had_block && known_type {
            root.op = vop;
            // A discard's or a write of zeroes' ranges are in its data, which is
            // not read: the header's sector is 0 and the data size that of the
            // range list, so neither is the request's range.
            if vop.moves_data() {
                root.offset = Some(GuestOffset(a1.saturating_mul(512)));
                root.bytes = a3;
            }
        }
        if !had_block
            && root.data_hios == 0
            && root.open_hios == 0
            && (!known_type || vop.moves_data())
            && let Some((id, b, at, disks)) = batch
            && id != root.id
            && e.ts.saturating_sub(at) < 1_000_000
        {
            // Merged by virtio-blk into the request completing before it on
            // this thread: it shares that request's path (and disk).
            root.b
                .copy_span(&b, Boundary::Submitted, Boundary::QemuDone);
            root.disks = disks;
            root.flags |= flags::VIRTIO_MERGED;
            root.merged_into = Some(id);
        }
        self.answered(r);
    }

    /// A guest request answered (its completion in the guest's ring): its row now, or
    /// once its interrupt comes where that is probed. Metadata IO given to it that
    /// still runs was another coroutine's.
    pub(super) fn answered(&mut self, r: Ref) {
        if self.roots.get(r).is_some_and(|x| x.open_hios > 0) {
            self.release_open_meta(r);
        }
        if self.cfg.await_msi {
            // QEMU has freed the request: its next one may reuse the request
            // and its qiov at once, before this one's interrupt (under TCG
            // there is none: it waits for the sweep).
            let Some(root) = self.roots.get_mut(r) else {
                return;
            };
            let qiovs = std::mem::take(&mut root.qiovs);
            let dma = std::mem::take(&mut root.scsi_dma);
            for qv in &qiovs {
                if self.qiov.get(qv).and_then(|b| b.root()) == Some(r) {
                    self.qiov.remove(qv);
                }
            }
            // So is a virtio-scsi command's DMA request.
            if dma != 0 && self.scsi_dma.get(&dma) == Some(&r) {
                self.scsi_dma.remove(&dma);
            }
            self.msi_wait.push(r);
        } else {
            self.finish_root(r, 0);
        }
    }

    /// A request answered while metadata IO given to it still runs: that IO was not
    /// on its path (the guest had its answer first), but another coroutine's on the
    /// same thread. It no longer counts for the request, and ends as QEMU's own.
    fn release_open_meta(&mut self, r: Ref) {
        let open: SmallVec<[Ref; 2]> = self
            .inflight
            .iter()
            .copied()
            .filter(|&h| {
                self.hios
                    .get(h)
                    .is_some_and(|x| x.root == Some(r) && x.kind == HioKind::Meta)
            })
            .collect();
        for h in open {
            if let Some(x) = self.hios.get_mut(h) {
                x.root = None;
                x.kind = HioKind::Internal;
            }
            if let Some(root) = self.roots.get_mut(r) {
                root.open_hios = root.open_hios.saturating_sub(1);
            }
        }
        // Nor what follows on its buffers.
        let Some(root) = self.roots.get(r) else {
            return;
        };
        for qv in root.qiovs.clone() {
            if let Some(b) = self.qiov.get_mut(&qv)
                && matches!(b, QiovBind::Meta(Some(x)) if *x == r)
            {
                *b = QiovBind::Meta(None);
            }
        }
    }

    /// The completion of a guest request not seen begin: one in flight when the
    /// recording started. Its host half, if traced, was taken for a request of QEMU's
    /// own (nothing announced it): the one still in flight at its guest range becomes
    /// its row; else it is a row of its end alone. Either way partial, and counted.
    fn virtio_cut_at_start(&mut self, e: &RawEvent) {
        let [_, a1, a2, a3] = e.a;
        let known_type = a1 != 0 || a2 != 0 || a3 != 0;
        if !known_type {
            // A recorder that did not read the request header: nothing to say of it.
            return;
        }
        let vop = Op::from_virtio(a2 as u32);
        let offset = GuestOffset(a1.saturating_mul(512));
        let headless = self
            .active
            .iter()
            .copied()
            .filter(|&r| {
                self.roots.get(r).is_some_and(|x| {
                    x.source == Source::QemuBlock
                        && x.vm == self.cur_vm
                        && x.aio_opaque == 0
                        && !x.completed
                        && vop.moves_data()
                        && x.op == vop
                        && x.offset == Some(offset)
                        && x.bytes >= a3
                })
            })
            .min_by_key(|&r| self.roots.get(r).map_or(u64::MAX, |x| x.id));
        let r = match headless {
            Some(r) => r,
            None => {
                let r = self.new_root(e, Source::Virtio);
                if let Some(root) = self.roots.get_mut(r) {
                    // Nothing of it but its end.
                    root.b[Boundary::Parsed] = 0;
                }
                r
            }
        };
        self.stats.cut_at_start += 1;
        let Some(root) = self.roots.get_mut(r) else {
            return;
        };
        root.source = Source::Virtio;
        root.op = vop;
        if vop.moves_data() {
            root.offset = Some(offset);
            root.bytes = a3;
        }
        root.b[Boundary::Completed] = e.ts;
        root.last = e.ts;
        root.completed = true;
        root.cut_at_start = true;
        self.finish_root(r, reasons::CUT_AT_START);
    }

    /// A block-layer request with data (`blk_co_*`, `bdrv_co_*`, `qcow2_co_*`): found
    /// by its qiov, or bound to the request it is part of.
    #[inline(never)]
    pub(super) fn qemu_block(&mut self, e: &RawEvent) {
        let [qiov, off, bytes, child] = e.a;
        let write = matches!(
            e.sub,
            q::BLK_CO_PWRITEV_PART | q::BDRV_CO_PWRITEV_PART | q::QCOW2_CO_PWRITEV_PART
        );
        let op = if write { Op::Write } else { Op::Read };
        let is_qcow2 = matches!(e.sub, q::QCOW2_CO_PREADV_PART | q::QCOW2_CO_PWRITEV_PART);
        let is_bdrv = matches!(e.sub, q::BDRV_CO_PREADV_PART | q::BDRV_CO_PWRITEV_PART);
        if qiov == 0 {
            self.qemu_block_without_data(e, op, is_bdrv);
            return;
        }
        let bound = self.qiov.get(&qiov).copied();
        let bind = match bound {
            Some(QiovBind::Root(r)) => {
                let reuse = match self.roots.get(r) {
                    Some(root) => {
                        level(root.top_probe) == level(e.sub)
                            && root.top_child == child
                            && root.open_hios == 0
                    }
                    None => true,
                };
                if reuse {
                    // The pointer is back for a new request: the old one is over.
                    self.qiov.remove(&qiov);
                    if self.roots.get(r).is_some() {
                        self.finish_root(r, 0);
                    }
                    None
                } else {
                    let root = self.roots.get_mut(r).expect("checked");
                    root.last = e.ts;
                    let first_node = is_bdrv && root.bdrv_child == 0;
                    root.note_bdrv_child(e.sub, child);
                    if is_qcow2 || (self.cfg.qcow2_unprobed && first_node) {
                        root.qcow2 = true;
                        self.threads.at(e.tid, e.ts).qcow2 = Some(r);
                    } else if root.qcow2 && is_bdrv {
                        self.file_children.insert(child, ());
                    }
                    bound
                }
            }
            // Metadata and copy-on-write buffers live on coroutine stacks, so their
            // addresses come back for other purposes: after its owner is gone, as a
            // table read that a cache lookup announces, or (a metadata buffer) as
            // qcow2's own copy-on-write read.
            Some(b @ (QiovBind::Meta(_) | QiovBind::Cow(_)))
                if b.root()
                    .is_some_and(|r| self.roots.get(r).is_none_or(|x| x.completed))
                    || (is_qcow2 && matches!(b, QiovBind::Meta(_)))
                    || self
                        .threads
                        .get(e.tid)
                        .and_then(|t| t.meta)
                        .is_some_and(|(_, t)| t == HostFileOffset(off)) =>
            {
                self.qiov.remove(&qiov);
                None
            }
            other => other,
        };
        let bind = match bind {
            Some(b) => b,
            None => self.bind_new_qiov(e, qiov, op, is_qcow2),
        };
        if is_bdrv {
            self.threads.at(e.tid, e.ts).last_bdrv = Some((bind, off, bytes));
        }
    }

    /// A block request without data: a write of zeroes, a discard (or a read that
    /// only prefetches). The null qiov keys nothing (two of them in flight would share
    /// it), so the request is found by thread: the one this thread just announced at
    /// the same range one layer up, the one this thread is in the middle of (a call
    /// on a lower node), or the guest's request this thread is serving (as for a host
    /// job: the earliest virtio request in flight with nothing below it yet), or else
    /// a new one.
    pub(super) fn qemu_block_without_data(&mut self, e: &RawEvent, op: Op, is_bdrv: bool) {
        let [_, off, bytes, child] = e.a;
        let above = self
            .threads
            .get(e.tid)
            .and_then(|t| t.last_bdrv)
            .and_then(|(b, o, n)| match b {
                QiovBind::Root(r) if o == off && n == bytes => Some(r),
                _ => None,
            })
            .filter(|&r| {
                self.roots
                    .get(r)
                    .is_some_and(|x| !x.completed && x.qiovs.is_empty() && x.data_hios == 0)
            });
        // qcow2 zeroing the parts of newly allocated clusters that the write it serves
        // does not cover (its copy-on-write, when the old contents read as zeroes): a
        // call below the write, on the image file at a host offset. It is that write's
        // metadata IO, not a request of its own.
        if op == Op::Write
            && let Some(r) = self.threads.get(e.tid).and_then(|t| t.qcow2)
            && self.roots.get(r).is_some_and(|x| {
                !x.completed
                    && x.qcow2
                    && x.op == Op::Write
                    && !x.nodata
                    && x.bdrv_child != 0
                    && x.bdrv_child != child
            })
        {
            self.file_children.insert(child, ());
            let t = self.threads.at(e.tid, e.ts);
            t.zeroing = Some((r, HostFileOffset(off), bytes));
            t.last_bdrv = None;
            return;
        }
        // A write of zeroes or a discard is a guest request's; a prefetching read is
        // QEMU's.
        let request = matches!(op, Op::Write | Op::Discard);
        let row_op = if op == Op::Write { Op::WriteZeroes } else { op };
        // A call further down the stack for the request this thread is in the middle
        // of (qcow2 passing a discard on to its image file, at the host offset): on
        // another node than the request's first call was.
        let nested = || {
            let r = self.threads.get(e.tid).and_then(|t| t.qcow2)?;
            let x = self.roots.get(r)?;
            (x.nodata && !x.completed && x.top_child != 0 && x.top_child != child).then_some(r)
        };
        let serving = || {
            request
                .then(|| self.nodata_request(e.tid, row_op))
                .flatten()
        };
        let r = match above.or_else(nested).or_else(serving) {
            Some(r) => r,
            None => {
                // Writes of zeroes this thread made before with none of their IO in
                // flight are over (no completion event ends them): their metadata
                // buffers, on the coroutine stack, come back for this one.
                let done: SmallVec<[Ref; 2]> = self
                    .active
                    .iter()
                    .copied()
                    .filter(|&r| {
                        self.roots.get(r).is_some_and(|x| {
                            x.source == Source::QemuBlock
                                && x.nodata
                                && x.tid == e.tid
                                && x.open_hios == 0
                        })
                    })
                    .collect();
                for r in done {
                    self.finish_root(r, 0);
                }
                let r = self.new_root(e, Source::QemuBlock);
                self.set_io(r, row_op, GuestOffset(off), bytes);
                // Above the image file, where qcow2 images are expected: qcow2's request
                // (it has no probe on this path), not QEMU's own IO to the file.
                let via_qcow2 = self.cfg.expect_qcow2 && !self.file_children.contains_key(&child);
                let root = self.roots.get_mut(r).expect("just made");
                root.top_probe = e.sub;
                root.top_child = child;
                root.qcow2 = via_qcow2;
                r
            }
        };
        if request
            && self
                .roots
                .get(r)
                .is_some_and(|x| x.source == Source::Virtio)
        {
            // The guest's range list is in its data, which the virtio probe does not
            // read: this request's first call has it.
            self.set_io(r, row_op, GuestOffset(off), bytes);
        }
        if let Some(root) = self.roots.get_mut(r) {
            root.last = e.ts;
            root.note_bdrv_child(e.sub, child);
            root.nodata |= request;
            if root.top_child == 0 {
                root.top_child = child;
            }
        }
        // qcow2 (not probed on this path) writes the zero flags into its L2 tables on
        // this thread: that metadata IO is this request's.
        let t = self.threads.at(e.tid, e.ts);
        t.qcow2 = Some(r);
        if is_bdrv {
            t.last_bdrv = Some((QiovBind::Root(r), off, bytes));
        }
    }

    /// The guest request a discard's or write of zeroes' first block call on `tid` is
    /// for: the earliest in flight there with no block call yet whose operation is that
    /// one or not yet known (virtio-blk says it at completion; a flush announced by
    /// `blk_aio_flush`, or a SCSI command's other opcode, is not it).
    fn nodata_request(&self, tid: u32, op: Op) -> Option<Ref> {
        self.active
            .iter()
            .filter_map(|&r| self.roots.get(r).map(|x| (r, x)))
            .filter(|(_, x)| {
                x.tid == tid
                    && x.source == Source::Virtio
                    && !x.completed
                    && !x.host_job
                    && !x.nodata
                    && x.data_hios == 0
                    && x.offset.is_none()
                    && (x.op == op || x.op == Op::Other)
            })
            .min_by_key(|(_, x)| (x.op != op, x.id))
            .map(|(r, _)| r)
    }

    /// A qiov not seen before: a metadata read after an L2 cache lookup, the block
    /// request a blk_aio_* event announced, a copy-on-write buffer, QEMU's own file IO,
    /// or a new request. Returns how it was bound.
    pub(super) fn bind_new_qiov(
        &mut self,
        e: &RawEvent,
        qiov: u64,
        op: Op,
        is_qcow2: bool,
    ) -> QiovBind {
        let [_, off, bytes, child] = e.a;
        let is_bdrv = matches!(e.sub, q::BDRV_CO_PREADV_PART | q::BDRV_CO_PWRITEV_PART);
        // Only while the request that looked the table up is going on: a table it found
        // in the cache is written back later, maybe by a flush after the request was
        // answered, and that write is not its.
        if let Some((ctx, table)) = self.threads.get(e.tid).and_then(|t| t.meta)
            && table == HostFileOffset(off)
            && ctx.is_none_or(|r| self.roots.get(r).is_some_and(|x| !x.completed))
        {
            self.threads.at(e.tid, e.ts).meta = None;
            // Tables live in the image file: this child is one (needed when no guest
            // data has gone to it yet, as in a fresh overlay).
            self.file_children.insert(child, ());
            return self.bind_to(qiov, QiovBind::Meta(ctx));
        }
        // The request this thread's coroutine just announced; or, held back by
        // throttling while the thread announced others, one announced earlier on this
        // thread at this range.
        let fits = |root: &super::state::Root| {
            root.offset == Some(GuestOffset(off))
                && root.bytes == bytes
                && !root.has_data_qiov
                && !root.completed
                && root.tid == e.tid
        };
        let announced = self
            .threads
            .get(e.tid)
            .and_then(|t| t.pending_co)
            .filter(|&r| self.roots.get(r).is_some_and(fits))
            .or_else(|| {
                self.throttled
                    .iter()
                    .copied()
                    .find(|&r| self.roots.get(r).is_some_and(fits))
            });
        if let Some(r) = announced {
            let t = self.threads.at(e.tid, e.ts);
            if t.pending_co == Some(r) {
                t.pending_co = None;
            }
            self.bind_qiov(qiov, r);
            let root = self.roots.get_mut(r).expect("checked");
            if root.throttle_at != 0 {
                root.throttle_ns = e.ts.saturating_sub(root.throttle_at);
                self.throttled.retain(|&x| x != r);
            }
            let first_node = is_bdrv && root.bdrv_child == 0;
            root.note_bdrv_child(e.sub, child);
            if root.top_probe == 0 || root.aio_opaque != 0 {
                root.top_probe = e.sub;
                root.top_child = child;
            }
            if is_qcow2 || (self.cfg.qcow2_unprobed && first_node) {
                root.qcow2 = true;
                self.threads.at(e.tid, e.ts).qcow2 = Some(r);
            }
            return QiovBind::Root(r);
        }
        // qcow2's own IO for the request it is serving on this thread: a fresh buffer on
        // a node below the request's top (the image file), not at the request's range:
        // an L2 or refcount table read on a cache miss, or a table written back. Found
        // without a probe on the cache lookup, which runs per table entry looked up
        // (thousands of times for one allocating write when the refcounts are scanned).
        if is_bdrv
            && let Some(r) = self.threads.get(e.tid).and_then(|t| t.qcow2)
            && let Some(x) = self.roots.get(r)
            && !x.completed
            && x.qcow2
            && x.bdrv_child != 0
            && x.bdrv_child != child
            && !(x.offset == Some(GuestOffset(off)) && x.bytes == bytes)
        {
            self.file_children.insert(child, ());
            // A read writes no tables: a table written back while one waits is another
            // coroutine's on this thread, a flush's or a discard's (which have no qcow2
            // probe): the request just parsed here, whose handler runs, if it has no
            // block IO yet; else the one a host job of this thread would be for.
            if op == Op::Write && x.op == Op::Read {
                let ctx = self.table_writer(e.tid);
                return self.bind_to(qiov, QiovBind::Meta(ctx));
            }
            return self.bind_to(qiov, QiovBind::Meta(Some(r)));
        }
        // A write of zeroes the driver could not make as such (qcow2, for part of a
        // cluster that does not read as zeroes): the block layer writes a buffer of
        // zeroes in its place, on its thread, a piece of its range at a time.
        if op == Op::Write
            && let Some(r) = self.threads.get(e.tid).and_then(|t| t.qcow2)
            && let Some(root) = self.roots.get_mut(r)
            && root.nodata
            && root.op == Op::WriteZeroes
            && !root.completed
            && let Some(start) = root.offset
            && off >= start.0
            && off.saturating_add(bytes) <= start.0.saturating_add(root.bytes)
        {
            root.qcow2 |= is_qcow2;
            return self.bind_to(qiov, QiovBind::Root(r));
        }
        if is_qcow2 && let Some(r) = self.cow_owner(e.tid, GuestOffset(off), bytes) {
            return self.bind_to(qiov, QiovBind::Cow(r));
        }
        if self.file_children.contains_key(&child) {
            let ctx = match self.qcow2_serving(e.tid) {
                // A read writes no tables (see above).
                Some(r)
                    if op == Op::Write && self.roots.get(r).is_some_and(|x| x.op != Op::Write) =>
                {
                    self.table_writer(e.tid)
                }
                ctx => ctx,
            };
            return self.bind_to(qiov, QiovBind::Meta(ctx));
        }
        let r = self.new_root(e, Source::QemuBlock);
        self.set_io(r, op, GuestOffset(off), bytes);
        self.bind_qiov(qiov, r);
        let root = self.roots.get_mut(r).expect("just made");
        root.note_bdrv_child(e.sub, child);
        root.top_probe = e.sub;
        root.top_child = child;
        if is_qcow2 {
            root.qcow2 = true;
            self.threads.at(e.tid, e.ts).qcow2 = Some(r);
        }
        QiovBind::Root(r)
    }

    /// Whose is a qcow2 table written on `tid` by no write in flight there: the request
    /// this thread parsed last, whose handler runs (a flush writing the tables back
    /// before the file's flush, a discard updating them; neither has a qcow2 probe),
    /// while it has no block IO yet; else the one a host job of the thread would be for.
    fn table_writer(&self, tid: u32) -> Option<Ref> {
        self.threads
            .get(tid)
            .and_then(|t| t.last_parsed)
            .filter(|&p| {
                self.roots
                    .get(p)
                    .is_some_and(|y| !y.completed && y.offset.is_none())
            })
            .or_else(|| self.job_root(tid, None))
    }

    /// The request qcow2 is serving on `tid`, for its metadata IO: the one its last
    /// probe there named, while in flight; else (a discard or a flush, whose path
    /// through qcow2 has no probe) the guest request a host job of that thread would
    /// be for. A request over is never it: its virtio request pointer can come back
    /// for a discard while it waits for its interrupt.
    pub(super) fn qcow2_serving(&self, tid: u32) -> Option<Ref> {
        self.threads
            .get(tid)
            .and_then(|t| t.qcow2)
            .filter(|r| self.roots.get(*r).is_some_and(|r| !r.completed))
            .or_else(|| self.job_root(tid, None))
    }

    pub(super) fn bind_to(&mut self, qiov: u64, b: QiovBind) -> QiovBind {
        self.qiov.insert(qiov, b);
        if let Some(r) = b.root()
            && let Some(root) = self.roots.get_mut(r)
        {
            root.qiovs.push(qiov);
            root.has_data_qiov |= matches!(b, QiovBind::Root(_));
        }
        b
    }

    /// The allocating write a qcow2 request with a fresh buffer is the copy-on-write
    /// of: qcow2 calls its own read entry point (no block layer above it) for the
    /// parts of the new cluster the write does not cover, on the thread of the write
    /// it is serving, inside that write's cluster (2 MiB, qcow2's largest).
    pub(super) fn cow_owner(&self, tid: u32, off: GuestOffset, bytes: u64) -> Option<Ref> {
        const MAX_CLUSTER: u64 = 2 << 20;
        let r = self.threads.get(tid)?.qcow2?;
        let root = self.roots.get(r)?;
        let start = root.offset?.0;
        let lo = start / MAX_CLUSTER * MAX_CLUSTER;
        let hi = start.saturating_add(root.bytes).div_ceil(MAX_CLUSTER) * MAX_CLUSTER;
        (matches!(root.op, Op::Write | Op::WriteZeroes)
            && !root.completed
            && off.0 >= lo
            && off.0.saturating_add(bytes) <= hi)
            .then_some(r)
    }
}
