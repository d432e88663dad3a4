//! MBR (with extended/logical partitions) and GPT partition tables of the guest disk.

use super::{GuestError, Result};
use crate::addr::{GuestLba, SECTOR_SIZE};
use crate::source::{ReadAt, le_u16, le_u32, le_u64};
use serde::{Deserialize, Serialize};

const MAX_LOGICAL: usize = 128;
const MAX_GPT_ENTRIES_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Mbr,
    Gpt,
    /// No partition table: a filesystem (or nothing) on the whole disk.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// As Linux numbers them: `vda1` is 1; MBR logical partitions start at 5.
    #[serde(default)]
    pub number: u32,
    pub start: GuestLba,
    pub sectors: u64,
    /// MBR type byte as hex, or the GPT type GUID.
    #[serde(default)]
    pub type_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Partition {
    pub fn start_byte(&self) -> u64 {
        self.start.0 * SECTOR_SIZE
    }
    pub fn contains(&self, lba: GuestLba) -> bool {
        self.start.0 <= lba.0 && lba.0 < self.start.0 + self.sectors
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionTable {
    pub scheme: Scheme,
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
}

fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le_u32(b, 0),
        le_u16(b, 4),
        le_u16(b, 6),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

fn read(disk: &dyn ReadAt, at: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    disk.read_exact_at(&mut b, at).map_err(|e| GuestError::Io {
        what: format!("guest disk at {at:#x}"),
        source: e,
    })?;
    Ok(b)
}

/// Read the partition table of a guest disk.
pub fn read_partitions(disk: &dyn ReadAt) -> Result<PartitionTable> {
    if disk.len() < 512 {
        return Ok(PartitionTable {
            scheme: Scheme::None,
            sector_size: 512,
            partitions: vec![],
        });
    }
    let mbr = read(disk, 0, 512)?;
    if le_u16(&mbr, 510) != 0xAA55 {
        return Ok(PartitionTable {
            scheme: Scheme::None,
            sector_size: 512,
            partitions: vec![],
        });
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        for ss in [512u64, 4096] {
            if let Some(t) = read_gpt(disk, ss)? {
                return Ok(t);
            }
        }
        return Err(GuestError::Corrupt {
            what: "GPT header".into(),
            offset: 512,
            problem: "protective MBR but no valid GPT header (primary or backup) at 512- or 4096-byte sectors".into(),
        });
    }
    // A boot sector with a valid signature but bogus entries (e.g. a FAT filesystem)
    // is not a partition table: status bytes must be 0x00 or 0x80.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(PartitionTable {
            scheme: Scheme::None,
            sector_size: 512,
            partitions: vec![],
        });
    }
    let disk_sectors = disk.len() / 512;
    let mut parts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ty = e[4];
        let start = le_u32(e, 8) as u64;
        let count = le_u32(e, 12) as u64;
        if ty == 0 || count == 0 {
            continue;
        }
        if start + count > disk_sectors {
            return Err(GuestError::Corrupt {
                what: format!("MBR partition {}", i + 1),
                offset: 446 + 16 * i as u64,
                problem: format!(
                    "sectors {start}+{count} run past the disk ({disk_sectors} sectors)"
                ),
            });
        }
        if matches!(ty, 0x05 | 0x0F | 0x85) {
            logical_partitions(disk, start, count, &mut parts)?;
        } else {
            parts.push(Partition {
                number: i as u32 + 1,
                start: GuestLba(start),
                sectors: count,
                type_id: format!("{ty:02x}"),
                name: String::new(),
            });
        }
    }
    parts.sort_by_key(|p| p.number);
    Ok(PartitionTable {
        scheme: Scheme::Mbr,
        sector_size: 512,
        partitions: parts,
    })
}

fn logical_partitions(
    disk: &dyn ReadAt,
    ext_start: u64,
    ext_len: u64,
    out: &mut Vec<Partition>,
) -> Result<()> {
    let mut ebr = ext_start;
    let mut seen = std::collections::HashSet::new();
    for n in 0..MAX_LOGICAL {
        if !seen.insert(ebr) || ebr >= ext_start + ext_len {
            return Err(GuestError::Corrupt {
                what: "extended partition".into(),
                offset: ebr * 512,
                problem: "EBR chain loops or leaves the extended partition".into(),
            });
        }
        let b = read(disk, ebr * 512, 512)?;
        if le_u16(&b, 510) != 0xAA55 {
            return Err(GuestError::Corrupt {
                what: "EBR".into(),
                offset: ebr * 512 + 510,
                problem: "missing 0x55AA signature".into(),
            });
        }
        let (e0, e1) = (&b[446..462], &b[462..478]);
        let (start, count) = (le_u32(e0, 8) as u64, le_u32(e0, 12) as u64);
        if e0[4] != 0 && count != 0 {
            out.push(Partition {
                number: 5 + n as u32,
                start: GuestLba(ebr + start),
                sectors: count,
                type_id: format!("{:02x}", e0[4]),
                name: String::new(),
            });
        }
        let next = le_u32(e1, 8) as u64;
        if e1[4] == 0 || next == 0 {
            return Ok(());
        }
        ebr = ext_start + next;
    }
    Err(GuestError::Corrupt {
        what: "extended partition".into(),
        offset: ext_start * 512,
        problem: format!("more than {MAX_LOGICAL} logical partitions"),
    })
}

fn read_gpt(disk: &dyn ReadAt, ss: u64) -> Result<Option<PartitionTable>> {
    let Some(last) = (disk.len() / ss).checked_sub(1) else {
        return Ok(None);
    };
    for (hdr_lba, which) in [(1u64, "primary"), (last, "backup")] {
        if (hdr_lba + 1) * ss > disk.len() {
            continue;
        }
        let h = read(disk, hdr_lba * ss, ss as usize)?;
        if &h[0..8] != b"EFI PART" {
            continue;
        }
        let bad = |problem: String| GuestError::Corrupt {
            what: format!("{which} GPT header"),
            offset: hdr_lba * ss,
            problem,
        };
        let hsize = le_u32(&h, 12) as usize;
        if !(92..=ss as usize).contains(&hsize) {
            return Err(bad(format!("header size {hsize} is outside 92..={ss}")));
        }
        let mut copy = h[..hsize].to_vec();
        copy[16..20].fill(0);
        if crc32fast::hash(&copy) != le_u32(&h, 16) {
            continue; // try the backup
        }
        let entries_lba = le_u64(&h, 72);
        let n = le_u32(&h, 80) as u64;
        let esize = le_u32(&h, 84) as u64;
        if esize < 128 || !esize.is_multiple_of(8) || n * esize > MAX_GPT_ENTRIES_BYTES {
            return Err(bad(format!(
                "{n} entries of {esize} bytes is not a valid partition array"
            )));
        }
        let at = entries_lba
            .checked_mul(ss)
            .filter(|a| a + n * esize <= disk.len())
            .ok_or_else(|| {
                bad(format!(
                    "partition array at LBA {entries_lba} runs past the disk"
                ))
            })?;
        let arr = read(disk, at, (n * esize) as usize)?;
        if crc32fast::hash(&arr) != le_u32(&h, 88) {
            return Err(bad("partition array CRC32 mismatch".into()));
        }
        let mut parts = Vec::new();
        for i in 0..n as usize {
            let e = &arr[i * esize as usize..(i + 1) * esize as usize];
            if e[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, lastlba) = (le_u64(e, 32), le_u64(e, 40));
            if lastlba < first || lastlba > last {
                return Err(GuestError::Corrupt {
                    what: format!("GPT entry {}", i + 1),
                    offset: at + i as u64 * esize,
                    problem: format!("LBAs {first}..={lastlba} are not inside the disk"),
                });
            }
            let name: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            // Partition LBAs are in units of the GPT's sector size; report 512-byte sectors.
            let scale = ss / 512;
            parts.push(Partition {
                number: i as u32 + 1,
                start: GuestLba(first * scale),
                sectors: (lastlba - first + 1) * scale,
                type_id: guid(&e[0..16]),
                name: String::from_utf16_lossy(&name),
            });
        }
        return Ok(Some(PartitionTable {
            scheme: Scheme::Gpt,
            sector_size: ss,
            partitions: parts,
        }));
    }
    Ok(None)
}
