//! The reporter on large synthetic traces: events per second through reader + join +
//! aggregation, wall time against a plain sequential read of the same file, and the
//! reporter's peak RSS, for 10M and 100M events.
//!
//!     cargo bench --bench report_throughput [-- MILLIONS...]     (default: 10 100)
//!
//! Traces come from `viopath_reporter::synth` (every layer, L2 misses, splits, merges,
//! CPUs interleaved as the recorder writes them) and are written to /var/tmp (about
//! 4.5 GB for 100M events; removed afterwards, or moved into `$VIOPATH_BENCH_KEEP`). Each size runs three rounds (`VIOPATH_BENCH_ROUNDS`); in each,
//! the plain read (read(2) in 1 MiB blocks into one buffer) and
//! `viopath report TRACE --format json -o REPORT.json` run back to back, so the ratio
//! compares like with like on a noisy machine: once with the file in the page cache
//! (warm) and, as root, once each from storage after dropping the page cache (cold),
//! and once each from a fast disk (ram): a copy of the trace on ext4 on a loop device
//! whose backing file lies in tmpfs, with the page cache dropped. Dropping the cache
//! leaves tmpfs alone, so the ram rows read through the filesystem and block layer at
//! memory speed: what a fast NVMe disk gives, on any machine, where "cold" depends on
//! the machine's own disk (and, on a VM, on its host).
//! The ram rows need root, `losetup` and `mkfs.ext4`, and memory for a copy of the trace
//! and 2 GiB more (`MemAvailable`); without them they are left out, saying why.
//!
//! On a VM whose balloon reports free pages to the host (the machines these run on),
//! the page cache each drop frees goes back to the host, and the next read pays a host
//! fault per page: a plain read of the 100M trace from the RAM disk took 8–10 s
//! instead of 0.7–1.2 s. So the bench, as root, switches that reporting off while it
//! runs (`page_reporting_order` above the largest block) and restores it at the end:
//! cold and ram rows then time the disks, not the host's memory.
//! The bench fails unless the report has every generated IO as a complete row.
//!
//! Each round also times the join alone ("floor"): the trace's events, read and decoded
//! batch by batch outside the clock, joined on one thread with a sink that keeps nothing.
//! No reading, no hand-over between threads, no columns, no aggregation: what the
//! report cannot go below however those are done, as long as the join runs on one
//! thread. The reading (checksums, decoding, the CPUs' merge) is timed too, and their
//! sum over the CPUs this process may use is what the two would take spread perfectly
//! over them, however the join were split. Both are set against the round's fastest
//! plain read from a disk (from storage or the RAM disk).
//!
//! `VIOPATH_BENCH_BASELINE=/path/to/viopath` (another build, e.g. of an earlier commit)
//! also runs that binary in every round, in the same cache state, and prints its time
//! and the ratio of this build's time to it: a before/after comparison in one run. The
//! two run in turn, the baseline first in even rounds, so the order's own effect
//! cancels over an even number of rounds (`VIOPATH_BENCH_ROUNDS`, default 3). As one
//! report per round and cache state leaves a few percent to noise, the bench then
//! times both builds on the warm trace in `VIOPATH_BENCH_PAIRS` (default 20) pairs,
//! the order swapped every pair, and prints the medians of wall and CPU time.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use viopath_reporter::join::{IoRow, Join, OtherIo, Sink};
use viopath_reporter::reader::Trace;
use viopath_reporter::synth::{SynthConfig, generate};

/// Events per synthetic IO (measured by generating once; close to the real mix).
fn events_per_io(dir: &Path) -> f64 {
    let cfg = SynthConfig {
        ios: 20_000,
        ..SynthConfig::default()
    };
    let p = dir.join("probe.trace");
    let f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    let (_, st) = generate(&cfg, f, |_| {}).unwrap();
    std::fs::remove_file(&p).unwrap();
    st.events as f64 / cfg.ios as f64
}

fn plain_read(p: &Path) -> f64 {
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).unwrap();
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    std::hint::black_box(n);
    t.elapsed().as_secs_f64()
}

/// Wall seconds and peak RSS (bytes) of `viopath report` by the binary `bin`, its
/// JSON report written to `json`.
fn report(bin: &Path, p: &Path, json: &Path) -> (f64, u64) {
    let t = Instant::now();
    let out = Command::new(bin)
        .args([
            "report",
            p.to_str().unwrap(),
            "--format",
            "json",
            "-o",
            json.to_str().unwrap(),
        ])
        .env("VIOPATH_PEAK_RSS", "1")
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "viopath report failed: {err}");
    // The report's own VmHWM: wait4's ru_maxrss would also count the forked copy of
    // this (large) bench process before exec.
    let kib: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("viopath: peak RSS "))
        .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
        .expect("peak RSS line");
    (secs, kib * 1024)
}

/// Seconds the join alone spends on the events of the trace at `p` (see the top of this
/// file), seconds spent reading them (checksums, decoding, the CPUs' merge), and the
/// rows the join made.
fn join_alone(p: &Path) -> (f64, f64, u64) {
    /// Counts rows; keeps nothing.
    struct Rows(u64);
    impl Sink for Rows {
        fn io(&mut self, _: &IoRow) {
            self.0 += 1;
        }
        fn other(&mut self, _: &OtherIo) {}
    }
    let trace = Trace::open(p).unwrap();
    let (layout, _) = viopath_reporter::load_layout(&trace, &[]);
    let mut join = Join::new(
        &layout,
        Rows(0),
        viopath_reporter::join_config(&trace, &layout),
    );
    let mut events = trace.events();
    let mut batch = Vec::new();
    let (mut joining, mut reading) = (Duration::ZERO, Duration::ZERO);
    loop {
        let t = Instant::now();
        let more = events.next_batch(&mut batch);
        reading += t.elapsed();
        if !more {
            break;
        }
        let t = Instant::now();
        for e in &batch {
            join.event(e);
        }
        joining += t.elapsed();
    }
    let t = Instant::now();
    let (rows, _) = join.finish();
    joining += t.elapsed();
    (joining.as_secs_f64(), reading.as_secs_f64(), rows.0)
}

/// ext4 on a loop device backed by a file in tmpfs, mounted; undone when dropped.
struct RamDisk {
    /// Mount point of the ext4.
    fs: std::path::PathBuf,
    /// Commands that undo the set-up, run in reverse order.
    undo: Vec<Vec<String>>,
}

impl RamDisk {
    /// Room for `bytes` of files, in `dir`.
    fn new(dir: &Path, bytes: u64) -> Result<RamDisk, String> {
        let (ram, fs) = (dir.join("ram"), dir.join("fs"));
        for d in [&ram, &fs] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let mut disk = RamDisk {
            fs: fs.clone(),
            undo: Vec::new(),
        };
        // ext4's own metadata and journal: a few percent, plus 128 MiB of slack.
        let img_bytes = bytes + bytes / 16 + (128 << 20);
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        disk.run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={}", img_bytes + (64 << 20)),
            "tmpfs",
            &s(&ram),
        ])?;
        disk.undo.push(vec!["umount".into(), s(&ram)]);
        let img = ram.join("disk.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(img_bytes))
            .map_err(|e| format!("{}: {e}", img.display()))?;
        let dev = disk.run(&["losetup", "--show", "-f", &s(&img)])?;
        disk.undo
            .push(vec!["losetup".into(), "-d".into(), dev.clone()]);
        // Inode tables and journal made now, not by a kernel thread during the rounds.
        disk.run(&[
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &dev,
        ])?;
        disk.run(&["mount", "-o", "noatime", &dev, &s(&fs)])?;
        disk.undo.push(vec!["umount".into(), s(&fs)]);
        Ok(disk)
    }

    /// Run `cmd`, its trimmed standard output, or why it failed.
    fn run(&self, cmd: &[&str]) -> Result<String, String> {
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .map_err(|e| format!("{}: {e}", cmd[0]))?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for RamDisk {
    fn drop(&mut self) {
        for cmd in self.undo.iter().rev() {
            let _ = Command::new(&cmd[0]).args(&cmd[1..]).status();
        }
    }
}

/// Free page reporting switched off while alive (see the top of this file), restored
/// when dropped.
struct NoPageReporting {
    was: String,
}

const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

impl NoPageReporting {
    fn new() -> Option<NoPageReporting> {
        let was = std::fs::read_to_string(PAGE_REPORTING_ORDER).ok()?;
        // Above the largest buddy order (10 on x86-64): no free block is reported.
        std::fs::write(PAGE_REPORTING_ORDER, "11").ok()?;
        // Drop does not run if the bench is killed: say how to undo it by hand.
        println!(
            "free page reporting off while the bench runs: page_reporting_order {0} -> 11 \
             (if interrupted: echo {0} > {PAGE_REPORTING_ORDER})",
            was.trim()
        );
        Some(NoPageReporting { was })
    }
}

impl Drop for NoPageReporting {
    fn drop(&mut self) {
        let _ = std::fs::write(PAGE_REPORTING_ORDER, self.was.trim());
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes (0 if it cannot be read).
/// User plus system CPU seconds of the children waited for so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// This build against the baseline on the warm trace, `n` pairs back to back with the
/// order swapped every pair: the rounds above time each build once per cache state,
/// which at a few tenths of a second per report leaves a few percent to noise. Prints
/// the medians of wall and CPU time and the medians of the pairs' ratios.
fn ab_pairs(this: &Path, base: &Path, trace: &Path, n: u32) {
    if n == 0 {
        return;
    }
    plain_read(trace);
    let run = |bin: &Path| {
        let cpu = children_cpu();
        let (wall, _) = report(bin, trace, Path::new("/dev/null"));
        (wall, children_cpu() - cpu)
    };
    let (mut this_t, mut base_t) = (Vec::new(), Vec::new());
    for i in 0..n {
        if i % 2 == 0 {
            this_t.push(run(this));
            base_t.push(run(base));
        } else {
            base_t.push(run(base));
            this_t.push(run(this));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    };
    let pick = |v: &[(f64, f64)], cpu: bool| -> Vec<f64> {
        v.iter().map(|&(w, c)| if cpu { c } else { w }).collect()
    };
    for (what, cpu) in [("wall", false), ("cpu", true)] {
        let (t, b) = (pick(&this_t, cpu), pick(&base_t, cpu));
        let ratios: Vec<f64> = t.iter().zip(&b).map(|(x, y)| x / y).collect();
        println!(
            "a/b warm, {n} pairs, {what}: this {:.3} s, base {:.3} s (medians); this/base {:.3}, \
             median of pair ratios {:.3}",
            median(t.clone()),
            median(b.clone()),
            median(t) / median(b),
            median(ratios)
        );
    }
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Drop the page cache (root only); false if that cannot be done.
fn drop_caches() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100]
    } else {
        sizes
    };
    let this = Path::new(env!("CARGO_BIN_EXE_viopath"));
    let baseline = std::env::var_os("VIOPATH_BENCH_BASELINE").map(std::path::PathBuf::from);
    let pairs: u32 = std::env::var("VIOPATH_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rounds: u32 = std::env::var("VIOPATH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    if let Some(b) = &baseline {
        assert!(
            b.is_file(),
            "VIOPATH_BENCH_BASELINE: no such file {}",
            b.display()
        );
        println!("baseline: {}", b.display());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _no_reporting = NoPageReporting::new();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let per_io = events_per_io(dir.path());
    println!("synthetic mix: {per_io:.2} events per IO");
    for m in sizes {
        let target = m * 1_000_000;
        let cfg = SynthConfig {
            ios: (target as f64 / per_io).ceil() as u64,
            seed: m,
            ..SynthConfig::default()
        };
        let p = dir.path().join(format!("{m}M.trace"));
        let json = dir.path().join(format!("{m}M.json"));
        let t = Instant::now();
        let f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&p).unwrap());
        let (_, st) = generate(&cfg, f, |_| {}).unwrap();
        let bytes = std::fs::metadata(&p).unwrap().len();
        println!(
            "\n{m}M: {} events, {} IOs, {:.2} GB, generated in {:.0} s",
            st.events,
            cfg.ios,
            bytes as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
        // The fast disk: a copy of the trace on it, for the "ram" rows. tmpfs cannot be
        // evicted (there is no swap here): the disk image (the trace and ext4's share)
        // and the report, with room to spare, must fit in memory the kernel can free.
        let (available, needed) = (mem_available(), bytes + bytes / 16 + (2 << 30));
        let ram = if !drop_caches() {
            Err("not root: the page cache cannot be dropped".to_owned())
        } else if available < needed {
            Err(format!(
                "{:.1} GB of memory available, {:.1} GB needed for a RAM disk",
                available as f64 / 1e9,
                needed as f64 / 1e9
            ))
        } else {
            RamDisk::new(&dir.path().join(format!("{m}M-ram")), bytes).and_then(|d| {
                let to = d.fs.join("trace");
                std::fs::copy(&p, &to)
                    .map(|_| (d, to))
                    .map_err(|e| format!("copying the trace to the RAM disk: {e}"))
            })
        };
        if let Err(why) = &ram {
            println!("no ram rows: {why}");
        }
        print!("round  cache    read_s  report_s  ratio  Mevents/s  peak_RSS_MiB");
        println!(
            "{}",
            if baseline.is_some() {
                "  base_s  this/base"
            } else {
                ""
            }
        );
        for round in 1..=rounds {
            // With a baseline, every other round runs it first: the first run after a
            // cache fill or drop is not like the second, and an order kept for every
            // round would show as a difference between the builds.
            let base_first = round % 2 == 0;
            let mut fastest_read: Option<(&str, f64)> = None;
            for cache in ["warm", "cold", "ram"] {
                // Cold and ram: both start from storage (needs root to drop the page
                // cache).
                let trace = match (cache, &ram) {
                    // The round before dropped the page cache: fill it again.
                    ("warm", _) => {
                        plain_read(&p);
                        p.as_path()
                    }
                    ("cold", _) if drop_caches() => p.as_path(),
                    ("ram", Ok((_, copy))) if drop_caches() => copy.as_path(),
                    _ => continue,
                };
                let uncache = || {
                    if cache != "warm" {
                        drop_caches();
                    }
                };
                let r = plain_read(trace);
                if cache != "warm" && fastest_read.is_none_or(|(_, f)| r < f) {
                    fastest_read = Some((cache, r));
                }
                let base_before = match &baseline {
                    Some(b) if base_first => {
                        uncache();
                        Some(report(b, trace, Path::new("/dev/null")).0)
                    }
                    _ => None,
                };
                uncache();
                let (s, rss) = report(this, trace, &json);
                print!(
                    "{round:>5}  {cache:>5}  {r:>8.2}  {s:>8.2}  {:>5.2}  {:>9.2}  {:>12.0}",
                    s / r,
                    st.events as f64 / s / 1e6,
                    rss as f64 / (1 << 20) as f64
                );
                if let Some(b) = &baseline {
                    let bs = base_before.unwrap_or_else(|| {
                        uncache();
                        report(b, trace, Path::new("/dev/null")).0
                    });
                    print!("  {bs:>6.2}  {:>9.3}", s / bs);
                }
                println!();
            }
            let from = match &ram {
                Ok((_, copy)) => copy.as_path(),
                Err(_) => p.as_path(),
            };
            let (joining, reading, rows) = join_alone(from);
            assert_eq!(rows, cfg.ios, "the join alone made a row per generated IO");
            // Both spread over every CPU with nothing lost to the hand-over.
            let spread = (joining + reading) / cpus as f64;
            print!("{round:>5}  floor  join alone {joining:.2} s, reading alone {reading:.2} s");
            match fastest_read {
                Some((cache, r)) => println!(
                    ": {:.2}x the {cache} read; both spread over {cpus} CPUs {spread:.2} s, {:.2}x",
                    joining / r,
                    spread / r
                ),
                None => println!(" (no read from storage to set it against: not root)"),
            }
        }
        drop(ram);
        if let Some(b) = &baseline {
            ab_pairs(this, b, &p, pairs);
        }
        // The times count only if the join was right: the generator's every IO is a
        // row, and complete (its lost events cost no IO its device time).
        let summary = &serde_json::from_slice::<serde_json::Value>(&std::fs::read(&json).unwrap())
            .unwrap()["summary"];
        let count = |k: &str| summary[k].as_u64().unwrap_or(u64::MAX);
        println!(
            "joined: {} IOs of {} generated, {} complete, {} partial",
            count("ios"),
            cfg.ios,
            count("complete_ios"),
            count("partial_ios")
        );
        assert_eq!(
            (count("ios"), count("complete_ios")),
            (cfg.ios, cfg.ios),
            "the report of {m}M events did not join every generated IO completely"
        );
        match std::env::var_os("VIOPATH_BENCH_KEEP") {
            // Keep the trace for profiling the reporter by hand.
            Some(keep) => {
                let to = Path::new(&keep).join(format!("{m}M.trace"));
                std::fs::rename(&p, &to).unwrap();
                println!("kept {}", to.display());
            }
            None => std::fs::remove_file(&p).unwrap(),
        }
    }
}
