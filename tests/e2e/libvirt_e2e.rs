//! libvirt (issue 34): a real libvirtd from Debian's packages (tests/libvirt/setup.sh)
//! runs the test guest as a TCG domain with our QEMU build as its `<emulator>`, defined
//! and started with `virsh`; `viopath record --domain NAME` finds its QEMU and disks
//! from libvirt's runtime state. The guest's own block trace is the oracle: one complete
//! row per request, and the report names the domain and the disk's target (vda).
//!
//! Needs root, libvirt (CI installs it), our QEMU and the test guest; skipped, saying
//! so, otherwise.

use crate::common::*;
use crate::load_e2e::{GUEST_RQ_DUMP, guest_rqs, join_rows, prerequisites, stat_requests};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use viopath_reporter::join::{Op, Source};
use viopath_reporter::reader::Trace;

/// O_DIRECT reads and writes of the raw disk, every write made durable (a guest flush),
/// traced by the guest's block layer.
const WORKLOAD: &str = r#"#!/bin/sh
T=/sys/kernel/tracing
mount -t tracefs nodev $T || exit 1
echo 4096 > $T/buffer_size_kb
echo "viopath-stat0 $(cat /sys/block/vda/stat)"
echo 1 > $T/events/block/block_rq_complete/enable
j=0
while [ $j -lt 150 ]; do
    bs=$(( (RANDOM % 16 + 1) * 4096 ))
    blk=$(( RANDOM % (33554432 / bs) ))
    if [ $(( RANDOM % 2 )) = 0 ]; then
        dd if=/dev/zero of=/dev/vda bs=$bs seek=$blk count=1 oflag=direct conv=notrunc,fsync 2>/dev/null
    else
        dd if=/dev/vda of=/dev/null bs=$bs skip=$blk count=1 iflag=direct 2>/dev/null
    fi || echo "viopath-fail $j"
    j=$(( j + 1 ))
done
echo 0 > $T/events/block/block_rq_complete/enable
$RQ_DUMP
echo viopath-load-done
"#;

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .expect("virsh runs")
}

/// The domain is destroyed and undefined however the test ends.
struct Defined(String);

impl Drop for Defined {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0]);
    }
}

/// libvirtd running and configured for this machine, or why the test is skipped.
fn libvirt() -> Option<()> {
    if Command::new("virsh").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no libvirt (tests/libvirt/setup.sh install; CI does)");
        return None;
    }
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libvirt/setup.sh");
    let out = Command::new("sh").arg(setup).arg("start").output().unwrap();
    assert!(
        out.status.success(),
        "starting libvirtd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

#[test]
fn record_a_libvirt_domain_by_name() {
    let Some((qemu, assets)) = prerequisites() else {
        return;
    };
    if libvirt().is_none() {
        return;
    }
    let viopath = env!("CARGO_BIN_EXE_viopath");
    // A domain that does not exist: a clear error, no trace.
    let out = Command::new(viopath)
        .args([
            "record",
            "--domain",
            "viopath-no-such-domain",
            "-o",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("'viopath-no-such-domain' is not running"),
        "{err}"
    );

    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let host = mount_partitioned_loop(
        &dir.path().join("host.img"),
        "200M",
        "label: gpt\\nstart=2048, size=380000\\n",
        1,
        true,
        &dir.path().join("mnt"),
    );
    let disk = host.mnt.join("vm.qcow2");
    sh(&format!(
        "qemu-img create -q -f qcow2 {} 64M",
        disk.display()
    ));
    // The guest's initramfs with the workload, as the other VM tests boot it.
    let workload = WORKLOAD.replace("$RQ_DUMP", GUEST_RQ_DUMP);
    crate::vm::qemu_args(&assets, &disk, "threads", &workload, dir.path()).unwrap();
    let initrd = dir.path().join("initramfs-workload.cpio");
    let console = dir.path().join("console.log");
    let name = format!("viopath-e2e-{}", std::process::id());
    let xml = format!(
        r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{qemu}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='threads'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{console}'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-L'/>
    <qemu:arg value='{firmware}'/>
  </qemu:commandline>
</domain>
"#,
        kernel = assets.dir.join("vmlinuz").display(),
        initrd = initrd.display(),
        qemu = qemu.display(),
        disk = disk.display(),
        console = console.display(),
        firmware = assets.dir.join("firmware").display(),
    );
    let xml_path = dir.path().join("domain.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let out = virsh(&["define", xml_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _defined = Defined(name.clone());
    // Defined but not running: said so.
    let out = Command::new(viopath)
        .args(["record", "--domain", &name, "-o", "/dev/null"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not running"),
        "{err}"
    );

    // Started paused; recorded from before its first instruction runs.
    let out = virsh(&["start", "--paused", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = dir.path().join("vm.trace");
    let _one = one_recorder();
    let mut rec = Command::new(viopath)
        .args(["record", "--domain", &name, "--duration", "300s", "-o"])
        .arg(&trace)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(rec.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).unwrap() == 0 {
            panic!("the recorder stopped before recording:\n{log}");
        }
        log.push_str(&line);
        if line.contains("recording libvirt domain") {
            break;
        }
    }
    let out = virsh(&["resume", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The guest powers off after its workload: QEMU exits and the recording ends.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    log.push_str(&rest);
    let status = rec.wait().unwrap();
    assert!(status.success(), "record --domain: {log}");
    let serial = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(serial.contains("viopath-load-done"), "{serial}\n{log}");
    assert!(!serial.contains("viopath-fail"), "{serial}");

    // The trace says which domain and disk.
    let t = Trace::open(&trace).unwrap();
    let dom = t
        .header
        .target
        .domain
        .clone()
        .expect("the domain in the header");
    assert_eq!(dom.name, name);
    assert_eq!(dom.disks.len(), 1, "{dom:?}");
    assert_eq!(
        (
            Path::new(&dom.disks[0].source),
            dom.disks[0].target.as_str()
        ),
        (disk.as_path(), "vda")
    );
    // One complete row per guest request.
    let (_, rows, _) = join_rows(&trace);
    let guest: Vec<_> = guest_rqs(&serial)
        .into_iter()
        .filter(|r| !r.issue && (r.sectors > 0 || r.key().0 == Op::Flush))
        .collect();
    let mut want: BTreeMap<(Op, Option<u64>, u64), i64> = BTreeMap::new();
    for r in &guest {
        *want.entry(r.key()).or_default() += 1;
    }
    let virtio: Vec<_> = rows
        .iter()
        .filter(|r| r.source == Source::Virtio && r.op != Op::GetId)
        .collect();
    let mut got: BTreeMap<(Op, Option<u64>, u64), i64> = BTreeMap::new();
    for r in &virtio {
        *got.entry((r.op, r.offset.map(|o| o.0), r.bytes))
            .or_default() += 1;
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, n)| got.get(*k).copied().unwrap_or(0) < **n)
        .collect();
    assert!(
        missing.is_empty(),
        "guest requests without a row: {missing:?}"
    );
    let before = stat_requests(&serial, "viopath-stat0 ") as usize;
    // Beyond the traced ones: those before the guest's tracing began (its partition
    // scan), and SeaBIOS's read of the boot sector.
    let extra = virtio.len() - guest.len();
    assert!(
        (before..=before + 1).contains(&extra),
        "{extra} rows beyond the guest's {} traced requests ({before} before)",
        guest.len()
    );
    let partial: Vec<_> = virtio.iter().filter(|r| r.partial != 0).collect();
    assert!(
        partial.is_empty(),
        "{} partial, e.g. {:?}",
        partial.len(),
        partial.first()
    );
    assert!(
        guest.iter().any(|r| r.key().0 == Op::Flush),
        "no guest flush"
    );

    // The report names the domain and the disk as the guest sees it.
    let out = Command::new(viopath)
        .args(["report", "--by", "disk"])
        .arg(&trace)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("libvirt domain") && l.contains(&format!("{name} (pid "))),
        "{text}"
    );
    assert!(text.contains("vm.qcow2 (vda)"), "{text}");
}
