//! Block-cgroup throttling: blk-throttle (cgroup v1's blkio controller here; cgroup v2's
//! io.max is the same code) holds a bio between its partition remap and its queueing.
//! A delay of known size injected there (a read bandwidth limit on the disk) must show
//! as the `blk_throttle` layer, not as `host_fs`; an ftrace instance on the same two
//! events measures each wait independently.

use crate::common::*;
use std::path::Path;
use std::process::Command;
use viopath_reporter::join::{IoRow, Join, JoinConfig};
use viopath_reporter::layers::{Boundary, LAYER_NAMES, split};
use viopath_reporter::reader::Trace;

/// 64 KiB reads at 256 KiB/s: 250 ms each.
const READS: u64 = 6;
const LEN: u64 = 65536;
const BPS: u64 = 262_144;

/// A cgroup of the blkio controller, removed when dropped (after its processes exited).
struct Cgroup(std::path::PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_blk_throttle_wait_is_its_own_layer() {
    if !is_root() {
        skipped("needs root (BPF, loop devices, cgroups)");
        return;
    }
    let blkio = Path::new("/sys/fs/cgroup/blkio");
    if !blkio.join("blkio.throttle.read_bps_device").exists() {
        skipped("no cgroup v1 blkio controller with blk-throttle at /sys/fs/cgroup/blkio");
        return;
    }
    let Some(qemu_io_bin) = qemu_bin("qemu-io") else {
        skipped("no QEMU with symbols; run tests/qemu/build.sh (CI does)");
        return;
    };
    // Held from the start: making this test's file system writes enough to the host's
    // disks to change how the kernel shares out its dirty-page limit, which the
    // dirty-throttle test (cache_e2e) lowers while it records under this lock.
    let _one = one_recorder();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let st = make_stack(dir.path());
    let img = create(&st.mnt, "t.qcow2", "cluster_size=65536", "16M");
    qemu_io(&img, &[&format!("write -P 7 0 {}", READS * LEN)]);
    // The limit is set on the disk (blk-throttle keys on the whole disk's queue), for a
    // cgroup the recorder and the qemu-io it starts run in.
    let disk = st.loopdev.trim_start_matches("/dev/");
    let devno = std::fs::read_to_string(format!("/sys/class/block/{disk}/dev")).unwrap();
    let cg = Cgroup(blkio.join(format!("viopath-throttle-{}", std::process::id())));
    std::fs::create_dir_all(&cg.0).unwrap();
    std::fs::write(
        cg.0.join("blkio.throttle.read_bps_device"),
        format!("{} {BPS}", devno.trim()),
    )
    .unwrap();
    let trace = dir.path().join("throttle.trace");
    let mut cmd = format!(
        "echo $$ > {}/cgroup.procs && exec {} record -o {} -- {} -f qcow2 -t none -i threads",
        cg.0.display(),
        env!("CARGO_BIN_EXE_viopath"),
        trace.display(),
        qemu_io_bin.display()
    );
    for i in 0..READS {
        cmd += &format!(" -c 'read {} {LEN}'", i * LEN);
    }
    cmd += &format!(" {}", img.display());
    let ft = Ftrace::start(
        "throttle",
        &[
            ("block/block_bio_remap", None),
            ("block/block_bio_queue", None),
        ],
    );
    let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    let events = ft.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let t = Trace::open(&trace).unwrap();
    let (layout, _) = viopath_reporter::load_layout(&t, &[]);
    let cfg = viopath_reporter::join_config(&t, &layout);
    let rows = join(&t, &layout, cfg);
    let reads: Vec<&IoRow> = rows
        .iter()
        .filter(|r| r.partial == 0 && r.bytes == LEN)
        .collect();
    assert_eq!(reads.len() as u64, READS, "{rows:#?}");
    let layer = |l: &[Option<u64>], name: &str| {
        l[LAYER_NAMES.iter().position(|x| *x == name).unwrap()].unwrap_or(0)
    };
    // The oracle: for each bio the partition remap led to the disk, when ftrace saw it
    // remapped and when queued there (a kworker queues what the throttle held).
    let disk_dev = devno.trim().replace(':', ",");
    let on_disk = |e: &&FtraceEvent| e.fields.starts_with(&format!("{disk_dev} "));
    let mut total = 0;
    for r in &reads {
        let b = r.b.as_array();
        let (entered, queued) = (b[Boundary::Entered as usize], b[Boundary::Queued as usize]);
        assert!(entered != 0 && entered <= queued, "{r:?}");
        let (l, _) = split(&r.b);
        let (throttle, host_fs) = (layer(&l, "blk_throttle"), layer(&l, "host_fs"));
        // The same wait, as the kernel's own tracer saw the first bio: queued at the
        // row's `queued`, remapped last before that at its sector (the same sectors
        // are read more than once: the image's tables, the preallocating write).
        let (q_ts, sector, comm) = events
            .iter()
            .filter(|e| e.event == "block_bio_queue")
            .filter(on_disk)
            .filter_map(|e| ftrace_bio(&e.fields).map(|(_, s, _)| (e.ts, s, e.comm.clone())))
            .find(|(ts, _, _)| ts.abs_diff(queued) < 20_000)
            .unwrap_or_else(|| panic!("ftrace saw no bio queued at {queued}: {r:?}"));
        let r_ts = events
            .iter()
            .filter(|e| e.event == "block_bio_remap" && e.ts <= q_ts)
            .filter(on_disk)
            .filter(|e| ftrace_bio(&e.fields).is_some_and(|(_, s, _)| s == sector))
            .map(|e| e.ts)
            .max()
            .unwrap_or_else(|| panic!("ftrace saw no remap of sector {sector}: {r:?}"));
        let oracle = q_ts - r_ts;
        assert!(
            throttle.abs_diff(oracle) <= 50_000,
            "blk_throttle {throttle} ns, ftrace's remap → queue {oracle} ns: {r:?}"
        );
        assert!(
            comm.starts_with("kworker"),
            "queued by {comm}, not a kworker"
        );
        // The wait is not the filesystem's.
        assert!(host_fs < 20_000_000, "host_fs {host_fs} ns: {r:?}");
        total += throttle;
    }
    // The injected delay's known size: the bytes over the limit's rate, less the
    // throttle's first slice (100 ms at most), which it lets through on credit.
    let want = READS * LEN * 1_000_000_000 / BPS;
    assert!(
        total + 100_000_000 >= want && total <= want + 100_000_000,
        "throttled {total} ns in all, {want} ns injected"
    );
}

fn join(t: &Trace, layout: &viopath_reporter::layout::Layout, cfg: JoinConfig) -> Vec<IoRow> {
    let mut j = Join::new(layout, Rows::default(), cfg);
    for e in t.events() {
        j.event(&e);
    }
    let (rows, _) = j.finish();
    rows.0
}
