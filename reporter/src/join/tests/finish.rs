use super::*;

#[test]
fn a_late_callback_ends_its_request_however_long_its_thread_was_off_the_cpu() {
    // qemu-io's thread is off the CPU for 6 ms between the host IO and the callback
    // while other processes' events run the trace's clock on (as in a CI run with
    // both CPUs busy): the request still ends at its callback.
    let layout = Layout::default();
    let mut j = Join::new(&layout, Rows::default(), JoinConfig::default());
    qemu_io_aio_read(&mut j, 0, 1_000_000, None);
    others(&mut j, 1_100_000, 7_100_000);
    assert!(j.sink.0.is_empty(), "reported before its thread went on");
    let (ctx, ..) = QEMU_IO_READ;
    j.event(&RawEvent {
        sub: q::QEMU_IO_AIO_READ_DONE,
        ..ev(7_200_000, 5, EventKind::Qemu, [ctx, 0, 0, 0])
    });
    assert_eq!(j.sink.0.len(), 1, "reported at the callback");
    assert_eq!(
        j.sink.0[0].b.as_array()[7],
        7_200_000,
        "qemu_done: the late callback"
    );
    // Without a callback (a caller whose completion is not probed), the request is
    // over once its thread has been seen 2 ms after it: here its next request.
    qemu_io_aio_read(&mut j, 1, 10_000_000, None);
    others(&mut j, 10_100_000, 20_000_000);
    assert_eq!(j.sink.0.len(), 1, "its thread has not gone on");
    qemu_io_aio_read(&mut j, 2, 20_000_000, None);
    others(&mut j, 20_100_000, 22_100_000);
    assert_eq!(j.sink.0.len(), 2, "over once its thread went on");
    let row = &j.sink.0[1];
    assert_eq!(
        (
            row.b.as_array()[1],
            row.b.as_array()[6],
            row.b.as_array()[7]
        ),
        (10_000_000, 10_025_000, 0)
    );
    assert_eq!(row.partial, 0);
    // A thread that stays quiet: its request is over (not partial) when stale.
    others(&mut j, 22_100_000, 22_200_000);
    j.event(&ev(
        20_025_000 + STALE_NS + 1_000_000,
        77,
        EventKind::BioComplete,
        [0xdead_0000, 0, 0, 0],
    ));
    assert_eq!(j.sink.0.len(), 3, "stale");
    let row = &j.sink.0[2];
    assert_eq!((row.b.as_array()[6], row.partial), (20_025_000, 0));
}

#[test]
fn requests_that_never_complete_are_dropped_in_time() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
    let dev = u64::from(kernel_dev(254, 0)) << 32;
    for i in 0..100u64 {
        let (ts, bio, rq) = (1_000 + i * 10_000, 0x1000 + i, 0x9000 + i);
        block_request(&mut j, ts, 5, bio, rq, i * 8, dev | 4096);
    }
    assert_eq!(j.reqs.len(), 100);
    j.event(&ev(2_000_000 + STALE_NS, 1, EventKind::KvmMmio, [0; 4]));
    assert_eq!((j.reqs.len(), j.stats.requests_lost), (0, 100));
    assert_eq!(j.sink.0.len(), 100);
}

#[test]
fn contexts_of_threads_gone_quiet_are_dropped() {
    // Direct IO by many short-lived processes (no QEMU probes): each thread gets a
    // context, and once quiet for STALE_NS it must be gone, not kept forever.
    let layout = Layout::default();
    let mut j = Join::new(&layout, Nothing, JoinConfig::default());
    for i in 0..1000u32 {
        let (ts, tid, kiocb) = (
            1_000_000 + u64::from(i) * 1_000,
            10_000 + i,
            0x1000 + u64::from(i),
        );
        j.event(&ev(ts, tid, EventKind::DioBegin, [kiocb, 0, 4096, 7]));
        j.event(&ev(ts + 10, tid, EventKind::DioComplete, [kiocb, 0, 0, 0]));
    }
    assert!(j.threads.len() >= 1000, "{} contexts", j.threads.len());
    // Later, one event from one thread.
    j.event(&ev(2_000_000 + STALE_NS, 1, EventKind::KvmMmio, [0; 4]));
    assert_eq!(j.threads.len(), 0);
}

/// A guest request still in flight when the trace ends: the recording stopped before
/// it completed. Partial for that reason alone, and counted.
#[test]
fn a_request_in_flight_at_the_end_is_cut_by_the_recordings_stop() {
    let layout = Layout::default();
    let mut j = Join::new(&layout, All::default(), JoinConfig::default());
    let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
    j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xa1, 0, 0, 0]));
    j.event(&q(1_100, q::BLK_AIO_PREADV, [0xa1, 0x4000, 4096, 0xbb]));
    let (all, stats) = j.finish();
    assert_eq!(stats.cut_at_end, 1);
    assert_eq!(all.0.len(), 1);
    assert_eq!(all.0[0].partial, reasons::CUT_AT_END, "{:?}", all.0);
}
