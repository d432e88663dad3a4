//! A stripped QEMU: only the exported `blk_aio_*` and `virtio_blk_req_complete` of
//! virtio-blk's path (no parse, no block completion callback, no qcow2 or file-posix
//! internals).
use super::*;

fn stripped() -> JoinConfig {
    JoinConfig {
        virtio_from_block: true,
        flush_syscalls: true,
        ..JoinConfig::default()
    }
}

/// Two writes virtio-blk merged into one block request (its opaque the first's), a
/// flush, a GET_ID, and QEMU's own read of the image at start-up: three guest rows
/// with their own ranges (the second merged into the first), a flush row, a GET_ID
/// row, and QEMU's read not a row.
#[test]
fn guest_requests_are_made_from_the_block_layer() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), stripped());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    // QEMU probing the image: a coroutine read, no device model's request.
    j.event(&q(100, q::BLK_CO_PREADV_PART, [0x9990, 0, 512, 0xbb]));
    j.event(&q(
        200,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe0, 0, 512, 7 << 32 | q::AIO_READ],
    ));
    j.event(&sub_ev(300, 3, EventKind::SysEnter, 1, [7, 0, 512, 0]));
    j.event(&sub_ev(400, 3, EventKind::SysExit, 1, [512, 0, 0, 0]));
    // Two 4 KiB writes merged: one 8 KiB block request named by the first.
    j.event(&q(1_000, q::BLK_AIO_PWRITEV, [0xa1, 0x1_0000, 8192, 0xbb]));
    j.event(&q(
        1_010,
        q::BDRV_CO_PWRITEV_PART,
        [0x7001, 0x1_0000, 8192, 0xcc],
    ));
    j.event(&q(
        1_020,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0x1_0000, 8192, 7 << 32 | q::AIO_WRITE],
    ));
    j.event(&sub_ev(
        1_100,
        3,
        EventKind::SysEnter,
        2,
        [7, 0x1_0000, 8192, 0],
    ));
    j.event(&sub_ev(1_900, 3, EventKind::SysExit, 2, [8192, 0, 0, 0]));
    j.event(&q(2_000, q::VIRTIO_REQ_COMPLETE, [0xa1, 0x80, 1, 4096]));
    j.event(&q(2_010, q::VIRTIO_REQ_COMPLETE, [0xa2, 0x88, 1, 4096]));
    // A flush and its fdatasync.
    j.event(&q(3_000, q::BLK_AIO_FLUSH, [0xf1, 0, 0, 0xbb]));
    j.event(&q(
        3_010,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe2, 0, 0, 7 << 32 | q::AIO_FLUSH],
    ));
    j.event(&sub_ev(3_100, 3, EventKind::SysEnter, 11, [7, 0, 0, 0]));
    j.event(&sub_ev(3_800, 3, EventKind::SysExit, 11, [0, 0, 0, 0]));
    j.event(&q(3_900, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
    // GET_ID: answered by virtio-blk alone.
    j.event(&q(4_000, q::VIRTIO_REQ_COMPLETE, [0x91, 0, 8, 20]));
    let (All(mut rows, other), _) = j.finish();
    rows.sort_by_key(|r| r.id);
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.source,
                r.op,
                r.offset.map(|o| o.0),
                r.bytes,
                r.partial,
                r.flags & flags::VIRTIO_MERGED != 0,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (Source::Virtio, Op::Write, Some(0x1_0000), 4096, 0, false),
            (Source::Virtio, Op::Write, Some(0x1_1000), 4096, 0, true),
            (Source::Virtio, Op::Flush, None, 0, 0, false),
            (Source::Virtio, Op::GetId, None, 0, 0, false),
        ],
        "{rows:?}"
    );
    // The merged one has the first's path and its own completion.
    let (a, b) = (rows[0].b.as_array(), rows[1].b.as_array());
    assert_eq!((a[1], a[2], a[6], a[8]), (1_000, 1_100, 1_900, 2_000));
    assert_eq!((b[1], b[2], b[6], b[8]), (1_000, 1_100, 1_900, 2_010));
    assert_eq!(rows[1].merged_into, Some(rows[0].id));
    assert_eq!(rows[2].b.as_array()[6], 3_800, "{:?}", rows[2]);
    // QEMU's read: its block request and its syscall, QEMU's own.
    assert!(
        !other.is_empty() && other.iter().all(|o| o.class == OtherClass::QemuInternal),
        "{other:?}"
    );
}

/// A discard: `blk_aio_pdiscard` makes the request, its first block call gives it
/// its range.
#[test]
fn a_discard_is_made_by_blk_aio_pdiscard() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), stripped());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(
        1_000,
        q::BLK_AIO_PDISCARD,
        [0xd1, 0x2_0000, 0x1_0000, 0xbb],
    ));
    j.event(&q(
        1_010,
        q::BDRV_CO_PDISCARD,
        [0, 0x2_0000, 0x1_0000, 0xcc],
    ));
    j.event(&q(1_500, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 11, 16]));
    let (All(rows, _), _) = j.finish();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(
        (r.op, r.offset.map(|o| o.0), r.bytes, r.partial),
        (Op::Discard, Some(0x2_0000), 0x1_0000, 0),
        "{r:?}"
    );
}

/// A worker's `preadv` (its count is of iovecs, not bytes) is the job at its offset on
/// its descriptor, with no probe saying which job the worker runs.
#[test]
fn a_vectored_syscall_is_the_job_at_its_offset_and_descriptor() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), stripped());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(1_000, q::BLK_AIO_PREADV, [0xa1, 0x4000, 8192, 0xbb]));
    j.event(&q(
        1_010,
        q::BDRV_CO_PREADV_PART,
        [0x7001, 0x4000, 8192, 0xcc],
    ));
    // qcow2 (not probed) passes it on to the image file, at its host offset.
    j.event(&q(
        1_012,
        q::BDRV_CO_PREADV_PART,
        [0x7001, 0x9_0000, 8192, 0xdd],
    ));
    // Two jobs at one offset, on two descriptors: QEMU's own first (another thread's),
    // then the guest's.
    j.event(&sub_ev(
        1_015,
        2,
        EventKind::Qemu,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe0, 0x9_0000, 8192, 8 << 32 | q::AIO_READ],
    ));
    j.event(&q(
        1_020,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0x9_0000, 8192, 7 << 32 | q::AIO_READ],
    ));
    // preadv(fd 7, iov, 2 iovecs, offset): the guest's job.
    j.event(&sub_ev(
        1_100,
        3,
        EventKind::SysEnter,
        3,
        [7, 0x9_0000, 2, 0],
    ));
    j.event(&sub_ev(1_900, 3, EventKind::SysExit, 3, [8192, 0, 0, 0]));
    j.event(&q(2_000, q::VIRTIO_REQ_COMPLETE, [0xa1, 0x20, 0, 8192]));
    let (All(rows, _), _) = j.finish();
    let r = rows.iter().find(|r| r.source == Source::Virtio).unwrap();
    let b = r.b.as_array();
    assert_eq!((r.partial, b[2], b[6]), (0, 1_100, 1_900), "{r:?}");
}
