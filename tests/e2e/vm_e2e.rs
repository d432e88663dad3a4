//! The flagship test: a real guest (Debian kernel, busybox initramfs, under TCG) reads
//! and writes known files on its virtio-blk disk, a qcow2 holding a GPT-partitioned
//! ext4, stored on ext4 on a GPT partition of a loop device (direct IO) on the host's
//! disk. `viopath record -- qemu-system-x86_64 ...` traces it and the reporter must:
//! join every guest request from virtio-blk down to the host's bottom disk, with layer
//! times that add up exactly; and name the guest file and offset of each, which is
//! checked against what the guest's script says it did and, independently, against
//! debugfs's block map of the guest filesystem after the run.
//!
//! Needs root, the QEMU from tests/qemu/build.sh and the guest from tests/vm/guest.sh
//! (run here if missing; it downloads Debian packages); skipped, saying so, otherwise.

use crate::common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use viopath_reporter::join::{IoRow, Join, Op, Source};
use viopath_reporter::layers::split;
use viopath_reporter::reader::Trace;

/// What the guest's script says it did: one `viopath-io` line per operation.
#[derive(Debug, Clone)]
struct GuestOp {
    write: bool,
    path: String,
    offset: u64,
    len: u64,
    direct: bool,
    /// The guest's disk: 0 for /dev/vda, 1 for /dev/vdb.
    disk: u16,
}

const PART_START: u64 = 1 << 20;
const BLOCK: u64 = 4096;

/// The guest's workload: O_DIRECT reads and writes at known offsets, a buffered read
/// after dropping the guest's page cache, a buffered write made durable by sync, a
/// file deleted and trimmed away (the guest's discards free its clusters in the image,
/// which QEMU punches out of the image file; not a file written during the trace, whose
/// host blocks would then be gone from the layout snapshot taken at its end), and a
/// buffered write into the middle of a small preallocated file, where ext4 (without
/// `dioread_nolock`) zeroes the rest of the unwritten extent with writes of zeroes.
/// From the trim on, the guest traces the requests its block layer issues (the
/// oracle for the discards' and the writes of zeroes' ranges).
const WORKLOAD: &str = r#"#!/bin/sh
mount -t ext4 -o dioread_lock /dev/vda1 /mnt || exit 1
io() { echo "viopath-io $*"; }
dd if=/mnt/data/big.bin of=/dev/null bs=65536 skip=3 count=1 iflag=direct 2>/dev/null && io r /data/big.bin 196608 65536 direct
dd if=/mnt/data/big.bin of=/dev/null bs=4096 skip=700 count=1 iflag=direct 2>/dev/null && io r /data/big.bin 2867200 4096 direct
dd if=/dev/urandom of=/mnt/data/big.bin bs=16384 seek=25 count=1 oflag=direct conv=notrunc 2>/dev/null && io w /data/big.bin 409600 16384 direct
echo 3 > /proc/sys/vm/drop_caches
dd if=/mnt/data/small.bin of=/dev/null bs=4096 2>/dev/null && io r /data/small.bin 0 131072 buffered
dd if=/dev/urandom of=/mnt/logs/app.log bs=4096 seek=2 count=2 conv=notrunc 2>/dev/null && sync && io w /logs/app.log 8192 8192 buffered
T=/sys/kernel/tracing
mount -t tracefs nodev $T 2>/dev/null
echo 1 > $T/events/block/block_rq_issue/enable
rm /mnt/data/old.bin && sync && fstrim /mnt
fallocate -l 16384 /mnt/data/z.bin && sync && dd if=/dev/urandom of=/mnt/data/z.bin bs=4096 seek=1 count=1 conv=notrunc 2>/dev/null && sync
umount /mnt
"#;

/// The requests the guest's block layer issued since the trim, as its tracepoint
/// prints them: `rq_issue: 254,0 DS 0 () 26080 + 2048 [fstrim]` (device, rwbs, bytes,
/// command, sector + sectors, process).
const ISSUED: &str = r#"
grep -o 'rq_issue: .*' $T/trace
"#;

/// Last: the guest's own count of the flushes and discards its disks completed (fields
/// 16 and 12 of the block device's stat), the oracle for those requests in the trace.
const COUNT_FLUSHES: &str = r#"
awk '{f+=$16;d+=$12}END{print "viopath-flushes",f;print "viopath-discards",d}' /sys/block/vd*/stat
"#;

/// With a second disk (/dev/vdb, its own ext4 with other files): O_DIRECT reads of it,
/// interleaved with reads of the first disk, so both disks have IO in flight close
/// together; then a file of it deleted and trimmed (the first disk's trim frees nothing
/// in an image file when its clusters are the backing file's).
const WORKLOAD_DISK2: &str = r#"
mkdir -p /mnt2 && mount -t ext4 /dev/vdb1 /mnt2 || exit 1
mount -t ext4 /dev/vda1 /mnt || exit 1
dd if=/mnt2/two/other.bin of=/dev/null bs=65536 skip=5 count=1 iflag=direct 2>/dev/null && io r /two/other.bin 327680 65536 direct 1
dd if=/mnt/data/big.bin of=/dev/null bs=4096 skip=900 count=1 iflag=direct 2>/dev/null && io r /data/big.bin 3686400 4096 direct
dd if=/mnt2/two/other.bin of=/dev/null bs=4096 skip=77 count=1 iflag=direct 2>/dev/null && io r /two/other.bin 315392 4096 direct 1
rm /mnt2/two/old.bin && sync && fstrim /mnt2
umount /mnt2
umount /mnt
"#;

/// A request the guest's block layer issued (its `block_rq_issue` tracepoint).
#[derive(Debug)]
struct GuestRequest {
    /// vda 0, vdb 1 (virtio-blk gives each disk 16 minors).
    disk: u16,
    rwbs: String,
    sector: u64,
    sectors: u64,
}

fn guest_requests(serial: &str) -> Vec<GuestRequest> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rq_issue: "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let minor: u16 = f[0].split_once(',').unwrap().1.parse().unwrap();
            GuestRequest {
                disk: minor / 16,
                rwbs: f[1].to_owned(),
                sector: f[4].parse().unwrap(),
                sectors: f[6].parse().unwrap(),
            }
        })
        .collect()
}

fn guest_ops(serial: &str) -> Vec<GuestOp> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("viopath-io "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            GuestOp {
                write: f[0] == "w",
                path: f[1].to_owned(),
                offset: f[2].parse().unwrap(),
                len: f[3].parse().unwrap(),
                direct: f[4] == "direct",
                disk: f.get(5).map_or(0, |d| d.parse().unwrap()),
            }
        })
        .collect()
}

/// The guest disk: GPT, ext4 (4 KiB blocks) on partition 1 from 1 MiB, with known
/// files of random content, as a qcow2 at `qcow2` (for debugfs later the partition is
/// re-extracted from the qcow2).
fn make_guest_disk(work: &Path, qcow2: &Path) {
    make_disk(
        &work.join("disk1"),
        "mkdir -p src/data src/logs && head -c 4M /dev/urandom > src/data/big.bin && \
         head -c 128K /dev/urandom > src/data/small.bin && head -c 64K /dev/urandom > src/logs/app.log && \
         head -c 1M /dev/urandom > src/data/old.bin",
        qcow2,
    );
}

/// A second guest disk, laid out the same way, with other files.
fn make_second_disk(work: &Path, qcow2: &Path) {
    make_disk(
        &work.join("disk2"),
        "mkdir -p src/two && head -c 2M /dev/urandom > src/two/pad.bin && \
         head -c 1M /dev/urandom > src/two/other.bin && head -c 1M /dev/urandom > src/two/old.bin",
        qcow2,
    );
}

fn make_disk(dir: &Path, files: &str, qcow2: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    sh(&format!(
        "cd {0} && {files} && \
         truncate -s 64M raw.img && printf 'label: gpt\\nstart=2048, size=120000, type=linux\\n' | sfdisk -q raw.img && \
         truncate -s $((120000 * 512)) p1.img && mkfs.ext4 -q -F -b 4096 -d src p1.img && \
         dd if=p1.img of=raw.img bs=1M seek=1 conv=notrunc status=none && \
         qemu-img convert -O qcow2 raw.img {1}",
        dir.display(),
        qcow2.display()
    ));
}

/// debugfs's physical block for logical block `lblock` of `path` in the partition image.
fn debugfs_bmap(part: &Path, path: &str, lblock: u64) -> u64 {
    let out = run(
        "debugfs",
        &[
            "-R",
            &format!("bmap {path} {lblock}"),
            part.to_str().unwrap(),
        ],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("debugfs bmap {path} {lblock}: {out}"))
}

pub(crate) fn guest_assets() -> Option<crate::vm::GuestAssets> {
    if let Some(a) = crate::vm::GuestAssets::find() {
        return Some(a);
    }
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/guest.sh"))
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("guest.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some(crate::vm::GuestAssets { dir: dir.into() })
}

#[test]
fn a_real_guest_is_joined_to_the_bottom_disk_and_named_by_guest_file() {
    run_guest(false, "threads");
}

/// The same with `aio=io_uring`: reads and writes as SQEs, and flushes as io_uring
/// fsyncs, followed from submission to completion.
#[test]
fn a_real_guest_with_io_uring_is_joined_the_same_way() {
    run_guest(false, "io_uring");
}

/// The same guest on a qcow2 overlay over that image: its reads of clusters the
/// overlay lacks go to the backing file, and its writes allocate overlay clusters by
/// copy-on-write from the backing file. Both must still join to the bottom disk.
/// The guest has a second disk (its own qcow2 in the same host filesystem, with other
/// files) and reads it too: every request must be given its own disk, and named from
/// that disk's files. QEMU runs it with `aio=native` (linux-aio), where the other case
/// has `aio=threads`: its flushes run in a kernel worker, not in QEMU.
#[test]
fn a_guest_on_a_backing_chain_is_joined_through_the_backing_file() {
    run_guest(true, "native");
}

/// Runs the guest and checks the recording. Now and then a recording lacks a block
/// completion that the kernel did make (two at once, a loop request's and its disk
/// request's, from one interrupt; none counted lost: see docs/layers.md, "Lost
/// completions"). Such a run is made again, saying so, at most twice.
fn run_guest(backing: bool, aio: &str) {
    for attempt in 1..=3 {
        if run_guest_once(backing, aio, attempt == 3) {
            return;
        }
    }
}

fn run_guest_once(backing: bool, aio: &str, last: bool) -> bool {
    if !is_root() {
        crate::common::skipped("needs root (BPF, loop devices)");
        return true;
    }
    let Some(qemu) = qemu_bin("qemu-system-x86_64") else {
        crate::common::skipped("no QEMU with symbols; run tests/qemu/build.sh (CI does)");
        return true;
    };
    let Some(assets) = guest_assets() else {
        crate::common::skipped("no guest kernel and initramfs; run tests/vm/guest.sh (CI does)");
        return true;
    };
    let _one = one_recorder();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let st = mount_partitioned_loop(
        &dir.path().join("host.img"),
        "200M",
        "label: gpt\\nstart=2048, size=380000\\n",
        1,
        true,
        &dir.path().join("mnt"),
    );
    let disk = st.mnt.join("guest.qcow2");
    if backing {
        let base = st.mnt.join("base.qcow2");
        make_guest_disk(dir.path(), &base);
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                base.to_str().unwrap(),
                disk.to_str().unwrap(),
            ],
        );
    } else {
        make_guest_disk(dir.path(), &disk);
    }
    let second = st.mnt.join("second.qcow2");
    if backing {
        make_second_disk(dir.path(), &second);
    }

    let trace = dir.path().join("vm.trace");
    let mut args = vec![
        "record".to_owned(),
        "-o".into(),
        trace.display().to_string(),
        "--".into(),
        qemu.display().to_string(),
    ];
    if backing {
        let workload = format!("{WORKLOAD}{WORKLOAD_DISK2}{ISSUED}{COUNT_FLUSHES}");
        let disks = [disk.as_path(), second.as_path()];
        args.extend(
            crate::vm::qemu_args_disks(&assets, &disks, aio, &workload, dir.path()).unwrap(),
        );
    } else {
        let workload = format!("{WORKLOAD}{ISSUED}{COUNT_FLUSHES}");
        args.extend(crate::vm::qemu_args(&assets, &disk, aio, &workload, dir.path()).unwrap());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(&args)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "record failed: {stderr}\n{serial}");
    assert!(
        serial.contains("viopath-guest: workload exit 0"),
        "the guest's workload failed:\n{serial}"
    );
    let ops = guest_ops(&serial);
    assert_eq!(
        ops.len(),
        if backing { 8 } else { 5 },
        "the guest did not do all its IO:\n{serial}"
    );

    // The oracle for guest addresses: debugfs on the guest filesystem after the run,
    // read back through qemu-img (independent of viopath's qcow2 and ext4 code).
    let after = |qcow2: &Path, n: u32| {
        let part = dir.path().join(format!("after-{n}-p1.img"));
        sh(&format!(
            "qemu-img convert -O raw {} {1}/after-{n}.raw && dd if={1}/after-{n}.raw of={2} bs=1M skip=1 count=59 status=none",
            qcow2.display(),
            dir.path().display(),
            part.display()
        ));
        part
    };
    let mut parts = vec![after(&disk, 0)];
    if backing {
        parts.push(after(&second, 1));
    }

    let t = Trace::open(&trace).unwrap();
    // Every chain file is named by its inode number, as the kernel's probes name it:
    // the join keeps each host IO to its own file's sectors.
    let files = snapshot_files_with_inodes(t.layout.as_ref().expect("layout snapshot"));
    let qcow2s = files.iter().filter(|f| f.ends_with(".qcow2")).count();
    assert_eq!(qcow2s, if backing { 3 } else { 1 }, "{files:?}");
    let (layout, src) = viopath_reporter::load_layout(&t, &[]);
    assert_eq!(src.from, "trace");
    assert!(src.errors.is_empty(), "layout errors: {:?}", src.errors);
    // The snapshot's disks: the guest's (not its kernel and initramfs, nor the backing
    // file on its own), each with its files.
    let mut disk_paths: Vec<&str> = layout.disks.iter().map(|d| d.path.as_str()).collect();
    disk_paths.sort();
    // In the order the guest sees them: /dev/vda, /dev/vdb.
    let mut want_disks = vec![disk.to_str().unwrap()];
    if backing {
        want_disks.push(second.to_str().unwrap());
    }
    let mut sorted = want_disks.clone();
    sorted.sort();
    assert_eq!(disk_paths, sorted);
    let disk_of = |r: &IoRow| r.disk.map(|d| layout.disk_name(d));
    assert!(
        layout.disks.iter().all(|d| !d.guest.is_empty()),
        "a disk without a guest map"
    );
    let cfg = viopath_reporter::join_config(&t, &layout);
    assert!(cfg.flush_syscalls && cfg.fs_sync, "{cfg:?}");
    let mut join = Join::new(&layout, Rows::default(), cfg);
    for e in t.events() {
        join.event(&e);
    }
    let (Rows(rows, _other), stats) = join.finish();
    // Every block request the trace saw start it saw end: the recorder keeps only what
    // came while all its probes were attached. Except completions the kernel skipped
    // and counted as missed (a tp_btf program firing while it runs on that CPU), as
    // record_e2e allows.
    let skipped = t.losses.as_ref().map_or(0, |l| {
        l.missed_by_program.get("rq_complete").copied().unwrap_or(0)
    });
    // Read from the raw events too: a lost completion whose request pointer is not
    // reused before the end shows in the join only as a partial row. Here that happens
    // when the completion's interrupt lands on a thread of the sandbox's PID 1, over
    // which no BPF program runs (docs/layers.md, "Lost completions").
    let missing = completions_missing(&t);
    if (stats.requests_lost > skipped || !missing.is_empty()) && !last {
        eprintln!(
            "{aio}: the recording lacks the completion of {} block requests ({skipped} \
             counted as missed by the kernel; issued and never completed: {}); recording \
             again",
            stats.requests_lost.max(missing.len() as u64),
            missing.join(", ")
        );
        return false;
    }
    assert!(
        stats.requests_lost <= skipped,
        "{} block requests whose completion is missing from the trace, {skipped} counted \
         as missed by the kernel",
        stats.requests_lost
    );
    // The loop device's backing file lives on the host's disk: that disk is the bottom.
    let bottom = bottom_disk_of(&dir.path().join("host.img"));
    let virtio: Vec<&IoRow> = rows.iter().filter(|r| r.source == Source::Virtio).collect();
    assert!(virtio.len() >= 20, "only {} virtio requests", virtio.len());

    // A partial row is kept for a look at its events (the temporary directory is not).
    let kept = virtio.iter().any(|r| r.partial != 0).then(|| {
        let dir = Path::new("/var/tmp/viopath-failed");
        let keep = dir.join(format!("vm-{aio}-{}.trace", std::process::id()));
        match std::fs::create_dir_all(dir).and_then(|()| std::fs::copy(&trace, &keep)) {
            Ok(_) => format!("recording kept at {}", keep.display()),
            Err(e) => format!("recording not kept: {e}"),
        }
    });
    // No guest request left unjoined: complete, layers adding up, and data requests
    // down to the bottom disk (or, for reads of a hole in the image file, answered by
    // the host filesystem, which is flagged).
    for r in &virtio {
        assert_eq!(r.partial, 0, "partial guest request: {r:?} ({kept:?})");
        let (l, e2e) = split(&r.b);
        assert_eq!(l.iter().flatten().sum::<u64>(), e2e, "{r:?}");
        assert!(e2e > 0, "{r:?}");
        if r.op.moves_data() && r.merged_into.is_none() {
            let zeros = r.flags & viopath_reporter::join::flags::FS_ZEROS != 0;
            assert!(
                r.bottom_dev == bottom || zeros,
                "not joined to the bottom disk {bottom:#x}: {r:?}"
            );
        }
        // Its disk: from the file its host IO went to (each disk's chain has files of
        // its own here; a flush's, from the file the filesystem synced), or the only
        // disk.
        if r.host_ios > 0 || !backing {
            assert!(r.disk.is_some(), "no disk: {r:?}");
        }
    }
    for d in &want_disks {
        assert!(
            virtio.iter().any(|r| disk_of(r) == Some(d)),
            "no request for disk {d}"
        );
    }

    // Flushes: as many as the guest counted, and those QEMU passed to the host (it
    // skips a flush with nothing written since the last) followed into the host
    // filesystem's fsync (aio=threads: the worker's fdatasync; aio=native: the kernel
    // worker's), inside the request. Where the host filesystem's flush went to a device
    // from that thread, the device's part lies inside the fsync; where the journal
    // thread did it (ext4, a commit under way) the fsync is all there is.
    let guest_count = |what: &str| -> u64 {
        serial
            .lines()
            .find_map(|l| l.trim().strip_prefix(what))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("the guest's count of {what}:\n{serial}"))
    };
    let flushes = guest_count("viopath-flushes ");
    let flush_rows: Vec<&&IoRow> = virtio.iter().filter(|r| r.op == Op::Flush).collect();
    assert!(flushes > 0, "the workload's sync made no flush");
    assert_eq!(flush_rows.len() as u64, flushes, "{flush_rows:?}");
    let to_host: Vec<&&&IoRow> = flush_rows.iter().filter(|r| r.host_ios > 0).collect();
    assert!(
        !to_host.is_empty(),
        "no flush reached the host: {flush_rows:?}"
    );
    for r in &to_host {
        let b = r.b.as_array();
        assert!(
            0 < b[1] && b[1] <= b[2] && b[2] <= b[6] && b[6] <= b[8],
            "{r:?}"
        );
        if r.requests > 0 {
            assert!(b[2] <= b[4] && b[4] <= b[5] && b[5] <= b[6], "{r:?}");
        }
    }

    // Discards: as many as the guest counted; those that freed clusters of an image
    // file (the deleted file's, where no backing file holds them) followed into the
    // worker's fallocate, inside the request.
    let discards = guest_count("viopath-discards ");
    let discard_rows: Vec<&&IoRow> = virtio.iter().filter(|r| r.op == Op::Discard).collect();
    assert!(discards > 0, "the workload's fstrim made no discard");
    assert_eq!(discard_rows.len() as u64, discards, "{discard_rows:?}");
    assert!(
        discard_rows.iter().any(|r| r.host_ios > 0),
        "no discard reached the host: {discard_rows:?}"
    );
    // Each has the range the guest's block layer issued (QEMU's first
    // `bdrv_co_pdiscard`), and so has each write of zeroes ext4 made (its bufferless
    // block request); and the guest issued some of those.
    let issued = guest_requests(&serial);
    // Each on its disk: one without host IO takes its drive's, from earlier requests.
    let ranges = |op: Op| {
        let mut v: Vec<(u16, u64, u64)> = virtio
            .iter()
            .filter(|r| r.op == op)
            .map(|r| {
                let d = r.disk.unwrap_or_else(|| panic!("no disk: {r:?}"));
                (d, r.offset.map_or(u64::MAX, |o| o.0), r.bytes)
            })
            .collect();
        v.sort();
        v
    };
    let guest = |first: char| {
        let mut v: Vec<(u16, u64, u64)> = issued
            .iter()
            .filter(|q| q.rwbs.starts_with(first) && q.sectors > 0)
            .map(|q| (q.disk, q.sector * 512, q.sectors * 512))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ranges(Op::Discard), guest('D'), "discards: {issued:?}");
    // Block-layer tracing names a write of zeroes `N` (not read, write, discard or
    // flush); with sectors, as a driver's own request (GET_ID) has none.
    let zeroes = guest('N');
    assert!(
        !zeroes.is_empty(),
        "ext4 made no write of zeroes: {issued:?}"
    );
    assert_eq!(
        ranges(Op::WriteZeroes),
        zeroes,
        "writes of zeroes: {issued:?}"
    );
    for r in virtio.iter().filter(|r| r.op == Op::WriteZeroes) {
        assert_eq!(r.partial, 0, "{r:?}");
    }
    for r in discard_rows.iter().filter(|r| r.host_ios > 0) {
        let b = r.b.as_array();
        assert!(
            0 < b[1] && b[1] <= b[2] && b[2] < b[6] && b[6] <= b[8],
            "{r:?}"
        );
    }

    // QEMU's own block requests (the geometry probe of sector 0 at start-up) happen
    // outside guest requests; one during a guest request is IO the join failed to tie
    // to it (e.g. a copy-on-write read).
    let stray: Vec<&IoRow> = rows
        .iter()
        .filter(|r| r.source != Source::Virtio)
        .filter(|r| {
            virtio.iter().any(|v| {
                v.b.as_array()[1] <= r.b.as_array()[1] && r.b.as_array()[1] <= v.b.as_array()[8]
            })
        })
        .collect();
    assert!(
        stray.is_empty(),
        "QEMU block requests of no guest request: {stray:?}"
    );
    if backing {
        // The O_DIRECT 16 KiB write allocates an overlay cluster: the rest of that
        // cluster is copied from the backing file, IO attributed to the write.
        assert!(
            virtio.iter().any(|r| r.op == Op::Write && r.meta_ios > 0),
            "no write caused copy-on-write IO"
        );
    }

    // Every operation of the guest's script is there, on the disk the guest did it on,
    // by file, and at the address debugfs gives for it.
    for op in &ops {
        let want = if op.write { Op::Write } else { Op::Read };
        let hits: Vec<&&IoRow> = virtio
            .iter()
            .filter(|r| r.op == want && disk_of(r) == Some(want_disks[op.disk as usize]))
            .filter(|r| {
                layout
                    .guest_name(r.disk, r.offset.unwrap())
                    .is_some_and(|g| g.what == op.path)
            })
            .collect();
        assert!(!hits.is_empty(), "no request for {op:?}");
        // The requests for this file cover the bytes the guest touched.
        let mut covered = BTreeSet::new();
        for r in &hits {
            let g = layout.guest_name(r.disk, r.offset.unwrap()).unwrap();
            let f = g.file_offset.unwrap();
            for b in (f / BLOCK)..(f + r.bytes).div_ceil(BLOCK) {
                covered.insert(b);
            }
        }
        for b in (op.offset / BLOCK)..(op.offset + op.len).div_ceil(BLOCK) {
            assert!(
                covered.contains(&b),
                "block {b} of {} not in any request: {op:?}",
                op.path
            );
        }
        // debugfs: where the first byte lives on the guest disk.
        let pblock = debugfs_bmap(&parts[op.disk as usize], &op.path, op.offset / BLOCK);
        let guest_off = PART_START + pblock * BLOCK;
        let at = hits
            .iter()
            .find(|r| {
                let o = r.offset.unwrap().0;
                o <= guest_off && guest_off < o + r.bytes
            })
            .unwrap_or_else(|| panic!("no request at debugfs's address {guest_off} for {op:?}"));
        if op.direct {
            // O_DIRECT: one request per dd block, exactly the guest's.
            assert_eq!(at.offset.map(|o| o.0), Some(guest_off), "{op:?}: {at:?}");
            assert_eq!(at.bytes, op.len, "{op:?}: {at:?}");
        }
    }

    // The CLI over the same trace: the table names guest files (`--wide`: cells not
    // wrapped, to find them whole).
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["report", trace.to_str().unwrap(), "--top", "1000", "--wide"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("guest file"), "{table}");
    assert!(table.contains("/data/big.bin @196608"), "{table}");
    if backing {
        // A disk column, and the second disk's file.
        assert!(table.contains("second.qcow2"), "{table}");
        assert!(table.contains("/two/other.bin @327680"), "{table}");
        // Grouped by disk: a latency table per disk.
        let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
            .args(["report", trace.to_str().unwrap(), "--by", "disk,op"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        for d in &want_disks {
            assert!(table.contains(d), "no group for {d}: {table}");
        }
    }
    // Grouped by guest file: each file the guest's script read or wrote with O_DIRECT
    // (one request per dd block, at debugfs's address) has a group for that op with at
    // least that many IOs, and the groups add up to every complete IO.
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["report", trace.to_str().unwrap(), "--by", "file,op"])
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e2e_count = |file: &str, op: &str| -> u64 {
        j["latency"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["layer"] == "e2e" && l["group"]["op"] == op)
            .filter(|l| file.is_empty() || l["group"]["file"] == file)
            .map(|l| l["count"].as_u64().unwrap())
            .sum()
    };
    for op in ops.iter().filter(|o| o.direct) {
        let name = if op.write { "write" } else { "read" };
        let direct = ops
            .iter()
            .filter(|o| o.direct && o.write == op.write && o.path == op.path)
            .count() as u64;
        assert!(
            e2e_count(&op.path, name) >= direct,
            "{} {name}: {} IOs grouped, the guest did {direct} direct",
            op.path,
            e2e_count(&op.path, name)
        );
    }
    let all: u64 = [
        "read",
        "write",
        "flush",
        "discard",
        "write_zeroes",
        "get_id",
        "other",
    ]
    .iter()
    .map(|op| e2e_count("", op))
    .sum();
    assert_eq!(all, j["summary"]["complete_ios"].as_u64().unwrap());
    true
}
