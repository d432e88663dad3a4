use super::*;

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
