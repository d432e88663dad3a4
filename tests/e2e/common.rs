//! Helpers shared by the integration tests: running the real tools we use as oracles.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use viopath_layouts::host::DevId;
use viopath_layouts::snapshot::Snapshot;
use viopath_probes::abi::{EventKind, RawEvent, kernel_dev};
use viopath_probes::trace::{ChunkKind, chunks};

/// Run a command, panic with its output if it fails, return stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn sh(script: &str) -> String {
    run("sh", &["-ec", script])
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn qemu_img_map(image: &Path) -> Vec<Value> {
    let out = run(
        "qemu-img",
        &["map", "--output=json", image.to_str().unwrap()],
    );
    serde_json::from_str(&out).expect("qemu-img map JSON")
}

pub fn qemu_img_check(image: &Path) -> Value {
    // Exit code 0: clean; 3: leaks only. Both still print JSON.
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", image.to_str().unwrap()])
        .output()
        .expect("qemu-img");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("qemu-img check: {}", String::from_utf8_lossy(&out.stderr)))
}

pub fn create(dir: &Path, name: &str, opts: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([p.to_str().unwrap(), size]);
    run("qemu-img", &args);
    p
}

/// Run qemu-io commands against a qcow2 image.
pub fn qemu_io(image: &Path, cmds: &[&str]) {
    qemu_io_fmt(image, "qcow2", cmds);
}

/// Run qemu-io commands against an image of format `fmt`.
pub fn qemu_io_fmt(image: &Path, fmt: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(image.to_str().unwrap());
    let out = run("qemu-io", &args);
    assert!(
        !out.contains("error") && !out.contains("failed"),
        "qemu-io: {out}"
    );
}

/// A tiny deterministic PRNG so tests need no extra crates and are reproducible.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Commands that undo what a test set up (mounts, loop devices), run in reverse order
/// when dropped, so a failing test leaves nothing behind.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for cmd in self.0.iter().rev() {
            let _ = Command::new("sh").args(["-c", cmd]).status();
        }
    }
}

/// A partitioned image file attached as a loop device, ext4 on one partition, mounted.
pub struct MountedLoop {
    pub loopdev: String,
    pub part: String,
    pub mnt: PathBuf,
    pub cleanup: Cleanup,
}

/// Write `table` (sfdisk script) to a new `size` image, attach it (`direct_io` for the
/// loop device's own IO), make ext4 on partition `part` and mount it at `mnt`. There is
/// no udev on these machines: partitions are scanned with partx when `losetup -P` does
/// not, and their nodes are made from sysfs.
pub fn mount_partitioned_loop(
    img: &Path,
    size: &str,
    table: &str,
    part: u32,
    direct_io: bool,
    mnt: &Path,
) -> MountedLoop {
    std::fs::create_dir_all(mnt).unwrap();
    sh(&format!(
        "truncate -s {size} {0} && printf '{table}' | sfdisk -q {0}",
        img.display()
    ));
    let mut cleanup = Cleanup(Vec::new());
    let dio = if direct_io {
        "--direct-io=on"
    } else {
        "--direct-io=off"
    };
    let loopdev = run(
        "losetup",
        &["-P", dio, "--show", "-f", img.to_str().unwrap()],
    )
    .trim()
    .to_owned();
    cleanup.0.push(format!("losetup -d {loopdev}"));
    let partdev = format!("{loopdev}p{part}");
    let name = partdev.trim_start_matches("/dev/");
    sh(&format!(
        "for i in $(seq 20); do [ -e /sys/class/block/{name}/dev ] && break; sleep 0.1; done; \
         [ -e /sys/class/block/{name}/dev ] || partx -a {loopdev}; \
         [ -b {partdev} ] || mknod {partdev} b $(tr ':' ' ' < /sys/class/block/{name}/dev); \
         mkfs.ext4 -q -F {partdev} && mount {partdev} {}",
        mnt.display()
    ));
    cleanup.0.push(format!("umount {}", mnt.display()));
    MountedLoop {
        loopdev,
        part: partdev,
        mnt: mnt.to_owned(),
        cleanup,
    }
}

/// The disk (kernel dev_t encoding, as trace events carry it) under the filesystem
/// holding `file`: for a loop device's backing file, the bottom of the stack.
pub fn bottom_disk_of(file: &Path) -> u32 {
    let out = run("stat", &["-c", "%d", file.to_str().unwrap()]);
    let dev: u64 = out.trim().parse().unwrap();
    let id = viopath_layouts::host::DevId {
        major: libc::major(dev),
        minor: libc::minor(dev),
    };
    let mut topo = viopath_layouts::host::Topology::system();
    let d = topo.device(id).unwrap();
    let disk = match &d.kind {
        viopath_layouts::host::DeviceKind::Partition { parent, .. } => *parent,
        _ => d.id,
    };
    viopath_probes::abi::kernel_dev(disk.major, disk.minor)
}

/// The files of a trace's layout snapshot (`file_hosts` of every image), each checked
/// to carry its inode number as stat gives it: the kernel's probes name files by it.
pub fn snapshot_files_with_inodes(snap: &Snapshot) -> Vec<String> {
    let mut files = Vec::new();
    for img in &snap.images {
        for h in &img.file_hosts {
            let file = h.file.to_str().expect("file").to_owned();
            let ino: u64 = run("stat", &["-c", "%i", &file]).trim().parse().unwrap();
            assert_eq!(h.ino, Some(ino), "{file}");
            files.push(file);
        }
    }
    files
}

/// A binary of the QEMU built with symbols by tests/qemu/build.sh
/// (`$VIOPATH_QEMU_PREFIX`, default its cache directory), if it is there.
pub fn qemu_bin(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(
        std::env::var("VIOPATH_QEMU_PREFIX")
            .unwrap_or_else(|_| "/var/cache/viopath/qemu-10.0.2".into()),
    )
    .join("bin")
    .join(name);
    p.exists().then_some(p)
}

/// The prefix of the QEMU built with symbols, if this test can record with it (root,
/// and that QEMU there); otherwise says why the test is skipped.
pub fn can_record() -> Option<PathBuf> {
    if !is_root() {
        crate::common::skipped("recording needs root");
        return None;
    }
    let p = qemu_bin("qemu-io").and_then(|b| Some(b.parent()?.parent()?.to_path_buf()));
    if p.is_none() {
        crate::common::skipped("no QEMU with symbols; run tests/qemu/build.sh (CI does)");
    }
    p
}

/// `viopath ARGS` run while holding [`one_recorder`]: for `viopath record`.
pub fn viopath_recording(args: &[String]) -> std::process::Output {
    let _one = one_recorder();
    Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(args)
        .output()
        .unwrap()
}

/// A join sink that keeps every row and every other-IO record.
#[derive(Default)]
pub struct Rows(
    pub Vec<viopath_reporter::join::IoRow>,
    pub Vec<viopath_reporter::join::OtherIo>,
);

impl viopath_reporter::join::Sink for Rows {
    fn io(&mut self, r: &viopath_reporter::join::IoRow) {
        self.0.push(r.clone());
    }
    fn other(&mut self, o: &viopath_reporter::join::OtherIo) {
        self.1.push(o.clone());
    }
}

/// Held while a test records, so a test binary runs one recorder at a time. Two
/// recorders side by side on this kernel (6.18) both missed the same block completions
/// now and then (4 of 20 runs of the two guest tests side by side, none of 10 one at a
/// time, none of 20 side by side with ftrace's block_rq_complete event also on): a
/// kernel effect the join copes with (see docs/layers.md), but the tests check that a
/// recording has every completion.
///
/// While held, the threads of this machine's PID 1 are kept off the CPU that runs the
/// block completions (see [`Pid1Away`]).
///
/// Test processes run side by side too (two `cargo test` runs, a CI clone beside a
/// checkout): an exclusive lock on a file serializes them as well, so neither two
/// recorders nor two [`Pid1Away`]s (the second would save the first's narrowed CPUs
/// and put them back last) overlap.
pub fn one_recorder() -> (Pid1Away, MachineLock, std::sync::MutexGuard<'static, ()>) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let machine = MachineLock::take();
    // A tuple drops in order: PID 1's CPUs are given back before the locks go.
    (Pid1Away::new(), machine, guard)
}

/// An exclusive `flock` on `/var/tmp/viopath-recording.lock`, released when dropped
/// (or when the process ends, however it ends).
pub struct MachineLock(Option<std::fs::File>);

impl MachineLock {
    fn take() -> MachineLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/var/tmp/viopath-recording.lock");
        match file {
            Ok(f) => {
                use std::os::fd::AsRawFd;
                // SAFETY: flock(2) on a descriptor this struct owns.
                unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
                MachineLock(Some(f))
            }
            // Without the file, only this process's tests are serialized.
            Err(_) => MachineLock(None),
        }
    }
}

/// The sandbox these tests run in has a kernel that runs no BPF program while a thread
/// of its PID 1 (the sandbox's agent) is the current task, and counts those runs
/// nowhere: a block completion whose softirq interrupts such a thread is never seen by
/// any recorder (measured with an ftrace instance beside the recorder, every missing
/// completion ran over PID 1's `tokio-rt-worker`; docs/layers.md, "Lost completions").
/// Production hosts have no such PID 1; the tests keep its threads off the CPU that
/// handles most block completions (the one with the most BLOCK softirqs so far) while
/// they record, and give them their CPUs back after. On one CPU, or if PID 1 cannot be
/// moved, nothing changes.
pub struct Pid1Away {
    saved: Vec<(i32, libc::cpu_set_t)>,
}

/// The CPUs PID 1's threads had before a [`Pid1Away`] narrowed them, a line per thread
/// (`tid cpu,cpu,...`), kept until they are given back: a test run killed before then
/// (a timeout, ^C) would otherwise leave PID 1, and every process it starts after (a
/// shell, a build), on fewer CPUs for good. The next [`Pid1Away`] gives them back first.
const PID1_SAVED: &str = "/var/tmp/viopath-pid1-cpus";

fn cpus_of(set: &libc::cpu_set_t) -> Vec<usize> {
    // SAFETY: CPU_ISSET only reads the set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
        .collect()
}

/// Give PID 1's threads back the CPUs a killed run left in [`PID1_SAVED`].
fn restore_pid1_left_over() {
    let Ok(text) = std::fs::read_to_string(PID1_SAVED) else {
        return;
    };
    for line in text.lines() {
        let Some((tid, cpus)) = line.split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.parse::<i32>() else {
            continue;
        };
        // SAFETY: cpu_set_t is plain data; the calls read and write only it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for c in cpus.split(',').filter_map(|c| c.parse::<usize>().ok()) {
                libc::CPU_SET(c, &mut set);
            }
            if libc::CPU_COUNT(&set) > 0 {
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
    std::fs::remove_file(PID1_SAVED).ok();
}

impl Pid1Away {
    fn new() -> Pid1Away {
        // Held under the machine lock: no other run is narrowing PID 1 now.
        restore_pid1_left_over();
        let mut away = Pid1Away { saved: Vec::new() };
        let Ok(softirqs) = std::fs::read_to_string("/proc/softirqs") else {
            return away;
        };
        let Some(block) = softirqs
            .lines()
            .find_map(|l| l.trim().strip_prefix("BLOCK:"))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|n| n.parse::<u64>().ok())
                    .collect::<Vec<u64>>()
            })
        else {
            return away;
        };
        if block.len() < 2 {
            return away;
        }
        let busiest = (0..block.len()).max_by_key(|&c| block[c]).unwrap_or(0);
        let Ok(tasks) = std::fs::read_dir("/proc/1/task") else {
            return away;
        };
        // Every thread's CPUs without the busiest, known before any is changed, so the
        // journal is written once, ahead of all the changes.
        let mut plan = Vec::new();
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: cpu_set_t is plain data; the calls read and write only it.
            unsafe {
                let mut old: libc::cpu_set_t = std::mem::zeroed();
                if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut old)
                    != 0
                {
                    continue;
                }
                let mut new = old;
                libc::CPU_CLR(busiest, &mut new);
                if libc::CPU_COUNT(&new) > 0 {
                    plan.push((tid, old, new));
                }
            }
        }
        away.saved = plan.iter().map(|&(tid, old, _)| (tid, old)).collect();
        away.journal();
        for (tid, _, new) in &plan {
            // SAFETY: as above. A thread that has ended meanwhile is given back nothing.
            unsafe {
                libc::sched_setaffinity(*tid, std::mem::size_of::<libc::cpu_set_t>(), new);
            }
        }
        away
    }

    /// Write what is to be given back to [`PID1_SAVED`] before changing anything.
    fn journal(&self) {
        let text: String = self
            .saved
            .iter()
            .map(|(tid, old)| {
                let cpus: Vec<String> = cpus_of(old).iter().map(|c| c.to_string()).collect();
                format!("{tid} {}\n", cpus.join(","))
            })
            .collect();
        std::fs::write(PID1_SAVED, text).ok();
    }
}

impl Drop for Pid1Away {
    fn drop(&mut self) {
        for (tid, old) in &self.saved {
            // SAFETY: as in `new`.
            unsafe {
                libc::sched_setaffinity(*tid, std::mem::size_of::<libc::cpu_set_t>(), old);
            }
        }
        std::fs::remove_file(PID1_SAVED).ok();
    }
}

/// Block requests issued before QEMU's last probed event that have no completion event
/// in the recording, read from the raw events (not through the join under test): each
/// issue is keyed by request pointer and sector, so a pointer reused later does not
/// hide it.
pub fn completions_missing(t: &viopath_reporter::reader::Trace) -> Vec<String> {
    let events: Vec<_> = t.events().collect();
    let last_qemu = events
        .iter()
        .filter(|e| e.kind == viopath_probes::abi::EventKind::Qemu as u8)
        .map(|e| e.ts)
        .max()
        .unwrap_or(0);
    let mut open = std::collections::HashMap::new();
    for e in &events {
        if e.kind == viopath_probes::abi::EventKind::RqIssue as u8 && e.ts < last_qemu {
            open.insert((e.a[0], e.a[1]), e.ts);
        } else if e.kind == viopath_probes::abi::EventKind::RqComplete as u8 {
            open.remove(&(e.a[0], e.a[1]));
        }
    }
    let mut v: Vec<String> = open
        .iter()
        .map(|((rq, sector), ts)| format!("request {rq:#x} sector {sector} issued at {ts}"))
        .collect();
    v.sort();
    v
}

/// An ftrace instance of the test's own (not viopath's BPF): the kernel's tracepoints
/// as an independent oracle, on CLOCK_MONOTONIC like the trace's timestamps. Removed
/// when dropped.
pub struct Ftrace {
    dir: PathBuf,
}

/// One line of an ftrace instance's buffer.
#[derive(Debug, Clone)]
pub struct FtraceEvent {
    pub comm: String,
    pub pid: u32,
    /// CLOCK_MONOTONIC, ns (ftrace prints microseconds).
    pub ts: u64,
    pub event: String,
    pub fields: String,
}

impl Ftrace {
    /// Start tracing `events` ("group/name", with an ftrace filter or none).
    pub fn start(name: &str, events: &[(&str, Option<&str>)]) -> Ftrace {
        let root = Path::new("/sys/kernel/tracing");
        if !root.join("instances").is_dir() {
            sh("mount -t tracefs nodev /sys/kernel/tracing");
        }
        // Unique per test: tests of one binary run side by side.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root
            .join("instances")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        let t = Ftrace { dir };
        t.write("trace_clock", "mono");
        t.write("buffer_size_kb", "32768");
        for (ev, filter) in events {
            if let Some(f) = filter {
                t.write(&format!("events/{ev}/filter"), f);
            }
            t.write(&format!("events/{ev}/enable"), "1");
        }
        t.write("tracing_on", "1");
        t
    }

    fn write(&self, file: &str, v: &str) {
        std::fs::write(self.dir.join(file), v)
            .unwrap_or_else(|e| panic!("ftrace {}: {e}", self.dir.join(file).display()));
    }

    /// Stop and read everything traced.
    pub fn stop(&self) -> Vec<FtraceEvent> {
        self.write("tracing_on", "0");
        let text = std::fs::read_to_string(self.dir.join("trace")).unwrap();
        assert!(
            !text.contains("LOST"),
            "the ftrace instance lost events: make its buffer larger"
        );
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_ftrace_line)
            .collect()
    }
}

impl Drop for Ftrace {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("tracing_on"), "0");
        let _ = std::fs::write(self.dir.join("events/enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `  comm-pid  [cpu] flags  secs.usecs: event: fields`.
fn parse_ftrace_line(l: &str) -> Option<FtraceEvent> {
    let (head, rest) = l.split_once(" [")?;
    let (comm, pid) = head.trim().rsplit_once('-')?;
    let (_, rest) = rest.split_once("] ")?;
    let mut words = rest.trim_start().splitn(2, ' ');
    let first = words.next()?;
    // The flags column (irqs-off, need-resched, ...) comes before the timestamp.
    let rest = if first.ends_with(':') {
        rest.trim_start()
    } else {
        words.next()?.trim_start()
    };
    let (ts, rest) = rest.split_once(": ")?;
    let (secs, usecs) = ts.trim().split_once('.')?;
    // `event: fields`, or a syscall's `sys_x(args)` / `sys_x -> ret`.
    let cut = rest.find([':', '(', ' ']).unwrap_or(rest.len());
    let event = &rest[..cut];
    let fields = rest[cut..].trim_start_matches(':').trim();
    Some(FtraceEvent {
        comm: comm.to_owned(),
        pid: pid.parse().ok()?,
        ts: secs.parse::<u64>().ok()? * 1_000_000_000 + usecs.parse::<u64>().ok()? * 1000,
        event: event.to_owned(),
        fields: fields.to_owned(),
    })
}

/// A `block_bio_queue` or `block_rq_issue` line's (rwbs, sector, sectors).
pub fn ftrace_bio(fields: &str) -> Option<(String, u64, u64)> {
    let w: Vec<&str> = fields.split_whitespace().collect();
    let plus = w.iter().position(|x| *x == "+")?;
    Some((
        w.get(1)?.to_string(),
        w.get(plus - 1)?.parse().ok()?,
        w.get(plus + 1)?.parse().ok()?,
    ))
}

/// The extents of `file` from `filefrag` (not viopath's layouts), in 512-byte sectors
/// on the whole disk under its filesystem's partition (`part_start`: the partition's
/// first sector): `(file sector, disk sector, sectors)`.
pub fn file_extents(file: &Path, part_start: u64) -> Vec<(u64, u64, u64)> {
    parse_filefrag(
        &run("filefrag", &["-e", "-b512", file.to_str().unwrap()]),
        part_start,
    )
}

/// The extents in `filefrag -e -b512` output, as [`file_extents`] gives them.
pub fn parse_filefrag(out: &str, part_start: u64) -> Vec<(u64, u64, u64)> {
    out.lines()
        .filter_map(|l| {
            // " 0:        0..     127:     206848..    206975:    128:  ..."
            let cols: Vec<&str> = l.split(':').map(str::trim).collect();
            if cols.len() < 4 || cols[0].parse::<u64>().is_err() {
                return None;
            }
            let (lo, _) = cols[1].split_once("..")?;
            let (s, e) = cols[2].split_once("..")?;
            let (lo, s, e): (u64, u64, u64) = (
                lo.trim().parse().ok()?,
                s.trim().parse().ok()?,
                e.trim().parse().ok()?,
            );
            Some((lo, part_start + s, e + 1 - s))
        })
        .collect()
}

/// The disk sectors of `file` (see [`file_extents`]): `(start, end)` pairs.
pub fn file_disk_sectors(file: &Path, part_start: u64) -> Vec<(u64, u64)> {
    file_extents(file, part_start)
        .into_iter()
        .map(|(_, d, n)| (d, d + n))
        .collect()
}

/// The disk sectors holding bytes `[off, off + len)` of a file with `extents`.
pub fn disk_sectors_of(extents: &[(u64, u64, u64)], off: u64, len: u64) -> Vec<(u64, u64)> {
    let (lo, hi) = (off / 512, (off + len).div_ceil(512));
    extents
        .iter()
        .filter(|&&(f, _, n)| f < hi && lo < f + n)
        .map(|&(f, d, n)| (d + lo.max(f) - f, d + hi.min(f + n) - f))
        .collect()
}

/// The widest line of a command's output, in characters: every table and line fits
/// 120 columns unless `--wide`.
pub fn widest_line(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

/// A test that cannot run here says why and returns. Under `tests/run.sh`, which sets
/// up everything the suite needs (VIOPATH_NO_SKIP=1), that is a failure instead: the
/// whole suite runs there, nothing skipped.
pub fn skipped(why: &str) {
    if std::env::var_os("VIOPATH_NO_SKIP").is_some() {
        panic!("would be skipped, and VIOPATH_NO_SKIP is set: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A qcow2's home: ext4 on GPT partition 1 of a 160 MiB loop device with direct IO (in
/// `dir`), so the loop device's own IO reaches the host's disk while we record.
pub fn make_stack(dir: &Path) -> MountedLoop {
    mount_partitioned_loop(
        &dir.join("disk.img"),
        "160M",
        "label: gpt\\nstart=2048, size=300000\\n",
        1,
        true,
        &dir.join("mnt"),
    )
}

/// A trace's chunks, read raw (the recorder's events as written, before any join).
pub struct Trace {
    pub header: Value,
    pub events: Vec<RawEvent>,
    pub layout: Value,
    pub end: Value,
    pub losses: Value,
}

pub fn read_trace(path: &Path) -> Trace {
    let bytes = std::fs::read(path).unwrap();
    let mut t = Trace {
        header: Value::Null,
        events: Vec::new(),
        layout: Value::Null,
        end: Value::Null,
        losses: Value::Null,
    };
    for c in chunks(&bytes).unwrap() {
        let c = c.unwrap_or_else(|e| panic!("trace damaged: {e}"));
        match c.kind {
            ChunkKind::Header => t.header = c.json().unwrap(),
            ChunkKind::Events => t.events.extend(c.events()),
            ChunkKind::Layout => t.layout = c.json().unwrap(),
            ChunkKind::End => t.end = c.json().unwrap(),
            ChunkKind::Losses => t.losses = c.json().unwrap(),
        }
    }
    t
}

/// Do the block events of `kinds` on `dev` cover sectors [start, start + n)?
pub fn covered(t: &Trace, dev: DevId, kinds: &[EventKind], start: u64, n: u64) -> bool {
    covered_on(t, &[dev], kinds, start, n)
}

/// [`covered`] by the events on any of `devs` (a disk and its paths).
pub fn covered_on(t: &Trace, devs: &[DevId], kinds: &[EventKind], start: u64, n: u64) -> bool {
    let kdevs: Vec<u64> = devs
        .iter()
        .map(|d| u64::from(kernel_dev(d.major, d.minor)))
        .collect();
    let mut ranges: Vec<(u64, u64)> = t
        .events
        .iter()
        .filter(|e| kinds.iter().any(|k| *k as u8 == e.kind) && kdevs.contains(&(e.a[2] >> 32)))
        .map(|e| (e.a[1], e.a[1] + ((e.a[2] & 0xffff_ffff) / 512)))
        .collect();
    ranges.sort();
    let mut pos = start;
    for (s, e) in ranges {
        if s <= pos && e > pos {
            pos = e;
        }
        if pos >= start + n {
            return true;
        }
    }
    pos >= start + n
}

/// The fields of a CSV line ("" quotes a field; no newlines inside fields here).
pub fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Per-IO CSV rows as maps.
pub fn csv_rows(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head = csv_fields(lines.next().unwrap());
    lines
        .map(|l| head.iter().cloned().zip(csv_fields(l)).collect())
        .collect()
}
