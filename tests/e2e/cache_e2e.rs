//! QEMU's cache modes through the host page cache, against the kernel's own views:
//! `mincore` of the image file before each read (hit or miss), an ftrace instance of the
//! test's own on the block and syscall tracepoints (what a sync wrote, and when), the
//! dirty-page throttle's own tracepoint, and every mode QEMU offers giving complete
//! rows. A guest under `cache=writeback` is in `guest_writeback_is_exact`.
//!
//! Needs root and the QEMU built by tests/qemu/build.sh; skipped, saying so, otherwise.

use crate::common::*;
use crate::load_e2e::{Mode, check_blockstats, check_exact, join_rows, prerequisites, run_load};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use viopath_reporter::join::{IoRow, Op, flags};
use viopath_reporter::layers::{Boundary, split};

const PAGE: u64 = 4096;
/// The host partition's first sector (the table `stack` writes).
const PART_START: u64 = 2048;

struct Setup {
    st: MountedLoop,
    img: PathBuf,
    qemu_io: PathBuf,
    _dir: tempfile::TempDir,
}

/// A qcow2 on ext4 (4 KiB blocks, so a page of the image is a block of the
/// filesystem) on a GPT partition of a loop device, its first 8 MiB written.
fn stack(loop_direct_io: bool) -> Option<Setup> {
    if !is_root() {
        crate::common::skipped("needs root");
        return None;
    }
    can_record()?;
    let qio = qemu_bin("qemu-io")?;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let st = mount_partitioned_loop(
        &dir.path().join("disk.img"),
        "300M",
        "label: gpt\\nstart=2048, size=500000\\n",
        1,
        loop_direct_io,
        &dir.path().join("mnt"),
    );
    // 4 KiB blocks: remade, as the helper's mkfs picks 1 KiB for a small filesystem;
    // its tables initialized now, not by a kernel thread writing while tests record.
    sh(&format!(
        "umount {0} && mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 {1} \
         && mount {1} {0}",
        st.mnt.display(),
        st.part
    ));
    let img = create(&st.mnt, "vm.qcow2", "cluster_size=65536", "64M");
    qemu_io(&img, &["write -P 5 0 8M"]);
    Some(Setup {
        st,
        img,
        qemu_io: qio,
        _dir: dir,
    })
}

fn drop_caches() {
    sh("sync && echo 3 > /proc/sys/vm/drop_caches");
}

/// `viopath record -o TRACE -- qemu-io -f qcow2 OPTS -c CMD... IMAGE`'s arguments.
fn record_args(s: &Setup, trace: &Path, opts: &[&str], cmds: &[String]) -> Vec<String> {
    let mut args = vec![
        "record".into(),
        "-o".into(),
        trace.display().to_string(),
        "--".into(),
    ];
    args.extend([s.qemu_io.display().to_string(), "-f".into(), "qcow2".into()]);
    args.extend(opts.iter().map(|o| o.to_string()));
    for c in cmds {
        args.extend(["-c".into(), c.clone()]);
    }
    args.push(s.img.display().to_string());
    args
}

/// `viopath report --format json` of a trace.
fn report_json(trace: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["report", "-q", "--format", "json"])
        .arg(trace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// [`record_args`] recorded, holding the recording lock.
fn record(s: &Setup, trace: &Path, opts: &[&str], cmds: &[String]) {
    let out = viopath_recording(&record_args(s, trace, opts, cmds));
    assert!(
        out.status.success(),
        "{opts:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where guest bytes `[off, off + len)` are in the image file, from `qemu-img map`.
fn host_offset(map: &[Value], off: u64) -> u64 {
    let e = map
        .iter()
        .find(|e| {
            let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            s <= off && off < s + l
        })
        .unwrap();
    e["offset"].as_u64().expect("allocated") + off - e["start"].as_u64().unwrap()
}

/// Which pages of `[off, off + len)` of `file` are in the page cache (`mincore`).
fn resident(file: &Path, off: u64, len: u64) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(file).unwrap();
    let size = f.metadata().unwrap().len();
    let first = off / PAGE * PAGE;
    let n = (off + len).div_ceil(PAGE) - first / PAGE;
    assert!(first + n * PAGE <= size.div_ceil(PAGE) * PAGE);
    // SAFETY: a read-only shared mapping of a file we hold open, only passed to
    // mincore (never read through), unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            (n * PAGE) as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            first as libc::off_t,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mut v = vec![0u8; n as usize];
        assert_eq!(libc::mincore(p, (n * PAGE) as usize, v.as_mut_ptr()), 0);
        libc::munmap(p, (n * PAGE) as usize);
        v.into_iter().map(|b| b & 1 == 1).collect()
    }
}

/// `viopath record` of qemu-io reading its commands from a pipe: `before` runs before
/// each command is sent (the test looks at the page cache), the next is sent once
/// qemu-io printed the last one's result.
fn record_interactive(
    s: &Setup,
    cache: &str,
    aio: &str,
    trace: &Path,
    cmds: &[String],
    mut before: impl FnMut(usize),
) -> Value {
    let _one = one_recorder();
    let mut child = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["record", "--json", "-o", trace.to_str().unwrap(), "--"])
        .arg(&s.qemu_io)
        .args(["-f", "qcow2", "-t", cache, "-i", aio])
        .arg(&s.img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    for (i, c) in cmds.iter().enumerate() {
        before(i);
        writeln!(stdin, "{c}").unwrap();
        loop {
            let mut line = String::new();
            assert_ne!(
                out.read_line(&mut line).unwrap(),
                0,
                "qemu-io ended: {text}"
            );
            text.push_str(&line);
            if line.contains("ops;") {
                break;
            }
        }
        // Readahead it set off lands before the next look.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "record: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j = rest
        .find("{\n")
        .unwrap_or_else(|| panic!("no summary: {rest}"));
    let summary: Value = serde_json::from_str(&rest[j..]).unwrap();
    assert_eq!(summary["lost"], 0, "{summary}");
    summary
}

fn check_complete(rows: &[IoRow], what: &str) {
    for r in rows {
        assert_eq!(r.partial, 0, "{what}: partial row {r:?}");
        let (l, e2e) = split(&r.b);
        assert_eq!(l.iter().flatten().sum::<u64>(), e2e, "{what}: {r:?}");
    }
}

/// Reads through the page cache: a read whose pages `mincore` showed all resident
/// before it is a hit with no block layers; any other a miss, waiting on the bottom
/// disk; a hit on pages no earlier read asked for is a readahead hit.
fn reads_as_mincore_says(cache: &str, aio: &str) {
    let Some(s) = stack(true) else { return };
    let map = qemu_img_map(&s.img);
    // Sequential runs (readahead grows), repeats, strides and scattered 4 KiB reads.
    let mut plan: Vec<(u64, u64)> = vec![(0, 65536), (0, 65536), (65536, 65536), (131072, 65536)];
    for i in 0..6 {
        plan.push(((1 << 20) + i * 16384, 4096));
    }
    let mut rng = Lcg(0x5eed_cafe);
    for _ in 0..14 {
        plan.push((
            (2 << 20) + rng.below(96) * 65536 % (6 << 20),
            4096 << rng.below(5),
        ));
    }
    plan.extend([(0, 4096), (3 << 20, 65536)]);
    let cmds: Vec<String> = plan.iter().map(|(o, l)| format!("read {o} {l}")).collect();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let trace = dir.path().join("reads.trace");
    drop_caches();
    let disk = dev_of(&s.st.loopdev);
    let filter = format!("dev == {}", (disk.0 << 20) | disk.1);
    let oracle = Ftrace::start(
        "viopath-reads",
        &[("block/block_bio_queue", Some(&*filter))],
    );
    let mut was_resident = Vec::new();
    record_interactive(&s, cache, aio, &trace, &cmds, |i| {
        let (o, l) = plan[i];
        was_resident.push(resident(&s.img, host_offset(&map, o), l));
    });
    let bios = oracle.stop();
    let extents = file_extents(&s.img, PART_START);
    let (_, rows, _) = join_rows(&trace);
    let reads: Vec<&IoRow> = rows.iter().filter(|r| r.op == Op::Read).collect();
    assert_eq!(reads.len(), plan.len(), "{rows:#?}");
    check_complete(&rows, cache);
    let bottom = bottom_disk_of(&s._dir.path().join("disk.img"));
    let mut asked: BTreeSet<u64> = BTreeSet::new();
    let (mut hits, mut misses, mut ahead) = (0, 0, 0);
    for (i, (r, &(o, l))) in reads.iter().zip(&plan).enumerate() {
        assert_eq!((r.offset.map(|x| x.0), r.bytes), (Some(o), l), "read {i}");
        let pages: Vec<u64> =
            (host_offset(&map, o) / PAGE..(host_offset(&map, o) + l).div_ceil(PAGE)).collect();
        let hit = was_resident[i].iter().all(|&x| x);
        let f = |bit: u16| r.flags & bit != 0;
        assert_eq!(f(flags::PAGE_CACHE_HIT), hit, "read {i} {o}+{l}: {r:?}");
        assert_eq!(f(flags::PAGE_CACHE_MISS), !hit, "read {i} {o}+{l}: {r:?}");
        if hit {
            hits += 1;
            // The copy from the cache is all of its host time.
            assert_eq!(
                r.b[Boundary::Queued] + r.b[Boundary::DeviceDone],
                0,
                "{r:?}"
            );
            let from_readahead = pages.iter().any(|p| !asked.contains(p));
            assert_eq!(
                f(flags::READAHEAD_HIT),
                from_readahead,
                "read {i} {o}+{l}: {r:?}"
            );
            ahead += u32::from(from_readahead);
        } else {
            misses += 1;
            assert!(
                r.b[Boundary::DeviceDone] > 0,
                "read {i}: no device time {r:?}"
            );
            assert_eq!(r.bottom_dev, bottom, "read {i}: {r:?}");
            // The kernel read the sectors (where filefrag places them) of its pages not
            // in the cache while it ran.
            let first = host_offset(&map, o) / PAGE;
            let want: Vec<(u64, u64)> = was_resident[i]
                .iter()
                .enumerate()
                .filter(|&(_, &res)| !res)
                .flat_map(|(j, _)| disk_sectors_of(&extents, (first + j as u64) * PAGE, PAGE))
                .collect();
            let (from, to) = (r.b[Boundary::Submitted], r.b[Boundary::HostDone]);
            let read: Vec<(u64, u64)> = bios
                .iter()
                .filter(|e| e.ts + 1000 >= from && e.ts <= to)
                .filter_map(|e| ftrace_bio(&e.fields))
                .filter(|(rwbs, _, _)| rwbs.contains('R'))
                .map(|(_, s, n)| (s, s + n))
                .collect();
            for &(a, b) in &want {
                let covered: u64 = read
                    .iter()
                    .map(|&(s, e)| e.min(b).saturating_sub(s.max(a)))
                    .sum();
                assert!(
                    covered >= b - a,
                    "read {i} {o}+{l}: sectors {a}..{b} not read during it: {read:?}"
                );
            }
        }
        asked.extend(pages);
    }
    eprintln!("{cache}/{aio}: {hits} hits ({ahead} on readahead), {misses} misses");
    assert!(
        hits >= 3 && misses >= 3 && ahead >= 1,
        "the plan exercised too little"
    );
}

#[test]
fn writeback_reads_hit_and_miss_as_mincore_says() {
    reads_as_mincore_says("writeback", "threads");
}

#[test]
fn writethrough_io_uring_reads_hit_and_miss_as_mincore_says() {
    reads_as_mincore_says("writethrough", "io_uring");
}

/// The ftrace events a sync run by thread `pid` over `[enter, exit]` saw written to
/// the image's sectors: (bytes, first enter, last exit) per fdatasync of that window.
struct Sync {
    pid: u32,
    enter: u64,
    exit: u64,
}

fn syncs(ev: &[FtraceEvent]) -> Vec<Sync> {
    let mut open: Vec<(u32, u64)> = Vec::new();
    let mut out = Vec::new();
    for e in ev {
        match e.event.as_str() {
            "sys_fdatasync" if e.fields.starts_with('(') => open.push((e.pid, e.ts)),
            "sys_fdatasync" => {
                if let Some(i) = open.iter().position(|&(p, _)| p == e.pid) {
                    let (pid, enter) = open.remove(i);
                    out.push(Sync {
                        pid,
                        enter,
                        exit: e.ts,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Bytes the sync's thread wrote during it to `sectors` of `disk` (the partition's
/// whole disk: ftrace names a partition's bio by its disk and the disk's sector
/// numbers), by `block_bio_queue`.
fn written(ev: &[FtraceEvent], disk: (u32, u32), sectors: &[(u64, u64)], s: &Sync) -> u64 {
    let dev = format!("{},{}", disk.0, disk.1);
    ev.iter()
        .filter(|e| e.event == "block_bio_queue" && e.pid == s.pid)
        .filter(|e| e.ts >= s.enter && e.ts <= s.exit)
        .filter(|e| e.fields.starts_with(&format!("{dev} ")))
        .filter_map(|e| {
            let (rwbs, sector, n) = ftrace_bio(&e.fields)?;
            (rwbs.contains('W')
                && n > 0
                && sectors.iter().any(|&(a, b)| sector < b && a < sector + n))
            .then_some(n * 512)
        })
        .sum()
}

fn dev_of(path: &str) -> (u32, u32) {
    let rdev = std::fs::metadata(path).unwrap().rdev();
    (libc::major(rdev), libc::minor(rdev))
}

/// The sync matching a row: its syscall's return is the row's host end.
fn sync_of<'a>(syncs: &'a [Sync], r: &IoRow) -> &'a Sync {
    let done = r.b[Boundary::HostDone];
    syncs
        .iter()
        .min_by_key(|s| s.exit.abs_diff(done))
        .filter(|s| s.exit.abs_diff(done) < 200_000)
        .unwrap_or_else(|| {
            let near: Vec<(u32, u64, u64)> =
                syncs.iter().map(|s| (s.pid, s.enter, s.exit)).collect();
            panic!("no fdatasync returning at {done}: {r:?}; fdatasyncs seen: {near:?}")
        })
}

/// qemu-io's default, writethrough: every write syncs the image before it completes.
/// Each write's row includes its sync, and what the sync wrote is what the kernel's
/// `block_bio_queue` saw the syncing thread write to the image's sectors.
#[test]
fn writethrough_writes_include_their_sync_and_what_it_wrote() {
    let Some(s) = stack(true) else { return };
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let trace = dir.path().join("wt.trace");
    let part = dev_of(&s.st.loopdev);
    drop_caches();
    let oracle = Ftrace::start(
        "viopath-wt",
        &[
            ("block/block_bio_queue", None),
            ("syscalls/sys_enter_fdatasync", None),
            ("syscalls/sys_exit_fdatasync", None),
        ],
    );
    let cmds: Vec<String> = [
        (0u64, 65536u64),
        (1 << 20, 4096),
        (9 << 20, 65536),
        (12 << 20, 131072),
    ]
    .iter()
    .enumerate()
    .map(|(i, (o, l))| format!("write -P {} {o} {l}", i + 1))
    .collect();
    record(&s, &trace, &[], &cmds);
    let ev = oracle.stop();
    let sectors = file_disk_sectors(&s.img, PART_START);
    let syncs = syncs(&ev);
    let (_, rows, _) = join_rows(&trace);
    let writes: Vec<&IoRow> = rows.iter().filter(|r| r.op == Op::Write).collect();
    assert_eq!(writes.len(), 4, "{rows:#?}");
    check_complete(&rows, "writethrough");
    for r in &writes {
        assert!(r.flags & flags::SYNCED != 0, "not synced: {r:?}");
        assert!(r.flags & flags::PAGE_CACHE_WRITE != 0, "{r:?}");
        let s = sync_of(&syncs, r);
        let want = written(&ev, part, &sectors, s);
        assert!(want > 0, "the kernel saw no write for {r:?}");
        assert_eq!(r.synced_bytes, want, "{r:?}");
        assert!(r.b[Boundary::DeviceDone] > 0, "{r:?}");
    }
}

/// The kernel's CONFIG_HZ (the throttle's pauses are in its ticks).
fn kernel_hz() -> u64 {
    sh("zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r)")
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .expect("CONFIG_HZ")
}

/// Buffered writes over a low dirty limit sleep in balance_dirty_pages: each write's
/// `dirty_wait_ns` is the pauses an ftrace instance saw its thread take inside it.
#[test]
fn dirty_throttle_pauses_are_the_kernels() {
    let Some(s) = stack(true) else { return };
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let trace = dir.path().join("dirty.trace");
    let oracle = Ftrace::start("viopath-dirty", &[("writeback/balance_dirty_pages", None)]);
    // Each write twice the dirty limit set below, so that no write can be copied into
    // the cache without waiting for writeback, however fast the disk writes back: with
    // 1 MiB writes (half the limit) a fast writeback kept a whole run under it.
    const WRITES: u64 = 10;
    let cmds: Vec<String> = (0..WRITES)
        .map(|i| format!("write -P 9 {} 4M", (8 << 20) + i * (4 << 20)))
        .collect();
    let args = record_args(&s, &trace, &["-t", "writeback"], &cmds);
    // The machine's limits are lowered only while this test records: the lock keeps
    // every other recording out meanwhile.
    let one = one_recorder();
    let read = |f: &str| std::fs::read_to_string(f).unwrap().trim().to_owned();
    let restore = Restore(
        read("/proc/sys/vm/dirty_ratio"),
        read("/proc/sys/vm/dirty_background_ratio"),
    );
    std::fs::write("/proc/sys/vm/dirty_background_bytes", "1048576").unwrap();
    std::fs::write("/proc/sys/vm/dirty_bytes", "2097152").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(&args)
        .output()
        .unwrap();
    drop(restore);
    drop(one);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Other processes (other tests setting up) may be throttled too: qemu-io's own.
    let ev: Vec<FtraceEvent> = oracle
        .stop()
        .into_iter()
        .filter(|e| e.comm == "qemu-io")
        .collect();
    let tick = 1_000_000_000 / kernel_hz();
    let (_, rows, _) = join_rows(&trace);
    check_complete(&rows, "dirty");
    let mut throttled = 0;
    for r in rows.iter().filter(|r| r.op == Op::Write) {
        let (from, to) = (r.b[Boundary::Submitted], r.b[Boundary::HostDone]);
        let ticks: u64 = ev
            .iter()
            .filter(|e| e.ts >= from && e.ts <= to)
            .filter_map(|e| {
                e.fields
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("pause="))
                    .and_then(|p| p.parse::<i64>().ok())
            })
            .map(|p| p.max(0) as u64)
            .sum();
        assert_eq!(r.dirty_wait_ns, ticks * tick, "{r:?}");
        assert_eq!(
            r.flags & flags::DIRTY_THROTTLED != 0,
            ev.iter().any(|e| e.ts >= from && e.ts <= to),
            "{r:?}"
        );
        throttled += u32::from(r.dirty_wait_ns > 0);
    }
    eprintln!("{throttled} of {WRITES} writes paused by the dirty-page throttle");
    assert!(
        throttled > 0,
        "no write was throttled: the limits did not bite"
    );
}

/// Puts dirty_ratio and dirty_background_ratio back (writing a ratio clears the
/// matching byte limit).
struct Restore(String, String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/vm/dirty_ratio", &self.0);
        let _ = std::fs::write("/proc/sys/vm/dirty_background_ratio", &self.1);
    }
}

/// One qemu-io run in `cache` mode with `aio`: writes, reads, a flush.
fn record_mode(s: &Setup, cache: &str, aio: &str, trace: &Path) {
    let cmds: Vec<String> = [
        "read 0 64k",
        "read 0 64k",
        "read 64k 64k",
        "write -P 7 2M 64k",
        "write -P 8 10M 4k",
        "read 10M 4k",
        "flush",
        "aio_write -P 9 20M 64k",
        "aio_read 1M 64k",
        "aio_flush",
    ]
    .map(String::from)
    .to_vec();
    drop_caches();
    record(s, trace, &["-t", cache, "-i", aio], &cmds);
}

/// Every cache mode QEMU offers, with the thread pool, io_uring, and linux-aio where
/// QEMU allows it (O_DIRECT only): every row complete, flagged as the mode implies,
/// and the summary naming the mode.
#[test]
fn every_cache_mode_gives_complete_rows() {
    let Some(s) = stack(true) else { return };
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut runs = Vec::new();
    for cache in ["none", "writeback", "writethrough", "directsync", "unsafe"] {
        let direct = matches!(cache, "none" | "directsync");
        let aios: &[&str] = if direct {
            &["threads", "io_uring", "native"]
        } else {
            &["threads", "io_uring"]
        };
        for aio in aios {
            let trace = dir.path().join(format!("{cache}-{aio}.trace"));
            record_mode(&s, cache, aio, &trace);
            let (_, rows, _) = join_rows(&trace);
            let what = format!("{cache}/{aio}");
            assert_eq!(
                rows.iter().filter(|r| r.op.moves_data()).count(),
                8,
                "{what}: {rows:#?}"
            );
            check_complete(&rows, &what);
            for r in &rows {
                let f = |bit: u16| r.flags & bit != 0;
                let cached = f(flags::PAGE_CACHE_HIT)
                    || f(flags::PAGE_CACHE_MISS)
                    || f(flags::PAGE_CACHE_WRITE);
                assert_eq!(cached, !direct && r.op.moves_data(), "{what}: {r:?}");
                let synced = matches!(cache, "writethrough" | "directsync") && r.op == Op::Write;
                assert_eq!(f(flags::SYNCED), synced, "{what}: {r:?}");
                if direct || r.flags & flags::PAGE_CACHE_MISS != 0 {
                    assert!(r.b[Boundary::DeviceDone] > 0, "{what}: {r:?}");
                }
            }
            let j = report_json(&trace);
            let m = &j["summary"]["cache_modes"][0];
            assert_eq!(m["mode"], cache, "{what}: {m}");
            assert_eq!(m["from"], "command line", "{what}: {m}");
            runs.push((cache, *aio, trace));
        }
    }
    // A run with the page cache against one without: both sides have numbers.
    let (none, wb) = (&runs[0].2, &runs[3].2);
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["compare", "--format", "json"])
        .arg(none)
        .arg("--vs")
        .arg(wb)
        .output()
        .unwrap();
    assert!(out.status.code().is_some_and(|c| c < 2), "{out:?}");
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["base"][0]["ios"].as_u64().unwrap() > 0, "{j}");
    assert!(j["new"][0]["ios"].as_u64().unwrap() > 0, "{j}");
    let e2e = j["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["layer"] == "e2e" && c["metric"] == "mean" && c["op"] == "write")
        .unwrap_or_else(|| panic!("no end-to-end mean: {j}"));
    assert!(
        e2e["base_ns"].as_f64().unwrap() > 0.0 && e2e["new_ns"].as_f64().unwrap() > 0.0,
        "{e2e}"
    );
}

/// A loop device without direct IO (losetup's default): every request's IO goes
/// through its backing file's page cache. Rows are complete; those the loop's cache
/// took whole end at the loop device.
#[test]
fn a_loop_device_without_direct_io_gives_complete_rows() {
    let Some(s) = stack(false) else { return };
    assert_eq!(
        std::fs::read_to_string(format!(
            "/sys/block/{}/loop/dio",
            s.st.loopdev.trim_start_matches("/dev/")
        ))
        .unwrap()
        .trim(),
        "0"
    );
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let trace = dir.path().join("loop.trace");
    let mut rng = Lcg(42);
    let n = 300;
    let cmds: Vec<String> = (0..n)
        .map(|i| {
            let off = rng.below(120) * 65536 + rng.below(16) * 4096;
            if i % 3 == 0 {
                format!("write -P {} {off} 4k", i % 250)
            } else {
                format!("read {off} 4k")
            }
        })
        .collect();
    drop_caches();
    record(&s, &trace, &["-t", "none"], &cmds);
    let (_, rows, _) = join_rows(&trace);
    let data: Vec<&IoRow> = rows.iter().filter(|r| r.op.moves_data()).collect();
    assert_eq!(data.len(), n as usize);
    check_complete(&rows, "loop without direct IO");
    let bottom = bottom_disk_of(&s._dir.path().join("disk.img"));
    let in_loop_cache = data
        .iter()
        .filter(|r| r.flags & flags::LOOP_PAGE_CACHE != 0)
        .count();
    let on_disk = data.iter().filter(|r| r.bottom_dev == bottom).count();
    eprintln!("{in_loop_cache} in the loop's page cache, {on_disk} down to the disk");
    assert_eq!(
        in_loop_cache + on_disk,
        n as usize,
        "every row ends somewhere"
    );
    assert!(in_loop_cache > 0 && on_disk > 0);
}

/// The test guest's load under `cache=writeback`: exact against the guest's own block
/// trace and QEMU's accounting, like `cache=none`; every flush's sync wrote back what
/// the kernel saw its thread write to the image's sectors.
#[test]
fn guest_writeback_is_exact() {
    let Some((qemu, assets)) = prerequisites() else {
        return;
    };
    let mode = Mode {
        cache: "writeback",
        ops: 300,
        ..Mode::plain("threads")
    };
    sh("sync");
    let oracle = Ftrace::start(
        "viopath-guest-wb",
        &[
            ("block/block_bio_queue", None),
            ("syscalls/sys_enter_fdatasync", None),
            ("syscalls/sys_exit_fdatasync", None),
        ],
    );
    let run = run_load(&qemu, &assets, &mode, Some(&[]));
    let ev = oracle.stop();
    let (rows, _) = check_exact(&run, "guest-writeback");
    check_blockstats(&run, &rows, "guest-writeback");
    let part = dev_of(&run.loopdev);
    let sectors = file_disk_sectors(&run.disk, PART_START);
    let syncs = syncs(&ev);
    let flushes: Vec<&IoRow> = rows
        .iter()
        .filter(|r| r.op == Op::Flush && r.host_ios > 0)
        .collect();
    assert!(!flushes.is_empty());
    let mut wrote = 0;
    for r in &flushes {
        let s = sync_of(&syncs, r);
        let want = written(&ev, part, &sectors, s);
        assert_eq!(r.synced_bytes, want, "{r:?}");
        wrote += want;
    }
    let count = |bit: u16| rows.iter().filter(|r| r.flags & bit != 0).count();
    let (hits, misses, cached) = (
        count(flags::PAGE_CACHE_HIT),
        count(flags::PAGE_CACHE_MISS),
        count(flags::PAGE_CACHE_WRITE),
    );
    eprintln!(
        "guest-writeback: {} flushes wrote back {wrote} bytes; {hits} page-cache hits, {misses} \
         misses, {cached} buffered writes",
        flushes.len()
    );
    assert!(wrote > 0 && cached > 0 && hits > 0 && misses > 0);
    // The summary names the mode from QEMU's command line, and the kernel's open flags
    // (QEMU lived long enough for the recorder to look) agree.
    let j = report_json(&run.trace);
    let m = &j["summary"]["cache_modes"][0];
    assert_eq!(
        (&m["mode"], &m["from"], &m["opened_direct"]),
        (
            &Value::from("writeback"),
            &Value::from("command line"),
            &Value::from(false)
        ),
        "{m}"
    );
    let t = viopath_reporter::reader::Trace::open(&run.trace).unwrap();
    assert_eq!(t.header.kernel_hz, Some(kernel_hz() as u32));
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Buffered writes left dirty and written back by the kernel for another process (a
/// `sync` run by the test while qemu-io waits for its next command): the summary
/// reports that writeback for the image's disk, with the volume the kernel's own
/// `block_bio_queue` saw written to the image's sectors, no less than what was written.
#[test]
fn kernel_writeback_is_reported_by_disk() {
    let Some(s) = stack(true) else { return };
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let trace = dir.path().join("wb.trace");
    drop_caches();
    let disk = dev_of(&s.st.loopdev);
    let filter = format!("dev == {}", (disk.0 << 20) | disk.1);
    let oracle = Ftrace::start("viopath-wb", &[("block/block_bio_queue", Some(&*filter))]);
    let mut cmds: Vec<String> = (0..4)
        .map(|i| format!("write -P 3 {} 1M", (16 << 20) + (i << 20)))
        .collect();
    cmds.push("read 0 4k".into());
    let last = cmds.len() - 1;
    let mut window = (0, 0);
    record_interactive(&s, "writeback", "threads", &trace, &cmds, |i| {
        if i == last {
            window.0 = monotonic_ns();
            sh("sync");
            window.1 = monotonic_ns();
        }
    });
    let ev = oracle.stop();
    let sectors = file_disk_sectors(&s.img, PART_START);
    let want: u64 = ev
        .iter()
        .filter(|e| e.ts >= window.0 && e.ts <= window.1)
        .filter_map(|e| ftrace_bio(&e.fields))
        .filter(|(rwbs, sector, n)| {
            rwbs.contains('W')
                && *n > 0
                && sectors.iter().any(|&(a, b)| *sector < b && a < sector + n)
        })
        .map(|(_, _, n)| n * 512)
        .sum();
    let j = report_json(&trace);
    let wb = &j["summary"]["page_cache"]["writeback"];
    eprintln!("kernel writeback: {wb}; the kernel wrote {want} bytes of the image");
    assert_eq!(wb.as_array().map(Vec::len), Some(1), "{wb}");
    assert_eq!(wb[0]["disk"], 0, "{wb}");
    assert_eq!(wb[0]["bytes"].as_u64(), Some(want), "{wb}");
    assert!(want >= 4 << 20, "less written back than written: {want}");
    let (_, rows, _) = join_rows(&trace);
    let writes: Vec<&IoRow> = rows.iter().filter(|r| r.op == Op::Write).collect();
    assert_eq!(writes.len(), 4);
    assert!(
        writes
            .iter()
            .all(|r| r.flags & flags::PAGE_CACHE_WRITE != 0 && r.partial == 0)
    );
}
