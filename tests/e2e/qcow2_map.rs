//! The qcow2 forward and reverse maps against qemu-img itself, on images that qemu-img
//! and qemu-io make in the test: every case in the qcow2 format that QEMU can write.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use viopath_layouts::qcow2::{Chain, Content};
use viopath_layouts::{GuestOffset, HostFileOffset};

/// Our map rows as qemu-img prints them (qemu-img's JSON has no file name).
fn ours(chain: &Chain) -> Vec<Value> {
    chain
        .map_entries()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

/// Compare with qemu-img, then check the reverse map of every file against the forward
/// map qemu-img printed, and the metadata classification against qemu-img check.
fn check(image: &Path) -> Chain {
    let chain = Chain::open(image).unwrap_or_else(|e| panic!("{e}"));
    let theirs = qemu_img_map(image);
    let mine = ours(&chain);
    if mine != theirs {
        let show = |v: &Vec<Value>| {
            v.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "map of {} differs\n--- qemu-img\n{}\n--- viopath\n{}",
            image.display(),
            show(&theirs),
            show(&mine)
        );
    }
    let entries = chain.map_entries();
    let reverse: Vec<_> = (0..chain.files.len())
        .map(|id| chain.reverse_map(id).unwrap())
        .collect();
    for (e, q) in entries.iter().zip(&theirs) {
        let (Some(off), Some(file)) = (e.offset, e.file) else {
            continue;
        };
        assert_eq!(q["offset"].as_u64(), Some(off));
        let rm = &reverse[file];
        for delta in [0, e.length / 2, e.length - 1] {
            let (ext, guest) = rm
                .lookup(HostFileOffset(off + delta))
                .unwrap_or_else(|| panic!("no reverse extent at {:#x}", off + delta));
            assert_eq!(
                guest,
                Some(GuestOffset(e.start + delta)),
                "reverse of {:#x} in {:?}: {ext:?}",
                off + delta,
                chain.files[file].path
            );
        }
    }
    for (id, rm) in reverse.iter().enumerate() {
        assert!(
            rm.overlaps.is_empty(),
            "overlaps in {:?}: {:?}",
            chain.files[id].path,
            rm.overlaps
        );
        // The extents tile the file exactly.
        let mut pos = 0;
        for e in &rm.extents {
            assert_eq!(e.start, pos, "gap or overlap in reverse map");
            pos = e.end();
        }
        assert_eq!(pos, rm.file_len);
        if chain.files[id].role == viopath_layouts::qcow2::FileRole::Qcow2 {
            let check = qemu_img_check(&chain.files[id].path);
            let leaks = check["leaks"].as_u64().unwrap_or(0);
            let ours_leaked: Vec<_> = rm
                .extents
                .iter()
                .filter(|e| matches!(e.content, Content::Leaked { .. }))
                .collect();
            assert_eq!(
                leaks == 0,
                ours_leaked.is_empty(),
                "qemu-img check: {check}\nours: {ours_leaked:?}"
            );
            // Every metadata kind qemu-img knows is accounted for: the header is where it must be.
            assert_eq!(rm.extents[0].content, Content::Header);
        }
    }
    chain
}

/// Scattered writes, zero writes on unallocated and on allocated clusters, and discards.
fn busy_image(dir: &Path, name: &str, opts: &str, size: u64, seed: u64) -> std::path::PathBuf {
    let img = create(dir, name, opts, &size.to_string());
    let mut rng = Lcg(seed);
    let mut cmds = Vec::new();
    for i in 0..24 {
        let off = rng.below(size / 512 - 256) * 512;
        let len = (1 + rng.below(128)) * 512;
        let cmd = match i % 6 {
            0..=2 => format!("write -P {} {off} {len}", 1 + i),
            3 => format!("write -z {off} {len}"),
            4 => format!("write -z -u {off} {len}"),
            _ => format!("discard {off} {len}"),
        };
        cmds.push(cmd);
    }
    // A zero write over allocated data keeps the cluster preallocated.
    cmds.push(format!("write -P 7 {} 131072", size / 2));
    cmds.push(format!("write -z {} 131072", size / 2));
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&img, &refs);
    img
}

#[test]
fn cluster_sizes_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    for (i, opts) in [
        "cluster_size=512",
        "cluster_size=4096",
        "cluster_size=65536",
        "cluster_size=2097152",
        "compat=0.10,cluster_size=65536",
        "compat=0.10,cluster_size=4096",
        "refcount_bits=1,cluster_size=4096",
        "refcount_bits=64",
    ]
    .iter()
    .enumerate()
    {
        let img = busy_image(
            dir.path(),
            &format!("c{i}.qcow2"),
            opts,
            64 << 20,
            11 + i as u64,
        );
        let chain = check(&img);
        assert!(
            chain.map_entries().iter().any(|e| e.data),
            "{opts}: no data written?"
        );
    }
}

#[test]
fn extended_l2_subclusters() {
    let dir = tempfile::tempdir().unwrap();
    for (i, cs) in [16384u64, 65536, 2 << 20].iter().enumerate() {
        let base = busy_image(
            dir.path(),
            &format!("b{i}.qcow2"),
            &format!("cluster_size={cs}"),
            32 << 20,
            3,
        );
        let img = create(
            dir.path(),
            &format!("e{i}.qcow2"),
            &format!(
                "extended_l2=on,cluster_size={cs},backing_file={},backing_fmt=qcow2",
                base.display()
            ),
            &(32u64 << 20).to_string(),
        );
        let sc = cs / 32;
        qemu_io(
            &img,
            &[
                &format!("write -P 1 {sc} {sc}"),
                &format!("write -P 2 {} {}", 5 * sc, 3 * sc),
                &format!("write -z {} {}", 10 * sc, sc),
                &format!("write -P 3 {} {}", cs * 3, cs),
                &format!("write -z {} {}", cs * 3 + sc, 2 * sc),
                &format!("write -z -u {} {}", cs * 5, cs),
                &format!("write -P 4 {} 512", cs * 7 + 7 * sc),
            ],
        );
        let chain = check(&img);
        let h = &chain.image(0).unwrap().header;
        assert!(h.extended_l2());
        // A subcluster write leaves its neighbours to the backing file.
        let entries = chain.map_entries();
        assert!(
            entries
                .iter()
                .any(|e| e.depth == 0 && e.data && e.length == sc)
        );
    }
}

#[test]
fn compressed_zlib_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    for (i, ty) in ["zlib", "zstd"].iter().enumerate() {
        for cs in [4096u64, 65536] {
            let img = create(
                dir.path(),
                &format!("z{i}-{cs}.qcow2"),
                &format!("compression_type={ty},cluster_size={cs}"),
                "16M",
            );
            // Compressible and incompressible-looking patterns, adjacent compressed clusters.
            qemu_io(
                &img,
                &[
                    &format!("write -c -P 0x11 0 {}", cs),
                    &format!("write -c -P 0x22 {} {}", cs, cs),
                    &format!("write -c -P 0x33 {} {}", 2 * cs, cs),
                    &format!("write -P 0x44 {} {}", 8 * cs, cs),
                ],
            );
            let chain = check(&img);
            assert!(chain.map_entries().iter().any(|e| e.compressed));
            // Decompression gives back what qemu-io wrote.
            let mut buf = vec![0u8; cs as usize];
            chain.read_guest(&mut buf, GuestOffset(cs)).unwrap();
            assert!(
                buf.iter().all(|&b| b == 0x22),
                "{ty}: decompressed cluster is wrong"
            );
            let rm = chain.reverse_map(0).unwrap();
            assert!(
                rm.extents
                    .iter()
                    .any(|e| matches!(e.content, Content::Compressed { guest } if guest == cs))
            );
        }
    }
}

#[test]
fn backing_chain_of_three_and_short_backing() {
    let dir = tempfile::tempdir().unwrap();
    let base = busy_image(dir.path(), "base.qcow2", "cluster_size=65536", 32 << 20, 5);
    // The middle image is larger than its backing: reads past the base's end are zeros.
    let mid = create(
        dir.path(),
        "mid.qcow2",
        "backing_file=base.qcow2,backing_fmt=qcow2,cluster_size=4096",
        "48M",
    );
    qemu_io(
        &mid,
        &["write -P 9 1M 8k", "write -P 9 40M 64k", "write -z 2M 4k"],
    );
    // Relative backing names resolve against the image's own directory.
    let top = create(
        dir.path(),
        "top.qcow2",
        "backing_file=mid.qcow2,backing_fmt=qcow2",
        "48M",
    );
    qemu_io(&top, &["write -P 8 1M 4k", "write -P 8 30M 1M"]);
    let chain = check(&top);
    assert_eq!(chain.depth(), 3);
    let depths: std::collections::BTreeSet<_> =
        chain.map_entries().iter().map(|e| e.depth).collect();
    assert!(
        depths.contains(&0) && depths.contains(&1) && depths.contains(&2),
        "{depths:?}"
    );
    let _ = base;
}

#[test]
fn raw_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    sh(&format!(
        "truncate -s 8M {0} && printf 'hello' | dd of={0} bs=1 seek=1048576 conv=notrunc status=none",
        raw.display()
    ));
    let top = create(
        dir.path(),
        "top.qcow2",
        "backing_file=base.raw,backing_fmt=raw",
        "8M",
    );
    qemu_io(&top, &["write -P 1 0 64k"]);
    check(&top);
}

#[test]
fn external_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.raw");
    let img = create(
        dir.path(),
        "d.qcow2",
        &format!("data_file={},cluster_size=65536", data.display()),
        "32M",
    );
    qemu_io(
        &img,
        &[
            "write -P 1 0 64k",
            "write -P 2 1M 200k",
            "write -z 4M 64k",
            "write -P 3 16M 4k",
        ],
    );
    let chain = check(&img);
    assert_eq!(chain.files.len(), 2);
    let e = chain.map_entries().into_iter().find(|e| e.data).unwrap();
    assert_eq!(e.file, Some(1), "data lives in the data file");
}

#[test]
fn dirty_image_from_a_crashed_writer_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path(), "dirty.qcow2", "lazy_refcounts=on", "64M");
    // qemu-io's abort leaves the image as a killed VM would: dirty bit set, refcounts stale.
    let status = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 5 0 1M",
            "-c",
            "write -P 6 10M 64k",
            "-c",
            "abort",
            img.to_str().unwrap(),
        ])
        .output()
        .unwrap()
        .status;
    assert!(!status.success(), "qemu-io abort should kill it");
    let chain = Chain::open(&img).unwrap();
    assert!(chain.image(0).unwrap().header.dirty());
    assert!(chain.warnings.iter().any(|w| w.contains("dirty")));
    // qemu-img map reads dirty images read-only too; the maps must agree.
    let mine = ours(&chain);
    assert_eq!(mine, qemu_img_map(&img));
    assert!(
        chain
            .map_entries()
            .iter()
            .any(|e| e.data && e.start == 10 << 20)
    );
}

#[test]
fn snapshots_and_bitmaps_in_the_reverse_map() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path(), "s.qcow2", "cluster_size=65536", "64M");
    qemu_io(&img, &["write -P 1 0 1M"]);
    run(
        "qemu-img",
        &["snapshot", "-c", "before", img.to_str().unwrap()],
    );
    qemu_io(&img, &["write -P 2 0 256k", "write -P 3 8M 64k"]);
    run(
        "qemu-img",
        &["bitmap", "--add", img.to_str().unwrap(), "b0"],
    );
    qemu_io(&img, &["write -P 4 20M 64k"]);
    run(
        "qemu-img",
        &["bitmap", "--add", img.to_str().unwrap(), "b1"],
    );
    let chain = check(&img);
    let rm = chain.reverse_map(0).unwrap();
    let kinds = |f: fn(&Content) -> bool| rm.extents.iter().filter(|e| f(&e.content)).count();
    assert!(kinds(|c| matches!(c, Content::SnapshotTable)) == 1);
    assert!(kinds(|c| matches!(c, Content::SnapshotL1 { .. })) == 1);
    // The first 256 KiB were rewritten after the snapshot: the old copies are snapshot-only.
    let snap_data: u64 = rm
        .extents
        .iter()
        .filter(|e| matches!(e.content, Content::SnapshotData { .. }))
        .map(|e| e.len)
        .sum();
    assert_eq!(snap_data, 256 << 10);
    assert!(kinds(|c| matches!(c, Content::BitmapDirectory)) == 1);
    assert_eq!(kinds(|c| matches!(c, Content::BitmapTable { .. })), 2);
}

#[test]
fn metadata_preallocation_and_the_demo_fixture() {
    // With preallocation=metadata every cluster has a host offset but the file is sparse:
    // QEMU detects this and reports host-file holes inside data clusters as zeros.
    let dir = tempfile::tempdir().unwrap();
    let img = create(
        dir.path(),
        "prealloc.qcow2",
        "preallocation=metadata,cluster_size=65536",
        "16M",
    );
    qemu_io(
        &img,
        &["write -P 1 0 4k", "write -P 2 1M 100k", "write -P 3 9M 64k"],
    );
    let chain = check(&img);
    assert!(
        chain.map_entries().iter().any(|e| e.data && e.zero),
        "expected data-over-hole rows"
    );
    assert!(chain.map_entries().iter().any(|e| e.data && !e.zero));
    // The demo's images, as committed (a git checkout is not sparse; both cases are fine).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo");
    check(&fixtures.join("overlay.qcow2"));
    check(&fixtures.join("base.qcow2"));
}
