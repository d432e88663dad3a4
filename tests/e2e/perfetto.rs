//! `viopath report --format perfetto` against the Chrome JSON trace event format that
//! Perfetto imports: every event well formed, async slices balanced and nested per
//! (pid, cat, id), complete slices on a thread nested or disjoint, layer children tiling
//! their IO; and the IO slices agree with the per-IO CSV export of the same trace.

use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn viopath(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

#[test]
fn the_timeline_follows_the_trace_event_format() {
    let dir = tempfile::tempdir().unwrap();
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/vm.trace");
    let trace = trace.to_str().unwrap();
    let json = dir.path().join("t.json");
    viopath(&[
        "report",
        trace,
        "--format",
        "perfetto",
        "-o",
        json.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().expect("traceEvents array");

    // Async stacks per (pid, cat, id): (name, ts) of open slices.
    let mut stacks: HashMap<(u64, String, String), Vec<(String, f64)>> = HashMap::new();
    // Complete slices per (pid, tid).
    let mut complete: HashMap<(u64, u64), Vec<(f64, f64)>> = HashMap::new();
    // IO id → (duration, sum of its children).
    let mut ios: HashMap<u64, (f64, f64)> = HashMap::new();
    let mut open_io: HashMap<String, (u64, f64)> = HashMap::new();
    let mut named = 0;
    for e in events {
        let ph = e["ph"].as_str().expect("ph");
        let pid = e["pid"].as_u64().expect("pid");
        assert!(e["name"].is_string(), "{e}");
        if ph == "M" {
            assert!(
                e["args"]["name"].is_string() || e["args"]["sort_index"].is_u64(),
                "{e}"
            );
            named += 1;
            continue;
        }
        let tid = e["tid"].as_u64().expect("tid");
        let ts = e["ts"].as_f64().expect("ts");
        assert!(ts.is_finite() && ts >= 0.0, "{e}");
        let name = e["name"].as_str().unwrap().to_owned();
        match ph {
            "b" | "e" => {
                let cat = e["cat"].as_str().expect("cat").to_owned();
                let id = e["id"].as_str().expect("id").to_owned();
                let st = stacks.entry((pid, cat.clone(), id.clone())).or_default();
                if ph == "b" {
                    if let Some((_, parent)) = st.last() {
                        assert!(ts >= *parent, "child before parent: {e}");
                    }
                    st.push((name.clone(), ts));
                    if cat == "io" && e["args"]["id"].is_u64() {
                        open_io.insert(id, (e["args"]["id"].as_u64().unwrap(), ts));
                    }
                } else {
                    let (open, t0) = st.pop().unwrap_or_else(|| panic!("unmatched end: {e}"));
                    assert_eq!(open, name, "ends out of order: {e}");
                    assert!(ts >= t0, "negative slice: {e}");
                    if cat == "io" {
                        if st.is_empty() {
                            let (io, start) = open_io.remove(&id).unwrap();
                            ios.entry(io).or_default().0 = ts - start;
                        } else {
                            let io = open_io[&id].0;
                            ios.entry(io).or_default().1 += ts - t0;
                        }
                    }
                }
            }
            "X" => {
                let dur = e["dur"].as_f64().expect("dur");
                assert!(dur >= 0.0, "{e}");
                complete.entry((pid, tid)).or_default().push((ts, ts + dur));
            }
            "i" => assert_eq!(e["s"], "t", "{e}"),
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    assert!(named >= 5, "process names");
    for (k, st) in &stacks {
        assert!(st.is_empty(), "unclosed slices on {k:?}: {st:?}");
    }
    for (k, mut v) in complete {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut open: Vec<f64> = Vec::new();
        for (s, e) in v {
            while open.last().is_some_and(|&end| end <= s) {
                open.pop();
            }
            if let Some(&end) = open.last() {
                assert!(e <= end + 1e-6, "slices overlap on thread {k:?}");
            }
            open.push(e);
        }
    }

    // Layer children tile their IO.
    for (io, (dur, children)) in &ios {
        assert!(
            (dur - children).abs() < 0.002,
            "IO {io}: {dur} µs vs layers {children} µs"
        );
    }
    // And the IOs are the export's complete IOs, with its end-to-end times.
    let csv = dir.path().join("ios.csv");
    viopath(&[
        "report",
        trace,
        "--format",
        "csv",
        "-o",
        csv.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (c_id, c_e2e, c_partial) = (col("id"), col("e2e_ns"), col("partial"));
    let mut n = 0;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if !f[c_partial].trim_matches('"').is_empty() {
            continue;
        }
        let id: u64 = f[c_id].parse().unwrap();
        let e2e: f64 = f[c_e2e].parse().unwrap();
        let (dur, _) = ios
            .get(&id)
            .unwrap_or_else(|| panic!("IO {id} not in the timeline"));
        assert!(
            (dur * 1000.0 - e2e).abs() < 2.0,
            "IO {id}: {dur} µs vs {e2e} ns"
        );
        n += 1;
    }
    assert_eq!(n, ios.len());
    assert!(n > 50);
}

/// A truncated trace still gives a well-formed timeline, up to its last good chunk,
/// and says so.
#[test]
fn a_truncated_trace_gives_a_valid_timeline_and_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/vm.trace"))
        .unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &full[..full.len() * 2 / 3]).unwrap();
    let json = dir.path().join("t.json");
    let out = viopath(&[
        "--quiet",
        "report",
        cut.to_str().unwrap(),
        "--format",
        "perfetto",
        "-o",
        json.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged at byte"), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(v["traceEvents"].as_array().unwrap().len() > 100);
}
