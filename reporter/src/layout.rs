//! The address translation the join uses, built from a trace's layout snapshot (or one
//! taken from the images now): where every byte of every image file lives on each
//! block device below it (and which file it is, by inode number), whether it has qcow2
//! L2 tables, and which guest file owns a guest offset. Untrusted input: anything
//! malformed is skipped and counted.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use viopath_layouts::host::{DevId, DeviceKind, Hop, Via};
use viopath_layouts::lenient::parse;
use viopath_layouts::qcow2::Content;
use viopath_layouts::snapshot::{GuestSnapshot, Snapshot};
use viopath_layouts::{DeviceSector, GuestOffset, HostFileOffset};
use viopath_probes::abi::kernel_dev;
use viopath_probes::chunks::Domain;

/// The pieces of one host IO on every device of its stack: a partition and its disk,
/// or a dm device and what it maps to, so usually two; inline to spare the join an
/// allocation per host IO.
pub type DevRanges = smallvec::SmallVec<[DevRange; 3]>;

/// Where one piece of a host file range lies on one block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevRange {
    /// Kernel encoding, as events carry it.
    pub dev: u32,
    pub start_sector: DeviceSector,
    pub end_sector: DeviceSector,
    /// The deepest device of this piece.
    pub bottom: bool,
}

#[derive(Debug, Clone)]
struct DevHop {
    dev: u32,
    byte: u64,
    /// A partition's bios are traced with the whole disk's sector numbers: the same
    /// range on the partition's dev_t at the disk's byte offset.
    alias_byte: Option<u64>,
}

#[derive(Debug, Clone)]
struct Segment {
    offset: u64,
    len: u64,
    hops: Vec<DevHop>,
}

/// Who owns a run of guest disk bytes (from the guest filesystem walk).
#[derive(Debug, Clone, PartialEq, Eq)]
struct GuestExtent {
    offset: u64,
    len: u64,
    /// The file's path, or the filesystem structure in brackets (`[inode_table]`).
    label: String,
    file_offset: Option<u64>,
}

/// What the guest keeps where on its disk; [`GuestMap::name`] names a guest offset.
#[derive(Debug, Default)]
pub struct GuestMap {
    /// Sorted by offset, not overlapping.
    extents: Vec<GuestExtent>,
    /// Partitions (first byte, bytes), for offsets no extent covers.
    partitions: Vec<(u64, u64)>,
}

/// A guest offset, named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestName<'a> {
    /// A file's path, or what the filesystem keeps there in brackets: `[inode_table]`,
    /// `[superblock]`, ..., `[free]` (no owner), `[outside partitions]`.
    pub what: &'a str,
    pub file_offset: Option<u64>,
}

impl GuestMap {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    pub fn name(&self, offset: GuestOffset) -> Option<GuestName<'_>> {
        let offset = offset.0;
        if self.extents.is_empty() {
            return None;
        }
        let i = self.extents.partition_point(|e| e.offset + e.len <= offset);
        if let Some(e) = self.extents.get(i)
            && e.offset <= offset
        {
            return Some(GuestName {
                what: &e.label,
                file_offset: e.file_offset.map(|f| f + (offset - e.offset)),
            });
        }
        let inside = self
            .partitions
            .iter()
            .any(|&(start, len)| start <= offset && offset < start + len);
        Some(GuestName {
            what: if inside {
                "[free]"
            } else {
                "[outside partitions]"
            },
            file_offset: None,
        })
    }

    fn add(&mut self, g: &GuestSnapshot) -> usize {
        let mut skipped = 0;
        for p in &g.partitions {
            self.partitions
                .push((p.start.0.saturating_mul(512), p.sectors.saturating_mul(512)));
        }
        for e in &g.extents {
            if e.len == 0 {
                skipped += 1;
                continue;
            }
            self.extents.push(GuestExtent {
                offset: e.offset.0,
                len: e.len,
                label: match &e.path {
                    Some(p) => p.clone(),
                    None => format!("[{}]", e.what),
                },
                file_offset: e.file_offset,
            })
        }
        self.extents.sort_by_key(|e| e.offset);
        // Overlaps only come from a corrupt filesystem or a forged snapshot: keep the first.
        let mut end = 0;
        self.extents.retain(|e| {
            let keep = e.offset >= end;
            if keep {
                end = e.offset + e.len;
            } else {
                skipped += 1;
            }
            keep
        });
        skipped
    }
}

/// One image file: where its bytes lie.
#[derive(Debug)]
struct ImageFile {
    /// Its inode number when the snapshot has it: the kernel's direct-IO and
    /// filesystem probes name files by it.
    ino: Option<u64>,
    segs: Vec<Segment>,
    /// Its reverse map has qcow2 L2 tables.
    has_l2: bool,
    /// The disk (index in [`Layout::disks`]) whose chain holds it.
    disk: usize,
}

/// Which disks a host IO may be for: bit `i` is [`Layout::disks`]`[i]`. A file shared
/// by several chains (one backing file under two overlays) sets several bits; disks
/// past the 64th set none.
pub type DiskSet = u64;

/// One disk of the VM: an image chain, named by its top image's path.
#[derive(Debug)]
pub struct Disk {
    pub path: String,
    /// What the guest keeps where on it; empty when the snapshot has no walk of it.
    pub guest: GuestMap,
    /// Its SCSI address, when QEMU's command line gives it to the guest as a SCSI
    /// disk (see [`Layout::name_scsi_disks`]).
    pub scsi: Option<crate::devices::ScsiAddr>,
    /// How reports name it: its path, with its SCSI address if it has one.
    pub name: String,
    /// The VM it is a disk of (the trace's VM number; 0 in a trace of one).
    pub vm: u16,
}

/// One VM of a trace of several, as the join needs it (see `join::vms`).
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    pub pid: u32,
    /// Its threads known from the recorder's looks.
    pub threads: Vec<u32>,
    pub traced_from_ns: u64,
    /// When its tracing ended before the recording's (its process exited).
    pub traced_until_ns: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Layout {
    /// The VMs' disks, in snapshot order; row `disk` fields index it.
    pub disks: Vec<Disk>,
    /// The trace's VMs when it has several (empty for one): which VM each event is of.
    pub vms: Vec<VmSpec>,
    /// What reports call each VM, by VM number (see `input::vm_names`).
    pub vm_names: Vec<String>,
    files: Vec<ImageFile>,
    /// Every device range any image file occupies, for classifying IO no request claims.
    occupied: HashMap<u32, Vec<(u64, u64)>>,
    /// Devices at the bottom of some image file's stack.
    bottoms: HashSet<u32>,
    /// (upper, lower): `lower` is under `upper` in some image file's stack (a loop
    /// device's backing file lives on a filesystem of `lower`).
    below: HashSet<(u32, u32)>,
    /// Partitions in image files' stacks, and the disk each is of.
    partition_of: HashMap<u32, u32>,
    /// Device ranges of each VM disk's files (sorted by start): which disk block IO no
    /// request claimed was for.
    disk_ranges: HashMap<u32, Vec<(u64, u64, u16)>>,
    /// Loop devices whose IO goes through their backing file's page cache.
    buffered_loops: HashSet<u32>,
    /// Every loop device (direct IO or not).
    loops: HashSet<u32>,
    /// Devices holding an image file's filesystem: the top of its stack.
    tops: HashSet<u32>,
    /// Bottoms of some stack that are no disk: device-mapper or md devices whose
    /// mapping the snapshot does not have, where the chain stopped.
    stops: HashSet<u32>,
    /// Block devices given to QEMU as disks themselves (`host_device`).
    nodes: HashSet<u32>,
    /// Devices with a device below them other than their own disk (a loop device's
    /// backing file's, device-mapper's): IO there goes on below as new bios.
    new_bios_below: HashSet<u32>,
    pub device_names: HashMap<u32, String>,
    /// L2 table coverage: guest bytes one L2 table maps (from the map, when known).
    pub skipped: usize,
}

/// Append the device ranges of bytes `[offset, offset + len)` of one file.
fn push_ranges(segs: &[Segment], offset: HostFileOffset, len: u64, out: &mut DevRanges) {
    let offset = offset.0;
    let end = offset.saturating_add(len);
    let first = segs.partition_point(|s| s.offset.saturating_add(s.len) <= offset);
    for s in &segs[first..] {
        if s.offset >= end {
            break;
        }
        let from = offset.max(s.offset);
        let to = end.min(s.offset.saturating_add(s.len));
        let n = s.hops.len();
        for (i, h) in s.hops.iter().enumerate() {
            let d = from - s.offset;
            let mut push = |byte: u64| {
                out.push(DevRange {
                    dev: h.dev,
                    start_sector: DeviceSector(byte.saturating_add(d) / 512),
                    end_sector: DeviceSector(
                        byte.saturating_add(d)
                            .saturating_add(to - from)
                            .div_ceil(512),
                    ),
                    bottom: i + 1 == n,
                })
            };
            push(h.byte);
            if let Some(a) = h.alias_byte {
                push(a);
            }
        }
    }
}

fn dev_of(d: DevId) -> u32 {
    kernel_dev(d.major, d.minor)
}

impl Layout {
    /// Build from layout JSON (trace format v1, Layout chunk), read leniently.
    pub fn from_json(v: &Value) -> Layout {
        match parse::<Snapshot>(v) {
            Ok(p) => {
                let mut l = Layout::from_snapshot(&p.value);
                l.skipped += p.skipped;
                l
            }
            Err(_) => Layout {
                skipped: 1,
                ..Layout::default()
            },
        }
    }

    /// Build from a layout snapshot.
    pub fn from_snapshot(snap: &Snapshot) -> Layout {
        let mut l = Layout::default();
        // Devices whose mapping the snapshot does not have: a chain ending there stops.
        let mut unmapped = HashSet::new();
        for d in &snap.devices {
            l.device_names.insert(dev_of(d.id), d.name.clone());
            if matches!(
                d.kind,
                DeviceKind::DeviceMapper { .. }
                    | DeviceKind::Md { .. }
                    | DeviceKind::Stacked { .. }
            ) {
                unmapped.insert(dev_of(d.id));
            }
            if let DeviceKind::Loop { direct_io, .. } = d.kind {
                l.loops.insert(dev_of(d.id));
                if direct_io == Some(false) {
                    l.buffered_loops.insert(dev_of(d.id));
                }
            }
        }
        for img in &snap.images {
            let disk = l.disks.len();
            let mut guest = GuestMap::default();
            if let Some(g) = &img.guest
                && g.error.is_none()
            {
                l.skipped += guest.add(g);
            }
            let path = img.path.to_string_lossy();
            let path = if path.is_empty() {
                "?".to_owned()
            } else {
                path.into_owned()
            };
            l.disks.push(Disk {
                name: path.clone(),
                path,
                guest,
                scsi: None,
                vm: 0,
            });
            // Of each file's reverse map the join needs only whether it has L2 tables
            // (qcow2 metadata IO is then expected).
            let mut has_l2_by_file: HashMap<&Path, bool> = HashMap::new();
            for r in &img.reverse {
                let has_l2 = r
                    .extents
                    .iter()
                    .any(|e| matches!(e.content, Content::L2Table { .. }));
                has_l2_by_file.insert(&r.file, has_l2);
            }
            for fh in &img.file_hosts {
                let mut segs = Vec::new();
                for s in &fh.host {
                    let (offset, len) = (s.offset.0, s.len);
                    let mut hops = Vec::new();
                    for (i, h) in s.hops.iter().enumerate() {
                        let Hop::Device {
                            device, dev, byte, ..
                        } = h
                        else {
                            continue;
                        };
                        let dev = dev_of(*dev);
                        if !device.is_empty() {
                            l.device_names.entry(dev).or_insert_with(|| device.clone());
                        }
                        if matches!(h, Hop::Device { via: Via::Node, .. }) {
                            l.nodes.insert(dev);
                        }
                        let alias_byte = match s.hops.get(i + 1) {
                            Some(Hop::Device {
                                via: Via::Partition,
                                byte,
                                dev: disk,
                                ..
                            }) => {
                                l.partition_of.insert(dev, dev_of(*disk));
                                Some(*byte)
                            }
                            _ => None,
                        };
                        hops.push(DevHop {
                            dev,
                            byte: *byte,
                            alias_byte,
                        });
                    }
                    if let Some(last) = hops.last() {
                        l.bottoms.insert(last.dev);
                        if unmapped.contains(&last.dev) {
                            l.stops.insert(last.dev);
                        }
                    }
                    if let Some(first) = hops.first() {
                        l.tops.insert(first.dev);
                    }
                    for (i, upper) in hops.iter().enumerate() {
                        for lower in &hops[i + 1..] {
                            l.below.insert((upper.dev, lower.dev));
                        }
                    }
                    // A partition's next hop is its disk, reached by remapping the same
                    // bio; any other hop below is reached by new bios.
                    for (i, upper) in hops.iter().enumerate() {
                        let via_partition = upper.alias_byte.is_some();
                        let skip = 1 + usize::from(via_partition);
                        if hops.len() > i + skip {
                            l.new_bios_below.insert(upper.dev);
                        }
                    }
                    for h in &hops {
                        let r = l.occupied.entry(h.dev).or_default();
                        let range = |b: u64| (b / 512, b.saturating_add(len).div_ceil(512));
                        r.push(range(h.byte));
                        let mut by_disk = vec![range(h.byte)];
                        if let Some(a) = h.alias_byte {
                            r.push(range(a));
                            by_disk.push(range(a));
                        }
                        l.disk_ranges.entry(h.dev).or_default().extend(
                            by_disk
                                .into_iter()
                                .map(|(s, e)| (s, e, disk.min(u16::MAX as usize) as u16)),
                        );
                    }
                    segs.push(Segment { offset, len, hops });
                }
                segs.sort_by_key(|s| s.offset);
                l.files.push(ImageFile {
                    ino: fh.ino,
                    segs,
                    has_l2: has_l2_by_file.remove(fh.file.as_path()).unwrap_or_default(),
                    disk,
                });
            }
        }
        for r in l.disk_ranges.values_mut() {
            r.sort_unstable();
        }
        // A stack that stops at a loop device over a hole of its backing file (blocks
        // not written yet when the snapshot was taken) does not make that device a
        // bottom: other stacks go on below it, and its flushes are not the disk's.
        let below = &l.below;
        l.bottoms
            .retain(|d| !below.iter().any(|&(u, lower)| u == *d && lower != *d));
        for r in l.occupied.values_mut() {
            r.sort_unstable();
            // Merge overlapping or touching ranges for binary search.
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(r.len());
            for &(s, e) in r.iter() {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            *r = merged;
        }
        l
    }

    /// What reports call VM `vm`.
    pub fn vm_name(&self, vm: u16) -> &str {
        self.vm_names
            .get(usize::from(vm))
            .map_or("-", String::as_str)
    }

    /// VM `vm`'s disk, if it has exactly one.
    pub fn only_disk_of(&self, vm: u16) -> Option<u16> {
        let mut of = self.disks.iter().enumerate().filter(|(_, d)| d.vm == vm);
        match (of.next(), of.next()) {
            (Some((i, _)), None) => u16::try_from(i).ok(),
            _ => None,
        }
    }

    /// The one disk of `set`, if it names exactly one.
    pub fn one_disk(set: DiskSet) -> Option<u16> {
        (set.count_ones() == 1).then(|| set.trailing_zeros() as u16)
    }

    /// The guest file (or filesystem structure) at guest `offset` of `disk`. For an IO
    /// whose disk is unknown: when the VM has a single disk, that one; when the
    /// snapshot lacks inode numbers (so no IO can be given a disk; older recordings,
    /// which also listed the guest's kernel and initramfs as images), the only disk
    /// with a guest filesystem, if one; otherwise none: naming a file of the wrong
    /// disk would be worse than naming none.
    pub fn guest_name(&self, disk: Option<u16>, offset: GuestOffset) -> Option<GuestName<'_>> {
        let d = match disk {
            Some(d) => self.disks.get(d as usize)?,
            None if self.disks.len() == 1 => &self.disks[0],
            None if !self.files_have_inodes() => {
                let mut with_guest = self.disks.iter().filter(|d| !d.guest.is_empty());
                match (with_guest.next(), with_guest.next()) {
                    (Some(d), None) => d,
                    _ => return None,
                }
            }
            None => return None,
        };
        d.guest.name(offset)
    }

    /// Whether every image file is known by its inode number (snapshots before inode
    /// numbers were recorded have none).
    pub fn files_have_inodes(&self) -> bool {
        self.files.iter().all(|f| f.ino.is_some())
    }

    /// Whether some disk has a map of the guest's files.
    pub fn has_guest_map(&self) -> bool {
        self.disks.iter().any(|d| !d.guest.is_empty())
    }

    /// The disks `name` names: by their top image's path or file name, by their name
    /// in reports, or by a part of that name in brackets (the guest's `vda`, a SCSI
    /// address `0:0:1` or `scsi 0:0:1`).
    pub fn disks_named(&self, name: &str) -> Vec<u16> {
        let name = name.trim();
        let names = |d: &Disk| -> bool {
            let file = Path::new(&d.path).file_name().map(|f| f.to_string_lossy());
            let inside = d
                .name
                .rsplit_once(" (")
                .and_then(|(_, r)| r.strip_suffix(')'))
                .unwrap_or("");
            d.path == name
                || d.name == name
                || file.is_some_and(|f| f == name)
                || inside.split(", ").any(|part| {
                    part == name || part.strip_prefix("scsi ").is_some_and(|a| a == name)
                })
        };
        self.disks
            .iter()
            .enumerate()
            .filter(|(_, d)| names(d))
            .filter_map(|(i, _)| u16::try_from(i).ok())
            .collect()
    }

    /// Every disk's name for reports.
    pub fn disk_names(&self) -> Vec<&str> {
        self.disks.iter().map(|d| d.name.as_str()).collect()
    }

    /// A disk's name for reports: its top image's path, and for a SCSI disk its
    /// address (`scsi C:T:L`).
    pub fn disk_name(&self, disk: u16) -> &str {
        self.disks.get(disk as usize).map_or("?", |d| &d.name)
    }

    /// Names the disks as the guest knows them: the SCSI addresses QEMU's command line
    /// `cmd` gives them, and the target names (vda, sdb) of the libvirt `domain` they
    /// belong to.
    pub fn name_disks(&mut self, cmd: &[String], domain: Option<&Domain>) {
        self.name_disks_of(0, cmd, domain);
    }

    /// Name VM `vm`'s disks (see [`Layout::name_disks`]) from its command line and
    /// domain.
    pub fn name_disks_of(&mut self, vm: u16, cmd: &[String], domain: Option<&Domain>) {
        let paths: Vec<&str> = self
            .disks
            .iter()
            .filter(|d| d.vm == vm)
            .map(|d| d.path.as_str())
            .collect();
        let addrs = crate::devices::scsi_addrs(cmd, &paths);
        let of_vm = self.disks.iter_mut().filter(|d| d.vm == vm);
        for (d, a) in of_vm.zip(addrs) {
            d.scsi = a;
            let target = domain.and_then(|dom| {
                dom.disks
                    .iter()
                    .find(|x| !x.target.is_empty() && crate::cache::same_file(&x.source, &d.path))
                    .map(|x| x.target.clone())
            });
            let scsi = a.map(|a| format!("scsi {}:{}:{}", a.channel, a.target, a.lun));
            let parts: Vec<String> = target.into_iter().chain(scsi).collect();
            d.name = if parts.is_empty() {
                d.path.clone()
            } else {
                format!("{} ({})", d.path, parts.join(", "))
            };
        }
    }

    /// VM `vm`'s disk at a virtio-scsi target and LUN (virtio-scsi has one channel, 0).
    pub fn scsi_disk(&self, vm: u16, target: u32, lun: u32) -> Option<u16> {
        let i = self.disks.iter().position(|d| {
            d.vm == vm
                && d.scsi
                    .is_some_and(|a| a.channel == 0 && a.target == target && a.lun == lun)
        })?;
        u16::try_from(i).ok()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Device ranges of host file bytes `[offset, offset + len)` of every image file:
    /// QEMU's probes do not say which file a file IO goes to. The kernel's do (see
    /// [`Layout::dev_ranges_of_inode`]); until then an IO's ranges include other
    /// files' at the same offset, which a bio of another IO in flight there can match.
    /// In a trace of several VMs, only VM `vm`'s files: a QEMU does IO to its own.
    pub fn dev_ranges(&self, vm: u16, offset: HostFileOffset, len: u64, out: &mut DevRanges) {
        for f in self.files.iter().filter(|f| self.file_of_vm(f, vm)) {
            push_ranges(&f.segs, offset, len, out);
        }
    }

    /// Whether file `f` is VM `vm`'s (every file is in a trace of one VM).
    fn file_of_vm(&self, f: &ImageFile, vm: u16) -> bool {
        self.vms.is_empty() || self.disks.get(f.disk).is_some_and(|d| d.vm == vm)
    }

    /// Device ranges of bytes `[offset, offset + len)` of the image file with inode
    /// number `ino`, and the disks whose chains hold it: `None`, leaving `out` alone,
    /// when no file is known by it (a snapshot without inode numbers, or a file that
    /// is no image).
    pub fn dev_ranges_of_inode(
        &self,
        vm: u16,
        ino: u64,
        offset: HostFileOffset,
        len: u64,
        out: &mut DevRanges,
    ) -> Option<DiskSet> {
        let mut found = None;
        // Inode numbers are unique per filesystem only: files on two filesystems may
        // share one, and then both are kept (unless they are two VMs' images).
        for f in self
            .files
            .iter()
            .filter(|f| f.ino == Some(ino) && self.file_of_vm(f, vm))
        {
            let disks = found.get_or_insert_with(|| {
                out.clear();
                0
            });
            if f.disk < 64 {
                *disks |= 1 << f.disk;
            }
            push_ranges(&f.segs, offset, len, out);
        }
        found
    }

    /// The disks whose chains hold the image file with inode number `ino`; `None` if
    /// no image file is known by it.
    pub fn disks_of_inode(&self, ino: u64) -> Option<DiskSet> {
        let mut found = None;
        for f in self.files.iter().filter(|f| f.ino == Some(ino)) {
            let disks = found.get_or_insert(0);
            if f.disk < 64 {
                *disks |= 1 << f.disk;
            }
        }
        found
    }

    /// Whether `dev` is at the bottom of an image file's stack: `None` when the layout
    /// knows no devices. Not a device with another below it in some stack: a stack
    /// that stops at a loop device over a hole of its backing file (blocks not written
    /// yet when the snapshot was taken) does not make the loop device a bottom, where
    /// its flushes would be taken for the disk's.
    pub fn is_bottom_device(&self, dev: u32) -> Option<bool> {
        (!self.bottoms.is_empty()).then(|| self.bottoms.contains(&dev))
    }

    /// The disk `dev` is a partition of, or `dev` itself: a partition's flush bio
    /// becomes its disk's flush request.
    pub fn whole_disk(&self, dev: u32) -> u32 {
        self.partition_of.get(&dev).copied().unwrap_or(dev)
    }

    /// Whether `lower` is under `upper` in an image file's stack.
    pub fn is_below(&self, upper: u32, lower: u32) -> bool {
        self.below.contains(&(upper, lower))
    }

    /// Whether sectors `[start, end)` of `dev` hold some image file.
    pub fn occupied(&self, dev: u32, start: DeviceSector, end: DeviceSector) -> bool {
        let (start, end) = (start.0, end.0);
        let Some(r) = self.occupied.get(&dev) else {
            return false;
        };
        let i = r.partition_point(|&(_, e)| e <= start);
        r.get(i).is_some_and(|&(s, _)| s < end)
    }

    /// The VM disk whose files hold sectors `[start, end)` of `dev`; `None` if none
    /// does, or if files of several disks do (a shared backing file, or an IO across
    /// two disks' files).
    pub fn disk_at(&self, dev: u32, start: DeviceSector, end: DeviceSector) -> Option<u16> {
        let r = self.disk_ranges.get(&dev)?;
        // Ranges sorted by start: those starting before the end, nearest first.
        let upto = r.partition_point(|&(s, _, _)| s < end.0);
        let mut found = None;
        // Files do not share blocks, so ranges reaching into the IO lie just before
        // its end (a file shared by two disks' chains appears once per disk; a
        // partition's ranges are there twice, in its own and its disk's sectors): a
        // few hundred are looked at (an IO over more extents names those ones' disk).
        for &(_, e, d) in r[..upto].iter().rev().take(256) {
            if e <= start.0 {
                continue;
            }
            match found {
                None => found = Some(d),
                Some(f) if f != d => return None,
                Some(_) => {}
            }
        }
        found
    }

    /// The device ranges, at every level of its stack, of image file bytes at sectors
    /// `[start, start + sectors)` of `dev`: where a bio written there (a sync writing
    /// back dirty pages, whose host IO named no range) goes on below.
    pub fn stack_ranges(&self, dev: u32, start: DeviceSector, sectors: u64, out: &mut DevRanges) {
        let (lo, hi) = (start.0 * 512, start.0.saturating_add(sectors) * 512);
        for f in &self.files {
            for (i, seg) in f.segs.iter().enumerate() {
                // A partition's bios may carry the whole disk's sector numbers (its
                // alias), on the partition's own dev_t.
                for h in seg.hops.iter().filter(|h| h.dev == dev) {
                    for b in std::iter::once(h.byte).chain(h.alias_byte) {
                        let (s, e) = (b, b.saturating_add(seg.len));
                        if s < hi && lo < e {
                            let from = lo.max(s);
                            let to = hi.min(e);
                            push_ranges(
                                &f.segs[i..=i],
                                HostFileOffset(seg.offset + (from - s)),
                                to - from,
                                out,
                            );
                        }
                    }
                }
            }
        }
    }

    /// Whether `dev` holds an image file's filesystem (the top of its stack). True for
    /// every device when the layout knows none.
    pub fn is_top_device(&self, dev: u32) -> bool {
        self.tops.is_empty() || self.tops.contains(&dev)
    }

    /// Whether IO on `dev` goes on below as new bios (see the field).
    pub fn new_bios_below(&self, dev: u32) -> bool {
        self.new_bios_below.contains(&dev)
    }

    /// Whether `dev` is a block device QEMU was given as a disk (no filesystem on it
    /// between: its flush bios are the image's own).
    pub fn is_image_node(&self, dev: u32) -> bool {
        self.nodes.contains(&dev)
    }

    /// Whether `dev` is a loop device whose IO goes through its backing file's page
    /// cache (not direct IO).
    pub fn is_buffered_loop(&self, dev: u32) -> bool {
        self.buffered_loops.contains(&dev)
    }

    /// Whether `dev` is a loop device.
    pub fn is_loop(&self, dev: u32) -> bool {
        self.loops.contains(&dev)
    }

    /// Whether some image's chain stops at `dev`, a device whose mapping the snapshot
    /// does not have (its IO goes on below as clones the join follows by remap).
    pub fn stops_chain(&self, dev: u32) -> bool {
        self.stops.contains(&dev)
    }

    /// Whether `dev` is on some image file's chain (holds part of one, by the layout).
    pub fn on_a_chain(&self, dev: u32) -> bool {
        self.occupied.contains_key(&dev)
    }

    /// Whether the snapshot has device `dev`.
    pub fn knows_device(&self, dev: u32) -> bool {
        self.device_names.contains_key(&dev)
    }

    pub fn device_name(&self, dev: u32) -> String {
        self.device_names.get(&dev).cloned().unwrap_or_else(|| {
            let (ma, mi) = viopath_probes::abi::split_kernel_dev(dev);
            format!("{ma}:{mi}")
        })
    }
}

impl Layout {
    /// Whether some image file has qcow2 metadata (L2 tables).
    pub fn has_qcow2(&self) -> bool {
        self.files.iter().any(|f| f.has_l2)
    }

    /// Image files the layout covers.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}
