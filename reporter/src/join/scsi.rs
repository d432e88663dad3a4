//! virtio-scsi's side of a request: the SCSI command handed to its device, and the
//! response pushed back to the guest. Between the two, a command's data moves by
//! QEMU's DMA helpers through the same block layer as virtio-blk's (see `qemu`): its
//! `blk_aio_*` calls name the DMA request, not the command, and are the command's by
//! thread (the first after the command was handed over, on the thread that did it),
//! then by that DMA request.
//!
//! A virtio-scsi request gets virtio-blk's boundaries but `qemu_done`: the SCSI
//! device's completion runs straight into virtio-scsi's, with nothing between them
//! worth a probe, so `qemu_completion` runs to `completed`.

use super::row::{Op, Sink, Source, reasons};
use super::state::Join;
use crate::layers::Boundary;
use viopath_probes::abi::RawEvent;

/// In a packed address: the target is not known (see `scsi_req_complete`).
pub(super) const NO_TARGET: u32 = 1 << 30;

/// A SCSI target and LUN, packed as requests keep them: the top bit set (0 is none),
/// the target in bits 16..24, the LUN in the low 14 bits.
pub(super) fn scsi_addr(lun_field: u64) -> u32 {
    // virtio-scsi's 8-byte LUN field, read little-endian: byte 0 is 1, byte 1 the
    // target, bytes 2 and 3 the LUN in SAM's flat space (0x4000 | LUN), big-endian.
    let target = (lun_field >> 8) & 0xff;
    let lun = ((((lun_field >> 16) & 0xff) << 8) | ((lun_field >> 24) & 0xff)) & 0x3fff;
    (1 << 31) | (target << 16) as u32 | lun as u32
}

impl<S: Sink> Join<'_, S> {
    /// `scsi_req_enqueue`: virtio-scsi hands a command it parsed to its SCSI device: a
    /// new guest request, keyed by its SCSIRequest until its response. The command's
    /// opcode says what it is; its data's place on the disk comes with its DMA.
    #[inline(never)]
    pub(super) fn scsi_req_enqueue(&mut self, e: &RawEvent) {
        let [req, _lba, xfer, cdb] = e.a;
        if let Some(old) = self.virtio.remove(&req) {
            self.finish_root(old, reasons::KEY_REUSED);
        }
        let op = Op::from_scsi(cdb);
        let r = self.new_guest_request(e, req, op);
        if op.moves_data()
            && let Some(root) = self.roots.get_mut(r)
        {
            // The guest's size until its DMA says where (a command whose data never
            // moves keeps no place on the disk).
            root.bytes = xfer;
        }
        self.threads.at(e.tid, e.ts).scsi_pending = op.moves_data().then_some(req);
    }

    /// `virtio_scsi_complete_cmd_req`: a command's response pushed to the guest's ring.
    /// A response with no SCSIRequest is to a command QEMU refused before making one
    /// (a LUN with no disk: the guest's bus scan), which no block layer counts.
    #[inline(never)]
    pub(super) fn virtio_scsi_complete(&mut self, e: &RawEvent) {
        let [req, lun, _status, controller] = e.a;
        if req != 0 {
            self.scsi_answered(e, req, scsi_addr(lun), controller);
        }
    }

    /// `scsi_req_complete`, where virtio-scsi's completion cannot be probed (a
    /// stripped QEMU): the command's status set, virtio-scsi's response pushed right
    /// after. Its LUN is known by its SCSIDevice and number, not its target.
    #[inline(never)]
    pub(super) fn scsi_req_complete(&mut self, e: &RawEvent) {
        let [req, lun, _status, device] = e.a;
        let addr = (1 << 31) | NO_TARGET | (lun as u32 & 0x3fff);
        self.scsi_answered(e, req, addr, device);
    }

    fn scsi_answered(&mut self, e: &RawEvent, req: u64, addr: u32, controller: u64) {
        let Some(r) = self.virtio.remove(&req) else {
            // In flight when the recording started: nothing of it but its end (its
            // opcode was in the command, not seen).
            let r = self.new_root(e, Source::Virtio);
            self.stats.cut_at_start += 1;
            if let Some(root) = self.roots.get_mut(r) {
                root.b[Boundary::Parsed] = 0;
                root.b[Boundary::Completed] = e.ts;
                root.completed = true;
                root.cut_at_start = true;
                root.scsi_addr = addr;
                root.scsi_ctrl = controller;
            }
            self.finish_root(r, reasons::CUT_AT_START);
            return;
        };
        let Some(root) = self.roots.get_mut(r) else {
            return;
        };
        root.b[Boundary::Completed] = e.ts;
        root.last = e.ts;
        root.completed = true;
        root.virtio_req = 0;
        root.scsi_addr = addr;
        root.scsi_ctrl = controller;
        self.answered(r);
    }
}
