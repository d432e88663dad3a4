//! The qcow2 header and its extensions, validated field by field.

use super::{Qcow2Error, Result, corrupt};
use crate::source::{ReadAt, be_u32, be_u64};
use serde::Serialize;
use std::path::Path;

pub const MAGIC: u32 = 0x5146_49fb;
const V2_HEADER_LEN: u32 = 72;
const V3_MIN_HEADER_LEN: u32 = 104;
/// QEMU refuses larger L1 tables; so do we, before allocating one.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit for the refcount table.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_SNAPSHOTS: u32 = 65536;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zlib,
    Zstd,
}

#[derive(Debug, Clone, Serialize)]
pub struct BitmapsExtension {
    pub nb_bitmaps: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: Compression,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    pub bitmaps: Option<BitmapsExtension>,
    /// Offset and length of the LUKS header area.
    pub crypto_header: Option<(u64, u64)>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }
    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }
    pub fn corrupt_flag(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }
    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0
    }
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }
    /// Bytes per L2 entry: 8, or 16 with extended L2 (entry + subcluster bitmap).
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() { 16 } else { 8 }
    }
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }
    pub fn subclusters(&self) -> u64 {
        if self.extended_l2() { 32 } else { 1 }
    }
    pub fn subcluster_size(&self) -> u64 {
        self.cluster_size() / self.subclusters()
    }
    /// Guest bytes one L1 entry (one L2 table) covers.
    pub fn l1_coverage(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    pub fn parse(src: &dyn ReadAt, path: &Path) -> Result<Header> {
        let file_len = src.len();
        if file_len < V2_HEADER_LEN as u64 {
            return Err(corrupt(
                path,
                "header",
                0,
                format!("file is {file_len} bytes, shorter than the 72-byte qcow2 header"),
            ));
        }
        let mut fixed = [0u8; V3_MIN_HEADER_LEN as usize + 8];
        let fixed_len = (fixed.len() as u64).min(file_len) as usize;
        src.read_exact_at(&mut fixed[..fixed_len], 0)
            .map_err(|e| Qcow2Error::io(path, e))?;
        let magic = be_u32(&fixed, 0);
        if magic != MAGIC {
            return Err(Qcow2Error::NotQcow2 {
                path: path.to_owned(),
                magic,
            });
        }
        let version = be_u32(&fixed, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Unsupported {
                path: path.to_owned(),
                what: format!("qcow2 version {version} (only 2 and 3 exist)"),
            });
        }
        let cluster_bits = be_u32(&fixed, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(
                path,
                "cluster_bits",
                20,
                format!("{cluster_bits} is outside 9..=21 (512 B to 2 MiB clusters)"),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            cluster_bits,
            virtual_size: be_u64(&fixed, 24),
            crypt_method: be_u32(&fixed, 32),
            l1_size: be_u32(&fixed, 36),
            l1_table_offset: be_u64(&fixed, 40),
            refcount_table_offset: be_u64(&fixed, 48),
            refcount_table_clusters: be_u32(&fixed, 56),
            nb_snapshots: be_u32(&fixed, 60),
            snapshots_offset: be_u64(&fixed, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: Compression::Zlib,
            backing_file: None,
            backing_format: None,
            data_file: None,
            bitmaps: None,
            crypto_header: None,
        };
        if version == 3 {
            if fixed_len < V3_MIN_HEADER_LEN as usize {
                return Err(corrupt(
                    path,
                    "header_length",
                    100,
                    "file ends inside the version 3 header".into(),
                ));
            }
            h.incompatible_features = be_u64(&fixed, 72);
            h.compatible_features = be_u64(&fixed, 80);
            h.autoclear_features = be_u64(&fixed, 88);
            h.refcount_order = be_u32(&fixed, 96);
            h.header_length = be_u32(&fixed, 100);
            if h.header_length < V3_MIN_HEADER_LEN
                || !h.header_length.is_multiple_of(8)
                || h.header_length as u64 > cluster_size
            {
                return Err(corrupt(
                    path,
                    "header_length",
                    100,
                    format!(
                        "{} must be a multiple of 8 between 104 and the cluster size",
                        h.header_length
                    ),
                ));
            }
            if h.header_length > V3_MIN_HEADER_LEN && fixed_len > 104 {
                h.compression = match fixed[104] {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    t => {
                        return Err(corrupt(
                            path,
                            "compression_type",
                            104,
                            format!("unknown compression type {t}"),
                        ));
                    }
                };
            }
            if (h.incompatible_features & INCOMPAT_COMPRESSION != 0)
                != (h.compression != Compression::Zlib)
            {
                return Err(corrupt(
                    path,
                    "compression_type",
                    104,
                    "the compression-type feature bit and the compression_type field disagree"
                        .into(),
                ));
            }
        }
        let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Qcow2Error::Unsupported {
                path: path.to_owned(),
                what: format!("unknown incompatible feature bits {unknown:#x}"),
            });
        }
        if h.refcount_order > 6 {
            return Err(corrupt(
                path,
                "refcount_order",
                96,
                format!("{} is larger than 6 (64-bit refcounts)", h.refcount_order),
            ));
        }
        if h.extended_l2() && cluster_bits < 14 {
            return Err(corrupt(
                path,
                "cluster_bits",
                20,
                format!(
                    "extended L2 entries need clusters of 16 KiB or more, not {cluster_size} B"
                ),
            ));
        }
        if h.crypt_method > 2 {
            return Err(corrupt(
                path,
                "crypt_method",
                32,
                format!("unknown encryption method {}", h.crypt_method),
            ));
        }
        h.check_tables(path, file_len)?;
        h.parse_backing_name(src, path, &fixed, file_len)?;
        h.parse_extensions(src, path, file_len)?;
        if h.has_data_file() && h.backing_file.is_some() && h.autoclear_features & 2 != 0 {
            return Err(corrupt(
                path,
                "autoclear_features",
                88,
                "a raw external data file cannot have a backing file".into(),
            ));
        }
        Ok(h)
    }

    fn check_tables(&self, path: &Path, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        // The L1 table must cover the virtual size; computed in u128 so a huge size
        // cannot overflow into a small requirement.
        let coverage = self.l1_coverage() as u128;
        let needed = (self.virtual_size as u128).div_ceil(coverage);
        if (self.l1_size as u128) < needed {
            return Err(corrupt(
                path,
                "l1_size",
                36,
                format!(
                    "{} entries cannot cover the virtual size {} (needs {needed})",
                    self.l1_size, self.virtual_size
                ),
            ));
        }
        let l1_bytes = self.l1_size as u64 * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(
                path,
                "l1_size",
                36,
                format!("{} entries exceed the 32 MiB L1 limit", self.l1_size),
            ));
        }
        check_extent(
            path,
            "l1_table_offset",
            40,
            self.l1_table_offset,
            l1_bytes,
            cs,
            file_len,
        )?;
        let rt_bytes = self.refcount_table_clusters as u64 * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(corrupt(
                path,
                "refcount_table_clusters",
                56,
                format!(
                    "{} clusters exceed the 8 MiB refcount table limit",
                    self.refcount_table_clusters
                ),
            ));
        }
        check_extent(
            path,
            "refcount_table_offset",
            48,
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
        )?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(corrupt(
                path,
                "nb_snapshots",
                60,
                format!("{} exceeds the limit of {MAX_SNAPSHOTS}", self.nb_snapshots),
            ));
        }
        if self.nb_snapshots > 0 {
            // Each entry is at least 40 bytes.
            check_extent(
                path,
                "snapshots_offset",
                64,
                self.snapshots_offset,
                self.nb_snapshots as u64 * 40,
                cs,
                file_len,
            )?;
        }
        Ok(())
    }

    fn parse_backing_name(
        &mut self,
        src: &dyn ReadAt,
        path: &Path,
        fixed: &[u8],
        file_len: u64,
    ) -> Result<()> {
        let off = be_u64(fixed, 8);
        if off == 0 {
            return Ok(());
        }
        let len = be_u32(fixed, 16) as u64;
        if len == 0 || len > 1023 {
            return Err(corrupt(
                path,
                "backing_file_size",
                16,
                format!("{len} is not in 1..=1023"),
            ));
        }
        if off.saturating_add(len) > self.cluster_size().min(file_len) {
            return Err(corrupt(
                path,
                "backing_file_offset",
                8,
                format!("name at {off:#x}+{len} lies outside the first cluster"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        src.read_exact_at(&mut buf, off)
            .map_err(|e| Qcow2Error::io(path, e))?;
        self.backing_file = Some(string_field(path, "backing file name", off, &buf)?);
        Ok(())
    }

    fn parse_extensions(&mut self, src: &dyn ReadAt, path: &Path, file_len: u64) -> Result<()> {
        // Extensions live in the first cluster, after the header.
        let end = self.cluster_size().min(file_len);
        let mut at = self.header_length as u64;
        let mut seen = Vec::new();
        while at + 8 <= end {
            let mut hdr = [0u8; 8];
            src.read_exact_at(&mut hdr, at)
                .map_err(|e| Qcow2Error::io(path, e))?;
            let kind = be_u32(&hdr, 0);
            let len = be_u32(&hdr, 4) as u64;
            if kind == EXT_END {
                return Ok(());
            }
            let data_at = at + 8;
            if data_at + len > end {
                return Err(corrupt(
                    path,
                    "header extension",
                    at,
                    format!("extension {kind:#010x} of {len} bytes runs past the first cluster"),
                ));
            }
            if seen.contains(&kind) && kind != EXT_FEATURE_TABLE {
                return Err(corrupt(
                    path,
                    "header extension",
                    at,
                    format!("extension {kind:#010x} appears twice"),
                ));
            }
            seen.push(kind);
            let mut data = vec![0u8; len as usize];
            src.read_exact_at(&mut data, data_at)
                .map_err(|e| Qcow2Error::io(path, e))?;
            match kind {
                EXT_BACKING_FORMAT => {
                    self.backing_format =
                        Some(string_field(path, "backing format", data_at, &data)?)
                }
                EXT_DATA_FILE => {
                    self.data_file = Some(string_field(path, "data file name", data_at, &data)?)
                }
                EXT_BITMAPS => {
                    if len < 24 {
                        return Err(corrupt(
                            path,
                            "bitmaps extension",
                            at,
                            format!("{len} bytes, need 24"),
                        ));
                    }
                    let ext = BitmapsExtension {
                        nb_bitmaps: be_u32(&data, 0),
                        directory_size: be_u64(&data, 8),
                        directory_offset: be_u64(&data, 16),
                    };
                    // Only consistent when the autoclear bit says so (QEMU ignores it otherwise).
                    if self.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
                        check_extent(
                            path,
                            "bitmap_directory_offset",
                            data_at + 16,
                            ext.directory_offset,
                            ext.directory_size,
                            self.cluster_size(),
                            file_len,
                        )?;
                        if ext.directory_size > 64 << 20 {
                            return Err(corrupt(
                                path,
                                "bitmap_directory_size",
                                data_at + 8,
                                format!("{} bytes is implausible", ext.directory_size),
                            ));
                        }
                        self.bitmaps = Some(ext);
                    }
                }
                EXT_CRYPTO => {
                    if len < 16 {
                        return Err(corrupt(
                            path,
                            "encryption header extension",
                            at,
                            format!("{len} bytes, need 16"),
                        ));
                    }
                    let (o, l) = (be_u64(&data, 0), be_u64(&data, 8));
                    check_extent(
                        path,
                        "encryption header offset",
                        data_at,
                        o,
                        l,
                        self.cluster_size(),
                        file_len,
                    )?;
                    self.crypto_header = Some((o, l));
                }
                _ => {}
            }
            at = data_at + len.div_ceil(8) * 8;
        }
        Ok(())
    }
}

fn string_field(path: &Path, field: &str, offset: u64, raw: &[u8]) -> Result<String> {
    String::from_utf8(raw.to_vec())
        .map_err(|_| corrupt(path, field, offset, "is not valid UTF-8".into()))
}

/// A table `[offset, offset + len)` must be cluster aligned and lie inside the file.
pub(crate) fn check_extent(
    path: &Path,
    field: &str,
    field_at: u64,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    if !offset.is_multiple_of(cluster_size) {
        return Err(corrupt(
            path,
            field,
            field_at,
            format!("{offset:#x} is not aligned to the {cluster_size}-byte cluster size"),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(corrupt(
            path,
            field,
            field_at,
            format!(
                "table at {offset:#x} of {len} bytes runs past the end of the file ({file_len:#x})"
            ),
        )),
    }
}
