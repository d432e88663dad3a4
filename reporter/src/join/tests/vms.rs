//! Several VMs in one trace: each event is its thread's VM's, and each VM's QEMU
//! pointers, descriptors and files are its own even where the values are the same.

use super::*;
use crate::layout::VmSpec;

/// Two VMs, each with one raw image named `g.img` of inode 12 on a filesystem of its
/// own (two filesystems made alike: the same inode numbers), on partitions 259:1 and
/// 259:2 at byte 1 GiB.
fn two_vms(vm1_until: Option<u64>) -> Layout {
    let image = |dir: &str, minor: u32| {
        serde_json::json!({"path": format!("/{dir}/g.img"), "file_hosts": [
        {"file": format!("/{dir}/g.img"), "len": 1u64 << 30, "ino": 12, "host": [
            {"offset": 0, "len": 1u64 << 30, "hops": [
                {"hop": "file", "path": format!("/{dir}/g.img"), "offset": 0, "state": "mapped"},
                {"hop": "device", "device": format!("/dev/p{minor}"), "dev": format!("259:{minor}"), "byte": 1u64 << 30, "via": "filesystem"}
            ]}]}]})
    };
    let mut l = Layout::from_json(&serde_json::json!({
        "images": [image("a", 1), image("b", 2)],
        "devices": []
    }));
    l.disks[1].vm = 1;
    l.vms = vec![
        VmSpec {
            pid: 1000,
            threads: vec![1000, 1001],
            traced_from_ns: 0,
            traced_until_ns: None,
        },
        VmSpec {
            pid: 2000,
            threads: vec![2000],
            traced_from_ns: 0,
            traced_until_ns: vm1_until,
        },
    ];
    l
}

/// One guest read of 4 KiB at `off` through virtio-blk, the block layer, file-posix
/// and the thread pool, made by QEMU's thread `main` and read by its worker `worker`
/// on partition `minor`; every QEMU pointer and the descriptor are the same in both
/// VMs. Ends at `t0 + 9_000` unless `answered` is false.
fn read<S: Sink>(j: &mut Join<S>, main: u32, worker: u32, minor: u32, t0: u64, answered: bool) {
    let q = |ts: u64, tid: u32, sub: u8, a: [u64; 4]| sub_ev(ts, tid, EventKind::Qemu, sub, a);
    let (req, qiov, aiocb, off) = (0x5555_0000, 0x5555_1000, 0x7f00_0000, 0x10000u64);
    let dev = u64::from(kernel_dev(259, minor)) << 32;
    let sector = ((1u64 << 30) + off) / 512;
    j.event(&q(t0, main, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
    j.event(&q(
        t0 + 100,
        main,
        q::BLK_AIO_PREADV,
        [req, off, 4096, 0xb1],
    ));
    j.event(&q(
        t0 + 200,
        main,
        q::BDRV_CO_PREADV_PART,
        [qiov, off, 4096, 0xc1],
    ));
    j.event(&q(
        t0 + 300,
        main,
        q::RAW_CO_PRW,
        [qiov, off, 4096, q::AIO_READ],
    ));
    j.event(&q(
        t0 + 400,
        main,
        q::THREAD_POOL_SUBMIT_AIO,
        [aiocb, off, 4096, 9 << 32 | q::AIO_READ],
    ));
    j.event(&q(
        t0 + 500,
        worker,
        q::HANDLE_AIOCB_RW,
        [aiocb, off, 4096, 9 << 32 | q::AIO_READ],
    ));
    j.event(&sub_ev(
        t0 + 600,
        worker,
        EventKind::SysEnter,
        1,
        [9, off, 4096, 0],
    ));
    j.event(&ev(
        t0 + 700,
        worker,
        EventKind::DioBegin,
        [0xffff_0000 + u64::from(minor), off, 4096, 12],
    ));
    block_request(
        j,
        t0 + 800,
        worker,
        0xb000 + u64::from(minor),
        0x7000 + u64::from(minor),
        sector,
        dev | 4096,
    );
    if !answered {
        return;
    }
    j.event(&ev(
        t0 + 5_000,
        0,
        EventKind::RqComplete,
        [0x7000 + u64::from(minor), sector, dev | 4096, 4096],
    ));
    j.event(&ev(
        t0 + 5_100,
        0,
        EventKind::DioComplete,
        [0xffff_0000 + u64::from(minor), 4096, 0, 0],
    ));
    j.event(&sub_ev(
        t0 + 6_000,
        worker,
        EventKind::SysExit,
        1,
        [4096, 0, 0, 0],
    ));
    j.event(&q(t0 + 8_000, main, q::VIRTIO_RW_COMPLETE, [req, 0, 0, 0]));
    j.event(&q(
        t0 + 9_000,
        main,
        q::VIRTIO_REQ_COMPLETE,
        [req, off / 512, 0, 4096],
    ));
}

#[test]
fn two_vms_with_the_same_pointers_and_files_are_told_apart() {
    let layout = two_vms(None);
    let mut j = Join::new(&layout, Rows::default(), JoinConfig::default());
    // VM 1's worker started while recording: its thread event names it.
    j.event(&ev(500, 2000, EventKind::Thread, [2001, 2000, 0, 0]));
    // Interleaved: VM 1's request made while VM 0's is in flight, with the same
    // VirtIOBlockReq, qiov, job, descriptor and file offset.
    read(&mut j, 1000, 1001, 1, 10_000, true);
    read(&mut j, 2000, 2001, 2, 10_050, true);
    let (Rows(mut rows), stats) = j.finish();
    rows.sort_by_key(|r| r.vm);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (vm, r) in rows.iter().enumerate() {
        assert_eq!(r.vm as usize, vm, "{r:?}");
        assert_eq!(r.partial, 0, "{r:?}");
        assert_eq!(r.disk, Some(vm as u16), "{r:?}");
        assert_eq!(r.bottom_dev, kernel_dev(259, vm as u32 + 1), "{r:?}");
        assert_eq!(r.bios, 1, "{r:?}");
    }
    assert_eq!(rows[1].b.as_array()[8], 19_050);
    assert_eq!(stats.events_of_unknown_threads, 0);
}

/// A VM whose process exited: the request it had in flight is cut by the end of its
/// tracing, while the other VM's go on to complete.
#[test]
fn a_vm_that_exits_cuts_only_its_own_requests() {
    let layout = two_vms(Some(12_000));
    let mut j = Join::new(&layout, Rows::default(), JoinConfig::default());
    j.event(&ev(500, 2000, EventKind::Thread, [2001, 2000, 0, 0]));
    read(&mut j, 2000, 2001, 2, 10_050, false);
    read(&mut j, 1000, 1001, 1, 10_000, true);
    let (Rows(mut rows), stats) = j.finish();
    rows.sort_by_key(|r| r.vm);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].vm, rows[0].partial), (0, 0), "{rows:?}");
    assert_eq!(
        (rows[1].vm, rows[1].partial),
        (1, reasons::CUT_AT_END),
        "{rows:?}"
    );
    assert_eq!(stats.cut_at_end, 1);
}
