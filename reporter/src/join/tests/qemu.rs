use super::*;

#[test]
fn a_qemu_probe_the_join_does_not_use_is_ignored_but_an_unknown_kind_is_counted() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
    for sub in [0, 23, 200, 255] {
        j.event(&sub_ev(1_000, 1, EventKind::Qemu, sub, [0x10, 0, 0, 0]));
    }
    assert_eq!(j.stats.unknown_events, 0);
    assert_eq!(
        j.in_flight(),
        0,
        "no request made for a probe it does not use"
    );
    let mut odd = ev(2_000, 1, EventKind::Qemu, [0; 4]);
    odd.kind = 99;
    j.event(&odd);
    assert_eq!(j.stats.unknown_events, 1);
    // A probe it does use still reaches its handler.
    j.event(&sub_ev(
        3_000,
        1,
        EventKind::Qemu,
        q::VIRTIO_HANDLE_REQUEST,
        [0x20, 0, 0, 0],
    ));
    assert_eq!(j.roots.live, 1);
}

/// Two virtio reads one after the other, QEMU reusing the first's request and qiov
/// for the second (aio=native) before the first's interrupt, which under TCG never
/// comes: the second's IO is its own, not the first's.
#[test]
fn a_request_awaiting_its_interrupt_gives_up_its_qiov() {
    let layout = Layout::default();
    let cfg = JoinConfig {
        await_msi: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let (req, qiov) = (0x563b_10a3_8ec0, 0x563b_10a3_8f58);
    for (n, t) in [(0u64, 1_000_000u64), (1, 1_500_000)] {
        let q = |dt, sub, a| sub_ev(t + dt, 1, EventKind::Qemu, sub, a);
        let k = |dt, kind, a| ev(t + dt, 1, kind, a);
        j.event(&q(0, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
        j.event(&q(10, q::BLK_AIO_PREADV, [req, 0, 512, 0xc1]));
        // The fourth value differs between the two (as recorded from QEMU 10).
        j.event(&q(
            20,
            q::BDRV_CO_PREADV_PART,
            [qiov, 0, 512, 0xc1 + n * 16],
        ));
        j.event(&q(
            30,
            q::BDRV_CO_PREADV_PART,
            [qiov, 0x5_0000, 512, 0xc2 + n * 16],
        ));
        j.event(&q(40, q::RAW_CO_PRW, [qiov, 0x5_0000, 512, 1]));
        j.event(&q(50, q::LAIO_CO_SUBMIT, [qiov, 0x5_0000, 512, 1]));
        j.event(&sub_ev(t + 60, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
        j.event(&k(70, EventKind::DioBegin, [0xd0 + n, 0x5_0000, 512, 11]));
        let (bio, rq) = (0xb0 + n, 0x70 + n);
        j.event(&k(80, EventKind::BioQueue, [bio, 0x280, dev | 512, 0]));
        j.event(&k(90, EventKind::RqIssue, [rq, 0x280, dev | 512, bio]));
        j.event(&sub_ev(t + 100, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
        j.event(&ev(
            t + 400,
            0,
            EventKind::RqComplete,
            [rq, 0x280, dev | 512, 512],
        ));
        j.event(&q(500, q::VIRTIO_RW_COMPLETE, [req, 0, 0, 0]));
        j.event(&q(510, q::VIRTIO_REQ_COMPLETE, [req, 0, 0, 512]));
    }
    j.event(&ev(9_000_000, 1, EventKind::KvmMmio, [0, 0, 0, 0]));
    let (all, _) = j.finish();
    assert_eq!(all.0.len(), 2, "{:?}", all.0);
    for (r, t) in all.0.iter().zip([1_000_000, 1_500_000]) {
        assert_eq!(r.partial, 0, "{r:?}");
        assert_eq!((r.host_ios, r.requests), (1, 1), "{r:?}");
        assert_eq!(r.b.as_array()[1], t, "{r:?}");
        assert_eq!(
            (r.b.as_array()[5], r.b.as_array()[8]),
            (t + 400, t + 510),
            "{r:?}"
        );
    }
}

/// A discard's range comes from its first `bdrv_co_pdiscard`, at the top of QEMU's
/// block stack; qcow2 passing it on to the image file (another node, the host
/// offset) is the same request. From a guest: two discards on one thread, the
/// first one's job still running as the second arrives (it frees nothing, so it
/// has no job). From qemu-io (no virtio): one row per discard command.
#[test]
fn a_discard_has_the_range_of_its_block_request() {
    let layout = Layout::default();
    let cfg = JoinConfig {
        falloc_syscalls: true,
        ..JoinConfig::default()
    };
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    let sys = |ts, kind, a| sub_ev(ts, 3, kind, 13, a);
    let job = |ts, key, off, len| {
        q(
            ts,
            q::THREAD_POOL_SUBMIT_AIO,
            [key, off, len, 8 << 32 | q::AIO_DISCARD],
        )
    };
    let pdiscard = |ts, off, len, child| q(ts, q::BDRV_CO_PDISCARD, [0, off, len, child]);
    // Rows in request order, what each is, and that no IO was left over.
    let summary = |j: Join<All>| {
        let All(mut rows, other) = j.finish().0;
        assert!(other.is_empty(), "{other:?}");
        rows.sort_by_key(|r| r.id);
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.source,
                    r.op,
                    r.offset.map(|o| o.0),
                    r.bytes,
                    r.host_ios,
                    r.partial,
                )
            })
            .collect();
        (rows, got)
    };

    let mut j = Join::new(&layout, All::default(), cfg);
    j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
    j.event(&pdiscard(1_100, 0x10_0000, 0x1_0000, 0xb5));
    j.event(&pdiscard(1_200, 0x5_0000, 0x1_0000, 0xf1));
    j.event(&job(1_300, 0xe1, 0x5_0000, 0x1_0000));
    j.event(&q(1_400, q::VIRTIO_HANDLE_REQUEST, [0xd2, 0, 0, 0]));
    j.event(&pdiscard(1_500, 0x20_0000, 0x2000, 0xb5));
    j.event(&sys(2_000, EventKind::SysEnter, [8, 0x5_0000, 0x1_0000, 3]));
    j.event(&sys(3_000, EventKind::SysExit, [0; 4]));
    j.event(&q(4_000, q::VIRTIO_REQ_COMPLETE, [0xd2, 0, 11, 16]));
    j.event(&q(6_500, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 11, 16]));
    let (rows, got) = summary(j);
    assert_eq!(
        got,
        [
            (Source::Virtio, Op::Discard, Some(0x10_0000), 0x1_0000, 1, 0),
            (Source::Virtio, Op::Discard, Some(0x20_0000), 0x2000, 0, 0),
        ],
        "{rows:?}"
    );
    assert_eq!(
        rows[0].b.as_array()[1..9],
        [1_000, 2_000, 0, 0, 0, 3_000, 0, 6_500]
    );

    let mut j = Join::new(&layout, All::default(), cfg);
    for (t, key, off, len) in [
        (1_000, 0xe1, 0x1_0000, 0x1_0000),
        (2_000, 0xe2, 0, 0x2_0000),
    ] {
        j.event(&pdiscard(t, off, len, 0xb5));
        // The raw driver passes it to its file at the same range.
        j.event(&pdiscard(t + 50, off, len, 0xf1));
        j.event(&job(t + 100, key, off, len));
        j.event(&sys(t + 200, EventKind::SysEnter, [8, off, len, 3]));
        j.event(&sys(t + 800, EventKind::SysExit, [0; 4]));
    }
    let (rows, got) = summary(j);
    assert_eq!(
        got,
        [
            (
                Source::QemuBlock,
                Op::Discard,
                Some(0x1_0000),
                0x1_0000,
                1,
                0
            ),
            (Source::QemuBlock, Op::Discard, Some(0), 0x2_0000, 1, 0),
        ],
        "{rows:?}"
    );
    assert_eq!(
        rows[0].b.as_array()[1..8],
        [1_000, 1_200, 0, 0, 0, 1_800, 0]
    );
    assert_eq!(
        rows[1].b.as_array()[1..8],
        [2_000, 2_200, 0, 0, 0, 2_800, 0]
    );
}

/// A guest write through qcow2 completes and waits for its interrupt; meanwhile its
/// VirtIOBlockReq comes back for a discard, whose way through qcow2 has no probe:
/// the refcount block qcow2 then looks up and reads is the discard's metadata, not
/// the finished write's (whose qcow2 probe was the thread's last).
#[test]
fn metadata_io_after_a_request_completed_is_not_that_requests() {
    let layout = Layout::default();
    let mut j = answered_write_after_a_cache_hit(&layout);
    let q = |ts, tid, sub, a| sub_ev(ts, tid, EventKind::Qemu, sub, a);
    // The discard, before the write's interrupt.
    j.event(&q(4_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
    j.event(&q(
        4_100,
        1,
        q::QCOW2_CACHE_GET,
        [0xcac4e, 0x2_0000, 0, 0xb5],
    ));
    j.event(&q(
        4_200,
        1,
        q::BDRV_CO_PREADV_PART,
        [0x7f, 0x2_0000, 0x1_0000, 0xf1],
    ));
    j.event(&q(4_300, 1, q::RAW_CO_PRW, [0x7f, 0x2_0000, 0x1_0000, 1]));
    let job = 8 << 32 | q::AIO_READ;
    j.event(&q(
        4_400,
        1,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xa2, 0x2_0000, 0x1_0000, job],
    ));
    pool_worker(&mut j, 4_500, 0xa2, 1, 8);
    j.event(&ev(5_500, 0, EventKind::KvmMsi, [0; 4]));
    j.event(&q(6_000, 1, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 11, 16]));
    j.event(&ev(6_100, 0, EventKind::KvmMsi, [0; 4]));
    let All(rows, other) = j.finish().0;
    let (w, d) = (row_of(&rows, Op::Write), row_of(&rows, Op::Discard));
    assert_eq!((w.host_ios, w.meta_ios, w.partial), (1, 0, 0), "{w:?}");
    assert_eq!((d.host_ios, d.meta_ios, d.partial), (0, 1, 0), "{d:?}");
    // The worker's read of the block: 4_600 to 5_000.
    assert_eq!(d.meta_ns, 400, "{d:?}");
    assert!(other.is_empty(), "{other:?}");
}

/// A guest write finds its L2 table in qcow2's cache and completes; a flush then
/// writes that table back, on the same thread, before the write's interrupt. The
/// table's offset matches the write's last cache lookup, but the write-back is the
/// flush's metadata IO: the answered write takes none (seen on a real guest, where
/// the write stayed open for that IO and was reported partial).
#[test]
fn a_table_written_back_after_its_lookup_is_not_the_answered_requests() {
    let layout = Layout::default();
    let mut j = answered_write_after_a_cache_hit(&layout);
    let q = |ts, tid, sub, a| sub_ev(ts, tid, EventKind::Qemu, sub, a);
    let (job, table) = (8 << 32 | q::AIO_WRITE, 0x1_0000);
    // The flush writes the dirty table out.
    j.event(&q(4_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xd2, 0, 0, 0]));
    j.event(&q(
        4_100,
        1,
        q::BDRV_CO_PWRITEV_PART,
        [0x7e, table, 0x1_0000, 0xf1],
    ));
    j.event(&q(4_200, 1, q::RAW_CO_PRW, [0x7e, table, 0x1_0000, 2]));
    j.event(&q(
        4_300,
        1,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xa2, table, 0x1_0000, job],
    ));
    pool_worker(&mut j, 4_400, 0xa2, 2, 8);
    j.event(&ev(5_500, 0, EventKind::KvmMsi, [0; 4]));
    // Type 4: flush.
    j.event(&q(6_000, 1, q::VIRTIO_REQ_COMPLETE, [0xd2, 0, 4, 0]));
    j.event(&ev(6_100, 0, EventKind::KvmMsi, [0; 4]));
    let All(rows, other) = j.finish().0;
    let (w, f) = (row_of(&rows, Op::Write), row_of(&rows, Op::Flush));
    assert_eq!((w.host_ios, w.meta_ios, w.partial), (1, 0, 0), "{w:?}");
    assert_eq!((f.meta_ios, f.partial), (1, 0), "{f:?}");
    // The worker's write of the table: 4_500 to 4_900.
    assert_eq!(f.meta_ns, 400, "{f:?}");
    assert!(other.is_empty(), "{other:?}");
}

#[test]
fn a_request_is_given_the_disk_whose_file_the_kernel_named() {
    // Two disks: a.qcow2 over base.qcow2 and b.qcow2 over the same base, their
    // drives' root BdrvChild 0xca and 0xcb. A request whose IO went to a.qcow2 or
    // b.qcow2 is that disk's; one that read only the shared base, or whose file was
    // never named (no direct IO seen), is its drive's disk if an earlier request
    // of that drive named it, else unknown.
    let file = |name: &str, ino: u64, part_byte: u64| {
        serde_json::json!({
            "file": name, "len": 1u64 << 30, "ino": ino,
            "host": [{"offset": 0, "len": 1u64 << 30, "hops": [
                {"hop": "device", "device": "/dev/sda1", "dev": "8:1", "byte": part_byte, "via": "filesystem"}
            ]}]
        })
    };
    let base = || file("/vm/base.qcow2", 13, 3 << 30);
    let layout = Layout::from_json(&serde_json::json!({
        "images": [
            {"path": "/vm/a.qcow2", "file_hosts": [file("/vm/a.qcow2", 11, 1 << 30), base()]},
            {"path": "/vm/b.qcow2", "file_hosts": [file("/vm/b.qcow2", 12, 2 << 30), base()]}
        ],
        "devices": []
    }));
    assert_eq!(layout.disks.len(), 2);
    let mut j = Join::new(&layout, Rows::default(), JoinConfig::default());
    let cases = [
        // Drive 0xcc, not seen before, reads only the base.
        (Some(13), 0xcc, None),
        (Some(11), 0xca, Some(0)),
        (Some(12), 0xcb, Some(1)),
        (Some(13), 0xca, Some(0)),
        (None, 0xcb, Some(1)),
        // An inode no image file has (another filesystem's file) names nothing.
        (Some(99), 0xcd, None),
    ];
    for (n, (ino, child, _)) in cases.iter().enumerate() {
        let t0 = 1_000_000 * (n as u64 + 1);
        qemu_io_aio_read_on(&mut j, n as u64, t0, Some(40_000), *ino, *child);
    }
    let (Rows(rows), _) = j.finish();
    let got: Vec<_> = cases
        .iter()
        .zip(&rows)
        .map(|(&(ino, child, _), r)| (ino, child, r.disk))
        .collect();
    let want = cases.to_vec();
    assert_eq!(rows.len(), cases.len());
    assert_eq!(got, want);
    assert_eq!(layout.disk_name(1), "/vm/b.qcow2");

    // One disk: every request is its, named or not.
    let one = Layout::from_json(&serde_json::json!({
        "images": [{"path": "/vm/a.qcow2", "file_hosts": [file("/vm/a.qcow2", 11, 1 << 30)]}],
        "devices": []
    }));
    let mut j = Join::new(&one, Rows::default(), JoinConfig::default());
    qemu_io_aio_read_of(&mut j, 0, 1_000_000, Some(40_000), None);
    let (Rows(rows), _) = j.finish();
    assert_eq!(rows.iter().map(|r| r.disk).collect::<Vec<_>>(), [Some(0)]);
    // No layout: no disk.
    let none = Layout::default();
    let mut j = Join::new(&none, Rows::default(), JoinConfig::default());
    qemu_io_aio_read_of(&mut j, 0, 1_000_000, Some(40_000), Some(11));
    let (Rows(rows), _) = j.finish();
    assert_eq!(rows.iter().map(|r| r.disk).collect::<Vec<_>>(), [None]);
}

/// A guest's discard that frees nothing in a file has no host IO to name its disk:
/// its drive's root BdrvChild (its `bdrv_co_pdiscard`'s) does, learnt from an
/// earlier request of that drive whose host IO named the disk. A drive never seen
/// with host IO leaves it unknown.
#[test]
fn a_discard_without_host_io_gets_its_drives_disk() {
    let layout = two_disks();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    // Drive 0xcb reads b.qcow2 (inode 12).
    qemu_io_aio_read_on(&mut j, 0, 1_000_000, Some(40_000), Some(12), 0xcb);
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    for (t, req, child) in [(2_000_000, 0xd1, 0xcb), (3_000_000, 0xd2, 0xca)] {
        j.event(&q(t, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
        j.event(&q(
            t + 100,
            q::BDRV_CO_PDISCARD,
            [0, 0x10_0000, 0x1_0000, child],
        ));
        j.event(&q(t + 900, q::VIRTIO_REQ_COMPLETE, [req, 0, 11, 16]));
    }
    let (All(rows, _), _) = j.finish();
    let got: Vec<_> = rows.iter().map(|r| (r.op, r.host_ios, r.disk)).collect();
    assert_eq!(
        got,
        [
            (Op::Read, 1, Some(1)),
            (Op::Discard, 0, Some(1)),
            (Op::Discard, 0, None)
        ],
        "{rows:?}"
    );
}

#[test]
fn a_qemu_io_aio_request_ends_at_its_completion_callback() {
    // The row runs to the callback, and is reported then, not when it goes idle.
    let layout = Layout::default();
    let mut j = Join::new(&layout, Rows::default(), JoinConfig::default());
    let (_, _, _, off, len) = QEMU_IO_READ;
    let read = qemu_io_aio_read::<Rows>;
    read(&mut j, 0, 1_000_000, Some(31_000));
    assert_eq!(j.sink.0.len(), 1, "reported at the callback");
    let row = &j.sink.0[0];
    assert_eq!(
        (row.offset, row.bytes, row.partial),
        (Some(GuestOffset(off)), len, 0)
    );
    assert_eq!(row.b.as_array()[1], 1_000_000);
    assert_eq!(
        row.b.as_array()[6],
        1_025_000,
        "host_done: the worker's pread returned"
    );
    assert_eq!(row.b.as_array()[7], 1_031_000, "qemu_done: the callback");
    let (layers, e2e) = crate::layers::split(&row.b);
    assert_eq!(e2e, 31_000);
    assert_eq!(layers.iter().flatten().sum::<u64>(), e2e);
    // The context comes back for the next request: a new row. Without a callback
    // (probe not attached) it ends at host_done as before.
    read(&mut j, 0, 2_000_000, None);
    let (sink, _) = j.finish();
    assert_eq!(sink.0.len(), 2);
    assert_eq!(
        (sink.0[1].b.as_array()[6], sink.0[1].b.as_array()[7]),
        (2_025_000, 0)
    );
    assert_eq!(crate::layers::split(&sink.0[1].b).1, 25_000);
}

/// Two adjacent guest reads merged by virtio-blk into one block request: each row has
/// the guest's own range (its header's sector and its own size), so their bytes add up
/// to what the guest asked for, and the second shares the first's path.
#[test]
fn virtio_merged_requests_each_keep_their_own_bytes() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xa1, 0, 0, 0]));
    j.event(&q(1_100, q::VIRTIO_HANDLE_REQUEST, [0xa2, 0, 0, 0]));
    j.event(&q(1_200, q::VIRTIO_SUBMIT_MULTIREQ, [0x5, 2, 0xa1, 0]));
    // One block request for both: 8 KiB at the first's sector.
    j.event(&q(1_300, q::BLK_AIO_PREADV, [0xa1, 8 * 512, 8192, 0xbb]));
    j.event(&q(
        1_400,
        q::BDRV_CO_PREADV_PART,
        [0xa1 + 0x98, 8 * 512, 8192, 0xc1],
    ));
    j.event(&q(1_500, q::RAW_CO_PRW, [0xa1 + 0x98, 0x9000, 8192, 1]));
    j.event(&sub_ev(
        1_600,
        2,
        EventKind::SysEnter,
        1,
        [9, 0x9000, 8192, 0],
    ));
    j.event(&q(
        1_550,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0x9000, 8192, 9 << 32 | 1],
    ));
    j.event(&sub_ev(9_000, 2, EventKind::SysExit, 1, [8192, 0, 0, 0]));
    j.event(&q(9_500, q::VIRTIO_RW_COMPLETE, [0xa1, 0, 0, 0]));
    // Header: sector 8 and 16, type read (0); own sizes 4 KiB each.
    j.event(&q(9_600, q::VIRTIO_REQ_COMPLETE, [0xa1, 8, 0, 4096]));
    j.event(&q(9_700, q::VIRTIO_REQ_COMPLETE, [0xa2, 16, 0, 4096]));
    let (all, _) = j.finish();
    let rows: Vec<&IoRow> = all
        .0
        .iter()
        .filter(|r| r.source == Source::Virtio)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let ranges: Vec<(Option<u64>, u64)> = rows
        .iter()
        .map(|r| (r.offset.map(|o| o.0), r.bytes))
        .collect();
    assert_eq!(ranges, [(Some(4096), 4096), (Some(8192), 4096)]);
    assert_eq!(rows[1].merged_into, Some(rows[0].id));
}

/// qcow2 allocating a cluster for a write that covers part of it zeroes the rest: a
/// bufferless write on the image file at a host offset, then a thread-pool write of
/// zeroes there. That is the write's metadata IO, not a write of zeroes of its own,
/// and not the next guest request's (a read popped meanwhile, nothing below it yet).
#[test]
fn qcow2_zeroing_is_the_allocating_writes_metadata_io() {
    let layout = Layout::default();
    let cfg = JoinConfig {
        falloc_syscalls: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    let (w, wq) = (0xa1, 0xa1 + 0x98);
    j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [w, 0, 0, 0]));
    j.event(&q(1_010, q::VIRTIO_HANDLE_REQUEST, [0xa2, 0, 0, 0]));
    j.event(&q(1_100, q::BLK_AIO_PWRITEV, [w, 0x10_0000, 4096, 0xbb]));
    j.event(&q(
        1_200,
        q::BDRV_CO_PWRITEV_PART,
        [wq, 0x10_0000, 4096, 0xc1],
    ));
    j.event(&q(
        1_300,
        q::QCOW2_CO_PWRITEV_PART,
        [wq, 0x10_0000, 4096, 0xd1],
    ));
    // The zeroing of the cluster's other 60 KiB, on the file child.
    j.event(&q(
        1_400,
        q::BDRV_CO_PWRITEV_PART,
        [0, 0x42_1000, 0xf000, 0xc2],
    ));
    j.event(&q(
        1_500,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0x42_1000, 0xf000, 9 << 32 | 0x20],
    ));
    j.event(&sub_ev(
        1_600,
        2,
        EventKind::SysEnter,
        13,
        [9, 0x42_1000, 0xf000, 0x10],
    ));
    j.event(&sub_ev(2_000, 2, EventKind::SysExit, 13, [0, 0, 0, 0]));
    // The data.
    j.event(&q(
        2_100,
        q::BDRV_CO_PWRITEV_PART,
        [wq, 0x42_0000, 4096, 0xc2],
    ));
    j.event(&q(2_200, q::RAW_CO_PRW, [wq, 0x42_0000, 4096, 2]));
    j.event(&q(
        2_300,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe2, 0x42_0000, 4096, 9 << 32 | 2],
    ));
    j.event(&q(
        2_400,
        q::HANDLE_AIOCB_RW,
        [0xe2, 0x42_0000, 4096, 9 << 32 | 2],
    ));
    j.event(&sub_ev(
        2_500,
        3,
        EventKind::SysEnter,
        2,
        [9, 0x42_0000, 4096, 0],
    ));
    j.event(&sub_ev(3_000, 3, EventKind::SysExit, 2, [4096, 0, 0, 0]));
    // The read.
    j.event(&q(3_100, q::BLK_AIO_PREADV, [0xa2, 0x20_0000, 4096, 0xbb]));
    j.event(&q(3_200, q::VIRTIO_RW_COMPLETE, [w, 0, 0, 0]));
    j.event(&q(3_300, q::VIRTIO_REQ_COMPLETE, [w, 0x800, 1, 4096]));
    let (all, _) = j.finish();
    let write = all
        .0
        .iter()
        .find(|r| r.op == Op::Write)
        .unwrap_or_else(|| panic!("{:?}", all.0));
    assert_eq!(write.meta_ios, 1, "{write:?}");
    assert_eq!(write.meta_ns, 400, "{write:?}");
    assert!(all.0.iter().all(|r| r.op != Op::WriteZeroes), "{:?}", all.0);
    let read = all
        .0
        .iter()
        .find(|r| r.op == Op::Read)
        .unwrap_or_else(|| panic!("{:?}", all.0));
    assert_eq!(
        (read.offset, read.bytes),
        (Some(GuestOffset(0x20_0000)), 4096)
    );
}

/// Throttled requests: virtio-blk announces three reads; the first two enter the
/// throttle and wait while the thread goes on; their first calls below the backend
/// come later, in another order. Each binds to its own request by range, with its wait.
#[test]
fn throttled_requests_bind_to_their_own_rows_with_their_wait() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    for (n, t) in [(0u64, 1_000u64), (1, 1_100), (2, 1_200)] {
        let req = 0xa0 + n * 0x100;
        j.event(&q(t, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
        j.event(&q(
            t + 10,
            q::BLK_AIO_PREADV,
            [req, n * 0x1_0000, 4096, 0xbb],
        ));
        if n < 2 {
            j.event(&q(t + 20, q::THROTTLE_INTERCEPT, [0x7, 4096, 0, 0]));
        }
    }
    // Released: the second, then the first; the third never waited.
    j.event(&q(
        1_220,
        q::BDRV_CO_PREADV_PART,
        [0x2a0 + 0x98, 0x2_0000, 4096, 0xc1],
    ));
    j.event(&q(
        5_000,
        q::BDRV_CO_PREADV_PART,
        [0x1a0 + 0x98, 0x1_0000, 4096, 0xc1],
    ));
    j.event(&q(
        9_000,
        q::BDRV_CO_PREADV_PART,
        [0xa0 + 0x98, 0, 4096, 0xc1],
    ));
    for (n, t) in [(1u64, 10_000u64), (0, 10_100), (2, 10_200)] {
        let req = 0xa0 + n * 0x100;
        j.event(&q(t, q::VIRTIO_RW_COMPLETE, [req, 0, 0, 0]));
        j.event(&q(t + 10, q::VIRTIO_REQ_COMPLETE, [req, n * 0x80, 0, 4096]));
    }
    let (all, _) = j.finish();
    assert!(
        all.0.iter().all(|r| r.source == Source::Virtio),
        "{:?}",
        all.0
    );
    let mut waits: Vec<(u64, u64)> = all
        .0
        .iter()
        .map(|r| (r.offset.unwrap().0, r.throttle_ns))
        .collect();
    waits.sort();
    assert_eq!(
        waits,
        [(0, 9_000 - 1_020), (0x1_0000, 5_000 - 1_120), (0x2_0000, 0)]
    );
}

/// Attached to a busy VM: a request whose start came before the probes. Its host half
/// looked like QEMU's own request (nothing announced it); its completion makes it the
/// guest's row, partial for that reason, counted. One with nothing traced but its end
/// is a row too.
#[test]
fn a_request_cut_by_the_recordings_start_is_counted_not_dropped() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    // Its host half: a block call on a qiov never announced.
    j.event(&q(
        1_000,
        q::BDRV_CO_PREADV_PART,
        [0x5a0 + 0x98, 0x3000, 8192, 0xc1],
    ));
    j.event(&q(1_100, q::RAW_CO_PRW, [0x5a0 + 0x98, 0x9_3000, 8192, 1]));
    j.event(&q(
        1_200,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0x9_3000, 8192, 9 << 32 | 1],
    ));
    j.event(&q(1_300, q::VIRTIO_RW_COMPLETE, [0x5a0, 0, 0, 0]));
    // Its completion: sector 0x18 (0x3000), a read of 8 KiB.
    j.event(&q(1_400, q::VIRTIO_REQ_COMPLETE, [0x5a0, 0x18, 0, 8192]));
    // Another with only its end: a write.
    j.event(&q(1_500, q::VIRTIO_REQ_COMPLETE, [0x6a0, 0x40, 1, 4096]));
    let (all, stats) = j.finish();
    assert_eq!(stats.cut_at_start, 2);
    assert_eq!(all.0.len(), 2, "no row of QEMU's own: {:?}", all.0);
    for r in &all.0 {
        assert_eq!(r.source, Source::Virtio);
        assert_eq!(r.partial, reasons::CUT_AT_START, "{r:?}");
    }
    let read = row_of(&all.0, Op::Read);
    assert_eq!((read.offset, read.bytes), (Some(GuestOffset(0x3000)), 8192));
    let write = row_of(&all.0, Op::Write);
    assert_eq!(
        (write.offset, write.bytes),
        (Some(GuestOffset(0x8000)), 4096)
    );
    assert_eq!(write.b.as_array()[8], 1_500);
}

/// virtio-blk pops a read, then a flush: the read waits in its batch while the flush's
/// handler runs, and qcow2 writes its dirty tables back before the file's flush. That
/// table write is the flush's (a read writes no tables), and the read's own block call,
/// when its batch goes, is still the read's.
#[test]
fn a_flushs_table_write_back_is_not_the_waiting_reads() {
    let layout = Layout::default();
    let cfg = JoinConfig {
        flush_syscalls: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    let worker = |j: &mut Join<'_, All>, t: u64, job: u64, off: u64, len: u64, ty: u64| {
        j.event(&q(
            t,
            q::THREAD_POOL_SUBMIT_AIO,
            [job, off, len, 9 << 32 | ty],
        ));
        j.event(&q(
            t + 10,
            q::HANDLE_AIOCB_RW,
            [job, off, len, 9 << 32 | ty],
        ));
        j.event(&sub_ev(
            t + 20,
            2,
            EventKind::SysEnter,
            ty as u8,
            [9, off, len, 0],
        ));
        j.event(&sub_ev(
            t + 200,
            2,
            EventKind::SysExit,
            ty as u8,
            [len, 0, 0, 0],
        ));
    };
    // An earlier read through qcow2 teaches the file child (0xc2).
    let (r0, r0q) = (0x100, 0x100 + 0x98);
    j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [r0, 0, 0, 0]));
    j.event(&q(1_010, q::BLK_AIO_PREADV, [r0, 0x1000, 4096, 0xbb]));
    j.event(&q(1_020, q::BDRV_CO_PREADV_PART, [r0q, 0x1000, 4096, 0xc1]));
    j.event(&q(
        1_030,
        q::QCOW2_CO_PREADV_PART,
        [r0q, 0x1000, 4096, 0xd1],
    ));
    j.event(&q(
        1_040,
        q::BDRV_CO_PREADV_PART,
        [r0q, 0x9_1000, 4096, 0xc2],
    ));
    j.event(&q(1_050, q::RAW_CO_PRW, [r0q, 0x9_1000, 4096, 1]));
    worker(&mut j, 1_060, 0xe0, 0x9_1000, 4096, 1);
    // The read popped, then the flush, whose handler writes a table back.
    let (r, rq, f) = (0x200, 0x200 + 0x98, 0x300);
    j.event(&q(2_000, q::VIRTIO_HANDLE_REQUEST, [r, 0, 0, 0]));
    j.event(&q(2_100, q::VIRTIO_HANDLE_REQUEST, [f, 0, 0, 0]));
    j.event(&q(
        2_200,
        q::BDRV_CO_PWRITEV_PART,
        [0x777, 0x2_0000, 0x1_0000, 0xc2],
    ));
    j.event(&q(2_210, q::RAW_CO_PRW, [0x777, 0x2_0000, 0x1_0000, 2]));
    worker(&mut j, 2_220, 0xe1, 0x2_0000, 0x1_0000, 2);
    // The read's batch goes.
    j.event(&q(2_500, q::BLK_AIO_PREADV, [r, 0x5000, 4096, 0xbb]));
    j.event(&q(2_510, q::BDRV_CO_PREADV_PART, [rq, 0x5000, 4096, 0xc1]));
    j.event(&q(2_520, q::QCOW2_CO_PREADV_PART, [rq, 0x5000, 4096, 0xd1]));
    j.event(&q(
        2_530,
        q::BDRV_CO_PREADV_PART,
        [rq, 0x9_5000, 4096, 0xc2],
    ));
    j.event(&q(2_540, q::RAW_CO_PRW, [rq, 0x9_5000, 4096, 1]));
    worker(&mut j, 2_550, 0xe2, 0x9_5000, 4096, 1);
    // The flush's job.
    j.event(&q(
        3_000,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe3, 0, 0, 9 << 32 | q::AIO_FLUSH],
    ));
    j.event(&sub_ev(3_010, 2, EventKind::SysEnter, 11, [9, 0, 0, 0]));
    j.event(&sub_ev(3_500, 2, EventKind::SysExit, 11, [0, 0, 0, 0]));
    for (t, req, sector, ty, n) in [
        (1_500, r0, 8, 0, 4096),
        (4_000, r, 0x28, 0, 4096),
        (4_100, f, 0, 4, 0),
    ] {
        j.event(&q(t, q::VIRTIO_RW_COMPLETE, [req, 0, 0, 0]));
        j.event(&q(t + 5, q::VIRTIO_REQ_COMPLETE, [req, sector, ty, n]));
    }
    let (all, _) = j.finish();
    assert!(
        all.0.iter().all(|r| r.source == Source::Virtio),
        "{:?}",
        all.0
    );
    let read = all
        .0
        .iter()
        .find(|x| x.op == Op::Read && x.offset == Some(GuestOffset(0x5000)));
    let read = read.unwrap_or_else(|| panic!("{:?}", all.0));
    assert_eq!(
        (read.partial, read.host_ios, read.meta_ios),
        (0, 1, 0),
        "{read:?}"
    );
    let flush = row_of(&all.0, Op::Flush);
    assert_eq!((flush.meta_ios, flush.host_ios), (1, 1), "{flush:?}");
}

/// A qcow2 allocating write from qemu-io (no virtio): its table IO done, it waits
/// (under TCG, milliseconds) while the allocation of a write ahead of it finishes, and
/// its thread goes on with other requests meanwhile; its data IO comes after. With
/// qemu-io's completion callbacks probed, it is not over until its callback: its data
/// is its own, not the next request's metadata.
#[test]
fn a_caller_request_waits_for_its_callback_past_idle() {
    let layout = Layout::default();
    let cfg = JoinConfig {
        caller_callbacks: true,
        expect_qcow2: false,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let dev = u64::from(kernel_dev(259, 0)) << 32;
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    // One host IO through linux-aio: file-posix's request, its io_submit, the direct
    // IO and its block request, its completion.
    let host_io = |j: &mut Join<'_, All>, t: u64, qiov: u64, off: u64, n: u64, write: bool| {
        let (ty, op) = if write { (2, 1) } else { (1, 0) };
        let k = |dt, kind, a| ev(t + dt, 1, kind, a);
        j.event(&q(t, q::RAW_CO_PRW, [qiov, off, n, ty]));
        j.event(&q(
            t + 10,
            q::LAIO_CO_SUBMIT,
            [qiov, off, n, 0x4_0000_0000 | ty],
        ));
        j.event(&sub_ev(t + 20, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
        j.event(&k(30, EventKind::DioBegin, [0xd000 + off, off, n, 11]));
        let (bio, rq) = (0xb000 + off, 0x7000 + off);
        let mut queue = sub_ev(
            t + 40,
            1,
            EventKind::BioQueue,
            op,
            [bio, off / 512, dev | n, 0],
        );
        queue.sub = op;
        j.event(&queue);
        j.event(&sub_ev(
            t + 50,
            1,
            EventKind::RqIssue,
            op,
            [rq, off / 512, dev | n, bio],
        ));
        j.event(&sub_ev(t + 60, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
        j.event(&sub_ev(
            t + 400,
            0,
            EventKind::RqComplete,
            op,
            [rq, off / 512, dev | n, n],
        ));
        j.event(&ev(
            t + 410,
            0,
            EventKind::DioComplete,
            [0xd000 + off, n, 0, 0],
        ));
    };
    let (a, qa) = (0x5612_2a12_3de0, 0x5612_2a12_3de8);
    let (b, qb) = (0x5612_2a12_0f60, 0x5612_2a12_0f68);
    let top = 0x5612_2a12_39e0;
    let (qcow2_node, file_node) = (0x5612_2a10_6100, 0x5612_2a12_0db0);
    // Write A at guest 0: its refcount block read and written (metadata).
    j.event(&q(1_000_000, q::BLK_AIO_PWRITEV, [a, 0, 65536, top]));
    j.event(&q(
        1_000_100,
        q::BDRV_CO_PWRITEV_PART,
        [qa, 0, 65536, qcow2_node],
    ));
    j.event(&q(1_000_200, q::QCOW2_CO_PWRITEV_PART, [qa, 0, 65536, 0]));
    j.event(&q(
        1_000_300,
        q::BDRV_CO_PREADV_PART,
        [0x7f00_0770, 0x2_0000, 65536, file_node],
    ));
    host_io(&mut j, 1_000_400, 0x7f00_0770, 0x2_0000, 65536, false);
    j.event(&q(
        1_001_000,
        q::BDRV_CO_PWRITEV_PART,
        [0x7f00_07e0, 0x2_0000, 65536, file_node],
    ));
    host_io(&mut j, 1_001_100, 0x7f00_07e0, 0x2_0000, 65536, true);
    // Write B comes on the same thread and waits; the thread goes on for 5 ms (more
    // than IDLE_NS) before A's allocation is done.
    j.event(&q(
        1_002_000,
        q::BLK_AIO_PWRITEV,
        [b, 0x10_3000, 65536, top],
    ));
    j.event(&q(
        1_002_100,
        q::BDRV_CO_PWRITEV_PART,
        [qb, 0x10_3000, 65536, qcow2_node],
    ));
    j.event(&q(
        1_002_200,
        q::QCOW2_CO_PWRITEV_PART,
        [qb, 0x10_3000, 65536, 0],
    ));
    for t in (3..8).map(|ms| ms * 1_000_000) {
        j.event(&q(
            t,
            q::QCOW2_CACHE_GET,
            [0x5612_2a12_4000, 0x4_0000, 0, 0],
        ));
    }
    // A's data, at its new cluster, on its own buffer; then its callback.
    j.event(&q(
        8_000_000,
        q::BDRV_CO_PWRITEV_PART,
        [qa, 0x5_0000, 65536, file_node],
    ));
    host_io(&mut j, 8_000_100, qa, 0x5_0000, 65536, true);
    j.event(&q(8_001_000, q::QEMU_IO_AIO_WRITE_DONE, [a, 0, 0, 0]));
    let (all, _) = j.finish();
    let row = all
        .0
        .iter()
        .find(|r| r.offset == Some(GuestOffset(0)))
        .expect("A's row");
    assert_eq!(row.partial, 0, "{row:?}");
    assert_eq!((row.host_ios, row.meta_ios), (1, 2), "{row:?}");
    assert_eq!(
        row.b[crate::layers::Boundary::DeviceDone],
        8_000_500,
        "{row:?}"
    );
}
