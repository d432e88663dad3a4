//! `viopath report` as a user runs it, on a synthetic trace whose answers are known
//! (`viopath_reporter::synth`): every output format, grouping, and clear errors.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use viopath_reporter::layers::split;
use viopath_reporter::synth::{SynthConfig, Truth, generate};

fn viopath(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(args)
        .output()
        .unwrap()
}

fn make(dir: &Path) -> (String, Vec<Truth>) {
    let p = dir.join("s.trace");
    let mut truths = Vec::new();
    let cfg = SynthConfig {
        ios: 3000,
        ..SynthConfig::default()
    };
    let f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    generate(&cfg, f, |t| truths.push(t)).unwrap();
    (p.display().to_string(), truths)
}

#[test]
fn csv_export_has_one_row_per_io_with_the_true_times() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, truths) = make(dir.path());
    let csv = dir.path().join("ios.csv");
    let out = viopath(&[
        "report",
        &trace,
        "--format",
        "csv",
        "-o",
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let (off, e2e, dev) = (col("offset"), col("e2e_ns"), col("device_ns"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), truths.len());
    let want: HashMap<u64, &Truth> = truths.iter().map(|t| (t.offset, t)).collect();
    for r in &rows {
        let t = want[&r[off].parse::<u64>().unwrap()];
        let (layers, total) = split(&t.b);
        assert_eq!(r[e2e].parse::<u64>().unwrap(), total);
        assert_eq!(r[dev].parse::<u64>().unwrap(), layers[4].unwrap());
    }
    // Boundary columns are there too.
    for b in ["t_notify", "t_dispatched", "t_interrupt"] {
        col(b);
    }
}

#[test]
fn table_json_parquet_and_grouping() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, truths) = make(dir.path());
    let out = viopath(&["report", &trace, "--by", "op,size", "--top", "3"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "{} ({} complete, 0 partial)",
            truths.len(),
            truths.len()
        )),
        "{text}"
    );
    assert!(
        text.contains("Latency by layer") && text.contains("Slowest 3 IOs"),
        "{text}"
    );
    assert!(text.contains("│ 4K "), "size groups: {text}");
    // One unit style: totals in KiB/MiB/GiB with a decimal, as every other size.
    let bytes_row = text
        .lines()
        .find(|l| l.starts_with("│ bytes "))
        .unwrap_or_else(|| panic!("{text}"));
    let value = bytes_row.split('│').nth(2).unwrap().trim();
    assert!(
        value.ends_with(" B") && !value.contains('.')
            || [" KiB", " MiB", " GiB"].iter().any(|u| value.ends_with(u)) && value.contains('.'),
        "{bytes_row}"
    );
    // The group columns come in the order asked for.
    let header = |text: &str| {
        text.lines()
            .find(|l| l.contains("│ layer ") && l.contains("│ count"))
            .map(|l| {
                l.split('│')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .take(3)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert_eq!(header(&text), ["op", "size", "layer"], "{text}");
    let out = viopath(&["report", &trace, "--by", "size,device,op"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(header(&text)[..3], ["size", "device", "op"], "{text}");

    let out = viopath(&["report", &trace, "--format", "json", "--by", "device"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["ios"], truths.len() as u64);
    assert!(
        v["latency"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["group"]["device"] == "sda"),
        "every synthetic IO ends on sda"
    );

    let pq = dir.path().join("ios.parquet");
    let out = viopath(&[
        "report",
        &trace,
        "--format",
        "parquet",
        "-o",
        pq.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&pq).unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    assert!(bytes.len() > 10_000);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.trace");
    std::fs::write(&junk, b"this is not a trace").unwrap();
    let out = viopath(&["report", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a viopath trace"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = viopath(&["report", "/nonexistent/x.trace"]);
    assert_eq!(out.status.code(), Some(1));
    let (trace, _) = make(dir.path());
    let out = viopath(&["report", &trace, "--format", "parquet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-o PATH"));
}

#[test]
fn html_pages_say_what_is_missing_and_refuse_conflicting_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, _) = make(dir.path());
    // Half a trace: the page is written, from what could be read, and says so.
    let bytes = std::fs::read(&trace).unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let page = dir.path().join("cut.html");
    let out = viopath(&[
        "report",
        cut.to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("class=\"warn\">The recording was interrupted"),
        "no warning in the page"
    );
    assert!(html.contains("svg class=\"chart\""));
    // Self-contained: nothing to fetch.
    for bad in [
        "<script", "src=", "href=", "url(", "@import", "http://", "https://",
    ] {
        assert!(!html.contains(bad), "the page contains {bad}");
    }

    let out = viopath(&[
        "report",
        &trace,
        "--format",
        "perfetto",
        "--html",
        page.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `viopath report` once for each"));

    // An unwritable destination is an error, not a panic.
    let out = viopath(&["report", &trace, "--html", "/nonexistent/dir/r.html"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writing /nonexistent/dir/r.html"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// docs/walkthrough.md says `viopath report fixtures/demo/vm.trace --top 5` prints
/// exactly what it shows: every table of that output is in it, verbatim. Its numbers are
/// checked against the trace (and qemu-img, debugfs, the guest) by the tests that
/// exercise the join, not here; this keeps the document in step with the program.
#[test]
fn the_walkthrough_shows_the_reports_own_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_viopath"))
        .current_dir(root)
        .args(["report", "fixtures/demo/vm.trace", "--top", "5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/walkthrough.md")).unwrap();
    let blocks: Vec<&str> = out
        .split("\n\n")
        .map(str::trim_end)
        .filter(|b| !b.is_empty())
        .collect();
    assert!(blocks.len() >= 4, "{out}");
    for b in blocks {
        assert!(
            doc.contains(&format!("```\n{b}\n```")),
            "docs/walkthrough.md lacks this part of the report:\n{b}"
        );
    }
}

/// A trace whose header has a field of the wrong type and a probe entry of the wrong
/// shape (a foreign or damaged writer): the report says how much it left out, in the
/// table and in the JSON, and reports the rest.
#[test]
fn malformed_chunk_entries_are_reported_as_skipped() {
    use serde_json::json;
    use viopath_probes::trace::TraceWriter;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.trace");
    let w = TraceWriter::create(
        &p,
        &json!({"format": 1, "abi": 1, "host": 7, "probes": [{"name": 3}]}),
    )
    .unwrap();
    w.finish(&json!({})).unwrap();
    let trace = p.to_str().unwrap();
    let out = viopath(&["report", "-q", trace]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    // The two entries written wrong above.
    assert!(
        table.contains("2 malformed entries of its JSON chunks"),
        "{table}"
    );
    let out = viopath(&["report", "-q", "--format", "json", trace]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["trace_entries_skipped"], 2, "{v}");
}

/// A damaged trace (cut short: its end and part of its events gone) is said to be
/// damaged on stderr by every output without a summary table of its own: the CSV and
/// Parquet exports, the JSON, and `compare`.
#[test]
fn exports_and_compare_warn_of_a_damaged_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, _) = make(dir.path());
    let bytes = std::fs::read(&trace).unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let cut = cut.to_str().unwrap();
    let csv = dir.path().join("x.csv");
    for args in [
        vec![
            "report",
            cut,
            "--format",
            "csv",
            "-o",
            csv.to_str().unwrap(),
        ],
        vec!["report", cut, "--format", "json"],
        vec!["compare", cut, "--vs", &trace],
    ] {
        let o = viopath(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("viopath: warning: {cut}: damaged at byte"))
                && err.contains("did not end properly"),
            "{args:?}: {err}"
        );
    }
    // An intact trace: no warning.
    let o = viopath(&["report", &trace, "--format", "json"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"));
}

/// Every table fits 120 columns by default, whatever the groups, the number of slowest
/// IOs or the partial ones; the slowest IOs' layer times, in a table of their own, are
/// the synthetic trace's true ones.
#[test]
fn the_report_fits_a_terminal_and_its_slowest_ios_keep_their_layers() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lossy.trace");
    let mut truths = Vec::new();
    let cfg = SynthConfig {
        ios: 2000,
        lose_every: 7,
        ..SynthConfig::default()
    };
    let f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    generate(&cfg, f, |t| truths.push(t)).unwrap();
    let trace = p.display().to_string();
    let widest = crate::common::widest_line;
    for args in [
        vec!["report", &trace],
        vec!["report", &trace, "--top", "40", "--by", "op,size,device"],
        vec!["report", &trace, "--by", "device,size,op", "--top", "0"],
    ] {
        let out = viopath(&args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            widest(&text) <= 120,
            "{args:?}: {} columns\n{text}",
            widest(&text)
        );
    }
    let out = viopath(&["report", &trace, "--top", "5"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cells = |l: &str| -> Vec<String> {
        l.split('│')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    // id → guest offset, from the slowest IOs' table.
    let slowest = text
        .split("Slowest 5 IOs")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    let (first, layers) = slowest.split_once("their time by layer").unwrap();
    let offset_of: HashMap<String, u64> = first
        .lines()
        .map(cells)
        .filter(|c| c.len() > 3 && c[0].parse::<u64>().is_ok())
        .map(|c| (c[0].clone(), c[2].parse().unwrap()))
        .collect();
    assert_eq!(offset_of.len(), 5, "{text}");
    let mut lines = layers.lines().skip_while(|l| !l.starts_with('│'));
    // The header is on two lines: the layer names split at their first underscore.
    let (h1, h2) = (cells(lines.next().unwrap()), lines.next().unwrap());
    let mut names: Vec<String> = h1.clone();
    let mut rest = h2.split('│').map(str::trim).skip(1);
    for n in names.iter_mut() {
        let second = rest.next().unwrap_or("");
        if !second.is_empty() {
            *n = format!("{n}_{second}");
        }
    }
    let mut checked = 0;
    for l in lines.filter(|l| l.starts_with('│')) {
        let c = cells(l);
        let Some(&off) = offset_of.get(&c[0]) else {
            continue;
        };
        let t = truths.iter().find(|t| t.offset == off).unwrap();
        let (truth, _) = split(&t.b);
        for (name, value) in names.iter().zip(&c).skip(1) {
            let i = viopath_reporter::layers::LAYER_NAMES
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("no layer {name}: {text}"));
            let want = truth[i].map_or("-".to_owned(), |ns| format!("{:.1}", ns as f64 / 1e3));
            assert_eq!(value, &want, "IO at {off}, layer {name}: {text}");
        }
        checked += 1;
    }
    assert_eq!(checked, 5, "{text}");
}

/// `--op`, `--min-latency`, `--from/--to` and `--disk` keep the IOs the synthetic
/// trace's own truths say they should, in the export and the table, and the summary
/// says what was kept; impossible filters are refused with why.
#[test]
fn filters_keep_what_the_truth_says() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, truths) = make(dir.path());
    let start = viopath_reporter::synth::START_NS;
    let began = |t: &Truth| t.b.as_array().iter().copied().find(|&x| x != 0).unwrap();
    let e2e = |t: &Truth| split(&t.b).1;
    let csv_rows = |extra: &[&str]| -> Vec<String> {
        let csv = dir.path().join("f.csv");
        let mut args = vec![
            "report",
            &trace,
            "--format",
            "csv",
            "-o",
            csv.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = viopath(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&csv).unwrap();
        text.lines().skip(1).map(str::to_owned).collect()
    };
    let cases: Vec<(Vec<&str>, usize)> = vec![
        (
            vec!["--op", "read"],
            truths.iter().filter(|t| !t.write).count(),
        ),
        (vec!["--op", "write,read"], truths.len()),
        (
            vec!["--min-latency", "300us"],
            truths.iter().filter(|t| e2e(t) >= 300_000).count(),
        ),
        (
            vec!["--from", "10ms", "--to", "0.02s"],
            truths
                .iter()
                .filter(|t| (start + 10_000_000..start + 20_000_000).contains(&began(t)))
                .count(),
        ),
        (
            vec!["--op", "write", "--from", "30ms"],
            truths
                .iter()
                .filter(|t| t.write && began(t) >= start + 30_000_000)
                .count(),
        ),
        (vec!["--disk", "disk.qcow2"], truths.len()),
        (vec!["--disk", "/synthetic/disk.qcow2"], truths.len()),
    ];
    for (args, want) in &cases {
        assert!(*want > 0 && *want <= truths.len(), "{args:?}: {want}");
        assert_eq!(csv_rows(args).len(), *want, "{args:?}");
    }
    // The table says what it kept, and counts only those.
    let out = viopath(&["report", &trace, "--op", "read", "--min-latency", "300us"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let kept = truths
        .iter()
        .filter(|t| !t.write && e2e(t) >= 300_000)
        .count();
    assert!(
        text.contains(&format!(
            "{kept} IOs kept, {} left out",
            truths.len() - kept
        )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("│ IOs ") && l.contains(&format!("│ {kept} ({kept} complete"))),
        "{text}"
    );
    assert!(!text.contains("│ write "), "{text}");
    // The synthetic trace has no guest filesystem map: grouping by file says so.
    let out = viopath(&["report", &trace, "--by", "file"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("no IO could be named by a guest file"),
        "{err}"
    );
    // Refused, with why.
    for (args, want) in [
        (vec!["--disk", "sdb"], "no disk named 'sdb'"),
        (vec!["--from", "2s", "--to", "1s"], "before it begins"),
        (vec!["--op", "reads"], "invalid value"),
        (vec!["--min-latency", "3 parsecs"], "unknown unit"),
        (
            vec!["--format", "perfetto", "--op", "read"],
            "Perfetto timeline shows the whole trace",
        ),
    ] {
        let mut a = vec!["report", trace.as_str()];
        a.extend_from_slice(&args);
        let out = viopath(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
}
