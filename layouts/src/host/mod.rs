//! The host side: where the bytes of a host file live on the host's block devices.
//!
//! A file offset goes through FIEMAP to a byte on the filesystem's device, then down the
//! device stack read from sysfs: a partition adds its start, a loop device leads into its
//! backing file (and that file's extents), device-mapper linear and striped targets remap
//! to their underlying devices, until a device with nothing below it.

pub mod btrfs;
pub mod dm;
pub mod fiemap;

pub use dm::{DmTarget, DmTargetKind};
pub use fiemap::{ExtentState, FileExtent};

use crate::addr::{DeviceSector, HostFileOffset, SECTOR_SIZE};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Loops of loop devices deeper than this are refused (they would be a cycle).
const MAX_STACK_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is on {fs}, which has no single block device below it: device sectors cannot be resolved"
    )]
    NoBlockDevice { path: PathBuf, fs: String },
    #[error("{path} is on btrfs, whose devices and chunk tree could not be read: {why}")]
    Btrfs { path: PathBuf, why: String },
    #[error("{path}: FIEMAP on {fs}: {why}")]
    Fiemap {
        path: PathBuf,
        fs: String,
        why: String,
    },
    #[error("sysfs {path}: {problem}")]
    Sysfs { path: PathBuf, problem: String },
    #[error("dm table line {line} '{text}': {problem}")]
    DmTable {
        line: usize,
        text: String,
        problem: String,
    },
    #[error("device-mapper device {name} ({dev}): cannot read its table: {why}")]
    DmTableUnavailable {
        name: String,
        dev: DevId,
        why: String,
    },
    #[error("device stack deeper than {MAX_STACK_DEPTH} levels (a loop device backed by itself?)")]
    TooDeep,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HostError + '_ {
    move |source| HostError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A block device number, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

impl DevId {
    pub fn from_dev_t(dev: u64) -> DevId {
        DevId {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

impl fmt::Display for DevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl Serialize for DevId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DevId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|()| serde::de::Error::custom(format!("{s:?} is not a device (major:minor)")))
    }
}

impl std::str::FromStr for DevId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, b) = s.trim().split_once(':').ok_or(())?;
        Ok(DevId {
            major: a.parse().map_err(|_| ())?,
            minor: b.parse().map_err(|_| ())?,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceKind {
    /// Nothing below it that we know of: the bottom of the stack.
    #[default]
    Disk,
    Partition {
        parent: DevId,
        start: DeviceSector,
    },
    Loop {
        backing_file: Option<PathBuf>,
        offset: u64,
        sizelimit: u64,
        /// Its IO to the backing file is direct (`losetup --direct-io=on`); without it
        /// (losetup's default) the backing file's page cache is under every request.
        /// `None`: not known (a snapshot taken before this was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direct_io: Option<bool>,
    },
    DeviceMapper {
        name: String,
        targets: Vec<DmTarget>,
    },
    /// An md array (`/sys/block/mdN/md`): its RAID level and its members in sync, each
    /// with the sector its data starts at. RAID1 is remapped to every member (a write
    /// goes to each, a read to one); other levels stop the chain there, named.
    Md {
        level: String,
        members: Vec<MdMember>,
    },
    /// Built on other devices we do not remap (bcache, ...): not the bottom.
    Stacked {
        slaves: Vec<String>,
    },
}

/// One member of an md array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdMember {
    pub dev: DevId,
    /// Where the array's data starts on it (sysfs `md/dev-X/offset`, sectors).
    pub data_offset: DeviceSector,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockDevice {
    pub id: DevId,
    /// Kernel name: `loop0p1`, `vda`, `dm-0`.
    pub name: String,
    #[serde(default)]
    pub kind: DeviceKind,
    #[serde(default)]
    pub size_sectors: u64,
}

impl BlockDevice {
    pub fn dev_path(&self) -> String {
        format!("/dev/{}", self.name)
    }
}

/// The host's block devices, read from sysfs on demand.
pub struct Topology {
    sysfs: PathBuf,
    cache: HashMap<DevId, Arc<BlockDevice>>,
    dm_tables: HashMap<String, Vec<DmTarget>>,
}

fn read_trim(p: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .map_err(io_err(p))
}

fn read_num(p: &Path) -> Result<u64, HostError> {
    let s = read_trim(p)?;
    s.parse().map_err(|_| HostError::Sysfs {
        path: p.to_owned(),
        problem: format!("'{s}' is not a number"),
    })
}

/// A device argument of a dm table: `major:minor` or a device node path.
pub fn parse_dev_arg(s: &str) -> Result<DevId, HostError> {
    if let Ok(id) = s.parse::<DevId>() {
        return Ok(id);
    }
    let md = std::fs::metadata(s).map_err(io_err(Path::new(s)))?;
    Ok(DevId::from_dev_t(md.rdev()))
}

impl Topology {
    /// The running system's devices (`/sys`).
    pub fn system() -> Topology {
        Topology::with_sysfs("/sys")
    }

    /// Devices described by a sysfs tree rooted elsewhere (a copy, or a test fixture).
    pub fn with_sysfs(root: impl Into<PathBuf>) -> Topology {
        Topology {
            sysfs: root.into(),
            cache: HashMap::new(),
            dm_tables: HashMap::new(),
        }
    }

    /// Use these dm tables (`dmsetup table` output, `name: ` prefixed lines) instead of
    /// asking the kernel.
    pub fn add_dm_tables(&mut self, text: &str) -> Result<(), HostError> {
        for (name, t) in dm::parse_table(text, &parse_dev_arg)? {
            if name.is_empty() {
                return Err(HostError::DmTable {
                    line: 0,
                    text: format!("{} {} ...", t.start, t.len),
                    problem: "lines need the 'name: ' prefix of 'dmsetup table'".into(),
                });
            }
            self.dm_tables.entry(name).or_default().push(t);
        }
        Ok(())
    }

    pub fn device(&mut self, id: DevId) -> Result<Arc<BlockDevice>, HostError> {
        if let Some(d) = self.cache.get(&id) {
            return Ok(d.clone());
        }
        let d = Arc::new(self.read_device(id)?);
        self.cache.insert(id, d.clone());
        Ok(d)
    }

    fn read_device(&self, id: DevId) -> Result<BlockDevice, HostError> {
        let link = self.sysfs.join(format!("dev/block/{id}"));
        let dir = link.canonicalize().map_err(|e| HostError::Sysfs {
            path: link.clone(),
            problem: format!("no block device {id}: {e}"),
        })?;
        let name = std::fs::read_to_string(dir.join("uevent"))
            .ok()
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
            })
            .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| id.to_string());
        let size_sectors = read_num(&dir.join("size")).unwrap_or(0);
        let kind = if dir.join("partition").exists() {
            let parent_dev = dir.parent().map(|p| p.join("dev")).unwrap_or_default();
            let parent = read_trim(&parent_dev)?
                .parse()
                .map_err(|_| HostError::Sysfs {
                    path: parent_dev.clone(),
                    problem: "not a major:minor".into(),
                })?;
            DeviceKind::Partition {
                parent,
                start: DeviceSector(read_num(&dir.join("start"))?),
            }
        } else if dir.join("loop").is_dir() {
            let bf = read_trim(&dir.join("loop/backing_file"))?;
            DeviceKind::Loop {
                backing_file: (!bf.is_empty()).then(|| PathBuf::from(bf)),
                offset: read_num(&dir.join("loop/offset"))?,
                sizelimit: read_num(&dir.join("loop/sizelimit")).unwrap_or(0),
                direct_io: read_num(&dir.join("loop/dio")).ok().map(|d| d != 0),
            }
        } else if dir.join("dm/name").exists() {
            let dm_name = read_trim(&dir.join("dm/name"))?;
            let targets = match self.dm_tables.get(&dm_name) {
                Some(t) => t.clone(),
                None => dmsetup_table(&dm_name, id)?,
            };
            DeviceKind::DeviceMapper {
                name: dm_name,
                targets,
            }
        } else if dir.join("md/level").exists() {
            md_array(&dir.join("md"))?
        } else {
            let mut slaves: Vec<String> = std::fs::read_dir(dir.join("slaves"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            slaves.sort();
            if slaves.is_empty() {
                DeviceKind::Disk
            } else {
                DeviceKind::Stacked { slaves }
            }
        };
        Ok(BlockDevice {
            id,
            name,
            kind,
            size_sectors,
        })
    }
}

/// An md array from its sysfs `md` directory: the level, and each member in sync
/// (`dev-X/state` has `in_sync`) with its data offset; a spare or a failed member holds
/// none of the array's data.
fn md_array(md: &Path) -> Result<DeviceKind, HostError> {
    let level = read_trim(&md.join("level"))?;
    let mut members = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(md)
        .map_err(io_err(md))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("dev-"))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for d in dirs {
        let state = read_trim(&d.join("state")).unwrap_or_default();
        if !state.split(',').any(|s| s == "in_sync") {
            continue;
        }
        let dev_file = d.join("block/dev");
        let dev = read_trim(&dev_file)?
            .parse()
            .map_err(|_| HostError::Sysfs {
                path: dev_file.clone(),
                problem: "not a major:minor".into(),
            })?;
        members.push(MdMember {
            dev,
            data_offset: DeviceSector(read_num(&d.join("offset"))?),
        });
    }
    Ok(DeviceKind::Md { level, members })
}

/// The kernel's table of a dm device, through `dmsetup` (which asks the kernel by ioctl).
fn dmsetup_table(name: &str, id: DevId) -> Result<Vec<DmTarget>, HostError> {
    let unavailable = |why: String| HostError::DmTableUnavailable {
        name: name.to_owned(),
        dev: id,
        why,
    };
    let out = Command::new("dmsetup")
        .args(["table", "-j", &id.major.to_string(), "-m", &id.minor.to_string()])
        .output()
        .map_err(|e| unavailable(format!("cannot run dmsetup ({e}); install it or pass the 'dmsetup table' output with --dm-table")))?;
    if !out.status.success() {
        return Err(unavailable(format!(
            "dmsetup: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(dm::parse_table(&text, &parse_dev_arg)?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// How the resolution reached a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The filesystem holding the file above is on this device (FIEMAP).
    Filesystem,
    /// The "file" above is this device's own node: QEMU was given the block device
    /// itself (a `host_device` disk), so its offsets are the device's bytes.
    Node,
    Partition,
    DmLinear,
    DmStriped,
    DmCrypt,
    /// One member of an md RAID1 array (each holds the same data).
    MdMirror,
}

/// One step down the stack for one piece of a host file range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "hop", rename_all = "snake_case")]
pub enum Hop {
    /// A byte offset in a host file (the image file, or a loop device's backing file).
    File {
        path: PathBuf,
        offset: HostFileOffset,
        state: ExtentState,
    },
    /// A sector on a block device; `byte` is the exact byte offset on it. (Read back,
    /// `byte` is what counts: a snapshot may leave out the name and the sector.)
    Device {
        #[serde(default)]
        device: String,
        dev: DevId,
        #[serde(default)]
        sector: DeviceSector,
        byte: u64,
        via: Via,
    },
}

/// The same hops `delta` bytes further on: used where a lower layer splits a range.
fn advance(hops: &[Hop], delta: u64) -> Vec<Hop> {
    hops.iter()
        .map(|h| match h {
            Hop::File {
                path,
                offset,
                state,
            } => Hop::File {
                path: path.clone(),
                offset: HostFileOffset(offset.0 + delta),
                state: *state,
            },
            Hop::Device {
                device,
                dev,
                byte,
                via,
                ..
            } => Hop::Device {
                device: device.clone(),
                dev: *dev,
                sector: DeviceSector((byte + delta) / SECTOR_SIZE),
                byte: byte + delta,
                via: *via,
            },
        })
        .collect()
}

/// A contiguous piece of a host file range and where it lives, top to bottom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSegment {
    /// Offset of the piece in the first hop's file (or byte on its device, when the
    /// resolution started at a device).
    pub offset: HostFileOffset,
    pub len: u64,
    pub hops: Vec<Hop>,
    /// Why the chain ends above a bottom device, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl HostSegment {
    /// The last device reached, if any.
    pub fn bottom(&self) -> Option<(&str, DevId, DeviceSector)> {
        self.hops.iter().rev().find_map(|h| match h {
            Hop::Device {
                device,
                dev,
                sector,
                ..
            } => Some((device.as_str(), *dev, *sector)),
            Hop::File { .. } => None,
        })
    }
}

/// What FIEMAP and stat say about one host file.
#[derive(Debug)]
pub struct FileMap {
    pub path: PathBuf,
    /// The device its filesystem is on (btrfs: its first device).
    pub dev: DevId,
    pub fs: String,
    pub extents: Vec<FileExtent>,
    /// On btrfs, whose FIEMAP addresses are its own logical ones: its devices and chunks.
    pub btrfs: Option<btrfs::BtrfsMap>,
}

impl FileMap {
    /// Every device the file's filesystem is on.
    pub fn devices(&self) -> Vec<DevId> {
        match &self.btrfs {
            Some(b) => b.devices.clone(),
            None => vec![self.dev],
        }
    }
}

fn fs_name(magic: i64) -> &'static str {
    match magic as u32 {
        0xEF53 => "ext2/3/4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0xF2F5_2010 => "f2fs",
        0x6573_5546 => "fuse",
        0x2FC1_2FC1 => "zfs",
        0x5346_544E => "ntfs",
        _ => "an unrecognized filesystem",
    }
}

impl FileMap {
    pub fn load(path: &Path) -> Result<FileMap, HostError> {
        let file = File::open(path).map_err(io_err(path))?;
        let md = file.metadata().map_err(io_err(path))?;
        // SAFETY: statfs writes into the zeroed struct we pass; the fd is valid.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let fs = if unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&file), &mut st) } == 0 {
            fs_name(st.f_type as i64).to_owned()
        } else {
            "an unknown filesystem".to_owned()
        };
        let mut dev = DevId::from_dev_t(md.dev());
        // btrfs gives its files an anonymous device; its chunk tree says which devices
        // hold them.
        let btrfs = if fs == "btrfs" {
            let map = btrfs::BtrfsMap::of(&file).map_err(|e| HostError::Btrfs {
                path: path.to_owned(),
                why: e.to_string(),
            })?;
            if let Some(&first) = map.devices.first() {
                dev = first;
            }
            Some(map)
        } else {
            None
        };
        if dev.major == 0 || fs == "zfs" {
            return Err(HostError::NoBlockDevice {
                path: path.to_owned(),
                fs,
            });
        }
        let extents = fiemap::fiemap(&file).map_err(|e| HostError::Fiemap {
            path: path.to_owned(),
            fs: fs.clone(),
            why: e.to_string(),
        })?;
        Ok(FileMap {
            path: path.to_owned(),
            dev,
            fs,
            extents,
            btrfs,
        })
    }
}

/// Resolves host file ranges to device sectors, caching extents and devices.
pub struct HostResolver {
    pub topology: Topology,
    files: HashMap<PathBuf, Arc<FileMap>>,
}

impl HostResolver {
    pub fn new(topology: Topology) -> HostResolver {
        HostResolver {
            topology,
            files: HashMap::new(),
        }
    }

    pub fn file_map(&mut self, path: &Path) -> Result<Arc<FileMap>, HostError> {
        if let Some(f) = self.files.get(path) {
            return Ok(f.clone());
        }
        let f = Arc::new(FileMap::load(path)?);
        self.files.insert(path.to_owned(), f.clone());
        Ok(f)
    }

    /// Where `[offset, offset + len)` of `path` lives, split wherever any layer splits it.
    pub fn resolve(
        &mut self,
        path: &Path,
        offset: HostFileOffset,
        len: u64,
    ) -> Result<Vec<HostSegment>, HostError> {
        let mut out = Vec::new();
        self.file_range(path, offset.0, len, Vec::new(), &mut out, 0)?;
        Ok(out)
    }

    /// Where `[sector, sector + len)` of device `dev` lives, down to the bottom device.
    pub fn resolve_device(
        &mut self,
        dev: DevId,
        sector: DeviceSector,
        len: u64,
    ) -> Result<Vec<HostSegment>, HostError> {
        let mut out = Vec::new();
        self.dev_range(
            dev,
            sector.0 * SECTOR_SIZE,
            len,
            Vec::new(),
            &mut out,
            0,
            Via::Filesystem,
        )?;
        Ok(out)
    }

    fn file_range(
        &mut self,
        path: &Path,
        off: u64,
        len: u64,
        hops: Vec<Hop>,
        out: &mut Vec<HostSegment>,
        depth: usize,
    ) -> Result<(), HostError> {
        if depth > MAX_STACK_DEPTH {
            return Err(HostError::TooDeep);
        }
        // A block device given as the file (a raw `host_device` disk, a loop device
        // backed by a device): its bytes are the device's, with no filesystem between.
        if let Ok(md) = std::fs::metadata(path)
            && std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type())
        {
            let mut h = hops;
            h.push(Hop::File {
                path: path.to_owned(),
                offset: HostFileOffset(off),
                state: ExtentState::Mapped,
            });
            return self.dev_range(
                DevId::from_dev_t(md.rdev()),
                off,
                len,
                h,
                out,
                depth + 1,
                Via::Node,
            );
        }
        let fm = self.file_map(path)?;
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let (ext, n) = fiemap::piece_at(&fm.extents, HostFileOffset(pos), end - pos);
            let mut h = advance(&hops, pos - off);
            let state = ext.map_or(ExtentState::Hole, |e| e.state());
            h.push(Hop::File {
                path: path.to_owned(),
                offset: HostFileOffset(pos),
                state,
            });
            match (ext, state) {
                (Some(e), ExtentState::Mapped | ExtentState::Unwritten) => {
                    let phys = e.physical + (pos - e.logical);
                    match &fm.btrfs {
                        None => {
                            self.dev_range(fm.dev, phys, n, h, out, depth + 1, Via::Filesystem)?
                        }
                        // A btrfs logical address: each copy's device and byte, chunk by
                        // chunk.
                        Some(map) => {
                            let mut k = 0;
                            while k < n {
                                match map.place(phys + k, n - k) {
                                    Ok((copies, m)) => {
                                        for (d, b) in copies {
                                            let hk = advance(&h, k);
                                            let v = Via::Filesystem;
                                            self.dev_range(d, b, m, hk, out, depth + 1, v)?;
                                        }
                                        k += m;
                                    }
                                    Err(why) => {
                                        out.push(segment(advance(&h, k), n - k, Some(why)));
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
                _ => out.push(segment(
                    h,
                    n,
                    Some(format!("{} in {}", state_word(state), path.display())),
                )),
            }
            pos += n;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dev_range(
        &mut self,
        dev: DevId,
        byte: u64,
        len: u64,
        mut hops: Vec<Hop>,
        out: &mut Vec<HostSegment>,
        depth: usize,
        via: Via,
    ) -> Result<(), HostError> {
        if depth > MAX_STACK_DEPTH {
            return Err(HostError::TooDeep);
        }
        let d = self.topology.device(dev)?;
        hops.push(Hop::Device {
            device: d.dev_path(),
            dev,
            sector: DeviceSector(byte / SECTOR_SIZE),
            byte,
            via,
        });
        match &d.kind {
            DeviceKind::Disk => out.push(segment(hops, len, None)),
            DeviceKind::Md { level, members } if level == "raid1" && !members.is_empty() => {
                // Every member holds the same data: a piece of the range on each.
                for m in members.clone() {
                    self.dev_range(
                        m.dev,
                        byte + m.data_offset.0 * SECTOR_SIZE,
                        len,
                        hops.clone(),
                        out,
                        depth + 1,
                        Via::MdMirror,
                    )?;
                }
            }
            DeviceKind::Md { level, .. } => out.push(segment(
                hops,
                len,
                Some(format!(
                    "{} is md {level}, which is not remapped",
                    d.dev_path()
                )),
            )),
            DeviceKind::Stacked { slaves } => out.push(segment(
                hops,
                len,
                Some(format!(
                    "{} is built on {} and is not remapped further",
                    d.dev_path(),
                    slaves.join(", ")
                )),
            )),
            DeviceKind::Partition { parent, start } => self.dev_range(
                *parent,
                byte + start.0 * SECTOR_SIZE,
                len,
                hops,
                out,
                depth + 1,
                Via::Partition,
            )?,
            DeviceKind::Loop {
                backing_file: Some(p),
                offset,
                ..
            } => {
                let p = p.clone();
                self.file_range(&p, byte + offset, len, hops, out, depth + 1)?
            }
            DeviceKind::Loop {
                backing_file: None, ..
            } => out.push(segment(
                hops,
                len,
                Some(format!("{} has no backing file", d.dev_path())),
            )),
            DeviceKind::DeviceMapper { name, targets } => {
                let end = byte + len;
                let mut pos = byte;
                while pos < end {
                    let sector = pos / SECTOR_SIZE;
                    let within = pos % SECTOR_SIZE;
                    let t = targets
                        .iter()
                        .find(|t| t.start <= sector && sector < t.start + t.len);
                    let Some(t) = t else {
                        out.push(segment(
                            advance(&hops, pos - byte),
                            end - pos,
                            Some(format!("sector {sector} is outside dm table of {name}")),
                        ));
                        break;
                    };
                    let Some((to, to_sector, contiguous)) = t.remap(DeviceSector(sector)) else {
                        let n = ((t.start + t.len) * SECTOR_SIZE - pos).min(end - pos);
                        let target = match &t.kind {
                            DmTargetKind::Other { target, .. } => target.as_str(),
                            _ => "?",
                        };
                        out.push(segment(
                            advance(&hops, pos - byte),
                            n,
                            Some(format!("dm target '{target}' of {name} is not remapped")),
                        ));
                        pos += n;
                        continue;
                    };
                    let n = (contiguous * SECTOR_SIZE - within).min(end - pos);
                    let via = match t.kind {
                        DmTargetKind::Striped { .. } => Via::DmStriped,
                        DmTargetKind::Crypt { .. } => Via::DmCrypt,
                        _ => Via::DmLinear,
                    };
                    self.dev_range(
                        to,
                        to_sector.0 * SECTOR_SIZE + within,
                        n,
                        advance(&hops, pos - byte),
                        out,
                        depth + 1,
                        via,
                    )?;
                    pos += n;
                }
            }
        }
        Ok(())
    }
}

fn state_word(s: ExtentState) -> &'static str {
    match s {
        ExtentState::Hole => "hole",
        ExtentState::Delalloc => "delayed allocation (no block yet)",
        ExtentState::NotOnDevice => "extent without a device address",
        ExtentState::Mapped => "mapped",
        ExtentState::Unwritten => "unwritten extent",
    }
}

fn segment(hops: Vec<Hop>, len: u64, stopped: Option<String>) -> HostSegment {
    let offset = match hops.first() {
        Some(Hop::File { offset, .. }) => *offset,
        Some(Hop::Device { byte, .. }) => HostFileOffset(*byte),
        None => HostFileOffset(0),
    };
    HostSegment {
        offset,
        len,
        hops,
        stopped,
    }
}
