//! VM shapes production hosts run (issue 34), under the same load and the same oracles
//! as `load_e2e`: the guest's own block trace and `/sys/block` stat, and QEMU's
//! `query-blockstats`. Every guest request must be one complete row down to the bottom
//! disk, layers adding up, no event lost.

use crate::load_e2e::{
    Mode, check_blockstats, check_exact, load_test, load_test_run, prerequisites, run_load,
};
use std::collections::BTreeSet;
use viopath_probes::abi::{EventKind, qemu_probe as q};
use viopath_reporter::reader::Trace;

/// virtio-blk with four queues on QEMU's main loop (two vCPUs: the guest submits on
/// both): requests of several queues in flight together, all parsed on one thread.
#[test]
fn load_four_queues_on_the_main_loop_is_exact() {
    load_test(
        Mode {
            queues: 4,
            cpus: 2,
            ..Mode::plain("threads")
        },
        "load-4q-main-loop",
    );
}

/// Four queues spread over two iothreads (`iothread-vq-mapping`): requests parsed and
/// completed on two threads at once, each with its own thread pool jobs.
#[test]
fn load_queues_over_two_iothreads_is_exact() {
    let Some((qemu, assets)) = prerequisites() else {
        return;
    };
    let mode = Mode {
        queues: 4,
        cpus: 2,
        vq_iothreads: 2,
        ..Mode::plain("threads")
    };
    let run = run_load(&qemu, &assets, &mode, Some(&[]));
    let (rows, _) = check_exact(&run, "load-vq-mapping");
    check_blockstats(&run, &rows, "load-vq-mapping");
    // Both iothreads parsed requests: the mapping took effect.
    let t = Trace::open(&run.trace).unwrap();
    let parsers: BTreeSet<u32> = t
        .events()
        .filter(|e| e.kind == EventKind::Qemu as u8 && e.sub == q::VIRTIO_HANDLE_REQUEST)
        .map(|e| e.tid)
        .collect();
    assert_eq!(parsers.len(), 2, "threads parsing requests: {parsers:?}");
}

/// A raw image (no qcow2: the guest's offset is the file's) with linux-aio.
#[test]
fn load_raw_native_is_exact() {
    load_test(
        Mode {
            format: "raw",
            ..Mode::plain("native")
        },
        "load-raw-native",
    );
}

/// A raw image with io_uring.
#[test]
fn load_raw_io_uring_is_exact() {
    load_test(
        Mode {
            format: "raw",
            ..Mode::plain("io_uring")
        },
        "load-raw-io_uring",
    );
}

/// A raw host block device as the disk (`host_device`: a partition of a loop device,
/// no filesystem between), with linux-aio: its direct IO has no iomap events, so its
/// bios and their completions are the host IO.
#[test]
fn load_host_device_native_is_exact() {
    load_test(
        Mode {
            format: "raw",
            host_device: true,
            ..Mode::plain("native")
        },
        "load-host-device-native",
    );
}

/// The same with io_uring.
#[test]
fn load_host_device_io_uring_is_exact() {
    load_test(
        Mode {
            format: "raw",
            host_device: true,
            ..Mode::plain("io_uring")
        },
        "load-host-device-io_uring",
    );
}

/// The same with the thread pool: its workers' `preadv`/`pwritev` and `fdatasync` on
/// the device node.
#[test]
fn load_host_device_threads_is_exact() {
    load_test(
        Mode {
            format: "raw",
            host_device: true,
            ..Mode::plain("threads")
        },
        "load-host-device-threads",
    );
}

/// virtio-scsi with one SCSI disk (`scsi-hd`, LUN 0) on QEMU's main loop: the same
/// load, its filesystem trimmed at the end (UNMAP), every command one row.
#[test]
fn load_virtio_scsi_is_exact() {
    load_test(
        Mode {
            scsi_luns: 1,
            ..Mode::plain("threads")
        },
        "load-virtio-scsi",
    );
}

/// virtio-scsi with two LUNs on one controller served by an iothread (two queues, two
/// vCPUs), linux-aio: the load on LUN 0, reads, writes and discards of LUN 1 at the
/// same time; each row on its own disk.
///
/// `report --by disk` names each disk with its SCSI address.
#[test]
fn load_virtio_scsi_two_luns_on_an_iothread_is_exact() {
    let Some((rows, run)) = load_test_run(
        Mode {
            scsi_luns: 2,
            iothread: true,
            queues: 2,
            cpus: 2,
            ..Mode::plain("native")
        },
        "load-virtio-scsi-2-luns",
    ) else {
        return;
    };
    let per_disk = |d: u16| rows.iter().filter(|r| r.disk == Some(d)).count();
    assert!(per_disk(0) > 0 && per_disk(1) > 0, "{} rows", rows.len());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["report", "--by", "disk"])
        .arg(&run.trace)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (disk, lun) in run.disks.iter().zip(["0:0:0", "0:0:1"]) {
        let name = disk.file_name().unwrap().to_string_lossy();
        assert!(
            text.lines()
                .any(|l| l.contains(&*name) && l.contains(&format!("(scsi {lun})"))),
            "{name} as LUN {lun}:\n{text}"
        );
    }
}
