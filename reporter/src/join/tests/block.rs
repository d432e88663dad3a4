use super::*;
use crate::layers::Boundary;

#[test]
fn a_request_pointer_back_after_a_lost_completion_is_a_new_request() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
    let dev = u64::from(kernel_dev(254, 0)) << 32;
    let (rq, bio_a, bio_b) = (
        0xffff_8881_0253_9a80,
        0xffff_8881_2219_ad80,
        0xffff_8881_2219_a840,
    );
    // Someone else's 512-byte write: queued, inserted, issued; its completion lost.
    block_request(&mut j, 1_000, 5, bio_a, rq, 100, dev | 512);
    // Issued again as it was (the driver was busy): still the same request.
    j.event(&ev(
        1_300,
        5,
        EventKind::RqIssue,
        [rq, 100, dev | 512, bio_a],
    ));
    assert_eq!(j.stats.requests_lost, 0);
    // Much later a traced direct IO's bio gets a request at the same pointer.
    j.event(&ev(5_000_000, 7, EventKind::DioBegin, [0x77, 0, 4096, 12]));
    block_request(&mut j, 5_000_100, 7, bio_b, rq, 200, dev | 4096);
    assert_eq!(j.stats.requests_lost, 1);
    assert!(!j.bios.contains_key(&bio_a) && j.bios.contains_key(&bio_b));
    let h = j.threads.get(7).and_then(|t| t.dio).expect("direct IO");
    assert_eq!(j.reqs.get(&rq).map(|r| r.owners.to_vec()), Some(vec![h]));
    let hio = j.hios.get(h).expect("in flight");
    assert_eq!(
        (hio.requests, hio.open_rqs, hio.issue_any),
        (1, 1, 5_000_300)
    );
    j.event(&ev(
        5_090_000,
        0,
        EventKind::RqComplete,
        [rq, 200, dev | 4096, 4096],
    ));
    // A direct IO no QEMU probe announced ends with its last block request.
    assert!(j.hios.get(h).is_none());
    let dio: Vec<&OtherIo> = j.sink.0.iter().filter(|o| o.start == 5_000_000).collect();
    assert_eq!(dio.len(), 1, "{:?}", j.sink.0);
    assert_eq!(dio[0].end, 5_090_000);
    // The lost one is reported as far as it was seen, not with the new completion.
    let stale: Vec<&OtherIo> = j.sink.0.iter().filter(|o| o.start == 1_000).collect();
    assert_eq!(stale.len(), 1, "{:?}", j.sink.0);
    assert!(stale[0].end < 5_000_000, "{:?}", stale[0]);
}

#[test]
fn a_bio_covered_by_two_host_ios_goes_to_the_one_queueing_it() {
    // Two direct IOs to the same host blocks at once (one thread re-reading what
    // another reads): the bio belongs to the IO of the thread that queues it, not
    // to whichever came first.
    let layout = Layout::from_json(&crate::synth::layout());
    let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
    let (pos, len) = (0x20_0000, 4096);
    let mut ranges = DevRanges::new();
    layout.dev_ranges(0, HostFileOffset(pos), len, &mut ranges);
    let bottom = ranges.iter().find(|r| r.bottom).expect("bottom range");
    let dev_bytes = (u64::from(bottom.dev) << 32) | len;
    j.event(&ev(1_000, 7, EventKind::DioBegin, [0x71, pos, len, 12]));
    j.event(&ev(1_100, 8, EventKind::DioBegin, [0x81, pos, len, 12]));
    let first = j.threads.get(7).and_then(|t| t.dio).expect("7's IO");
    let second = j.threads.get(8).and_then(|t| t.dio).expect("8's IO");
    // 8 queues its own bio; then a thread inside neither (a driver's worker) queues
    // one, which goes to the first registered.
    for (ts, tid, bio, rq, want) in [
        (1_200, 8, 0xb8, 0x9008, second),
        (1_300, 99, 0xb7, 0x9007, first),
    ] {
        block_request(&mut j, ts, tid, bio, rq, bottom.start_sector.0, dev_bytes);
        let owners = j.reqs.get(&rq).map(|r| r.owners.to_vec());
        assert_eq!(owners, Some(vec![want]), "bio queued by thread {tid}");
    }
}

#[test]
fn a_bio_merges_only_into_a_request_of_its_operation_not_yet_issued() {
    // Thread 8's read bio back-merges into thread 7's read request, still plugged
    // (inserted after the merge). Two other requests end where the bio begins: an
    // issued read and a queued write. The kernel merges into neither (a started
    // request takes no merges; a read never joins a write), so neither may take it.
    use EventKind::*;
    let layout = Layout::default();
    let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let (read, write) = (0u8, 1u8);
    let (issued, queued_write, plugged) = (0x9001, 0x9002, 0x9007);
    let (mut h7, mut h8) = (None, None);
    // (time, thread, event, REQ_OP, [pointer, sector, bytes, last]), in order.
    let events = [
        (1_000, 5, BioQueue, read, [0xb1, 104, 2048, 0]),
        (1_100, 5, RqInsert, read, [issued, 104, 2048, 0xb1]),
        (1_200, 5, RqIssue, read, [issued, 104, 2048, 0xb1]),
        (1_300, 5, BioQueue, write, [0xb2, 100, 4096, 0]),
        (1_400, 5, RqInsert, write, [queued_write, 100, 4096, 0xb2]),
        (2_000, 7, DioBegin, 0, [0x71, 0, 4096, 12]),
        (2_100, 8, DioBegin, 0, [0x81, 4096, 4096, 12]),
        (2_200, 7, BioQueue, read, [0xb7, 100, 4096, 0]),
        (2_300, 8, BioQueue, read, [0xb8, 108, 4096, 0]),
        (2_400, 8, BioMerge, read, [0xb8, 108, 4096, 1]),
        (2_500, 5, RqInsert, read, [plugged, 100, 8192, 0xb7]),
        (2_600, 5, RqIssue, read, [plugged, 100, 8192, 0xb7]),
        (9_000, 0, RqComplete, read, [plugged, 100, 8192, 8192]),
    ];
    for (ts, tid, kind, op, [a0, a1, bytes, a3]) in events {
        // Block events carry the device beside their bytes; a direct IO its inode.
        let a2 = if kind == DioBegin { bytes } else { dev | bytes };
        if kind == RqIssue && a0 == plugged {
            let owners = |k| j.reqs.get(&k).map(|r| r.owners.to_vec());
            assert_eq!(owners(plugged), Some(vec![h7.unwrap(), h8.unwrap()]));
            assert_eq!(owners(issued), Some(vec![]));
            assert_eq!(owners(queued_write), Some(vec![]));
        }
        j.event(&sub_ev(ts, tid, kind, op, [a0, a1, a2, a3]));
        if kind == DioBegin {
            let h = j.threads.get(tid).and_then(|t| t.dio);
            *if tid == 7 { &mut h7 } else { &mut h8 } = h;
        }
    }
    // Direct IOs no QEMU probe announced end with their last block request.
    for start in [2_000, 2_100] {
        let dio: Vec<&OtherIo> = j.sink.0.iter().filter(|o| o.start == start).collect();
        assert_eq!(dio.len(), 1, "{:?}", j.sink.0);
        assert_eq!(dio[0].end, 9_000, "{:?}", dio[0]);
    }
    assert!(j.hios.get(h7.unwrap()).is_none() && j.hios.get(h8.unwrap()).is_none());
}

/// A bio whose end was never seen (it merged into a request still plugged, whose
/// insert never came) leaves its entry; the kernel frees the bio and a new one takes its
/// address, remapped by a partition before it is first queued. The remap is not of the
/// old entry's bio: the new bio is looked up afresh, here the flush of a thread inside
/// a host IO.
#[test]
fn a_remap_of_a_new_bio_at_a_stale_address_is_not_the_old_bios() {
    let layout = Layout::default();
    let cfg = JoinConfig {
        flush_syscalls: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let (part, disk) = (u64::from(kernel_dev(259, 1)), u64::from(kernel_dev(7, 0)));
    // The old bio: nobody's.
    j.event(&ev(
        1_000,
        9,
        EventKind::BioQueue,
        [0xb1, 0x800, part << 32 | 4096, 0x1],
    ));
    // A thread-pool worker's fdatasync for a guest flush.
    j.event(&sub_ev(
        2_000,
        1,
        EventKind::Qemu,
        q::VIRTIO_HANDLE_REQUEST,
        [0xf1, 0, 0, 0],
    ));
    j.event(&sub_ev(
        2_100,
        1,
        EventKind::Qemu,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0, 0, 8 << 32 | q::AIO_FLUSH],
    ));
    j.event(&sub_ev(2_200, 3, EventKind::SysEnter, 11, [8, 0, 0, 0]));
    // The new bio at the old address: remapped from the partition, then queued.
    j.event(&ev(
        2_300,
        3,
        EventKind::BioRemap,
        [0xb1, 0x900, part << 32 | part, 0x100],
    ));
    j.event(&ev(
        2_310,
        3,
        EventKind::BioQueue,
        [0xb1, 0x900, part << 32, 1 << 18 | 0x1],
    ));
    j.event(&ev(
        2_400,
        4,
        EventKind::RqIssue,
        [0x71, u64::MAX, disk << 32, 0],
    ));
    j.event(&ev(
        3_000,
        0,
        EventKind::RqComplete,
        [0x71, u64::MAX, disk << 32, 0],
    ));
    j.event(&sub_ev(3_100, 3, EventKind::SysExit, 11, [0, 0, 0, 0]));
    j.event(&sub_ev(
        3_200,
        1,
        EventKind::Qemu,
        q::VIRTIO_REQ_COMPLETE,
        [0xf1, 0, 4, 0],
    ));
    let (all, _) = j.finish();
    let flush = row_of(&all.0, Op::Flush);
    assert_eq!(flush.bios, 1, "{flush:?}");
    assert_eq!(flush.requests, 0, "{flush:?}");
}

/// A read through a dm device (a linear target on sdb): the filesystem's entry (function
/// probe) and the first bio on the bottom device, below the one the read was first
/// queued on, are boundaries of its own.
#[test]
fn a_read_through_dm_has_its_filesystem_entry_and_bottom_queue() {
    let layout = Layout::from_json(&serde_json::json!({
        "images": [{"path": "/vm/a.raw", "file_hosts": [{"file": "/vm/a.raw", "len": 1u64 << 30,
            "host": [{"offset": 0, "len": 1u64 << 30, "hops": [
                {"hop": "file", "path": "/vm/a.raw", "offset": 0, "state": "mapped"},
                {"hop": "device", "device": "/dev/dm-0", "dev": "253:0", "byte": 0, "via": "filesystem"},
                {"hop": "device", "device": "/dev/sdb", "dev": "8:16", "byte": 1u64 << 20, "via": "dm_linear"}
            ]}]}]}],
        "devices": [
            {"id": "253:0", "name": "dm-0", "kind": {"kind": "device_mapper", "name": "vg-a",
                "targets": [{"start": 0, "len": 2097152, "type": "linear", "dev": "8:16", "offset": 2048}]}},
            {"id": "8:16", "name": "sdb", "kind": {"kind": "disk"}}
        ]
    }));
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let (dm, sdb) = (
        u64::from(kernel_dev(253, 0)) << 32,
        u64::from(kernel_dev(8, 16)) << 32,
    );
    let (off, len) = (0x10000, 4096);
    pool_job_begins(&mut j, false, off, len);
    j.event(&ev(7_000, 9, EventKind::FsEnter, [0xa000, off, len, 11]));
    j.event(&ev(8_000, 9, EventKind::DioBegin, [0xa000, off, len, 11]));
    j.event(&ev(
        9_000,
        9,
        EventKind::BioQueue,
        [0xb0, off / 512, dm | len, 0],
    ));
    // dm's clone, on sdb at the table's offset.
    j.event(&ev(
        12_000,
        9,
        EventKind::BioQueue,
        [0xb1, 2048 + off / 512, sdb | len, 0],
    ));
    j.event(&ev(
        13_000,
        9,
        EventKind::RqIssue,
        [0x70, 2048 + off / 512, sdb | len, 0xb1],
    ));
    j.event(&ev(
        20_000,
        0,
        EventKind::RqComplete,
        [0x70, 2048 + off / 512, sdb | len, len],
    ));
    j.event(&ev(
        21_000,
        0,
        EventKind::BioComplete,
        [0xb1, 2048 + off / 512, sdb | len, 0],
    ));
    j.event(&ev(
        22_000,
        0,
        EventKind::BioComplete,
        [0xb0, off / 512, dm | len, 0],
    ));
    pool_job_ends(&mut j, false, len, 23_000);
    let (all, _) = j.finish();
    let r = &all.0[0];
    assert_eq!(r.partial, 0, "{r:?}");
    let b = |x: Boundary| r.b[x];
    assert_eq!(
        [
            b(Boundary::Submitted),
            b(Boundary::FsEntered),
            b(Boundary::Queued),
            b(Boundary::BottomQueued),
            b(Boundary::Dispatched)
        ],
        [6_000, 7_000, 9_000, 12_000, 13_000],
        "{r:?}"
    );
}

/// A write on a thin volume, whose mapping the layout does not have: dm-thin's clone
/// goes to the pool, the pool's to its data volume, that one's to the disk's
/// partition, each a remap event from the device above at the sector it came from.
/// The clones are the write's, followed by those events; the disk's request is as low
/// as it went (and with the devices below the thin volume unknown, `block_queue` holds
/// the whole stack: no `bottom_queued`).
#[test]
fn a_write_through_a_thin_volume_is_followed_by_its_remaps() {
    let layout = Layout::from_json(&serde_json::json!({
        "images": [{"path": "/vm/a.raw", "file_hosts": [{"file": "/vm/a.raw", "len": 1u64 << 30,
            "host": [{"offset": 0, "len": 1u64 << 30, "hops": [
                {"hop": "file", "path": "/vm/a.raw", "offset": 0, "state": "mapped"},
                {"hop": "device", "device": "/dev/dm-6", "dev": "253:6", "byte": 1u64 << 24, "via": "filesystem"}
            ], "stopped": "dm target 'thin' of vg-thin is not remapped"}]}]}],
        "devices": [
            {"id": "253:6", "name": "dm-6", "kind": {"kind": "device_mapper", "name": "vg-thin",
                "targets": [{"start": 0, "len": 2097152, "type": "other", "target": "thin", "args": "253:4 1"}]}}
        ]
    }));
    assert!(layout.stops_chain(kernel_dev(253, 6)));
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let dev = |ma, mi| u64::from(kernel_dev(ma, mi));
    let (thin, pool, data, part, disk) = (
        dev(253, 6),
        dev(253, 4),
        dev(253, 3),
        dev(254, 1),
        dev(254, 0),
    );
    let (off, len) = (0x10000, 65536);
    let s = (1 << 24) / 512 + off / 512;
    pool_job_begins(&mut j, true, off, len);
    j.event(&ev(7_000, 9, EventKind::DioBegin, [0xa000, off, len, 11]));
    let w = |ts, kind, a| sub_ev(ts, 9, kind, 1, a);
    j.event(&w(
        8_000,
        EventKind::BioQueue,
        [0xb0, s, thin << 32 | len, 0],
    ));
    // Clones, each remapped from the device above (new dev << 32 | old dev).
    use EventKind::{BioQueue, BioRemap, RqComplete, RqIssue};
    for (t, kind, a) in [
        (9_000, BioRemap, [0xb1, 18434, pool << 32 | thin, s]),
        (9_100, BioQueue, [0xb1, 18434, pool << 32 | len, 0]),
        (9_200, BioRemap, [0xb2, 18434, data << 32 | pool, 18434]),
        (9_300, BioQueue, [0xb2, 18434, data << 32 | len, 0]),
        (9_400, BioRemap, [0xb3, 28674, part << 32 | data, 18434]),
        (9_500, BioRemap, [0xb3, 30722, part << 32 | part, 28674]),
        (9_600, BioQueue, [0xb3, 30722, part << 32 | len, 0]),
        (9_700, RqIssue, [0x70, 30722, disk << 32 | len, 0xb3]),
        (20_000, RqComplete, [0x70, 30722, disk << 32 | len, len]),
    ] {
        j.event(&w(t, kind, a));
    }
    for (t, bio, d, sec) in [
        (20_100, 0xb3, part, 30722),
        (20_200, 0xb2, data, 18434),
        (20_300, 0xb1, pool, 18434),
        (20_400, 0xb0, thin, s),
    ] {
        j.event(&w(t, EventKind::BioComplete, [bio, sec, d << 32 | len, 0]));
    }
    pool_job_ends(&mut j, true, len, 21_000);
    let (all, _) = j.finish();
    let r = &all.0[0];
    assert_eq!(r.partial, 0, "{r:?}");
    assert_eq!(
        (r.bios, r.requests, r.bottom_dev),
        (4, 1, disk as u32),
        "{r:?}"
    );
    assert_eq!(
        (
            r.b[Boundary::Queued],
            r.b[Boundary::BottomQueued],
            r.b[Boundary::Dispatched]
        ),
        (8_000, 0, 9_700),
        "{r:?}"
    );
}

/// qemu-io's read or write of `len` bytes at `off` of a raw image through the thread
/// pool, up to its worker's syscall (thread 9) at 6 000: the host IO the tests above
/// follow into the kernel.
fn pool_job_begins(j: &mut Join<'_, All>, write: bool, off: u64, len: u64) {
    let q = |ts, sub, a| sub_ev(ts, 5, EventKind::Qemu, sub, a);
    let (blk, bdrv, ty) = if write {
        (q::BLK_AIO_PWRITEV, q::BDRV_CO_PWRITEV_PART, q::AIO_WRITE)
    } else {
        (q::BLK_AIO_PREADV, q::BDRV_CO_PREADV_PART, q::AIO_READ)
    };
    let (ctx, qiov, aiocb) = POOL_JOB;
    j.event(&q(1_000, blk, [ctx, off, len, 0xb1]));
    j.event(&q(2_000, bdrv, [qiov, off, len, 0xc1]));
    j.event(&q(3_000, q::RAW_CO_PRW, [qiov, off, len, ty]));
    j.event(&q(4_000, q::THREAD_POOL_SUBMIT_AIO, [aiocb, off, len, ty]));
    let run = sub_ev(
        5_000,
        9,
        EventKind::Qemu,
        q::HANDLE_AIOCB_RW,
        [aiocb, off, len, ty],
    );
    j.event(&run);
    let sc = if write { 2 } else { 1 };
    j.event(&sub_ev(6_000, 9, EventKind::SysEnter, sc, [3, off, len, 0]));
}

/// The end of [`pool_job_begins`]' job from `t`: its direct IO's completion, the
/// syscall's return and qemu-io's callback.
fn pool_job_ends(j: &mut Join<'_, All>, write: bool, len: u64, t: u64) {
    let (sc, done) = if write {
        (2, q::QEMU_IO_AIO_WRITE_DONE)
    } else {
        (1, q::QEMU_IO_AIO_READ_DONE)
    };
    j.event(&ev(t, 9, EventKind::DioComplete, [0xa000, len, 0, 0]));
    j.event(&sub_ev(
        t + 1_000,
        9,
        EventKind::SysExit,
        sc,
        [len, 0, 0, 0],
    ));
    j.event(&sub_ev(
        t + 2_000,
        5,
        EventKind::Qemu,
        done,
        [POOL_JOB.0, 0, 0, 0],
    ));
}

/// (context, qiov, aiocb) of [`pool_job_begins`].
const POOL_JOB: (u64, u64, u64) = (0x5555_0000, 0x5555_1000, 0x7f00_2000);
