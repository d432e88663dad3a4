//! The layout snapshot stored at the end of a trace: what the reporter needs to join
//! offline, on another machine: every image's chain and extent map with host device
//! sectors, the reverse maps of the image files, where each image file lives on the
//! host's devices, the guest's partitions and ext filesystems (which file owns which
//! guest bytes), and the block devices involved. The reporter takes the same
//! snapshot from images directly for offline analysis where the images are at hand.

use crate::HostFileOffset;
use crate::guest::{GuestExtent, GuestLayout, Partition};
use crate::host::{BlockDevice, DevId, HostResolver, HostSegment, Topology};
use crate::lenient::{lenient, lenient_list};
use crate::qcow2::{Chain, ChainFile, MapEntry, ReverseExtent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

// Read back leniently (see `crate::lenient`): every field has a default, and an entry of
// the wrong shape is left out and counted, so a damaged or older snapshot still joins.

/// The snapshot: the VM's disks and the block devices below them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// One per disk of the VM: its chain's top file and everything below it.
    #[serde(deserialize_with = "lenient_list")]
    pub images: Vec<ImageSnapshot>,
    #[serde(deserialize_with = "lenient_list")]
    pub devices: Vec<BlockDevice>,
    /// Files that could not be read as images, with why.
    #[serde(deserialize_with = "lenient_list")]
    pub errors: Vec<String>,
}

/// One disk: its chain, extent map, reverse maps, where its files live, its guest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageSnapshot {
    /// The chain's top file, as the process named it.
    pub path: PathBuf,
    /// The guest's partitions and ext filesystems; `None` when it has none we read.
    #[serde(deserialize_with = "lenient")]
    pub guest: Option<GuestSnapshot>,
    #[serde(deserialize_with = "lenient")]
    pub virtual_size: u64,
    #[serde(deserialize_with = "lenient_list")]
    pub files: Vec<ChainFile>,
    #[serde(deserialize_with = "lenient_list")]
    pub warnings: Vec<String>,
    /// `qemu-img map`'s rows, with the host devices under each.
    #[serde(deserialize_with = "lenient_list")]
    pub map: Vec<MapRow>,
    /// Each chain file's reverse map (what every byte of it holds).
    #[serde(deserialize_with = "lenient_list")]
    pub reverse: Vec<ReverseFile>,
    /// Each chain file, whole, down to the bottom devices.
    #[serde(deserialize_with = "lenient_list")]
    pub file_hosts: Vec<FileHost>,
}

/// What the guest keeps where, read through the chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestSnapshot {
    #[serde(deserialize_with = "lenient_list")]
    pub partitions: Vec<Partition>,
    /// Which file or structure owns each guest byte range.
    #[serde(deserialize_with = "lenient_list")]
    pub extents: Vec<GuestExtent>,
    #[serde(deserialize_with = "lenient_list")]
    pub notes: Vec<String>,
    /// Why the guest could not be read (then the lists are empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A row of the extent map, with its file and host devices where it has an offset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapRow {
    #[serde(flatten)]
    pub entry: MapEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Vec<HostSegment>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_error: Option<String>,
}

/// A chain file's reverse map.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReverseFile {
    pub file: PathBuf,
    pub file_len: u64,
    #[serde(deserialize_with = "lenient_list")]
    pub extents: Vec<ReverseExtent>,
}

/// A chain file, whole, down to the bottom devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileHost {
    pub file: PathBuf,
    pub len: u64,
    /// Its inode number: the kernel's direct-IO and filesystem probes name files by it.
    #[serde(deserialize_with = "lenient")]
    pub ino: Option<u64>,
    #[serde(deserialize_with = "lenient_list")]
    pub host: Vec<HostSegment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_error: Option<String>,
}

/// Snapshot the chains whose files are `files` and the block devices `devices`.
pub fn take(files: &[PathBuf], devices: &BTreeSet<DevId>) -> Snapshot {
    let mut images = Vec::new();
    let mut covered: BTreeSet<PathBuf> = BTreeSet::new();
    let mut errors = Vec::new();
    let mut resolver = HostResolver::new(Topology::system());
    let canon = |p: &PathBuf| p.canonicalize().unwrap_or_else(|_| p.clone());
    let mut chains = Vec::new();
    for f in files {
        match Chain::open(f) {
            Ok(c) => chains.push((f, c)),
            Err(e) => errors.push(crate::error_text(&e)),
        }
    }
    // Each image is one of the VM's disks: a file below another chain's top (its
    // backing or data file, found open by the process or listed first) is part of that
    // disk, not a disk of its own.
    let below: BTreeSet<PathBuf> = chains
        .iter()
        .flat_map(|(_, c)| {
            c.files
                .iter()
                .filter(|cf| cf.depth > 0 || cf.role == crate::qcow2::FileRole::DataFile)
        })
        .map(|cf| canon(&cf.path))
        .collect();
    for (f, chain) in chains {
        let top = canon(f);
        if covered.contains(&top) || below.contains(&top) {
            continue;
        }
        for cf in &chain.files {
            covered.insert(cf.path.canonicalize().unwrap_or_else(|_| cf.path.clone()));
        }
        let map: Vec<MapRow> = chain
            .map_entries()
            .iter()
            .map(|e| {
                let mut row = MapRow {
                    entry: e.clone(),
                    filename: None,
                    host: None,
                    host_error: None,
                };
                if let (Some(off), Some(file)) = (e.offset, e.file) {
                    let path = &chain.files[file].path;
                    row.filename = Some(path.clone());
                    match resolver.resolve(path, HostFileOffset(off), e.length) {
                        Ok(segs) => row.host = Some(segs),
                        Err(err) => row.host_error = Some(crate::error_text(&err)),
                    }
                }
                row
            })
            .collect();
        let reverse: Vec<ReverseFile> = (0..chain.files.len())
            .filter_map(|id| chain.reverse_map(id).ok())
            .map(|rm| ReverseFile {
                file: chain.files[rm.file].path.clone(),
                file_len: rm.file_len,
                extents: rm.extents,
            })
            .collect();
        // Every chain file, whole, down to the bottom device: block IO on any byte of
        // it (metadata included) can then be joined by address.
        let file_hosts: Vec<FileHost> = chain
            .files
            .iter()
            .map(|cf| {
                use std::os::unix::fs::MetadataExt;
                let md = std::fs::metadata(&cf.path).ok();
                // A block device's size: its metadata says 0.
                let len = std::fs::File::open(&cf.path)
                    .and_then(|f| crate::source::file_len(&f))
                    .unwrap_or(0);
                // The inode number names the file to the kernel's direct-IO and
                // filesystem probes, which carry it: the join keeps a host IO to the
                // sectors of the file it went to.
                let ino = md.as_ref().map(|m| m.ino());
                let (host, host_error) = match resolver.resolve(&cf.path, HostFileOffset(0), len) {
                    Ok(segs) => (segs, None),
                    Err(err) => (Vec::new(), Some(crate::error_text(&err))),
                };
                FileHost {
                    file: cf.path.clone(),
                    len,
                    ino,
                    host,
                    host_error,
                }
            })
            .collect();
        // What the guest keeps where (its partitions and ext filesystems, read through
        // the chain), so guest IO can be named by file without the image at hand.
        let guest = match GuestLayout::read(&chain) {
            Ok(g) if !g.filesystems.is_empty() => Some(GuestSnapshot {
                extents: g.extents(),
                partitions: g.table.partitions,
                notes: g.notes,
                error: None,
            }),
            Ok(_) => None,
            Err(e) => Some(GuestSnapshot {
                error: Some(crate::error_text(&e)),
                ..GuestSnapshot::default()
            }),
        };
        images.push(ImageSnapshot {
            path: f.clone(),
            guest,
            virtual_size: chain.virtual_size(),
            files: chain.files.clone(),
            warnings: chain.warnings.clone(),
            map,
            reverse,
            file_hosts,
        });
    }
    let mut topo = Topology::system();
    let devices = devices
        .iter()
        .filter_map(|d| topo.device(*d).ok().map(|d| (*d).clone()))
        .collect();
    Snapshot {
        images,
        devices,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_backing_file_listed_before_its_overlay_is_part_of_the_overlays_disk() {
        // A process's open files come sorted: base.qcow2 before its overlay. Each
        // image is a disk, so the base must be in the overlay's chain only.
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        let other = dir.path().join("zz-other.qcow2");
        let img = |args: &[&str]| {
            let st = Command::new("qemu-img").args(args).status();
            st.is_ok_and(|s| s.success())
        };
        let (b, t, o) = (
            base.to_str().unwrap(),
            top.to_str().unwrap(),
            other.to_str().unwrap(),
        );
        if !img(&["create", "-q", "-f", "qcow2", b, "16M"]) {
            assert!(
                std::env::var_os("VIOPATH_NO_SKIP").is_none(),
                "would be skipped (VIOPATH_NO_SKIP): SKIPPED: no qemu-img"
            );
            eprintln!("SKIPPED: no qemu-img");
            return;
        }
        assert!(img(&[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", b, t
        ]));
        assert!(img(&["create", "-q", "-f", "qcow2", o, "16M"]));
        let snap = take(
            &[base.clone(), top.clone(), other.clone()],
            &BTreeSet::new(),
        );
        let paths: Vec<&str> = snap
            .images
            .iter()
            .map(|i| i.path.to_str().unwrap())
            .collect();
        assert_eq!(paths, [t, o]);
        let files: Vec<&str> = snap.images[0]
            .file_hosts
            .iter()
            .map(|f| f.file.to_str().unwrap())
            .collect();
        assert_eq!(files, [t, b]);
    }
}
