//! VM shapes production hosts run (issue 34), under the same load and the same oracles
//! as `load_e2e`: the guest's own block trace and `/sys/block` stat, and QEMU's
//! `query-blockstats`. Every guest request must be one complete row down to the bottom
//! disk, layers adding up, no event lost.

use crate::load_e2e::{Mode, check_blockstats, check_exact, load_test, prerequisites, run_load};
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
