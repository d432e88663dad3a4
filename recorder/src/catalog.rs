//! The probe catalog: every probe the recorder can attach, its layer, how it attaches,
//! what it records and what stands in when it cannot attach.

use serde::Serialize;
use viopath_probes::abi::{Arg, qemu_probe as q};

/// The layers of an IO's path, top to bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layer {
    /// KVM: the guest's doorbell writes (ioeventfd) and the interrupts injected back.
    Kvm,
    /// QEMU's virtio-blk device: guest requests.
    Virtio,
    /// QEMU's block backend and generic block layer.
    QemuBlock,
    /// QEMU's qcow2 driver.
    Qcow2,
    /// QEMU's file-posix driver: thread pool, linux-aio, io_uring submission.
    FilePosix,
    /// Host syscalls of the QEMU process.
    Syscall,
    /// Host io_uring.
    IoUring,
    /// The host filesystem's direct-IO path (iomap).
    Filesystem,
    /// The host block layer, every device down to the bottom one.
    Block,
}

impl Layer {
    /// The layer as the trace's probe lists name it (serde's kebab case, which differs
    /// from [`Layer::name`] only for io_uring).
    pub fn key(self) -> &'static str {
        match self {
            Layer::IoUring => "io-uring",
            l => l.name(),
        }
    }

    pub const ALL: [Layer; 9] = [
        Layer::Kvm,
        Layer::Virtio,
        Layer::QemuBlock,
        Layer::Qcow2,
        Layer::FilePosix,
        Layer::Syscall,
        Layer::IoUring,
        Layer::Filesystem,
        Layer::Block,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Layer::Kvm => "kvm",
            Layer::Virtio => "virtio",
            Layer::QemuBlock => "qemu-block",
            Layer::Qcow2 => "qcow2",
            Layer::FilePosix => "file-posix",
            Layer::Syscall => "syscall",
            Layer::IoUring => "io_uring",
            Layer::Filesystem => "filesystem",
            Layer::Block => "block",
        }
    }
}

/// How a kernel probe attaches.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelAttach {
    /// BTF-typed tracepoint (typed pointers, safe in IRQ context); where the kernel
    /// refuses it (another name, other arguments), each of `older` in turn.
    TpBtf {
        event: &'static str,
        older: &'static [OlderTracepoint],
    },
    /// Classic tracepoint.
    Tracepoint {
        category: &'static str,
        event: &'static str,
    },
    /// fentry (or fexit, `exit`) on a kernel function; where the kernel refuses those,
    /// the `fallback` program as a kprobe (kretprobe).
    Function {
        /// The probe's name in listings: the function, `.return` for the exit.
        name: &'static str,
        function: &'static str,
        exit: bool,
        fallback: &'static str,
    },
}

impl KernelAttach {
    /// The name a probe is listed and selected by.
    pub fn event(&self) -> &'static str {
        match *self {
            KernelAttach::TpBtf { event, .. } | KernelAttach::Tracepoint { event, .. } => event,
            KernelAttach::Function { name, .. } => name,
        }
    }
}

/// A tracepoint as older kernels have it, read by a program of its own: the same
/// events, under another name or with other arguments.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OlderTracepoint {
    pub program: &'static str,
    pub event: &'static str,
    /// The first kernel (major, minor) whose arguments the program reads: BTF cannot
    /// tell plain integer arguments apart, so an older kernel, whose arguments came in
    /// another order, is not given it.
    pub since: (u32, u32),
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelProbe {
    /// Program name in the eBPF object.
    pub program: &'static str,
    pub layer: Layer,
    pub attach: KernelAttach,
    pub records: &'static str,
}

const fn tp_btf(
    program: &'static str,
    event: &'static str,
    layer: Layer,
    records: &'static str,
) -> KernelProbe {
    tp_btf_or_older(program, event, &[], layer, records)
}

const fn tp_btf_or_older(
    program: &'static str,
    event: &'static str,
    older: &'static [OlderTracepoint],
    layer: Layer,
    records: &'static str,
) -> KernelProbe {
    KernelProbe {
        program,
        layer,
        attach: KernelAttach::TpBtf { event, older },
        records,
    }
}

const fn syscall(program: &'static str, event: &'static str, records: &'static str) -> KernelProbe {
    KernelProbe {
        program,
        layer: Layer::Syscall,
        attach: KernelAttach::Tracepoint {
            category: "syscalls",
            event,
        },
        records,
    }
}

const fn kvm(program: &'static str, records: &'static str) -> KernelProbe {
    KernelProbe {
        program,
        layer: Layer::Kvm,
        attach: KernelAttach::Tracepoint {
            category: "kvm",
            event: program,
        },
        records,
    }
}

const fn function(
    program: &'static str,
    name: &'static str,
    function: &'static str,
    exit: bool,
    fallback: &'static str,
    layer: Layer,
    records: &'static str,
) -> KernelProbe {
    KernelProbe {
        program,
        layer,
        attach: KernelAttach::Function {
            name,
            function,
            exit,
            fallback,
        },
        records,
    }
}

pub const KERNEL_PROBES: &[KernelProbe] = &[
    kvm(
        "kvm_fast_mmio",
        "guest doorbell write through an ioeventfd (virtio-pci notify): guest physical address",
    ),
    kvm(
        "kvm_mmio",
        "guest MMIO write: guest physical address, length, value",
    ),
    kvm(
        "kvm_msi_set_irq",
        "MSI injected into the guest (completion interrupt): address, data",
    ),
    function(
        "fs_read_enter",
        "ext4_file_read_iter",
        "ext4_file_read_iter",
        false,
        "fs_read_enter_kp",
        Layer::Filesystem,
        "ext4 read entered: kiocb, position, bytes, inode",
    ),
    function(
        "fs_read_exit",
        "ext4_file_read_iter.return",
        "ext4_file_read_iter",
        true,
        "fs_read_exit_kp",
        Layer::Filesystem,
        "ext4 read returned: kiocb (fexit only), result",
    ),
    function(
        "fs_write_enter",
        "ext4_file_write_iter",
        "ext4_file_write_iter",
        false,
        "fs_write_enter_kp",
        Layer::Filesystem,
        "ext4 write entered: kiocb, position, bytes, inode",
    ),
    function(
        "fs_write_exit",
        "ext4_file_write_iter.return",
        "ext4_file_write_iter",
        true,
        "fs_write_exit_kp",
        Layer::Filesystem,
        "ext4 write returned: kiocb (fexit only), result",
    ),
    function(
        "dm_submit",
        "dm_submit_bio",
        "dm_submit_bio",
        false,
        "dm_submit_kp",
        Layer::Block,
        "bio entering a device-mapper device: bio, sector, bytes",
    ),
    function(
        "dm_endio",
        "clone_endio",
        "clone_endio",
        false,
        "dm_endio_kp",
        Layer::Block,
        "device-mapper clone bio completing: bio, sector, bytes",
    ),
    tp_btf(
        "sync_enter",
        "ext4_sync_file_enter",
        Layer::Filesystem,
        "ext4 fsync/fdatasync begun, in any thread (aio fsync runs in a kernel worker): inode, device, datasync",
    ),
    tp_btf(
        "sync_exit",
        "ext4_sync_file_exit",
        Layer::Filesystem,
        "ext4 fsync/fdatasync ended: inode, device, return value",
    ),
    tp_btf(
        "aio_fsync_start",
        "workqueue_execute_start",
        Layer::Filesystem,
        "linux-aio fsync (QEMU's flush with aio=native) begun by a kernel worker, any filesystem: inode, device, datasync, work",
    ),
    KernelProbe {
        program: "aio_fsync_end",
        layer: Layer::Filesystem,
        attach: KernelAttach::Tracepoint {
            category: "workqueue",
            event: "workqueue_execute_end",
        },
        records: "linux-aio fsync work returned (after the fsync and its completion): work",
    },
    // A plain tracepoint: its record has kept one layout across kernels, while the
    // raw tracepoint's arguments changed in 6.2.
    KernelProbe {
        program: "dirty_throttle",
        layer: Layer::Filesystem,
        attach: KernelAttach::Tracepoint {
            category: "writeback",
            event: "balance_dirty_pages",
        },
        records: "a traced thread's buffered write paused by the dirty-page throttle: pause and period (jiffies), pages dirtied",
    },
    tp_btf(
        "thread_start",
        "sched_process_fork",
        Layer::Syscall,
        "a thread of a traced process started: thread id, process id (which VM an event's thread is)",
    ),
    tp_btf(
        "bio_queue",
        "block_bio_queue",
        Layer::Block,
        "bio queued: bio, device, sector, bytes, op",
    ),
    tp_btf(
        "bio_remap",
        "block_bio_remap",
        Layer::Block,
        "bio remapped (partition, dm): old and new device and sector",
    ),
    tp_btf(
        "bio_split",
        "block_split",
        Layer::Block,
        "bio split: bio, split sector",
    ),
    tp_btf(
        "bio_backmerge",
        "block_bio_backmerge",
        Layer::Block,
        "bio merged into a request (back)",
    ),
    tp_btf(
        "bio_frontmerge",
        "block_bio_frontmerge",
        Layer::Block,
        "bio merged into a request (front)",
    ),
    tp_btf(
        "bio_complete",
        "block_bio_complete",
        Layer::Block,
        "bio completed (bio-based devices)",
    ),
    // Attached after the one above: writes the events the kernel skipped it for.
    tp_btf(
        "bio_complete_nested",
        "block_bio_complete",
        Layer::Block,
        "the same, for the runs the kernel skipped the program above for (an interrupt came while it ran)",
    ),
    tp_btf(
        "rq_insert",
        "block_rq_insert",
        Layer::Block,
        "request inserted into the scheduler: request, first bio",
    ),
    tp_btf(
        "rq_issue",
        "block_rq_issue",
        Layer::Block,
        "request issued to the driver: request, first bio",
    ),
    tp_btf(
        "rq_merge",
        "block_rq_merge",
        Layer::Block,
        "request merged into another",
    ),
    tp_btf(
        "rq_complete",
        "block_rq_complete",
        Layer::Block,
        "request completed: request, status, bytes",
    ),
    // Attached after the one above: writes the events the kernel skipped it for.
    tp_btf(
        "rq_complete_nested",
        "block_rq_complete",
        Layer::Block,
        "the same, for the runs the kernel skipped the program above for (an interrupt came while it ran)",
    ),
    syscall(
        "enter_pread64",
        "sys_enter_pread64",
        "pread64: fd, offset, count",
    ),
    syscall("exit_pread64", "sys_exit_pread64", "pread64 return"),
    syscall(
        "enter_pwrite64",
        "sys_enter_pwrite64",
        "pwrite64: fd, offset, count",
    ),
    syscall("exit_pwrite64", "sys_exit_pwrite64", "pwrite64 return"),
    syscall(
        "enter_preadv",
        "sys_enter_preadv",
        "preadv: fd, offset, iovcnt",
    ),
    syscall("exit_preadv", "sys_exit_preadv", "preadv return"),
    syscall(
        "enter_pwritev",
        "sys_enter_pwritev",
        "pwritev: fd, offset, iovcnt",
    ),
    syscall("exit_pwritev", "sys_exit_pwritev", "pwritev return"),
    syscall(
        "enter_preadv2",
        "sys_enter_preadv2",
        "preadv2: fd, offset, iovcnt",
    ),
    syscall("exit_preadv2", "sys_exit_preadv2", "preadv2 return"),
    syscall(
        "enter_pwritev2",
        "sys_enter_pwritev2",
        "pwritev2: fd, offset, iovcnt",
    ),
    syscall("exit_pwritev2", "sys_exit_pwritev2", "pwritev2 return"),
    syscall(
        "enter_io_submit",
        "sys_enter_io_submit",
        "io_submit: aio context, number of iocbs",
    ),
    syscall("exit_io_submit", "sys_exit_io_submit", "io_submit return"),
    syscall(
        "enter_io_getevents",
        "sys_enter_io_getevents",
        "io_getevents",
    ),
    syscall(
        "exit_io_getevents",
        "sys_exit_io_getevents",
        "io_getevents return: completions reaped",
    ),
    syscall(
        "enter_io_pgetevents",
        "sys_enter_io_pgetevents",
        "io_pgetevents",
    ),
    syscall(
        "exit_io_pgetevents",
        "sys_exit_io_pgetevents",
        "io_pgetevents return",
    ),
    syscall(
        "enter_io_uring_enter",
        "sys_enter_io_uring_enter",
        "io_uring_enter: fd, to_submit, flags",
    ),
    syscall(
        "exit_io_uring_enter",
        "sys_exit_io_uring_enter",
        "io_uring_enter return",
    ),
    syscall(
        "enter_fdatasync",
        "sys_enter_fdatasync",
        "fdatasync: fd (QEMU's flush of an image)",
    ),
    syscall("exit_fdatasync", "sys_exit_fdatasync", "fdatasync return"),
    syscall("enter_fsync", "sys_enter_fsync", "fsync: fd"),
    syscall("exit_fsync", "sys_exit_fsync", "fsync return"),
    syscall(
        "enter_fallocate",
        "sys_enter_fallocate",
        "fallocate: fd, offset, length, mode (QEMU's discard and write zeroes of an image)",
    ),
    syscall("exit_fallocate", "sys_exit_fallocate", "fallocate return"),
    tp_btf_or_older(
        "uring_submit",
        "io_uring_submit_req",
        &[
            // Its name before 6.4, with the request as argument (6.1).
            OlderTracepoint {
                program: "uring_submit_sqe",
                event: "io_uring_submit_sqe",
                since: (5, 19),
            },
            // Before that (5.19, 6.0): ring, request, user_data, opcode.
            OlderTracepoint {
                program: "uring_submit_sqe_args",
                event: "io_uring_submit_sqe",
                since: (5, 19),
            },
        ],
        Layer::IoUring,
        "io_uring SQE submitted: user_data, opcode, ring",
    ),
    tp_btf_or_older(
        "uring_complete",
        "io_uring_complete",
        // Before the CQE was its argument (5.19 to 6.13): ring, request, user_data, result.
        &[OlderTracepoint {
            program: "uring_complete_args",
            event: "io_uring_complete",
            since: (5, 19),
        }],
        Layer::IoUring,
        "io_uring CQE posted: user_data, result",
    ),
    tp_btf(
        "dio_begin",
        "iomap_dio_rw_begin",
        Layer::Filesystem,
        "direct IO enters the filesystem: kiocb, position, bytes, inode",
    ),
    tp_btf(
        "dio_map",
        "iomap_iter_dstmap",
        Layer::Filesystem,
        "extent the filesystem used: inode, file offset, length, disk address",
    ),
    tp_btf(
        "dio_complete",
        "iomap_dio_complete",
        Layer::Filesystem,
        "direct IO completes in the filesystem: kiocb, result",
    ),
    // Attached after the one above: writes the events the kernel skipped it for.
    tp_btf(
        "dio_complete_nested",
        "iomap_dio_complete",
        Layer::Filesystem,
        "the same, for the runs the kernel skipped the program above for (an interrupt came while it ran)",
    ),
];

/// Which QEMU versions an argument layout applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Versions {
    /// Stable across every version we know.
    Any,
    /// This major.minor only.
    Exactly(u32, u32),
}

/// A QEMU function probed at entry (uretprobes crash QEMU's coroutines), and how its
/// arguments fill the event's four slots (key pointer, offset, bytes, aux).
#[derive(Debug, Clone, Serialize)]
pub struct QemuProbe {
    pub id: u8,
    pub symbol: &'static str,
    pub layer: Layer,
    pub records: &'static str,
    /// Argument layouts by version; a probe whose layout differs between versions is
    /// attached only for the versions listed.
    pub layouts: &'static [(Versions, [Arg; 4])],
}

// QEMUIOVector.size and RawPosixAIOData's fields, by offset (stable in 7.2 and 10.0).
// QEMUIOVector is { iov; niov; union { { nalloc; struct iovec local_iov }; { pad[12]; size } } }:
// the union is 8-aligned at 16, so size is at 16 + 12 rounded up to 8 = 32.
const QIOV_SIZE: u16 = 32;
const AIO_TYPE_FD: u16 = 8;
const AIO_OFFSET: u16 = 16;
const AIO_NBYTES: u16 = 24;
const MRB_NUM_REQS: u16 = 256;
// VirtIOBlockReq (7.2 and 10.0): VirtQueueElement (56 bytes), sector_num, dev, vq, two
// IOVDiscardUndo (24 each), in, then the guest's request header `out` { le32 type;
// le32 ioprio; le64 sector } and the data's qiov.
const VBR_OUT: u16 = 0x88;
// ... then the qiov (at 0x98, 40 bytes), in_len, next, mr_next, and the request's
// BlockAcctCookie { bytes; start; type }:
// its size as the guest asked (qiov.size, taken before virtio-blk merges requests: the
// first request's qiov then holds the merged total, and is emptied before it completes).
const VBR_ACCT_BYTES: u16 = 0xd8;
// SCSIRequest (10.0, which added its AioContext before them): after its header fields,
// the parsed command `cmd` at 64 { u8 buf[16]; int len; size_t xfer; u64 lba; mode }.
const SREQ_DEV: u16 = 8;
const SREQ_LUN: u16 = 40;
const SREQ_CDB: u16 = 64;
const SREQ_XFER: u16 = 88;
const SREQ_LBA: u16 = 96;
// VirtIOSCSIReq (10.0): its controller (VirtIOSCSI), its SCSIRequest, the response to
// the guest (`resp.cmd` { le32 sense_len; le32 resid; le16 status_qualifier;
// u8 status; u8 response }) and the request the guest wrote (`req.cmd`
// { u8 lun[8]; ... }).
const VSR_DEV: u16 = 56;
const VSR_SREQ: u16 = 176;
const VSR_RESP_STATUS: u16 = 196 + 8;
const VSR_REQ_LUN: u16 = 212;

macro_rules! one {
    ($a:expr) => {
        &[(Versions::Any, $a)]
    };
}

use Arg as A;

pub const QEMU_PROBES: &[QemuProbe] = &[
    QemuProbe {
        id: q::VIRTIO_HANDLE_REQUEST,
        symbol: "virtio_blk_handle_request",
        layer: Layer::Virtio,
        records: "guest request parsed: VirtIOBlockReq",
        layouts: one!([A::reg(0), A::NONE, A::NONE, A::NONE]),
    },
    QemuProbe {
        id: q::VIRTIO_SUBMIT_MULTIREQ,
        symbol: "virtio_blk_submit_multireq",
        layer: Layer::Virtio,
        records: "batch submitted: MultiReqBuffer, number of requests, first request",
        layouts: one!([
            A::reg(1),
            A::deref32(1, MRB_NUM_REQS),
            A::deref64(1, 0),
            A::NONE
        ]),
    },
    QemuProbe {
        id: q::VIRTIO_RW_COMPLETE,
        symbol: "virtio_blk_rw_complete",
        layer: Layer::Virtio,
        records: "block layer completed a request: VirtIOBlockReq, result",
        layouts: one!([A::reg(0), A::NONE, A::NONE, A::reg(1)]),
    },
    QemuProbe {
        id: q::VIRTIO_REQ_COMPLETE,
        symbol: "virtio_blk_req_complete",
        layer: Layer::Virtio,
        records: "completion pushed to the guest: VirtIOBlockReq, guest sector, request type (and ioprio), the request's own bytes",
        layouts: one!([
            A::reg(0),
            A::deref64(0, VBR_OUT + 8),
            A::deref64(0, VBR_OUT),
            A::deref64(0, VBR_ACCT_BYTES)
        ]),
    },
    QemuProbe {
        id: q::BLK_AIO_PREADV,
        symbol: "blk_aio_preadv",
        layer: Layer::QemuBlock,
        records: "async read from a device model: opaque (VirtIOBlockReq), offset, bytes, BlockBackend",
        layouts: one!([A::reg(5), A::reg(1), A::deref64(2, QIOV_SIZE), A::reg(0)]),
    },
    QemuProbe {
        id: q::BLK_AIO_PWRITEV,
        symbol: "blk_aio_pwritev",
        layer: Layer::QemuBlock,
        records: "async write from a device model: opaque (VirtIOBlockReq), offset, bytes, BlockBackend",
        layouts: one!([A::reg(5), A::reg(1), A::deref64(2, QIOV_SIZE), A::reg(0)]),
    },
    QemuProbe {
        id: q::BLK_AIO_FLUSH,
        symbol: "blk_aio_flush",
        layer: Layer::QemuBlock,
        records: "flush from a device model: opaque (VirtIOBlockReq), BlockBackend",
        layouts: one!([A::reg(2), A::NONE, A::NONE, A::reg(0)]),
    },
    QemuProbe {
        id: q::BLK_AIO_PDISCARD,
        symbol: "blk_aio_pdiscard",
        layer: Layer::QemuBlock,
        records: "discard from a device model: opaque (VirtIOBlockReq), offset, bytes, the opaque's first word (scsi-disk's: its SCSIRequest)",
        layouts: one!([A::reg(4), A::reg(1), A::reg(2), A::deref64(4, 0)]),
    },
    QemuProbe {
        id: q::BLK_AIO_PWRITE_ZEROES,
        symbol: "blk_aio_pwrite_zeroes",
        layer: Layer::QemuBlock,
        records: "write of zeroes from a device model: opaque (VirtIOBlockReq), offset, bytes, the opaque's first word (scsi-disk's: its SCSIRequest)",
        layouts: one!([A::reg(5), A::reg(1), A::reg(2), A::deref64(5, 0)]),
    },
    QemuProbe {
        id: q::SCSI_REQ_ENQUEUE,
        symbol: "scsi_req_enqueue",
        layer: Layer::Virtio,
        records: "SCSI command handed to its device (virtio-scsi submits what it parsed): SCSIRequest, LBA, transfer bytes, the CDB's first 8 bytes",
        layouts: &[(
            Versions::Exactly(10, 0),
            [
                A::reg(0),
                A::deref64(0, SREQ_LBA),
                A::deref64(0, SREQ_XFER),
                A::deref64(0, SREQ_CDB),
            ],
        )],
    },
    QemuProbe {
        id: q::VIRTIO_SCSI_COMPLETE,
        symbol: "virtio_scsi_complete_cmd_req",
        layer: Layer::Virtio,
        records: "virtio-scsi response pushed to the guest: SCSIRequest, the guest's 8-byte LUN, status (qualifier | status << 16 | response << 24), the controller (VirtIOSCSI)",
        layouts: &[(
            Versions::Exactly(10, 0),
            [
                A::deref64(0, VSR_SREQ),
                A::deref64(0, VSR_REQ_LUN),
                A::deref32(0, VSR_RESP_STATUS),
                A::deref64(0, VSR_DEV),
            ],
        )],
    },
    QemuProbe {
        id: q::SCSI_REQ_COMPLETE,
        symbol: "scsi_req_complete",
        layer: Layer::Virtio,
        records: "SCSI command completed by its device (where virtio-scsi's completion cannot be probed): SCSIRequest, LUN, status, SCSIDevice",
        layouts: &[(
            Versions::Exactly(10, 0),
            [
                A::reg(0),
                A::deref32(0, SREQ_LUN),
                A::reg(1),
                A::deref64(0, SREQ_DEV),
            ],
        )],
    },
    QemuProbe {
        id: q::BLK_CO_PREADV_PART,
        symbol: "blk_co_preadv_part",
        layer: Layer::QemuBlock,
        records: "block backend read: qiov, guest offset, bytes, BlockBackend",
        layouts: one!([A::reg(3), A::reg(1), A::reg(2), A::reg(0)]),
    },
    QemuProbe {
        id: q::BLK_CO_PWRITEV_PART,
        symbol: "blk_co_pwritev_part",
        layer: Layer::QemuBlock,
        records: "block backend write: qiov, guest offset, bytes, BlockBackend",
        layouts: one!([A::reg(3), A::reg(1), A::reg(2), A::reg(0)]),
    },
    QemuProbe {
        id: q::BDRV_CO_PREADV_PART,
        symbol: "bdrv_co_preadv_part",
        layer: Layer::QemuBlock,
        records: "read on a block node (format or protocol): qiov, node offset, bytes, BdrvChild",
        layouts: one!([A::reg(3), A::reg(1), A::reg(2), A::reg(0)]),
    },
    QemuProbe {
        id: q::BDRV_CO_PWRITEV_PART,
        symbol: "bdrv_co_pwritev_part",
        layer: Layer::QemuBlock,
        records: "write on a block node (format or protocol): qiov, node offset, bytes, BdrvChild",
        layouts: one!([A::reg(3), A::reg(1), A::reg(2), A::reg(0)]),
    },
    QemuProbe {
        id: q::THROTTLE_INTERCEPT,
        symbol: "throttle_group_co_io_limits_intercept",
        layer: Layer::QemuBlock,
        records: "a request entering QEMU's IO throttling (once per request of a throttled drive; it waits there when over the limit): ThrottleGroupMember, bytes, direction",
        layouts: one!([A::reg(0), A::reg(1), A::reg(2), A::NONE]),
    },
    QemuProbe {
        id: q::BDRV_CO_PDISCARD,
        symbol: "bdrv_co_pdiscard",
        layer: Layer::QemuBlock,
        records: "discard on a block node (format or protocol): -, node offset, bytes, BdrvChild",
        layouts: one!([A::NONE, A::reg(1), A::reg(2), A::reg(0)]),
    },
    QemuProbe {
        id: q::QCOW2_CO_PREADV_PART,
        symbol: "qcow2_co_preadv_part",
        layer: Layer::Qcow2,
        records: "qcow2 read: qiov, guest offset, bytes, BlockDriverState",
        layouts: one!([A::reg(3), A::reg(1), A::reg(2), A::reg(0)]),
    },
    QemuProbe {
        id: q::QCOW2_CO_PWRITEV_PART,
        symbol: "qcow2_co_pwritev_part",
        layer: Layer::Qcow2,
        records: "qcow2 write: qiov, guest offset, bytes, BlockDriverState",
        layouts: one!([A::reg(3), A::reg(1), A::reg(2), A::reg(0)]),
    },
    QemuProbe {
        id: q::RAW_CO_PRW,
        symbol: "raw_co_prw",
        layer: Layer::FilePosix,
        records: "file-posix request: qiov, host offset, bytes, type",
        layouts: &[
            // 10.0: raw_co_prw(bs, int64_t *offset_ptr, bytes, qiov, type, flags)
            (
                Versions::Exactly(10, 0),
                [A::reg(3), A::deref64(1, 0), A::reg(2), A::reg(4)],
            ),
            // 7.2: raw_co_prw(bs, offset, bytes, qiov, type)
            (
                Versions::Exactly(7, 2),
                [A::reg(3), A::reg(1), A::reg(2), A::reg(4)],
            ),
        ],
    },
    QemuProbe {
        id: q::THREAD_POOL_SUBMIT_AIO,
        symbol: "thread_pool_submit_aio",
        layer: Layer::FilePosix,
        records: "thread-pool job (aio=threads): RawPosixAIOData, offset, bytes, type | fd << 32",
        layouts: one!([
            A::reg(1),
            A::deref64(1, AIO_OFFSET),
            A::deref64(1, AIO_NBYTES),
            A::deref64(1, AIO_TYPE_FD)
        ]),
    },
    QemuProbe {
        id: q::HANDLE_AIOCB_RW,
        symbol: "handle_aiocb_rw",
        layer: Layer::FilePosix,
        records: "thread-pool worker runs the job: RawPosixAIOData, offset, bytes, type | fd << 32 (its tid issues the syscall)",
        layouts: one!([
            A::reg(0),
            A::deref64(0, AIO_OFFSET),
            A::deref64(0, AIO_NBYTES),
            A::deref64(0, AIO_TYPE_FD)
        ]),
    },
    QemuProbe {
        id: q::LAIO_CO_SUBMIT,
        symbol: "laio_co_submit",
        layer: Layer::FilePosix,
        records: "linux-aio submission (aio=native): qiov, host offset, bytes, type | fd << 32",
        layouts: &[
            // 10.0: laio_co_submit(fd, offset, qiov, type, flags)
            (
                Versions::Exactly(10, 0),
                [
                    A::reg(2),
                    A::reg(1),
                    A::deref64(2, QIOV_SIZE),
                    A::reg_pair(3, 0),
                ],
            ),
            // 7.2: laio_co_submit(bs, s, fd, offset, qiov, type, dev_max_batch)
            (
                Versions::Exactly(7, 2),
                [
                    A::reg(4),
                    A::reg(3),
                    A::deref64(4, QIOV_SIZE),
                    A::reg_pair(5, 2),
                ],
            ),
        ],
    },
    QemuProbe {
        id: q::LURING_CO_SUBMIT,
        symbol: "luring_co_submit",
        layer: Layer::FilePosix,
        records: "io_uring submission (aio=io_uring): qiov, host offset, bytes, type | fd << 32",
        layouts: &[
            // 10.0: luring_co_submit(bs, fd, offset, qiov, type, flags)
            (
                Versions::Exactly(10, 0),
                [
                    A::reg(3),
                    A::reg(2),
                    A::deref64(3, QIOV_SIZE),
                    A::reg_pair(4, 1),
                ],
            ),
            // 7.2: luring_co_submit(bs, s, fd, offset, qiov, type)
            (
                Versions::Exactly(7, 2),
                [
                    A::reg(4),
                    A::reg(3),
                    A::deref64(4, QIOV_SIZE),
                    A::reg_pair(5, 2),
                ],
            ),
        ],
    },
    // qemu-io's own AIO completion callbacks. A request made with `blk_aio_*` ends in
    // the callback its caller passed; virtio-blk's is probed above. These two are
    // qemu-io's `aio_read`/`aio_write`: its clock for a request stops as the callback
    // starts, so with them a qemu-io request's row ends where qemu-io's time ends.
    QemuProbe {
        id: q::QEMU_IO_AIO_READ_DONE,
        symbol: "aio_read_done",
        layer: Layer::QemuBlock,
        records: "qemu-io's aio_read completed: its request context (the opaque of blk_aio_preadv), result",
        layouts: one!([A::reg(0), A::NONE, A::NONE, A::reg(1)]),
    },
    QemuProbe {
        id: q::QEMU_IO_AIO_WRITE_DONE,
        symbol: "aio_write_done",
        layer: Layer::QemuBlock,
        records: "qemu-io's aio_write completed: its request context (the opaque of blk_aio_pwritev), result",
        layouts: one!([A::reg(0), A::NONE, A::NONE, A::reg(1)]),
    },
];

/// Probes attached only where another is not (`(fallback, primary)`): a stripped QEMU
/// exports the first, a build with symbols has the second, which says more.
pub const QEMU_FALLBACKS: &[(&str, &str)] =
    &[("scsi_req_complete", "virtio_scsi_complete_cmd_req")];

impl QemuProbe {
    /// The argument layout for QEMU `major.minor`, if known.
    pub fn layout_for(&self, version: Option<(u32, u32)>) -> Option<[Arg; 4]> {
        self.layouts.iter().find_map(|(v, a)| match (v, version) {
            (Versions::Any, _) => Some(*a),
            (Versions::Exactly(ma, mi), Some((x, y))) if (*ma, *mi) == (x, y) => Some(*a),
            _ => None,
        })
    }

    /// Versions with a known layout, for messages.
    pub fn known_versions(&self) -> String {
        self.layouts
            .iter()
            .map(|(v, _)| match v {
                Versions::Any => "any".to_owned(),
                Versions::Exactly(a, b) => format!("{a}.{b}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys_are_how_the_trace_serializes_layers() {
        for l in Layer::ALL {
            assert_eq!(serde_json::to_value(l).unwrap(), l.key(), "{l:?}");
        }
    }

    #[test]
    fn catalog_is_consistent() {
        let mut ids: Vec<u8> = QEMU_PROBES.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), QEMU_PROBES.len(), "probe ids are unique");
        assert!(QEMU_PROBES.iter().all(|p| !p.layouts.is_empty()));
        // Version-specific probes resolve only for their versions.
        let laio = QEMU_PROBES
            .iter()
            .find(|p| p.symbol == "laio_co_submit")
            .unwrap();
        assert!(laio.layout_for(Some((10, 0))).is_some());
        assert!(laio.layout_for(Some((8, 1))).is_none());
        assert!(laio.layout_for(None).is_none());
        let blk = QEMU_PROBES
            .iter()
            .find(|p| p.symbol == "blk_co_preadv_part")
            .unwrap();
        assert!(blk.layout_for(None).is_some());
        // A fallback comes after its primary (attach decides by what came first).
        let at = |s: &str| QEMU_PROBES.iter().position(|p| p.symbol == s).unwrap();
        for (fallback, primary) in QEMU_FALLBACKS {
            assert!(at(primary) < at(fallback), "{fallback} before {primary}");
        }
        // Every kernel program exists in the compiled object.
        let obj = viopath_probes::object();
        let older = KERNEL_PROBES.iter().flat_map(|p| match p.attach {
            KernelAttach::TpBtf { older, .. } => older.iter().map(|o| o.program).collect(),
            _ => Vec::new(),
        });
        for program in KERNEL_PROBES.iter().map(|p| p.program).chain(older) {
            assert!(
                obj.windows(program.len()).any(|w| w == program.as_bytes()),
                "{program} not in the object"
            );
        }
    }
}
