//! File extents from the FIEMAP ioctl, as `filefrag -v` shows them.

use crate::addr::HostFileOffset;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// Flush delayed allocation first, so fresh writes have real physical addresses.
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const BATCH: usize = 256;

pub const FE_LAST: u32 = 0x1;
pub const FE_UNKNOWN: u32 = 0x2;
pub const FE_DELALLOC: u32 = 0x4;
pub const FE_ENCODED: u32 = 0x8;
pub const FE_ENCRYPTED: u32 = 0x80;
pub const FE_NOT_ALIGNED: u32 = 0x100;
pub const FE_INLINE: u32 = 0x200;
pub const FE_TAIL: u32 = 0x400;
pub const FE_UNWRITTEN: u32 = 0x800;
pub const FE_MERGED: u32 = 0x1000;
pub const FE_SHARED: u32 = 0x2000;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapHeader {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtentRaw {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct FiemapRequest {
    header: FiemapHeader,
    extents: [FiemapExtentRaw; BATCH],
}

/// One extent of a file: `length` bytes at file offset `logical` live at byte `physical`
/// of the filesystem's block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileExtent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

/// What a file range is, as far as the filesystem says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtentState {
    /// Written data at a known physical location.
    Mapped,
    /// Allocated but never written (reads as zeros, e.g. after fallocate).
    Unwritten,
    /// Not yet allocated (delayed allocation): no physical location yet.
    Delalloc,
    /// No extent: a hole, reads as zeros.
    Hole,
    /// The filesystem gives no usable device address (inline, encoded, unknown).
    NotOnDevice,
}

impl FileExtent {
    pub fn state(&self) -> ExtentState {
        if self.flags & FE_DELALLOC != 0 {
            ExtentState::Delalloc
        } else if self.flags & (FE_UNKNOWN | FE_ENCODED | FE_INLINE | FE_TAIL | FE_NOT_ALIGNED) != 0
        {
            ExtentState::NotOnDevice
        } else if self.flags & FE_UNWRITTEN != 0 {
            ExtentState::Unwritten
        } else {
            ExtentState::Mapped
        }
    }
    pub fn end(&self) -> u64 {
        self.logical + self.length
    }
}

/// All extents of `file`, sorted by file offset.
pub fn fiemap(file: &File) -> io::Result<Vec<FileExtent>> {
    let mut out: Vec<FileExtent> = Vec::new();
    let mut start = 0u64;
    let mut flags = FIEMAP_FLAG_SYNC;
    loop {
        let mut req = Box::new(FiemapRequest {
            header: FiemapHeader {
                start,
                length: u64::MAX - start,
                flags,
                extent_count: BATCH as u32,
                ..Default::default()
            },
            extents: [FiemapExtentRaw::default(); BATCH],
        });
        // SAFETY: FS_IOC_FIEMAP reads the header and writes at most extent_count extents
        // into the array that follows it, which `req` holds.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP as _,
                &mut *req as *mut FiemapRequest,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Only sync once: later batches see the same, already flushed, state.
        flags = 0;
        let n = (req.header.mapped_extents as usize).min(BATCH);
        if n == 0 {
            return Ok(out);
        }
        for raw in &req.extents[..n] {
            out.push(FileExtent {
                logical: raw.logical,
                physical: raw.physical,
                length: raw.length,
                flags: raw.flags,
            });
        }
        let last = out.last().expect("n > 0");
        if last.flags & FE_LAST != 0 || n < BATCH {
            return Ok(out);
        }
        let next = last.end();
        if next <= start {
            return Err(io::Error::other("FIEMAP did not advance"));
        }
        start = next;
    }
}

/// The piece of `[offset, offset + len)` that starts at `offset`: its extent (if any)
/// and its length, given extents sorted by file offset.
pub fn piece_at(
    extents: &[FileExtent],
    offset: HostFileOffset,
    len: u64,
) -> (Option<&FileExtent>, u64) {
    let offset = offset.0;
    let i = extents.partition_point(|e| e.end() <= offset);
    match extents.get(i) {
        Some(e) if e.logical <= offset => (Some(e), len.min(e.end() - offset)),
        Some(e) => (None, len.min(e.logical - offset)),
        None => (None, len),
    }
}
