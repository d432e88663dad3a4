//! btrfs: FIEMAP gives an extent's address in the filesystem's own logical space, which
//! its chunk tree maps to stripes on its devices. This reads the devices
//! (`BTRFS_IOC_FS_INFO`, `BTRFS_IOC_DEV_INFO`) and the chunk tree
//! (`BTRFS_IOC_TREE_SEARCH`) of a mounted filesystem, as `btrfs inspect-internal
//! dump-tree -t chunk` shows them, and maps logical bytes to each copy's device and byte.

use super::DevId;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

const MAGIC: u64 = 0x94;
/// `_IOC(dir, 0x94, nr, size)` on the architectures Linux numbers ioctls this way.
const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (MAGIC << 8) | nr
}
const IOC_TREE_SEARCH: u64 = ioc(3, 17, 4096);
const IOC_DEV_INFO: u64 = ioc(3, 30, 4096);
const IOC_FS_INFO: u64 = ioc(2, 31, 1024);

const CHUNK_TREE: u64 = 3;
const FIRST_CHUNK_TREE_OBJECTID: u64 = 256;
const CHUNK_ITEM_KEY: u32 = 228;
/// `btrfs_ioctl_search_key`: 7 u64, 4 u32, 4 u64.
const SEARCH_KEY_LEN: usize = 104;
/// `btrfs_ioctl_search_header`: transid, objectid, offset, type, len.
const SEARCH_HEADER_LEN: usize = 32;
/// `btrfs_chunk` before its stripes, and one `btrfs_stripe`.
const CHUNK_LEN: usize = 48;
const STRIPE_LEN: usize = 32;
/// `btrfs_ioctl_dev_info_args.path`.
const DEV_INFO_PATH: usize = 3072;

/// Block-group profile bits of a chunk's type.
const RAID0: u64 = 1 << 3;
const RAID1: u64 = 1 << 4;
const DUP: u64 = 1 << 5;
const RAID10: u64 = 1 << 6;
const RAID5: u64 = 1 << 7;
const RAID6: u64 = 1 << 8;
const RAID1C3: u64 = 1 << 9;
const RAID1C4: u64 = 1 << 10;

/// One chunk: logical bytes `[logical, logical + len)`, and where its copies are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub logical: u64,
    pub len: u64,
    pub profile: u64,
    /// Each stripe's device and its byte there.
    pub stripes: Vec<(DevId, u64)>,
}

impl Chunk {
    /// Whether every stripe holds the whole chunk (single, DUP, RAID1 and its 3- and
    /// 4-copy forms): a logical byte is then at the same place in each.
    fn copies_whole(&self) -> bool {
        self.profile & (RAID0 | RAID10 | RAID5 | RAID6) == 0
    }

    fn profile_name(&self) -> &'static str {
        match self.profile {
            p if p & RAID0 != 0 => "RAID0",
            p if p & RAID10 != 0 => "RAID10",
            p if p & RAID5 != 0 => "RAID5",
            p if p & RAID6 != 0 => "RAID6",
            p if p & (RAID1 | RAID1C3 | RAID1C4) != 0 => "RAID1",
            p if p & DUP != 0 => "DUP",
            _ => "single",
        }
    }
}

/// A mounted btrfs: its devices and chunks.
#[derive(Debug, Clone, Default)]
pub struct BtrfsMap {
    pub devices: Vec<DevId>,
    pub chunks: Vec<Chunk>,
}

/// Where a run of logical bytes is: each copy's (device, byte), and how many bytes
/// from there stay in one chunk; or why it cannot be said.
pub type Placed = Result<(Vec<(DevId, u64)>, u64), String>;

impl BtrfsMap {
    /// Read the devices and chunk tree of the btrfs `file` is on.
    pub fn of(file: &File) -> std::io::Result<BtrfsMap> {
        let fd = file.as_raw_fd();
        let mut info = vec![0u8; 1024];
        ioctl(fd, IOC_FS_INFO, &mut info)?;
        let max_id = u64_at(&info, 0);
        let mut by_id = Vec::new();
        for devid in 1..=max_id.min(4096) {
            let mut args = vec![0u8; 4096];
            args[..8].copy_from_slice(&devid.to_le_bytes());
            // A gap in the ids (a device removed) answers ENODEV.
            if ioctl(fd, IOC_DEV_INFO, &mut args).is_err() {
                continue;
            }
            let path = &args[DEV_INFO_PATH..];
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            let path = String::from_utf8_lossy(&path[..end]).into_owned();
            let md = std::fs::metadata(&path)?;
            by_id.push((devid, DevId::from_dev_t(md.rdev())));
        }
        let chunks = chunk_items(fd)?
            .into_iter()
            .filter_map(|(logical, data)| parse_chunk(logical, &data, &by_id))
            .collect();
        Ok(BtrfsMap {
            devices: by_id.iter().map(|&(_, d)| d).collect(),
            chunks,
        })
    }

    /// Where logical byte `logical` is, for at most `len` bytes.
    pub fn place(&self, logical: u64, len: u64) -> Placed {
        let i = self
            .chunks
            .partition_point(|c| c.logical + c.len <= logical);
        let c = self
            .chunks
            .get(i)
            .filter(|c| c.logical <= logical)
            .ok_or_else(|| format!("btrfs logical byte {logical} is in no chunk"))?;
        if !c.copies_whole() {
            return Err(format!(
                "btrfs {} chunks are not remapped (logical byte {logical})",
                c.profile_name()
            ));
        }
        let within = logical - c.logical;
        let n = len.min(c.len - within);
        Ok((c.stripes.iter().map(|&(d, b)| (d, b + within)).collect(), n))
    }
}

/// A chunk item's data: its stripes on the devices known by id; `None` if damaged or
/// on a device not found.
fn parse_chunk(logical: u64, d: &[u8], by_id: &[(u64, DevId)]) -> Option<Chunk> {
    if d.len() < CHUNK_LEN {
        return None;
    }
    let len = u64_at(d, 0);
    let profile = u64_at(d, 24);
    let n = usize::from(u16::from_le_bytes([d[44], d[45]]));
    if n == 0 || d.len() < CHUNK_LEN + n * STRIPE_LEN {
        return None;
    }
    let mut stripes = Vec::with_capacity(n);
    for i in 0..n {
        let s = &d[CHUNK_LEN + i * STRIPE_LEN..];
        let devid = u64_at(s, 0);
        let dev = by_id.iter().find(|&&(id, _)| id == devid)?.1;
        stripes.push((dev, u64_at(s, 8)));
    }
    Some(Chunk {
        logical,
        len,
        profile,
        stripes,
    })
}

/// Every chunk item: (logical start, item data), in key order.
fn chunk_items(fd: i32) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut min_offset = 0u64;
    loop {
        let mut args = vec![0u8; 4096];
        let key: [u64; 7] = [
            CHUNK_TREE,
            FIRST_CHUNK_TREE_OBJECTID,
            FIRST_CHUNK_TREE_OBJECTID,
            min_offset,
            u64::MAX,
            0,
            u64::MAX,
        ];
        for (i, v) in key.iter().enumerate() {
            args[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        for (i, v) in [CHUNK_ITEM_KEY, CHUNK_ITEM_KEY, 4096u32].iter().enumerate() {
            args[56 + i * 4..60 + i * 4].copy_from_slice(&v.to_le_bytes());
        }
        ioctl(fd, IOC_TREE_SEARCH, &mut args)?;
        let items = u32::from_le_bytes(args[64..68].try_into().expect("4 bytes"));
        if items == 0 {
            return Ok(out);
        }
        let buf = &args[SEARCH_KEY_LEN..];
        let mut pos = 0;
        let mut last = None;
        for _ in 0..items {
            if pos + SEARCH_HEADER_LEN > buf.len() {
                break;
            }
            let offset = u64_at(buf, pos + 16);
            let ty = u32::from_le_bytes(buf[pos + 24..pos + 28].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(buf[pos + 28..pos + 32].try_into().expect("4 bytes"));
            let data = pos + SEARCH_HEADER_LEN;
            let Some(item) = buf.get(data..data + len as usize) else {
                break;
            };
            if ty == CHUNK_ITEM_KEY {
                out.push((offset, item.to_vec()));
            }
            last = Some(offset);
            pos = data + len as usize;
        }
        match last.and_then(|o| o.checked_add(1)) {
            Some(next) if next > min_offset => min_offset = next,
            _ => return Ok(out),
        }
    }
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn ioctl(fd: i32, req: u64, buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: `buf` is at least as large as the request's argument (its size is in the
    // request number), and the kernel writes only within it.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, buf.as_mut_ptr()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_data(len: u64, profile: u64, stripes: &[(u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; CHUNK_LEN];
        d[..8].copy_from_slice(&len.to_le_bytes());
        d[24..32].copy_from_slice(&profile.to_le_bytes());
        d[44..46].copy_from_slice(&(stripes.len() as u16).to_le_bytes());
        for &(devid, off) in stripes {
            let mut s = vec![0u8; STRIPE_LEN];
            s[..8].copy_from_slice(&devid.to_le_bytes());
            s[8..16].copy_from_slice(&off.to_le_bytes());
            d.extend(s);
        }
        d
    }

    #[test]
    fn logical_bytes_map_to_every_copy_and_striped_profiles_stop() {
        let (a, b) = (DevId { major: 7, minor: 0 }, DevId { major: 7, minor: 1 });
        let by_id = [(1, a), (2, b)];
        let data = 1 << 0;
        let map = BtrfsMap {
            devices: vec![a, b],
            chunks: vec![
                parse_chunk(1 << 30, &chunk_data(1 << 28, data, &[(1, 1 << 24)]), &by_id).unwrap(),
                parse_chunk(
                    (1 << 30) + (1 << 28),
                    &chunk_data(1 << 28, data | RAID1, &[(1, 1 << 29), (2, 1 << 20)]),
                    &by_id,
                )
                .unwrap(),
                parse_chunk(
                    (1 << 30) + (2 << 28),
                    &chunk_data(1 << 28, data | RAID0, &[(1, 0), (2, 0)]),
                    &by_id,
                )
                .unwrap(),
            ],
        };
        assert_eq!(
            map.place((1 << 30) + 4096, 8192),
            Ok((vec![(a, (1 << 24) + 4096)], 8192))
        );
        // A run crossing into the next chunk stops at the boundary.
        let end = (1 << 30) + (1 << 28);
        assert_eq!(
            map.place(end - 4096, 8192),
            Ok((vec![(a, (1 << 24) + (1 << 28) - 4096)], 4096))
        );
        assert_eq!(
            map.place(end, 4096),
            Ok((vec![(a, 1 << 29), (b, 1 << 20)], 4096))
        );
        assert!(
            map.place((1 << 30) + (2 << 28), 4096)
                .unwrap_err()
                .contains("RAID0")
        );
        assert!(map.place(4096, 4096).unwrap_err().contains("no chunk"));
        // A stripe on a device not found, or a cut item, is no chunk.
        assert!(parse_chunk(0, &chunk_data(1, data, &[(9, 0)]), &by_id).is_none());
        assert!(parse_chunk(0, &chunk_data(1, data, &[(1, 0)])[..60], &by_id).is_none());
    }
}
