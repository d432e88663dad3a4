//! `viopath report` on real recordings: qemu-io (the QEMU built with symbols) on a
//! qcow2 on ext4 on a GPT partition of a loop device with direct IO, whose own IO goes
//! to the host's disk. Every request must be joined from QEMU's block layer down to that
//! bottom disk, and its layer times must add up exactly to its end-to-end time. For
//! qemu-io's AIO requests (`aio_read`/`aio_write`) that end-to-end time runs from
//! `blk_aio_*` to qemu-io's completion callback and must agree with qemu-io's own
//! measurement of the request within 5%.
//!
//! Needs root and the QEMU from tests/qemu/build.sh; skipped, saying so, otherwise.

mod common;

use common::*;
use std::process::Command;
use viopath_reporter::join::{Join, JoinConfig};
use viopath_reporter::layers::split;
use viopath_reporter::reader::Trace;

/// qemu-io's own latency of each command: it prints "N ops; T sec (... and R ops/sec)"
/// with R to four decimals, so 1/R is the request's time to well under 0.1%.
fn qemu_io_latencies(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|l| l.contains(" ops; "))
        .map(|l| {
            let r = l.rsplit(" and ").next().unwrap();
            let ops: f64 = r.trim_end_matches(" ops/sec)").trim().parse().unwrap();
            1e9 / ops
        })
        .collect()
}

/// Checks one AIO mode; returns, per qemu-io AIO request, its name and the (relative,
/// absolute ns) amount by which qemu-io's own time exceeds the joined end-to-end time.
fn check(aio: &str) -> Vec<(String, f64, f64)> {
    let Some(qemu_io_path) = qemu_bin("qemu-io") else {
        eprintln!("SKIPPED: no QEMU with symbols; run tests/qemu/build.sh (CI does)");
        return Vec::new();
    };
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let st = mount_partitioned_loop(
        &dir.path().join("disk.img"),
        "160M",
        "label: gpt\\nstart=2048, size=300000\\n",
        1,
        true,
        &dir.path().join("mnt"),
    );
    let img = create(&st.mnt, "vm.qcow2", "cluster_size=65536", "64M");
    // Allocate first, untraced, so the traced requests are plain data IO.
    qemu_io(&img, &["write -P 7 0 16M"]);
    // (AIO, write, offset, length). The AIO ones are each followed by aio_flush, which
    // waits for them, so one request is in flight at a time as with the others.
    let reqs: Vec<(bool, bool, u64, u64)> = vec![
        (true, false, 0, 4096),
        (true, false, 1 << 20, 65536),
        (true, false, 2 << 20, 1 << 20),
        (true, true, 4 << 20, 4096),
        (true, true, 5 << 20, 65536),
        (true, true, 6 << 20, 1 << 20),
        (true, false, 8 << 20, 1 << 20),
        (false, false, 10 << 20, 65536),
        (false, true, 11 << 20, 65536),
    ];
    let trace = dir.path().join("run.trace");
    let mut args: Vec<String> = vec![
        "record".into(),
        "-o".into(),
        trace.display().to_string(),
        "--".into(),
        qemu_io_path.display().to_string(),
        "-f".into(),
        "qcow2".into(),
        "-t".into(),
        "none".into(),
        "-i".into(),
        aio.into(),
    ];
    for (is_aio, w, off, len) in &reqs {
        let cmd = match (is_aio, w) {
            (true, false) => "aio_read",
            (true, true) => "aio_write -P 3",
            (false, false) => "read",
            (false, true) => "write -P 3",
        };
        args.push("-c".into());
        args.push(format!("{cmd} {off} {len}"));
        if *is_aio {
            args.push("-c".into());
            args.push("aio_flush".into());
        }
    }
    args.push(img.display().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = qemu_io_latencies(&stdout);
    assert_eq!(want.len(), reqs.len(), "qemu-io output: {stdout}");

    let t = Trace::open(&trace).unwrap();
    // The snapshot names the image file by its inode number, as the kernel's probes
    // do.
    let files = snapshot_files_with_inodes(t.layout.as_ref().expect("layout snapshot"));
    assert_eq!(files, vec![img.display().to_string()]);
    let (layout, src) = viopath_reporter::load_layout(&t, &[]);
    assert_eq!(src.from, "trace");
    let cfg = JoinConfig {
        await_msi: false,
        expect_qcow2: layout.has_qcow2(),
    };
    let mut j = Join::new(&layout, Rows::default(), cfg);
    for e in t.events() {
        j.event(&e);
    }
    let (Rows(mut rows, _other), _) = j.finish();
    rows.sort_by_key(|r| r.id);
    assert_eq!(
        rows.len(),
        reqs.len(),
        "{aio}: one row per qemu-io request: {rows:#?}"
    );
    let bottom = bottom_disk_of(&dir.path().join("disk.img"));
    let mut worst: f64 = 0.0;
    let mut gaps = Vec::new();
    for ((is_aio, w, off, len), (row, q)) in reqs.iter().zip(rows.iter().zip(&want)) {
        let what = format!(
            "{aio} {}{} {off}+{len}",
            if *is_aio { "aio_" } else { "" },
            if *w { "write" } else { "read" },
        );
        assert_eq!(row.offset, Some(*off), "{what}");
        assert_eq!(row.bytes, *len, "{what}");
        assert_eq!(row.partial, 0, "{what}: partial: {row:?}");
        // Joined down to the bottom disk: every host boundary is there.
        for i in 1..=6 {
            assert_ne!(row.b[i], 0, "{what}: boundary {i} missing: {row:?}");
        }
        assert_eq!(row.bottom_dev, bottom, "{what}: bottom device");
        assert!(row.bios >= 1 && row.requests >= 1, "{what}: {row:?}");
        let (layers, e2e) = split(&row.b);
        assert_eq!(layers.iter().flatten().sum::<u64>(), e2e, "{what}");
        // qemu-io's clock starts just before blk_aio_* (or blk_pread) and stops as its
        // callback starts (or after blk_pread returns).
        let diff = (*q - e2e as f64) / *q;
        eprintln!(
            "{what}: viopath {:.1} µs, qemu-io {:.1} µs, {:+.2}%",
            e2e as f64 / 1e3,
            q / 1e3,
            diff * 100.0
        );
        assert!(diff >= -0.001, "{what}: joined time exceeds qemu-io's");
        if *is_aio {
            // The row ends at qemu-io's callback: QEMU's completion path is in it.
            assert_ne!(row.b[7], 0, "{what}: no qemu_done: {row:?}");
            worst = worst.max(diff.abs());
            gaps.push((what, diff, q - e2e as f64));
        } else {
            // blk_pread's coroutine completion has no probe: the row ends at
            // host_done, and QEMU's completion path (1.5–22 µs here) is not in it.
            assert_eq!(row.b[7], 0, "{what}: {row:?}");
        }
    }
    eprintln!("{aio}: worst AIO difference {:.2}%", worst * 100.0);
    // Offline analysis with the layout taken from the image now, through the CLI: the
    // same rows as with the trace's own snapshot.
    let csv = |extra: &[&str], name: &str| {
        let out_path = dir.path().join(name);
        let mut a = vec![
            "report".to_owned(),
            trace.display().to_string(),
            "--format".into(),
            "csv".into(),
            "-o".into(),
            out_path.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        let o = Command::new(env!("CARGO_BIN_EXE_viopath"))
            .args(&a)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out_path).unwrap()
    };
    let from_trace = csv(&[], "a.csv");
    let from_image = csv(&["--image", img.to_str().unwrap()], "b.csv");
    assert_eq!(from_trace.lines().count(), reqs.len() + 1);
    assert_eq!(
        from_trace, from_image,
        "{aio}: layout from the image differs"
    );
    gaps
}

/// One test, the three modes in turn: recordings running side by side would slow each
/// other's QEMU and blur the comparison with qemu-io's clock.
#[test]
fn joins_qemu_io_requests_down_to_the_bottom_disk() {
    if !is_root() {
        eprintln!("SKIPPED: recording needs root");
        return;
    }
    let mut gaps = Vec::new();
    for aio in ["threads", "native", "io_uring"] {
        gaps.extend(check(aio));
    }
    // Every AIO request, each on its own: within 5% of qemu-io's time. What is left
    // out is the entry of the first probe and the exit of the last (uprobes emulate
    // these functions' first instruction: about 0.2 µs in, 0.3–1.7 µs out here) and
    // qemu-io's clock calls.
    for (what, diff, gap_ns) in &gaps {
        assert!(
            *diff < 0.05,
            "{what}: {:.2}% ({:.1} µs) below qemu-io's time",
            diff * 100.0,
            gap_ns / 1e3
        );
    }
}
