//! The reporter on large synthetic traces: events per second through reader + join +
//! aggregation, wall time against a plain sequential read of the same file, and the
//! reporter's peak RSS, for 10M and 100M events.
//!
//!     cargo bench --bench report_throughput [-- MILLIONS...]     (default: 10 100)
//!
//! Traces come from `viopath_reporter::synth` (every layer, L2 misses, splits, merges,
//! CPUs interleaved as the recorder writes them) and are written to /var/tmp (about
//! 4.5 GB for 100M events; removed afterwards, or moved into `$VIOPATH_BENCH_KEEP`). Each size runs three rounds; in each,
//! the plain read (read(2) in 1 MiB blocks into one buffer) and
//! `viopath report TRACE --format json -o REPORT.json` run back to back, so the ratio
//! compares like with like on a noisy machine: once with the file in the page cache
//! (warm) and, as root, once each from storage after dropping the page cache (cold).
//! The bench fails unless the report has every generated IO as a complete row.
//!
//! `VIOPATH_BENCH_BASELINE=/path/to/viopath` (another build, e.g. of an earlier commit)
//! also runs that binary in every round, in the same cache state, and prints its time
//! and the ratio of this build's time to it: a before/after comparison in one run.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
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
    if let Some(b) = &baseline {
        assert!(
            b.is_file(),
            "VIOPATH_BENCH_BASELINE: no such file {}",
            b.display()
        );
        println!("baseline: {}", b.display());
    }
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
        plain_read(&p); // warm the page cache
        print!("round  cache  read_s  report_s  ratio  Mevents/s  peak_RSS_MiB");
        println!(
            "{}",
            if baseline.is_some() {
                "  base_s  this/base"
            } else {
                ""
            }
        );
        for round in 1..=3 {
            for cold in [false, true] {
                // Cold: both start from storage (needs root to drop the page cache).
                let drop = || cold && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
                if cold && !drop() {
                    continue;
                }
                let r = plain_read(&p);
                if cold {
                    drop();
                }
                let (s, rss) = report(this, &p, &json);
                print!(
                    "{round:>5}  {:>5}  {r:>6.2}  {s:>8.2}  {:>5.2}  {:>9.2}  {:>12.0}",
                    if cold { "cold" } else { "warm" },
                    s / r,
                    st.events as f64 / s / 1e6,
                    rss as f64 / (1 << 20) as f64
                );
                if let Some(b) = &baseline {
                    if cold {
                        drop();
                    }
                    let (bs, _) = report(b, &p, Path::new("/dev/null"));
                    print!("  {bs:>6.2}  {:>9.3}", s / bs);
                }
                println!();
            }
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
