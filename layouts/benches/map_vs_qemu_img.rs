//! Building the forward and reverse maps of a sparse 1 TiB qcow2 against
//! `qemu-img map --output=json` on the same image, side by side, plus peak memory for
//! images of different virtual sizes and amounts of data.
//!
//!     cargo bench -p viopath-layouts --bench map_vs_qemu_img [-- ROUNDS]
//!
//! Images are built once with qemu-img/qemu-io and cached in target/bench-images.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use viopath_layouts::qcow2::Chain;

/// What the child does: open the chain, build the forward map (as qemu-img prints it)
/// and the reverse map of the image file.
fn child(image: &Path) {
    let chain = Chain::open(image).expect("open");
    let entries = chain.map_entries();
    let reverse = chain.reverse_map(0).expect("reverse map");
    // Keep the work observable.
    println!("{} {}", entries.len(), reverse.extents.len());
}

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

/// A sparse image: `big` chunks of 2 MiB and `small` writes of 4 KiB, scattered.
fn build(path: &Path, virtual_size: u64, big: u64, small: u64) {
    if path.exists() {
        return;
    }
    let tmp = path.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let st = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=65536",
            tmp.to_str().unwrap(),
            &virtual_size.to_string(),
        ])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let mut rng = Lcg(42);
    let mut cmds = String::new();
    for i in 0..big {
        let off = rng.below(virtual_size >> 21) << 21;
        cmds += &format!("write -q -P {} {off} 2M\n", i % 251);
    }
    for i in 0..small {
        let off = rng.below(virtual_size >> 12) << 12;
        cmds += &format!("write -q -P {} {off} 4k\n", i % 251);
    }
    let mut p = Command::new("qemu-io")
        .args(["-f", "qcow2", tmp.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-io");
    p.stdin.take().unwrap().write_all(cmds.as_bytes()).unwrap();
    assert!(p.wait().unwrap().success());
    std::fs::rename(&tmp, path).unwrap();
}

/// Run a command; return its wall time and peak RSS in KiB.
// The child is reaped by wait4 (which std's wait cannot do: it gives no rusage).
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command) -> (Duration, u64) {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::null()).spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let took = start.elapsed();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    (took, ru.ru_maxrss as u64)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(Path::new(&args[i + 1]));
        return;
    }
    let rounds: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(7);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-images");
    std::fs::create_dir_all(&dir).unwrap();
    let tib = 1u64 << 40;
    let main_img = dir.join("sparse-1T.qcow2");
    let wide_img = dir.join("sparse-64T.qcow2");
    let dense_img = dir.join("sparse-1T-2x.qcow2");
    eprintln!("building images (cached) in {}", dir.display());
    build(&main_img, tib, 1024, 16384);
    build(&wide_img, 64 * tib, 1024, 16384);
    build(&dense_img, tib, 2048, 32768);
    let me = std::env::current_exe().unwrap();

    let ours = |img: &Path| {
        let mut c = Command::new(&me);
        c.args(["--child", img.to_str().unwrap()]);
        c
    };
    let qemu = |img: &Path| {
        let mut c = Command::new("qemu-img");
        c.args(["map", "--output=json", img.to_str().unwrap()]);
        c
    };
    // Warm the page cache for both, then alternate so noise hits both sides alike.
    measure(&mut qemu(&main_img));
    measure(&mut ours(&main_img));
    let (mut tq, mut to) = (Vec::new(), Vec::new());
    let (mut rq, mut ro) = (0, 0);
    for _ in 0..rounds {
        let (t, r) = measure(&mut qemu(&main_img));
        tq.push(t);
        rq = rq.max(r);
        let (t, r) = measure(&mut ours(&main_img));
        to.push(t);
        ro = ro.max(r);
    }
    let (mq, mo) = (median(tq), median(to));
    let file_size = std::fs::metadata(&main_img).unwrap().len();
    println!(
        "image: 1 TiB virtual, 64 KiB clusters, {:.2} GiB file, {rounds} alternating rounds",
        file_size as f64 / (1u64 << 30) as f64
    );
    println!(
        "qemu-img map --output=json     median {:>8.1} ms   peak RSS {:>7} KiB",
        mq.as_secs_f64() * 1e3,
        rq
    );
    println!(
        "viopath forward+reverse maps   median {:>8.1} ms   peak RSS {:>7} KiB",
        mo.as_secs_f64() * 1e3,
        ro
    );
    println!(
        "ratio viopath / qemu-img: {:.3} (goal: <= 0.5)",
        mo.as_secs_f64() / mq.as_secs_f64()
    );
    println!();
    println!("peak RSS of viopath forward+reverse maps:");
    for (name, img) in [
        ("1 TiB, ~3 GiB data", &main_img),
        ("64 TiB, same data", &wide_img),
        ("1 TiB, 2x data", &dense_img),
    ] {
        let (t, r) = measure(&mut ours(img));
        let size = std::fs::metadata(img).unwrap().len();
        println!(
            "  {name:<22} file {:>6.2} GiB   {:>7} KiB   {:>7.1} ms",
            size as f64 / (1u64 << 30) as f64,
            r,
            t.as_secs_f64() * 1e3
        );
    }
}
