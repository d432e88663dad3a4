//! The reporter against synthetic traces whose every answer is known: the generator
//! (`viopath_reporter::synth`) says when each IO crossed each boundary; the join must
//! recover exactly that from the trace file, for every IO it did not lose events of.

use std::collections::HashMap;
use viopath_reporter::join::{IoRow, Join, JoinConfig, OtherClass, OtherIo, Sink, flags, reasons};
use viopath_reporter::layers::{Boundary, LAYER_NAMES, NB, split};
use viopath_reporter::reader::Trace;
use viopath_reporter::synth::{SynthConfig, Truth, generate};
use viopath_reporter::{GroupBy, Options, analyze, load_layout};

#[derive(Default)]
struct Rows {
    rows: Vec<IoRow>,
    other: Vec<OtherIo>,
}
impl Sink for Rows {
    fn io(&mut self, row: &IoRow) {
        self.rows.push(row.clone());
    }
    fn other(&mut self, o: &OtherIo) {
        self.other.push(o.clone());
    }
}

fn make(cfg: &SynthConfig, dir: &std::path::Path) -> (std::path::PathBuf, Vec<Truth>, u64) {
    let path = dir.join("synth.trace");
    let mut truths = Vec::new();
    let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let (_, stats) = generate(cfg, f, |t| truths.push(t)).unwrap();
    (path, truths, stats.lost)
}

/// A trace of 5,000 IOs of the default mix, and its truth.
fn five_thousand_ios(dir: &std::path::Path) -> (std::path::PathBuf, Vec<Truth>) {
    let cfg = SynthConfig {
        ios: 5_000,
        ..SynthConfig::default()
    };
    let (path, truths, _) = make(&cfg, dir);
    (path, truths)
}

fn join(path: &std::path::Path) -> (Rows, usize, u64) {
    let trace = Trace::open(path).unwrap();
    let (layout, _) = load_layout(&trace, &[]);
    let cfg = JoinConfig {
        await_msi: true,
        expect_qcow2: layout.has_qcow2(),
        qcow2_unprobed: false,
        flush_syscalls: true,
        fs_sync: false,
        aio_fsync: false,
        falloc_syscalls: false,
        dio_probe: false,
        tick_ns: 0,
        synced_writes: false,
        virtio_from_block: false,
        caller_callbacks: false,
    };
    let mut j = Join::new(&layout, Rows::default(), cfg);
    let mut ev = trace.events();
    for e in &mut ev {
        j.event(&e);
    }
    let late = ev.late();
    let (rows, stats) = j.finish();
    (rows, stats.peak_in_flight, late)
}

#[test]
fn recovers_every_boundary_of_every_io() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        ios: 20_000,
        lose_every: 97,
        ..SynthConfig::default()
    };
    let (path, truths, lost) = make(&cfg, dir.path());
    assert!(lost > 0);
    let (rows, peak, late) = join(&path);
    // The per-CPU merge put every event back in order.
    assert_eq!(late, 0);
    assert_eq!(rows.rows.len(), truths.len(), "one row per guest IO");
    // L2 reads belong to their requests; nothing else in the trace is QEMU's own.
    assert!(
        rows.other
            .iter()
            .all(|o| o.class != OtherClass::QemuInternal),
        "{:?}",
        rows.other.first()
    );
    let by_offset: HashMap<u64, &IoRow> = rows
        .rows
        .iter()
        .map(|r| (r.offset.expect("virtio rows have offsets").0, r))
        .collect();
    let (mut exact, mut partial, mut splits, mut merges, mut misses) = (0, 0, 0, 0, 0);
    for t in &truths {
        let r = by_offset[&t.offset];
        assert_eq!(r.bytes, t.bytes);
        assert_eq!(r.op == viopath_reporter::join::Op::Write, t.write);
        if t.lost {
            assert!(
                r.partial & reasons::HOST_IO_UNFINISHED != 0,
                "IO at {} lost its syscall exit but is not partial: {r:?}",
                t.offset
            );
            partial += 1;
            continue;
        }
        assert_eq!(r.partial, 0, "IO at {}: {r:?}", t.offset);
        assert_eq!(r.b, t.b, "IO at {}: boundaries differ", t.offset);
        let (layers, e2e) = split(&r.b);
        let (want, want_e2e) = split(&t.b);
        assert_eq!(layers, want);
        assert_eq!(e2e, want_e2e);
        assert_eq!(layers.iter().flatten().sum::<u64>(), e2e);
        assert_eq!(
            r.flags & flags::SPLIT != 0,
            t.split,
            "split at {}",
            t.offset
        );
        assert_eq!(
            r.flags & flags::MERGED != 0,
            t.merged,
            "merge at {}",
            t.offset
        );
        assert_eq!(r.meta_ios, t.l2_miss as u32, "L2 miss at {}", t.offset);
        splits += t.split as u32;
        merges += t.merged as u32;
        misses += t.l2_miss as u32;
        exact += 1;
    }
    assert!(exact > 19_000 && partial > 100 && splits > 500 && merges > 1000 && misses > 1000);
    // Memory follows the queue depth, not the trace: 20,000 IOs, a few dozen held.
    assert!(peak < 200, "peak in flight {peak}");
    // Every boundary is there in a complete synthetic row, but `entered` (the synthetic
    // host has no partition to remap from), `fs_entered` (nor function probes) and
    // `bottom_queued` (nor stacked devices).
    let absent = [
        Boundary::Entered,
        Boundary::FsEntered,
        Boundary::BottomQueued,
    ];
    assert!(truths.iter().all(|t| {
        Boundary::ALL
            .iter()
            .all(|&b| (t.b[b] != 0) != absent.contains(&b))
    }));
    assert_eq!(NB, 13);
}

/// Nearest-rank quantile, computed here independently of polars.
fn nearest(v: &mut [u64], q: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn latency_table_matches_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let (path, truths) = five_thousand_ios(dir.path());
    let opts = Options {
        top_n: 5,
        by: vec![GroupBy::Op],
        ..Options::default()
    };
    let (report, _) = analyze(&path, &opts).unwrap();
    assert_eq!(report.summary.ios, truths.len() as u64);
    assert_eq!(report.summary.partial_ios, 0);
    for (op, write) in [("read", false), ("write", true)] {
        let ts: Vec<&Truth> = truths.iter().filter(|t| t.write == write).collect();
        for (li, name) in LAYER_NAMES.iter().enumerate() {
            let mut v: Vec<u64> = ts.iter().filter_map(|t| split(&t.b).0[li]).collect();
            if v.is_empty() {
                // A layer no IO had (blk_throttle, here) has no line.
                assert!(
                    !report
                        .latency
                        .iter()
                        .any(|s| s.group["op"] == op && s.layer == *name),
                    "{op} {name}"
                );
                continue;
            }
            let stat = report
                .latency
                .iter()
                .find(|s| s.group["op"] == op && s.layer == *name)
                .unwrap_or_else(|| panic!("no {op} {name} line"));
            assert_eq!(stat.count, v.len() as u64, "{op} {name}");
            let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
            assert!(
                (stat.mean_ns - mean).abs() < 1e-6 * mean.max(1.0),
                "{op} {name} mean"
            );
            assert_eq!(stat.max_ns, *v.iter().max().unwrap());
            assert_eq!(stat.p50_ns, nearest(&mut v, 0.5), "{op} {name} p50");
            assert_eq!(stat.p99_ns, nearest(&mut v, 0.99), "{op} {name} p99");
            assert_eq!(stat.p999_ns, nearest(&mut v, 0.999), "{op} {name} p99.9");
        }
        // Shares add up to the whole.
        let total: f64 = report
            .latency
            .iter()
            .filter(|s| s.group["op"] == op && s.layer != "e2e")
            .map(|s| s.share)
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{op}: shares sum to {total}");
    }
    // The slowest IOs are the truth's slowest, slowest first.
    let mut e2e: Vec<u64> = truths.iter().map(|t| split(&t.b).1).collect();
    e2e.sort_unstable_by(|a, b| b.cmp(a));
    let got: Vec<u64> = report.slowest.iter().map(|s| s.e2e_ns).collect();
    assert_eq!(got, e2e[..5]);
}

/// Grouped by size then op, and not grouped at all: each line's count and quantiles are
/// those of its IOs in the truth, and the lines come in the order of their keys as asked.
#[test]
fn latency_table_groups_by_any_keys_in_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let (path, truths) = five_thousand_ios(dir.path());
    let size_of = |t: &Truth| viopath_reporter::report::size_class(t.bytes);
    let op_of = |t: &Truth| if t.write { "write" } else { "read" };
    let opts = Options {
        by: vec![GroupBy::Size, GroupBy::Op],
        ..Options::default()
    };
    let (report, _) = analyze(&path, &opts).unwrap();
    let mut keys: Vec<(u64, &str)> = truths
        .iter()
        .map(|t| (t.bytes.max(1).next_power_of_two(), op_of(t)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    assert!(
        keys.len() >= 4,
        "the mix has several sizes of each op: {keys:?}"
    );
    let lines: Vec<(String, String)> = report
        .latency
        .iter()
        .filter(|s| s.layer == "e2e")
        .map(|s| (s.group["size"].clone(), s.group["op"].clone()))
        .collect();
    let want: Vec<(String, String)> = keys
        .iter()
        .map(|&(b, op)| (viopath_reporter::report::size_class(b), op.to_owned()))
        .collect();
    assert_eq!(lines, want);
    for stat in &report.latency {
        let li = LAYER_NAMES.iter().position(|n| *n == stat.layer);
        let mut v: Vec<u64> = truths
            .iter()
            .filter(|t| size_of(t) == stat.group["size"] && op_of(t) == stat.group["op"])
            .filter_map(|t| match li {
                Some(li) => split(&t.b).0[li],
                None => Some(split(&t.b).1),
            })
            .collect();
        let what = format!("{:?} {}", stat.group, stat.layer);
        assert_eq!(stat.count, v.len() as u64, "{what}");
        assert_eq!(stat.max_ns, *v.iter().max().unwrap(), "{what}");
        assert_eq!(stat.p50_ns, nearest(&mut v, 0.5), "{what} p50");
        assert_eq!(stat.p90_ns, nearest(&mut v, 0.9), "{what} p90");
        assert_eq!(stat.p999_ns, nearest(&mut v, 0.999), "{what} p99.9");
    }
    let opts = Options {
        by: vec![],
        ..Options::default()
    };
    let (report, _) = analyze(&path, &opts).unwrap();
    let mut v: Vec<u64> = truths.iter().map(|t| split(&t.b).1).collect();
    let e2e = report.latency.iter().find(|s| s.layer == "e2e").unwrap();
    assert!(e2e.group.is_empty());
    assert_eq!(e2e.count, truths.len() as u64);
    assert_eq!(e2e.p99_ns, nearest(&mut v, 0.99));
}

#[test]
fn a_damaged_trace_is_read_to_its_last_good_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        ios: 20_000,
        ..SynthConfig::default()
    };
    let (path, truths, _) = make(&cfg, dir.path());
    let full = std::fs::read(&path).unwrap();
    let opts = Options::default();
    // Truncated in the middle: no end, no layout; what was read is reported.
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let (r, src) = analyze(&cut, &opts).unwrap();
    assert!(!r.summary.trace_complete);
    let d = r.summary.damage.as_ref().expect("damage reported");
    assert!(d.problem.contains("truncated"), "{}", d.problem);
    assert!(r.summary.ios > 1000 && r.summary.ios < truths.len() as u64);
    assert_eq!(src.from, "none");
    // A flipped byte in an event chunk: events stop there, the rest is still used.
    let mut bad = full.clone();
    let at = full.len() / 3;
    bad[at] ^= 0x55;
    let flipped = dir.path().join("flipped.trace");
    std::fs::write(&flipped, &bad).unwrap();
    let (r, _) = analyze(&flipped, &opts).unwrap();
    let d = r.summary.damage.as_ref().expect("damage reported");
    assert!(
        d.problem.contains("checksum") || d.problem.contains("magic"),
        "{}",
        d.problem
    );
    assert!(r.summary.events_unread > 0);
    // Garbage and empty files: clear errors.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"hello").unwrap();
    let e = analyze(&junk, &opts).unwrap_err().to_string();
    assert!(e.contains("not a viopath trace"), "{e}");
}

#[test]
fn the_threaded_batch_reader_delivers_what_the_iterator_does() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        ios: 30_000,
        ..SynthConfig::default()
    };
    let (path, _, _) = make(&cfg, dir.path());
    let trace = Trace::open(&path).unwrap();
    let one_by_one: Vec<_> = trace.events().collect();
    let mut batched = Vec::with_capacity(one_by_one.len());
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = calls.clone();
    let progress = viopath_reporter::Progress(std::sync::Arc::new(move |done, total| {
        assert!(done <= total);
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }));
    let ev = viopath_reporter::for_each_event(&trace, Some(&progress), |e| batched.push(*e));
    assert_eq!(ev.events_read(), one_by_one.len() as u64);
    assert!(calls.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(batched.len(), one_by_one.len());
    assert!(batched == one_by_one, "same events in the same order");
    // CPUs interleaved in the file, in timestamp order out of the reader.
    assert!(batched.windows(2).all(|w| w[0].ts <= w[1].ts));
    let cpus: std::collections::BTreeSet<u16> = batched.iter().map(|e| e.cpu).collect();
    assert!(cpus.len() > 1, "{cpus:?}");
}

#[test]
fn a_panic_in_the_consumer_stops_the_reader_thread_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        ios: 20_000,
        ..SynthConfig::default()
    };
    let (path, _, _) = make(&cfg, dir.path());
    let trace = Trace::open(&path).unwrap();
    // The reader fills the channel long before the trace ends; the consumer panics on
    // its first event. Before the receiver was owned by the scope, this hung.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        viopath_reporter::for_each_event(&trace, None, |_| panic!("consumer fails"))
    }));
    assert!(r.is_err());
}

/// Where each chunk of a trace file starts, its kind and its event count, by walking it
/// forward with the recorder crate's own reader (the oracle for reading tail first).
fn chunk_map(data: &[u8]) -> Vec<(usize, viopath_probes::trace::ChunkKind, usize)> {
    viopath_probes::trace::chunks(data)
        .unwrap()
        .map(|c| c.unwrap())
        .map(|c| {
            let n = match c.kind {
                viopath_probes::trace::ChunkKind::Events => c.event_count(),
                _ => 0,
            };
            (c.offset as usize, c.kind, n)
        })
        .collect()
}

#[test]
fn a_complete_trace_is_read_tail_first_with_what_the_full_walk_gives() {
    use viopath_probes::trace::ChunkKind;
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        ios: 30_000,
        lose_every: 50,
        ..SynthConfig::default()
    };
    let (path, _, lost) = make(&cfg, dir.path());
    assert!(lost > 0);
    let data = std::fs::read(&path).unwrap();
    let map = chunk_map(&data);
    let (end_at, kind, _) = *map.last().unwrap();
    assert_eq!(kind, ChunkKind::End);
    // Without its End chunk the same trace can only be read by walking every chunk.
    let walked = dir.path().join("no-end.trace");
    std::fs::write(&walked, &data[..end_at]).unwrap();

    let tail = Trace::open(&path).unwrap();
    let full = Trace::open(&walked).unwrap();
    assert!(tail.info.complete && !full.info.complete);
    assert!(full.info.damage.is_none(), "{:?}", full.info.damage);
    assert_eq!(tail.header, full.header);
    assert!(tail.layout.is_some());
    assert_eq!(tail.layout, full.layout);
    assert_eq!(tail.losses, full.losses);
    assert_eq!(tail.info.events_lost_in_kernel, lost);
    assert_eq!(full.info.events_lost_in_kernel, lost);
    let in_chunks: usize = map.iter().map(|c| c.2).sum();
    assert_eq!(full.info.events_in_file, in_chunks as u64);
    // Tail first, the count is a bound from the bytes (chunk headers counted as events).
    let bound = tail.info.events_in_file;
    assert!(bound >= in_chunks as u64 && bound - (in_chunks as u64) < map.len() as u64);

    let mut a = tail.events();
    let from_tail: Vec<_> = (&mut a).collect();
    let mut b = full.events();
    let from_walk: Vec<_> = (&mut b).collect();
    assert_eq!(from_tail.len(), in_chunks);
    assert!(from_tail == from_walk, "same events in the same order");
    assert!(a.damage().is_none() && b.damage().is_none());
    let (done, total) = a.position();
    assert_eq!(done, total);
    assert!(total > 0);

    // A broken chunk header in the middle of a complete trace: the tail (layout, losses,
    // end) is still read, and the events stop at that chunk and say so.
    let events_chunks: Vec<_> = map.iter().filter(|c| c.1 == ChunkKind::Events).collect();
    let victim = events_chunks[events_chunks.len() / 2];
    let before: usize = map.iter().take_while(|c| c.0 < victim.0).map(|c| c.2).sum();
    let mut bad = data.clone();
    bad[victim.0] ^= 0xff; // its magic
    let broken = dir.path().join("broken.trace");
    std::fs::write(&broken, &bad).unwrap();
    let t = Trace::open(&broken).unwrap();
    assert!(t.info.complete && t.layout.is_some());
    let mut ev = t.events();
    let got = (&mut ev).count();
    assert_eq!(got, before);
    let d = ev.damage().expect("damage reported");
    assert_eq!(d.offset, victim.0 as u64);
    assert!(d.problem.contains("magic"), "{}", d.problem);
    assert!(d.bytes_unread > 0);
    // And the report says so.
    let (r, _) = analyze(&broken, &Options::default()).unwrap();
    assert_eq!(
        r.summary.damage.as_ref().map(|d| d.offset),
        Some(victim.0 as u64)
    );
}

/// A trace whose JSON chunks have fields and entries of the wrong shape (a damaged or
/// foreign writer): they are left out and counted, and the rest is read.
#[test]
fn malformed_json_entries_are_skipped_and_counted() {
    use serde_json::json;
    use viopath_probes::trace::{ChunkKind, TraceWriter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.trace");
    let mut w = TraceWriter::create(
        &path,
        &json!({
            "format": 1,
            "abi": 1,
            "host": 7,
            "probes": [
                {"name": "block_rq_issue", "layer": "block", "attach": "tp_btf", "attached": true},
                {"name": 3}
            ],
            "from_a_newer_recorder": true
        }),
    )
    .unwrap();
    w.json_chunk(
        ChunkKind::Losses,
        &json!({"total": 5, "by_cpu_and_kind": ["not an entry"]}),
    )
    .unwrap();
    w.json_chunk(
        ChunkKind::Layout,
        &json!({
            "images": [{
                "path": "/vm/a.qcow2",
                "file_hosts": [{"file": "/vm/a.qcow2", "len": 4096, "host": ["not a segment"]}],
                "guest": {"partitions": [], "extents": [{"offset": 0, "len": 0, "what": "file"}]}
            }],
            "devices": []
        }),
    )
    .unwrap();
    w.finish(&json!({"stop_reason": "test"})).unwrap();

    let t = Trace::open(&path).unwrap();
    assert_eq!(
        t.header.host, "",
        "a host of the wrong type is left at its default"
    );
    assert_eq!(t.header.probes.len(), 1);
    assert!(t.header.attached("block_rq_issue"));
    assert_eq!(t.info.events_lost_in_kernel, 5);
    // host, one probe, one loss entry, one host segment.
    assert_eq!(t.info.json_entries_skipped, 4);
    let (report, _) = analyze(&path, &Options::default()).unwrap();
    // And the guest extent of no length, which the layout leaves out.
    assert_eq!(report.summary.trace_entries_skipped, 5);
    assert_eq!(report.summary.layers_missing, Vec::<String>::new());
}

/// Events whose checksums are right but whose timestamps lie far outside the recording
/// (a chunk base of 1.2e18 ns) are counted as damage and left out: they neither join
/// nor stretch the report's duration to billions of seconds.
#[test]
fn events_outside_the_recording_are_damage_not_data() {
    use serde_json::json;
    use viopath_probes::abi::{EventKind, RawEvent};
    use viopath_probes::trace::TraceWriter;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd-times.trace");
    let start = 10_000_000_000u64;
    let mut w = TraceWriter::create(
        &path,
        &json!({"format": 1, "abi": 1, "monotonic_ns_at_start": start}),
    )
    .unwrap();
    let ev = |ts: u64| RawEvent {
        ts,
        tid: 7,
        kind: EventKind::RqIssue as u8,
        sub: 0,
        cpu: 0,
        a: [0x10, 8, 8 << 32 | 4096, 0],
    };
    for i in 0..10 {
        w.push(&ev(start + 100_000_000 + i * 1000)).unwrap();
    }
    // Its own chunk (too far for the first's base): a checksum-valid chunk.
    w.flush_events().unwrap();
    w.push(&ev(start + 1_200_000_000_000_000_000)).unwrap();
    w.push(&ev(start + 1_200_000_000_000_000_100)).unwrap();
    w.flush_events().unwrap();
    w.push(&ev(1)).unwrap();
    w.finish(&json!({"stop_reason": "test", "duration_s": 1.0}))
        .unwrap();

    let t = Trace::open(&path).unwrap();
    let mut events = t.events();
    let n = events.by_ref().count();
    assert_eq!((n, events.impossible()), (10, 3));
    let (report, _) = analyze(&path, &Options::default()).unwrap();
    assert_eq!(report.summary.events_impossible, 3);
    assert!(
        report.summary.duration_ns < 2_000_000_000,
        "{:?}",
        report.summary.duration_ns
    );
}

/// A damaged Layout or End chunk (its checksum fails) costs what it held, not the
/// events: every event is read, none is counted unread, and the damage names the chunk
/// and what is missing without it.
#[test]
fn a_damaged_json_chunk_costs_what_it_held_not_events() {
    use serde_json::json;
    use viopath_probes::abi::{EventKind, RawEvent};
    use viopath_probes::trace::{ChunkKind, TraceWriter};
    let dir = tempfile::tempdir().unwrap();
    for (which, marker, want) in [
        (
            "layout",
            "/vm/damaged-layout.qcow2",
            "Layout chunk is damaged",
        ),
        ("end", "a damaged end", "End chunk is damaged"),
    ] {
        let path = dir.path().join(format!("{which}.trace"));
        let mut w = TraceWriter::create(&path, &json!({"format": 1, "abi": 1})).unwrap();
        for i in 0..100u64 {
            w.push(&RawEvent {
                ts: 1_000 + i,
                tid: 7,
                kind: EventKind::RqIssue as u8,
                sub: 0,
                cpu: 0,
                a: [0x10 + i, 8, 8 << 32 | 4096, 0],
            })
            .unwrap();
        }
        w.json_chunk(ChunkKind::Losses, &json!({"total": 0}))
            .unwrap();
        w.json_chunk(
            ChunkKind::Layout,
            &json!({"images": [{"path": "/vm/damaged-layout.qcow2"}], "devices": []}),
        )
        .unwrap();
        w.finish(&json!({"stop_reason": "a damaged end"})).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(marker.len())
            .position(|x| x == marker.as_bytes())
            .unwrap();
        bytes[at + 1] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();

        let t = Trace::open(&path).unwrap();
        let mut events = t.events();
        assert_eq!(events.by_ref().count(), 100, "{which}");
        let (report, _) = analyze(&path, &Options::default()).unwrap();
        let s = &report.summary;
        assert_eq!(s.events, 100, "{which}");
        assert_eq!(s.events_unread, 0, "{which}: {:?}", s.damage);
        let damage = s
            .damage
            .as_ref()
            .unwrap_or_else(|| panic!("{which}: no damage said"));
        assert!(damage.problem.contains(want), "{which}: {damage:?}");
    }
}
