//! `viopath compare` on inputs whose answer is known independently: per-IO exports
//! written here from a seeded generator (the expected change is computed from the
//! samples by sorting, not by viopath), and a trace against its own export.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

use viopath_reporter::layers::LAYER_NAMES as LAYERS;

/// A per-IO export with `n` reads: qemu 20–40 µs, device 50–100 µs times `device_scale`.
/// Returns the device times.
fn write_export(path: &Path, n: usize, seed: u64, device_scale: f64) -> Vec<u64> {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) % 1000
    };
    let mut out = String::from("id,op,e2e_ns,partial");
    for l in LAYERS {
        out += &format!(",{l}_ns");
    }
    out.push('\n');
    let mut device = Vec::new();
    for i in 0..n {
        let q = 20_000 + next() * 20;
        let d = ((50_000 + next() * 50) as f64 * device_scale) as u64;
        device.push(d);
        out += &format!("{i},read,{},", q + d);
        for l in LAYERS {
            out.push(',');
            match l {
                "qemu" => out += &q.to_string(),
                "device" => out += &d.to_string(),
                _ => {}
            }
        }
        out.push('\n');
    }
    // One partial IO: compare must leave it out.
    out += &format!("{n},read,999999999,no completion seen,");
    out += &",".repeat(LAYERS.len() - 1);
    out.push('\n');
    std::fs::write(path, out).unwrap();
    device
}

fn viopath(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(args)
        .output()
        .unwrap()
}

fn nearest_rank(v: &[u64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[((q * s.len() as f64).ceil() as usize).max(1) - 1] as f64
}

fn find<'a>(j: &'a Value, layer: &str, metric: &str) -> &'a Value {
    j["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["layer"] == layer && c["metric"] == metric)
        .unwrap_or_else(|| panic!("no {layer} {metric} in {j}"))
}

#[test]
fn a_slower_device_is_found_and_fails_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.csv"),
        dir.path().join("b.csv"),
        dir.path().join("c.csv"),
    );
    let dev_a = write_export(&a, 3000, 1, 1.0);
    write_export(&b, 3000, 2, 1.0);
    let dev_c = write_export(&c, 3000, 3, 1.3);
    let (a, b, c) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
    );

    // Two base runs against one slower run.
    let out = viopath(&[
        "compare",
        a,
        b,
        "--vs",
        c,
        "--format",
        "json",
        "--fail-on",
        "device.p50:+10%",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["base"].as_array().unwrap().len(), 2);
    assert_eq!(j["base"][0]["ios"], 3000, "the partial IO is left out");
    let p50 = find(&j, "device", "p50");
    assert_eq!(p50["verdict"], "slower");
    let truth = nearest_rank(&dev_c, 0.5) / nearest_rank(&dev_a, 0.5) - 1.0;
    let d = p50["delta"].as_f64().unwrap();
    assert!((d - truth).abs() < 0.03, "delta {d}, truth {truth}");
    let mean = find(&j, "device", "mean");
    let m = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64;
    let (lo, hi) = (
        mean["ci"][0].as_f64().unwrap(),
        mean["ci"][1].as_f64().unwrap(),
    );
    assert!(lo < 0.3 && 0.3 < hi, "{mean}");
    assert!((mean["new_ns"].as_f64().unwrap() - m(&dev_c)).abs() < 1.0);
    // QEMU's time did not change.
    assert_eq!(find(&j, "qemu", "p50")["verdict"], "no_change");
    assert!(!j["broken"].as_array().unwrap().is_empty());

    // The table says the same, and names the broken rule.
    let out = viopath(&["compare", a, "--vs", c, "--fail-on", "device.p50:+10%"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("slower"), "{text}");
    assert!(text.contains("FAIL: read device p50"), "{text}");
    assert!(text.contains("bootstrap"), "{text}");
    assert!(crate::common::widest_line(&text) <= 120, "{text}");

    // Same distribution on both sides: nothing beyond noise, exit 0.
    let out = viopath(&[
        "compare",
        a,
        "--vs",
        b,
        "--fail-on",
        "p50:+1%",
        "--format",
        "markdown",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No change beyond noise"), "{text}");
    // It counts the statistics actually tested, as the line about chance does (those
    // with too few IOs on a side are not tested, and said apart).
    let tested = text
        .lines()
        .find_map(|l| {
            l.split_once(" statistics tested: ")
                .map(|(n, _)| n.to_owned())
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        text.contains(&format!(
            "No change beyond noise in the {tested} statistics tested"
        )),
        "{text}"
    );
}

#[test]
fn a_trace_and_its_own_export_compare_equal() {
    let dir = tempfile::tempdir().unwrap();
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/vm.trace");
    let fleet = dir.path().join("fleet");
    std::fs::create_dir(&fleet).unwrap();
    let out = viopath(&[
        "report",
        trace.to_str().unwrap(),
        "--format",
        "parquet",
        "-o",
        fleet.to_str().unwrap(),
        "--run",
        "r1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = viopath(&[
        "compare",
        trace.to_str().unwrap(),
        "--vs",
        fleet.to_str().unwrap(),
        "--format",
        "json",
        "--fail-on",
        "p99:+1%",
    ]);
    assert!(out.status.success(), "{out:?}");
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["base"][0]["ios"], j["new"][0]["ios"]);
    for c in j["changes"].as_array().unwrap() {
        assert_eq!(c["delta"], 0.0, "{c}");
        assert_ne!(c["verdict"], "slower");
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.csv");
    std::fs::write(&junk, "a,b\n1,2\n").unwrap();
    let j = junk.to_str().unwrap();
    for (args, says) in [
        (vec!["compare", j, "--vs", j], "no column op"),
        (vec!["compare", "/nonexistent", "--vs", j], "cannot read"),
        (
            vec!["compare", j, "--vs", j, "--fail-on", "p98:+1%"],
            "bad threshold",
        ),
    ] {
        let out = viopath(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
