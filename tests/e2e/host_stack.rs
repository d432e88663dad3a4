//! Host file offset → device sectors: FIEMAP against filefrag, and real partitioned and
//! offset loop devices checked against sfdisk, filefrag and the bytes on the bottom device.

use crate::common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use viopath_layouts::host::{
    DevId, DmTargetKind, ExtentState, Hop, HostResolver, Topology, Via, dm, fiemap,
};
use viopath_layouts::{DeviceSector, HostFileOffset};

/// Extents as filefrag prints them: (logical, physical, length) in bytes, and flags.
fn filefrag(path: &Path) -> Vec<(u64, u64, u64, String)> {
    let out = run("filefrag", &["-s", "-v", path.to_str().unwrap()]);
    let bs: u64 = out
        .lines()
        .find_map(|l| l.split(" blocks of ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("block size line");
    let mut v = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(':').map(str::trim).collect();
        if f.len() < 4 || f[0].parse::<u32>().is_err() {
            continue;
        }
        let lo: u64 = f[1].split("..").next().unwrap().trim().parse().unwrap();
        let po: u64 = f[2].split("..").next().unwrap().trim().parse().unwrap();
        let len: u64 = f[3].trim().parse().unwrap();
        let flags = f.last().unwrap().to_string();
        v.push((lo * bs, po * bs, len * bs, flags));
    }
    v
}

#[test]
fn fiemap_matches_filefrag() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let p = dir.path().join("frag");
    // Data, a hole, more data, and a preallocated (unwritten) range.
    sh(&format!(
        "dd if=/dev/urandom of={0} bs=64k count=3 status=none; \
         dd if=/dev/urandom of={0} bs=64k count=2 seek=10 conv=notrunc status=none; \
         fallocate -o 2097152 -l 1048576 {0}; \
         dd if=/dev/urandom of={0} bs=4k count=1 seek=700 conv=notrunc status=none",
        p.display()
    ));
    let mine = fiemap::fiemap(&std::fs::File::open(&p).unwrap()).unwrap();
    let theirs = filefrag(&p);
    assert_eq!(
        mine.len(),
        theirs.len(),
        "ours {mine:?}\nfilefrag {theirs:?}"
    );
    for (m, t) in mine.iter().zip(&theirs) {
        assert_eq!((m.logical, m.physical, m.length), (t.0, t.1, t.2));
        assert_eq!(
            m.state() == ExtentState::Unwritten,
            t.3.contains("unwritten"),
            "{m:?} vs {t:?}"
        );
    }
    assert!(mine.iter().any(|e| e.state() == ExtentState::Unwritten));
    // A hole is reported as such, with no device below it.
    let mut r = HostResolver::new(Topology::system());
    let segs = r.resolve(&p, HostFileOffset(5 * 65536), 4096).unwrap();
    assert_eq!(segs.len(), 1);
    assert!(segs[0].bottom().is_none() && segs[0].stopped.as_deref().unwrap().contains("hole"));
}

/// Read `len` bytes at `sector` of a block device, bypassing its page cache; None where
/// this sandbox forbids opening the device (the host's own disk).
fn read_device(dev: &str, sector: u64, len: usize) -> Option<Vec<u8>> {
    let out = std::process::Command::new("dd")
        .args([
            &format!("if={dev}"),
            "iflag=direct,skip_bytes,count_bytes",
            "bs=1M",
            &format!("skip={}", sector * 512),
            &format!("count={len}"),
            "status=none",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("not permitted") {
        return None;
    }
    assert!(out.status.success(), "dd {dev}: {err}");
    Some(out.stdout)
}

fn dev_of(path: &Path) -> DevId {
    use std::os::unix::fs::MetadataExt;
    DevId::from_dev_t(std::fs::metadata(path).unwrap().dev())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn partitioned_loop_device_down_to_the_bottom_disk() {
    if !is_root() || !have("sfdisk") {
        crate::common::skipped("needs root and sfdisk (fdisk package) to make a loop device");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = dir.path().join("disk.img");
    let ml = mount_partitioned_loop(
        &disk,
        "96M",
        "label: gpt\\nstart=2048, size=20480\\nstart=24576, size=131072\\n",
        2,
        false,
        &dir.path().join("mnt"),
    );
    let (loopdev, part, mnt) = (ml.loopdev.clone(), ml.part.clone(), ml.mnt.clone());

    let file = mnt.join("data.bin");
    let content = pattern(3 << 20, 7);
    std::fs::write(&file, &content).unwrap();
    sh("sync");

    // Oracles: the partition start from sfdisk, the file's extents from filefrag.
    let table: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["-J", disk.to_str().unwrap()])).unwrap();
    let p2_start = table["partitiontable"]["partitions"][1]["start"]
        .as_u64()
        .unwrap();
    assert_eq!(p2_start, 24576);
    let frag = filefrag(&file);
    let disk_frag = filefrag(&disk);

    let mut r = HostResolver::new(Topology::system());
    let off = 1 << 20;
    let len = 1 << 20;
    let segs = r.resolve(&file, HostFileOffset(off), len).unwrap();
    let mut covered = 0;
    for s in &segs {
        assert!(s.stopped.is_none(), "{s:?}");
        let devices: Vec<(String, u64, Via)> = s
            .hops
            .iter()
            .filter_map(|h| match h {
                Hop::Device {
                    device,
                    sector,
                    via,
                    ..
                } => Some((device.clone(), sector.0, *via)),
                _ => None,
            })
            .collect();
        let files: Vec<(PathBuf, u64)> = s
            .hops
            .iter()
            .filter_map(|h| match h {
                Hop::File { path, offset, .. } => Some((path.clone(), offset.0)),
                _ => None,
            })
            .collect();
        // file → loopNp2 → loopN → disk.img → the host's own disk
        assert_eq!(devices[0].0, part);
        assert_eq!(devices[1].0, loopdev);
        assert_eq!(devices[1].2, Via::Partition);
        assert_eq!(devices[1].1, devices[0].1 + p2_start);
        assert_eq!(files[1].0, disk);
        assert_eq!(files[1].1, devices[1].1 * 512);
        let fe = frag
            .iter()
            .find(|f| f.0 <= s.offset.0 && s.offset.0 < f.0 + f.2)
            .unwrap();
        assert_eq!(
            devices[0].1 * 512,
            fe.1 + (s.offset.0 - fe.0),
            "partition sector vs filefrag"
        );
        // The strongest oracle: the bytes at the bottom sector are the file's bytes.
        let (bottom, _, sector) = s.bottom().unwrap();
        assert_eq!(
            bottom,
            format!(
                "/dev/{}",
                r.topology
                    .device(dev_of(Path::new("/var/tmp")))
                    .unwrap()
                    .name
            )
        );
        let want = &content[s.offset.0 as usize..(s.offset.0 + s.len) as usize];
        // The bytes at the resolved offset of the loop's backing file are the file's bytes.
        let mut got = vec![0u8; s.len as usize];
        std::fs::File::open(&disk)
            .unwrap()
            .read_exact_at(&mut got, files[1].1)
            .unwrap();
        assert!(
            got == want,
            "bytes at {} offset {} differ",
            disk.display(),
            files[1].1
        );
        // The bottom sector agrees with filefrag on the backing file ...
        let de = disk_frag
            .iter()
            .find(|f| f.0 <= files[1].1 && files[1].1 < f.0 + f.2)
            .unwrap();
        assert_eq!(
            sector.0 * 512,
            de.1 + (files[1].1 - de.0),
            "bottom sector vs filefrag of disk.img"
        );
        // ... and, where the sandbox lets us open the host disk, holds the file's bytes.
        match read_device(bottom, sector.0, s.len as usize) {
            Some(bytes) => assert!(bytes == want, "bytes at {bottom} sector {sector} differ"),
            None => eprintln!(
                "note: {bottom} cannot be opened here; checked through disk.img and filefrag"
            ),
        }
        covered += s.len;
    }
    assert_eq!(covered, len);
}

#[test]
fn loop_device_with_an_offset() {
    if !is_root() {
        crate::common::skipped("needs root to make a loop device");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join("padded.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // An ext4 filesystem that starts 3 MiB into its file.
    sh(&format!(
        "truncate -s 40M {0} && mkfs.ext4 -q -F -E offset=3145728 {0} 32M",
        img.display()
    ));
    let mut cleanup = Cleanup(Vec::new());
    let loopdev = run(
        "losetup",
        &["--show", "-f", "-o", "3145728", img.to_str().unwrap()],
    )
    .trim()
    .to_owned();
    cleanup.0.push(format!("losetup -d {loopdev}"));
    sh(&format!("mount {loopdev} {}", mnt.display()));
    cleanup.0.push(format!("umount {}", mnt.display()));
    let file = mnt.join("f");
    let content = pattern(256 << 10, 3);
    std::fs::write(&file, &content).unwrap();
    sh("sync");
    let mut r = HostResolver::new(Topology::system());
    let segs = r
        .resolve(&file, HostFileOffset(0), content.len() as u64)
        .unwrap();
    for s in &segs {
        let loop_sector = s.hops.iter().find_map(|h| match h {
            Hop::Device { device, sector, .. } if *device == loopdev => Some(sector.0),
            _ => None,
        });
        let backing = s.hops.iter().find_map(|h| match h {
            Hop::File { path, offset, .. } if *path == img => Some(offset.0),
            _ => None,
        });
        assert_eq!(backing, Some(loop_sector.unwrap() * 512 + 3145728));
        let mut got = vec![0u8; s.len as usize];
        std::fs::File::open(&img)
            .unwrap()
            .read_exact_at(&mut got, backing.unwrap())
            .unwrap();
        assert!(got == content[s.offset.0 as usize..(s.offset.0 + s.len) as usize]);
    }
}

/// The kernel on these machines has no device-mapper, so dm devices are described by a
/// mock sysfs tree (the same files the kernel exposes) with a `dmsetup table` text, over
/// real loop devices. The striping oracle is the dm-stripe formula written out here.
#[test]
fn device_mapper_linear_and_striped_from_dmsetup_text() {
    let root = tempfile::tempdir().unwrap();
    let sys = root.path();
    std::fs::create_dir_all(sys.join("dev/block")).unwrap();
    for (id, name, size) in [
        ("7:100", "loop100", 65536),
        ("7:101", "loop101", 65536),
        ("253:0", "dm-0", 131072),
        ("253:1", "dm-1", 4096),
    ] {
        let d = sys.join(format!("devices/virtual/block/{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("dev"), format!("{id}\n")).unwrap();
        std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
        std::fs::write(d.join("uevent"), format!("DEVNAME={name}\n")).unwrap();
        if name.starts_with("dm") {
            std::fs::create_dir_all(d.join("dm")).unwrap();
            std::fs::write(d.join("dm/name"), format!("vg-{name}\n")).unwrap();
        }
        std::os::unix::fs::symlink(&d, sys.join(format!("dev/block/{id}"))).unwrap();
    }
    // An md array over two disks: named, not mistaken for the bottom device.
    let md = sys.join("devices/virtual/block/md0");
    std::fs::create_dir_all(md.join("slaves/sda")).unwrap();
    std::fs::create_dir_all(md.join("slaves/sdb")).unwrap();
    std::fs::write(md.join("dev"), "9:0\n").unwrap();
    std::fs::write(md.join("uevent"), "DEVNAME=md0\n").unwrap();
    std::os::unix::fs::symlink(&md, sys.join("dev/block/9:0")).unwrap();
    let mut topo = Topology::with_sysfs(sys);
    topo.add_dm_tables(
        "vg-dm-0: 0 131072 striped 2 128 7:100 2048 7:101 0\n\
         vg-dm-1: 0 2048 linear 253:0 10000\n\
         vg-dm-1: 2048 1024 crypt aes-xts-plain64 :64:logon:k 0 7:100 4096 1 allow_discards\n\
         vg-dm-1: 3072 1024 thin 253:2 1\n",
    )
    .unwrap();
    let mut r = HostResolver::new(topo);
    // 200 KiB from dm-1 sector 100 crosses stripe chunks (64 KiB each).
    let segs = r
        .resolve_device(
            DevId {
                major: 253,
                minor: 1,
            },
            DeviceSector(100),
            200 << 10,
        )
        .unwrap();
    let mut pos = 100u64 * 512;
    for s in &segs {
        let dm0 = 10000 + pos / 512;
        let chunk = dm0 / 128;
        let (dev, base) = if chunk.is_multiple_of(2) {
            ("/dev/loop100", 2048)
        } else {
            ("/dev/loop101", 0)
        };
        let want = base + (chunk / 2) * 128 + dm0 % 128;
        let (bottom, _, sector) = s.bottom().unwrap();
        assert_eq!((bottom, sector.0), (dev, want), "at dm-1 byte {pos}");
        assert!(s.len <= 64 << 10);
        pos += s.len;
    }
    assert_eq!(pos, 100 * 512 + (200 << 10));
    // A crypt target maps as linear, after its offset on its device.
    let segs = r
        .resolve_device(
            DevId {
                major: 253,
                minor: 1,
            },
            DeviceSector(3000),
            4096,
        )
        .unwrap();
    let (bottom, _, sector) = segs[0].bottom().unwrap();
    assert_eq!((bottom, sector.0), ("/dev/loop100", 4096 + 3000 - 2048));
    // A target that is not remapped (a thin volume: its pool's mapping) is named.
    let segs = r
        .resolve_device(
            DevId {
                major: 253,
                minor: 1,
            },
            DeviceSector(3500),
            4096,
        )
        .unwrap();
    assert!(
        segs[0].stopped.as_deref().unwrap().contains("'thin'"),
        "{segs:?}"
    );
    let segs = r
        .resolve_device(DevId { major: 9, minor: 0 }, DeviceSector(8), 4096)
        .unwrap();
    assert!(
        segs[0]
            .stopped
            .as_deref()
            .unwrap()
            .contains("built on sda, sdb"),
        "{segs:?}"
    );
    // Malformed table text is an error that names the line.
    let err =
        dm::parse_table("x: 0 100 striped 2 0 7:1 0\n", &|s| Ok(s.parse().unwrap())).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
    let t = dm::parse_table("0 8 linear 7:3 16\n", &|s| Ok(s.parse().unwrap())).unwrap();
    assert_eq!(
        t[0].1.kind,
        DmTargetKind::Linear {
            dev: DevId { major: 7, minor: 3 },
            offset: 16
        }
    );
}

/// md arrays from a mock sysfs tree (no md on this machine's kernel; the lab has real
/// ones): RAID1 maps every byte to each member in sync at its data offset (a spare holds
/// none), other levels stop the chain there, named.
#[test]
fn md_raid1_maps_to_every_member_in_sync() {
    let root = tempfile::tempdir().unwrap();
    let sys = root.path();
    std::fs::create_dir_all(sys.join("dev/block")).unwrap();
    let block = |id: &str, name: &str| {
        let d = sys.join(format!("devices/virtual/block/{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("dev"), format!("{id}\n")).unwrap();
        std::fs::write(d.join("size"), "1048576\n").unwrap();
        std::fs::write(d.join("uevent"), format!("DEVNAME={name}\n")).unwrap();
        std::os::unix::fs::symlink(&d, sys.join(format!("dev/block/{id}"))).unwrap();
        d
    };
    let members = [
        ("7:100", "loop100", "in_sync", 2048),
        ("7:101", "loop101", "in_sync,write_mostly", 4096),
        ("7:102", "loop102", "spare", 2048),
    ];
    let dirs: Vec<PathBuf> = members.iter().map(|(id, n, _, _)| block(id, n)).collect();
    for (id, name, level) in [("9:1", "md1", "raid1"), ("9:2", "md2", "raid5")] {
        let md = block(id, name).join("md");
        std::fs::create_dir_all(&md).unwrap();
        std::fs::write(md.join("level"), format!("{level}\n")).unwrap();
        for ((_, n, state, offset), d) in members.iter().zip(&dirs) {
            let m = md.join(format!("dev-{n}"));
            std::fs::create_dir_all(&m).unwrap();
            std::fs::write(m.join("state"), format!("{state}\n")).unwrap();
            std::fs::write(m.join("offset"), format!("{offset}\n")).unwrap();
            std::os::unix::fs::symlink(d, m.join("block")).unwrap();
        }
    }
    let mut r = HostResolver::new(Topology::with_sysfs(sys));
    let md1 = DevId { major: 9, minor: 1 };
    let segs = r.resolve_device(md1, DeviceSector(10), 4096).unwrap();
    let mut bottoms: Vec<(String, u64)> = segs
        .iter()
        .map(|s| {
            assert_eq!(s.len, 4096, "{s:?}");
            let (dev, _, sector) = s.bottom().unwrap();
            (dev.to_owned(), sector.0)
        })
        .collect();
    bottoms.sort();
    assert_eq!(
        bottoms,
        [
            ("/dev/loop100".to_owned(), 2058),
            ("/dev/loop101".to_owned(), 4106)
        ]
    );
    let segs = r
        .resolve_device(DevId { major: 9, minor: 2 }, DeviceSector(10), 4096)
        .unwrap();
    assert!(
        segs[0].stopped.as_deref().unwrap().contains("md raid5"),
        "{segs:?}"
    );
}

/// btrfs on loop devices: FIEMAP's addresses are btrfs's logical ones, and the layout maps
/// them through the chunk tree to each copy (data DUP: two on one device). The oracle is
/// the device itself: the file's bytes are at every place the layout names. Striped
/// profiles (RAID0 over two devices) stop the chain, named.
#[test]
fn btrfs_files_map_through_the_chunk_tree_to_every_copy() {
    if !is_root() || !have("mkfs.btrfs") {
        crate::common::skipped("needs root and mkfs.btrfs");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut cleanup = Cleanup(Vec::new());
    let mut loops = Vec::new();
    for name in ["a.img", "b.img"] {
        let img = dir.path().join(name);
        sh(&format!("truncate -s 300M {}", img.display()));
        let l = run("losetup", &["--show", "-f", img.to_str().unwrap()])
            .trim()
            .to_owned();
        cleanup.0.push(format!("losetup -d {l}"));
        loops.push(l);
    }
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let content = pattern(1 << 20, 7);
    // Data DUP on one device: each extent twice.
    sh(&format!("mkfs.btrfs -q -f -d dup -m dup {}", loops[0]));
    sh(&format!("mount -t btrfs {} {}", loops[0], mnt.display()));
    cleanup.0.push(format!("umount {}", mnt.display()));
    let file = mnt.join("f");
    std::fs::write(&file, &content).unwrap();
    sh("sync");
    let mut r = HostResolver::new(Topology::system());
    let segs = r
        .resolve(&file, HostFileOffset(0), content.len() as u64)
        .unwrap();
    let mut copies = 0u64;
    for s in &segs {
        assert!(s.stopped.is_none(), "{s:?}");
        // The loop device's hop (below it, its backing file on this machine's disk).
        let (dev, sector) = s
            .hops
            .iter()
            .find_map(|h| match h {
                Hop::Device { device, sector, .. } if *device == loops[0] => {
                    Some((device.as_str(), *sector))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("not on {}: {s:?}", loops[0]));
        let at = s.offset.0 as usize;
        let got = read_device(dev, sector.0, s.len as usize).expect("a loop device is readable");
        assert!(
            got == content[at..at + s.len as usize],
            "btrfs bytes {at}+{} are not at {dev} sector {}",
            s.len,
            sector.0
        );
        copies += s.len;
    }
    assert_eq!(copies, 2 * content.len() as u64, "DUP: every byte twice");
    sh(&format!("umount {}", mnt.display()));
    cleanup.0.pop();
    // RAID0 data over two devices: not remapped, said so.
    sh(&format!(
        "mkfs.btrfs -q -f -d raid0 -m raid1 {} {}",
        loops[0], loops[1]
    ));
    sh(&format!("mount -t btrfs {} {}", loops[0], mnt.display()));
    cleanup.0.push(format!("umount {}", mnt.display()));
    std::fs::write(&file, &content).unwrap();
    sh("sync");
    let mut r = HostResolver::new(Topology::system());
    let segs = r.resolve(&file, HostFileOffset(0), 4096).unwrap();
    assert!(
        segs[0].stopped.as_deref().unwrap_or("").contains("RAID0"),
        "{segs:?}"
    );
}
