//! All layers composed: one call takes a guest file offset (or a guest disk offset) down
//! through the partition, the qcow2 chain and the host's files and devices.

use crate::addr::{GuestLba, GuestOffset, HostFileOffset};
use crate::guest::{GuestError, GuestFileLocation, GuestLayout, GuestOwner};
use crate::host::{HostError, HostResolver, HostSegment, Topology};
use crate::qcow2::{Chain, Content, FileRole, LocatedKind, Qcow2Error, ReverseExtent, ReverseMap};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{0}")]
    Range(String),
}

pub type Result<T> = std::result::Result<T, StackError>;

/// What to read besides the qcow2 chain.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Read the guest's partitions and filesystems from the image.
    pub guest: bool,
    /// Resolve host files to device sectors (FIEMAP + sysfs).
    pub host: bool,
    /// `dmsetup table` text to use instead of asking the kernel.
    pub dm_tables: Option<String>,
}

/// The address stack of one virtual disk.
pub struct Stack {
    pub chain: Chain,
    pub guest: Option<GuestLayout>,
    /// Why the guest side could not be read, if it was asked for.
    pub guest_error: Option<String>,
    host: Option<HostResolver>,
    reverse: HashMap<usize, ReverseMap>,
}

/// One piece of a guest range with a single mapping through the chain.
#[derive(Debug, Clone, Serialize)]
pub struct Piece {
    pub guest_offset: GuestOffset,
    pub len: u64,
    /// Layer that holds the bytes (0 = top image).
    pub depth: usize,
    #[serde(flatten)]
    pub kind: LocatedKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_role: Option<FileRole>,
    /// Host bytes holding the piece (for compressed data: the compressed bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_offset: Option<HostFileOffset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_len: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<HostSegment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_error: Option<String>,
}

/// The whole chain for one guest range.
#[derive(Debug, Clone, Serialize)]
pub struct Translation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_file: Option<GuestFileLocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_owner: Option<GuestOwner>,
    pub guest_offset: GuestOffset,
    pub guest_lba: GuestLba,
    pub len: u64,
    pub pieces: Vec<Piece>,
}

/// What one byte of a host file of the chain holds, and who in the guest owns it.
#[derive(Debug, Clone, Serialize)]
pub struct HostLookup {
    pub file: PathBuf,
    pub offset: HostFileOffset,
    pub extent: ReverseExtent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_offset: Option<GuestOffset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_owner: Option<GuestOwner>,
}

impl Stack {
    pub fn open(image: &Path, opts: &StackOptions) -> Result<Stack> {
        let chain = Chain::open(image)?;
        let (guest, guest_error) = if opts.guest {
            match GuestLayout::read(&chain) {
                Ok(g) => (Some(g), None),
                Err(e) => (None, Some(crate::error_text(&e))),
            }
        } else {
            (None, None)
        };
        let host = if opts.host {
            let mut topo = Topology::system();
            if let Some(t) = &opts.dm_tables {
                topo.add_dm_tables(t)?;
            }
            Some(HostResolver::new(topo))
        } else {
            None
        };
        Ok(Stack {
            chain,
            guest,
            guest_error,
            host,
            reverse: HashMap::new(),
        })
    }

    /// Host device segments of `[offset, offset + len)` of chain file `file`, or why not.
    pub fn host_segments(
        &mut self,
        file: usize,
        offset: HostFileOffset,
        len: u64,
    ) -> Option<std::result::Result<Vec<HostSegment>, HostError>> {
        let path = self.chain.files[file].path.clone();
        self.host.as_mut().map(|h| h.resolve(&path, offset, len))
    }

    /// Translate guest disk bytes `[offset, offset + len)`.
    pub fn translate(&mut self, offset: GuestOffset, len: u64) -> Result<Translation> {
        let size = self.chain.virtual_size();
        if offset.0 >= size || len == 0 || offset.0.checked_add(len).is_none_or(|e| e > size) {
            return Err(StackError::Range(format!(
                "guest range {}+{len} is outside the {size}-byte virtual disk",
                offset.0
            )));
        }
        let mut pieces = Vec::new();
        let mut pos = offset.0;
        let end = offset.0 + len;
        while pos < end {
            let l = self.chain.locate(GuestOffset(pos));
            let n = l.len.min(end - pos);
            let (host_offset, host_len) = match l.kind {
                LocatedKind::Data { host } | LocatedKind::ZeroAlloc { host } => {
                    (Some(HostFileOffset(host)), Some(n))
                }
                LocatedKind::Compressed { host, len, .. } => {
                    (Some(HostFileOffset(host)), Some(len))
                }
                LocatedKind::Unallocated { host: Some(host) } => {
                    (Some(HostFileOffset(host)), Some(n))
                }
                _ => (None, None),
            };
            let mut piece = Piece {
                guest_offset: GuestOffset(pos),
                len: n,
                depth: l.depth,
                kind: l.kind,
                file: l.file.map(|f| self.chain.files[f].path.clone()),
                file_role: l.file.map(|f| self.chain.files[f].role),
                host_offset,
                host_len,
                host: Vec::new(),
                host_error: None,
            };
            if let (Some(f), Some(ho), Some(hl)) = (l.file, host_offset, host_len) {
                match self.host_segments(f, ho, hl) {
                    Some(Ok(segs)) => piece.host = segs,
                    Some(Err(e)) => piece.host_error = Some(crate::error_text(&e)),
                    None => {}
                }
            }
            pieces.push(piece);
            pos += n;
        }
        let guest_owner = self.guest.as_ref().map(|g| g.owner(offset));
        Ok(Translation {
            guest_file: None,
            guest_owner,
            guest_offset: offset,
            guest_lba: offset.lba(),
            len,
            pieces,
        })
    }

    /// Translate `len` bytes at `file_offset` of guest file `path` (clipped to the
    /// file's contiguous extent).
    pub fn translate_file(
        &mut self,
        path: &str,
        file_offset: u64,
        len: u64,
        partition: Option<u32>,
    ) -> Result<Translation> {
        let guest = self.guest.as_ref().ok_or_else(|| {
            StackError::Range(format!(
                "the guest filesystems could not be read{}",
                self.guest_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ))
        })?;
        let loc = guest.locate_file(path, file_offset, partition)?;
        let len = len.min(loc.contiguous).max(1);
        let mut t = self.translate(loc.offset, len)?;
        t.guest_file = Some(loc);
        Ok(t)
    }

    /// What byte `offset` of chain file `file` holds, and the guest's view of it.
    pub fn lookup_host(&mut self, file: usize, offset: HostFileOffset) -> Result<HostLookup> {
        let path = self
            .chain
            .files
            .get(file)
            .map(|f| f.path.clone())
            .ok_or_else(|| StackError::Range(format!("no file {file} in the chain")))?;
        if !self.reverse.contains_key(&file) {
            let rm = self.chain.reverse_map(file)?;
            self.reverse.insert(file, rm);
        }
        let rm = &self.reverse[&file];
        let (extent, guest) = rm.lookup(offset).ok_or_else(|| {
            StackError::Range(format!(
                "offset {} is past the end of {} ({} bytes)",
                offset.0,
                path.display(),
                rm.file_len
            ))
        })?;
        let guest_offset = guest;
        // Only current guest data has a guest owner; snapshot data is another point in time.
        let current = matches!(
            extent.content,
            Content::GuestData { .. } | Content::Compressed { .. } | Content::Preallocated { .. }
        );
        let guest_owner = match (&self.guest, guest_offset) {
            (Some(g), Some(o)) if current && o.0 < self.chain.virtual_size() => Some(g.owner(o)),
            _ => None,
        };
        Ok(HostLookup {
            file: path,
            offset,
            extent: extent.clone(),
            guest_offset,
            guest_owner,
        })
    }
}
