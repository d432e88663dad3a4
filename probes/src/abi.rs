//! Rust mirror of `bpf/viopath.h`: what one event record is and what its fields mean.
//! The layout is asserted at compile time; the header's `VP_ABI_VERSION` and
//! [`ABI_VERSION`] must move together.

use serde::Serialize;

pub const ABI_VERSION: u32 = 1;
pub const MAX_USPECS: u32 = 64;
/// `VP_MAX_PROCESSES`: the processes (VMs) one recording traces at most.
pub const MAX_PROCESSES: u32 = 256;
pub const MAX_TYPES: u32 = 64;
/// Ring buffers the events are spread over, by CPU number modulo this; their maps are
/// `events0` … `events3`.
pub const RING_SHARDS: u32 = 4;

/// A bio's `bi_opf` flags (carried in a bio event's fourth slot), at the bit positions
/// the kernel has used since 4.10 (`enum req_flag_bits`, after 8 bits of operation).
pub mod req_flags {
    /// Write through to stable media (emulated by a flush after the write where the
    /// device has no FUA).
    pub const FUA: u64 = 1 << 17;
    /// Flush the device's cache before the write.
    pub const PREFLUSH: u64 = 1 << 18;
}

/// One event as the kernel writes it into the ring buffer (`struct vp_event`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts: u64,
    pub tid: u32,
    pub kind: u8,
    pub sub: u8,
    pub cpu: u16,
    pub a: [u64; 4],
}

const _: () = assert!(std::mem::size_of::<RawEvent>() == 48);
const _: () = assert!(std::mem::offset_of!(RawEvent, tid) == 8);
const _: () = assert!(std::mem::offset_of!(RawEvent, kind) == 12);
const _: () = assert!(std::mem::offset_of!(RawEvent, sub) == 13);
const _: () = assert!(std::mem::offset_of!(RawEvent, cpu) == 14);
const _: () = assert!(std::mem::offset_of!(RawEvent, a) == 16);

impl RawEvent {
    pub const SIZE: usize = 48;

    /// Decode a ring-buffer record; `None` if it is not exactly one event.
    pub fn from_bytes(b: &[u8]) -> Option<RawEvent> {
        if b.len() != Self::SIZE {
            return None;
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Some(RawEvent {
            ts: u64_at(0),
            tid: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            kind: b[12],
            sub: b[13],
            cpu: u16::from_le_bytes([b[14], b[15]]),
            a: [u64_at(16), u64_at(24), u64_at(32), u64_at(40)],
        })
    }
}

/// `enum vp_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum EventKind {
    BioQueue = 1,
    BioRemap = 2,
    BioSplit = 3,
    BioMerge = 4,
    BioComplete = 5,
    RqInsert = 6,
    RqIssue = 7,
    RqComplete = 8,
    RqMerge = 9,
    SysEnter = 16,
    SysExit = 17,
    UringSubmit = 18,
    UringComplete = 19,
    DioBegin = 20,
    DioMap = 21,
    DioComplete = 22,
    KvmMmio = 24,
    KvmMsi = 25,
    FsEnter = 26,
    FsExit = 27,
    DmSubmit = 28,
    DmEndio = 29,
    FsSync = 30,
    Qemu = 32,
    DirtyThrottle = 33,
    Thread = 34,
}

impl EventKind {
    pub const ALL: [EventKind; 26] = [
        EventKind::BioQueue,
        EventKind::BioRemap,
        EventKind::BioSplit,
        EventKind::BioMerge,
        EventKind::BioComplete,
        EventKind::RqInsert,
        EventKind::RqIssue,
        EventKind::RqComplete,
        EventKind::RqMerge,
        EventKind::SysEnter,
        EventKind::SysExit,
        EventKind::UringSubmit,
        EventKind::UringComplete,
        EventKind::DioBegin,
        EventKind::DioMap,
        EventKind::DioComplete,
        EventKind::KvmMmio,
        EventKind::KvmMsi,
        EventKind::FsEnter,
        EventKind::FsExit,
        EventKind::DmSubmit,
        EventKind::DmEndio,
        EventKind::FsSync,
        EventKind::Qemu,
        EventKind::DirtyThrottle,
        EventKind::Thread,
    ];

    pub fn from_u8(v: u8) -> Option<EventKind> {
        Self::ALL.iter().copied().find(|k| *k as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::BioQueue => "bio_queue",
            EventKind::BioRemap => "bio_remap",
            EventKind::BioSplit => "bio_split",
            EventKind::BioMerge => "bio_merge",
            EventKind::BioComplete => "bio_complete",
            EventKind::RqInsert => "rq_insert",
            EventKind::RqIssue => "rq_issue",
            EventKind::RqComplete => "rq_complete",
            EventKind::RqMerge => "rq_merge",
            EventKind::SysEnter => "sys_enter",
            EventKind::SysExit => "sys_exit",
            EventKind::UringSubmit => "io_uring_submit",
            EventKind::UringComplete => "io_uring_complete",
            EventKind::DioBegin => "dio_begin",
            EventKind::DioMap => "dio_map",
            EventKind::DioComplete => "dio_complete",
            EventKind::KvmMmio => "kvm_mmio",
            EventKind::KvmMsi => "kvm_msi",
            EventKind::FsEnter => "fs_enter",
            EventKind::FsExit => "fs_exit",
            EventKind::DmSubmit => "dm_submit",
            EventKind::DmEndio => "dm_endio",
            EventKind::FsSync => "fs_sync",
            EventKind::Qemu => "qemu",
            EventKind::DirtyThrottle => "dirty_throttle",
            EventKind::Thread => "thread",
        }
    }
}

/// `enum vp_syscall`: the `sub` of SysEnter/SysExit events.
pub const SYSCALLS: [(u8, &str); 13] = [
    (1, "pread64"),
    (2, "pwrite64"),
    (3, "preadv"),
    (4, "pwritev"),
    (5, "preadv2"),
    (6, "pwritev2"),
    (7, "io_submit"),
    (8, "io_getevents"),
    (9, "io_uring_enter"),
    (10, "io_pgetevents"),
    (11, "fdatasync"),
    (12, "fsync"),
    (13, "fallocate"),
];

/// A kernel `dev_t` (major << 20 | minor) as the events carry it.
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | minor
}

/// (major, minor) of a kernel `dev_t`.
pub fn split_kernel_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xfffff)
}

/// `enum vp_arg_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ArgKind {
    None = 0,
    Reg = 1,
    Deref64 = 2,
    Deref32 = 3,
    RegPair = 4,
}

/// `struct vp_arg`: where one payload slot of a QEMU event comes from.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Arg {
    pub kind: u8,
    pub reg: u8,
    pub off: u16,
}

impl Arg {
    pub const NONE: Arg = Arg {
        kind: ArgKind::None as u8,
        reg: 0,
        off: 0,
    };
    /// Argument `reg` (0-based) itself.
    pub const fn reg(reg: u8) -> Arg {
        Arg {
            kind: ArgKind::Reg as u8,
            reg,
            off: 0,
        }
    }
    /// The u64 at `*(arg reg + off)` in the traced process.
    pub const fn deref64(reg: u8, off: u16) -> Arg {
        Arg {
            kind: ArgKind::Deref64 as u8,
            reg,
            off,
        }
    }
    pub const fn deref32(reg: u8, off: u16) -> Arg {
        Arg {
            kind: ArgKind::Deref32 as u8,
            reg,
            off,
        }
    }
    /// The low 32 bits of argument `lo`, with those of argument `hi` above them: two
    /// `int` arguments in one slot.
    pub const fn reg_pair(lo: u8, hi: u8) -> Arg {
        Arg {
            kind: ArgKind::RegPair as u8,
            reg: lo,
            off: hi as u16,
        }
    }
}

/// `struct vp_uspec`: how the generic QEMU uprobe fills one event.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Uspec {
    pub probe: u32,
    pub pad: u32,
    pub arg: [Arg; 4],
}

const _: () = assert!(std::mem::size_of::<Arg>() == 4);
const _: () = assert!(std::mem::size_of::<Uspec>() == 24);

impl Uspec {
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.probe.to_le_bytes());
        for (i, a) in self.arg.iter().enumerate() {
            let o = 8 + i * 4;
            b[o] = a.kind;
            b[o + 1] = a.reg;
            b[o + 2..o + 4].copy_from_slice(&a.off.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `NAME = value` and `#define NAME value` in the C header.
    fn header_constants() -> std::collections::HashMap<String, u64> {
        let mut m = std::collections::HashMap::new();
        for line in include_str!("../bpf/viopath.h").lines() {
            let line = line.split("/*").next().unwrap().trim();
            let (name, value) = if let Some(rest) = line.strip_prefix("#define ") {
                let mut f = rest.split_whitespace();
                (f.next(), f.next())
            } else if let Some((n, v)) = line.split_once('=') {
                (Some(n.trim()), Some(v.trim().trim_end_matches(',')))
            } else {
                continue;
            };
            if let (Some(n), Some(Ok(v))) = (name, value.map(str::parse::<u64>)) {
                m.insert(n.to_owned(), v);
            }
        }
        m
    }

    /// The C header and this file agree on every constant.
    #[test]
    fn header_and_mirror_agree() {
        let c = header_constants();
        let get = |n: &str| *c.get(n).unwrap_or_else(|| panic!("{n} not in viopath.h"));
        assert_eq!(get("VP_ABI_VERSION"), ABI_VERSION as u64);
        assert_eq!(get("VP_MAX_USPECS"), MAX_USPECS as u64);
        assert_eq!(get("VP_MAX_PROCESSES"), MAX_PROCESSES as u64);
        assert_eq!(get("VP_MAX_TYPES"), MAX_TYPES as u64);
        assert_eq!(get("VP_RING_SHARDS"), RING_SHARDS as u64);
        for k in EventKind::ALL {
            let cname = match k {
                EventKind::UringSubmit => "VP_URING_SUBMIT".to_owned(),
                EventKind::UringComplete => "VP_URING_COMPLETE".to_owned(),
                _ => format!("VP_{}", k.name().to_uppercase()),
            };
            assert_eq!(get(&cname), k as u64, "{cname}");
        }
        for (id, name) in SYSCALLS {
            assert_eq!(
                get(&format!("VP_SC_{}", name.to_uppercase())),
                id as u64,
                "{name}"
            );
        }
        assert_eq!(get("VP_ARG_NONE"), ArgKind::None as u64);
        assert_eq!(get("VP_ARG_REG"), ArgKind::Reg as u64);
        assert_eq!(get("VP_ARG_DEREF64"), ArgKind::Deref64 as u64);
        assert_eq!(get("VP_ARG_DEREF32"), ArgKind::Deref32 as u64);
        assert_eq!(get("VP_ARG_REG_PAIR"), ArgKind::RegPair as u64);
    }

    #[test]
    fn event_round_trip() {
        let mut b = [0u8; 48];
        b[0..8].copy_from_slice(&123u64.to_le_bytes());
        b[8..12].copy_from_slice(&77u32.to_le_bytes());
        b[12] = 7;
        b[13] = 1;
        b[14..16].copy_from_slice(&1u16.to_le_bytes());
        b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = RawEvent::from_bytes(&b).unwrap();
        assert_eq!(
            (e.ts, e.tid, e.kind, e.sub, e.cpu, e.a[3]),
            (123, 77, 7, 1, 1, u64::MAX)
        );
        assert!(RawEvent::from_bytes(&b[..47]).is_none());
        assert_eq!(split_kernel_dev(kernel_dev(259, 3)), (259, 3));
    }
}

/// QEMU probe ids (the `sub` of a [`EventKind::Qemu`] event), as the recorder's catalog
/// assigns them; the catalog checks its table against these.
pub mod qemu_probe {
    pub const VIRTIO_HANDLE_REQUEST: u8 = 1;
    pub const VIRTIO_SUBMIT_MULTIREQ: u8 = 2;
    pub const VIRTIO_RW_COMPLETE: u8 = 3;
    pub const VIRTIO_REQ_COMPLETE: u8 = 4;
    pub const BLK_AIO_PREADV: u8 = 5;
    pub const BLK_AIO_PWRITEV: u8 = 6;
    pub const BLK_CO_PREADV_PART: u8 = 7;
    pub const BLK_CO_PWRITEV_PART: u8 = 8;
    pub const BDRV_CO_PREADV_PART: u8 = 9;
    pub const BDRV_CO_PWRITEV_PART: u8 = 10;
    pub const QCOW2_CO_PREADV_PART: u8 = 11;
    pub const QCOW2_CO_PWRITEV_PART: u8 = 12;
    pub const QCOW2_CACHE_GET: u8 = 13;
    pub const RAW_CO_PRW: u8 = 14;
    pub const THREAD_POOL_SUBMIT_AIO: u8 = 15;
    pub const HANDLE_AIOCB_RW: u8 = 16;
    pub const LAIO_CO_SUBMIT: u8 = 17;
    pub const LURING_CO_SUBMIT: u8 = 18;
    pub const QEMU_IO_AIO_READ_DONE: u8 = 19;
    pub const QEMU_IO_AIO_WRITE_DONE: u8 = 20;
    pub const BDRV_CO_PDISCARD: u8 = 21;
    pub const THROTTLE_INTERCEPT: u8 = 22;
    pub const BLK_AIO_FLUSH: u8 = 23;
    /// `scsi_req_enqueue`: a SCSI command handed to its device (virtio-scsi's parse).
    pub const SCSI_REQ_ENQUEUE: u8 = 24;
    /// `virtio_scsi_complete_cmd_req`: a virtio-scsi command's response pushed to the
    /// guest (a3: its controller).
    pub const VIRTIO_SCSI_COMPLETE: u8 = 25;
    /// `blk_aio_pdiscard`, `blk_aio_pwrite_zeroes`: a device model's discard or write
    /// of zeroes (opaque, offset, bytes, the opaque's first word: scsi-disk's callback
    /// data starts with its request).
    pub const BLK_AIO_PDISCARD: u8 = 26;
    pub const BLK_AIO_PWRITE_ZEROES: u8 = 27;
    /// `scsi_req_complete`: a SCSI command's status set (exported where
    /// `virtio_scsi_complete_cmd_req` is not; attached only then).
    pub const SCSI_REQ_COMPLETE: u8 = 28;
    /// `raw_co_prw`'s type argument (QEMU_AIO_*).
    pub const AIO_READ: u64 = 1;
    pub const AIO_WRITE: u64 = 2;
    /// `QEMU_AIO_FLUSH`: an fdatasync of the image (thread pool), or an io_uring fsync.
    pub const AIO_FLUSH: u64 = 8;
    /// `QEMU_AIO_DISCARD`, `QEMU_AIO_WRITE_ZEROES`: a fallocate of the image file
    /// (thread pool; punch hole, zero range).
    pub const AIO_DISCARD: u64 = 0x10;
    pub const AIO_WRITE_ZEROES: u64 = 0x20;
}
