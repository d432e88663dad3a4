//! The `viopath` binary end to end: `map` output against qemu-img, debugfs and filefrag;
//! bad input gives a clear error and exit code 1, never a panic.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn viopath(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(args)
        .output()
        .expect("viopath runs")
}

fn ok(args: &[&str]) -> String {
    let o = viopath(args);
    assert!(
        o.status.success(),
        "viopath {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The demo's guest disk, copied where FIEMAP works.
fn demo_images(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo");
    for f in ["base.qcow2", "overlay.qcow2"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir.join("overlay.qcow2")
}

#[test]
fn map_json_is_qemu_img_map_plus_host_sectors() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = demo_images(dir.path());
    let ours: Vec<Value> =
        serde_json::from_str(&ok(&["map", "--json", img.to_str().unwrap()])).unwrap();
    let theirs = qemu_img_map(&img);
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        for k in [
            "start",
            "length",
            "depth",
            "present",
            "zero",
            "data",
            "compressed",
            "offset",
        ] {
            assert_eq!(o.get(k), t.get(k), "field {k} of {o}");
        }
        if let Some(off) = t["offset"].as_u64() {
            // Host sectors: the first segment's filesystem device sector matches filefrag.
            let file = PathBuf::from(o["filename"].as_str().unwrap());
            let seg = &o["host"][0];
            assert_eq!(seg["offset"].as_u64(), Some(off));
            let hop = &seg["hops"][1];
            let sector = hop["sector"].as_u64().unwrap();
            let frag = run("filefrag", &["-s", "-v", "-b512", file.to_str().unwrap()]);
            let found = frag.lines().any(|l| {
                let f: Vec<&str> = l.split(':').map(str::trim).collect();
                if f.len() < 4 || f[0].parse::<u32>().is_err() {
                    return false;
                }
                let lo: u64 = f[1].split("..").next().unwrap().trim().parse().unwrap();
                let po: u64 = f[2].split("..").next().unwrap().trim().parse().unwrap();
                let len: u64 = f[3].parse().unwrap();
                let s = off / 512;
                lo <= s && s < lo + len && po + (s - lo) == sector
            });
            assert!(
                found,
                "sector {sector} for {}@{off} not in filefrag:\n{frag}",
                file.display()
            );
        }
    }
    // The table form names every extent kind it prints.
    let table = ok(&["map", img.to_str().unwrap()]);
    assert!(
        table.contains("unallocated") && table.contains("data") && table.contains("base.qcow2"),
        "{table}"
    );
    assert!(crate::common::widest_line(&table) <= 120, "{table}");
}

#[test]
fn guest_path_chain_agrees_with_debugfs_and_qemu_img() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = demo_images(dir.path());
    // Oracle: the raw guest disk, its partition and debugfs on it.
    let raw = dir.path().join("disk.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let fs = dir.path().join("fs.raw");
    sh(&format!(
        "dd if={} of={} bs=512 skip=2048 status=none",
        raw.display(),
        fs.display()
    ));
    let qmap = qemu_img_map(&img);
    for off in [0u64, 4096, 300_000] {
        let pblk: u64 = run(
            "debugfs",
            &[
                "-R",
                &format!("bmap /var/lib/db/table {}", off / 4096),
                fs.to_str().unwrap(),
            ],
        )
        .trim()
        .parse()
        .unwrap();
        let t: Value = serde_json::from_str(&ok(&[
            "map",
            img.to_str().unwrap(),
            "--json",
            "--guest-path",
            "/var/lib/db/table",
            "--offset",
            &off.to_string(),
            "--length",
            "512",
        ]))
        .unwrap();
        let guest = 2048 * 512 + pblk * 4096 + off % 4096;
        assert_eq!(t["guest_file"]["fs_block"].as_u64(), Some(pblk));
        assert_eq!(t["guest_offset"].as_u64(), Some(guest));
        assert_eq!(t["guest_lba"].as_u64(), Some(guest / 512));
        let e = qmap
            .iter()
            .find(|e| {
                e["start"].as_u64().unwrap() <= guest
                    && guest < e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap()
            })
            .unwrap();
        let p = &t["pieces"][0];
        assert_eq!(p["depth"], e["depth"]);
        let want = e["offset"].as_u64().unwrap() + guest - e["start"].as_u64().unwrap();
        assert_eq!(p["host_offset"].as_u64(), Some(want));
        // The bytes at that host offset are the file's bytes.
        let file = PathBuf::from(p["file"].as_str().unwrap());
        let mut at_host = vec![0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&file).unwrap(),
            &mut at_host,
            want,
        )
        .unwrap();
        let mut at_guest = vec![0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&raw).unwrap(),
            &mut at_guest,
            guest,
        )
        .unwrap();
        assert!(at_host == at_guest);
        // And back: the reverse map of that host offset gives the same guest offset and file.
        let file_index = if file.ends_with("overlay.qcow2") {
            "0"
        } else {
            "1"
        };
        let r: Value = serde_json::from_str(&ok(&[
            "map",
            img.to_str().unwrap(),
            "--json",
            "--host-offset",
            &want.to_string(),
            "--file",
            file_index,
        ]))
        .unwrap();
        assert_eq!(r["guest_offset"].as_u64(), Some(guest));
        assert_eq!(r["guest_owner"]["path"], "/var/lib/db/table");
        assert_eq!(r["guest_owner"]["file_offset"].as_u64(), Some(off));
    }
    // The guest-offset form gives the same chain.
    let t = ok(&["map", img.to_str().unwrap(), "--guest-offset", "0x100000"]);
    assert!(t.contains("guest disk") && t.contains("LBA 2048"), "{t}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.qcow2");
    let img = create(dir.path(), "good.qcow2", "", "64M");
    let mut b = std::fs::read(&img).unwrap();
    b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(&bad, &b).unwrap();
    for (args, want) in [
        (vec!["map", bad.to_str().unwrap()], "l1_size"),
        (vec!["map", "/nonexistent.qcow2"], "No such file"),
        (
            vec!["map", img.to_str().unwrap(), "--guest-offset", "1T"],
            "outside",
        ),
        (
            vec!["map", img.to_str().unwrap(), "--guest-path", "/etc/passwd"],
            "not in any guest ext filesystem",
        ),
        (
            vec![
                "map",
                img.to_str().unwrap(),
                "--host-offset",
                "0",
                "--file",
                "7",
            ],
            "the chain has 1 files",
        ),
        (
            vec!["map", img.to_str().unwrap(), "--guest-offset", "12q"],
            "unknown unit",
        ),
    ] {
        let o = viopath(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
    }
}

#[test]
fn demo_replays_the_shipped_trace_and_names_guest_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&["demo", "--replay", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.contains("replaying a trace"), "{out}");
    // The report of a real VM run: virtio requests by type, and guest files by name
    // (the demo guest reads /var/lib/db/table with O_DIRECT).
    assert!(out.contains("│ read "), "{out}");
    assert!(out.contains("│ flush "), "{out}");
    assert!(out.contains("/var/lib/db/table @"), "{out}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/vm.trace");
    assert_eq!(
        std::fs::read(dir.path().join("demo.trace")).unwrap(),
        std::fs::read(src).unwrap()
    );
}

/// On a host with root and the distribution's QEMU but no build of ours and no test
/// guest, the demo records live with the distribution's qemu-io (not a replay), says
/// which layers its stripped binary cannot give and how to get them, and `--dir` holds
/// the images it promises. The IO count is the workload's own: 16 + 7 + 8 requests.
#[test]
fn demo_records_live_with_the_distributions_qemu() {
    if !is_root() {
        crate::common::skipped("needs root (BPF)");
        return;
    }
    let Some(distro) = ["/usr/bin/qemu-io", "/usr/local/bin/qemu-io"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
    else {
        crate::common::skipped("no distribution qemu-io (apt install qemu-utils; CI has it)");
        return;
    };
    let _one = crate::common::one_recorder();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["demo", "--dir", dir.path().to_str().unwrap()])
        .env_remove("VIOPATH_QEMU_PREFIX")
        .env_remove("VIOPATH_GUEST_DIR")
        .env("VIOPATH_CACHE", empty.path())
        .env("PATH", distro.parent().unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "Recorded a live run of qemu-io ({})",
            distro.display()
        )),
        "{text}"
    );
    assert!(!text.contains("replaying"), "{text}");
    // Every one of the workload's 31 requests (16 + 7 + 8, as the guest's dd calls) is a
    // row naming the file; without qcow2's functions an allocating write's data can go
    // unjoined (its row partial), and QEMU's reads of the backing file's header at open
    // stay rows of their own (no request), so only these are counted.
    let csv = demo_export(dir.path());
    let text_csv = std::fs::read_to_string(&csv).unwrap();
    let table: Vec<&str> = text_csv
        .lines()
        .filter(|l| l.contains(",/var/lib/db/table,"))
        .collect();
    assert_eq!(table.len(), 31, "{text_csv}");
    let head: Vec<&str> = text_csv.lines().next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (op, partial) = (col("op"), col("partial"));
    for l in &table {
        let f: Vec<&str> = l.split(',').collect();
        // Reads allocate nothing: every one is complete.
        assert!(
            f[op] == "write" || f[partial].trim_matches('"').is_empty(),
            "{l}"
        );
    }
    // What the stripped binary lacks (its .symtab: `readelf -S` is the oracle), and how
    // to get it.
    let sections = crate::common::run("readelf", &["-S", distro.to_str().unwrap()]);
    assert!(!sections.contains(".symtab"), "{distro:?} has symbols");
    let said = text.replace("\n  ", " ");
    assert!(
        said.contains("has no symbols for some of its functions"),
        "{text}"
    );
    assert!(said.contains("qcow2_co_preadv_part"), "{text}");
    assert!(
        said.contains("debug symbols") && said.contains("tests/qemu/build.sh"),
        "{text}"
    );
    for f in ["base.qcow2", "overlay.qcow2", "demo.trace"] {
        assert!(dir.path().join(f).is_file(), "no {f} in --dir");
    }
}

/// The demo trace in `dir` exported as CSV (`dir/ios.csv`): its path.
fn demo_export(dir: &Path) -> PathBuf {
    let csv = dir.join("ios.csv");
    ok(&[
        "report",
        dir.join("demo.trace").to_str().unwrap(),
        "--format",
        "csv",
        "-o",
        csv.to_str().unwrap(),
    ]);
    csv
}

/// `--replay --dir` still writes the images the demo's text promises.
#[test]
fn demo_replay_writes_its_images_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&["demo", "--replay", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.contains("The trace and images stay in"), "{out}");
    for f in ["base.qcow2", "overlay.qcow2", "demo.trace"] {
        assert!(dir.path().join(f).is_file(), "no {f} in --dir");
    }
    // The images are the demo's disk: qemu-img reads the chain.
    let info = crate::common::run(
        "qemu-img",
        &[
            "info",
            "--backing-chain",
            dir.path().join("overlay.qcow2").to_str().unwrap(),
        ],
    );
    assert!(info.contains("base.qcow2"), "{info}");
}

#[test]
fn demo_records_a_live_vm_where_it_can() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let guest = std::fs::read_dir("/var/cache/viopath")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("guest-"))
        })
        .unwrap_or(false);
    if !root || !guest {
        crate::common::skipped("needs root and the guest from tests/vm/guest.sh (CI has both)");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let out = ok(&["demo", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.contains("Recorded a live run"), "{out}");
    let trace = dir.path().join("demo.trace");
    assert!(trace.is_file());
    // Guest files are named: looked for in every IO, not only the slowest shown (on a
    // busy host flushes and journal writes can take all of those places).
    let csv = ok(&[
        "report",
        trace.to_str().unwrap(),
        "--format",
        "csv",
        "-o",
        "-",
    ]);
    assert!(csv.contains("/var/lib/db/table,"), "{out}\n{csv}");
}

/// As root with qemu-io but no VM (forced by VIOPATH_DEMO_NO_VM), the demo records
/// qemu-io doing the guest's IO on the same image. The file offsets it names are
/// checked against debugfs's block map of the guest filesystem, read back through
/// qemu-img (independent of viopath's qcow2 and ext4 code).
#[test]
fn demo_records_qemu_io_when_there_is_no_vm() {
    if !is_root() {
        crate::common::skipped("needs root (BPF)");
        return;
    }
    let Some(qemu_io) = qemu_bin("qemu-io") else {
        crate::common::skipped("no QEMU with symbols; run tests/qemu/build.sh (CI does)");
        return;
    };
    let prefix = qemu_io.parent().unwrap().parent().unwrap();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["demo", "--dir", dir.path().to_str().unwrap()])
        .env("VIOPATH_DEMO_NO_VM", "1")
        .env("VIOPATH_QEMU_PREFIX", prefix)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Recorded a live run of qemu-io"), "{text}");
    // 16 + 7 + 8 requests, as the guest's dd calls (no extent boundary splits them).
    assert!(text.contains("│ 31 (31 complete, 0 partial)"), "{text}");

    let csv = demo_export(dir.path());
    let raw = dir.path().join("disk.raw");
    let part = dir.path().join("p1.img");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            dir.path().join("overlay.qcow2").to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    // The demo disk's partition 1 starts at sector 2048 (fixtures/demo/make.sh).
    sh(&format!(
        "dd if={} of={} bs=1M skip=1 status=none",
        raw.display(),
        part.display()
    ));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (c_off, c_file, c_foff) = (col("offset"), col("guest_file"), col("guest_file_offset"));
    let mut checked = 0;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f[c_file], "/var/lib/db/table", "{l}");
        let off: u64 = f[c_off].parse().unwrap();
        let foff: u64 = f[c_foff].parse().unwrap();
        let bmap = run(
            "debugfs",
            &[
                "-R",
                &format!("bmap /var/lib/db/table {}", foff / 4096),
                part.to_str().unwrap(),
            ],
        );
        let pblock: u64 = bmap.trim().parse().unwrap();
        assert_eq!(off, (1 << 20) + pblock * 4096 + foff % 4096, "{l}");
        checked += 1;
    }
    assert_eq!(checked, 31);
}

/// `--quiet`: no notes (or progress bars) on stderr, the same output on stdout.
#[test]
fn quiet_silences_notes_but_not_output() {
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/vm.trace");
    let run = |quiet: bool| {
        let mut args = vec!["report", trace.to_str().unwrap(), "--format", "csv"];
        if quiet {
            args.insert(0, "--quiet");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success());
        out
    };
    let (loud, quiet) = (run(false), run(true));
    assert!(String::from_utf8_lossy(&loud.stderr).contains("exported"));
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    assert_eq!(loud.stdout, quiet.stdout);
}

/// Bad paths give one message per cause, naming the path once: a directory given as a
/// trace, a file that is missing, a text file where a trace or export was expected.
#[test]
fn bad_paths_are_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello\n").unwrap();
    let (d, t) = (dir.path().to_str().unwrap(), text.to_str().unwrap());
    for (args, want) in [
        (
            vec!["report", d],
            format!("{d} is a directory, not a trace file"),
        ),
        (
            vec!["report", "/nonexistent.trace"],
            "cannot read /nonexistent.trace: No such file or directory (os error 2)".into(),
        ),
        (
            vec!["map", "/nonexistent.qcow2"],
            "cannot read /nonexistent.qcow2: No such file or directory (os error 2)".into(),
        ),
        (
            vec!["compare", t, "--vs", t],
            format!("{t}: not a viopath trace, nor a per-IO .csv or .parquet export"),
        ),
    ] {
        let o = viopath(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: expected '{want}' in: {err}");
        // Once: no cause or path repeated.
        assert_eq!(err.matches(args[1]).count(), 1, "{args:?}: {err}");
        assert_eq!(
            err.matches("(os error").count(),
            err.contains("os error") as usize,
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

/// Options that cannot mean anything are refused with why, before any work: durations
/// that overflow or are shorter than attaching takes, a bootstrap of fewer than 100
/// resamples, a threshold that is not a number.
#[test]
fn impossible_options_are_refused() {
    for (args, want) in [
        (
            vec![
                "record",
                "--duration",
                "99999999999999999999999",
                "--pid",
                "1",
            ],
            "too long",
        ),
        (
            vec!["record", "--duration", "1ns", "--pid", "1"],
            "too short",
        ),
        (
            vec!["record", "--duration", "1d", "--pid", "1"],
            "unknown unit",
        ),
        (
            vec!["record", "--duration", "0.001ms", "--pid", "1"],
            "too short",
        ),
        (
            vec!["compare", "a.trace", "--vs", "b.trace", "--resamples", "1"],
            "100",
        ),
        (
            vec!["compare", "a.trace", "--vs", "b.trace", "--resamples", "0"],
            "100",
        ),
        (
            vec![
                "compare",
                "a.trace",
                "--vs",
                "b.trace",
                "--fail-on",
                "p99:+nan%",
            ],
            "p99:+nan%",
        ),
        (
            vec![
                "compare",
                "a.trace",
                "--vs",
                "b.trace",
                "--fail-on",
                "p99:+inf%",
            ],
            "p99:+inf%",
        ),
    ] {
        let o = viopath(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
    }
}

/// `--help` wraps to fit a terminal (clap's wrap_help): no line of any command's help
/// is wider than 120 columns.
#[test]
fn help_fits_a_terminal() {
    for cmd in ["map", "record", "report", "compare", "demo"] {
        let help = ok(&[cmd, "--help"]);
        for l in help.lines() {
            assert!(
                l.chars().count() <= 120,
                "viopath {cmd} --help: {} columns: {l}",
                l.chars().count()
            );
        }
    }
}
