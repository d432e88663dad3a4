//! Several VMs in one recording: `record --pid A --pid B`, and `record --all`, which
//! also picks up a VM started after the recording began. Each guest runs the load
//! tests' workload on disks of its own and its rows, told apart by VM, are checked
//! against its own block trace and stat and its QEMU's accounting, exactly as one
//! VM's are. The VM that finishes first exits while the other goes on being recorded.

use crate::common::*;
use crate::load_checks::{check_blockstats_from, keep};
use crate::load_e2e::{
    HIST_NS, LoadRun, Mode, Qmp, Reaped, check_exact, guest_disks, load_workload, prerequisites,
};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;
use viopath_reporter::reader::Trace;

/// How long a guest's console or the recorder may stay silent.
const QUIET: Duration = Duration::from_secs(900);

/// Lines a child prints, read on a thread of their own.
fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// A test guest with the load on disks of its own, started paused (`-S`).
struct Guest {
    name: String,
    child: Reaped,
    qmp: Qmp,
    console: Receiver<String>,
    serial: String,
    blockstats: Value,
    dir: tempfile::TempDir,
    host: MountedLoop,
    disks: Vec<PathBuf>,
}

impl Guest {
    fn start(qemu: &Path, assets: &crate::vm::GuestAssets, mode: &Mode, name: &str) -> Guest {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (host, disks) = guest_disks(dir.path(), mode);
        let qmp_path = dir.path().join("qmp.sock");
        let shape = crate::vm::VmShape {
            cpus: mode.cpus,
            qmp: Some(qmp_path.clone()),
            paused: true,
            cache: Some(mode.cache),
            format: Some(mode.format),
            ..Default::default()
        };
        let disk_paths: Vec<&Path> = disks.iter().map(PathBuf::as_path).collect();
        let mut args = crate::vm::qemu_args_shaped(
            assets,
            &disk_paths,
            mode.aio,
            &shape,
            &load_workload(mode),
            dir.path(),
        )
        .unwrap();
        args.extend(["-name".to_owned(), format!("guest={name},debug-threads=on")]);
        let mut child = Command::new(qemu)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let console = lines_of(child.stdout.take().unwrap());
        let mut qmp = Qmp::connect(&qmp_path);
        qmp.cmd(
            "block-latency-histogram-set",
            json!({"id": "/machine/peripheral/vd0/virtio-backend", "boundaries": HIST_NS}),
        );
        Guest {
            name: name.to_owned(),
            child: Reaped(child),
            qmp,
            console,
            serial: String::new(),
            blockstats: Value::Null,
            dir,
            host,
            disks,
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn go(&mut self) {
        self.qmp.cmd("cont", json!({}));
    }

    /// Reads the console until the load is done, takes QEMU's accounting, quits.
    fn finish(&mut self) {
        loop {
            let line = match self.console.recv_timeout(QUIET) {
                Ok(l) => l,
                // QEMU quit: its console ended.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("{}: console: {e}\n{}", self.name, self.serial),
            };
            self.serial.push_str(&line);
            self.serial.push('\n');
            if line.trim() == "viopath-load-done" {
                let stats = self.qmp.cmd("query-blockstats", json!({}));
                self.blockstats = stats
                    .as_array()
                    .and_then(|a| a.iter().find(|d| d["device"] == "d0"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let _ = writeln!(self.qmp.out, "{}", json!({"execute": "quit"}));
            }
            if line.contains("workload exit") {
                break;
            }
        }
        let status = self.child.0.wait().unwrap();
        assert!(status.success(), "{}: QEMU {status}", self.name);
        assert!(
            self.serial.contains("viopath-load-done") && !self.serial.contains("viopath-fail"),
            "{}: the workload failed:\n{}",
            self.name,
            self.serial
        );
    }

    /// The run as the load tests' checks take it: this VM's rows of the shared trace.
    fn into_run(self, trace: &Path, stderr: &str) -> LoadRun {
        let pid = self.pid();
        let mut run = LoadRun::of(
            self.dir,
            self.host,
            self.disks,
            trace.to_owned(),
            self.serial,
            stderr.to_owned(),
        );
        run.blockstats = self.blockstats;
        run.vm_pid = Some(pid);
        run
    }
}

/// `viopath record ARGS -o trace`, its stderr read as it comes.
struct Recorder {
    child: Reaped,
    said: Receiver<String>,
    stderr: String,
}

impl Recorder {
    fn start(args: &[String], trace: &Path) -> Recorder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_viopath"))
            .arg("record")
            .args(args)
            .arg("-o")
            .arg(trace)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let said = lines_of(child.stderr.take().unwrap());
        let mut r = Recorder {
            child: Reaped(child),
            said,
            stderr: String::new(),
        };
        r.wait_for("recording ");
        r
    }

    /// Reads the recorder's stderr up to a line containing `what`.
    fn wait_for(&mut self, what: &str) -> String {
        loop {
            let line = self
                .said
                .recv_timeout(QUIET)
                .unwrap_or_else(|e| panic!("recorder: no '{what}' ({e}):\n{}", self.stderr));
            self.stderr.push_str(&line);
            self.stderr.push('\n');
            if line.contains(what) {
                return line;
            }
        }
    }

    /// Waits for it to end (after SIGINT when `interrupt`); its summary.
    fn stop(mut self, interrupt: bool) -> (String, String) {
        if interrupt {
            // SAFETY: kill(2) on the recorder this test started.
            unsafe { libc::kill(self.child.0.id() as i32, libc::SIGINT) };
        }
        let mut out = String::new();
        let mut stdout = self.child.0.stdout.take().unwrap();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        let status = self.child.0.wait().unwrap();
        while let Ok(l) = self.said.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push_str(&l);
            self.stderr.push('\n');
        }
        assert!(status.success(), "record: {status}\n{}", self.stderr);
        (out, self.stderr)
    }
}

fn load(ops: u32) -> Mode {
    Mode {
        ops,
        ..Mode::plain("threads")
    }
}

/// Two TCG guests on this machine's two CPUs: a QEMU is preempted between pushing a
/// completion (where a row ends) and its own accounting of it more often than with
/// one, so QEMU's mean may run this much longer (one such wait of a few ms moves a
/// few hundred requests' mean by tens of µs).
const PREEMPTED_NS: u64 = 50_000;

/// Each VM's rows are its own guest's requests, exactly, and QEMU's accounting of
/// them; the report names both VMs.
fn check_each(runs: &[(LoadRun, &str)]) {
    for (run, name) in runs {
        let (rows, _) = check_exact(run, name);
        check_blockstats_from(run, &rows, name, PREEMPTED_NS);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["report", "--by", "vm,op"])
        .arg(&runs[0].0.trace)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for (_, name) in runs {
        assert!(
            text.lines()
                .any(|l| l.contains(name) && l.contains("write")),
            "{name} not in the report's groups:\n{text}"
        );
    }
}

/// The recording made again (up to three times) when the sandbox's kernel ran no
/// program for a block completion and counted nothing lost, as the load tests'
/// (`load_e2e::recorded_run`).
fn recorded_again(
    name: &str,
    mut make: impl FnMut() -> Vec<(LoadRun, &'static str)>,
) -> Vec<(LoadRun, &'static str)> {
    let mut runs = make();
    for attempt in 2..=3 {
        let t = Trace::open(&runs[0].0.trace).unwrap();
        let counted = t.losses.as_ref().map_or(0, |l| l.total);
        let missing = completions_missing(&t);
        if missing.is_empty() || counted > 0 {
            break;
        }
        eprintln!(
            "{name}: {} block completions missing, none counted lost: {missing:?} ({}); \
             recording again, attempt {attempt}",
            missing.len(),
            keep(&runs[0].0, name)
        );
        runs = make();
    }
    runs
}

/// Two VMs recorded with `--pid A --pid B`; B's load is shorter, so B's QEMU exits
/// while A's is still recorded, and the recording stops when A's exits too.
#[test]
fn two_vms_recorded_at_once_each_row_of_its_own_vm() {
    let Some((qemu, assets)) = prerequisites() else {
        return;
    };
    let runs = recorded_again("two-vms", || two_vms(&qemu, &assets));
    check_each(&runs);
}

fn two_vms(qemu: &Path, assets: &crate::vm::GuestAssets) -> Vec<(LoadRun, &'static str)> {
    let (qemu, assets) = (qemu, assets);
    let _one = one_recorder();
    let mut a = Guest::start(qemu, assets, &load(500), "vm-a");
    let mut b = Guest::start(qemu, assets, &load(120), "vm-b");
    let trace = a.dir.path().join("two.trace");
    let rec = Recorder::start(
        &[
            "--pid".into(),
            a.pid().to_string(),
            "--pid".into(),
            b.pid().to_string(),
        ],
        &trace,
    );
    a.go();
    b.go();
    b.finish();
    a.finish();
    let (out, stderr) = rec.stop(false);
    assert!(out.contains("every traced process exited"), "{out}");
    assert!(out.contains("vm-a") && out.contains("vm-b"), "{out}");
    let t = Trace::open(&trace).unwrap();
    let vms = t.end.clone().unwrap().vms;
    assert_eq!(
        vms.iter()
            .map(|v| (v.pid, v.name.as_str()))
            .collect::<Vec<_>>(),
        [(a.pid(), "vm-a"), (b.pid(), "vm-b")]
    );
    // B's tracing ended with its process, before A's.
    let (ua, ub) = (vms[0].traced_until_ns, vms[1].traced_until_ns);
    assert!(ub.is_some() && ua.is_some() && ub < ua, "{vms:?}");
    vec![
        (a.into_run(&trace, &stderr), "vm-a"),
        (b.into_run(&trace, &stderr), "vm-b"),
    ]
}

/// `--all` traces the QEMU running when it starts and one started after: that VM is
/// picked up before it runs (it waits paused until the recorder says so), and its rows
/// are as exact as the first's.
#[test]
fn all_picks_up_a_vm_started_while_recording() {
    let Some((qemu, assets)) = prerequisites() else {
        return;
    };
    let runs = recorded_again("all-vms", || all_vms(&qemu, &assets));
    check_each(&runs);
}

fn all_vms(qemu: &Path, assets: &crate::vm::GuestAssets) -> Vec<(LoadRun, &'static str)> {
    let (qemu, assets) = (qemu, assets);
    let _one = one_recorder();
    let mut a = Guest::start(qemu, assets, &load(300), "vm-first");
    let trace = a.dir.path().join("all.trace");
    let mut rec = Recorder::start(&["--all".into()], &trace);
    a.go();
    let mut b = Guest::start(qemu, assets, &load(200), "vm-later");
    let line = rec.wait_for(&format!("(pid {})", b.pid()));
    assert!(
        line.contains("vm-later") && line.contains("after"),
        "{line}"
    );
    b.go();
    b.finish();
    a.finish();
    let (out, stderr) = rec.stop(true);
    assert!(out.contains("interrupted"), "{out}");
    let t = Trace::open(&trace).unwrap();
    let vms = t.end.clone().unwrap().vms;
    let start = t.header.monotonic_ns_at_start.unwrap();
    let later = vms
        .iter()
        .find(|v| v.pid == b.pid())
        .unwrap_or_else(|| panic!("{vms:?}"));
    assert!(later.traced_from_ns > start, "{later:?}");
    vec![
        (a.into_run(&trace, &stderr), "vm-first"),
        (b.into_run(&trace, &stderr), "vm-later"),
    ]
}

/// A QEMU that waits forever with no machine: a process to point the recorder at.
fn idle_qemu(binary: &Path) -> Reaped {
    Reaped(
        Command::new(binary)
            .args(["-machine", "none", "-display", "none", "-S", "-nodefaults"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    )
}

/// Bad targets are refused before anything is recorded, each with what is wrong: a
/// pid that does not exist among several, QEMUs of two binaries (one recording
/// probes one binary), `--all` with `--pid`.
#[test]
fn bad_sets_of_vms_are_refused_with_why() {
    let Some((qemu, _)) = prerequisites() else {
        return;
    };
    let record = |args: &[String]| {
        let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
            .arg("record")
            .args(args)
            .args(["-o", "/var/tmp/viopath-refused.trace"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!Path::new("/var/tmp/viopath-refused.trace").exists());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let ours = idle_qemu(&qemu);
    let pid = ours.0.id().to_string();
    let err = record(&[
        "--pid".into(),
        pid.clone(),
        "--pid".into(),
        "999999999".into(),
    ]);
    assert!(err.contains("no process 999999999"), "{err}");
    let err = record(&["--all".into(), "--pid".into(), pid.clone()]);
    assert!(err.contains("cannot be used with"), "{err}");
    let debian = Path::new("/usr/bin/qemu-system-x86_64");
    if debian.exists() {
        let other = idle_qemu(debian);
        let err = record(&[
            "--pid".into(),
            pid,
            "--pid".into(),
            other.0.id().to_string(),
        ]);
        assert!(
            err.contains("another QEMU binary") && err.contains("record them separately"),
            "{err}"
        );
    } else {
        crate::common::skipped("two binaries: no Debian QEMU; tests/qemu/debian.sh, CI has it");
    }
}

/// A disk hot-plugged by QMP while recording is taken up as one of its images: its file
/// in the VM's images and the layout. Its other open files are not images: stdout and
/// stderr logs, a serial log, the pid file, a memory backend's file (open read-write).
/// Once with a command line naming another disk, once with one naming none.
#[test]
fn a_disk_hot_plugged_while_recording_is_an_image() {
    let Some((qemu, _)) = prerequisites() else {
        return;
    };
    let _one = one_recorder();
    for name_a_disk in [true, false] {
        hot_plugged(&qemu, name_a_disk);
    }
}

fn hot_plugged(qemu: &std::path::Path, name_a_disk: bool) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let at = |n: &str| dir.path().join(n);
    let (named, hot) = (at("named.raw"), at("hot.qcow2"));
    sh(&format!(
        "truncate -s 64M {} && qemu-img create -q -f qcow2 {} 64M && truncate -s 1M {}",
        named.display(),
        hot.display(),
        at("ram").display()
    ));
    let sock = at("qmp.sock");
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "none", "-display", "none", "-nodefaults", "-S"]);
    if name_a_disk {
        cmd.arg("-blockdev").arg(format!(
            "driver=file,filename={},node-name=named",
            named.display()
        ));
    }
    cmd.arg("-pidfile")
        .arg(at("qemu.pid"))
        .arg("-chardev")
        .arg(format!("file,id=log,path={}", at("serial.log").display()))
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=ram0,size=1M,share=on,mem-path={}",
            at("ram").display()
        ))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(at("stdout.log")).unwrap())
        .stderr(std::fs::File::create(at("stderr.log")).unwrap())
        .process_group(0);
    let vm = Reaped(cmd.spawn().unwrap());
    let mut qmp = Qmp::connect(&sock);
    let trace = at("hot.trace");
    let rec = Recorder::start(&["--pid".into(), vm.0.id().to_string()], &trace);
    qmp.cmd(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "hot",
               "file": {"driver": "file", "filename": hot.to_str().unwrap()}}),
    );
    // The recorder looks at the process's files every half second.
    std::thread::sleep(Duration::from_millis(1500));
    // The oracle for what QEMU holds open: its own /proc fd table.
    let open: Vec<std::path::PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", vm.0.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect();
    for f in ["ram", "serial.log", "stdout.log", "hot.qcow2"] {
        assert!(
            open.contains(&at(f)),
            "QEMU does not hold {f} open: {open:?}"
        );
    }
    let _ = writeln!(qmp.out, "{}", json!({"execute": "quit"}));
    // Not reaped here: the recorder takes a zombie for an exited process.
    let (_, stderr) = rec.stop(false);
    drop(vm);
    let t = Trace::open(&trace).unwrap();
    let mut images = t.end.clone().unwrap().vms[0].images.clone();
    images.sort();
    let want = if name_a_disk {
        vec![hot.clone(), named.clone()]
    } else {
        vec![hot.clone()]
    };
    assert_eq!(images, want, "named a disk: {name_a_disk}\n{stderr}");
    let snap = t.layout.clone().unwrap();
    let mut paths: Vec<_> = snap.images.iter().map(|i| i.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, want, "named a disk: {name_a_disk}");
}
