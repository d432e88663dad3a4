//! The layout snapshot stored at the end of a trace: what the reporter needs to join
//! offline, on another machine: every image's chain and extent map with host device
//! sectors, the reverse maps of the image files, where each image file lives on the
//! host's devices, the guest's partitions and ext filesystems (which file owns which
//! guest bytes), and the block devices involved. The reporter takes the same
//! snapshot from images directly for offline analysis where the images are at hand.

use crate::HostFileOffset;
use crate::guest::GuestLayout;
use crate::host::{DevId, HostResolver, Topology};
use crate::qcow2::Chain;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Snapshot the chains whose files are `files` and the block devices `devices`.
pub fn take(files: &[PathBuf], devices: &BTreeSet<DevId>) -> Value {
    let mut images = Vec::new();
    let mut covered: BTreeSet<PathBuf> = BTreeSet::new();
    let mut errors = Vec::new();
    let mut resolver = HostResolver::new(Topology::system());
    let canon = |p: &PathBuf| p.canonicalize().unwrap_or_else(|_| p.clone());
    let mut chains = Vec::new();
    for f in files {
        match Chain::open(f) {
            Ok(c) => chains.push((f, c)),
            Err(e) => errors.push(format!("{}: {e}", f.display())),
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
        let entries: Vec<Value> = chain
            .map_entries()
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let (Some(off), Some(file)) = (e.offset, e.file) {
                    v["filename"] = json!(chain.files[file].path);
                    match resolver.resolve(&chain.files[file].path, HostFileOffset(off), e.length) {
                        Ok(segs) => v["host"] = json!(segs),
                        Err(err) => v["host_error"] = json!(err.to_string()),
                    }
                }
                v
            })
            .collect();
        let reverse: Vec<Value> = (0..chain.files.len())
            .filter_map(|id| chain.reverse_map(id).ok())
            .map(|rm| json!({"file": chain.files[rm.file].path, "file_len": rm.file_len, "extents": rm.extents}))
            .collect();
        // Every chain file, whole, down to the bottom device: block IO on any byte of
        // it (metadata included) can then be joined by address.
        let file_hosts: Vec<Value> = chain
            .files
            .iter()
            .map(|cf| {
                use std::os::unix::fs::MetadataExt;
                let md = std::fs::metadata(&cf.path).ok();
                let len = md.as_ref().map_or(0, |m| m.len());
                // The inode number names the file to the kernel's direct-IO and
                // filesystem probes, which carry it: the join keeps a host IO to the
                // sectors of the file it went to.
                let ino = md.as_ref().map(|m| m.ino());
                match resolver.resolve(&cf.path, HostFileOffset(0), len) {
                    Ok(segs) => json!({"file": cf.path, "len": len, "ino": ino, "host": segs}),
                    Err(err) => json!({"file": cf.path, "len": len, "ino": ino, "host_error": err.to_string()}),
                }
            })
            .collect();
        // What the guest keeps where (its partitions and ext filesystems, read through
        // the chain), so guest IO can be named by file without the image at hand.
        let guest = match GuestLayout::read(&chain) {
            Ok(g) if !g.filesystems.is_empty() => json!({
                "partitions": g.table.partitions,
                "extents": g.extents(),
                "notes": g.notes,
            }),
            Ok(_) => Value::Null,
            Err(e) => json!({ "error": e.to_string() }),
        };
        images.push(json!({
            "path": f,
            "guest": guest,
            "virtual_size": chain.virtual_size(),
            "files": chain.files,
            "warnings": chain.warnings,
            "map": entries,
            "reverse": reverse,
            "file_hosts": file_hosts,
        }));
    }
    let mut topo = Topology::system();
    let devs: Vec<Value> = devices
        .iter()
        .filter_map(|d| topo.device(*d).ok())
        .map(|d| json!(*d))
        .collect();
    json!({ "images": images, "devices": devs, "errors": errors })
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
        let paths: Vec<&str> = snap["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, [t, o]);
        let files: Vec<&str> = snap["images"][0]["file_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["file"].as_str().unwrap())
            .collect();
        assert_eq!(files, [t, b]);
    }
}
