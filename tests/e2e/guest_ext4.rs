//! The guest side read offline through qcow2: partition tables against sfdisk, and the
//! ext4 reverse and forward maps against debugfs (icheck, ncheck, bmap), with file
//! contents read back through the chain.

use crate::common::*;
use std::collections::HashMap;
use std::path::Path;
use viopath_layouts::guest::{GuestLayout, Owner, Scheme};
use viopath_layouts::qcow2::Chain;
use viopath_layouts::source::ReadAt;

/// A tree with small, large, sparse, hard-linked and symlinked files, and a directory
/// big enough to need several blocks.
fn make_tree(dir: &Path) {
    sh(&format!(
        "cd {0} && mkdir -p src/etc src/var/lib/db src/many && echo hello > src/etc/hostname && \
         head -c 300000 /dev/urandom > src/var/lib/db/table && head -c 3000000 /dev/urandom > src/var/lib/db/big && \
         ln -s hostname src/etc/fast-link && ln -s $(printf 'x%.0s' $(seq 100)) src/etc/slow-link && \
         ln src/etc/hostname src/var/hard && truncate -s 2M src/sparse && \
         printf 'tail' | dd of=src/sparse bs=1 seek=1500000 conv=notrunc status=none && \
         for i in $(seq 300); do echo $i > src/many/file-with-a-long-name-$i; done",
        dir.display()
    ));
}

/// debugfs icheck for every block: block → inode, or None.
fn icheck_all(fs: &Path, blocks: u64) -> HashMap<u64, Option<u32>> {
    // debugfs reads commands in lines of limited length: 200 blocks a line.
    let all: Vec<u64> = (0..blocks).collect();
    let text: String = all
        .chunks(200)
        .map(|c| {
            format!(
                "icheck {}\n",
                c.iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    let list = dir_tmp_file(fs, "icheck.cmd", &text);
    let out = run(
        "debugfs",
        &["-f", list.to_str().unwrap(), fs.to_str().unwrap()],
    );
    let mut m = HashMap::new();
    for line in out.lines() {
        let mut f = line.split('\t');
        let (Some(b), Some(i)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(b) = b.trim().parse::<u64>() else {
            continue;
        };
        m.insert(b, i.trim().parse::<u32>().ok());
    }
    m
}

fn dir_tmp_file(near: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = near.with_file_name(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn debugfs(fs: &Path, cmd: &str) -> String {
    run("debugfs", &["-R", cmd, fs.to_str().unwrap()])
}

struct Case {
    mkfs: &'static str,
    table: &'static str,
    /// Partition number holding the filesystem, and its start sector.
    part: u32,
    start: u64,
    convert: &'static [&'static str],
}

fn check_case(c: &Case) {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path());
    let fs = dir.path().join("fs.raw");
    sh(&format!(
        "cd {} && {} -q -F -d src {} 48M",
        dir.path().display(),
        c.mkfs,
        fs.display()
    ));
    let disk = dir.path().join("disk.raw");
    sh(&format!(
        "truncate -s 64M {0} && printf '{1}' | sfdisk -q {0} && dd if={2} of={0} bs=512 seek={3} conv=notrunc status=none",
        disk.display(),
        c.table,
        fs.display(),
        c.start
    ));
    let qcow = dir.path().join("disk.qcow2");
    let mut args = vec!["convert", "-q", "-O", "qcow2"];
    args.extend(c.convert);
    args.extend([disk.to_str().unwrap(), qcow.to_str().unwrap()]);
    run("qemu-img", &args);

    let chain = Chain::open(&qcow).unwrap();
    let layout = GuestLayout::read(&chain).unwrap();
    // Partition table against sfdisk.
    let sf: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["-J", disk.to_str().unwrap()])).unwrap();
    let sfp = sf["partitiontable"]["partitions"].as_array().unwrap();
    let mine: Vec<(u64, u64)> = layout
        .table
        .partitions
        .iter()
        .map(|p| (p.start.0, p.sectors))
        .collect();
    // The extended partition is a container, not a partition holding data.
    let theirs: Vec<(u64, u64)> = sfp
        .iter()
        .filter(|p| p["type"] != "5")
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(mine, theirs, "partitions");
    let scheme = if c.table.contains("gpt") {
        Scheme::Gpt
    } else {
        Scheme::Mbr
    };
    assert_eq!(layout.table.scheme, scheme);
    assert_eq!(layout.filesystems.len(), 1, "{:?}", layout.notes);
    let gfs = &layout.filesystems[0];
    assert_eq!(gfs.partition.as_ref().unwrap().number, c.part);
    let bs = gfs.map.sb.block_size;
    let base = c.start * 512;

    // Reverse map: every block's inode against debugfs icheck.
    let blocks = gfs.map.sb.blocks_count;
    let icheck = icheck_all(&fs, blocks);
    assert_eq!(icheck.len() as u64, blocks);
    let mut file_blocks = 0;
    for b in 0..blocks {
        let owner = layout.owner(viopath_layouts::GuestOffset(base + b * bs));
        assert_eq!(owner.partition, Some(c.part));
        let ino = match owner.owner {
            Some(Owner::File { inode, .. })
            | Some(Owner::ExtentTreeNode { inode })
            | Some(Owner::IndirectBlock { inode }) => Some(inode),
            Some(Owner::ReservedGdt { .. }) => Some(7),
            _ => None,
        };
        assert_eq!(ino, icheck[&b], "block {b}: ours {owner:?}");
        if matches!(owner.owner, Some(Owner::File { .. })) {
            file_blocks += 1;
        }
    }
    assert!(file_blocks > 700, "only {file_blocks} file blocks");

    // Paths against ncheck, offsets against bmap, bytes against the source tree.
    for path in [
        "/etc/hostname",
        "/var/lib/db/table",
        "/var/lib/db/big",
        "/sparse",
        "/etc/slow-link",
        "/many/file-with-a-long-name-300",
        "/many",
    ] {
        let f = gfs
            .map
            .file_by_path(path)
            .unwrap_or_else(|| panic!("{path} not found"));
        let nc = debugfs(&fs, &format!("ncheck {}", f.inode));
        assert!(
            nc.lines()
                .any(|l| l.ends_with(&format!("\t{path}")) || l.ends_with(path)),
            "ncheck {}: {nc}",
            f.inode
        );
        let lblocks = f.size.div_ceil(bs).max(1);
        for lb in [0, lblocks / 2, lblocks - 1, 1500000 / bs] {
            if lb >= lblocks {
                continue;
            }
            let want: u64 = debugfs(&fs, &format!("bmap {path} {lb}"))
                .trim()
                .parse()
                .unwrap();
            match layout.locate_file(path, lb * bs, None) {
                Ok(loc) => {
                    assert_eq!(loc.fs_block, want, "{path} block {lb}");
                    assert_eq!(loc.offset.0, base + want * bs);
                    assert_eq!(loc.partition, Some(c.part));
                    let src = dir.path().join("src").join(&path[1..]);
                    if src.is_file() && !src.is_symlink() {
                        let content = std::fs::read(&src).unwrap();
                        let n = (content.len() as u64 - lb * bs).min(bs) as usize;
                        let mut got = vec![0u8; n];
                        chain.read_exact_at(&mut got, loc.offset.0).unwrap();
                        assert!(
                            got == content[(lb * bs) as usize..(lb * bs) as usize + n],
                            "{path} block {lb} bytes"
                        );
                    }
                }
                Err(e) => assert_eq!(want, 0, "{path} block {lb}: {e}"),
            }
        }
    }
    let hard = layout.locate_file("/var/hard", 0, None).unwrap();
    assert_eq!(
        hard.inode,
        gfs.map.file_by_path("/etc/hostname").unwrap().inode
    );
    assert!(layout.locate_file("/nope", 0, None).is_err());
}

#[test]
fn ext4_in_gpt_partition_in_qcow2() {
    check_case(&Case {
        mkfs: "mkfs.ext4 -b 4096",
        table: "label: gpt\\nstart=2048, size=8192\\nstart=12288, size=110592\\n",
        part: 2,
        start: 12288,
        convert: &[],
    });
}

#[test]
fn ext4_1k_blocks_in_compressed_qcow2() {
    check_case(&Case {
        mkfs: "mkfs.ext4 -b 1024",
        table: "label: gpt\\nstart=2048, size=120000\\n",
        part: 1,
        start: 2048,
        convert: &["-c", "-o", "compression_type=zstd"],
    });
}

#[test]
fn ext2_block_mapped_in_mbr_logical_partition() {
    check_case(&Case {
        mkfs: "mkfs.ext2 -b 1024",
        table: "label: dos\\nstart=2048, size=4096, type=83\\nstart=8192, size=120000, type=5\\nstart=10240, size=110000, type=83\\n",
        part: 5,
        start: 10240,
        convert: &["-o", "cluster_size=4096"],
    });
}

#[test]
fn ext3_and_meta_bg_64bit() {
    check_case(&Case {
        mkfs: "mkfs.ext3 -b 4096",
        table: "label: dos\\nstart=2048, size=120000, type=83\\n",
        part: 1,
        start: 2048,
        convert: &[],
    });
    check_case(&Case {
        mkfs: "mkfs.ext4 -b 1024 -O meta_bg,^resize_inode,64bit -G 4",
        table: "label: gpt\\nstart=4096, size=110000\\n",
        part: 1,
        start: 4096,
        convert: &["-o", "extended_l2=on,cluster_size=65536"],
    });
}
