//! The distribution's QEMU, stripped (issue 34): Debian's qemu-system-x86_64, whose
//! static functions (virtio-blk's parse and block completion, qcow2, file-posix
//! internals) have no symbol, runs the test guest's load under `viopath record`. The
//! guest's own block trace and /sys/block stat, and QEMU's own accounting, are the
//! oracles, as in `load_e2e`: every guest request is one complete row with the
//! boundaries the exported functions and the kernel give.
//!
//! Needs root, Debian's qemu-system-x86 10.0 package (CI installs it from
//! bookworm-backports) and the test guest; skipped, saying so, otherwise.

use crate::load_e2e::{
    Mode, check_blockstats_from, check_exact, prerequisites, qemu_hits_per_request, recorded_run,
    run_load,
};
use std::path::{Path, PathBuf};
use viopath_reporter::join::{Op, Source, flags};
use viopath_reporter::reader::Trace;

/// Debian's qemu-system-x86_64 10.0, if installed from its package.
fn debian_qemu() -> Option<PathBuf> {
    let bin = Path::new("/usr/bin/qemu-system-x86_64");
    let owner = std::process::Command::new("dpkg")
        .args(["-S", "/usr/bin/qemu-system-x86_64"])
        .output()
        .ok()?;
    let version = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    (owner.status.success() && version.contains("version 10.0") && version.contains("Debian"))
        .then(|| bin.to_owned())
}

#[test]
fn debians_stripped_qemu_gives_complete_rows() {
    let Some((_, assets)) = prerequisites() else {
        return;
    };
    let Some(qemu) = debian_qemu() else {
        crate::common::skipped(
            "no Debian qemu-system-x86 10.0 at /usr/bin (CI installs it from bookworm-backports)",
        );
        return;
    };
    let mode = Mode::plain("threads");
    let run = recorded_run("load-debian-qemu", || {
        run_load(&qemu, &assets, &mode, Some(&[]))
    });
    let (rows, rqs) = check_exact(&run, "load-debian-qemu");
    // Its rows start at the block layer, QEMU's accounting at virtio-blk's pop (tens
    // of µs before under TCG).
    check_blockstats_from(&run, &rows, "load-debian-qemu", 50_000);
    eprintln!(
        "{:.1} QEMU probe hits per guest request",
        qemu_hits_per_request(&run.trace, &rows)
    );
    let guest_writes = rqs
        .iter()
        .filter(|r| !r.issue && r.rwbs.starts_with('W'))
        .count();
    eprintln!("{} rows, {guest_writes} guest writes", rows.len());
    // virtio-blk merged requests: each a row of its own, flagged.
    let merged = rows
        .iter()
        .filter(|r| r.flags & flags::VIRTIO_MERGED != 0)
        .count();
    eprintln!("{merged} rows merged by virtio-blk");
    assert!(
        rows.iter()
            .filter(|r| r.source == Source::Virtio && r.op == Op::Flush)
            .count()
            > 0
    );
    // The summary names what the missing static functions would have given.
    let t = Trace::open(&run.trace).unwrap();
    let missing = viopath_reporter::layers_missing(&t.header);
    let all = missing.join("; ");
    for want in [
        "virtio without virtio_blk_handle_request (parsed",
        "virtio_blk_rw_complete (qemu_done)",
        "qcow2",
        "file-posix without raw_co_prw",
    ] {
        assert!(all.contains(want), "layers missing: {all}");
    }
    // And the recorder said why: no .symtab.
    assert!(
        run.stderr
            .contains("has no .symtab, only its exported symbols"),
        "{}",
        run.stderr
    );
}

/// The same QEMU with the disk on virtio-scsi (Proxmox's default): its commands from
/// the exported `scsi_req_enqueue` and `scsi_req_complete` (virtio-scsi's own
/// completion is static), their data, flushes and the trim's discards as with symbols.
#[test]
fn debians_stripped_qemu_with_virtio_scsi_gives_complete_rows() {
    let Some((_, assets)) = prerequisites() else {
        return;
    };
    let Some(qemu) = debian_qemu() else {
        crate::common::skipped(
            "no Debian qemu-system-x86 10.0 at /usr/bin (CI installs it from bookworm-backports)",
        );
        return;
    };
    let mode = Mode {
        scsi_luns: 1,
        ..Mode::plain("threads")
    };
    let run = recorded_run("load-debian-qemu-scsi", || {
        run_load(&qemu, &assets, &mode, Some(&[]))
    });
    let (rows, _) = check_exact(&run, "load-debian-qemu-scsi");
    check_blockstats_from(&run, &rows, "load-debian-qemu-scsi", 50_000);
    let t = Trace::open(&run.trace).unwrap();
    assert!(
        t.header.attached("scsi_req_complete"),
        "{:?}",
        t.header.probes
    );
}
