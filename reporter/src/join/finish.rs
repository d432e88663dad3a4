//! Every way a request ends: a host IO done, a guest request finished (answered,
//! interrupted, idle, stale or replaced) and emitted as a row, a block request dropped,
//! IO of no request reported, the periodic sweep and the end of the trace.

use super::row::{IoRow, Op, OtherClass, OtherIo, Sink, Source, flags, reasons};
use super::slab::Ref;
use super::state::{Api, BioOwner, Fill, HioKind, IDLE_NS, Join, JoinStats, STALE_NS, min0};
use crate::layers::Boundary;
use crate::layout::Layout;
use smallvec::SmallVec;

impl<S: Sink> Join<'_, S> {
    /// IO nobody claimed completed: report it.
    pub(super) fn other_done(&mut self, id: u32, ts: u64) {
        let Some(r) = self.other_ids.remove(&id) else {
            return;
        };
        if let Some(mut o) = self.others.remove(r) {
            o.io.end = o.io.end.max(ts);
            self.stats.other_ios += 1;
            self.sink.other(&o.io);
        }
    }

    /// Forget a request whose completion will never come (its event was lost): its host
    /// IOs stop waiting for it, IO of no guest request is reported as far as it got.
    /// Its bios go with it, unless their pointers already carry new bios of others.
    pub(super) fn drop_req(&mut self, k: u64) {
        let Some(r) = self.reqs.remove(&k) else {
            return;
        };
        self.stats.requests_lost += 1;
        for b in &r.bios {
            let ours = match self.bios.get(b).map(|x| x.owner) {
                Some(BioOwner::Hio(h)) => r.owners.contains(&h),
                Some(BioOwner::Other(id)) => r.other == Some(id),
                None => false,
            };
            if ours {
                self.bios.remove(b);
            }
        }
        for &h in &r.owners {
            if let Some(x) = self.hios.get_mut(h) {
                x.open_rqs = x.open_rqs.saturating_sub(1);
            }
        }
        if let Some(id) = r.other {
            self.other_done(id, 0);
        }
    }

    pub(super) fn msi(&mut self, ts: u64) {
        let mut wait = std::mem::take(&mut self.msi_wait);
        if self.vms.many {
            // Another VM's interrupt answers none of these.
            let vm = self.cur_vm;
            let roots = &self.roots;
            let (mine, others): (Vec<Ref>, Vec<Ref>) = wait
                .drain(..)
                .partition(|&r| roots.get(r).is_none_or(|x| x.vm == vm));
            wait = mine;
            self.msi_wait = others;
        }
        for r in wait.drain(..) {
            if let Some(root) = self.roots.get_mut(r) {
                root.b[Boundary::Interrupt] = ts;
            }
            self.finish_root(r, 0);
        }
        // Its buffer back: a request waits here for nearly every interrupt, and
        // allocating it anew was one allocation and free per IO.
        if self.msi_wait.is_empty() {
            self.msi_wait = wait;
        }
    }

    /// A host IO completed: fold it into its request.
    pub(super) fn hio_done(&mut self, h: Ref, ts: u64) {
        let Some(hio) = self.hios.get(h) else {
            return;
        };
        let submit = if hio.submit != 0 {
            hio.submit
        } else {
            hio.created
        };
        // Buffered: a read or write of the thread pool or io_uring for which the kernel
        // began no direct IO (only known where the direct-IO probe was attached).
        let buffered = self.cfg.dio_probe
            && !hio.direct
            && !hio.job
            && hio.bytes > 0
            && matches!(hio.api, Api::Threads | Api::Uring);
        // A buffered read with no block IO of its own that ran while a fill of its
        // sectors completed waited for that fill: (issued, done), from its submission.
        let waited = if buffered && hio.done_any == 0 {
            Self::fill_waited(&self.fills, &hio.ranges, submit, ts)
        } else {
            None
        };
        // A buffered read no block IO ended for while it ran was served by the page
        // cache: bios it queued (asynchronous readahead it set off) were not waited for.
        let cache_hit = buffered && hio.done_any == 0 && waited.is_none();
        let ahead_hit = cache_hit
            && hio
                .ranges
                .iter()
                .any(|r| self.readahead.overlaps(r.dev, r.start_sector, r.end_sector));
        if buffered {
            // Asked for now: a later hit on these pages is not the readahead's.
            for r in &hio.ranges {
                self.readahead.asked(r.dev, r.start_sector, r.end_sector);
            }
        }
        let tick_ns = self.cfg.tick_ns;
        let root = hio
            .root
            .and_then(|r| self.roots.get_mut(r).map(|root| (r, root)));
        match root {
            Some((_, root)) => {
                root.open_hios = root.open_hios.saturating_sub(1);
                root.last = root.last.max(ts);
                // Data, metadata and copy-on-write IO all go to files of the request's
                // own chain: each named one narrows down its disk.
                if hio.disks != 0 {
                    root.disks = Some(root.disks.map_or(hio.disks, |d| d & hio.disks));
                }
                match hio.kind {
                    HioKind::Data => {
                        let b = &mut root.b;
                        b[Boundary::Submitted] = min0(b[Boundary::Submitted], submit);
                        let hit = cache_hit && root.op == Op::Read;
                        b[Boundary::FsEntered] = min0(b[Boundary::FsEntered], hio.fs_entered);
                        if !hit {
                            b[Boundary::Queued] = min0(b[Boundary::Queued], hio.first_q);
                            b[Boundary::Entered] = min0(b[Boundary::Entered], hio.first_seen);
                            b[Boundary::BottomQueued] =
                                min0(b[Boundary::BottomQueued], hio.bottom_q);
                        }
                        let (issue, done) = if hit {
                            (0, 0)
                        } else if hio.issue_bottom != 0 || hio.done_bottom != 0 {
                            (hio.issue_bottom, hio.done_bottom)
                        } else if hio.ranges.is_empty() && self.layout.is_bottom_device(0).is_none()
                        {
                            // No devices known: the requests it went to are all there is.
                            (hio.issue_any, hio.done_any)
                        } else if let Some(w) = waited {
                            w
                        } else if hio.loop_done != 0 {
                            // The loop device is as low as it went: its backing page
                            // cache took it, or (a flush) its worker's sync of the
                            // backing file sent nothing below.
                            root.flags |= if hio.bytes == 0 && hio.ranges.is_empty() {
                                flags::LOOP_FLUSH
                            } else {
                                flags::LOOP_PAGE_CACHE
                            };
                            (hio.loop_issue, hio.loop_done)
                        } else {
                            (0, 0)
                        };
                        if buffered {
                            root.flags |= match root.op {
                                Op::Read if ahead_hit => {
                                    flags::PAGE_CACHE_HIT | flags::READAHEAD_HIT
                                }
                                Op::Read if hit => flags::PAGE_CACHE_HIT,
                                Op::Read => flags::PAGE_CACHE_MISS,
                                Op::Write => flags::PAGE_CACHE_WRITE,
                                _ => 0,
                            };
                        }
                        if hio.dirty_pauses > 0 {
                            root.flags |= flags::DIRTY_THROTTLED;
                            root.dirty_wait_ns = root
                                .dirty_wait_ns
                                .saturating_add(hio.dirty_pause_ticks.saturating_mul(tick_ns));
                        }
                        root.readahead_bytes = root.readahead_bytes.saturating_add(hio.ra_bytes);
                        root.synced_bytes = root.synced_bytes.saturating_add(hio.synced_bytes);
                        b[Boundary::Dispatched] = min0(b[Boundary::Dispatched], issue);
                        b[Boundary::DeviceDone] = b[Boundary::DeviceDone].max(done);
                        b[Boundary::HostDone] = b[Boundary::HostDone].max(ts);
                        root.bios = root.bios.saturating_add(hio.bios);
                        root.requests = root.requests.saturating_add(hio.requests);
                        root.flags |= hio.flags;
                        if hio.bottom_dev != 0 {
                            root.bottom_dev = hio.bottom_dev;
                        }
                    }
                    _ => {
                        root.meta_hios += 1;
                        root.meta_ns = root.meta_ns.saturating_add(ts.saturating_sub(submit));
                    }
                }
            }
            None => {
                let class = match hio.kind {
                    HioKind::Syscall => OtherClass::QemuSyscall,
                    _ => OtherClass::QemuInternal,
                };
                self.stats.other_ios += 1;
                self.sink.other(&OtherIo {
                    class,
                    start: submit,
                    end: ts,
                    bytes: hio.bytes,
                    dev: hio.bottom_dev,
                    disk: Layout::one_disk(hio.disks),
                });
            }
        }
        self.forget_hio(h);
    }

    /// The fill of `ranges`' bottom sectors that completed last within `[from, to]`,
    /// if any: `(max(issued, from), done)`, the device time a buffered read arriving
    /// while its pages were being read waited for.
    fn fill_waited(
        fills: &std::collections::VecDeque<Fill>,
        ranges: &crate::layout::DevRanges,
        from: u64,
        to: u64,
    ) -> Option<(u64, u64)> {
        let mut found: Option<(u64, u64)> = None;
        for f in fills.iter().rev() {
            if f.done < from {
                break;
            }
            if f.done > to {
                continue;
            }
            let overlaps = ranges.iter().any(|r| {
                r.bottom && r.dev == f.dev && r.start_sector < f.end && f.start < r.end_sector
            });
            if overlaps {
                let issued = f.issued.max(from);
                found = Some(match found {
                    None => (issued, f.done),
                    Some((i, d)) => (i.min(issued), d.max(f.done)),
                });
            }
        }
        found
    }

    pub(super) fn finish_root(&mut self, r: Ref, reason: u16) {
        // Read in place and dropped in place: moving the record out of the slab cost
        // more than the rest of this (a few hundred bytes copied per IO).
        let Some(root) = self.roots.get_mut(r) else {
            return;
        };
        let qiovs = std::mem::take(&mut root.qiovs);
        let (open_hios, virtio_req, aio_opaque, scsi_dma) = (
            root.open_hios,
            root.virtio_req,
            root.aio_opaque,
            root.scsi_dma,
        );
        // Its host IOs that never completed (events lost) must not claim later bios.
        if open_hios > 0 {
            let open: SmallVec<[Ref; 4]> = self
                .inflight
                .iter()
                .copied()
                .filter(|&h| self.hios.get(h).is_some_and(|x| x.root == Some(r)))
                .collect();
            let mut unseen = 0;
            for h in open {
                if let Some(x) = self.hios.get(h)
                    && x.job
                    && (x.submit == 0 || (x.api == Api::Native && !x.fs_begun))
                {
                    unseen += 1;
                }
                self.forget_hio(h);
            }
            // A job the kernel was never seen to begin (a linux-aio flush on a
            // filesystem without the probed tracepoint; a job whose syscall did not
            // match it): the request is QEMU's alone, as without the probes.
            if unseen > 0
                && let Some(root) = self.roots.get_mut(r)
            {
                root.open_hios = root.open_hios.saturating_sub(unseen);
                root.data_hios = root.data_hios.saturating_sub(unseen);
            }
        }
        for qv in &qiovs {
            if let Some(b) = self.qiov.get(qv)
                && b.root() == Some(r)
            {
                self.qiov.remove(qv);
            }
        }
        if virtio_req != 0 && self.virtio.get(&virtio_req) == Some(&r) {
            self.virtio.remove(&virtio_req);
        }
        if aio_opaque != 0 && self.aio_opaque.get(&aio_opaque) == Some(&r) {
            self.aio_opaque.remove(&aio_opaque);
        }
        if scsi_dma != 0 && self.scsi_dma.get(&scsi_dma) == Some(&r) {
            self.scsi_dma.remove(&scsi_dma);
        }
        let root = self.roots.get(r).expect("looked up above");
        // A block request no guest request made, in a trace whose guest requests are
        // made from the block layer (a stripped QEMU): QEMU's own.
        // Without qcow2's probes, one whose first call was on a node known by now as an
        // image file (qcow2's tables went to it) is QEMU's own too: reading the header
        // and tables at open.
        let on_file_node = self.cfg.qcow2_unprobed
            && super::state::level(root.top_probe) == 3
            && self.file_children.contains_key(&root.top_child);
        if root.source == Source::QemuBlock
            && ((self.cfg.expect_qcow2 && !root.qcow2)
                || self.cfg.virtio_from_block
                || on_file_node)
        {
            // QEMU reading or writing the image file itself (open, header, flush).
            let end = root.b.latest();
            self.stats.other_ios += 1;
            self.sink.other(&OtherIo {
                class: OtherClass::QemuInternal,
                start: root.b[Boundary::Parsed],
                end,
                bytes: root.bytes,
                dev: root.bottom_dev,
                disk: root.disks.and_then(Layout::one_disk),
            });
            self.roots.discard(r);
            return;
        }
        // A write of zeroes that qcow2 did in its tables alone (no host job) ends when
        // its last metadata IO does: nothing later of it is seen.
        let mut b = root.b;
        if root.source == Source::QemuBlock
            && root.nodata
            && b[Boundary::HostDone] == 0
            && b[Boundary::QemuDone] == 0
        {
            b[Boundary::QemuDone] = root.last;
        }
        let mut partial = root.partial | reason;
        let mut zeros = 0;
        // Flush, GET_ID, discard and SCSI commands without disk data carry no data
        // the host reads or writes: they need no host IO to be complete (QEMU may
        // answer them itself, or the trace lacks the fsync / fallocate probes).
        // `Other` is also what a trace without request types gives, so it still
        // expects host IO.
        let no_data = matches!(
            root.op,
            Op::Flush | Op::GetId | Op::Discard | Op::WriteZeroes | Op::Command
        );
        // Cut by the recording's start or stop: what it lacks is for that reason
        // alone.
        if root.cut_at_start {
            partial = reasons::CUT_AT_START;
        } else if reason == reasons::CUT_AT_END {
            partial = reasons::CUT_AT_END;
        } else if root.flags & flags::VIRTIO_MERGED == 0 && !no_data {
            if root.data_hios == 0 && root.qcow2 && root.op == Op::Read && root.open_hios == 0 {
                // qcow2 went through its tables and found nothing to read.
                zeros = flags::QCOW2_ZEROS;
            } else if root.data_hios == 0 {
                partial |= reasons::NO_HOST_IO;
            } else if root.b[Boundary::Dispatched] == 0
                && root.b[Boundary::DeviceDone] == 0
                // Bios queued but none seen on the bottom device is no device time
                // either: reporting it complete would charge that time to queueing.
                && root.flags & flags::FS_ZEROS == 0
                // Served by a page cache: there was no device IO to see.
                && root.flags & (flags::PAGE_CACHE_HIT | flags::PAGE_CACHE_WRITE) == 0
                && !self.layout.is_empty()
            {
                partial |= reasons::NO_DEVICE_IO;
            }
        }
        let cut = partial & (reasons::CUT_AT_START | reasons::CUT_AT_END) != 0;
        if root.open_hios > 0 && !cut {
            partial |= reasons::HOST_IO_UNFINISHED;
        }
        if root.source == Source::Virtio && root.b[Boundary::Completed] == 0 && !cut {
            partial |= reasons::NO_COMPLETION;
        }
        // A SCSI LUN is one disk: its commands that reached no image file are the
        // disk its others did, or the one the command line put at its address.
        let lun = (root.scsi_ctrl, root.scsi_addr);
        let lun_disk = || {
            self.lun_disks
                .iter()
                .find(|x| (x.0, x.1) == lun)
                .map(|x| x.2)
                .or_else(|| {
                    (lun.1 & super::scsi::NO_TARGET == 0)
                        .then(|| {
                            self.layout
                                .scsi_disk(root.vm, (lun.1 >> 16) & 0xff, lun.1 & 0x3fff)
                        })
                        .flatten()
                })
        };
        let disk = if let Some(d) = self.layout.only_disk_of(root.vm) {
            Some(d)
        } else {
            match root.disks.and_then(Layout::one_disk) {
                Some(d) => {
                    if root.bdrv_child != 0 {
                        self.child_disks.insert(root.bdrv_child, d);
                    }
                    if lun.1 != 0 && !self.lun_disks.iter().any(|x| (x.0, x.1) == lun) {
                        self.lun_disks.push((lun.0, lun.1, d));
                    }
                    Some(d)
                }
                None if lun.1 != 0 => lun_disk(),
                // Host IO naming no single disk (none, or a shared backing file's
                // only): its drive's, as the drive's earlier requests showed.
                None if root.bdrv_child != 0 => self.child_disks.get(&root.bdrv_child).copied(),
                None => None,
            }
        };
        let row = IoRow {
            id: root.id,
            vm: root.vm,
            op: root.op,
            offset: root.offset,
            bytes: root.bytes,
            source: root.source,
            b,
            host_ios: root.data_hios,
            meta_ios: root.meta_hios,
            meta_ns: root.meta_ns,
            throttle_ns: root.throttle_ns,
            readahead_bytes: root.readahead_bytes,
            synced_bytes: root.synced_bytes,
            dirty_wait_ns: root.dirty_wait_ns,
            bios: root.bios,
            requests: root.requests,
            bottom_dev: root.bottom_dev,
            disk,
            flags: root.flags | zeros,
            partial,
            merged_into: root.merged_into,
        };
        self.roots.discard(r);
        self.stats.ios += 1;
        if partial != 0 {
            self.stats.partial += 1;
        }
        self.sink.io(&row);
    }

    /// Once per millisecond of trace time; out of line, so that it takes no registers
    /// from the dispatch.
    #[cold]
    #[inline(never)]
    pub(super) fn sweep_now(&mut self) {
        self.sweep();
        self.next_sweep = self.now.saturating_add(1_000_000);
    }

    /// Finish what is idle or stale.
    pub(super) fn sweep(&mut self) {
        let now = self.now;
        let mut done = Vec::new();
        let threads = &self.threads;
        let callbacks = self.cfg.caller_callbacks;
        self.active.retain(|&r| {
            let Some(root) = self.roots.get(r) else {
                return false;
            };
            // All its host IO done, and nothing (no callback) expected to end it.
            // (A write of zeroes may need no host IO at all.)
            let over = root.open_hios == 0
                && root.source == Source::QemuBlock
                && !(callbacks && root.aio_opaque != 0)
                && (root.data_hios + root.meta_hios > 0 || root.nodata);
            let idle = over
                && threads
                    .get(root.tid)
                    .is_some_and(|t| t.seen.saturating_sub(root.last) > IDLE_NS);
            let stale = now.saturating_sub(root.last) > STALE_NS;
            if idle || stale {
                done.push((r, if over { 0 } else { reasons::NO_COMPLETION }));
                false
            } else {
                true
            }
        });
        for (r, why) in done {
            self.finish_root(r, why);
        }
        if self.msi_wait.iter().any(|&r| {
            self.roots
                .get(r)
                .is_some_and(|x| now.saturating_sub(x.last) > IDLE_NS)
        }) {
            for r in std::mem::take(&mut self.msi_wait) {
                self.finish_root(r, 0);
            }
        }
        // Bios whose owner is gone (completion not traced for this device).
        let hios = &self.hios;
        let other_ids = &self.other_ids;
        self.bios.retain(|_, b| match b.owner {
            BioOwner::Hio(h) => hios.get(h).is_some(),
            BioOwner::Other(id) => other_ids.contains_key(&id),
        });
        // Flush bios of host IOs over: their device's flush request never came (a
        // write-through device completes them at once).
        self.preflush.retain(|&(_, h)| hios.get(h).is_some());
        self.syncing.retain(|&(_, h)| hios.get(h).is_some());
        let roots = &self.roots;
        self.throttled.retain(|&r| {
            roots
                .get(r)
                .is_some_and(|x| !x.has_data_qiov && !x.completed)
        });
        self.flush_wait.retain(|&(_, h)| hios.get(h).is_some());
        self.sync_wait.retain(|&h| hios.get(h).is_some());
        self.falloc_wait.retain(|&(_, h)| hios.get(h).is_some());
        // Plugged bios whose host IO is over or whose bio is gone: no insert claimed them.
        let bios = &self.bios;
        self.plugged
            .retain(|p| hios.get(p.owner).is_some() && bios.contains_key(&p.bio));
        // Requests whose completion was lost (no device takes this long).
        let old: Vec<u64> = self
            .reqs
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.since) > STALE_NS)
            .map(|(&k, _)| k)
            .collect();
        for k in old {
            self.drop_req(k);
        }
        // Host IOs nothing will complete any more.
        let stale_hios: Vec<Ref> = self
            .inflight
            .iter()
            .copied()
            .filter(|&h| {
                self.hios
                    .get(h)
                    .is_some_and(|x| now.saturating_sub(x.created) > STALE_NS)
            })
            .collect();
        for h in stale_hios {
            self.forget_hio(h);
        }
        self.threads.forget_idle(now.saturating_sub(STALE_NS));
    }
}

impl<S: Sink> Join<'_, S> {
    /// The trace ended: report everything still open as it is.
    pub fn finish(mut self) -> (S, JoinStats) {
        // Host IOs whose completion is known from the block layer (linux-aio without the
        // direct-IO probe) complete there.
        let open: Vec<Ref> = self.inflight.clone();
        for h in open {
            let done = self.hios.get(h).map(|x| x.done_any).unwrap_or(0);
            if done != 0 {
                self.hio_done(h, done);
            }
        }
        self.cut_in_flight(None);
        let others: Vec<u32> = self.other_ids.keys().copied().collect();
        for id in others {
            if let Some(&r) = self.other_ids.get(&id)
                && let Some(o) = self.others.remove(r)
            {
                self.stats.other_ios += 1;
                self.sink.other(&o.io);
            }
        }
        (self.sink, self.stats)
    }

    /// The recording's end (`None`), or VM `vm`'s process exiting: every request still
    /// in flight (of that VM) is finished. One whose completion was lost would have gone
    /// stale long before: the recording stopped first.
    pub(super) fn cut_in_flight(&mut self, vm: Option<u16>) {
        let of_vm = |x: &super::state::Root| vm.is_none_or(|v| x.vm == v);
        let waiting: Vec<Ref> = self
            .msi_wait
            .iter()
            .copied()
            .filter(|&r| self.roots.get(r).is_some_and(of_vm))
            .collect();
        self.msi_wait.retain(|r| !waiting.contains(r));
        for r in waiting {
            self.finish_root(r, 0);
        }
        let mut rest: Vec<(u64, Ref)> = self
            .active
            .iter()
            .filter_map(|&r| self.roots.get(r).filter(|x| of_vm(x)).map(|x| (x.id, r)))
            .collect();
        rest.sort_unstable_by_key(|x| x.0);
        for (_, r) in rest {
            let reason = match self.roots.get(r) {
                Some(x) if x.source == Source::Virtio && !x.completed => {
                    self.stats.cut_at_end += 1;
                    reasons::CUT_AT_END
                }
                _ => 0,
            };
            self.finish_root(r, reason);
        }
    }
}
