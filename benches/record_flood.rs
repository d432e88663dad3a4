//! The recorder under a synthetic flood: how many events per second it sustains with
//! zero loss, and what its eBPF programs cost per event (kernel BPF statistics).
//!
//!     sudo cargo bench --bench record_flood [-- SECONDS]
//!
//! The flood is this bench binary re-run as a child (`record_flood flood THREADS SECS`):
//! threads in a tight `pread64(fd, buf, 1, 0)` loop on a page-cached file, so every
//! syscall is two events through the `syscalls/sys_{enter,exit}_pread64` tracepoint
//! programs. It runs three ways, side by side: untraced, under
//! `viopath record --probes syscall`, and under the same with `--bpf-stats`. The child
//! counts its own syscalls, so "zero loss" is checked against an independent count:
//! every syscall must appear as two events in the trace (plus 4 for the two `pread64`
//! calls the dynamic loader makes before `main`, seen with `strace -e pread64`), and
//! the recorder's per-CPU loss counters must be zero. Needs root (it loads eBPF).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn flood(threads: usize, secs: f64, file: &Path) {
    let f = std::fs::File::open(file).expect("open flood file");
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let fd = f.as_raw_fd();
                s.spawn(move || {
                    let mut buf = [0u8; 1];
                    let mut n = 0u64;
                    loop {
                        for _ in 0..256 {
                            // SAFETY: one byte into a one-byte buffer.
                            let r = unsafe {
                                libc::pread64(fd, buf.as_mut_ptr() as *mut libc::c_void, 1, 0)
                            };
                            assert_eq!(r, 1);
                        }
                        n += 256;
                        if Instant::now() >= deadline {
                            return n;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    println!("{total} {}", start.elapsed().as_secs_f64());
}

struct Run {
    syscalls: u64,
    secs: f64,
    summary: Option<serde_json::Value>,
}

fn run(threads: usize, secs: f64, file: &Path, record: Option<&[&str]>, out: &Path) -> Run {
    let me = std::env::current_exe().unwrap();
    let flood_args = [
        me.to_str().unwrap().to_owned(),
        "flood".into(),
        threads.to_string(),
        secs.to_string(),
        file.to_str().unwrap().to_owned(),
    ];
    let mut cmd = match record {
        None => {
            let mut c = Command::new(&flood_args[0]);
            c.args(&flood_args[1..]);
            c
        }
        Some(extra) => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_viopath"));
            c.args(["record", "--json", "--probes", "syscall", "-o"])
                .arg(out)
                .args(extra)
                .arg("--")
                .args(&flood_args);
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "run failed: {stderr}\n{stdout}");
    // The flood's own line comes first (it shares stdout with viopath's JSON).
    let line = stdout.lines().next().unwrap_or_default();
    let mut it = line.split_whitespace();
    let syscalls: u64 = it.next().and_then(|v| v.parse().ok()).expect("count");
    let secs: f64 = it.next().and_then(|v| v.parse().ok()).expect("secs");
    let summary = record.map(|_| {
        let json = &stdout[line.len()..];
        serde_json::from_str(json.trim()).expect("viopath --json summary")
    });
    Run {
        syscalls,
        secs,
        summary,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("flood") {
        flood(
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            Path::new(&args[4]),
        );
        return;
    }
    // `cargo bench` passes --bench; a number is the flood length in seconds.
    let secs: f64 = args[1..].iter().find_map(|a| a.parse().ok()).unwrap_or(5.0);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("record_flood: needs root (it loads eBPF programs); skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flood.dat");
    std::fs::write(&file, [7u8; 4096]).unwrap();
    let trace = dir.path().join("flood.trace");

    println!("flood: pread64 of 1 byte in a loop, {secs} s per run; 2 events per syscall");
    println!(
        "| threads | run | syscalls/s | events/s recorded | events lost | trace events − 2 × syscalls (4 expected) | ns per syscall added |"
    );
    println!("|---:|---|---:|---:|---:|---|---:|");
    let mut costs = Vec::new();
    for threads in [1usize, 2] {
        let base = run(threads, secs, &file, None, &trace);
        let base_rate = base.syscalls as f64 / base.secs;
        println!(
            "| {threads} | untraced | {:.0} | – | – | – | – |",
            base_rate
        );
        for (label, extra) in [
            ("viopath record", &[][..]),
            ("viopath record --bpf-stats", &["--bpf-stats"][..]),
        ] {
            let r = run(threads, secs, &file, Some(extra), &trace);
            let s = r.summary.as_ref().unwrap();
            let events_by_probe = &s["events_by_probe"];
            let recorded = events_by_probe["enter_pread64"].as_u64().unwrap_or(0)
                + events_by_probe["exit_pread64"].as_u64().unwrap_or(0);
            let lost = s["lost"].as_u64().unwrap_or(u64::MAX);
            let rate = r.syscalls as f64 / r.secs;
            // Per syscall, over the threads: wall time per syscall per thread.
            let added = (threads as f64 / rate - threads as f64 / base_rate) * 1e9;
            println!(
                "| {threads} | {label} | {:.0} | {:.0} | {lost} | {} | {:.0} |",
                rate,
                recorded as f64 / r.secs,
                recorded as i64 - 2 * r.syscalls as i64,
                added
            );
            if let Some(list) = s["bpf_cost"].as_array() {
                for c in list {
                    costs.push((
                        threads,
                        c["program"].as_str().unwrap_or("?").to_owned(),
                        c["runs"].as_u64().unwrap_or(0),
                        c["mean_ns"].as_f64().unwrap_or(f64::NAN),
                    ));
                }
            }
        }
    }
    println!();
    println!("| threads | eBPF program | runs | mean ns/run |");
    println!("|---:|---|---:|---:|");
    for (t, p, runs, mean) in costs {
        println!("| {t} | {p} | {runs} | {mean:.0} |");
    }
}
