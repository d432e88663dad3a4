//! Observer effect: IOPS of 4 KiB random reads through QEMU (qemu-io, qcow2, cache=none,
//! aio=io_uring) untraced, under `viopath record`, and under bpftrace running the same
//! probe set, side by side in one run (each round runs all three, in an order that rotates).
//!
//!     sudo cargo bench --bench observer_effect [-- ROUNDS]
//!
//! Needs root, bpftrace, and the QEMU build with symbols the tests use
//! (`VIOPATH_QEMU_PREFIX`, default /var/cache/viopath/qemu-10.0.2; `tests/qemu/build.sh`
//! makes it). The image is a fully allocated 1 GiB qcow2 (64 KiB clusters) in
//! target/bench-images, on whatever filesystem holds the target directory.
//!
//! IOPS are timed from qemu-io's own output: a marker read prints a line before and
//! after the N quiet reads, and the bench timestamps those lines as they arrive, so the
//! recorder's and bpftrace's start-up and shut-down are not counted.
//!
//! The bpftrace script is generated from the probes `viopath record` attached in the
//! first round: the same QEMU functions as uprobes, the same syscall, io_uring and
//! iomap tracepoints filtered on the traced pid, and the same block events filtered on
//! the same devices, each printing a line to a file. bpftrace has no tp_btf, so its
//! block probes are the plain tracepoints.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const READS: u64 = 3000;
const IMAGE_BYTES: u64 = 1 << 30;

struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn qemu_prefix() -> PathBuf {
    std::env::var_os("VIOPATH_QEMU_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/viopath/qemu-10.0.2"))
}

fn image(dir: &Path) -> PathBuf {
    let img = dir.join("observer-1g.qcow2");
    if img.exists() {
        return img;
    }
    let tmp = dir.join("observer-1g.partial");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg("cluster_size=65536,preallocation=full")
        .arg(&tmp)
        .arg(IMAGE_BYTES.to_string())
        .status()
        .expect("qemu-img");
    assert!(st.success());
    std::fs::rename(&tmp, &img).unwrap();
    img
}

/// Commands for qemu-io's stdin: a marker, N quiet random 4 KiB reads, a marker.
fn commands(seed: u64) -> String {
    let mut rng = Lcg(seed);
    let mut s = String::from("read 0 4k\n");
    for _ in 0..READS {
        s += &format!("read -q {} 4k\n", rng.below(IMAGE_BYTES / 4096) * 4096);
    }
    s += "read 4096 4k\n";
    s
}

/// Run one configuration; IOPS between the two marker lines.
fn run(argv: &[String], cmds: &str) -> (f64, String) {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let cmds = cmds.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(cmds.as_bytes());
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut marks = Vec::new();
    let mut rest = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        if l.contains("bytes at offset") {
            marks.push(Instant::now());
        } else if marks.len() >= 2 {
            rest += &l;
            rest.push('\n');
        }
    }
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && marks.len() == 2,
        "{argv:?} failed ({} markers): {}",
        marks.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    let secs = (marks[1] - marks[0]).as_secs_f64();
    // viopath's JSON summary follows the command's own output.
    let json = rest
        .find("{\n  \"")
        .map_or(String::new(), |i| rest[i..].to_owned());
    (READS as f64 / secs, json)
}

fn kernel_dev(s: &str) -> Option<u64> {
    let (a, b) = s.split_once(':')?;
    Some(a.parse::<u64>().ok()? << 20 | b.parse::<u64>().ok()?)
}

/// A bpftrace script with the probes viopath attached.
fn bpftrace_script(summary: &serde_json::Value, qemu_io: &Path) -> String {
    let devs: Vec<u64> = summary["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| kernel_dev(d.as_str()?))
        .collect();
    let dev_filter = devs
        .iter()
        .map(|d| format!("args->dev == {d}"))
        .collect::<Vec<_>>()
        .join(" || ");
    let mut s = String::new();
    for p in summary["probes"].as_array().unwrap() {
        if p["attached"] != true {
            continue;
        }
        let name = p["name"].as_str().unwrap();
        let probe = match p["attach"].as_str().unwrap() {
            "uprobe" => format!(
                "uprobe:{}:{name} /pid == cpid/ {{ printf(\"{name} %llu %d %llx %llx %llx %llx\\n\", nsecs, tid, arg0, arg1, arg2, arg3); }}",
                qemu_io.display()
            ),
            _ if name.starts_with("block_") => {
                let (what, extra) = match name {
                    "block_split" => ("new_sector", "args->new_sector"),
                    "block_bio_remap" => ("old_sector", "args->old_sector"),
                    "block_rq_complete" | "block_bio_complete" => ("error", "args->error"),
                    _ => ("nr_sector", "args->nr_sector"),
                };
                let filter = if name == "block_bio_remap" {
                    format!(
                        "{dev_filter} || {}",
                        dev_filter.replace("args->dev", "args->old_dev")
                    )
                } else {
                    dev_filter.clone()
                };
                format!(
                    "tracepoint:block:{name} /{filter}/ {{ printf(\"{name} %llu %d %u %llu {what}=%llu\\n\", nsecs, tid, args->dev, args->sector, {extra}); }}"
                )
            }
            _ if name.starts_with("sys_") => format!(
                "tracepoint:syscalls:{name} /pid == cpid/ {{ printf(\"{name} %llu %d\\n\", nsecs, tid); }}"
            ),
            _ if name == "io_uring_submit_req" => format!(
                "tracepoint:io_uring:{name} /pid == cpid/ {{ @rings[args->ctx] = 1; printf(\"{name} %llu %d %llx %llx %llu\\n\", nsecs, tid, args->ctx, args->req, args->user_data); }}"
            ),
            _ if name == "io_uring_complete" => format!(
                "tracepoint:io_uring:{name} /@rings[args->ctx]/ {{ printf(\"{name} %llu %d %llx %llu %d\\n\", nsecs, tid, args->req, args->user_data, args->res); }}"
            ),
            // viopath keeps a direct IO's completion wherever it runs, by the kiocb its
            // begin put in a map; the iomap tracepoints carry no kiocb, so the files the
            // process began direct IO on stand in for it (a map update and a lookup, as
            // viopath's).
            _ if name == "iomap_dio_rw_begin" => format!(
                "tracepoint:iomap:{name} /pid == cpid/ {{ @dio[args->ino] = 1; printf(\"{name} %llu %d %llu\\n\", nsecs, tid, args->ino); }}"
            ),
            _ if name == "iomap_dio_complete" => format!(
                "tracepoint:iomap:{name} /pid == cpid || @dio[args->ino]/ {{ printf(\"{name} %llu %d %llu\\n\", nsecs, tid, args->ino); }}"
            ),
            _ if name.starts_with("iomap_") => format!(
                "tracepoint:iomap:{name} /pid == cpid/ {{ printf(\"{name} %llu %d %llu\\n\", nsecs, tid, args->ino); }}"
            ),
            // Every work item of the machine passes these: the function compare first.
            _ if name.starts_with("workqueue_execute_") => format!(
                "tracepoint:workqueue:{name} /args->function == {}/ {{ printf(\"{name} %llu %d %llx\\n\", nsecs, tid, args->work); }}",
                viopath_recorder::record::kernel_symbol("aio_fsync_work")
                    .expect("viopath attached it, so the symbol is there")
            ),
            // As viopath keeps them: the traced process's, or any thread's on its devices.
            _ if name.starts_with("ext4_sync_file_") => format!(
                "tracepoint:ext4:{name} /pid == cpid || {dev_filter}/ {{ printf(\"{name} %llu %d %llu %u\\n\", nsecs, tid, args->ino, args->dev); }}"
            ),
            _ if name.starts_with("kvm_") => format!(
                "tracepoint:kvm:{name} /pid == cpid/ {{ printf(\"{name} %llu %d\\n\", nsecs, tid); }}"
            ),
            other => panic!("no bpftrace equivalent for {other}"),
        };
        s += &probe;
        s.push('\n');
    }
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("observer_effect: needs root (it loads eBPF programs); skipped");
        return;
    }
    let qemu_io = qemu_prefix().join("bin/qemu-io");
    if !qemu_io.exists() {
        eprintln!(
            "observer_effect: no {} (run tests/qemu/build.sh); skipped",
            qemu_io.display()
        );
        return;
    }
    if Command::new("bpftrace").arg("--version").output().is_err() {
        eprintln!("observer_effect: bpftrace is not installed (apt-get install bpftrace); skipped");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-images");
    std::fs::create_dir_all(&dir).unwrap();
    let img = image(&dir);
    let work = tempfile::tempdir_in(&dir).unwrap();
    let trace = work.path().join("run.trace");
    let bt_out = work.path().join("bpftrace.out");
    let bt_script = work.path().join("probes.bt");

    let qemu = vec![
        qemu_io.display().to_string(),
        "-f".into(),
        "qcow2".into(),
        "-t".into(),
        "none".into(),
        "-i".into(),
        "io_uring".into(),
        img.display().to_string(),
    ];
    let viopath = |extra: &[&str]| {
        let mut v = vec![
            env!("CARGO_BIN_EXE_viopath").to_owned(),
            "record".into(),
            "--json".into(),
            "-o".into(),
            trace.display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("--".into());
        v.extend(qemu.iter().cloned());
        v
    };
    let bpftrace = vec![
        "bpftrace".to_owned(),
        "-o".into(),
        bt_out.display().to_string(),
        "-c".into(),
        qemu.join(" "),
        bt_script.display().to_string(),
    ];

    // Read the whole image once first. Each round's three runs read the same offsets, so
    // whichever ran first paid for blocks not yet cached below this VM (its virtual disk
    // is cached by the host): after the host's cache had lost the image, untraced runs
    // (first in each round) measured ~1.7K IOPS against ~30K for the traced runs after
    // them.
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&img).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf).unwrap() > 0 {}
    }

    // Warm-up round under viopath: it also says which probes to give bpftrace.
    let (_, json) = run(&viopath(&[]), &commands(1));
    let summary: serde_json::Value = serde_json::from_str(&json).expect("summary");
    std::fs::write(&bt_script, bpftrace_script(&summary, &qemu_io)).unwrap();
    let attached = summary["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["attached"] == true)
        .count();

    let mut iops: [Vec<f64>; 3] = Default::default();
    let mut events_per_io = (0.0, 0.0);
    for round in 0..rounds {
        let cmds = commands(100 + round as u64);
        // The order rotates from round to round so that whatever the first run of a round
        // pays for (blocks the host's cache dropped since, a cold CPU) falls on each
        // configuration equally often.
        for which in (0..3).map(|i| (round + i) % 3) {
            match which {
                0 => iops[0].push(run(&qemu, &cmds).0),
                1 => {
                    let (v, json) = run(&viopath(&[]), &cmds);
                    iops[1].push(v);
                    let s: serde_json::Value = serde_json::from_str(&json).unwrap();
                    assert_eq!(s["lost"], 0, "viopath lost events");
                    events_per_io.0 = s["events"].as_f64().unwrap() / (READS + 2) as f64;
                }
                _ => {
                    iops[2].push(run(&bpftrace, &cmds).0);
                    let lines = std::fs::read_to_string(&bt_out)
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| l.contains(' '))
                        .count();
                    events_per_io.1 = lines as f64 / (READS + 2) as f64;
                }
            }
        }
        eprintln!(
            "round {round}: untraced {:.0}, viopath {:.0}, bpftrace {:.0} IOPS",
            iops[0][round], iops[1][round], iops[2][round]
        );
    }
    let m: Vec<f64> = iops.iter_mut().map(|v| median(v)).collect();

    // Per-program cost in this workload, in a separate run (statistics add their own cost).
    let (_, json) = run(&viopath(&["--bpf-stats"]), &commands(7));
    let s: serde_json::Value = serde_json::from_str(&json).unwrap();

    println!(
        "4 KiB random reads, qemu-io qcow2 cache=none aio=io_uring, {READS} reads per run, {rounds} rounds, {attached} probes"
    );
    println!();
    println!("| run | median IOPS | ratio to untraced | slowdown | events per IO |");
    println!("|---|---:|---:|---:|---:|");
    println!("| untraced | {:.0} | 1.000 | – | – |", m[0]);
    println!(
        "| `viopath record` | {:.0} | {:.3} | {:.1}% | {:.1} |",
        m[1],
        m[1] / m[0],
        (1.0 - m[1] / m[0]) * 100.0,
        events_per_io.0
    );
    println!(
        "| bpftrace, same probes | {:.0} | {:.3} | {:.1}% | {:.1} |",
        m[2],
        m[2] / m[0],
        (1.0 - m[2] / m[0]) * 100.0,
        events_per_io.1
    );
    println!();
    println!("| eBPF program (viopath, --bpf-stats run) | runs | mean ns/run |");
    println!("|---|---:|---:|");
    let (mut runs, mut ns) = (0u64, 0u64);
    for c in s["bpf_cost"].as_array().unwrap() {
        if c["program"] != "qemu_entry" {
            runs += c["runs"].as_u64().unwrap();
            ns += c["run_time_ns"].as_u64().unwrap();
        }
        println!(
            "| {} | {} | {:.0} |",
            c["program"].as_str().unwrap(),
            c["runs"],
            c["mean_ns"].as_f64().unwrap()
        );
    }
    println!(
        "| **all kernel (tracepoint and tp_btf) programs** | {runs} | **{:.0}** |",
        ns as f64 / runs.max(1) as f64
    );
}
