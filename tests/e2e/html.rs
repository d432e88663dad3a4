//! The HTML pages (`report --html`, `compare --html`) in a real headless Chromium,
//! driven over WebDriver by chromedriver (Debian's chromium and chromium-driver; skipped,
//! saying so, where they are not installed — CI installs them).
//!
//! Each page must render without console messages, load nothing (no resource entries,
//! no script), and every chart must show the colours it drew data in, counted in the
//! pixels of its screenshot. What the charts say is checked against oracles that do
//! not come from the page: the per-IO CSV export of the same trace (IOs per op and
//! layer, the slowest IOs) and the synthetic generator's ground truth (a change between
//! two runs).

use crate::common::csv_rows;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use viopath_reporter::layers::{LAYER_NAMES, split};
use viopath_reporter::synth::{SynthConfig, Truth, generate};

fn viopath(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A chart as the browser drew it.
struct Shot {
    label: String,
    /// The colours it says it drew data in.
    colors: Vec<[u8; 3]>,
    /// Its screenshot's RGBA pixels.
    px: Vec<[u8; 4]>,
}

/// A headless Chromium session through chromedriver.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// None (after saying why) where Chromium or chromedriver is not installed.
    fn start() -> Option<Browser> {
        // Debian's /usr/bin/chromium is a wrapper script; the browser is behind it.
        let chromium = find(&["/usr/lib/chromium/chromium", "/usr/bin/chromium"]);
        let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            crate::common::skipped(
                "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let t0 = Instant::now();
        while b.try_call("GET", "/status", None).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver never answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking",
                    format!("--user-data-dir={}", b._profile.path().display()),
                    "--window-size=1200,900", "--force-device-scale-factor=1",
                    "--hide-scrollbars",
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Some(b)
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> std::io::Result<Value> {
        // A socket with a receive timeout is never restarted after a signal handler
        // (signal(7)): a handler anywhere in this test process (it runs the other
        // end-to-end tests too, which spawn children) makes a read fail with EINTR.
        fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
            loop {
                match s.read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            }
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        // chromedriver keeps the connection open: read the header, then the body by
        // its length (or its chunks).
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        let header_end = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = read_some(&mut s, &mut buf)?;
            if n == 0 {
                return Err(std::io::Error::other(
                    "connection closed in the HTTP header",
                ));
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..header_end]).to_ascii_lowercase();
        let mut payload = raw[header_end + 4..].to_vec();
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let chunked = head.contains("transfer-encoding: chunked");
        loop {
            let done = match length {
                Some(n) => payload.len() >= n,
                None if chunked => payload.windows(5).any(|w| w == b"0\r\n\r\n"),
                None => false,
            };
            if done {
                break;
            }
            let n = read_some(&mut s, &mut buf)?;
            if n == 0 {
                break;
            }
            payload.extend_from_slice(&buf[..n]);
        }
        if chunked {
            payload = dechunk(&payload);
        }
        serde_json::from_slice(&payload).map_err(std::io::Error::other)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self
            .try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            v["value"]["error"].is_null(),
            "{method} {path}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn open(&self, file: &Path) {
        let url = format!("file://{}", file.canonicalize().unwrap().display());
        self.call("POST", &self.s("/url"), Some(json!({"url": url})));
    }

    /// Console messages since the last call.
    fn console(&self) -> Vec<Value> {
        let v = self.call("POST", &self.s("/se/log"), Some(json!({"type": "browser"})));
        v.as_array().cloned().unwrap_or_default()
    }

    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Every `svg.chart` with its screenshot.
    fn charts(&self) -> Vec<Shot> {
        let els = self.call(
            "POST",
            &self.s("/elements"),
            Some(json!({"using": "css selector", "value": "svg.chart"})),
        );
        let mut out = Vec::new();
        for el in els.as_array().unwrap() {
            let id = el
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned();
            let attr = |a: &str| {
                self.call(
                    "GET",
                    &self.s(&format!("/element/{id}/attribute/{a}")),
                    None,
                )
                .as_str()
                .unwrap_or_default()
                .to_owned()
            };
            let label = attr("aria-label");
            let colors = attr("data-colors")
                .split_whitespace()
                .map(|c| {
                    let h = u32::from_str_radix(c.trim_start_matches('#'), 16).unwrap();
                    [(h >> 16) as u8, (h >> 8) as u8, h as u8]
                })
                .collect();
            // Element screenshots are cut to the viewport: bring the whole chart into it.
            let size = self.call(
                "POST",
                &self.s("/execute/sync"),
                Some(json!({
                    "script": "arguments[0].scrollIntoView({block: 'start'});
                               const r = arguments[0].getBoundingClientRect();
                               return [Math.round(r.width), Math.round(r.height), window.innerHeight];",
                    "args": [element_ref(&id)],
                })),
            );
            assert!(
                size[1].as_u64() <= size[2].as_u64(),
                "{label}: taller than the window ({size})"
            );
            let b64 = self.call("GET", &self.s(&format!("/element/{id}/screenshot")), None);
            let png = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap())
                .unwrap();
            if let Some(dir) = std::env::var_os("VIOPATH_HTML_SHOTS") {
                let name = format!("{}-{}.png", out.len(), label.replace(['/', ' ', ':'], "_"));
                std::fs::write(Path::new(&dir).join(name), &png).unwrap();
            }
            let px = rgba(&png);
            let w = size[0].as_u64().unwrap() as usize;
            let h = size[1].as_u64().unwrap() as usize;
            assert!(
                px.len() + 2 * (w + h) >= w * h,
                "{label}: screenshot has {} pixels, the chart {w}x{h}",
                px.len()
            );
            out.push(Shot { label, colors, px });
        }
        out
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn element_ref(id: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(ELEMENT_KEY.to_owned(), json!(id));
    Value::Object(m)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn rgba(png_bytes: &[u8]) -> Vec<[u8; 4]> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let px = &buf[..info.buffer_size()];
    match info.color_type {
        png::ColorType::Rgba => px.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(),
        png::ColorType::Rgb => px.chunks(3).map(|c| [c[0], c[1], c[2], 255]).collect(),
        t => panic!("screenshot in colour type {t:?}"),
    }
}

fn near(p: [u8; 4], c: [f64; 3]) -> bool {
    (0..3).all(|i| (f64::from(p[i]) - c[i]).abs() <= 10.0)
}

/// Pixels of colour `c` (the pages draw data opaque, so some pixels are exact).
fn pixels_of(px: &[[u8; 4]], c: [u8; 3]) -> usize {
    let c = c.map(f64::from);
    px.iter().filter(|p| near(**p, c)).count()
}

/// The page loads nothing, logs nothing, and every chart shows each of its colours;
/// every chart's title is above it, and every histogram panel's y axis is labelled
/// and on the scale the other panels use. Returns the charts.
fn check_renders(b: &Browser, page: &Path, min_charts: usize) -> Vec<Shot> {
    // To look at the pages when a chart changes: VIOPATH_HTML_SHOTS=DIR keeps them.
    if let Some(dir) = std::env::var_os("VIOPATH_HTML_SHOTS") {
        std::fs::copy(page, Path::new(&dir).join(page.file_name().unwrap())).unwrap();
    }
    b.open(page);
    let console = b.console();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let v = b.eval(
        "return {resources: performance.getEntriesByType('resource').map(e => e.name),
                 scripts: document.scripts.length,
                 charts: document.querySelectorAll('svg.chart').length,
                 title: document.title}",
    );
    assert_eq!(v["resources"], json!([]), "the page loaded something");
    assert_eq!(v["scripts"], 0);
    assert!(
        v["charts"].as_u64().unwrap() as usize >= min_charts,
        "{v}: expected at least {min_charts} charts"
    );
    let charts = b.charts();
    assert_eq!(charts.len() as u64, v["charts"].as_u64().unwrap());
    for Shot { label, colors, px } in &charts {
        assert!(!colors.is_empty(), "{label}: no data drawn");
        let ink = px
            .iter()
            .filter(|p| p[0] < 235 || p[1] < 235 || p[2] < 235)
            .count();
        assert!(
            ink * 100 > px.len(),
            "{label}: {ink} of {} pixels not white",
            px.len()
        );
        for c in colors {
            let n = pixels_of(px, *c);
            assert!(n >= 8, "{label}: colour {c:?} in only {n} pixels");
        }
    }
    // Titles above their charts: a figure's caption ends before its chart begins, and
    // a chart's own title before the first thing it plots.
    let order = b.eval(
        "const out = [];
         for (const f of document.querySelectorAll('figure')) {
           const c = f.querySelector('figcaption'), g = f.querySelector('svg');
           if (c && g) out.push([c.textContent, c.getBoundingClientRect().bottom, g.getBoundingClientRect().top]);
         }
         for (const g of document.querySelectorAll('svg.chart')) {
           const t = g.querySelector('text.ttl');
           const marks = [...g.querySelectorAll('rect, circle, polyline')].map(e => e.getBBox().y);
           if (t && marks.length) out.push([t.textContent, t.getBBox().y + t.getBBox().height, Math.min(...marks)]);
         }
         return out;",
    );
    for o in order.as_array().unwrap() {
        let (what, bottom, top) = (&o[0], o[1].as_f64().unwrap(), o[2].as_f64().unwrap());
        assert!(
            bottom <= top + 0.5,
            "the title {what} ends at {bottom}, below its chart's top {top}"
        );
    }
    // Histogram panels: a labelled y axis, and the same top tick in every panel.
    let panels = b.eval(
        "return [...document.querySelectorAll('figure[data-layer] svg')].map(g => {
           const l = g.querySelector('text.ylabel');
           const y = [...g.querySelectorAll('text.tick')]
             .filter(t => t.getAttribute('text-anchor') === 'end' && !t.classList.contains('ylabel'));
           return [l ? l.textContent : '', y.length ? y.map(t => t.textContent) : []];
         });",
    );
    let panels = panels.as_array().unwrap();
    assert!(!panels.is_empty(), "no histogram panels");
    let first = &panels[0][1];
    for p in panels {
        assert!(
            ["IOs", "share of IOs"].contains(&p[0].as_str().unwrap()),
            "a panel's y axis is not labelled: {p}"
        );
        assert_eq!(&p[1], first, "panels on different y scales");
    }
    charts
}

/// Colour distance (Euclidean, in RGB).
fn distance(a: [u8; 3], b: [u8; 3]) -> f64 {
    (0..3)
        .map(|i| (f64::from(a[i]) - f64::from(b[i])).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn the_report_page_renders_and_draws_every_io() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/vm.trace");
    let trace = trace.to_str().unwrap();
    let page = dir.path().join("report.html");
    let csv = dir.path().join("ios.csv");
    viopath(&[
        "report",
        trace,
        "--html",
        page.to_str().unwrap(),
        "--top",
        "12",
    ]);
    viopath(&[
        "report",
        trace,
        "--format",
        "csv",
        "-o",
        csv.to_str().unwrap(),
    ]);
    // breakdown + e2e histogram + a histogram per layer + waterfall + IOPS + latency
    let charts = check_renders(&browser, &page, 6);
    // Ops (the histograms' series) are drawn in colours far from every layer's (the
    // breakdown's bars), and from each other.
    let layer_colors = &charts
        .iter()
        .find(|c| c.label == "mean time per IO in each layer")
        .expect("the breakdown chart")
        .colors;
    let mut op_colors: Vec<[u8; 3]> = charts
        .iter()
        .filter(|c| c.label.starts_with("histogram"))
        .flat_map(|c| c.colors.clone())
        .collect();
    op_colors.sort_unstable();
    op_colors.dedup();
    assert!(op_colors.len() >= 3, "{op_colors:?}");
    for o in &op_colors {
        for l in layer_colors {
            assert!(
                distance(*o, *l) > 80.0,
                "op colour {o:?} near layer colour {l:?}"
            );
        }
        for p in op_colors.iter().filter(|p| *p != o) {
            assert!(distance(*o, *p) > 80.0, "op colours {o:?} and {p:?}");
        }
    }

    let rows = csv_rows(&csv);
    let complete: Vec<&HashMap<String, String>> =
        rows.iter().filter(|r| r["partial"].is_empty()).collect();
    assert!(
        complete.len() >= 30,
        "the demo trace has {} complete IOs",
        complete.len()
    );

    // Each histogram panel's bars hold exactly the complete IOs of each op that have
    // that layer, as the export counts them.
    let drawn = browser.eval(
        "const out = {};
         for (const f of document.querySelectorAll('#histograms ~ .grid figure[data-layer]')) {
           for (const g of f.querySelectorAll('g.series')) {
             let sum = 0;
             for (const t of g.querySelectorAll('rect > title')) {
               sum += Number(t.textContent.match(/: (\\d+) IOs in/)[1]);
             }
             out[f.dataset.layer + ' ' + g.dataset.name] = [Number(g.dataset.n), sum];
           }
         }
         return out;",
    );
    let mut want: HashMap<String, u64> = HashMap::new();
    for r in &complete {
        *want.entry(format!("e2e {}", r["op"])).or_default() += 1;
        for l in LAYER_NAMES {
            if !r[&format!("{l}_ns")].is_empty() {
                *want.entry(format!("{l} {}", r["op"])).or_default() += 1;
            }
        }
    }
    let drawn: HashMap<String, (u64, u64)> = drawn
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())))
        .collect();
    assert_eq!(
        drawn.keys().collect::<std::collections::BTreeSet<_>>(),
        want.keys().collect::<std::collections::BTreeSet<_>>()
    );
    for (k, n) in &want {
        assert_eq!(
            drawn[k],
            (*n, *n),
            "{k}: (n, bars) against {n} in the export"
        );
    }

    // The waterfall shows the 12 slowest by the export's end-to-end times, in order.
    let mut by_e2e: Vec<(u64, u64)> = complete
        .iter()
        .map(|r| (r["e2e_ns"].parse().unwrap(), r["id"].parse().unwrap()))
        .collect();
    by_e2e.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let want_ids: Vec<u64> = by_e2e.iter().take(12).map(|x| x.1).collect();
    let ids = browser.eval(
        "return [...document.querySelectorAll('#slowest ~ figure g.io')].map(g => Number(g.dataset.id))",
    );
    let ids: Vec<u64> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids, want_ids);

    // Over time: every complete IO is in some slot, per op.
    let per_op = browser.eval(
        "const out = {};
         for (const t of document.querySelectorAll('svg[aria-label=\"IOPS over time\"] rect > title')) {
           const m = t.textContent.match(/^(\\S+) at .*, (\\d+) IOs,/);
           out[m[1]] = (out[m[1]] || 0) + Number(m[2]);
         }
         return out;",
    );
    for op in ["read", "write", "flush"] {
        let n = complete.iter().filter(|r| r["op"] == op).count() as u64;
        assert_eq!(per_op[op].as_u64().unwrap_or(0), n, "{op}");
    }
}

fn synth(dir: &Path, name: &str, cfg: &SynthConfig) -> (PathBuf, Vec<Truth>) {
    let p = dir.join(name);
    let mut truths = Vec::new();
    let f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    generate(cfg, f, |t| truths.push(t)).unwrap();
    (p, truths)
}

/// The mean time of reads in QEMU's layer (layer index 1), from the generator's truth.
fn true_qemu_mean(truths: &[Truth]) -> f64 {
    let v: Vec<u64> = truths
        .iter()
        .filter(|t| !t.write && !t.lost)
        .filter_map(|t| split(&t.b).0[1])
        .collect();
    v.iter().sum::<u64>() as f64 / v.len() as f64
}

#[test]
fn the_comparison_page_renders_and_shows_a_known_slowdown() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Every read misses qcow2's L2 cache in the new run; none in the base run.
    let base_cfg = SynthConfig {
        ios: 2000,
        seed: 3,
        l2_miss_every: 0,
        ..SynthConfig::default()
    };
    let new_cfg = SynthConfig {
        ios: 2000,
        seed: 4,
        l2_miss_every: 1,
        ..SynthConfig::default()
    };
    let (base, base_truth) = synth(dir.path(), "base.trace", &base_cfg);
    let (new, new_truth) = synth(dir.path(), "new.trace", &new_cfg);
    let page = dir.path().join("compare.html");
    viopath(&[
        "compare",
        base.to_str().unwrap(),
        "--vs",
        new.to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ]);
    // A forest plot per op + base/new histograms per op and layer.
    check_renders(&browser, &page, 4);

    let (b, n) = (true_qemu_mean(&base_truth), true_qemu_mean(&new_truth));
    let true_delta = (n - b) / b;
    assert!(
        true_delta > 0.2,
        "the generator's L2 misses cost {true_delta}"
    );
    let cell = browser.eval(
        "const c = [...document.querySelectorAll('svg.chart circle')]
           .find(c => c.textContent.startsWith('read qemu mean:'));
         return c ? {fill: c.getAttribute('fill'), tip: c.textContent} : null;",
    );
    assert_eq!(
        cell["fill"], "#d62728",
        "read qemu mean is marked slower: {cell}"
    );
    // The page's delta is the true one (means are exact in compare's histograms).
    let tip = cell["tip"].as_str().unwrap();
    let shown: f64 = tip
        .split(['(', ')'])
        .nth(1)
        .and_then(|d| d.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no delta in {tip:?}"));
    assert!(
        (shown / 100.0 - true_delta).abs() < 0.002,
        "page says {shown}%, truth {:.2}%",
        true_delta * 100.0
    );
}
