//! libvirt (issue 34): a real libvirtd from Debian's packages (tests/libvirt/setup.sh)
//! runs the test guest as a TCG domain with our QEMU build as its `<emulator>`, defined
//! and started with `virsh`; `viopath record --domain NAME` finds its QEMU and disks
//! from libvirt's runtime state. The guest runs the load tests' load, and their checks
//! hold (the guest's own block trace and stat are the oracle: one complete row per
//! request, down to the bottom disk, no event lost); the report names the domain and
//! the disk's target (vda).
//!
//! Needs root, libvirt (CI installs it), our QEMU and the test guest; skipped, saying
//! so, otherwise.

use crate::common::*;
use crate::load_e2e::{
    LoadRun, Mode, check_exact, guest_disks, load_workload, prerequisites, recorded_run,
};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use viopath_reporter::reader::Trace;

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
        crate::common::skipped("no libvirt (tests/libvirt/setup.sh install; CI does)");
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

    let name = format!("viopath-e2e-{}", std::process::id());
    let run = recorded_run("libvirt-domain", || record_domain(&qemu, &assets, &name));
    // The trace says which domain and disk.
    let t = Trace::open(&run.trace).unwrap();
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
        (run.disk.as_path(), "vda")
    );
    // One complete row per guest request, down to the bottom disk, nothing lost.
    // One complete row per guest request, down to the bottom disk, nothing lost.
    check_exact(&run, "libvirt-domain");

    // The report names the domain and the disk as the guest sees it.
    let out = Command::new(viopath)
        .args(["report", "--by", "disk"])
        .arg(&run.trace)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("libvirt domain") && l.contains(&format!("{name} (pid "))),
        "{text}"
    );
    let file = run.disk.file_name().unwrap().to_string_lossy().into_owned();
    assert!(text.contains(&format!("{file} (vda)")), "{text}");
}

/// Defines and starts the domain `name` paused, records it with `--domain` while it
/// runs the load, and stops it when the load is done.
fn record_domain(qemu: &Path, assets: &crate::vm::GuestAssets, name: &str) -> LoadRun {
    let viopath = env!("CARGO_BIN_EXE_viopath");
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    // The load tests' guest and load: a qcow2 with an ext4 of four files, on ext4 on a
    // partition of a loop device; four streams of O_DIRECT reads and writes and fsyncs.
    let mode = Mode::plain("threads");
    let (host, disks) = guest_disks(dir.path(), &mode);
    let disk = disks[0].clone();
    // The guest's initramfs with the workload, as the other VM tests boot it.
    crate::vm::qemu_args(assets, &disk, "threads", &load_workload(&mode), dir.path()).unwrap();
    let initrd = dir.path().join("initramfs-workload.cpio");
    let console = dir.path().join("console.log");
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
    let _defined = Defined(name.to_owned());
    // Defined but not running: said so.
    let out = Command::new(viopath)
        .args(["record", "--domain", name, "-o", "/dev/null"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not running"),
        "{err}"
    );

    // Started paused; recorded from before its first instruction runs.
    let out = virsh(&["start", "--paused", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = dir.path().join("vm.trace");
    let _one = one_recorder();
    let mut rec = Command::new(viopath)
        .args(["record", "--domain", name, "--duration", "300s", "-o"])
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
    let out = virsh(&["resume", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Once the guest's load is done (it then idles), the domain is stopped: QEMU exits
    // and the recording ends with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("viopath-load-done")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest's load did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let out = virsh(&["destroy", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    log.push_str(&rest);
    let status = rec.wait().unwrap();
    assert!(status.success(), "record --domain: {log}");
    let serial = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(serial.contains("viopath-load-done"), "{serial}\n{log}");
    assert!(!serial.contains("viopath-fail"), "{serial}");

    LoadRun::of(dir, host, disks, trace, serial, log)
}
