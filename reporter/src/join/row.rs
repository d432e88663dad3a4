//! What the join hands out: one [`IoRow`] per guest-visible IO, one [`OtherIo`] per IO
//! no guest request caused, through a [`Sink`]; their operations, flags and the
//! reasons a row is partial, with the names the report prints for them.

use crate::layers::Boundaries;
use serde::Serialize;
use viopath_layouts::GuestOffset;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Read,
    Write,
    Other,
    /// virtio-blk FLUSH: QEMU flushes the image (qcow2 metadata, then fdatasync).
    Flush,
    /// virtio-blk DISCARD and WRITE_ZEROES.
    Discard,
    WriteZeroes,
    /// virtio-blk GET_ID: answered by QEMU without IO.
    GetId,
    /// A SCSI command that moves no disk data (INQUIRY, TEST UNIT READY, READ
    /// CAPACITY, MODE SENSE, ...): QEMU's SCSI emulation answers it without IO.
    Command,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Read,
        Op::Write,
        Op::Other,
        Op::Flush,
        Op::Discard,
        Op::WriteZeroes,
        Op::GetId,
        Op::Command,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Other => "other",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write_zeroes",
            Op::GetId => "get_id",
            Op::Command => "scsi_command",
        }
    }

    /// From a virtio-blk request header's type (VIRTIO_BLK_T_*; the old BARRIER bit
    /// is ignored).
    pub fn from_virtio(t: u32) -> Op {
        match t & !0x8000_0000 {
            0 => Op::Read,
            1 => Op::Write,
            4 => Op::Flush,
            8 => Op::GetId,
            11 => Op::Discard,
            13 => Op::WriteZeroes,
            _ => Op::Other,
        }
    }

    /// From a SCSI command descriptor block's first bytes (`cdb[0]` the low byte): the
    /// opcodes (SBC-4) a disk's data or cache goes through; every other command is
    /// QEMU's to answer.
    pub fn from_scsi(cdb: u64) -> Op {
        match cdb & 0xff {
            // READ (6), (10), (12), (16)
            0x08 | 0x28 | 0xa8 | 0x88 => Op::Read,
            // WRITE (6), (10), (12), (16); WRITE AND VERIFY (10), (12), (16)
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e => Op::Write,
            // SYNCHRONIZE CACHE (10), (16)
            0x35 | 0x91 => Op::Flush,
            // UNMAP
            0x42 => Op::Discard,
            // WRITE SAME (10), (16): what Linux sends for a write of zeroes.
            0x41 | 0x93 => Op::WriteZeroes,
            _ => Op::Command,
        }
    }

    /// Moves data between the guest and the image (so host IO is expected).
    pub fn moves_data(self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }
}

/// Which layer an IO was first seen at: the top of its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A virtio-blk request from the guest.
    Virtio,
    /// A QEMU block request (blk_aio_*, blk_co_*, bdrv_co_*): no virtio layer traced,
    /// or QEMU's own user (qemu-io, a block job).
    QemuBlock,
}

pub mod flags {
    /// Its data went to the host as more than one IO (qcow2 cluster boundaries).
    pub const SPLIT: u16 = 1;
    /// A block request carried its data together with another IO's.
    pub const MERGED: u16 = 2;
    /// virtio-blk merged it into the request before it; times are that request's.
    pub const VIRTIO_MERGED: u16 = 4;
    /// A bio was split in the block layer.
    pub const BIO_SPLIT: u16 = 8;
    /// Part of it read a hole or an unwritten extent of the image file: the host
    /// filesystem returned zeros without device IO.
    pub const FS_ZEROS: u16 = 16;
    /// A buffered read the host page cache served whole: no block IO, its host time
    /// is the copy.
    pub const PAGE_CACHE_HIT: u16 = 32;
    /// A buffered read that waited for block IO: its own (the kernel's readahead
    /// issued in its syscall), or another's already reading its pages.
    pub const PAGE_CACHE_MISS: u16 = 64;
    /// A buffered write: complete once copied into the host page cache; the device
    /// sees it at writeback (a flush's sync, or the kernel's flusher).
    pub const PAGE_CACHE_WRITE: u16 = 128;
    /// A page-cache hit on pages an earlier read's readahead brought in.
    pub const READAHEAD_HIT: u16 = 256;
    /// Its host part included a sync of the image file of its own (cache mode
    /// writethrough or directsync, or qcow2 ordering its metadata).
    pub const SYNCED: u16 = 512;
    /// It went no lower than a loop device without direct IO: the loop's backing file's
    /// page cache absorbed it, and the loop device's time is its device time.
    pub const LOOP_PAGE_CACHE: u16 = 1024;
    /// Its buffered write slept in the kernel's dirty-page throttle.
    pub const DIRTY_THROTTLED: u16 = 2048;
    /// A read qcow2 answered from its tables alone: every cluster it covers is
    /// unallocated (in the whole backing chain) or reads as zeros, so no host IO.
    pub const QCOW2_ZEROS: u16 = 4096;
    /// A flush that went no lower than a loop device: the loop's worker synced the
    /// backing file without a request of its own to the disk below (that filesystem's
    /// journal thread flushed the disk, or nothing needed it). The loop device's
    /// flush request is its device time.
    pub const LOOP_FLUSH: u16 = 8192;
    /// The names the report prints, in bit order.
    pub const NAMES: [(u16, &str); 14] = [
        (SPLIT, "split"),
        (MERGED, "merged"),
        (VIRTIO_MERGED, "virtio_merged"),
        (BIO_SPLIT, "bio_split"),
        (FS_ZEROS, "fs_zeros"),
        (PAGE_CACHE_HIT, "page_cache_hit"),
        (PAGE_CACHE_MISS, "page_cache_miss"),
        (PAGE_CACHE_WRITE, "page_cache_write"),
        (READAHEAD_HIT, "readahead_hit"),
        (SYNCED, "synced"),
        (LOOP_PAGE_CACHE, "loop_page_cache"),
        (DIRTY_THROTTLED, "dirty_throttled"),
        (QCOW2_ZEROS, "qcow2_zeros"),
        (LOOP_FLUSH, "loop_flush"),
    ];
}

pub mod reasons {
    pub const NO_HOST_IO: u16 = 1;
    pub const HOST_IO_UNFINISHED: u16 = 2;
    pub const NO_COMPLETION: u16 = 4;
    pub const KEY_REUSED: u16 = 8;
    pub const NO_DEVICE_IO: u16 = 16;
    /// In flight when the recording started: only its end is in the trace.
    pub const CUT_AT_START: u16 = 32;
    /// In flight when the recording stopped: its end is not in the trace.
    pub const CUT_AT_END: u16 = 64;
    pub const NAMES: [(u16, &str); 7] = [
        (
            NO_HOST_IO,
            "no host IO joined (events lost, or served from QEMU's cache)",
        ),
        (HOST_IO_UNFINISHED, "a host IO never completed in the trace"),
        (
            NO_COMPLETION,
            "no completion seen (trace ended, or events lost)",
        ),
        (
            KEY_REUSED,
            "its pointer was reused before it completed (events lost)",
        ),
        (
            NO_DEVICE_IO,
            "no block request of its host IO seen on the bottom device",
        ),
        (
            CUT_AT_START,
            "in flight when the recording started (its beginning not traced)",
        ),
        (
            CUT_AT_END,
            "in flight when the recording stopped (its end not traced)",
        ),
    ];
}

/// One guest-visible IO, joined.
#[derive(Debug, Clone, Serialize)]
pub struct IoRow {
    /// Order of arrival.
    pub id: u64,
    /// The VM it is of: the trace's VM number (0 in a trace of one).
    pub vm: u16,
    pub op: Op,
    /// Guest offset (bytes), when a layer that knows it was traced.
    pub offset: Option<GuestOffset>,
    pub bytes: u64,
    pub source: Source,
    /// Boundary timestamps, ns; 0 = absent.
    pub b: Boundaries,
    /// Host IOs carrying its data, and qcow2 metadata IOs it caused.
    pub host_ios: u32,
    pub meta_ios: u32,
    pub meta_ns: u64,
    /// Time it waited in QEMU's IO throttling (part of the `qemu` layer), ns.
    pub throttle_ns: u64,
    /// Bytes the host read ahead beyond it (buffered reads), in its own syscall.
    pub readahead_bytes: u64,
    /// Bytes of image file data its host syncs wrote to the device (a flush's
    /// writeback of dirty pages; a write-through write's own sync).
    pub synced_bytes: u64,
    /// Time its buffered writes slept in the dirty-page throttle (part of `host_fs`),
    /// as the kernel asked (its pause, in ticks of the recording kernel's HZ), ns.
    pub dirty_wait_ns: u64,
    pub bios: u32,
    pub requests: u32,
    /// Bottom device (kernel dev_t), 0 if none.
    pub bottom_dev: u32,
    /// The VM's disk it was for (index in the layout's disks): known from the image
    /// file the kernel named for its host IO, or when the VM has one disk.
    pub disk: Option<u16>,
    pub flags: u16,
    /// Why the row is partial (see [`reasons`]); 0 = complete.
    pub partial: u16,
    /// For virtio-merged requests: the id of the request that carried it.
    pub merged_into: Option<u64>,
}

impl IoRow {
    /// A complete 4 KiB virtio read with one host IO, for tests to vary.
    #[cfg(test)]
    pub(crate) fn example() -> IoRow {
        IoRow {
            id: 0,
            vm: 0,
            op: Op::Read,
            offset: Some(GuestOffset(0)),
            bytes: 4096,
            source: Source::Virtio,
            b: Boundaries::new(),
            host_ios: 1,
            meta_ios: 0,
            meta_ns: 0,
            throttle_ns: 0,
            readahead_bytes: 0,
            synced_bytes: 0,
            dirty_wait_ns: 0,
            bios: 1,
            requests: 1,
            bottom_dev: 0,
            disk: None,
            flags: 0,
            partial: 0,
            merged_into: None,
        }
    }
}

/// What IO that belongs to no guest request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum OtherClass {
    /// QEMU file IO outside any guest request: qcow2 metadata flushes, header updates.
    QemuInternal,
    /// A positioned syscall of the QEMU process that no QEMU block event led to.
    QemuSyscall,
    /// Writes to an image file's sectors that no traced request issued: the kernel's
    /// writeback of the image's dirty pages, or another process writing the file.
    ImageWriteback,
    /// Reads of an image file's sectors that no traced request issued: readahead by a
    /// thread not traced (a loop device's worker), or another process reading it.
    ImageRead,
    /// Image file IO on a device below the one holding the image's filesystem (a loop
    /// device's worker carrying out IO counted where it entered the stack).
    ImageBelow,
    /// Block IO on the devices below the images, elsewhere: filesystem journal, other
    /// files, other processes.
    OtherDeviceIo,
}

impl OtherClass {
    pub fn name(self) -> &'static str {
        match self {
            OtherClass::QemuInternal => "qemu internal file IO (qcow2 metadata flush, header)",
            OtherClass::QemuSyscall => "qemu syscall outside block requests",
            OtherClass::ImageWriteback => "image file writes not from a request (writeback)",
            OtherClass::ImageRead => "image file reads not from a request (readahead)",
            OtherClass::ImageBelow => "image file IO lower in its stack (counted above it)",
            OtherClass::OtherDeviceIo => "other IO on the same devices (journal, other files)",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OtherIo {
    pub class: OtherClass,
    pub start: u64,
    pub end: u64,
    pub bytes: u64,
    pub dev: u32,
    /// The VM disk whose image files its sectors hold, when one does.
    pub disk: Option<u16>,
}

/// A row's flags as the report prints them: their names, comma-separated.
pub fn flag_names(f: u16) -> String {
    flags::NAMES
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a row is partial, as the report prints it.
pub fn reason_names(p: u16) -> String {
    reasons::NAMES
        .iter()
        .filter(|(bit, _)| p & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("; ")
}

pub trait Sink {
    fn io(&mut self, row: &IoRow);
    fn other(&mut self, other: &OtherIo);
}
