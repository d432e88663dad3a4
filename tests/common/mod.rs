//! Helpers shared by the integration tests: running the real tools we use as oracles.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Run a command, panic with its output if it fails, return stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn sh(script: &str) -> String {
    run("sh", &["-ec", script])
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn qemu_img_map(image: &Path) -> Vec<Value> {
    let out = run(
        "qemu-img",
        &["map", "--output=json", image.to_str().unwrap()],
    );
    serde_json::from_str(&out).expect("qemu-img map JSON")
}

pub fn qemu_img_check(image: &Path) -> Value {
    // Exit code 0: clean; 3: leaks only. Both still print JSON.
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", image.to_str().unwrap()])
        .output()
        .expect("qemu-img");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("qemu-img check: {}", String::from_utf8_lossy(&out.stderr)))
}

pub fn create(dir: &Path, name: &str, opts: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([p.to_str().unwrap(), size]);
    run("qemu-img", &args);
    p
}

/// Run qemu-io commands against an image (qcow2 format, no cache layer surprises).
pub fn qemu_io(image: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(image.to_str().unwrap());
    let out = run("qemu-io", &args);
    assert!(
        !out.contains("error") && !out.contains("failed"),
        "qemu-io: {out}"
    );
}

/// A tiny deterministic PRNG so tests need no extra crates and are reproducible.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
