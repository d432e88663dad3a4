//! Attaching to a VM already busy with IO: `viopath record --pid` on the load of
//! `load_e2e.rs`, checked against the guest's own block trace. The requests the window
//! cuts are counted, not dropped; attaching and detaching do not stall the guest.
//!
//! Needs root, the QEMU from tests/qemu/build.sh and the guest from tests/vm/guest.sh;
//! skipped, saying so, otherwise.

use crate::load_e2e::{
    GuestRq, LoadRun, Mode, guest_rqs, join_rows, prerequisites, run_load, run_load_attaching,
};
use std::collections::BTreeMap;
use std::time::Duration;
use viopath_reporter::join::{IoRow, Op, Source};

/// The load of `mode` run twice: not recorded, then with `viopath record --pid`
/// attaching `after_ms` into it for 3 s. The attached run, and the guest's longest gap
/// between completions in it and in the run not recorded (µs).
fn attached_and_plain(
    qemu: &std::path::Path,
    assets: &crate::vm::GuestAssets,
    mode: &Mode,
    after_ms: u64,
) -> (LoadRun, u64, u64) {
    let plain = run_load(qemu, assets, mode, None);
    let run = run_load_attaching(
        qemu,
        assets,
        mode,
        None,
        Some((Duration::from_millis(after_ms), "3s")),
    );
    let gap = longest_gap_us(&guest_rqs(&run.serial));
    (run, gap, longest_gap_us(&guest_rqs(&plain.serial)))
}

/// The largest gap between two of the guest's request completions, on its clock, from
/// its first to its last (µs).
fn longest_gap_us(rqs: &[GuestRq]) -> u64 {
    let mut t: Vec<u64> = rqs.iter().filter(|r| !r.issue).map(|r| r.us).collect();
    t.sort_unstable();
    t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
}

/// Attached with `--pid` to a busy VM whose requests are always in flight (four streams
/// throttled at 100 IOPS), for 3 s: the requests in flight at the start and at the end
/// are rows of their own, partial with those reasons and counted, not dropped; every
/// other row is a whole guest request; the rows are a run of the guest's requests with
/// none missing (checked against the guest's own trace, in its completion order); and
/// attaching and detaching do not stall the guest's IO (its longest gap between
/// completions, against the same VM not recorded).
#[test]
fn attach_to_a_busy_vm_counts_the_cut_requests() {
    let Some((qemu, assets)) = prerequisites() else {
        return;
    };
    let mode = Mode {
        iops_limit: Some(100),
        ops: 200,
        ..Mode::plain("threads")
    };
    let (run, gap, plain_gap) = attached_and_plain(&qemu, &assets, &mode, 1500);
    eprintln!(
        "longest gap between guest completions: {gap} µs attached and detached, {plain_gap} µs not recorded"
    );
    let (_, rows, stats) = join_rows(&run.trace);
    let virtio: Vec<&IoRow> = rows.iter().filter(|r| r.source == Source::Virtio).collect();
    eprintln!(
        "attach: {} rows, {} cut at the start, {} at the end, {} others",
        virtio.len(),
        stats.cut_at_start,
        stats.cut_at_end,
        rows.len() - virtio.len()
    );
    let reasons =
        viopath_reporter::join::reasons::CUT_AT_START | viopath_reporter::join::reasons::CUT_AT_END;
    let cut_start: Vec<&&IoRow> = virtio
        .iter()
        .filter(|r| r.partial == viopath_reporter::join::reasons::CUT_AT_START)
        .collect();
    let cut_end: Vec<&&IoRow> = virtio
        .iter()
        .filter(|r| r.partial == viopath_reporter::join::reasons::CUT_AT_END)
        .collect();
    assert_eq!(cut_start.len() as u64, stats.cut_at_start);
    assert_eq!(cut_end.len() as u64, stats.cut_at_end);
    // Four streams, each with a request (or a few, with the journal's) waiting.
    assert!((1..=16).contains(&cut_start.len()), "{cut_start:?}");
    assert!((1..=16).contains(&cut_end.len()), "{cut_end:?}");
    for r in &virtio {
        assert!(r.partial == 0 || r.partial & reasons == r.partial, "{r:?}");
    }
    // No QEMU row for a guest request's host half.
    let others: Vec<&IoRow> = rows.iter().filter(|r| r.source != Source::Virtio).collect();
    assert!(others.is_empty(), "{others:?}");

    // Against the guest's own trace, in its completion order: each row is one of its
    // requests; the rows that ended inside the recording are a run of them with none
    // missing, those cut at the start among the run's first, those cut at the end
    // right after it.
    let rqs = guest_rqs(&run.serial);
    let guest: Vec<&GuestRq> = rqs
        .iter()
        .filter(|r| !r.issue && r.minor < 16 && r.sectors > 0)
        .collect();
    let mut index: BTreeMap<(Op, Option<u64>, u64), Vec<usize>> = BTreeMap::new();
    for (i, r) in guest.iter().enumerate() {
        index.entry(r.key()).or_default().push(i);
    }
    let unique = |r: &IoRow| -> Option<usize> {
        let v = index.get(&(r.op, r.offset.map(|o| o.0), r.bytes))?;
        (v.len() == 1).then(|| v[0])
    };
    let data: Vec<&&IoRow> = virtio.iter().filter(|r| r.op.moves_data()).collect();
    for r in &data {
        assert!(
            index.contains_key(&(r.op, r.offset.map(|o| o.0), r.bytes)),
            "a row of no guest request: {r:?}"
        );
    }
    let inside: Vec<usize> = data
        .iter()
        .filter(|r| r.partial != viopath_reporter::join::reasons::CUT_AT_END)
        .filter_map(|r| unique(r))
        .collect();
    let (lo, hi) = (*inside.iter().min().unwrap(), *inside.iter().max().unwrap());
    // Completion order in the guest and in QEMU differ by a request or two at the
    // edges; inside, every guest request has its row.
    let mut have: BTreeMap<(Op, Option<u64>, u64), i64> = BTreeMap::new();
    for r in &data {
        *have
            .entry((r.op, r.offset.map(|o| o.0), r.bytes))
            .or_default() += 1;
    }
    for g in &guest[lo + 8..hi.saturating_sub(8).max(lo + 8)] {
        let n = have.entry(g.key()).or_default();
        assert!(*n > 0, "guest request {g:?} has no row");
        *n -= 1;
    }
    for r in cut_start.iter().filter(|r| r.op.moves_data()) {
        if let Some(i) = unique(r) {
            assert!(
                i <= lo + 16,
                "cut at the start but guest request {i} of {lo}..{hi}: {r:?}"
            );
        }
    }
    for r in cut_end.iter().filter(|r| r.op.moves_data()) {
        if let Some(i) = unique(r) {
            assert!(
                i + 16 >= hi,
                "cut at the end but guest request {i} of {lo}..{hi}: {r:?}"
            );
        }
    }
}

/// Attaching to and detaching from a busy, unthrottled VM (four streams of O_DIRECT
/// IO, ~10 s) does not stall its IO: the guest's longest gap between completions, with
/// `viopath record --pid` attaching 2 s into the load for 3 s, against the same VM not
/// recorded. Uprobes are written into QEMU's running text while it runs; a stall of the
/// guest would show as a gap of the attach's length.
#[test]
fn attach_and_detach_do_not_stall_the_guest() {
    let Some((qemu, assets)) = prerequisites() else {
        return;
    };
    let mode = Mode {
        ops: 500,
        ..Mode::plain("threads")
    };
    let (run, gap, plain_gap) = attached_and_plain(&qemu, &assets, &mode, 2000);
    eprintln!(
        "unthrottled: longest gap between guest completions {gap} µs with attach and detach, \
         {plain_gap} µs not recorded"
    );
    let (_, rows, _) = join_rows(&run.trace);
    assert!(rows.len() > 100, "{} rows", rows.len());
    assert!(
        gap < 2 * plain_gap + 20_000,
        "the guest's IO stopped for {gap} µs around attach or detach ({plain_gap} µs unrecorded)"
    );
}
