//! An ext2/3/4 reader: superblock, group descriptors (including meta_bg), inodes, extent
//! trees and block-mapped files, and a directory walk. It builds an owned [`Ext4Map`]:
//! every block's owner (file and offset, or the metadata it holds) and every file's
//! extents by path.

use super::{GuestError, Result};
use crate::source::{ReadAt, le_u16, le_u32};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};

const MAGIC: u16 = 0xEF53;
const ROOT_INO: u32 = 2;
const RESIZE_INO: u32 = 7;
const EXTENTS_FL: u32 = 0x0008_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const S_IFMT: u16 = 0xF000;
const S_IFDIR: u16 = 0x4000;
const S_IFREG: u16 = 0x8000;
const S_IFLNK: u16 = 0xA000;
const MAX_EXTENT_DEPTH: u16 = 5;

/// Who owns a filesystem block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// Block `lblock` of the file (or directory, symlink, journal) with this inode.
    File {
        inode: u32,
        lblock: u64,
    },
    ExtentTreeNode {
        inode: u32,
    },
    IndirectBlock {
        inode: u32,
    },
    Superblock {
        group: u32,
    },
    GroupDescriptors {
        group: u32,
    },
    ReservedGdt {
        group: u32,
    },
    BlockBitmap {
        group: u32,
    },
    InodeBitmap {
        group: u32,
    },
    InodeTable {
        group: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct BlockRun {
    pblock: u64,
    len: u64,
    #[serde(skip)]
    owner: usize,
}

/// One extent of a file: `len` blocks from logical block `lblock` at physical `pblock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileRun {
    pub lblock: u64,
    pub pblock: u64,
    pub len: u64,
    /// Allocated but not yet written (reads as zeros).
    pub uninit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Special,
    /// The journal and other reserved inodes.
    Internal,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    pub inode: u32,
    /// The first path found by the directory walk (hard links have more).
    pub path: String,
    pub size: u64,
    pub kind: FileKind,
    pub runs: Vec<FileRun>,
    /// Data stored inside the inode: no blocks.
    pub inline: bool,
}

impl FileInfo {
    /// The physical block holding logical block `lblock`, if allocated.
    pub fn pblock(&self, lblock: u64) -> Option<(u64, bool)> {
        let i = self.runs.partition_point(|r| r.lblock + r.len <= lblock);
        self.runs
            .get(i)
            .filter(|r| r.lblock <= lblock)
            .map(|r| (r.pblock + (lblock - r.lblock), r.uninit))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Superblock {
    pub block_size: u64,
    pub blocks_count: u64,
    pub inodes_count: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub first_data_block: u32,
    pub inode_size: u16,
    pub desc_size: u16,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub reserved_gdt_blocks: u16,
    pub first_meta_bg: u32,
    pub journal_inum: u32,
    pub backup_bgs: [u32; 2],
    pub label: String,
}

impl Superblock {
    pub fn groups(&self) -> u64 {
        (self.blocks_count - self.first_data_block as u64).div_ceil(self.blocks_per_group as u64)
    }
    fn group_first_block(&self, g: u64) -> u64 {
        self.first_data_block as u64 + g * self.blocks_per_group as u64
    }
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.feature_compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_bgs.contains(&(g as u32));
        }
        if self.feature_ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        // Sparse superblocks: groups that are powers of 3, 5 or 7.
        [3u64, 5, 7].iter().any(|&b| {
            let mut p = b;
            while p < g {
                p *= b;
            }
            p == g
        })
    }
    fn descs_per_block(&self) -> u64 {
        self.block_size / self.desc_size as u64
    }
    fn gdt_blocks(&self) -> u64 {
        self.groups().div_ceil(self.descs_per_block())
    }
    fn meta_bg(&self) -> bool {
        self.feature_incompat & INCOMPAT_META_BG != 0
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct GroupDesc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
}

/// Metadata blocks found while mapping a file (tree nodes, indirect blocks) and who owns them.
type MetaBlocks = Vec<(u64, Owner)>;

struct Inode {
    mode: u16,
    size: u64,
    flags: u32,
    block: [u8; 60],
}

/// An ext filesystem being read from a byte source (the guest partition).
pub struct Ext4Reader<'a> {
    src: &'a dyn ReadAt,
    pub sb: Superblock,
    groups: Vec<GroupDesc>,
}

fn corrupt(what: impl Into<String>, offset: u64, problem: impl Into<String>) -> GuestError {
    GuestError::Corrupt {
        what: what.into(),
        offset,
        problem: problem.into(),
    }
}

impl<'a> Ext4Reader<'a> {
    /// Parse the superblock and group descriptors. Returns `Ok(None)` when the source
    /// holds no ext2/3/4 superblock.
    pub fn open(src: &'a dyn ReadAt) -> Result<Option<Ext4Reader<'a>>> {
        if src.len() < 2048 {
            return Ok(None);
        }
        let mut b = vec![0u8; 1024];
        src.read_exact_at(&mut b, 1024)
            .map_err(|e| GuestError::io("ext4 superblock", e))?;
        if le_u16(&b, 0x38) != MAGIC {
            return Ok(None);
        }
        let log = le_u32(&b, 0x18);
        if log > 6 {
            return Err(corrupt(
                "ext4 s_log_block_size",
                1024 + 0x18,
                format!("{log} gives blocks over 64 KiB"),
            ));
        }
        let block_size = 1024u64 << log;
        let incompat = le_u32(&b, 0x60);
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = le_u32(&b, 0x04) as u64;
        if is64 {
            blocks_count |= (le_u32(&b, 0x150) as u64) << 32;
        }
        let rev = le_u32(&b, 0x4C);
        let inode_size = if rev == 0 { 128 } else { le_u16(&b, 0x58) };
        let desc_size = if is64 { le_u16(&b, 0xFE) } else { 32 };
        let label_raw = &b[0x78..0x88];
        let label = String::from_utf8_lossy(
            &label_raw[..label_raw.iter().position(|&c| c == 0).unwrap_or(16)],
        )
        .into_owned();
        let sb = Superblock {
            block_size,
            blocks_count,
            inodes_count: le_u32(&b, 0x00),
            blocks_per_group: le_u32(&b, 0x20),
            inodes_per_group: le_u32(&b, 0x28),
            first_data_block: le_u32(&b, 0x14),
            inode_size,
            desc_size,
            feature_compat: le_u32(&b, 0x5C),
            feature_incompat: incompat,
            feature_ro_compat: le_u32(&b, 0x64),
            reserved_gdt_blocks: le_u16(&b, 0xCE),
            first_meta_bg: le_u32(&b, 0x104),
            journal_inum: le_u32(&b, 0xE0),
            backup_bgs: [le_u32(&b, 0x24C), le_u32(&b, 0x250)],
            label,
        };
        let at = |off: u64| 1024 + off;
        if sb.blocks_per_group == 0 || sb.blocks_per_group as u64 > block_size * 8 {
            return Err(corrupt(
                "ext4 s_blocks_per_group",
                at(0x20),
                format!("{} with {block_size}-byte blocks", sb.blocks_per_group),
            ));
        }
        if sb.inodes_per_group == 0 || sb.inodes_count == 0 {
            return Err(corrupt("ext4 s_inodes_per_group", at(0x28), "zero inodes"));
        }
        if !(128..=block_size as u16).contains(&sb.inode_size) || !sb.inode_size.is_power_of_two() {
            return Err(corrupt(
                "ext4 s_inode_size",
                at(0x58),
                format!("{}", sb.inode_size),
            ));
        }
        if is64
            && (sb.desc_size < 32
                || !sb.desc_size.is_power_of_two()
                || sb.desc_size as u64 > block_size)
        {
            return Err(corrupt(
                "ext4 s_desc_size",
                at(0xFE),
                format!("{}", sb.desc_size),
            ));
        }
        if sb.first_data_block as u64 >= blocks_count
            || blocks_count.saturating_mul(block_size) > src.len()
        {
            return Err(corrupt(
                "ext4 s_blocks_count",
                at(0x04),
                format!(
                    "{blocks_count} blocks of {block_size} bytes do not fit in the {}-byte partition",
                    src.len()
                ),
            ));
        }
        if (sb.inodes_per_group as u64) * sb.groups() < sb.inodes_count as u64 {
            return Err(corrupt(
                "ext4 s_inodes_count",
                at(0),
                "more inodes than the groups hold",
            ));
        }
        let mut r = Ext4Reader {
            src,
            sb,
            groups: Vec::new(),
        };
        r.read_group_descriptors()?;
        Ok(Some(r))
    }

    fn read(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.src
            .read_exact_at(buf, at)
            .map_err(|e| GuestError::io(format!("ext4 read at {at:#x}"), e))
    }

    fn block(&self, n: u64) -> Result<Vec<u8>> {
        if n >= self.sb.blocks_count {
            return Err(corrupt(
                "ext4 block pointer",
                n * self.sb.block_size,
                format!(
                    "block {n} is past the filesystem end ({})",
                    self.sb.blocks_count
                ),
            ));
        }
        let mut b = vec![0u8; self.sb.block_size as usize];
        self.read(&mut b, n * self.sb.block_size)?;
        Ok(b)
    }

    /// The block holding group-descriptor block `i`.
    fn gdt_block(&self, i: u64) -> u64 {
        let sb = &self.sb;
        if !sb.meta_bg() || i < sb.first_meta_bg as u64 {
            sb.first_data_block as u64 + 1 + i
        } else {
            let g = i * sb.descs_per_block();
            sb.group_first_block(g) + sb.has_super(g) as u64
        }
    }

    fn read_group_descriptors(&mut self) -> Result<()> {
        let sb = &self.sb;
        let groups = sb.groups();
        let ds = sb.desc_size as usize;
        let is64 = sb.feature_incompat & INCOMPAT_64BIT != 0 && ds >= 64;
        let mut out = Vec::with_capacity(groups as usize);
        for i in 0..sb.gdt_blocks() {
            let blk = self.block(self.gdt_block(i))?;
            for d in blk.chunks_exact(ds) {
                if out.len() as u64 == groups {
                    break;
                }
                let hi = |o: usize| if is64 { (le_u32(d, o) as u64) << 32 } else { 0 };
                out.push(GroupDesc {
                    block_bitmap: le_u32(d, 0) as u64 | hi(0x20),
                    inode_bitmap: le_u32(d, 4) as u64 | hi(0x24),
                    inode_table: le_u32(d, 8) as u64 | hi(0x28),
                });
            }
        }
        let itable_blocks = (self.sb.inodes_per_group as u64 * self.sb.inode_size as u64)
            .div_ceil(self.sb.block_size);
        for (g, d) in out.iter().enumerate() {
            if d.inode_table.saturating_add(itable_blocks) > self.sb.blocks_count
                || d.block_bitmap >= self.sb.blocks_count
            {
                return Err(corrupt(
                    format!("ext4 group descriptor {g}"),
                    0,
                    "bitmap or inode table past the filesystem end",
                ));
            }
        }
        self.groups = out;
        Ok(())
    }

    fn inode(&self, ino: u32) -> Result<Inode> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(corrupt(
                "ext4 inode number",
                0,
                format!("{ino} is outside 1..={}", self.sb.inodes_count),
            ));
        }
        let idx = (ino - 1) as u64;
        let g = idx / self.sb.inodes_per_group as u64;
        let within = idx % self.sb.inodes_per_group as u64;
        let at = self.groups[g as usize].inode_table * self.sb.block_size
            + within * self.sb.inode_size as u64;
        let mut b = [0u8; 128];
        self.read(&mut b, at)?;
        let mut block = [0u8; 60];
        block.copy_from_slice(&b[0x28..0x64]);
        Ok(Inode {
            mode: le_u16(&b, 0),
            size: le_u32(&b, 4) as u64 | (le_u32(&b, 0x6C) as u64) << 32,
            flags: le_u32(&b, 0x20),
            block,
        })
    }

    /// The data extents of an inode and the metadata blocks (tree nodes, indirect
    /// blocks) that describe them.
    fn inode_runs(&self, ino: u32, inode: &Inode) -> Result<(Vec<FileRun>, MetaBlocks)> {
        let mut runs = Vec::new();
        let mut meta = Vec::new();
        if inode.flags & INLINE_DATA_FL != 0 {
            return Ok((runs, meta));
        }
        let is_fast_symlink =
            inode.mode & S_IFMT == S_IFLNK && inode.size < 60 && inode.flags & EXTENTS_FL == 0;
        if is_fast_symlink {
            return Ok((runs, meta));
        }
        let max_lblocks = inode.size.div_ceil(self.sb.block_size);
        if inode.flags & EXTENTS_FL != 0 {
            let mut budget = self.sb.blocks_count;
            self.extent_node(
                ino,
                &inode.block,
                MAX_EXTENT_DEPTH + 1,
                &mut runs,
                &mut meta,
                &mut budget,
            )?;
        } else {
            let mut lblock = 0u64;
            for i in 0..12 {
                let p = le_u32(&inode.block, i * 4) as u64;
                self.push_data(ino, &mut runs, lblock, p)?;
                lblock += 1;
            }
            let per = self.sb.block_size / 4;
            // Every allocated indirect block costs at most `per` steps, and there are no
            // more of them than blocks: a map that needs more steps loops on itself.
            let mut budget = self.sb.blocks_count.saturating_mul(per);
            for (level, i) in [(1u32, 12usize), (2, 13), (3, 14)] {
                let p = le_u32(&inode.block, i * 4) as u64;
                let span = per.pow(level);
                if p != 0 && lblock < max_lblocks.max(1) {
                    self.indirect(
                        ino,
                        p,
                        level,
                        lblock,
                        max_lblocks,
                        &mut runs,
                        &mut meta,
                        &mut budget,
                    )?;
                }
                lblock += span;
            }
        }
        runs.sort_by_key(|r| r.lblock);
        Ok((runs, meta))
    }

    fn push_data(&self, ino: u32, runs: &mut Vec<FileRun>, lblock: u64, p: u64) -> Result<()> {
        if p == 0 {
            return Ok(());
        }
        if p >= self.sb.blocks_count {
            return Err(corrupt(
                format!("ext4 inode {ino} block map"),
                0,
                format!("block {p} is past the filesystem end"),
            ));
        }
        match runs.last_mut() {
            Some(r) if r.lblock + r.len == lblock && r.pblock + r.len == p && !r.uninit => {
                r.len += 1
            }
            _ => runs.push(FileRun {
                lblock,
                pblock: p,
                len: 1,
                uninit: false,
            }),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn indirect(
        &self,
        ino: u32,
        blk: u64,
        level: u32,
        first: u64,
        max: u64,
        runs: &mut Vec<FileRun>,
        meta: &mut MetaBlocks,
        budget: &mut u64,
    ) -> Result<()> {
        let b = self.block(blk)?;
        meta.push((blk, Owner::IndirectBlock { inode: ino }));
        let per = self.sb.block_size / 4;
        let span = per.pow(level - 1);
        for i in 0..per {
            let l = first + i * span;
            if l >= max {
                break;
            }
            if *budget == 0 {
                return Err(corrupt(
                    format!("ext4 inode {ino} block map"),
                    blk * self.sb.block_size,
                    "indirect blocks refer to each other in a loop",
                ));
            }
            *budget -= 1;
            let p = le_u32(&b, (i * 4) as usize) as u64;
            if level == 1 {
                self.push_data(ino, runs, l, p)?;
            } else if p != 0 {
                self.indirect(ino, p, level - 1, l, max, runs, meta, budget)?;
            }
        }
        Ok(())
    }

    fn extent_node(
        &self,
        ino: u32,
        node: &[u8],
        max_depth: u16,
        runs: &mut Vec<FileRun>,
        meta: &mut MetaBlocks,
        budget: &mut u64,
    ) -> Result<()> {
        let what = || format!("ext4 inode {ino} extent tree");
        if le_u16(node, 0) != 0xF30A {
            return Err(corrupt(what(), 0, "bad extent header magic"));
        }
        let entries = le_u16(node, 2) as usize;
        let max = le_u16(node, 4) as usize;
        let depth = le_u16(node, 6);
        if entries > max || 12 + max * 12 > node.len() || depth >= max_depth {
            return Err(corrupt(
                what(),
                0,
                format!("{entries} of {max} entries at depth {depth} do not fit"),
            ));
        }
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if *budget == 0 {
                return Err(corrupt(
                    what(),
                    0,
                    "more tree nodes than blocks in the filesystem",
                ));
            }
            *budget -= 1;
            if depth == 0 {
                let lblock = le_u32(e, 0) as u64;
                let raw_len = le_u16(e, 4) as u64;
                let (len, uninit) = if raw_len > 32768 {
                    (raw_len - 32768, true)
                } else {
                    (raw_len, false)
                };
                let pblock = (le_u16(e, 6) as u64) << 32 | le_u32(e, 8) as u64;
                if len == 0 {
                    continue;
                }
                if pblock.saturating_add(len) > self.sb.blocks_count {
                    return Err(corrupt(
                        what(),
                        0,
                        format!("extent {pblock}+{len} is past the filesystem end"),
                    ));
                }
                runs.push(FileRun {
                    lblock,
                    pblock,
                    len,
                    uninit,
                });
            } else {
                let leaf = (le_u16(e, 8) as u64) << 32 | le_u32(e, 4) as u64;
                let child = self.block(leaf)?;
                meta.push((leaf, Owner::ExtentTreeNode { inode: ino }));
                self.extent_node(ino, &child, depth, runs, meta, budget)?;
            }
        }
        Ok(())
    }

    fn dir_entries(&self, info: &FileInfo) -> Result<Vec<(String, u32)>> {
        let bs = self.sb.block_size;
        let has_type = self.sb.feature_incompat & INCOMPAT_FILETYPE != 0;
        let mut out = Vec::new();
        for r in &info.runs {
            if r.uninit {
                continue;
            }
            for k in 0..r.len {
                let b = self.block(r.pblock + k)?;
                let mut at = 0usize;
                while at + 8 <= b.len() {
                    let ino = le_u32(&b, at);
                    let raw = le_u16(&b, at + 4) as usize;
                    let rec_len = if raw == 65535 || raw == 0 {
                        bs as usize
                    } else {
                        (raw & 65532) | ((raw & 3) << 16)
                    };
                    let name_len = if has_type {
                        b[at + 6] as usize
                    } else {
                        le_u16(&b, at + 6) as usize
                    };
                    if rec_len < 8 || at + rec_len > b.len() || 8 + name_len > rec_len {
                        // A damaged block: keep what was read, skip the rest of it.
                        break;
                    }
                    if ino != 0 && name_len > 0 {
                        let name =
                            String::from_utf8_lossy(&b[at + 8..at + 8 + name_len]).into_owned();
                        if name != "." && name != ".." {
                            out.push((name, ino));
                        }
                    }
                    at += rec_len;
                }
            }
        }
        Ok(out)
    }

    fn file_info(&self, ino: u32, path: String, meta: &mut MetaBlocks) -> Result<FileInfo> {
        let inode = self.inode(ino)?;
        let kind = match inode.mode & S_IFMT {
            _ if ino < 11 && ino != ROOT_INO => FileKind::Internal,
            S_IFREG => FileKind::Regular,
            S_IFDIR => FileKind::Directory,
            S_IFLNK => FileKind::Symlink,
            _ => FileKind::Special,
        };
        let (runs, m) = if matches!(kind, FileKind::Special) {
            (vec![], vec![])
        } else {
            self.inode_runs(ino, &inode)?
        };
        meta.extend(m);
        Ok(FileInfo {
            inode: ino,
            path,
            size: inode.size,
            kind,
            runs,
            inline: inode.flags & INLINE_DATA_FL != 0,
        })
    }

    /// Walk the whole filesystem from `/` and build the block map.
    pub fn build_map(&self) -> Result<Ext4Map> {
        let sb = &self.sb;
        let mut owners: Vec<Owner> = Vec::new();
        let mut blocks: Vec<BlockRun> = Vec::new();
        let add = |owners: &mut Vec<Owner>,
                   blocks: &mut Vec<BlockRun>,
                   pblock: u64,
                   len: u64,
                   owner: Owner| {
            if len > 0 {
                owners.push(owner);
                blocks.push(BlockRun {
                    pblock,
                    len,
                    owner: owners.len() - 1,
                });
            }
        };
        // Static metadata: superblocks, descriptors, reserved GDT, bitmaps, inode tables.
        let itable_blocks =
            (sb.inodes_per_group as u64 * sb.inode_size as u64).div_ceil(sb.block_size);
        for g in 0..sb.groups() {
            let gi = g as u32;
            if sb.has_super(g) {
                let first = sb.group_first_block(g);
                // With 1 KiB blocks group 0's superblock is block 1; otherwise it shares block 0.
                add(
                    &mut owners,
                    &mut blocks,
                    first,
                    1,
                    Owner::Superblock { group: gi },
                );
                if !sb.meta_bg() {
                    add(
                        &mut owners,
                        &mut blocks,
                        first + 1,
                        sb.gdt_blocks(),
                        Owner::GroupDescriptors { group: gi },
                    );
                    add(
                        &mut owners,
                        &mut blocks,
                        first + 1 + sb.gdt_blocks(),
                        sb.reserved_gdt_blocks as u64,
                        Owner::ReservedGdt { group: gi },
                    );
                } else if sb.first_meta_bg > 0 {
                    add(
                        &mut owners,
                        &mut blocks,
                        first + 1,
                        sb.first_meta_bg as u64,
                        Owner::GroupDescriptors { group: gi },
                    );
                }
            }
            let d = self.groups[g as usize];
            add(
                &mut owners,
                &mut blocks,
                d.block_bitmap,
                1,
                Owner::BlockBitmap { group: gi },
            );
            add(
                &mut owners,
                &mut blocks,
                d.inode_bitmap,
                1,
                Owner::InodeBitmap { group: gi },
            );
            add(
                &mut owners,
                &mut blocks,
                d.inode_table,
                itable_blocks,
                Owner::InodeTable { group: gi },
            );
        }
        if sb.meta_bg() {
            let per = sb.descs_per_block();
            for i in sb.first_meta_bg as u64..sb.gdt_blocks() {
                let g0 = i * per;
                for g in [g0, g0 + 1, g0 + per - 1] {
                    if g < sb.groups() {
                        add(
                            &mut owners,
                            &mut blocks,
                            sb.group_first_block(g) + sb.has_super(g) as u64,
                            1,
                            Owner::GroupDescriptors { group: g as u32 },
                        );
                    }
                }
            }
        }
        // Files, from the root down.
        let mut files: HashMap<u32, FileInfo> = HashMap::new();
        let mut by_path: HashMap<String, u32> = HashMap::new();
        let mut meta = Vec::new();
        let mut queue = VecDeque::from([(ROOT_INO, "/".to_owned())]);
        let mut seen_dirs = HashSet::new();
        let mut notes = Vec::new();
        while let Some((ino, path)) = queue.pop_front() {
            if !seen_dirs.insert(ino) {
                continue;
            }
            let info = self.file_info(ino, path.clone(), &mut meta)?;
            let entries = if info.inline {
                notes.push(format!("{path}: inline directory not walked"));
                vec![]
            } else {
                self.dir_entries(&info)?
            };
            by_path.insert(path.clone(), ino);
            files.insert(ino, info);
            for (name, child) in entries {
                let cpath = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                if child > sb.inodes_count {
                    notes.push(format!("{cpath}: inode {child} out of range, skipped"));
                    continue;
                }
                if files.contains_key(&child) || seen_dirs.contains(&child) {
                    // A hard link to something already mapped: remember the extra path.
                    by_path.entry(cpath).or_insert(child);
                    continue;
                }
                let ci = self.inode(child)?;
                if ci.mode & S_IFMT == S_IFDIR {
                    queue.push_back((child, cpath));
                } else {
                    let info = self.file_info(child, cpath.clone(), &mut meta)?;
                    by_path.insert(cpath, child);
                    files.insert(child, info);
                }
            }
        }
        // The journal is a file with no name.
        if sb.journal_inum != 0 && !files.contains_key(&sb.journal_inum) {
            let info = self.file_info(sb.journal_inum, "<journal>".into(), &mut meta)?;
            files.insert(sb.journal_inum, info);
        }
        // The resize inode's indirect block points at the reserved GDT blocks already
        // counted above; own just that block.
        if sb.reserved_gdt_blocks > 0
            && let Ok(ri) = self.inode(RESIZE_INO)
        {
            let dind = le_u32(&ri.block, 13 * 4) as u64;
            if dind != 0 && dind < sb.blocks_count {
                meta.push((dind, Owner::IndirectBlock { inode: RESIZE_INO }));
            }
        }
        for f in files.values() {
            for r in &f.runs {
                add(
                    &mut owners,
                    &mut blocks,
                    r.pblock,
                    r.len,
                    Owner::File {
                        inode: f.inode,
                        lblock: r.lblock,
                    },
                );
            }
        }
        for (b, o) in meta {
            add(&mut owners, &mut blocks, b, 1, o);
        }
        blocks.sort_by_key(|b| b.pblock);
        Ok(Ext4Map {
            sb: sb.clone(),
            owners,
            blocks,
            files,
            by_path,
            notes,
        })
    }
}

/// Everything about an ext filesystem that address translation needs, owned.
#[derive(Debug, Clone)]
pub struct Ext4Map {
    pub sb: Superblock,
    owners: Vec<Owner>,
    /// Sorted by physical block. Runs may overlap only in a corrupt filesystem.
    blocks: Vec<BlockRun>,
    pub files: HashMap<u32, FileInfo>,
    pub by_path: HashMap<String, u32>,
    /// What the walk skipped and why.
    pub notes: Vec<String>,
}

impl Ext4Map {
    /// Who owns filesystem block `pblock` (`None`: free, or owned by an inode no
    /// directory reaches, such as an open-but-deleted file).
    pub fn owner(&self, pblock: u64) -> Option<Owner> {
        let i = self.blocks.partition_point(|b| b.pblock + b.len <= pblock);
        // Runs do not nest in a sane filesystem, but check neighbours for safety.
        self.blocks[i.saturating_sub(1)..]
            .iter()
            .take(3)
            .find(|b| b.pblock <= pblock && pblock < b.pblock + b.len)
            .map(|b| match &self.owners[b.owner] {
                Owner::File { inode, lblock } => Owner::File {
                    inode: *inode,
                    lblock: lblock + (pblock - b.pblock),
                },
                o => o.clone(),
            })
    }

    /// Every owned run of blocks, in physical block order: (first block, blocks, owner
    /// of the first block). For a file, later blocks of the run continue its `lblock`.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64, &Owner)> {
        self.blocks
            .iter()
            .map(|b| (b.pblock, b.len, &self.owners[b.owner]))
    }

    pub fn file_by_path(&self, path: &str) -> Option<&FileInfo> {
        let p = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        self.by_path.get(p).and_then(|i| self.files.get(i))
    }
}
