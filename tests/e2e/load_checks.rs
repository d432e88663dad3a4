//! The checks of a load run (`load_e2e`) against what neither viopath nor its probes
//! produce: the guest's own block trace and /sys/block stat, QEMU's own accounting,
//! and the trace's own loss counts.

use crate::common::*;
use crate::load_e2e::{HIST_NS, LoadRun};
use std::collections::BTreeMap;
use std::path::Path;
use viopath_reporter::join::{IoRow, Join, Op, Source, flags};
use viopath_reporter::layers::{Boundary, split};
use viopath_reporter::reader::Trace;

/// A request as the guest's block layer traced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRq {
    pub issue: bool,
    /// The guest's clock, µs.
    pub us: u64,
    pub minor: u32,
    pub rwbs: String,
    pub sector: u64,
    pub sectors: u64,
}

impl GuestRq {
    fn op(&self) -> Op {
        match self.rwbs.chars().next() {
            Some('R') => Op::Read,
            Some('W') => Op::Write,
            Some('D') => Op::Discard,
            Some('N') => Op::WriteZeroes,
            Some('F') => Op::Flush,
            _ => Op::Other,
        }
    }

    /// (op, byte offset, bytes) as a row would carry it: a flush has no range.
    pub fn key(&self) -> (Op, Option<u64>, u64) {
        match self.op() {
            Op::Flush => (Op::Flush, None, 0),
            op => (op, Some(self.sector * 512), self.sectors * 512),
        }
    }
}

pub fn guest_rqs(serial: &str) -> Vec<GuestRq> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("viopath-rq "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (s, us) = f[1].split_once('.').unwrap();
            GuestRq {
                issue: f[0] == "issue",
                us: s.parse::<u64>().unwrap() * 1_000_000 + us.parse::<u64>().unwrap(),
                minor: f[2].split_once(',').unwrap().1.parse().unwrap(),
                rwbs: f[3].to_owned(),
                sector: f[4].parse().unwrap(),
                sectors: f[5].parse().unwrap(),
            }
        })
        .collect()
}

/// /sys/block/vda/stat as the guest printed it on a `which` line.
fn stat(serial: &str, which: &str) -> Vec<u64> {
    let line = serial
        .lines()
        .find_map(|l| l.trim().strip_prefix(which))
        .unwrap_or_else(|| panic!("no {which} line:\n{serial}"));
    let mut f: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    f.resize(17, 0);
    f
}

/// /sys/block/vda/stat's completed requests: reads, writes, discards, flushes.
pub fn stat_requests(serial: &str, which: &str) -> u64 {
    let f = stat(serial, which);
    f[0] + f[4] + f[11] + f[15]
}

/// The rows of the guest's requests, joined from the trace.
pub fn join_rows(trace: &Path) -> (Trace, Vec<IoRow>, viopath_reporter::join::JoinStats) {
    let t = Trace::open(trace).unwrap();
    let (layout, src) = viopath_reporter::load_layout(&t, &[]);
    assert!(src.errors.is_empty(), "layout errors: {:?}", src.errors);
    let cfg = viopath_reporter::join_config(&t, &layout);
    let mut join = Join::new(&layout, Rows::default(), cfg);
    for e in t.events() {
        join.event(&e);
    }
    let (Rows(rows, _), stats) = join.finish();
    (t, rows, stats)
}

/// Keeps a recording for a look when a check fails (the temporary directory is not).
pub fn keep(run: &LoadRun, name: &str) -> String {
    let dir = Path::new("/var/tmp/viopath-failed");
    let to = dir.join(format!("{name}-{}.trace", std::process::id()));
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::copy(&run.trace, &to)) {
        Ok(_) => format!("recording kept at {}", to.display()),
        Err(e) => format!("recording not kept: {e}"),
    }
}

/// The checks every recorded load run must pass.
pub fn check_exact(run: &LoadRun, name: &str) -> (Vec<IoRow>, Vec<GuestRq>) {
    let (t, mut rows, stats) = join_rows(&run.trace);
    // One VM of several: its rows alone (the trace's VM number is its place in the
    // list of VMs).
    if let Some(pid) = run.vm_pid {
        let vms = t.end.as_ref().map(|e| e.vms.clone()).unwrap_or_default();
        let vm = vms
            .iter()
            .position(|v| v.pid == pid)
            .unwrap_or_else(|| panic!("{name}: pid {pid} not among the VMs {vms:?}"));
        rows.retain(|r| usize::from(r.vm) == vm);
    }
    // Every check is made and all that fail are said at once.
    let mut bad: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    // Zero lost: the ring buffers, the kernel's skips, and block requests whose
    // completion never came.
    let losses = t.losses.clone().unwrap_or_default();
    check(losses.total == 0, format!("events lost: {losses:?}"));
    check(
        stats.requests_lost == 0,
        format!("{} block completions lost", stats.requests_lost),
    );
    let missing = completions_missing(&t);
    check(
        missing.is_empty(),
        format!("completions missing: {missing:?}"),
    );

    let rqs = guest_rqs(&run.serial);
    let drive = drive_of(&t, run);
    // The guest's disks by their first minor number, as it printed them.
    let drives: BTreeMap<u32, usize> = run
        .serial
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l
                .trim()
                .strip_prefix("viopath-drive ")?
                .split_whitespace()
                .collect();
            let minor = f.get(1)?.split_once(':')?.1.parse().ok()?;
            Some((minor, f.first()?.parse().ok()?))
        })
        .collect();
    let guest_drive = |minor: u32| drives.get(&(minor / 16 * 16)).copied();
    // A write or read traced with no sectors left is the end of a flush sequence (the
    // block layer ends the guest's request after its post-flush), not a request of
    // the device's.
    let guest: Vec<&GuestRq> = rqs
        .iter()
        .filter(|r| {
            !r.issue && guest_drive(r.minor).is_some() && (r.sectors > 0 || r.op() == Op::Flush)
        })
        .collect();
    assert!(guest.len() > 500, "only {} guest requests", guest.len());
    let overrun = run
        .serial
        .lines()
        .find_map(|l| l.trim().strip_prefix("viopath-lost "))
        .unwrap_or("?");
    assert_eq!(overrun, "0", "the guest's trace buffer overran");
    // The guest's own count agrees with its trace: reads and flushes one for one.
    // (Not writes: stat counts a write with a flush sequence once when it ends, while
    // the trace has its data request and its end separately.)
    let before = stat_requests(&run.serial, "viopath-stat0 ")
        + if run.disks.len() > 1 {
            stat_requests(&run.serial, "viopath-xstat0 ")
        } else {
            0
        };
    let (s0, s1) = (
        stat(&run.serial, "viopath-stat0 "),
        stat(&run.serial, "viopath-stat1 "),
    );
    let on = |d: usize, op: Op| {
        guest
            .iter()
            .filter(|r| guest_drive(r.minor) == Some(d) && r.op() == op)
            .count() as u64
    };
    let main = |op: Op| on(0, op);
    assert_eq!(
        s1[0] - s0[0],
        main(Op::Read),
        "reads: stat and trace disagree"
    );
    assert_eq!(
        s1[15] - s0[15],
        main(Op::Flush),
        "flushes: stat and trace disagree"
    );
    if run.disks.len() > 1 {
        let (x0, x1) = (
            stat(&run.serial, "viopath-xstat0 "),
            stat(&run.serial, "viopath-xstat1 "),
        );
        let second = |op: Op| on(1, op);
        assert_eq!(x1[0] - x0[0], second(Op::Read), "second disk's reads");
        assert_eq!(
            x1[11] - x0[11],
            second(Op::Discard),
            "second disk's discards"
        );
    }
    // Requests of a device model's own (a SCSI disk's INQUIRY, READ CAPACITY, ...)
    // are no block requests of the guest's disk: its stat and trace have none.
    let virtio: Vec<&IoRow> = rows
        .iter()
        .filter(|r| r.source == Source::Virtio && !matches!(r.op, Op::GetId | Op::Command))
        .collect();
    // One row per guest request: the guest's traced ones by (disk, op, offset, bytes),
    // and as many more as it completed before its tracing started.
    type Key = (Option<usize>, Op, Option<u64>, u64);
    let mut want: BTreeMap<Key, i64> = BTreeMap::new();
    for r in &guest {
        let (op, off, len) = r.key();
        *want
            .entry((guest_drive(r.minor), op, off, len))
            .or_default() += 1;
    }
    let mut got: BTreeMap<Key, i64> = BTreeMap::new();
    for r in &virtio {
        *got.entry((drive(r.disk), r.op, r.offset.map(|o| o.0), r.bytes))
            .or_default() += 1;
    }
    let mut unmatched = Vec::new();
    let mut extra = Vec::new();
    for (k, n) in &want {
        let g = got.get(k).copied().unwrap_or(0);
        if g < *n {
            unmatched.push((*k, n - g));
        }
    }
    for (k, n) in &got {
        let e = n - want.get(k).copied().unwrap_or(0);
        if e > 0 {
            extra.push((*k, e));
        }
    }
    // SeaBIOS reads each virtio disk's first sector (512 bytes) looking for a boot
    // record, before the guest's kernel starts: a request no kernel counter sees.
    let firmware = extra
        .iter()
        .filter(|(k, _)| (k.1, k.2, k.3) == (Op::Read, Some(0), 512))
        .map(|e| e.1)
        .sum::<i64>();
    check(
        firmware <= run.disks.len() as i64,
        format!("{firmware} firmware reads of sector 0"),
    );
    let n_extra: i64 = extra.iter().map(|e| e.1).sum::<i64>() - firmware;
    eprintln!(
        "{name}: {} guest requests traced, {before} before; {} virtio rows, {} others",
        guest.len(),
        virtio.len(),
        rows.len() - virtio.len()
    );
    check(
        unmatched.is_empty(),
        format!("guest requests without a row: {unmatched:?}"),
    );
    check(
        n_extra as u64 == before,
        format!(
            "{n_extra} rows beyond the guest's traced requests ({before} before tracing): {:?}",
            &extra[..extra.len().min(20)]
        ),
    );
    let first_guest = virtio
        .iter()
        .map(|r| r.b[Boundary::Parsed])
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(0);
    // QEMU's own requests (its probe of sector 0 at start-up) come before the guest
    // runs; none may be a piece of a guest request.
    let stray: Vec<&IoRow> = rows
        .iter()
        .filter(|r| r.source != Source::Virtio && r.b.latest() > first_guest)
        .collect();
    check(
        stray.is_empty(),
        format!(
            "{} rows of no guest request: {:?}",
            stray.len(),
            &stray[..stray.len().min(3)]
        ),
    );

    // Bytes: each traced request's row has the guest's own size (the match above is by
    // op, offset and bytes); the totals against QEMU's are in `check_blockstats`.

    // Complete, layers adding up, data requests down to the bottom disk, and every
    // flush with device time.
    let mut partial = 0;
    let mut not_bottom = 0;
    let mut example = String::new();
    for r in &virtio {
        if r.partial != 0 {
            partial += 1;
            example = format!("{r:?}");
        }
        let (l, e2e) = split(&r.b);
        check(
            l.iter().flatten().sum::<u64>() == e2e,
            format!("layers do not add up: {r:?}"),
        );
        // Zeros from the filesystem, and what a page cache took, reach no device.
        let zeros = r.flags
            & (flags::FS_ZEROS
                | flags::QCOW2_ZEROS
                | flags::PAGE_CACHE_HIT
                | flags::PAGE_CACHE_WRITE)
            != 0;
        if r.op.moves_data() && r.merged_into.is_none() && r.bottom_dev != run.bottom && !zeros {
            not_bottom += 1;
            example = format!("{r:?}");
        }
    }
    check(
        partial == 0,
        format!("{partial} partial rows, e.g. {example}"),
    );
    // `fs_zeros` says a read was answered with zeros by the host filesystem; a write
    // into an unwritten extent goes to the device.
    let zero_writes = virtio
        .iter()
        .filter(|r| r.op != Op::Read && r.flags & viopath_reporter::join::flags::FS_ZEROS != 0)
        .count();
    check(
        zero_writes == 0,
        format!("{zero_writes} rows other than reads flagged fs_zeros"),
    );
    check(
        not_bottom == 0,
        format!("{not_bottom} not joined to the bottom disk, e.g. {example}"),
    );
    let flushes: Vec<&&IoRow> = virtio.iter().filter(|r| r.op == Op::Flush).collect();
    check(!flushes.is_empty(), "the workload made no flush".into());
    // QEMU answers a flush with nothing written since the last one without host IO;
    // every other one reaches the bottom disk, inside its fsync.
    let no_device: Vec<&&&IoRow> = flushes
        .iter()
        .filter(|r| r.host_ios > 0)
        .filter(|r| {
            let b = r.b.as_array();
            !(b[1] < b[2] && b[2] <= b[4] && b[4] < b[5] && b[5] <= b[6])
                || r.bottom_dev != run.bottom
        })
        .collect();
    check(
        no_device.is_empty(),
        format!(
            "{} of {} flushes without device time, e.g. {:?}",
            no_device.len(),
            flushes.len(),
            no_device.first()
        ),
    );
    if !bad.is_empty() {
        panic!(
            "{name}: {}\n({})\nrecorder: {}",
            bad.join("\n"),
            keep(run, name),
            run.stderr.trim()
        );
    }
    (rows, rqs)
}

/// Which of the run's disks a row's layout disk is (by its file's name).
fn drive_of(t: &Trace, run: &LoadRun) -> impl Fn(Option<u16>) -> Option<usize> + use<> {
    let (layout, _) = viopath_reporter::load_layout(t, &[]);
    let names: Vec<Option<usize>> = (0..layout.disks.len())
        .map(|d| {
            let name = Path::new(&layout.disks[d].path).file_name()?.to_owned();
            run.disks
                .iter()
                .position(|p| p.file_name() == Some(name.as_os_str()))
        })
        .collect();
    move |d| names.get(usize::from(d?)).copied().flatten()
}

/// QEMU's own accounting of the guest's disk (`query-blockstats`, virtio-blk's
/// `block_acct_*` from request parsed to completion pushed) against the rows: the same
/// requests per op, the same bytes, the same mean latency (within 2%), and the same
/// latency histogram (each bucket within a few requests: the two clocks are read a few
/// microseconds apart, so a request right at a bucket edge may fall either side).
pub fn check_blockstats(run: &LoadRun, rows: &[IoRow], name: &str) {
    check_blockstats_from(run, rows, name, 0);
}

/// How much later than ours QEMU's clock may stop for one request: after the
/// completion is pushed, QEMU notifies the guest before its accounting ends, and an
/// iothread preempted there (two cores, TCG vCPUs) makes that tens of µs. One run had
/// all six of its flushes that QEMU answered at once (28–54 µs by the rows) 50–70 µs
/// longer by QEMU's clock, which put them in QEMU's second bucket.
const NOTIFIED_NS: f64 = 80_000.0;

/// [`check_blockstats`] for rows that start up to `late_ns` after QEMU's clock does (a
/// stripped QEMU: rows start at the block layer, QEMU's accounting at virtio-blk's
/// pop): QEMU's times may run that much longer.
pub fn check_blockstats_from(run: &LoadRun, rows: &[IoRow], name: &str, late_ns: u64) {
    let st = &run.blockstats["stats"];
    assert!(
        st.is_object(),
        "{name}: no query-blockstats: {}",
        run.blockstats
    );
    // The first disk's (QEMU's `d0`), the only one in most runs.
    let t = Trace::open(&run.trace).unwrap();
    let drive = drive_of(&t, run);
    let virtio: Vec<&IoRow> = rows
        .iter()
        .filter(|r| {
            r.source == Source::Virtio && (run.disks.len() == 1 || drive(r.disk) == Some(0))
        })
        .collect();
    let mut bad = Vec::new();
    for (op, key) in [(Op::Read, "rd"), (Op::Write, "wr"), (Op::Flush, "flush")] {
        let mine: Vec<u64> = virtio
            .iter()
            .filter(|r| r.op == op)
            .map(|r| r.b[Boundary::Completed] - r.b[Boundary::Parsed])
            .collect();
        let n = st[format!("{key}_operations")].as_u64().unwrap();
        if mine.len() as u64 != n {
            bad.push(format!("{key}: {} rows, QEMU counted {n}", mine.len()));
            continue;
        }
        if n == 0 {
            continue;
        }
        let total = st[format!("{key}_total_time_ns")].as_u64().unwrap();
        let (qemu_mean, my_mean) = (
            total as f64 / n as f64,
            mine.iter().sum::<u64>() as f64 / n as f64,
        );
        eprintln!("{name}: {key}: {n} requests, mean {my_mean:.0} ns, QEMU's {qemu_mean:.0} ns");
        // QEMU's clock stops after the guest is notified, ours before: a few µs
        // more (see the histogram below), then within 2%.
        let late = late_ns as f64;
        if my_mean - qemu_mean > 0.02 * qemu_mean + 10_000.0
            || qemu_mean - my_mean > 0.02 * qemu_mean + 10_000.0 + late
        {
            bad.push(format!(
                "{key}: mean {my_mean:.0} ns, QEMU's {qemu_mean:.0} ns"
            ));
        }
        if key != "flush" {
            let bytes: u64 = virtio.iter().filter(|r| r.op == op).map(|r| r.bytes).sum();
            let qemu_bytes = st[format!("{key}_bytes")].as_u64().unwrap();
            if bytes != qemu_bytes {
                bad.push(format!(
                    "{key}: {bytes} bytes in the rows, QEMU counted {qemu_bytes}"
                ));
            }
        }
        let hist = &st[format!("{key}_latency_histogram")];
        let Some(bins) = hist["bins"].as_array() else {
            bad.push(format!("{key}: no histogram: {hist}"));
            continue;
        };
        // QEMU's clock stops after the completion is pushed and the guest notified
        // (an interrupt injected: tens of µs under TCG now and then), ours as it is
        // pushed: its times run a little longer, and requests that close to a bucket
        // edge may fall on the other side. Each of QEMU's cumulative counts must lie
        // between ours at the edge moved 2% + 20 µs up, or 2% + NOTIFIED_NS down (QEMU's
        // clock only ever runs longer), give or take 3.
        let qemu_bins: Vec<u64> = bins.iter().map(|b| b.as_u64().unwrap()).collect();
        let mut cum = 0;
        for (i, &edge) in HIST_NS.iter().enumerate() {
            cum += qemu_bins[i];
            let below = |e: f64| mine.iter().filter(|&&ns| (ns as f64) < e).count() as u64;
            let (lo, hi) = (
                below(edge as f64 * 0.98 - NOTIFIED_NS - late),
                below(edge as f64 * 1.02 + 20_000.0),
            );
            // And a few requests either way: a flush QEMU answers at once takes tens
            // of µs, where the notification after our clock stops weighs most.
            if !(lo.saturating_sub(3)..=hi + 3).contains(&cum) {
                bad.push(format!(
                    "{key}: QEMU has {cum} requests under {edge} ns, the rows {lo}..{hi} \
                     (QEMU's histogram {qemu_bins:?})"
                ));
                break;
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{name}: {} ({})",
        bad.join("; "),
        keep(run, name)
    );
}

/// QEMU probe hits per guest request: what the probes cost QEMU, bounded however the
/// requests go (allocating writes included).
pub fn qemu_hits_per_request(trace: &Path, rows: &[IoRow]) -> f64 {
    let t = Trace::open(trace).unwrap();
    let hits = t
        .events()
        .filter(|e| e.kind == viopath_probes::abi::EventKind::Qemu as u8)
        .count();
    let requests = rows.iter().filter(|r| r.source == Source::Virtio).count();
    hits as f64 / requests as f64
}
