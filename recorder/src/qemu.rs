//! The traced QEMU: its binary, version and open image files.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Serialize)]
pub struct QemuInfo {
    pub binary: PathBuf,
    /// The first line of `BINARY --version`.
    pub version_line: String,
    /// major.minor.micro, when the line has one.
    pub version: Option<(u32, u32, u32)>,
}

/// Parse "qemu-io version 10.0.2 (Debian ...)" or "QEMU emulator version 7.2.15".
pub fn parse_version(line: &str) -> Option<(u32, u32, u32)> {
    let v = line
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)?;
    let mut it = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>());
    let major = it.next()?.ok()?;
    let minor = it.next()?.ok()?;
    let micro = it.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, micro))
}

impl QemuInfo {
    pub fn probe(binary: &Path) -> QemuInfo {
        let version_line = Command::new(binary)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_default();
        let version = parse_version(&version_line);
        QemuInfo {
            binary: binary.to_owned(),
            version_line,
            version,
        }
    }

    pub fn is_qemu(&self) -> bool {
        self.version_line.to_ascii_lowercase().contains("qemu")
            || self
                .binary
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("qemu"))
    }
}

/// Resolve a command name the way execvp would.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.exists().then(|| p.canonicalize().unwrap_or(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}

/// Regular files a process has open (its images, among others).
pub fn open_files(pid: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.is_absolute() && p.metadata().is_ok_and(|m| m.is_file()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Files a QEMU command line names: bare paths and `file=`/`filename=` values.
pub fn files_in_args(args: &[String]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for a in args {
        for part in a.split(',') {
            // `file=X`, `file.filename=X`, `drive-file=X`, or a bare path.
            let val = part.rsplit_once('=').map_or(part, |(_, v)| v);
            let p = Path::new(val);
            if p.metadata().is_ok_and(|m| m.is_file()) {
                v.push(p.canonicalize().unwrap_or_else(|_| p.to_owned()));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("qemu-io version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)"),
            Some((7, 2, 15))
        );
        assert_eq!(
            parse_version("QEMU emulator version 9.1.50"),
            Some((9, 1, 50))
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn image_paths_from_a_command_line() {
        let dir = std::env::temp_dir();
        let f = dir.join(format!("viopath-args-{}.qcow2", std::process::id()));
        std::fs::write(&f, b"x").unwrap();
        let args = vec![
            "-c".to_owned(),
            "read 0 4k".to_owned(),
            format!("driver=qcow2,file.filename={}", f.display()),
            format!("file={},if=none", f.display()),
        ];
        let found = files_in_args(&args);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(found.len(), 1);
    }
}
