//! The guest side, read offline from the virtual disk: partition tables and ext
//! filesystems, giving guest LBA → (partition, file, offset) and back.

pub mod ext4;
pub mod partition;

pub use ext4::{Ext4Map, FileInfo, FileKind, Owner};
pub use partition::{Partition, PartitionTable, Scheme};

use crate::addr::{GuestLba, GuestOffset, SECTOR_SIZE};
use crate::source::{ReadAt, Window};
use serde::{Deserialize, Serialize};
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("corrupt {what} (guest byte {offset:#x}): {problem}")]
    Corrupt {
        what: String,
        offset: u64,
        problem: String,
    },
    #[error("{0}")]
    NotFound(String),
}

impl GuestError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        GuestError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, GuestError>;

/// A filesystem found on the guest disk.
#[derive(Debug, Clone)]
pub struct GuestFs {
    /// The partition it lives in; `None` for a filesystem on the whole disk.
    pub partition: Option<Partition>,
    pub map: Ext4Map,
}

impl GuestFs {
    fn start_byte(&self) -> u64 {
        self.partition.as_ref().map_or(0, |p| p.start_byte())
    }
    pub fn name(&self) -> String {
        match &self.partition {
            Some(p) => format!("partition {}", p.number),
            None => "whole disk".into(),
        }
    }
}

/// The guest's view of its disk: partitions and the ext filesystems in them.
#[derive(Debug, Clone)]
pub struct GuestLayout {
    pub table: PartitionTable,
    pub filesystems: Vec<GuestFs>,
    /// Partitions without an ext filesystem, and what the walks skipped.
    pub notes: Vec<String>,
}

/// What the guest keeps at one disk address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestOwner {
    /// `None`: outside every partition (partition table, gaps).
    pub partition: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// For file data: the file's path and the byte offset within the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_offset: Option<u64>,
}

/// Where a guest file offset lives on the guest disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestFileLocation {
    pub path: String,
    pub inode: u32,
    pub partition: Option<u32>,
    pub file_offset: u64,
    pub fs_block: u64,
    pub offset: GuestOffset,
    pub lba: GuestLba,
    /// Bytes from here to the end of the file's extent (contiguous on the guest disk).
    pub contiguous: u64,
    /// An allocated but unwritten extent (reads as zeros).
    pub unwritten: bool,
}

/// A run of guest disk bytes with one owner, flattened for a trace's layout snapshot
/// (the reporter names each guest IO's file from these without the image at hand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestExtent {
    pub offset: GuestOffset,
    pub len: u64,
    pub partition: Option<u32>,
    /// `file`, `journal`, `inode_table`, `block_bitmap`, `inode_bitmap`, `superblock`,
    /// `group_descriptors`, `reserved_gdt`, `extent_tree`, `indirect_block`, or
    /// `unlinked_inode` (an inode no directory reaches).
    pub what: std::borrow::Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For file data: the file offset of the extent's first byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_offset: Option<u64>,
}

impl GuestLayout {
    /// Every owned extent of every filesystem, by guest offset.
    pub fn extents(&self) -> Vec<GuestExtent> {
        let mut out = Vec::new();
        for fs in &self.filesystems {
            let bs = fs.map.sb.block_size;
            let base = fs.start_byte();
            let part = fs.partition.as_ref().map(|p| p.number);
            for (pblock, len, owner) in fs.map.runs() {
                let (what, path, file_offset) = match owner {
                    Owner::File { inode, lblock } => match fs.map.files.get(inode) {
                        Some(f) => ("file", Some(f.path.clone()), Some(lblock * bs)),
                        None if *inode == fs.map.sb.journal_inum => ("journal", None, None),
                        None => ("unlinked_inode", None, None),
                    },
                    Owner::ExtentTreeNode { .. } => ("extent_tree", None, None),
                    Owner::IndirectBlock { .. } => ("indirect_block", None, None),
                    Owner::Superblock { .. } => ("superblock", None, None),
                    Owner::GroupDescriptors { .. } => ("group_descriptors", None, None),
                    Owner::ReservedGdt { .. } => ("reserved_gdt", None, None),
                    Owner::BlockBitmap { .. } => ("block_bitmap", None, None),
                    Owner::InodeBitmap { .. } => ("inode_bitmap", None, None),
                    Owner::InodeTable { .. } => ("inode_table", None, None),
                };
                out.push(GuestExtent {
                    offset: GuestOffset(base + pblock * bs),
                    len: len * bs,
                    partition: part,
                    what: what.into(),
                    path,
                    file_offset,
                });
            }
        }
        out.sort_by_key(|e| e.offset);
        out
    }

    /// Read partitions and every ext filesystem on a guest disk.
    pub fn read(disk: &dyn ReadAt) -> Result<GuestLayout> {
        let table = partition::read_partitions(disk)?;
        let mut filesystems = Vec::new();
        let mut notes = Vec::new();
        let candidates: Vec<Option<Partition>> = if table.partitions.is_empty() {
            vec![None]
        } else {
            table.partitions.iter().cloned().map(Some).collect()
        };
        for part in candidates {
            let (start, len) = match &part {
                Some(p) => (p.start_byte(), p.sectors * SECTOR_SIZE),
                None => (0, disk.len()),
            };
            let len = len.min(disk.len().saturating_sub(start));
            let win = Window {
                inner: disk,
                start,
                len,
            };
            let name = part.as_ref().map_or("whole disk".to_owned(), |p| {
                format!("partition {}", p.number)
            });
            match ext4::Ext4Reader::open(&win)? {
                Some(reader) => {
                    let map = reader.build_map()?;
                    notes.extend(map.notes.iter().map(|n| format!("{name}: {n}")));
                    filesystems.push(GuestFs {
                        partition: part,
                        map,
                    });
                }
                None => notes.push(format!("{name}: no ext2/3/4 filesystem")),
            }
        }
        Ok(GuestLayout {
            table,
            filesystems,
            notes,
        })
    }

    /// Who owns the guest byte at `offset`.
    pub fn owner(&self, offset: GuestOffset) -> GuestOwner {
        let lba = offset.lba();
        let partition = self
            .table
            .partitions
            .iter()
            .find(|p| p.contains(lba))
            .map(|p| p.number);
        let mut out = GuestOwner {
            partition,
            owner: None,
            path: None,
            file_offset: None,
        };
        let Some(fs) = self
            .filesystems
            .iter()
            .find(|f| f.partition.as_ref().is_none_or(|p| p.contains(lba)))
        else {
            return out;
        };
        let rel = offset.0 - fs.start_byte();
        let bs = fs.map.sb.block_size;
        out.owner = fs.map.owner(rel / bs);
        if let Some(Owner::File { inode, lblock }) = &out.owner
            && let Some(f) = fs.map.files.get(inode)
        {
            out.path = Some(f.path.clone());
            out.file_offset = Some(lblock * bs + rel % bs);
        }
        out
    }

    /// Where byte `file_offset` of guest file `path` is on the guest disk. With several
    /// filesystems, `partition` picks one; otherwise the path must exist in exactly one.
    pub fn locate_file(
        &self,
        path: &str,
        file_offset: u64,
        partition: Option<u32>,
    ) -> Result<GuestFileLocation> {
        let matches: Vec<&GuestFs> = self
            .filesystems
            .iter()
            .filter(|f| {
                partition.is_none_or(|n| f.partition.as_ref().is_some_and(|p| p.number == n))
            })
            .filter(|f| f.map.file_by_path(path).is_some())
            .collect();
        let fs = match matches.as_slice() {
            [one] => *one,
            [] => {
                return Err(GuestError::NotFound(format!(
                    "{path} is not in any guest ext filesystem{}",
                    partition
                        .map(|n| format!(" on partition {n}"))
                        .unwrap_or_default()
                )));
            }
            _ => {
                return Err(GuestError::NotFound(format!(
                    "{path} exists on several partitions; pick one with --partition"
                )));
            }
        };
        let f = fs.map.file_by_path(path).expect("filtered");
        let bs = fs.map.sb.block_size;
        if f.inline {
            return Err(GuestError::NotFound(format!(
                "{path} keeps its data inside its inode: no disk blocks"
            )));
        }
        let lblock = file_offset / bs;
        let (pblock, unwritten) = f.pblock(lblock).ok_or_else(|| {
            GuestError::NotFound(format!(
                "{path} has no block at offset {file_offset} (a hole, or past its {} bytes)",
                f.size
            ))
        })?;
        let i = f.runs.partition_point(|r| r.lblock + r.len <= lblock);
        let run = f.runs[i];
        let contiguous = (run.lblock + run.len) * bs - file_offset;
        let offset = GuestOffset(fs.start_byte() + pblock * bs + file_offset % bs);
        Ok(GuestFileLocation {
            path: f.path.clone(),
            inode: f.inode,
            partition: fs.partition.as_ref().map(|p| p.number),
            file_offset,
            fs_block: pblock,
            offset,
            lba: offset.lba(),
            contiguous,
            unwritten,
        })
    }
}
