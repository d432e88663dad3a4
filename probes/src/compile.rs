//! Compiling `bpf/viopath.bpf.c` the one way the committed object is made, so a fresh
//! compile can be compared with it byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The clang that builds the committed object (Debian's clang-19); `VIOPATH_CLANG`
/// overrides it.
pub fn clang() -> String {
    std::env::var("VIOPATH_CLANG").unwrap_or_else(|_| "clang-19".to_owned())
}

pub fn bpf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf")
}

/// Whether the clang we use is installed.
pub fn clang_available() -> bool {
    Command::new(clang())
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Compile the programs into `out`. Paths are relative and the debug prefix is mapped,
/// so the object does not depend on where the checkout is.
pub fn compile(out: &Path) -> Result<(), String> {
    let dir = bpf_dir();
    let o = Command::new(clang())
        .current_dir(&dir)
        .args([
            "-g",
            "-O2",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-I/usr/include/x86_64-linux-gnu",
        ])
        .arg(format!("-fdebug-prefix-map={}=.", dir.display()))
        .args(["-c", "viopath.bpf.c", "-o"])
        .arg(out)
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (install clang-19 and libbpf-dev)",
                clang()
            )
        })?;
    if !o.status.success() {
        return Err(format!(
            "{} failed:\n{}",
            clang(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

/// Compile to a temporary file and say whether it equals the committed object.
pub fn committed_is_fresh() -> Result<bool, String> {
    let tmp = std::env::temp_dir().join(format!("viopath-probes-{}.o", std::process::id()));
    compile(&tmp)?;
    let fresh = std::fs::read(&tmp).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&tmp);
    let committed = std::fs::read(bpf_dir().join("viopath.bpf.o")).map_err(|e| e.to_string())?;
    Ok(fresh == committed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_object_is_fresh() {
        if !super::clang_available() {
            eprintln!(
                "SKIPPED: {} is not installed, so the committed bpf/viopath.bpf.o cannot be checked",
                super::clang()
            );
            return;
        }
        assert!(
            super::committed_is_fresh().unwrap(),
            "bpf/viopath.bpf.o is stale: run `cargo xtask probes` and commit the result"
        );
    }
}
