//! Several VMs in one trace: which VM (QEMU process) an event is of, and its
//! process-local values made distinct across VMs, so that the rest of the join keys on
//! them as it does with one.
//!
//! Events carry a thread id. The trace lists each VM's threads when its tracing began
//! and as the recorder saw them since, and a `thread` event names every thread a traced
//! process started. An event the traced process made itself (QEMU's probes, its
//! syscalls, io_uring submissions, KVM) is its VM's; an io_uring completion, wherever
//! it runs, is the VM's that submitted to its ring. Block-layer events stay untagged:
//! their keys are the kernel's own, unique host-wide, and they find their request by
//! those and by address.
//!
//! Within a VM, QEMU's pointers, io_uring user_data and file descriptors are that
//! process's: two QEMUs of one binary may hold the same values. Each is tagged with its
//! VM's number above the bits it uses (user-space pointers are below 2^56, even with
//! five-level page tables; descriptors below 2^24), the same way wherever it appears:
//! a descriptor in a syscall and in QEMU's `type | fd << 32` alike. VM 0's values are
//! left as they are, so a trace of one VM is joined exactly as before.

use super::slab::Map;
use crate::layout::VmSpec;
use viopath_probes::abi::{EventKind, RawEvent, qemu_probe as q};

/// The VM number of pointers sits above bit 56, of descriptors above bit 24.
const POINTER_SHIFT: u32 = 56;
const FD_SHIFT: u32 = 24;

/// QEMU probes whose fourth value is a pointer (BlockBackend, BdrvChild, the SCSI
/// controller or device, an opaque's first word) or QEMU's `type | fd << 32`; the
/// others' is a number (a CDB, a byte count, a request type).
const A3_OF_PROCESS: [u8; 18] = [
    q::BLK_AIO_PREADV,
    q::BLK_AIO_PWRITEV,
    q::BLK_AIO_FLUSH,
    q::BLK_AIO_PDISCARD,
    q::BLK_AIO_PWRITE_ZEROES,
    q::BLK_CO_PREADV_PART,
    q::BLK_CO_PWRITEV_PART,
    q::BDRV_CO_PREADV_PART,
    q::BDRV_CO_PWRITEV_PART,
    q::BDRV_CO_PDISCARD,
    q::QCOW2_CO_PREADV_PART,
    q::QCOW2_CO_PWRITEV_PART,
    q::VIRTIO_SCSI_COMPLETE,
    q::SCSI_REQ_COMPLETE,
    q::THREAD_POOL_SUBMIT_AIO,
    q::HANDLE_AIOCB_RW,
    q::LAIO_CO_SUBMIT,
    q::LURING_CO_SUBMIT,
];

/// Which VM events are of.
#[derive(Default)]
pub(super) struct Vms {
    /// More than one VM: events are looked up and tagged.
    pub(super) many: bool,
    threads: Map<u32, u16>,
    /// (pid, VM, traced from): a pid reused by a later VM is the later one's from then.
    pids: Vec<(u32, u16, u64)>,
    /// io_uring rings (the kernel's context pointer) by the VM that submitted to them.
    rings: Map<u64, u16>,
    /// VMs whose tracing ended before the recording's, by when.
    ends: Vec<(u64, u16)>,
    next_end: usize,
    /// Events of the traced processes whose thread no VM was known to have.
    pub(super) unattributed: u64,
}

impl Vms {
    pub(super) fn new(specs: &[VmSpec]) -> Vms {
        let mut v = Vms {
            many: specs.len() > 1,
            ..Vms::default()
        };
        for (i, s) in specs.iter().enumerate() {
            let vm = i as u16;
            v.pids.push((s.pid, vm, s.traced_from_ns));
            for &t in &s.threads {
                v.threads.insert(t, vm);
            }
            if let Some(t) = s.traced_until_ns {
                v.ends.push((t, vm));
            }
        }
        v.ends.sort_unstable();
        v
    }

    /// A VM whose tracing ended before `ts`, once each, in the order they ended.
    pub(super) fn ended_before(&mut self, ts: u64) -> Option<u16> {
        let &(t, vm) = self.ends.get(self.next_end)?;
        (t < ts).then(|| {
            self.next_end += 1;
            vm
        })
    }

    fn of_pid(&self, pid: u32, ts: u64) -> Option<u16> {
        self.pids
            .iter()
            .filter(|p| p.0 == pid)
            .min_by_key(|p| (p.2 > ts, std::cmp::Reverse(p.2)))
            .map(|p| p.1)
    }

    /// The VM of `e`'s thread; an unknown one is counted and taken for VM 0.
    fn of_thread(&mut self, tid: u32) -> u16 {
        match self.threads.get(&tid) {
            Some(&vm) => vm,
            None => {
                self.unattributed += 1;
                0
            }
        }
    }

    /// `e`'s VM (0 for a block-layer event, which is no VM's by itself) and `e` with
    /// its process-local values tagged.
    pub(super) fn tag(&mut self, e: &RawEvent) -> (u16, RawEvent) {
        const QEMU: u8 = EventKind::Qemu as u8;
        const SYS_ENTER: u8 = EventKind::SysEnter as u8;
        const URING_SUBMIT: u8 = EventKind::UringSubmit as u8;
        const URING_COMPLETE: u8 = EventKind::UringComplete as u8;
        const THREAD: u8 = EventKind::Thread as u8;
        const SYS_EXIT: u8 = EventKind::SysExit as u8;
        const DIO_BEGIN: u8 = EventKind::DioBegin as u8;
        const DIO_MAP: u8 = EventKind::DioMap as u8;
        const KVM_MMIO: u8 = EventKind::KvmMmio as u8;
        const KVM_MSI: u8 = EventKind::KvmMsi as u8;
        const FS_ENTER: u8 = EventKind::FsEnter as u8;
        const FS_EXIT: u8 = EventKind::FsExit as u8;
        const FS_SYNC: u8 = EventKind::FsSync as u8;
        const DIRTY: u8 = EventKind::DirtyThrottle as u8;
        let mut t = *e;
        let vm = match e.kind {
            THREAD => {
                let vm = self.of_pid(e.a[1] as u32, e.ts);
                if let Some(vm) = vm {
                    self.threads.insert(e.a[0] as u32, vm);
                }
                vm.unwrap_or(0)
            }
            QEMU => {
                let vm = self.of_thread(e.tid);
                t.a[0] = pointer(e.a[0], vm);
                if A3_OF_PROCESS.contains(&e.sub) {
                    t.a[3] = pointer(e.a[3], vm);
                }
                vm
            }
            SYS_ENTER => {
                let vm = self.of_thread(e.tid);
                t.a[0] = match e.sub {
                    // io_submit, io_getevents, io_pgetevents: an AIO context (an
                    // address in the process).
                    7 | 8 | 10 => pointer(e.a[0], vm),
                    _ => e.a[0] | u64::from(vm) << FD_SHIFT,
                };
                vm
            }
            URING_SUBMIT => {
                let vm = self.of_thread(e.tid);
                self.rings.insert(e.a[2], vm);
                t.a[0] = pointer(e.a[0], vm);
                vm
            }
            URING_COMPLETE => {
                let vm = self.rings.get(&e.a[2]).copied().unwrap_or(0);
                t.a[0] = pointer(e.a[0], vm);
                vm
            }
            SYS_EXIT | DIO_BEGIN | DIO_MAP | KVM_MMIO | KVM_MSI | FS_ENTER | FS_EXIT | DIRTY => {
                self.of_thread(e.tid)
            }
            // An fsync runs in a traced thread or in a kernel worker.
            FS_SYNC => self.threads.get(&e.tid).copied().unwrap_or(0),
            _ => 0,
        };
        (vm, t)
    }
}

/// A pointer of VM `vm`'s process (NULL stays NULL).
fn pointer(p: u64, vm: u16) -> u64 {
    if p == 0 {
        0
    } else {
        p | u64::from(vm) << POINTER_SHIFT
    }
}
