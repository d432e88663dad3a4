//! virtio-blk through a stripped QEMU's exported functions alone (a distribution's
//! binary: `.dynsym`, no `.symtab`). Its parse (`virtio_blk_handle_request`), batch
//! and block-completion callbacks are static and cannot be probed; what is exported is
//! the block layer's `blk_aio_*` (whose opaque is the VirtIOBlockReq) and
//! `virtio_blk_req_complete`. So a guest request is made where the block layer first
//! names its VirtIOBlockReq, and ends, as with symbols, at its completion; a request
//! virtio-blk merged into another's block request (which names only the first) is the
//! completion, right after that one's on the same thread, inside its block range; one
//! QEMU answers without the block layer (GET_ID) is its completion alone.

use super::row::{Op, Sink, Source, flags};
use super::slab::Ref;
use super::state::{Join, QiovBind};
use crate::layers::Boundary;
use viopath_layouts::GuestOffset;
use viopath_probes::abi::RawEvent;

/// How long after the request it was merged into a merged request completes: the same
/// loop of QEMU's, microseconds apart.
const MERGED_WITHIN_NS: u64 = 1_000_000;

impl<S: Sink> Join<'_, S> {
    /// A guest request first seen in the block layer (`virtio_from_block`): keyed by
    /// its VirtIOBlockReq, as a parsed one is.
    pub(super) fn virtio_from_block(&mut self, e: &RawEvent, req: u64, op: Op) -> Ref {
        self.new_guest_request(e, req, op)
    }

    /// `blk_aio_pdiscard`, `blk_aio_pwrite_zeroes`: a device model's request without
    /// data, named by its opaque (virtio-blk's VirtIOBlockReq) or by the first word of
    /// it (scsi-disk's callback data, which starts with its SCSIRequest); from a
    /// stripped QEMU, the request itself. Its operation is known before its completion
    /// says so, and its first block call, which follows in the coroutine this call
    /// enters on this thread at the same range, is its.
    #[inline(never)]
    pub(super) fn blk_aio_nodata(&mut self, e: &RawEvent, op: Op) {
        let [opaque, off, bytes, first_word] = e.a;
        let r = match self
            .virtio
            .get(&opaque)
            .or_else(|| self.virtio.get(&first_word))
        {
            Some(&r) => r,
            None if self.cfg.virtio_from_block => self.virtio_from_block(e, opaque, op),
            None => return,
        };
        if let Some(root) = self.roots.get_mut(r)
            && !root.completed
        {
            if root.op == Op::Other {
                root.op = op;
            }
            self.threads.at(e.tid, e.ts).last_bdrv = Some((QiovBind::Root(r), off, bytes));
        }
    }

    /// The block range a request made from the block layer had, as it completes: the
    /// range of every request virtio-blk merged into it.
    pub(super) fn note_batch_range(
        &mut self,
        tid: u32,
        ts: u64,
        op: Op,
        at: GuestOffset,
        len: u64,
    ) {
        self.threads.at(tid, ts).batch_range = Some((op, at, len));
    }

    /// A completion of a request never seen in the block layer, from a stripped QEMU:
    /// one virtio-blk merged into the request completed just before it on this thread
    /// (a row with that one's path, flagged `virtio_merged`), or one QEMU answered
    /// itself (GET_ID: a row of its completion alone). False when it is neither (one in
    /// flight when the recording started).
    pub(super) fn virtio_answered_unseen(&mut self, e: &RawEvent) -> bool {
        let [_, sector, kind, bytes] = e.a;
        let op = Op::from_virtio(kind as u32);
        let offset = GuestOffset(sector.saturating_mul(512));
        let t = self.threads.get(e.tid);
        let batch = t.and_then(|t| t.completion_batch);
        let range = t.and_then(|t| t.batch_range);
        let merged = match (batch, range) {
            (Some((id, b, at, disks)), Some((rop, start, len)))
                if op.moves_data()
                    && op == rop
                    && e.ts.saturating_sub(at) < MERGED_WITHIN_NS
                    && offset.0 >= start.0
                    && offset.0.saturating_add(bytes) <= start.0.saturating_add(len) =>
            {
                Some((id, b, disks))
            }
            _ => None,
        };
        let r = match (merged, op) {
            (Some((id, b, disks)), _) => {
                let r = self.new_root(e, Source::Virtio);
                let Some(root) = self.roots.get_mut(r) else {
                    return true;
                };
                root.b.copy_span(&b, Boundary::Notify, Boundary::QemuDone);
                root.disks = disks;
                root.flags |= flags::VIRTIO_MERGED;
                root.merged_into = Some(id);
                r
            }
            (None, Op::GetId | Op::Other) => self.new_root(e, Source::Virtio),
            (None, _) => return false,
        };
        if let Some(root) = self.roots.get_mut(r) {
            root.op = op;
            if op.moves_data() {
                root.offset = Some(offset);
                root.bytes = bytes;
            }
            root.b[Boundary::Completed] = e.ts;
            root.last = e.ts;
            root.completed = true;
        }
        // As `answered` does, without metadata IO to release (none was its).
        if self.cfg.await_msi {
            self.msi_wait.push(r);
        } else {
            self.finish_root(r, 0);
        }
        true
    }
}
