use super::*;

#[test]
fn a_host_io_keeps_to_the_sectors_of_the_file_the_kernel_names() {
    // Direct IOs to the same offset of two image files at once (two disks of a VM):
    // QEMU's probes do not say which file, so each IO first covers both files'
    // sectors. Once the kernel's probe names the file, a bio queued at the second
    // file's sectors by a thread inside neither IO (a loop or dm worker) is the
    // second IO's. Without inode numbers it stays with the first registered.
    for with_inodes in [true, false] {
        let layout = two_file_layout(with_inodes);
        let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
        let (pos, len) = (0x20_0000, 4096);
        let mut both = DevRanges::new();
        layout.dev_ranges(0, HostFileOffset(pos), len, &mut both);
        // Per file: the partition, the partition at the disk's sector numbers (as
        // its bios are traced), the disk.
        assert_eq!(both.len(), 6, "{both:?}");
        j.event(&ev(1_000, 7, EventKind::DioBegin, [0x71, pos, len, 11]));
        j.event(&ev(1_100, 8, EventKind::DioBegin, [0x81, pos, len, 12]));
        let first = j.threads.get(7).and_then(|t| t.dio).expect("7's IO");
        let second = j.threads.get(8).and_then(|t| t.dio).expect("8's IO");
        let ranges = |h| j.hios.get(h).map(|x| x.ranges.len());
        assert_eq!(
            (ranges(first), ranges(second)),
            if with_inodes {
                (Some(3), Some(3))
            } else {
                (Some(6), Some(6))
            }
        );
        // The second file's sectors on the disk: 2 GiB into the partition.
        let sda = kernel_dev(8, 0);
        let sector = ((2u64 << 30) + 2048 * 512 + pos) / 512;
        let dev_bytes = (u64::from(sda) << 32) | len;
        block_request(&mut j, 1_300, 99, 0xb8, 0x9008, sector, dev_bytes);
        let want = if with_inodes { second } else { first };
        assert_eq!(
            j.reqs.get(&0x9008).map(|r| r.owners.to_vec()),
            Some(vec![want]),
            "inode numbers known: {with_inodes}"
        );
    }
}

#[test]
fn linux_aio_direct_ios_pair_with_host_ios_in_submission_order() {
    // Two linux-aio requests at the same offset and length (two disks of a VM) are
    // submitted in one io_submit; the kernel begins their direct IOs in that order.
    // The in-flight list's order is shuffled when another IO leaves it first.
    let layout = Layout::default();
    let mut j = Join::new(&layout, Nothing, JoinConfig::default());
    let qemu = |ts: u64, sub: u8, a: [u64; 4]| RawEvent {
        sub,
        ..ev(ts, 5, EventKind::Qemu, a)
    };
    let (pos, len) = (0x20_0000u64, 4096u64);
    let mut made = Vec::new();
    for (i, off) in [0x90_0000, pos, pos].into_iter().enumerate() {
        let ts = 1_000 + i as u64 * 100;
        j.event(&qemu(ts, q::RAW_CO_PRW, [0x1000 + i as u64, off, len, 0]));
        j.event(&qemu(
            ts + 10,
            q::LAIO_CO_SUBMIT,
            [0x1000 + i as u64, off, len, 0],
        ));
        made.push(j.threads.get(5).and_then(|t| t.last_hio).expect("host IO"));
    }
    // The first (another offset) begins and completes: the list is now [3rd, 2nd].
    j.event(&ev(
        1_500,
        5,
        EventKind::DioBegin,
        [0xa0, 0x90_0000, len, 7],
    ));
    j.event(&ev(1_600, 5, EventKind::DioComplete, [0xa0, 0, 0, 0]));
    assert!(j.hios.get(made[0]).is_none());
    for (ts, kiocb) in [(1_700, 0xa1), (1_710, 0xa2)] {
        j.event(&ev(ts, 5, EventKind::DioBegin, [kiocb, pos, len, 7]));
    }
    assert_eq!(j.kiocb.get(&0xa1), Some(&made[1]));
    assert_eq!(j.kiocb.get(&0xa2), Some(&made[2]));
}

#[test]
fn a_guest_flush_is_followed_through_its_fdatasync_to_the_device_flush() {
    let all = guest_flush(true);
    let flush: Vec<&IoRow> = all.0.iter().filter(|r| r.op == Op::Flush).collect();
    assert_eq!(flush.len(), 1, "{:?}", all.0);
    let f = flush[0];
    assert_eq!(f.partial, 0, "{f:?}");
    assert_eq!(f.host_ios, 1);
    // parsed, fdatasync entered, metadata bio queued, its request issued, the flush
    // request done, fdatasync returned, completion pushed.
    assert_eq!(
        f.b.as_array()[1..9],
        [2_000, 3_000, 3_400, 3_600, 9_000, 9_500, 0, 9_900]
    );
    assert_eq!(f.requests, 2);
    assert_eq!(f.bottom_dev, kernel_dev(8, 0));
    let (l, e2e) = crate::layers::split(&f.b);
    assert_eq!(l.iter().flatten().sum::<u64>(), e2e);
    assert_eq!(l[4], Some(9_000 - 3_600), "device");
    // QEMU's own flush of fd 9: its fdatasync, from entry to return.
    let own: Vec<&OtherIo> = all
        .1
        .iter()
        .filter(|o| o.class == OtherClass::QemuInternal)
        .collect();
    assert_eq!(own.len(), 1, "{:?}", all.1);
    assert_eq!((own[0].start, own[0].end), (2_700, 9_600));
    // The read and the discard took nothing of it.
    for r in all.0.iter().filter(|r| r.op != Op::Flush) {
        assert_eq!(r.host_ios, 0, "{r:?}");
    }

    // aio=io_uring: QEMU's fsync SQE is the flush, from submission to its CQE.
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
    j.event(&q(1_500, q::LURING_CO_SUBMIT, [0, 0, 0, q::AIO_FLUSH]));
    j.event(&ev(1_800, 1, EventKind::UringSubmit, [0x5eed, 0, 0, 0]));
    j.event(&ev(7_000, 1, EventKind::UringComplete, [0x5eed, 0, 0, 0]));
    j.event(&q(7_400, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
    let (all, _) = j.finish();
    assert_eq!(all.0.len(), 1, "{:?}", all.0);
    assert_eq!(all.0[0].op, Op::Flush);
    assert_eq!(all.0[0].partial, 0);
    assert_eq!(
        all.0[0].b.as_array()[1..9],
        [1_000, 1_800, 0, 0, 0, 7_000, 0, 7_400]
    );
    assert!(all.1.is_empty(), "{:?}", all.1);

    // Without the fdatasync probes, the flush is QEMU's alone, and complete.
    let all = guest_flush(false);
    let f = all.0.iter().find(|r| r.op == Op::Flush).expect("flush row");
    assert_eq!(f.partial, 0, "{f:?}");
    assert_eq!(f.b.as_array()[2..8], [0; 6]);
    assert_eq!((f.b.as_array()[1], f.b.as_array()[8]), (2_000, 9_900));
}

/// A guest's discard with `aio=threads`: qcow2 passes it to the image file as a
/// thread-pool job (fd 8, 64 KiB at 64 KiB), which worker 3 runs as fallocate (punch
/// hole, mode 3). Worker 2's fallocate of fd 9, begun first, is no job's.
#[test]
fn a_guest_discard_is_followed_into_its_workers_fallocate() {
    let layout = Layout::default();
    let run = |falloc_syscalls: bool, offset: u64| {
        let cfg = JoinConfig {
            falloc_syscalls,
            ..JoinConfig::default()
        };
        let mut j = Join::new(&layout, All::default(), cfg);
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        let sys = |ts, tid, kind, a| sub_ev(ts, tid, kind, 13, a);
        j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
        let job = 8 << 32 | q::AIO_DISCARD;
        j.event(&q(
            1_500,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xe1, 0x1_0000, 0x1_0000, job],
        ));
        if falloc_syscalls {
            j.event(&sys(1_800, 2, EventKind::SysEnter, [9, 0, 4096, 0]));
            j.event(&sys(
                2_000,
                3,
                EventKind::SysEnter,
                [8, offset, 0x1_0000, 3],
            ));
            j.event(&sys(2_200, 2, EventKind::SysExit, [0, 0, 0, 0]));
            j.event(&sys(6_000, 3, EventKind::SysExit, [0, 0, 0, 0]));
        }
        // Type 11 (discard); its ranges are in the data, 16 bytes per range.
        j.event(&q(6_500, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 11, 16]));
        j.finish().0
    };
    let all = run(true, 0x1_0000);
    assert_eq!(all.0.len(), 1, "{:?}", all.0);
    let d = &all.0[0];
    assert_eq!((d.op, d.partial, d.host_ios), (Op::Discard, 0, 1), "{d:?}");
    // Its range is in its data, not read: none is made up from the header.
    assert_eq!((d.offset, d.bytes), (None, 0), "{d:?}");
    // parsed, fallocate entered and returned, completion pushed: the fallocate is
    // host_fs.
    assert_eq!(
        d.b.as_array()[1..9],
        [1_000, 2_000, 0, 0, 0, 6_000, 0, 6_500]
    );
    assert_eq!(
        all.1
            .iter()
            .map(|o| (o.class, o.start, o.end, o.bytes))
            .collect::<Vec<_>>(),
        [(OtherClass::QemuSyscall, 1_800, 2_200, 4096)]
    );
    // Without the probes, QEMU's alone, and complete; the same where the worker's
    // fallocate is not the job's (its range differs): that one is QEMU's own.
    for (falloc, offset) in [(false, 0), (true, 0x2_0000)] {
        let all = run(falloc, offset);
        let d = &all.0[0];
        assert_eq!((d.op, d.partial, d.host_ios), (Op::Discard, 0, 0), "{d:?}");
        assert_eq!(d.b.as_array()[2..8], [0; 6]);
        assert_eq!(all.1.len(), if falloc { 2 } else { 0 }, "{:?}", all.1);
    }
}

/// A write of zeroes on a filesystem that refuses `FALLOC_FL_ZERO_RANGE` (tmpfs):
/// QEMU's block layer passes it down without a buffer (a null qiov) through the raw
/// driver to the file, and the worker's fallocate is refused (-EOPNOTSUPP) and
/// retried on the same range as a punched hole, then an allocation. One row, whose
/// host part runs from the first call's entry to the last one's return; no second
/// row for the bufferless block request; the worker's next fallocate, of another
/// range, is QEMU's own. From a guest (virtio) and from qemu-io (no virtio).
#[test]
fn a_write_of_zeroes_retried_in_other_modes_is_one_host_part() {
    let layout = Layout::default();
    let run = |virtio: bool| {
        let cfg = JoinConfig {
            falloc_syscalls: true,
            ..JoinConfig::default()
        };
        let mut j = Join::new(&layout, All::default(), cfg);
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        let sys = |ts, kind, a| sub_ev(ts, 3, kind, 13, a);
        if virtio {
            j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
        }
        let at = [0, 0x1_0000, 0x1_0000];
        j.event(&q(
            1_100,
            q::BDRV_CO_PWRITEV_PART,
            [at[0], at[1], at[2], 0xb5],
        ));
        j.event(&q(
            1_200,
            q::BDRV_CO_PWRITEV_PART,
            [at[0], at[1], at[2], 0xf1],
        ));
        let job = 8 << 32 | q::AIO_WRITE_ZEROES;
        j.event(&q(
            1_500,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xe1, at[1], at[2], job],
        ));
        let call = |mode| [8, at[1], at[2], mode];
        j.event(&sys(2_000, EventKind::SysEnter, call(0x10)));
        j.event(&sys(2_100, EventKind::SysExit, [-95i64 as u64, 0, 0, 0]));
        j.event(&sys(2_300, EventKind::SysEnter, call(3)));
        j.event(&sys(3_000, EventKind::SysExit, [0; 4]));
        j.event(&sys(3_200, EventKind::SysEnter, call(0)));
        j.event(&sys(4_000, EventKind::SysExit, [0; 4]));
        j.event(&sys(4_500, EventKind::SysEnter, [8, 0x3_0000, 0x1_0000, 3]));
        j.event(&sys(4_600, EventKind::SysExit, [0; 4]));
        if virtio {
            // Type 13 (write zeroes), one 16-byte range.
            j.event(&q(6_500, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 13, 16]));
        }
        j.finish().0
    };
    for virtio in [true, false] {
        let All(rows, other) = run(virtio);
        assert_eq!(rows.len(), 1, "virtio {virtio}: {rows:?}");
        let r = &rows[0];
        assert_eq!(
            (r.op, r.partial, r.host_ios, r.flags),
            (Op::WriteZeroes, 0, 1, 0),
            "{r:?}"
        );
        let (start, done) = if virtio { (1_000, 6_500) } else { (1_100, 0) };
        assert_eq!(
            r.b.as_array()[1..9],
            [start, 2_000, 0, 0, 0, 4_000, 0, done],
            "{r:?}"
        );
        if !virtio {
            assert_eq!((r.offset, r.bytes), (Some(GuestOffset(0x1_0000)), 0x1_0000));
        }
        assert_eq!(
            other
                .iter()
                .map(|o| (o.class, o.start, o.end, o.bytes))
                .collect::<Vec<_>>(),
            [(OtherClass::QemuSyscall, 4_500, 4_600, 0x1_0000)],
            "virtio {virtio}"
        );
    }
}

/// A flush's or discard's thread-pool job names only a file descriptor: its disk is
/// that of the file an earlier job of the descriptor read, as the kernel named it.
#[test]
fn a_job_of_a_descriptor_gets_the_disk_of_the_file_it_opened() {
    let layout = two_disks();
    let cfg = JoinConfig {
        flush_syscalls: true,
        falloc_syscalls: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    // QEMU reads 4 KiB of b.qcow2 (fd 7) at start-up: worker 3, direct IO.
    let read = 7 << 32 | q::AIO_READ;
    j.event(&q(1_000, q::THREAD_POOL_SUBMIT_AIO, [0xe0, 0, 4096, read]));
    j.event(&sub_ev(
        1_100,
        3,
        EventKind::Qemu,
        q::HANDLE_AIOCB_RW,
        [0xe0, 0, 4096, read],
    ));
    j.event(&sub_ev(1_200, 3, EventKind::SysEnter, 1, [7, 0, 4096, 0]));
    j.event(&ev(1_300, 3, EventKind::DioBegin, [0xd0, 0, 4096, 12]));
    let sector = (12u64 << 30) / 512;
    j.event(&ev(
        1_400,
        3,
        EventKind::BioQueue,
        [0xb0, sector, dev | 4096, 0],
    ));
    j.event(&ev(
        1_500,
        3,
        EventKind::RqIssue,
        [0x70, sector, dev | 4096, 0xb0],
    ));
    j.event(&ev(
        1_900,
        0,
        EventKind::RqComplete,
        [0x70, sector, dev | 4096, 4096],
    ));
    j.event(&sub_ev(2_000, 3, EventKind::SysExit, 1, [4096, 0, 0, 0]));
    // Then the guest's flush and discard of that disk.
    for (t, req, job, virtio_type) in [
        (10_000, 0xf1, q::AIO_FLUSH, 4),
        (20_000, 0xd1, q::AIO_DISCARD, 11),
    ] {
        j.event(&q(t, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
        j.event(&q(
            t + 100,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xe1, 0, 0, 7 << 32 | job],
        ));
        let sc = if job == q::AIO_FLUSH { 11 } else { 13 };
        j.event(&sub_ev(t + 200, 3, EventKind::SysEnter, sc, [7, 0, 0, 0]));
        j.event(&sub_ev(t + 900, 3, EventKind::SysExit, sc, [0, 0, 0, 0]));
        j.event(&q(
            t + 1_000,
            q::VIRTIO_REQ_COMPLETE,
            [req, 0, virtio_type, 0],
        ));
    }
    let (all, _) = j.finish();
    for op in [Op::Flush, Op::Discard] {
        let r = all.0.iter().find(|r| r.op == op).expect("row");
        assert_eq!((r.host_ios, r.partial), (1, 0), "{r:?}");
        assert_eq!(r.disk, Some(1), "{r:?}");
    }
}

/// A guest's flush with `aio=native` on iothread 1: linux-aio hands the fsync to a
/// kernel worker (thread 51), outside QEMU, which queues a flush bio; the block
/// layer's flush request follows. Another process's fsync (inode 99, worker 50)
/// comes first. The VM has two disks, each one image file (inodes 11 and 12).
#[test]
fn a_linux_aio_flush_is_followed_into_the_kernel_workers_fsync() {
    let layout = two_disks();
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let run = |fs_sync: bool, sync_shown: bool| {
        let cfg = JoinConfig {
            fs_sync,
            ..JoinConfig::default()
        };
        let mut j = Join::new(&layout, All::default(), cfg);
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        let sync =
            |ts, tid, sub, ino| sub_ev(ts, tid, EventKind::FsSync, sub, [ino, 8 << 20, 1, 0]);
        j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
        j.event(&q(1_100, q::LAIO_CO_SUBMIT, [0, 0, 0, q::AIO_FLUSH]));
        j.event(&sub_ev(1_200, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
        j.event(&sub_ev(1_300, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
        j.event(&sync(1_400, 50, 0, 99));
        j.event(&sync(1_500, 50, 1, 99));
        if sync_shown {
            j.event(&sync(2_000, 51, 0, 11));
        }
        worker_flushes_device(&mut j, dev);
        if sync_shown {
            j.event(&sync(5_200, 51, 1, 11));
        }
        j.event(&q(5_600, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
        let (all, _) = j.finish();
        let f = all
            .0
            .iter()
            .find(|r| r.op == Op::Flush)
            .expect("flush row")
            .clone();
        (f, all.1)
    };
    let (f, others) = run(true, true);
    assert_eq!(f.partial, 0, "{f:?}");
    assert_eq!(f.host_ios, 1);
    // parsed, io_submit entered, the flush bio queued, the flush request issued and
    // done, the kernel worker's fsync returned, completion pushed.
    assert_eq!(
        f.b.as_array()[1..9],
        [1_000, 1_200, 2_100, 2_200, 5_000, 5_200, 0, 5_600]
    );
    // The file the kernel synced names the disk; its flush request, the device.
    assert_eq!(f.disk, Some(0));
    assert_eq!(f.bottom_dev, kernel_dev(8, 0));
    // Neither the other process's fsync nor the flush bio is other IO.
    assert!(others.is_empty(), "{others:?}");

    // A filesystem without the probed tracepoint: nothing of the flush is seen in
    // the kernel. QEMU's alone, complete, as without the probes.
    for (fs_sync, sync_shown) in [(true, false), (false, false)] {
        let (f, _) = run(fs_sync, sync_shown);
        assert_eq!(f.partial, 0, "{f:?}");
        assert_eq!(f.host_ios, 0, "{f:?}");
        assert_eq!(f.b.as_array()[2..8], [0; 6], "{f:?}");
        assert_eq!((f.b.as_array()[1], f.b.as_array()[8]), (1_000, 5_600));
    }
}

/// A linux-aio flush on a filesystem without fsync tracepoints of its own: the kernel
/// worker's work item (its start names the file) begins and ends it. Another
/// process's linux-aio fsync (inode 99) runs first and is not the VM's. With ext4's
/// events inside the work item as well, the fsync's own return is the host end.
#[test]
fn a_linux_aio_flush_on_any_filesystem_ends_with_its_work_item() {
    let layout = two_disks();
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let run = |ext4: bool| {
        let cfg = JoinConfig {
            fs_sync: ext4,
            aio_fsync: true,
            ..JoinConfig::default()
        };
        let mut j = Join::new(&layout, All::default(), cfg);
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        let sync = |ts, tid, sub, ino, work| {
            sub_ev(ts, tid, EventKind::FsSync, sub, [ino, 8 << 20, 1, work])
        };
        j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
        j.event(&q(1_100, q::LAIO_CO_SUBMIT, [0, 0, 0, q::AIO_FLUSH]));
        j.event(&sub_ev(1_200, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
        j.event(&sub_ev(1_300, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
        j.event(&sync(1_400, 50, 2, 99, 0x990));
        j.event(&sync(1_500, 50, 3, 0, 0x990));
        j.event(&sync(2_000, 51, 2, 11, 0x110));
        if ext4 {
            j.event(&sync(2_050, 51, 0, 11, 0));
        }
        worker_flushes_device(&mut j, dev);
        if ext4 {
            j.event(&sync(5_200, 51, 1, 11, 0));
        }
        j.event(&sync(5_300, 51, 3, 0, 0x110));
        j.event(&q(5_600, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
        let (all, _) = j.finish();
        let f = all
            .0
            .iter()
            .find(|r| r.op == Op::Flush)
            .expect("flush")
            .clone();
        assert!(all.1.is_empty(), "{:?}", all.1);
        f
    };
    let f = run(false);
    assert_eq!((f.partial, f.host_ios), (0, 1), "{f:?}");
    assert_eq!(
        f.b.as_array()[1..9],
        [1_000, 1_200, 2_100, 2_200, 5_000, 5_300, 0, 5_600]
    );
    assert_eq!(f.disk, Some(0));
    let f = run(true);
    assert_eq!(f.b.as_array()[6], 5_200, "{f:?}");
}

/// Two disks' flushes with `aio=native`, submitted by one io_submit (disk a's first),
/// whose kernel workers begin them the other way round: each flush is paired with the
/// fsync of its own disk's file, which the descriptor it named says (learned from a
/// read of each disk: fd 5 read inode 11, fd 6 inode 12).
#[test]
fn linux_aio_flushes_of_two_disks_pair_with_their_own_disks_fsync() {
    let layout = two_disks();
    let run = |with_fds: bool| {
        let cfg = JoinConfig {
            fs_sync: true,
            ..JoinConfig::default()
        };
        let mut j = Join::new(&layout, All::default(), cfg);
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        let fd = |fd: u64| if with_fds { fd << 32 } else { 0 };
        for (t, fd_, ino) in [(100, 5, 11), (1_100, 6, 12)] {
            j.event(&q(
                t,
                q::LAIO_CO_SUBMIT,
                [0x100 + t, 0, 4096, fd(fd_) | q::AIO_READ],
            ));
            j.event(&sub_ev(t + 100, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
            j.event(&ev(
                t + 200,
                1,
                EventKind::DioBegin,
                [0xd0 + t, 0, 4096, ino],
            ));
            j.event(&sub_ev(t + 300, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
            j.event(&ev(t + 800, 0, EventKind::DioComplete, [0xd0 + t, 0, 0, 0]));
        }
        for (t, req, fd_) in [(10_000, 0xfa, 5), (10_100, 0xfb, 6)] {
            j.event(&q(t, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
            j.event(&q(
                t + 50,
                q::LAIO_CO_SUBMIT,
                [0, 0, 0, fd(fd_) | q::AIO_FLUSH],
            ));
        }
        j.event(&sub_ev(10_200, 1, EventKind::SysEnter, 7, [0x1c, 0, 2, 0]));
        j.event(&sub_ev(10_300, 1, EventKind::SysExit, 7, [2, 0, 0, 0]));
        let sync =
            |ts, tid, sub, ino| sub_ev(ts, tid, EventKind::FsSync, sub, [ino, 8 << 20, 1, 0]);
        j.event(&sync(11_000, 51, 0, 12));
        j.event(&sync(11_500, 52, 0, 11));
        j.event(&sync(12_000, 51, 1, 12));
        j.event(&q(12_500, q::VIRTIO_REQ_COMPLETE, [0xfb, 0, 4, 0]));
        j.event(&sync(13_000, 52, 1, 11));
        j.event(&q(13_500, q::VIRTIO_REQ_COMPLETE, [0xfa, 0, 4, 0]));
        let (all, _) = j.finish();
        let flushes: Vec<IoRow> = all.0.into_iter().filter(|r| r.op == Op::Flush).collect();
        assert_eq!(flushes.len(), 2);
        flushes
    };
    let f = run(true);
    // Disk b's flush completed first; its fsync returned at 12 000, disk a's at 13 000.
    assert_eq!(
        (f[0].b.as_array()[8], f[0].b.as_array()[6], f[0].disk),
        (12_500, 12_000, Some(1))
    );
    assert_eq!(
        (f[1].b.as_array()[8], f[1].b.as_array()[6], f[1].disk),
        (13_500, 13_000, Some(0))
    );
    assert!(f.iter().all(|r| r.partial == 0 && r.host_ios == 1), "{f:?}");

    // A trace whose submissions name no descriptor: submission order, swapped. Disk
    // a's flush takes disk b's fsync; disk b's flush, which completed before the
    // fsync it took ended, has no host end.
    let f = run(false);
    assert_eq!(
        (f[1].b.as_array()[8], f[1].b.as_array()[6], f[1].disk),
        (13_500, 12_000, Some(1))
    );
    assert_eq!(
        (f[0].b.as_array()[8], f[0].b.as_array()[6]),
        (12_500, 0),
        "{f:?}"
    );
}

#[test]
fn a_direct_io_pairs_with_a_host_io_its_own_thread_submitted() {
    // A guest mirror writes the same offset and length to two disks, each with its
    // own iothread and linux-aio (and one with io_uring). Thread 6 makes its request
    // first, but thread 5 calls io_submit first: the kernel begins thread 5's direct
    // IO inside that call, and it is thread 5's request, not the earlier one.
    let layout = Layout::default();
    let mut j = Join::new(&layout, Nothing, JoinConfig::default());
    let qemu = |ts: u64, tid: u32, sub: u8, a: [u64; 4]| RawEvent {
        sub,
        ..ev(ts, tid, EventKind::Qemu, a)
    };
    let sys = |ts: u64, tid: u32, kind: EventKind, sub: u8| RawEvent {
        sub,
        ..ev(ts, tid, kind, [0; 4])
    };
    let (pos, len) = (0x20_0000u64, 65536u64);
    let mut made = Vec::new();
    for (ts, tid, qiov, submit) in [
        (1_000, 6, 0x6000, q::LAIO_CO_SUBMIT),
        (1_100, 5, 0x5000, q::LAIO_CO_SUBMIT),
        (1_200, 7, 0x7000, q::LURING_CO_SUBMIT),
    ] {
        j.event(&qemu(ts, tid, q::RAW_CO_PRW, [qiov, pos, len, 2]));
        j.event(&qemu(ts + 10, tid, submit, [qiov, pos, len, 2]));
        made.push(
            j.threads
                .get(tid)
                .and_then(|t| t.last_hio)
                .expect("host IO"),
        );
    }
    // Thread 5's io_submit: its direct IO begins inside it.
    j.event(&sys(2_000, 5, EventKind::SysEnter, 7));
    j.event(&ev(2_010, 5, EventKind::DioBegin, [0xa5, pos, len, 7]));
    j.event(&sys(2_020, 5, EventKind::SysExit, 7));
    assert_eq!(j.kiocb.get(&0xa5), Some(&made[1]));
    // Thread 7's io_uring submission, begun inline by the kernel.
    j.event(&RawEvent {
        sub: 0,
        ..ev(2_100, 7, EventKind::UringSubmit, [0x77, 0xf7, 0xc7, 22])
    });
    j.event(&ev(2_110, 7, EventKind::DioBegin, [0xa7, pos, len, 7]));
    assert_eq!(j.kiocb.get(&0xa7), Some(&made[2]));
    // Thread 6's, last.
    j.event(&sys(2_200, 6, EventKind::SysEnter, 7));
    j.event(&ev(2_210, 6, EventKind::DioBegin, [0xa6, pos, len, 7]));
    assert_eq!(j.kiocb.get(&0xa6), Some(&made[0]));
}

#[test]
fn an_io_uring_write_run_again_by_an_io_wq_worker_stays_one_host_io() {
    // io_uring first tries the write inside io_uring_enter without waiting; the
    // filesystem refuses after the direct IO began (-EAGAIN), and an io-wq worker
    // (thread 9) runs it again with the same kiocb. That is the same host IO: it
    // takes the worker's bios, and no second one is left in flight to take the
    // bios of a later IO at the same place.
    let layout = two_disks();
    let mut j = Join::new(&layout, Nothing, JoinConfig::default());
    let qemu = |ts: u64, sub: u8, a: [u64; 4]| RawEvent {
        sub,
        ..ev(ts, 7, EventKind::Qemu, a)
    };
    let (pos, len, ino) = (0x20_0000u64, 4096u64, 11u64);
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let sector = ((ino << 30) + pos) / 512;
    let mut made = Vec::new();
    for (t, user_data, kiocb, bio, rq) in [
        (1_000, 0x77, 0xa7, 0xb7, 0x97),
        (50_000, 0x78, 0xa8, 0xb8, 0x98),
    ] {
        j.event(&qemu(t, q::RAW_CO_PRW, [0x7000, pos, len, 2]));
        j.event(&qemu(
            t + 10,
            q::LURING_CO_SUBMIT,
            [0x7000, pos, len, 5 << 32 | 2],
        ));
        let h = j.threads.get(7).and_then(|t| t.last_hio).expect("host IO");
        made.push(h);
        j.event(&ev(
            t + 100,
            7,
            EventKind::UringSubmit,
            [user_data, 0, 0, 0],
        ));
        if made.len() == 1 {
            j.event(&ev(t + 110, 7, EventKind::DioBegin, [kiocb, pos, len, ino]));
        }
        let live = j.hios.live;
        j.event(&ev(t + 500, 9, EventKind::DioBegin, [kiocb, pos, len, ino]));
        assert_eq!(j.hios.live, live, "a second host IO for the same kiocb");
        assert_eq!(j.kiocb.get(&kiocb), Some(&h));
        block_request(&mut j, t + 600, 9, bio, rq, sector, dev | len);
        assert!(
            matches!(j.bios.get(&bio).map(|b| b.owner), Some(BioOwner::Hio(o)) if o == h),
            "the worker's bio is not the IO's"
        );
        j.event(&ev(
            t + 2_000,
            0,
            EventKind::RqComplete,
            [rq, sector, dev | len, len],
        ));
        j.event(&ev(t + 2_100, 0, EventKind::DioComplete, [kiocb, 0, 0, 0]));
        j.event(&ev(
            t + 2_200,
            7,
            EventKind::UringComplete,
            [user_data, 0, 0, 0],
        ));
        assert!(j.hios.get(h).is_none(), "the host IO did not complete");
    }
}

/// An image on ext4 on the first partition of loop0 (259:0 of 7:0), whose backing file
/// is on vda, with these block devices described.
fn loop_partition_layout(devices: serde_json::Value) -> Layout {
    Layout::from_json(&serde_json::json!({
        "images": [{
            "path": "/m/g.qcow2",
            "file_hosts": [{
                "file": "/m/g.qcow2", "len": 1u64 << 30, "ino": 12,
                "host": [{"offset": 0, "len": 1u64 << 30, "hops": [
                    {"hop": "file", "path": "/m/g.qcow2", "offset": 0, "state": "mapped"},
                    {"hop": "device", "device": "/dev/loop0p1", "dev": "259:0", "byte": 1u64 << 20, "via": "filesystem"},
                    {"hop": "device", "device": "/dev/loop0", "dev": "7:0", "byte": 2u64 << 20, "via": "partition"},
                    {"hop": "file", "path": "/t/host.img", "offset": 2u64 << 20, "state": "mapped"},
                    {"hop": "device", "device": "/dev/vda", "dev": "254:0", "byte": 9u64 << 30, "via": "filesystem"}
                ]}]
            }]
        }],
        "devices": devices
    }))
}

/// A join of that layout that has seen a guest flush's job begin its fdatasync of the
/// image on the partition `part` (thread 3); with its device-field and QEMU-event
/// helpers.
#[allow(clippy::type_complexity)]
fn flush_on_the_partition(
    layout: &Layout,
    part: u32,
) -> (
    Join<'_, All>,
    fn(u32) -> u64,
    fn(u64, u8, [u64; 4]) -> RawEvent,
) {
    let cfg = JoinConfig {
        flush_syscalls: true,
        fs_sync: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(layout, All::default(), cfg);
    let d: fn(u32) -> u64 = |dev| u64::from(dev) << 32;
    let q: fn(u64, u8, [u64; 4]) -> RawEvent = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
    j.event(&q(
        1_100,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0, 0, 9 << 32 | q::AIO_FLUSH],
    ));
    j.event(&sub_ev(1_200, 3, EventKind::SysEnter, 11, [9, 0, 0, 0]));
    j.event(&sub_ev(
        1_300,
        3,
        EventKind::FsSync,
        0,
        [12, u64::from(part), 1, 0],
    ));
    (j, d, q)
}

/// A guest flush whose fdatasync, on ext4 on a partition of a loop device, waits for
/// the journal's commit: the journal thread writes it with a cache flush before and
/// write-through (the loop device has no FUA: a flush after too). Each loop flush
/// request is carried out by the loop's worker as an fsync of the backing file, which
/// flushes the disk below. The flush row's device time is those disk flushes.
#[test]
fn a_flush_through_a_loop_device_reaches_the_disk_below() {
    let (part, lo, vda) = (kernel_dev(259, 0), kernel_dev(7, 0), kernel_dev(254, 0));
    let layout = loop_partition_layout(serde_json::json!([]));
    let (mut j, d, q) = flush_on_the_partition(&layout, part);
    const PREFLUSH_FUA_WRITE: u64 = 1 << 18 | 1 << 17 | 1;
    // The journal's commit block, by its thread: partition remap, then queued.
    j.event(&ev(
        2_000,
        5,
        EventKind::BioRemap,
        [0xb1, 0x4_4860, d(part) | u64::from(part), 0x4_4060],
    ));
    j.event(&ev(
        2_010,
        5,
        EventKind::BioQueue,
        [0xb1, 0x4_4860, d(part) | 4096, PREFLUSH_FUA_WRITE],
    ));
    // The loop's flush before it; its worker syncs the backing file, flushing vda.
    let loop_flush = |j: &mut Join<'_, All>, t: u64, rq: u64, vrq: u64| {
        j.event(&sub_ev(
            t,
            6,
            EventKind::RqIssue,
            2,
            [rq, u64::MAX, d(lo), 0],
        ));
        j.event(&sub_ev(
            t + 100,
            7,
            EventKind::FsSync,
            0,
            [99, u64::from(vda), 0, 0],
        ));
        j.event(&ev(
            t + 200,
            7,
            EventKind::BioQueue,
            [vrq + 0x100, 0, d(vda), 1 << 18 | 1],
        ));
        j.event(&sub_ev(
            t + 300,
            8,
            EventKind::RqIssue,
            2,
            [vrq, u64::MAX, d(vda), 0],
        ));
        j.event(&sub_ev(
            t + 900,
            0,
            EventKind::RqComplete,
            2,
            [vrq, u64::MAX, d(vda), 0],
        ));
        j.event(&sub_ev(
            t + 1_000,
            7,
            EventKind::FsSync,
            1,
            [99, u64::from(vda), 0, 0],
        ));
        j.event(&sub_ev(
            t + 1_100,
            0,
            EventKind::RqComplete,
            2,
            [rq, u64::MAX, d(lo), 0],
        ));
    };
    loop_flush(&mut j, 3_000, 0x72, 0x82);
    // The commit block's write on the loop device (its data, by the worker, below).
    j.event(&ev(
        5_000,
        6,
        EventKind::RqIssue,
        [0x73, 0x4_4860, d(lo) | 4096, 0xb1],
    ));
    j.event(&ev(
        6_000,
        0,
        EventKind::RqComplete,
        [0x73, 0x4_4860, d(lo) | 4096, 4096],
    ));
    // And the flush after it, for the write through.
    loop_flush(&mut j, 7_000, 0x74, 0x84);
    j.event(&sub_ev(
        9_000,
        3,
        EventKind::FsSync,
        1,
        [12, u64::from(part), 0, 0],
    ));
    j.event(&sub_ev(9_100, 3, EventKind::SysExit, 11, [0, 0, 0, 0]));
    j.event(&q(9_200, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
    let (all, _) = j.finish();
    let flush = row_of(&all.0, Op::Flush);
    let b = flush.b.as_array();
    assert_eq!(flush.bottom_dev, vda, "{flush:?}");
    // Dispatched: the first vda flush issued; device done: the last completed.
    assert_eq!((b[4], b[5]), (3_300, 7_900), "{flush:?}");
    assert_eq!(flush.partial, 0, "{flush:?}");
}

/// A guest flush whose fdatasync (linux-aio: the kernel worker's), on ext4 on a
/// partition of a direct-IO loop device, sends its own flush bio. The loop's worker
/// syncs the backing file without a request to the disk below (its filesystem's
/// journal commit was under way and flushed the disk from the journal thread). The
/// loop device's flush request is as low as it went: its device time, flagged.
#[test]
fn a_flush_that_stops_at_a_loop_device_takes_its_request_as_device_time() {
    let (part, lo, vda) = (kernel_dev(259, 0), kernel_dev(7, 0), kernel_dev(254, 0));
    let layout = loop_partition_layout(serde_json::json!([
        {"id": "7:0", "name": "loop0", "kind": {"kind": "loop", "backing_file": "/t/host.img",
            "offset": 0, "sizelimit": 0, "direct_io": true}},
        {"id": "254:0", "name": "vda", "kind": {"kind": "disk"}}
    ]));
    assert!(layout.is_loop(lo) && !layout.is_buffered_loop(lo));
    let (mut j, d, q) = flush_on_the_partition(&layout, part);
    const PREFLUSH: u64 = 1 << 18;
    // The fsync's own empty flush bio on the partition, remapped to the loop device,
    // where the block layer issues a flush request for it.
    j.event(&ev(
        2_000,
        3,
        EventKind::BioRemap,
        [0xb1, 0, d(part) | u64::from(part), 0],
    ));
    j.event(&ev(
        2_010,
        3,
        EventKind::BioQueue,
        [0xb1, 0, d(part), PREFLUSH | 1],
    ));
    j.event(&sub_ev(
        2_100,
        6,
        EventKind::RqIssue,
        2,
        [0x72, u64::MAX, d(lo), 0],
    ));
    // The loop worker's fsync of the backing file: no bio, no vda request.
    j.event(&sub_ev(
        2_200,
        7,
        EventKind::FsSync,
        0,
        [99, u64::from(vda), 0, 0],
    ));
    j.event(&sub_ev(
        4_000,
        7,
        EventKind::FsSync,
        1,
        [99, u64::from(vda), 0, 0],
    ));
    j.event(&sub_ev(
        4_100,
        0,
        EventKind::RqComplete,
        2,
        [0x72, u64::MAX, d(lo), 0],
    ));
    j.event(&sub_ev(
        4_500,
        3,
        EventKind::FsSync,
        1,
        [12, u64::from(part), 0, 0],
    ));
    j.event(&sub_ev(4_600, 3, EventKind::SysExit, 11, [0, 0, 0, 0]));
    j.event(&q(4_700, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
    let (all, _) = j.finish();
    let flush = row_of(&all.0, Op::Flush);
    let b = flush.b.as_array();
    assert_eq!(flush.requests, 1, "{flush:?}");
    assert_eq!((b[4], b[5]), (2_100, 4_100), "{flush:?}");
    assert_ne!(flush.flags & flags::LOOP_FLUSH, 0, "{flush:?}");
    assert_eq!(flush.flags & flags::LOOP_PAGE_CACHE, 0, "{flush:?}");
    assert_eq!(flush.partial, 0, "{flush:?}");
}

/// A loop device's stack that stops at a hole of its backing file (blocks not written
/// when the snapshot was taken) does not make the loop device a bottom device: other
/// pieces of the same file go on below it to the disk, which is the flushes' bottom.
#[test]
fn a_stack_stopping_at_a_hole_below_a_loop_device_is_no_bottom() {
    let layout = Layout::from_json(&serde_json::json!({
        "images": [{
            "path": "/m/g.qcow2",
            "file_hosts": [{
                "file": "/m/g.qcow2", "len": 2u64 << 20, "ino": 12,
                "host": [
                    {"offset": 0, "len": 1u64 << 20, "hops": [
                        {"hop": "file", "path": "/m/g.qcow2", "offset": 0, "state": "mapped"},
                        {"hop": "device", "device": "/dev/loop0", "dev": "7:0", "byte": 1u64 << 20, "via": "filesystem"},
                        {"hop": "file", "path": "/t/host.img", "offset": 1u64 << 20, "state": "mapped"},
                        {"hop": "device", "device": "/dev/vda", "dev": "254:0", "byte": 9u64 << 30, "via": "filesystem"}
                    ]},
                    {"offset": 1u64 << 20, "len": 1u64 << 20, "hops": [
                        {"hop": "file", "path": "/m/g.qcow2", "offset": 1u64 << 20, "state": "unwritten"},
                        {"hop": "device", "device": "/dev/loop0", "dev": "7:0", "byte": 2u64 << 20, "via": "filesystem"},
                        {"hop": "file", "path": "/t/host.img", "offset": 2u64 << 20, "state": "hole"}
                    ]}
                ]
            }]
        }],
        "devices": []
    }));
    assert_eq!(layout.is_bottom_device(kernel_dev(7, 0)), Some(false));
    assert_eq!(layout.is_bottom_device(kernel_dev(254, 0)), Some(true));
}

/// A linux-aio read the filesystem finished within io_submit with no bio (holes, or
/// past the end of the file), on a kernel without iomap's tracepoints: its end is the
/// filesystem's return (fexit, or a kretprobe without the kiocb); a return of
/// -EIOCBQUEUED (queued) is not.
#[test]
fn a_native_read_finished_in_the_call_ends_at_the_filesystems_return() {
    let layout = Layout::default();
    for (kiocb_at_exit, ret) in [(0xa000u64, 4096u64), (0, 4096), (0xa000, -529i64 as u64)] {
        let mut j = Join::new(&layout, All::default(), JoinConfig::default());
        let q = |ts, sub, a| sub_ev(ts, 5, EventKind::Qemu, sub, a);
        let (ctx, qiov, off, len) = (0x5555_0000, 0x5555_1000, 0x10000, 4096);
        j.event(&q(1_000, q::BLK_AIO_PREADV, [ctx, off, len, 0xb1]));
        j.event(&q(2_000, q::BDRV_CO_PREADV_PART, [qiov, off, len, 0xc1]));
        j.event(&q(3_000, q::RAW_CO_PRW, [qiov, off, len, q::AIO_READ]));
        let submit = [qiov, off, len, 0x4_0000_0000 | q::AIO_READ];
        j.event(&q(4_000, q::LAIO_CO_SUBMIT, submit));
        j.event(&sub_ev(5_000, 5, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
        j.event(&ev(6_000, 5, EventKind::FsEnter, [0xa000, off, len, 11]));
        j.event(&ev(7_000, 5, EventKind::FsExit, [kiocb_at_exit, ret, 0, 0]));
        j.event(&sub_ev(8_000, 5, EventKind::SysExit, 7, [1, 0, 0, 0]));
        j.event(&q(9_000, q::QEMU_IO_AIO_READ_DONE, [ctx, 0, 0, 0]));
        let (all, _) = j.finish();
        let r = &all.0[0];
        if ret as i64 == -529 {
            assert_ne!(r.partial, 0, "queued, and nothing ended it: {r:?}");
        } else {
            assert_eq!(r.partial, 0, "{r:?}");
            assert_eq!(r.b[crate::layers::Boundary::HostDone], 7_000, "{r:?}");
        }
    }
}
