//! Host IO through the page cache: hits, misses (their own bios, or another's fill of
//! their pages), readahead, buffered writes and the dirty-page throttle.

use super::*;

/// One image file (inode 11) on /dev/sda at byte 1 GiB.
fn one_file() -> Layout {
    Layout::from_json(&serde_json::json!({
        "images": [{"path": "/vm/a.qcow2", "file_hosts": [
            {"file": "/vm/a.qcow2", "len": 1u64 << 30, "ino": 11, "host": [
                {"offset": 0, "len": 1u64 << 30, "hops": [
                    {"hop": "file", "path": "/vm/a.qcow2", "offset": 0, "state": "mapped"},
                    {"hop": "device", "device": "/dev/sda", "dev": "8:0", "byte": 1u64 << 30, "via": "filesystem"}
                ]}]}]}],
        "devices": []
    }))
}

/// The sector of file byte `off`.
fn sector(off: u64) -> u64 {
    ((1 << 30) + off) / 512
}

fn sda() -> u64 {
    u64::from(kernel_dev(8, 0)) << 32
}

fn cfg() -> JoinConfig {
    JoinConfig {
        dio_probe: true,
        tick_ns: 4_000_000,
        ..JoinConfig::default()
    }
}

/// qemu-io's request `n` (thread 5) of `len` bytes at file offset `off` (a raw image:
/// guest and file offsets are the same), its pread or pwrite run by worker `tid`
/// from `t0 + 5_000` to `t0 + exit`; `inside` adds what the kernel does in between.
#[allow(clippy::too_many_arguments)]
fn request<S: Sink>(
    j: &mut Join<S>,
    n: u64,
    write: bool,
    tid: u32,
    t0: u64,
    (off, len): (u64, u64),
    exit: u64,
    inside: impl FnOnce(&mut Join<S>),
) {
    let q = |ts: u64, tid: u32, sub: u8, a: [u64; 4]| sub_ev(ts, tid, EventKind::Qemu, sub, a);
    let (blk, aio, sc) = if write {
        (q::BLK_AIO_PWRITEV, q::AIO_WRITE, 2)
    } else {
        (q::BLK_AIO_PREADV, q::AIO_READ, 1)
    };
    let (ctx, qiov, aiocb) = (
        0x5555_0000 + n * 0x100,
        0x5555_1000 + n * 0x100,
        0x7f00_0000 + n,
    );
    j.event(&q(t0, 5, blk, [ctx, off, len, 0xb1]));
    let bdrv = if write {
        q::BDRV_CO_PWRITEV_PART
    } else {
        q::BDRV_CO_PREADV_PART
    };
    j.event(&q(t0 + 1_000, 5, bdrv, [qiov, off, len, 0xc1]));
    j.event(&q(t0 + 2_000, 5, q::RAW_CO_PRW, [qiov, off, len, aio]));
    j.event(&q(
        t0 + 3_000,
        5,
        q::THREAD_POOL_SUBMIT_AIO,
        [aiocb, off, len, aio],
    ));
    j.event(&q(
        t0 + 4_000,
        tid,
        q::HANDLE_AIOCB_RW,
        [aiocb, off, len, aio],
    ));
    j.event(&sub_ev(
        t0 + 5_000,
        tid,
        EventKind::SysEnter,
        sc,
        [3, off, len, 0],
    ));
    inside(j);
    j.event(&sub_ev(
        t0 + exit,
        tid,
        EventKind::SysExit,
        sc,
        [len, 0, 0, 0],
    ));
}

/// A read bio of `bytes` at file offset `off` queued by `tid` at `ts`, its request
/// issued 1 µs later and done at `done`.
fn fill<S: Sink>(j: &mut Join<S>, tid: u32, ts: u64, n: u64, off: u64, bytes: u64, done: u64) {
    block_request(
        j,
        ts,
        tid,
        0xb000 + n,
        0x7000 + n,
        sector(off),
        sda() | bytes,
    );
    j.event(&ev(
        done,
        0,
        EventKind::RqComplete,
        [0x7000 + n, sector(off), sda() | bytes, bytes],
    ));
}

#[test]
fn a_read_waiting_for_its_bios_misses_and_one_without_hits() {
    let layout = one_file();
    let mut j = Join::new(&layout, Rows::default(), cfg());
    // A miss: its syscall reads 64 KiB (4 asked, 60 read ahead) and waits for it.
    request(&mut j, 0, false, 9, 10_000, (0x10000, 4096), 90_000, |j| {
        fill(j, 9, 16_000, 0, 0x10000, 65536, 80_000);
    });
    // The same pages again: a hit. Then pages the readahead brought: a readahead hit,
    // which sets off more readahead it does not wait for.
    request(
        &mut j,
        1,
        false,
        9,
        200_000,
        (0x10000, 4096),
        20_000,
        |_| {},
    );
    request(&mut j, 2, false, 9, 300_000, (0x18000, 4096), 20_000, |j| {
        block_request(
            j,
            306_000,
            9,
            0xb002,
            0x7002,
            sector(0x20000),
            sda() | 131072,
        );
    });
    j.event(&ev(
        500_000,
        0,
        EventKind::RqComplete,
        [0x7002, sector(0x20000), sda() | 131072, 131072],
    ));
    let (Rows(rows), _) = j.finish();
    let f = |i: usize| rows[i].flags;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.partial == 0), "{rows:?}");
    assert_eq!(
        f(0) & (flags::PAGE_CACHE_MISS | flags::PAGE_CACHE_HIT),
        flags::PAGE_CACHE_MISS
    );
    assert_eq!(rows[0].readahead_bytes, 61440);
    assert_eq!(rows[0].b[crate::layers::Boundary::DeviceDone], 80_000);
    assert_eq!(
        f(1) & (flags::PAGE_CACHE_HIT | flags::READAHEAD_HIT),
        flags::PAGE_CACHE_HIT
    );
    assert_eq!(
        f(2) & (flags::PAGE_CACHE_HIT | flags::READAHEAD_HIT),
        flags::PAGE_CACHE_HIT | flags::READAHEAD_HIT
    );
    assert_eq!(rows[2].readahead_bytes, 131072, "what it set off");
    // A hit's host time is the copy: no block layers.
    for r in &rows[1..] {
        let b = r.b.as_array();
        assert_eq!((b[3], b[4], b[5]), (0, 0, 0), "{r:?}");
    }
}

#[test]
fn a_read_of_pages_another_is_filling_waits_for_that_fill() {
    let layout = one_file();
    let mut j = Join::new(&layout, Rows::default(), cfg());
    // Worker 9's read fills 64 KiB until 80 µs; worker 10 reads inside it meanwhile
    // and queues nothing: it waited on the locked pages.
    request(&mut j, 0, false, 9, 10_000, (0x10000, 4096), 90_000, |j| {
        j.event(&ev(
            16_000,
            9,
            EventKind::BioQueue,
            [0xb000, sector(0x10000), sda() | 65536, 0],
        ));
        j.event(&ev(
            16_100,
            9,
            EventKind::RqInsert,
            [0x7000, sector(0x10000), sda() | 65536, 0xb000],
        ));
        j.event(&ev(
            16_200,
            9,
            EventKind::RqIssue,
            [0x7000, sector(0x10000), sda() | 65536, 0xb000],
        ));
        request(j, 1, false, 10, 20_000, (0x14000, 8192), 70_000, |j| {
            j.event(&ev(
                80_000,
                0,
                EventKind::RqComplete,
                [0x7000, sector(0x10000), sda() | 65536, 65536],
            ));
        });
    });
    let (Rows(rows), _) = j.finish();
    let waiter = rows.iter().find(|r| r.bytes == 8192).unwrap();
    assert_eq!(waiter.partial, 0, "{waiter:?}");
    assert!(waiter.flags & flags::PAGE_CACHE_MISS != 0, "{waiter:?}");
    let b = waiter.b.as_array();
    // Its device time runs from its own start (the fill was issued before) to the
    // fill's end.
    assert_eq!((b[4], b[5]), (25_000, 80_000), "{waiter:?}");
}

#[test]
fn a_buffered_write_ends_in_the_cache_with_its_dirty_throttle() {
    let layout = one_file();
    let mut j = Join::new(&layout, Rows::default(), cfg());
    request(
        &mut j,
        0,
        true,
        9,
        10_000,
        (0x10000, 65536),
        50_000_000,
        |j| {
            j.event(&ev(20_000, 9, EventKind::DirtyThrottle, [3, 10, 32, 0]));
            j.event(&ev(12_100_000, 9, EventKind::DirtyThrottle, [2, 10, 16, 3]));
        },
    );
    let (Rows(rows), _) = j.finish();
    let r = &rows[0];
    assert_eq!(r.partial, 0, "{r:?}");
    assert_eq!(
        r.flags & (flags::PAGE_CACHE_WRITE | flags::DIRTY_THROTTLED),
        flags::PAGE_CACHE_WRITE | flags::DIRTY_THROTTLED
    );
    assert_eq!(r.dirty_wait_ns, 5 * 4_000_000);
}

#[test]
fn without_the_direct_io_probe_no_host_io_is_taken_for_buffered() {
    let layout = one_file();
    let cfg = JoinConfig {
        dio_probe: false,
        ..cfg()
    };
    let mut j = Join::new(&layout, Rows::default(), cfg);
    request(&mut j, 0, false, 9, 10_000, (0x10000, 4096), 20_000, |_| {});
    let (Rows(rows), _) = j.finish();
    assert_eq!(rows[0].partial, reasons::NO_DEVICE_IO, "{:?}", rows[0]);
    assert_eq!(rows[0].flags & flags::PAGE_CACHE_HIT, 0);
}

#[test]
fn readahead_ranges_merge_and_give_way_to_reads() {
    use viopath_layouts::DeviceSector as S;
    let mut ra = ReadAheads::default();
    ra.add(1, S(100), S(200));
    ra.add(1, S(200), S(300)); // touching: one range
    ra.add(1, S(150), S(250)); // inside
    ra.add(2, S(100), S(200)); // another device
    assert!(ra.overlaps(1, S(299), S(400)));
    assert!(!ra.overlaps(1, S(300), S(400)));
    assert!(!ra.overlaps(1, S(0), S(100)));
    // A read of the middle: what is left either side is still readahead.
    ra.asked(1, S(140), S(160));
    assert!(!ra.overlaps(1, S(140), S(160)));
    assert!(ra.overlaps(1, S(100), S(141)));
    assert!(ra.overlaps(1, S(159), S(170)));
    assert!(ra.overlaps(2, S(199), S(250)));
    ra.asked(1, S(0), S(1000));
    assert!(!ra.overlaps(1, S(0), S(1000)));
    assert!(ra.overlaps(2, S(100), S(101)));
}

/// virtio-blk pops a read and then a flush in one batch; it hands the flush to the
/// block layer at once (only pending writes go first), so the flush's job comes
/// before the read's block IO. `blk_aio_flush` names the flush: the job is its.
#[test]
fn a_flush_job_made_before_an_earlier_reads_block_io_is_the_flushs() {
    let layout = Layout::default();
    let cfg = JoinConfig {
        flush_syscalls: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let q = |ts, tid, sub, a| sub_ev(ts, tid, EventKind::Qemu, sub, a);
    j.event(&q(1_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xa1, 0, 0, 0]));
    j.event(&q(1_100, 1, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
    j.event(&q(1_200, 1, q::BLK_AIO_FLUSH, [0xf1, 0, 0, 0xbb]));
    j.event(&q(
        1_300,
        1,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe2, 0, 0, 8 << 32 | q::AIO_FLUSH],
    ));
    j.event(&q(1_400, 1, q::BLK_AIO_PREADV, [0xa1, 4096, 4096, 0xbb]));
    j.event(&sub_ev(2_000, 3, EventKind::SysEnter, 11, [8, 0, 0, 0]));
    j.event(&sub_ev(9_000, 3, EventKind::SysExit, 11, [0, 0, 0, 0]));
    j.event(&q(9_500, 1, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
    j.event(&q(9_600, 1, q::VIRTIO_REQ_COMPLETE, [0xa1, 8, 0, 4096]));
    let (All(rows, _), _) = j.finish();
    let flush = rows.iter().find(|r| r.op == Op::Flush).unwrap();
    let read = rows.iter().find(|r| r.op == Op::Read).unwrap();
    assert_eq!(flush.host_ios, 1, "{flush:?}");
    assert_eq!(flush.b[crate::layers::Boundary::HostDone], 9_000);
    assert_eq!(
        read.host_ios, 0,
        "the flush's job is not the read's: {read:?}"
    );
}

/// A buffered read of an image on ext4 on a partition of a loop device whose only bio
/// is readahead beyond its own pages (they were being read, or were read, already) and
/// which waits for it. The loop's worker reads that bio's blocks from its backing file
/// on the disk below: that read is the row's device time, found by the readahead's
/// address below the loop device, not the read's own.
#[test]
fn readahead_beyond_a_read_is_followed_below_a_loop_device() {
    let (part, lo, vda) = (kernel_dev(259, 0), kernel_dev(7, 0), kernel_dev(254, 0));
    let layout = Layout::from_json(&serde_json::json!({
        "images": [{"path": "/vm/a.qcow2", "file_hosts": [
            {"file": "/vm/a.qcow2", "len": 1u64 << 30, "ino": 11, "host": [
                {"offset": 0, "len": 1u64 << 30, "hops": [
                    {"hop": "file", "path": "/vm/a.qcow2", "offset": 0, "state": "mapped"},
                    {"hop": "device", "device": "/dev/loop0p1", "dev": "259:0", "byte": 1u64 << 20, "via": "filesystem"},
                    {"hop": "device", "device": "/dev/loop0", "dev": "7:0", "byte": 2u64 << 20, "via": "partition"},
                    {"hop": "file", "path": "/t/host.img", "offset": 2u64 << 20, "state": "mapped"},
                    {"hop": "device", "device": "/dev/vda", "dev": "254:0", "byte": 9u64 << 30, "via": "filesystem"}
                ]}]}]}],
        "devices": []
    }));
    let mut j = Join::new(&layout, Rows::default(), cfg());
    let d = |dev: u32, bytes: u64| u64::from(dev) << 32 | bytes;
    let (off, ahead) = (0x93_f000u64, 0x94_3000u64);
    let (part_sector, loop_sector, vda_sector) = (
        ((1 << 20) + ahead) / 512,
        ((2 << 20) + ahead) / 512,
        ((9 << 30) + ahead) / 512,
    );
    request(&mut j, 0, false, 9, 10_000, (off, 16384), 90_000, |j| {
        j.event(&ev(
            16_000,
            9,
            EventKind::BioRemap,
            [0xb1, loop_sector, d(part, u64::from(part)), part_sector],
        ));
        j.event(&ev(
            16_100,
            9,
            EventKind::BioQueue,
            [0xb1, loop_sector, d(part, 20480), 0],
        ));
        j.event(&ev(
            16_200,
            9,
            EventKind::RqIssue,
            [0x71, loop_sector, d(lo, 20480), 0xb1],
        ));
        // The loop's worker (thread 7) reads the backing file's blocks.
        block_request(j, 30_000, 7, 0xb2, 0x72, vda_sector, d(vda, 20480));
        j.event(&ev(
            70_000,
            0,
            EventKind::RqComplete,
            [0x72, vda_sector, d(vda, 20480), 20480],
        ));
        j.event(&ev(
            75_000,
            0,
            EventKind::RqComplete,
            [0x71, loop_sector, d(lo, 20480), 20480],
        ));
    });
    let (Rows(rows), _) = j.finish();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r.partial, 0, "{r:?}");
    assert_eq!(r.bottom_dev, vda, "{r:?}");
    assert_eq!(r.readahead_bytes, 20480, "{r:?}");
    let b = r.b.as_array();
    // Dispatched: the vda request issued; device done: it completed.
    assert_eq!((b[4], b[5]), (30_200, 70_000), "{r:?}");
}
