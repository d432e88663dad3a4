//! A bounds-checked qcow2 reader: header, L1/L2 tables (standard and extended), refcounts,
//! snapshots and bitmaps, giving the forward map of each image and of a backing chain
//! ([`Chain`]) and the reverse map of every host file ([`ReverseMap`]).
//!
//! Nothing here allocates what the file merely claims: every table is checked against the
//! file's length and QEMU's limits before it is read.

mod chain;
mod header;
mod reverse;

pub use chain::{Chain, ChainFile, FileRole, Located, LocatedKind, MapEntry};
pub use header::{BitmapsExtension, Compression, Header};
pub use reverse::{Content, ReverseExtent, ReverseMap};

use crate::addr::HostFileOffset;
use crate::source::{FileSource, ReadAt, be_u32, be_u64};
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a qcow2 image (magic {magic:#010x}, expected 0x514649fb)")]
    NotQcow2 { path: PathBuf, magic: u32 },
    #[error("{path}: corrupt qcow2: {field} (file offset {offset:#x}): {problem}")]
    Corrupt {
        path: PathBuf,
        field: String,
        offset: u64,
        problem: String,
    },
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("backing chain loops: {path} is already in the chain")]
    BackingLoop { path: PathBuf },
    #[error("backing chain is deeper than {0} images")]
    ChainTooDeep(usize),
}

impl Qcow2Error {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Qcow2Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Qcow2Error>;

pub(crate) fn corrupt(path: &Path, field: &str, offset: u64, problem: String) -> Qcow2Error {
    Qcow2Error::Corrupt {
        path: path.to_owned(),
        field: field.to_owned(),
        offset,
        problem,
    }
}

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
const L2_COPIED: u64 = 1 << 63;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_STD_RESERVED: u64 = 0x3f00_0000_0000_01fe;
const REFTABLE_RESERVED: u64 = 0x1ff;

/// What one run of guest clusters (or subclusters) of a single image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Guest data at `host` in the image's data file (the image itself unless external).
    Data { host: u64 },
    /// Reads as zeros; a host cluster is preallocated at `host`.
    ZeroAlloc { host: u64 },
    /// Unallocated (reads from the backing file) but a host cluster is reserved at `host`
    /// (extended L2 subclusters only).
    UnallocAlloc { host: u64 },
    /// Reads as zeros, nothing allocated.
    ZeroPlain,
    /// One compressed cluster: `len` bytes (sector-rounded, as the L2 entry says) at `host`.
    Compressed { host: u64, len: u64 },
}

impl RunKind {
    pub fn host(&self) -> Option<u64> {
        match *self {
            RunKind::Data { host }
            | RunKind::ZeroAlloc { host }
            | RunKind::UnallocAlloc { host }
            | RunKind::Compressed { host, .. } => Some(host),
            RunKind::ZeroPlain => None,
        }
    }
    fn with_host(self, host: u64) -> Self {
        match self {
            RunKind::Data { .. } => RunKind::Data { host },
            RunKind::ZeroAlloc { .. } => RunKind::ZeroAlloc { host },
            RunKind::UnallocAlloc { .. } => RunKind::UnallocAlloc { host },
            other => other,
        }
    }
    /// The same kind `delta` bytes further into the run.
    pub fn advance(self, delta: u64) -> Self {
        match self {
            RunKind::Compressed { .. } | RunKind::ZeroPlain => self,
            k => k.with_host(k.host().unwrap_or(0) + delta),
        }
    }
}

/// A run of guest bytes `[guest, guest + len)` of one image with the same kind and
/// contiguous host offsets. Unallocated space has no run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub guest: u64,
    pub len: u64,
    pub kind: RunKind,
}

impl Run {
    pub fn end(&self) -> u64 {
        self.guest + self.len
    }
}

/// The forward map of one image: its allocated runs (sorted, disjoint), the L2 tables
/// that described them, and runs past the virtual size (VM state of `savevm`).
#[derive(Debug, Default, Clone)]
pub struct LayerMap {
    pub runs: Vec<Run>,
    pub vmstate: Vec<Run>,
    /// (L1 index, file offset) of every L2 table of the active L1 table.
    pub l2_tables: Vec<(u32, u64)>,
}

fn push_run(runs: &mut Vec<Run>, run: Run) {
    if let Some(last) = runs.last_mut()
        && last.end() == run.guest
    {
        let mergeable = match (last.kind, run.kind) {
            (RunKind::ZeroPlain, RunKind::ZeroPlain) => true,
            (RunKind::Data { host: a }, RunKind::Data { host: b })
            | (RunKind::ZeroAlloc { host: a }, RunKind::ZeroAlloc { host: b })
            | (RunKind::UnallocAlloc { host: a }, RunKind::UnallocAlloc { host: b }) => {
                a + last.len == b
            }
            _ => false,
        };
        if mergeable {
            last.len += run.len;
            return;
        }
    }
    runs.push(run);
}

/// An internal snapshot's table entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub vm_state_size: u64,
    pub disk_size: Option<u64>,
    /// Where this entry sits in the snapshot table.
    pub entry_offset: u64,
}

/// One qcow2 file, opened and validated.
pub struct Qcow2Image {
    pub path: PathBuf,
    pub header: Header,
    src: Box<dyn ReadAt>,
    /// L2 table offset per L1 entry (0 = unallocated), reserved bits checked.
    l1: Vec<u64>,
    refcount_table: Vec<u64>,
    refblock_cache: Mutex<HashMap<u64, Vec<u8>>>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Qcow2Image {
    pub fn open(path: &Path) -> Result<Self> {
        let src = FileSource::open(path).map_err(|e| Qcow2Error::io(path, e))?;
        Self::from_source(path.to_owned(), Box::new(src))
    }

    /// Parse an image from any byte source (a file, or memory in tests and fuzzing).
    pub fn from_source(path: PathBuf, src: Box<dyn ReadAt>) -> Result<Self> {
        let header = Header::parse(src.as_ref(), &path)?;
        let file_len = src.len();
        let cs = header.cluster_size();
        let l1 = read_table(
            src.as_ref(),
            &path,
            header.l1_table_offset,
            header.l1_size as u64,
        )?;
        let l1 = l1
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let at = header.l1_table_offset + i as u64 * 8;
                if e & L1_RESERVED != 0 {
                    return Err(corrupt(
                        &path,
                        &format!("L1[{i}]"),
                        at,
                        format!("entry {e:#018x} has reserved bits set"),
                    ));
                }
                let off = e & L1_OFFSET_MASK;
                if off != 0 {
                    if !off.is_multiple_of(cs) {
                        return Err(corrupt(
                            &path,
                            &format!("L1[{i}]"),
                            at,
                            format!("L2 table offset {off:#x} is not cluster aligned"),
                        ));
                    }
                    if off.checked_add(cs).is_none_or(|end| end > file_len) {
                        return Err(corrupt(
                            &path,
                            &format!("L1[{i}]"),
                            at,
                            format!("L2 table offset {off:#x} is past the end of the file ({file_len:#x})"),
                        ));
                    }
                }
                Ok(off)
            })
            .collect::<Result<Vec<u64>>>()?;
        let rt_entries = header.refcount_table_clusters as u64 * cs / 8;
        let refcount_table = read_table(
            src.as_ref(),
            &path,
            header.refcount_table_offset,
            rt_entries,
        )?;
        for (i, &e) in refcount_table.iter().enumerate() {
            let at = header.refcount_table_offset + i as u64 * 8;
            let field = || format!("refcount_table[{i}]");
            if e & REFTABLE_RESERVED != 0 {
                return Err(corrupt(
                    &path,
                    &field(),
                    at,
                    format!("entry {e:#x} has reserved bits set"),
                ));
            }
            if e != 0 && (e % cs != 0 || e.checked_add(cs).is_none_or(|end| end > file_len)) {
                return Err(corrupt(
                    &path,
                    &field(),
                    at,
                    format!(
                        "refcount block offset {e:#x} is unaligned or past the end of the file ({file_len:#x})"
                    ),
                ));
            }
        }
        Ok(Self {
            path,
            header,
            src,
            l1,
            refcount_table,
            refblock_cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn file_len(&self) -> u64 {
        self.src.len()
    }

    pub fn source(&self) -> &dyn ReadAt {
        self.src.as_ref()
    }

    pub fn l1_entries(&self) -> &[u64] {
        &self.l1
    }

    pub fn refcount_table(&self) -> &[u64] {
        &self.refcount_table
    }

    fn read(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.src
            .read_exact_at(buf, at)
            .map_err(|e| Qcow2Error::io(&self.path, e))
    }

    /// The forward map of this image alone, from the active L1 table.
    pub fn layer_map(&self) -> Result<LayerMap> {
        let mut map = LayerMap::default();
        let mut buf = vec![0u8; self.header.cluster_size() as usize];
        let l1 = self.l1.clone();
        for (i, &l2_off) in l1.iter().enumerate() {
            if l2_off == 0 {
                continue;
            }
            map.l2_tables.push((i as u32, l2_off));
            self.read(&mut buf, l2_off)?;
            self.decode_l2(i as u64, l2_off, &buf, &mut map)?;
        }
        Ok(map)
    }

    /// Decode one L2 table covering L1 index `l1_index`, appending runs.
    fn decode_l2(
        &self,
        l1_index: u64,
        l2_off: u64,
        table: &[u8],
        map: &mut LayerMap,
    ) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let esz = h.l2_entry_size() as usize;
        let ext = h.extended_l2();
        let sc_size = h.subcluster_size();
        let vsize = h.virtual_size;
        let base = l1_index * h.l1_coverage();
        for (j, entry) in table.chunks_exact(esz).enumerate() {
            let e = be_u64(entry, 0);
            let bitmap = if ext { be_u64(entry, 8) } else { 0 };
            if e == 0 && bitmap == 0 {
                continue;
            }
            let guest = base + j as u64 * cs;
            let at = l2_off + (j * esz) as u64;
            let target = if guest < vsize {
                &mut map.runs
            } else {
                &mut map.vmstate
            };
            let clip = |g: u64, len: u64| if g < vsize { len.min(vsize - g) } else { len };
            let bad = |problem: String| {
                corrupt(
                    &self.path,
                    &format!("L2 entry for guest offset {guest:#x}"),
                    at,
                    problem,
                )
            };
            if e & L2_COMPRESSED != 0 {
                if h.has_data_file() {
                    return Err(bad(
                        "compressed cluster in an image with an external data file".into(),
                    ));
                }
                if bitmap != 0 {
                    return Err(bad(
                        "compressed cluster with a non-zero subcluster bitmap".into()
                    ));
                }
                let csize_shift = 62 - (h.cluster_bits - 8);
                let offset_mask = (1u64 << csize_shift) - 1;
                let host = e & offset_mask;
                let sectors = ((e & !L2_COPIED & !L2_COMPRESSED) >> csize_shift) + 1;
                let len = sectors * 512 - (host & 511);
                if host >> 56 != 0 {
                    return Err(bad(format!(
                        "compressed offset {host:#x} uses bits above 55"
                    )));
                }
                if host.saturating_add(len) > self.file_len().saturating_add(511)
                    || host >= self.file_len()
                {
                    return Err(bad(format!(
                        "compressed data at {host:#x}+{len} is past the end of the file ({:#x})",
                        self.file_len()
                    )));
                }
                target.push(Run {
                    guest,
                    len: clip(guest, cs),
                    kind: RunKind::Compressed { host, len },
                });
                continue;
            }
            let reserved = if ext {
                L2_STD_RESERVED | L2_ZERO
            } else {
                L2_STD_RESERVED
            };
            if e & reserved != 0 {
                return Err(bad(format!("entry {e:#018x} has reserved bits set")));
            }
            let host = e & L2_OFFSET_MASK;
            let allocated = host != 0 || (h.has_data_file() && e & L2_COPIED != 0);
            if allocated {
                if !host.is_multiple_of(cs) {
                    return Err(bad(format!("host offset {host:#x} is not cluster aligned")));
                }
                if h.has_data_file() {
                    if host != guest {
                        return Err(bad(format!(
                            "host offset {host:#x} must equal the guest offset in an external data file"
                        )));
                    }
                } else if host >= self.file_len() {
                    return Err(bad(format!(
                        "host offset {host:#x} is past the end of the file ({:#x})",
                        self.file_len()
                    )));
                }
            }
            if !ext {
                let kind = if e & L2_ZERO != 0 {
                    // QEMU treats an offset of 0 with the zero flag as a plain zero cluster,
                    // even with a data file.
                    if host != 0 {
                        RunKind::ZeroAlloc { host }
                    } else {
                        RunKind::ZeroPlain
                    }
                } else if allocated {
                    RunKind::Data { host }
                } else {
                    continue;
                };
                push_run(
                    target,
                    Run {
                        guest,
                        len: clip(guest, cs),
                        kind,
                    },
                );
                continue;
            }
            let alloc_bits = bitmap as u32;
            let zero_bits = (bitmap >> 32) as u32;
            if alloc_bits & zero_bits != 0 {
                return Err(bad(format!(
                    "subclusters {:#x} are marked both allocated and zero",
                    alloc_bits & zero_bits
                )));
            }
            if !allocated && alloc_bits != 0 {
                return Err(bad(
                    "subclusters allocated in a cluster with no host offset".into(),
                ));
            }
            for sc in 0..32u64 {
                let g = guest + sc * sc_size;
                if g >= vsize && guest < vsize {
                    break;
                }
                let bit = 1u32 << sc;
                let kind = if alloc_bits & bit != 0 {
                    RunKind::Data {
                        host: host + sc * sc_size,
                    }
                } else if zero_bits & bit != 0 {
                    if allocated {
                        RunKind::ZeroAlloc {
                            host: host + sc * sc_size,
                        }
                    } else {
                        RunKind::ZeroPlain
                    }
                } else if allocated {
                    RunKind::UnallocAlloc {
                        host: host + sc * sc_size,
                    }
                } else {
                    continue;
                };
                let target = if g < vsize {
                    &mut map.runs
                } else {
                    &mut map.vmstate
                };
                push_run(
                    target,
                    Run {
                        guest: g,
                        len: clip(g, sc_size),
                        kind,
                    },
                );
            }
        }
        Ok(())
    }

    /// The refcount of the host cluster holding `offset` (0 past the refcount table).
    pub fn refcount(&self, offset: HostFileOffset) -> Result<u64> {
        let offset = offset.0;
        let h = &self.header;
        let cluster = offset >> h.cluster_bits;
        let bits = h.refcount_bits() as u64;
        let per_block = (h.cluster_size() * 8) / bits;
        let table_index = cluster / per_block;
        let Some(&block_off) = self.refcount_table.get(table_index as usize) else {
            return Ok(0);
        };
        if block_off == 0 {
            return Ok(0);
        }
        let index = cluster % per_block;
        let mut cache = self
            .refblock_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(block_off) {
            let mut block = vec![0u8; h.cluster_size() as usize];
            self.read(&mut block, block_off)?;
            e.insert(block);
        }
        let block = &cache[&block_off];
        let bit = index * bits;
        let byte = (bit / 8) as usize;
        Ok(match bits {
            1 | 2 | 4 => ((block[byte] >> (bit % 8)) & ((1u8 << bits) - 1)) as u64,
            8 => block[byte] as u64,
            16 => u16::from_be_bytes([block[byte], block[byte + 1]]) as u64,
            32 => be_u32(block, byte) as u64,
            _ => be_u64(block, byte),
        })
    }

    /// The internal snapshots, from the snapshot table.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let h = &self.header;
        let mut out = Vec::with_capacity(h.nb_snapshots.min(1024) as usize);
        let mut at = h.snapshots_offset;
        let file_len = self.file_len();
        for n in 0..h.nb_snapshots {
            let field = format!("snapshot table entry {n}");
            if at.checked_add(40).is_none_or(|e| e > file_len) {
                return Err(corrupt(
                    &self.path,
                    &field,
                    at,
                    "runs past the end of the file".into(),
                ));
            }
            let mut fixed = [0u8; 40];
            self.read(&mut fixed, at)?;
            let l1_table_offset = be_u64(&fixed, 0);
            let l1_size = be_u32(&fixed, 8);
            let id_len = u16::from_be_bytes([fixed[12], fixed[13]]) as u64;
            let name_len = u16::from_be_bytes([fixed[14], fixed[15]]) as u64;
            let mut vm_state_size = be_u32(&fixed, 32) as u64;
            let extra_len = be_u32(&fixed, 36) as u64;
            let var_len = extra_len + id_len + name_len;
            if var_len > 1 << 20 || at + 40 + var_len > file_len {
                return Err(corrupt(
                    &self.path,
                    &field,
                    at,
                    format!("variable part of {var_len} bytes runs past the end of the file"),
                ));
            }
            let mut var = vec![0u8; var_len as usize];
            self.read(&mut var, at + 40)?;
            let mut disk_size = None;
            if extra_len >= 8 {
                vm_state_size = be_u64(&var, 0);
            }
            if extra_len >= 16 {
                disk_size = Some(be_u64(&var, 8));
            }
            let e = extra_len as usize;
            let id = String::from_utf8_lossy(&var[e..e + id_len as usize]).into_owned();
            let name = String::from_utf8_lossy(&var[e + id_len as usize..]).into_owned();
            let l1_bytes = l1_size as u64 * 8;
            if l1_bytes > header::MAX_L1_BYTES {
                return Err(corrupt(
                    &self.path,
                    &field,
                    at + 8,
                    format!("L1 size {l1_size} exceeds the 32 MiB limit"),
                ));
            }
            header::check_extent(
                &self.path,
                &field,
                at,
                l1_table_offset,
                l1_bytes,
                h.cluster_size(),
                file_len,
            )?;
            out.push(Snapshot {
                id,
                name,
                l1_table_offset,
                l1_size,
                vm_state_size,
                disk_size,
                entry_offset: at,
            });
            at += (40 + var_len).div_ceil(8) * 8;
        }
        Ok(out)
    }

    /// Bytes the snapshot table occupies.
    pub(crate) fn snapshot_table_len(&self, snaps: &[Snapshot]) -> u64 {
        match snaps.last() {
            None => 0,
            Some(_) => {
                // Recompute the end from the last entry's variable part.
                let mut end = self.header.snapshots_offset;
                for s in snaps {
                    let mut fixed = [0u8; 40];
                    if self.read(&mut fixed, s.entry_offset).is_err() {
                        break;
                    }
                    let var = be_u32(&fixed, 36) as u64
                        + u16::from_be_bytes([fixed[12], fixed[13]]) as u64
                        + u16::from_be_bytes([fixed[14], fixed[15]]) as u64;
                    end = s.entry_offset + (40 + var).div_ceil(8) * 8;
                }
                end - self.header.snapshots_offset
            }
        }
    }

    /// Read a table of big-endian u64 entries (a snapshot's L1, a bitmap table).
    pub(crate) fn read_u64_table(&self, offset: u64, entries: u64) -> Result<Vec<u64>> {
        read_table(self.src.as_ref(), &self.path, offset, entries)
    }

    /// Decompress the compressed cluster stored at `host` (`len` bytes, as the L2 entry
    /// says) into one cluster of guest data.
    pub fn read_compressed(&self, host: HostFileOffset, len: u64) -> Result<Vec<u8>> {
        let host = host.0;
        let cs = self.header.cluster_size() as usize;
        // The sector-rounded length may reach past EOF by less than a sector.
        let len = len.min(self.file_len() - host);
        let mut input = vec![0u8; len as usize];
        self.read(&mut input, host)?;
        let mut out = vec![0u8; cs];
        let bad = |what: String| corrupt(&self.path, "compressed cluster", host, what);
        match self.header.compression {
            Compression::Zlib => {
                let mut d = flate2::Decompress::new(false);
                d.decompress(&input, &mut out, flate2::FlushDecompress::Finish)
                    .map_err(|e| bad(format!("deflate: {e}")))?;
                if d.total_out() as usize != cs {
                    return Err(bad(format!(
                        "inflated to {} bytes, not one cluster",
                        d.total_out()
                    )));
                }
            }
            Compression::Zstd => {
                let mut slice = input.as_slice();
                let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut slice)
                    .map_err(|e| bad(format!("zstd: {e}")))?;
                dec.read_exact(&mut out)
                    .map_err(|e| bad(format!("zstd: {e}")))?;
            }
        }
        Ok(out)
    }
}

fn read_table(src: &dyn ReadAt, path: &Path, offset: u64, entries: u64) -> Result<Vec<u64>> {
    let bytes = entries
        .checked_mul(8)
        .filter(|b| offset.checked_add(*b).is_some_and(|end| end <= src.len()))
        .ok_or_else(|| {
            corrupt(
                path,
                "table",
                offset,
                format!(
                    "{entries} entries run past the end of the file ({:#x})",
                    src.len()
                ),
            )
        })?;
    let mut raw = vec![0u8; bytes as usize];
    src.read_exact_at(&mut raw, offset)
        .map_err(|e| Qcow2Error::io(path, e))?;
    Ok(raw.chunks_exact(8).map(|c| be_u64(c, 0)).collect())
}
