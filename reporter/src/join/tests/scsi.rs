use super::*;

/// virtio-scsi's 8-byte LUN field for target `t`, LUN `l` (flat space), as the probe
/// reads it (little-endian).
fn lun_field(t: u64, l: u64) -> u64 {
    1 | t << 8 | (0x40 | l >> 8) << 16 | (l & 0xff) << 24
}

#[test]
fn the_lun_field_gives_target_and_lun() {
    assert_eq!(crate::join::scsi::scsi_addr(lun_field(0, 1)), 1 << 31 | 1);
    assert_eq!(
        crate::join::scsi::scsi_addr(lun_field(3, 300)),
        1 << 31 | 3 << 16 | 300
    );
}

#[test]
fn scsi_opcodes_name_the_operation() {
    for (cdb, op) in [
        (0x28, Op::Read),
        (0x88, Op::Read),
        (0x2a, Op::Write),
        (0x8a, Op::Write),
        (0x35, Op::Flush),
        (0x42, Op::Discard),
        (0x93, Op::WriteZeroes),
        (0x12, Op::Command),
        (0x00, Op::Command),
    ] {
        // The rest of the CDB does not change it.
        assert_eq!(Op::from_scsi(0xffff_ff00 | cdb), op, "{cdb:#x}");
    }
}

/// Reads of one disk's image (inode 12) by linux-aio: thread 1 handles the commands,
/// each command's data moves by a DMA request named only in its `blk_aio_preadv`.
fn scsi_read<S: Sink>(j: &mut Join<S>, t: u64, n: u64, sreq: u64, dma: u64) {
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let q = |dt, sub, a| sub_ev(t + dt, 1, EventKind::Qemu, sub, a);
    let k = |dt, kind, a| ev(t + dt, 1, kind, a);
    let (off, qiov) = (n * 0x1_0000, 0x7000 + n);
    j.event(&q(0, q::SCSI_REQ_ENQUEUE, [sreq, n * 128, 4096, 0x28]));
    j.event(&q(10, q::BLK_AIO_PREADV, [dma, off, 4096, 0xc1]));
    j.event(&q(20, q::BDRV_CO_PREADV_PART, [qiov, off, 4096, 0xc2]));
    j.event(&q(40, q::RAW_CO_PRW, [qiov, off, 4096, 1]));
    j.event(&q(50, q::LAIO_CO_SUBMIT, [qiov, off, 4096, 7 << 32 | 1]));
    j.event(&sub_ev(t + 60, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
    j.event(&k(70, EventKind::DioBegin, [0xd0 + n, off, 4096, 12]));
    let sector = ((12u64 << 30) + off) / 512;
    j.event(&k(
        80,
        EventKind::BioQueue,
        [0xb0 + n, sector, dev | 4096, 0],
    ));
    j.event(&k(
        90,
        EventKind::RqIssue,
        [0x70 + n, sector, dev | 4096, 0xb0 + n],
    ));
    j.event(&sub_ev(t + 100, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
}

fn complete_read<S: Sink>(j: &mut Join<S>, t: u64, n: u64) {
    let dev = u64::from(kernel_dev(8, 0)) << 32;
    let sector = ((12u64 << 30) + n * 0x1_0000) / 512;
    j.event(&ev(
        t,
        0,
        EventKind::RqComplete,
        [0x70 + n, sector, dev | 4096, 4096],
    ));
    j.event(&ev(
        t + 10,
        0,
        EventKind::DioComplete,
        [0xd0 + n, 0, 4096, 0],
    ));
}

/// Two reads in flight together on LUN 1, answered in the other order, then an
/// INQUIRY to the same LUN: each read is its own complete row at its own place (its
/// DMA's), and the INQUIRY, which reaches no host file, is the LUN's disk's.
#[test]
fn scsi_commands_in_flight_together_are_each_their_own() {
    let layout = two_disks();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let lun = lun_field(0, 1);
    let done = |sreq| {
        sub_ev(
            0,
            1,
            EventKind::Qemu,
            q::VIRTIO_SCSI_COMPLETE,
            [sreq, lun, 0, 0],
        )
    };
    let at = |mut e: RawEvent, ts| {
        e.ts = ts;
        e
    };
    scsi_read(&mut j, 1_000, 1, 0x5a01, 0xda01);
    scsi_read(&mut j, 1_200, 2, 0x5a02, 0xda02);
    complete_read(&mut j, 2_000, 2);
    j.event(&at(done(0x5a02), 2_100));
    complete_read(&mut j, 2_500, 1);
    j.event(&at(done(0x5a01), 2_600));
    j.event(&sub_ev(
        3_000,
        1,
        EventKind::Qemu,
        q::SCSI_REQ_ENQUEUE,
        [0x5a03, 0, 96, 0x12],
    ));
    j.event(&at(done(0x5a03), 3_050));
    let (All(mut rows, other), _) = j.finish();
    assert!(other.is_empty(), "{other:?}");
    rows.sort_by_key(|r| r.id);
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.op, r.offset.map(|o| o.0), r.bytes, r.partial, r.disk))
        .collect();
    assert_eq!(
        got,
        [
            (Op::Read, Some(0x1_0000), 4096, 0, Some(1)),
            (Op::Read, Some(0x2_0000), 4096, 0, Some(1)),
            (Op::Command, None, 0, 0, Some(1)),
        ]
    );
    let b = |r: &IoRow| {
        let a = r.b.as_array();
        (a[1], a[4], a[5], a[8])
    };
    assert_eq!(b(&rows[0]), (1_000, 1_090, 2_500, 2_600));
    assert_eq!(b(&rows[1]), (1_200, 1_290, 2_000, 2_100));
}

/// SYNCHRONIZE CACHE: QEMU's `blk_aio_flush` names the command itself, and the
/// thread pool's fdatasync that follows is its.
#[test]
fn a_scsi_flush_is_a_flush_with_its_sync() {
    let layout = Layout::default();
    let cfg = JoinConfig {
        flush_syscalls: true,
        ..JoinConfig::default()
    };
    let mut j = Join::new(&layout, All::default(), cfg);
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(1_000, q::SCSI_REQ_ENQUEUE, [0x5a01, 0, 0, 0x35]));
    j.event(&q(1_010, q::BLK_AIO_FLUSH, [0x5a01, 0, 0, 0xbb]));
    j.event(&q(
        1_100,
        q::THREAD_POOL_SUBMIT_AIO,
        [0xe1, 0, 0, 7 << 32 | q::AIO_FLUSH],
    ));
    j.event(&sub_ev(1_200, 3, EventKind::SysEnter, 11, [7, 0, 0, 0]));
    j.event(&sub_ev(1_900, 3, EventKind::SysExit, 11, [0, 0, 0, 0]));
    j.event(&q(
        2_000,
        q::VIRTIO_SCSI_COMPLETE,
        [0x5a01, lun_field(0, 0), 0, 0],
    ));
    let (All(rows, _), _) = j.finish();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!((r.op, r.partial, r.host_ios), (Op::Flush, 0, 1), "{r:?}");
    let a = r.b.as_array();
    assert_eq!((a[2], a[6], a[8]), (1_200, 1_900, 2_000), "{r:?}");
}

/// A response with no SCSIRequest (a command to a LUN with no disk) is no row; one
/// whose command came before the recording is cut at its start.
#[test]
fn scsi_responses_without_their_command() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(
        1_000,
        q::VIRTIO_SCSI_COMPLETE,
        [0, lun_field(0, 5), 0, 0],
    ));
    j.event(&q(
        1_100,
        q::VIRTIO_SCSI_COMPLETE,
        [0x5a09, lun_field(0, 0), 0, 0],
    ));
    let (All(rows, _), stats) = j.finish();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].partial, reasons::CUT_AT_START);
    assert_eq!(stats.cut_at_start, 1);
}

/// A read of clusters qcow2 has not allocated, on LUN 1 before any command of that
/// LUN reached its image: complete with no host IO (qcow2 answered from its tables),
/// and its disk the one QEMU's command line put at that address.
#[test]
fn a_read_of_unallocated_clusters_is_complete_on_its_luns_disk() {
    let mut layout = two_disks();
    let cmd: Vec<String> = [
        "qemu-system-x86_64",
        "-device",
        "virtio-scsi-pci,id=scsi0",
        "-drive",
        "file=/vm/a.qcow2,if=none,id=d0",
        "-device",
        "scsi-hd,bus=scsi0.0,scsi-id=0,lun=0,drive=d0",
        "-drive",
        "file=/vm/b.qcow2,if=none,id=d1",
        "-device",
        "scsi-hd,bus=scsi0.0,scsi-id=0,lun=1,drive=d1",
    ]
    .map(String::from)
    .to_vec();
    layout.name_disks(&cmd, None);
    assert_eq!(layout.disk_name(1), "/vm/b.qcow2 (scsi 0:0:1)");
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(1_000, q::SCSI_REQ_ENQUEUE, [0x5a01, 8, 4096, 0x28]));
    j.event(&q(1_010, q::BLK_AIO_PREADV, [0xda01, 4096, 4096, 0xc1]));
    j.event(&q(
        1_020,
        q::QCOW2_CO_PREADV_PART,
        [0x7001, 4096, 4096, 0xc2],
    ));
    j.event(&q(
        1_100,
        q::VIRTIO_SCSI_COMPLETE,
        [0x5a01, lun_field(0, 1), 0, 0x5c51],
    ));
    let (All(rows, _), _) = j.finish();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(
        (r.op, r.partial, r.disk, r.flags & flags::QCOW2_ZEROS),
        (Op::Read, 0, Some(1), flags::QCOW2_ZEROS),
        "{r:?}"
    );
}

/// Two UNMAPs handed over on one thread, the first still waiting for its discard:
/// scsi-disk's `blk_aio_pdiscard` names the command by its callback data's first word,
/// so the discard that follows is the second's, not the earliest waiting one's.
#[test]
fn an_unmap_gets_the_discard_its_callback_data_names() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    let lun = lun_field(0, 0);
    j.event(&q(1_000, q::SCSI_REQ_ENQUEUE, [0x5a01, 0, 24, 0x42]));
    j.event(&q(1_100, q::SCSI_REQ_ENQUEUE, [0x5a02, 0, 24, 0x42]));
    j.event(&q(
        1_200,
        q::BLK_AIO_PDISCARD,
        [0xcb02, 0x9_0000, 0x1_0000, 0x5a02],
    ));
    j.event(&q(
        1_210,
        q::BDRV_CO_PDISCARD,
        [0, 0x9_0000, 0x1_0000, 0xc1],
    ));
    j.event(&q(1_300, q::VIRTIO_SCSI_COMPLETE, [0x5a02, lun, 0, 0x5c51]));
    j.event(&q(
        2_000,
        q::BLK_AIO_PDISCARD,
        [0xcb01, 0x4_0000, 0x1_0000, 0x5a01],
    ));
    j.event(&q(
        2_010,
        q::BDRV_CO_PDISCARD,
        [0, 0x4_0000, 0x1_0000, 0xc1],
    ));
    j.event(&q(2_100, q::VIRTIO_SCSI_COMPLETE, [0x5a01, lun, 0, 0x5c51]));
    let (All(mut rows, _), _) = j.finish();
    rows.sort_by_key(|r| r.id);
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.op, r.offset.map(|o| o.0), r.bytes, r.partial))
        .collect();
    assert_eq!(
        got,
        [
            (Op::Discard, Some(0x4_0000), 0x1_0000, 0),
            (Op::Discard, Some(0x9_0000), 0x1_0000, 0),
        ]
    );
}

/// A stripped QEMU: the command ends at `scsi_req_complete`, which names its LUN by
/// number and SCSIDevice, not target; a command of that device that reaches no image
/// takes the disk its others did.
#[test]
fn scsi_req_complete_ends_a_command_where_virtio_scsi_cannot_be_probed() {
    let layout = two_disks();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let done = |ts, sreq| {
        sub_ev(
            ts,
            1,
            EventKind::Qemu,
            q::SCSI_REQ_COMPLETE,
            [sreq, 1, 0, 0x5d01],
        )
    };
    scsi_read(&mut j, 1_000, 1, 0x5a01, 0xda01);
    complete_read(&mut j, 2_000, 1);
    j.event(&done(2_100, 0x5a01));
    j.event(&sub_ev(
        3_000,
        1,
        EventKind::Qemu,
        q::SCSI_REQ_ENQUEUE,
        [0x5a02, 0, 96, 0x12],
    ));
    j.event(&done(3_050, 0x5a02));
    let (All(mut rows, _), _) = j.finish();
    rows.sort_by_key(|r| r.id);
    let got: Vec<_> = rows.iter().map(|r| (r.op, r.partial, r.disk)).collect();
    assert_eq!(
        got,
        [(Op::Read, 0, Some(1)), (Op::Command, 0, Some(1))],
        "{rows:?}"
    );
    assert_eq!(rows[0].b.as_array()[8], 2_100);
}
