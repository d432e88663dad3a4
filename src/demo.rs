//! `viopath demo`: record a real VM doing IO and report where the time went.
//!
//! Where this machine can record (root, BPF, a qemu-system-x86_64 and the test guest
//! from `tests/vm/guest.sh`), the demo boots that guest on the guest disk embedded in
//! the binary (a qcow2 overlay on a base image: GPT, ext4), lets it read and write a
//! known file, records it with `viopath record` and prints `viopath report`. As root
//! with only `qemu-io` (no qemu-system or no guest), qemu-io does the guest's reads and
//! writes on the same image instead. Either QEMU is a build of ours with symbols where
//! one is cached, else the distribution's (on PATH): then the demo says which layers
//! its stripped binary cannot give and how to get them. Only where nothing can record
//! (no root, no QEMU, the recorder failing) does it replay a trace this harness
//! recorded (`fixtures/demo/vm.trace`), and says why. It always says which it did.

use crate::report::{self, By, Format, ReportArgs};
use crate::vm::{GuestAssets, qemu_args};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const BASE: &[u8] = include_bytes!("../fixtures/demo/base.qcow2");
const OVERLAY: &[u8] = include_bytes!("../fixtures/demo/overlay.qcow2");
/// Recorded by this demo on the test machine (how: fixtures/demo/make.sh).
const TRACE: &[u8] = include_bytes!("../fixtures/demo/vm.trace");

/// What the demo guest does: O_DIRECT reads of /var/lib/db/table (its first 64 KiB are
/// in the overlay, the rest in the base image), a buffered read of the log after
/// dropping the guest's page cache, O_DIRECT writes into clusters still in the base
/// image (qcow2 copy-on-write), and a buffered append made durable with sync.
const WORKLOAD: &str = r#"#!/bin/sh
mount -t ext4 /dev/vda1 /mnt || exit 1
t=/mnt/var/lib/db/table
dd if=$t of=/dev/null bs=4096 count=16 iflag=direct 2>/dev/null
dd if=$t of=/dev/null bs=65536 skip=1 count=7 iflag=direct 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
cat /mnt/var/log/app.log > /dev/null
dd if=/dev/urandom of=$t bs=4096 seek=40 count=8 oflag=direct conv=notrunc 2>/dev/null
echo "demo line" >> /mnt/var/log/app.log && sync
umount /mnt
echo "viopath-demo: guest workload done"
"#;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's images and trace here (default: a temporary directory)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Replay the shipped trace even where this machine could record
    #[arg(long)]
    pub replay: bool,
    /// Also write the report as a self-contained HTML page with charts
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// What this machine can record.
enum Live {
    /// The VM: qemu-system-x86_64 and the test guest.
    Vm(PathBuf, GuestAssets),
    /// No qemu-system or no guest: qemu-io doing the guest's IO on the same disk image.
    QemuIo(PathBuf, String),
}

/// A QEMU program: a build of ours with symbols (`$VIOPATH_QEMU_PREFIX`, or the newest
/// in the cache), else the distribution's on PATH.
fn find_qemu(name: &str) -> Option<PathBuf> {
    qemu_bin(name).or_else(|| viopath_recorder::qemu::which(name))
}

/// What this machine can record, or why it cannot record at all.
fn live_setup() -> std::result::Result<Live, String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
    if euid.as_deref() != Some("0") {
        return Err("recording needs root (BPF)".into());
    }
    let no_vm = match (find_qemu("qemu-system-x86_64"), GuestAssets::find()) {
        (Some(qemu), Some(assets)) if std::env::var_os("VIOPATH_DEMO_NO_VM").is_none() => {
            return Ok(Live::Vm(qemu, assets));
        }
        (None, _) => "no qemu-system-x86_64",
        (_, None) => "no test guest kernel and initramfs (tests/vm/guest.sh makes them)",
        _ => "VIOPATH_DEMO_NO_VM is set",
    };
    match find_qemu("qemu-io") {
        Some(q) => Ok(Live::QemuIo(q, no_vm.to_owned())),
        None => Err(format!(
            "{no_vm}; and no qemu-io either (Debian and Ubuntu: apt install qemu-utils)"
        )),
    }
}

/// `$VIOPATH_QEMU_PREFIX/bin/NAME`, else the newest `qemu-*` build in the cache.
fn qemu_bin(name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VIOPATH_QEMU_PREFIX") {
        let q = Path::new(&p).join("bin").join(name);
        return q.is_file().then_some(q);
    }
    let cache = std::env::var_os("VIOPATH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/viopath".into());
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|q| q.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// The guest's workload as qemu-io commands on the disk image: the same reads and
/// writes of /var/lib/db/table at the guest disk offsets its ext4 gives them (so the
/// report still names the file), without a guest. Pieces follow the file's extents.
fn qemu_io_commands(overlay: &Path) -> std::result::Result<Vec<String>, String> {
    const TABLE: &str = "/var/lib/db/table";
    let chain = viopath_layouts::qcow2::Chain::open(overlay).map_err(|e| e.to_string())?;
    let guest = viopath_layouts::guest::GuestLayout::read(&chain).map_err(|e| e.to_string())?;
    // (write, file offset, bytes per request, requests), as the guest's dd calls.
    let ops = [
        (false, 0, 4096, 16),
        (false, 65536, 65536, 7),
        (true, 40 * 4096, 4096, 8),
    ];
    let mut cmds = Vec::new();
    for (write, start, len, count) in ops {
        for i in 0..count {
            let mut at = start + i * len;
            let end = at + len;
            while at < end {
                let loc = guest
                    .locate_file(TABLE, at, None)
                    .map_err(|e| e.to_string())?;
                let n = loc.contiguous.min(end - at);
                if n == 0 {
                    return Err(format!("{TABLE} has no data at {at}"));
                }
                // Asynchronous, one at a time (the flush waits for it): the interface
                // QEMU's devices use, whose exported entry points a stripped QEMU
                // still has.
                let verb = if write {
                    "aio_write -P 0x5a"
                } else {
                    "aio_read"
                };
                cmds.push(format!("{verb} {} {n}", loc.offset.0));
                cmds.push("aio_flush".to_owned());
                at += n;
            }
        }
    }
    Ok(cmds)
}

fn report_args(trace: &Path, html: Option<PathBuf>) -> ReportArgs {
    ReportArgs {
        trace: trace.to_owned(),
        format: Format::Table,
        output: None,
        top: 8,
        by: vec![By::Op],
        images: Vec::new(),
        host: None,
        run: None,
        html,
        filter: Default::default(),
    }
}

/// The demo's disk: the base image and its overlay, written into `dir`.
fn write_images(dir: &Path) -> Result<()> {
    for (name, bytes) in [("base.qcow2", BASE), ("overlay.qcow2", OVERLAY)] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// The QEMU functions the recording could not probe for want of symbols, by layer,
/// each with what it would have given ("qcow2: qcow2_co_preadv_part (...)"). Functions
/// this QEMU does not have at all are not missing: a stripped binary cannot tell them
/// from those it has without symbols, so a program with no devices (`devices` false:
/// qemu-io) is not said to lack the virtio layer.
fn qemu_layers_missing(trace: &Path, devices: bool) -> Vec<String> {
    let Ok(t) = viopath_reporter::reader::Trace::open(trace) else {
        return Vec::new();
    };
    let mut by_layer: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for p in &t.header.probes {
        let unprobed = (p.attach == "uprobe" || p.attach == "usdt")
            && !p.attached
            && (devices || p.layer != "virtio")
            && !p
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("not in this QEMU build"));
        if unprobed {
            by_layer.entry(p.layer.as_str()).or_default().push(
                match viopath_reporter::qemu_probe_gives(&p.name) {
                    Some(g) => format!("{} ({g})", p.name),
                    None => p.name.clone(),
                },
            );
        }
    }
    by_layer
        .into_iter()
        .map(|(layer, fns)| format!("{layer}: {}", fns.join(", ")))
        .collect()
}

/// Record the guest (or qemu-io); on failure, the reason (the recorder's last words).
fn record(dir: &Path, live: &Live, out: &mut dyn Write) -> Result<PathBuf, String> {
    let overlay = dir.join("overlay.qcow2");
    let trace = dir.join("demo.trace");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("record").arg("-o").arg(&trace).arg("--");
    let done = match live {
        Live::Vm(qemu, assets) => {
            let args = qemu_args(assets, &overlay, "threads", WORKLOAD, dir).map_err(|e| {
                format!(
                    "cannot make the guest's initramfs (with the workload) in {}: {e}",
                    dir.display()
                )
            })?;
            cmd.arg(qemu).args(args);
            let _ = writeln!(
                out,
                "Recording: viopath record -o {} -- {} ... (guest {}, TCG)\n",
                trace.display(),
                qemu.display(),
                assets.dir.display()
            );
            "viopath-demo: guest workload done"
        }
        Live::QemuIo(qemu_io, why) => {
            cmd.arg(qemu_io)
                .args(["-f", "qcow2", "-t", "none", "-i", "threads"]);
            for c in qemu_io_commands(&overlay)? {
                cmd.arg("-c").arg(c);
            }
            cmd.arg(&overlay);
            let _ = writeln!(
                out,
                "No VM here ({why}): qemu-io does the guest's reads and writes of\n\
                 /var/lib/db/table on the same disk image instead (no virtio layer).\n\
                 Recording: viopath record -o {} -- {} -t none -i threads -c ... overlay.qcow2\n",
                trace.display(),
                qemu_io.display(),
            );
            // qemu-io prints a summary line per request: "read 4096/4096 bytes at ...".
            "bytes at offset"
        }
    };
    let o = cmd.output().map_err(|e| e.to_string())?;
    let serial = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() || !serial.contains(done) {
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the guest did not finish its workload");
        return Err(format!("recording failed: {last}"));
    }
    let qemu = match live {
        Live::Vm(q, _) | Live::QemuIo(q, _) => q,
    };
    let missing = qemu_layers_missing(&trace, matches!(live, Live::Vm(..)));
    if !missing.is_empty() {
        let version = viopath_recorder::qemu::QemuInfo::probe(qemu).version_line;
        let _ = writeln!(
            out,
            "{}\n",
            crate::ui::prose(&format!(
                "This QEMU ({}{}) has no symbols for some of its functions, so the recording lacks: {}. To get them: install its debug symbols (Debian and Ubuntu: the matching -dbgsym packages from the debug archive; Fedora and RHEL: debuginfo-install), or build QEMU with symbols (tests/qemu/build.sh does, into /var/cache/viopath; or set VIOPATH_QEMU_PREFIX to a build's prefix), and run the demo again.",
                qemu.display(),
                if version.is_empty() {
                    String::new()
                } else {
                    format!(", {version}")
                },
                missing.join("; ")
            ))
        );
    }
    Ok(trace)
}

pub fn run(args: &DemoArgs, out: &mut dyn Write) -> Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            // Disk-backed, so the host file's extents are real device sectors.
            let parent = ["/var/tmp", "/tmp"]
                .iter()
                .map(Path::new)
                .find(|p| p.is_dir())
                .unwrap_or(Path::new("."));
            tmp = TempDir::new(parent)?;
            tmp.0.clone()
        }
    };
    writeln!(
        out,
        "viopath demo: a VM reads and writes files on its virtio-blk disk (a qcow2 overlay on a"
    )?;
    writeln!(
        out,
        "base image; GPT, ext4); viopath records every layer and reports where the time went.\n"
    )?;
    let live = if args.replay {
        Err("--replay was given".to_owned())
    } else {
        live_setup()
    };
    // The images the demo promises in --dir, whether it records or replays.
    write_images(&dir)?;
    let recorded = match &live {
        Ok(l) => record(&dir, l, out),
        Err(why) => Err(why.clone()),
    };
    let trace = match recorded {
        Ok(t) => {
            let (what, qemu) = match &live {
                Ok(Live::Vm(q, _)) => ("the VM", q.display().to_string()),
                Ok(Live::QemuIo(q, _)) => ("qemu-io", q.display().to_string()),
                Err(_) => unreachable!("recorded only where live"),
            };
            writeln!(
                out,
                "Recorded a live run of {what} ({qemu}) on this machine.\n"
            )?;
            t
        }
        Err(why) => {
            let t = dir.join("demo.trace");
            std::fs::write(&t, TRACE).with_context(|| format!("cannot write {}", t.display()))?;
            writeln!(
                out,
                "Not recording here ({why}): replaying a trace this demo recorded on a test"
            )?;
            writeln!(
                out,
                "machine (2-core VM, QEMU 10.0.2 under TCG, qcow2 on ext4 on a virtual disk).\n"
            )?;
            t
        }
    };
    report::run(&report_args(&trace, args.html.clone()), out)?;
    writeln!(
        out,
        "\nEach row of the table is a layer between the guest's request and its completion;\n\
         `viopath report {} --format csv -o -` gives one row per IO, with the guest file it\n\
         touched. See docs/walkthrough.md for how to read this.",
        if args.dir.is_some() {
            trace.display().to_string()
        } else {
            "TRACE".into()
        }
    )?;
    if args.dir.is_some() {
        writeln!(out, "The trace and images stay in {}.", dir.display())?;
    }
    Ok(())
}

/// A directory removed when dropped (the demo's default output directory).
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<TempDir> {
        for n in 0..100u32 {
            let p = parent.join(format!("viopath-demo-{}-{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return Ok(TempDir(p));
            }
        }
        anyhow::bail!(
            "cannot create a temporary directory in {}",
            parent.display()
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
