//! The traced QEMU: its binary, version and open image files.

use serde::Serialize;
use std::path::{Path, PathBuf};
use viopath_probes::chunks::OpenFile;

#[derive(Debug, Clone, Serialize)]
pub struct QemuInfo {
    pub binary: PathBuf,
    /// The first line `BINARY --version` would print (read from the binary).
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
    /// Read the version from the binary's own `--version` text, without running it:
    /// the recorder may be pointed at any command, and must not execute it twice.
    pub fn probe(binary: &Path) -> QemuInfo {
        let version_line = std::fs::File::open(binary)
            .ok()
            // SAFETY: read-only map of a file we only read; a concurrent truncation
            // could fault, which is the same risk every ELF reader takes.
            .and_then(|f| unsafe { memmap2::Mmap::map(&f) }.ok())
            .and_then(|m| version_text(&m, binary))
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

/// Every QEMU program prints "NAME version X.Y.Z (PKGVERSION)" right before its
/// copyright line, from one string literal: find that literal in the binary.
fn version_text(data: &[u8], binary: &Path) -> Option<String> {
    const COPYRIGHT: &[u8] = b"QEMU Project developers";
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for at in memchr::memmem::find_iter(data, COPYRIGHT) {
        let window = &data[at.saturating_sub(256)..at];
        // The literal starts after the previous NUL; its first line is the version.
        let start = window.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&window[start..]);
        let Some(line) = text.lines().find(|l| l.contains(" version ")) else {
            continue;
        };
        if parse_version(line).is_some() {
            return Some(line.replace("%s", &name).trim().to_owned());
        }
    }
    None
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

/// Whether `p` can be a disk: a regular file, or a block device (a `host_device`
/// disk: an LVM volume, a partition, a loop device).
pub fn disk_like(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() || m.file_type().is_block_device())
}

/// A file a process has open, and whether some descriptor of it reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpenPath {
    pub path: PathBuf,
    pub read_write: bool,
}

/// Every descriptor of a process open on a regular file or block device: its path and
/// open flags (from /proc/PID/fdinfo; `None` where they could not be read).
fn open_descriptors(pid: u32) -> Vec<(PathBuf, Option<u64>)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let path = std::fs::read_link(e.path()).ok()?;
            if !path.is_absolute() || !disk_like(&path) {
                return None;
            }
            let flags =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_str()?))
                    .ok()
                    .and_then(|info| {
                        info.lines()
                            .find_map(|l| l.strip_prefix("flags:"))
                            .and_then(|f| u64::from_str_radix(f.trim(), 8).ok())
                    });
            Some((path, flags))
        })
        .collect()
}

/// Regular files and block devices a process has open (its images, among others).
pub fn open_files(pid: u32) -> Vec<OpenPath> {
    const O_ACCMODE: u64 = 3;
    const O_RDWR: u64 = 2;
    let mut v: Vec<OpenPath> = open_descriptors(pid)
        .into_iter()
        .map(|(path, flags)| OpenPath {
            path,
            read_write: flags.is_some_and(|f| f & O_ACCMODE == O_RDWR),
        })
        .collect();
    // Read-write first: a file open both ways counts as read-write.
    v.sort_by(|a, b| a.path.cmp(&b.path).then(b.read_write.cmp(&a.read_write)));
    v.dedup_by(|b, a| a.path == b.path);
    v
}

/// The regular files a process has open, with their open flags: whether QEMU opened an
/// image with O_DIRECT is the kernel's own account of its cache mode.
pub fn open_modes(pid: u32) -> Vec<OpenFile> {
    const O_DSYNC: u64 = 0o10000;
    const O_DIRECT: u64 = 0o40000;
    let mut v: Vec<OpenFile> = open_descriptors(pid)
        .into_iter()
        .filter_map(|(path, flags)| {
            let flags = flags?;
            Some(OpenFile {
                path,
                direct: flags & O_DIRECT != 0,
                dsync: flags & O_DSYNC != 0,
            })
        })
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    // A file open twice (QEMU reopens an image to change its flags) counts as opened
    // the way any descriptor of it is: direct if one is.
    v.dedup_by(|b, a| {
        if a.path == b.path {
            a.direct |= b.direct;
            a.dsync |= b.dsync;
            true
        } else {
            false
        }
    });
    v
}

/// Options whose value is a file QEMU reads once or writes, not a disk: their files
/// are not snapshotted as images (the reporter takes each image for one of the VM's
/// disks).
const NOT_DISKS: &[&str] = &[
    "-kernel",
    "-initrd",
    "-dtb",
    "-bios",
    "-fw_cfg",
    "-L",
    "-D",
    "-pidfile",
    "-readconfig",
    "-append",
    // Character devices, monitors, objects and networks name files and sockets that
    // are no disks (a console log, a secret, a script).
    "-chardev",
    "-serial",
    "-parallel",
    "-monitor",
    "-qmp",
    "-mon",
    "-trace",
    "-object",
    "-netdev",
    "-nic",
    "-smbios",
];

/// Files a QEMU command line names: bare paths and `file=`/`filename=` values, except
/// the values of [`NOT_DISKS`] options.
pub fn files_in_args(args: &[String]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        // QEMU takes `--kernel` for `-kernel` too.
        if NOT_DISKS
            .iter()
            .any(|o| a == o || a.strip_prefix('-') == Some(o))
        {
            skip = true;
            continue;
        }
        // A JSON option (-blockdev, -device, as libvirt writes them): its `filename`s.
        if a.trim_start().starts_with('{') {
            if let Ok(j) = serde_json::from_str::<serde_json::Value>(a) {
                json_filenames(&j, &mut v);
            }
            continue;
        }
        for part in a.split(',') {
            // `file=X`, `file.filename=X`, `drive-file=X`, or a bare path.
            let val = part.rsplit_once('=').map_or(part, |(_, v)| v);
            let p = Path::new(val);
            if disk_like(p) {
                v.push(p.canonicalize().unwrap_or_else(|_| p.to_owned()));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

fn json_filenames(j: &serde_json::Value, out: &mut Vec<PathBuf>) {
    match j {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                match v {
                    serde_json::Value::String(s) if k == "filename" && disk_like(Path::new(s)) => {
                        let p = Path::new(s);
                        out.push(p.canonicalize().unwrap_or_else(|_| p.to_owned()));
                    }
                    _ => json_filenames(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_filenames(v, out)),
        _ => {}
    }
}

/// Files the values of [`NOT_DISKS`] options name (a memory backend's file, a serial
/// log, a pid file): never images, however they are open.
pub fn files_not_disks(args: &[String]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for w in args.windows(2) {
        let (opt, val) = (&w[0], &w[1]);
        if !NOT_DISKS
            .iter()
            .any(|o| opt == o || opt.strip_prefix('-') == Some(o))
        {
            continue;
        }
        if val.trim_start().starts_with('{') {
            if let Ok(j) = serde_json::from_str::<serde_json::Value>(val) {
                json_paths(&j, &mut v);
            }
            continue;
        }
        for part in val.split(',') {
            let p = Path::new(part.rsplit_once('=').map_or(part, |(_, v)| v));
            if disk_like(p) {
                v.push(p.canonicalize().unwrap_or_else(|_| p.to_owned()));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Every string of a JSON option that names an existing file.
fn json_paths(j: &serde_json::Value, out: &mut Vec<PathBuf>) {
    match j {
        serde_json::Value::String(s) if disk_like(Path::new(s)) => {
            let p = Path::new(s);
            out.push(p.canonicalize().unwrap_or_else(|_| p.to_owned()));
        }
        serde_json::Value::Object(o) => o.values().for_each(|v| json_paths(v, out)),
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_paths(v, out)),
        _ => {}
    }
}

/// The files a QEMU command line (after the program) names: as disks, and as no disk
/// (the values of [`NOT_DISKS`] options). Read once per process: each is a stat.
#[derive(Debug, Clone, Default)]
pub struct ArgFiles {
    pub disks: Vec<PathBuf>,
    pub not_disks: Vec<PathBuf>,
}

impl ArgFiles {
    pub fn of(args: &[String]) -> ArgFiles {
        ArgFiles {
            disks: files_in_args(args),
            not_disks: files_not_disks(args),
        }
    }
}

/// Of the files a process has open, its images: those its command line names as files
/// (`named`), and of the others those open read-write or holding a qcow2 header (a disk
/// added by QMP, hot-plugged or all of them), except what the line names as no disk
/// (a memory backend's file is open read-write). Its stdout and stderr logs, serial
/// logs and pid file are open to write only, its kernel, initrd and firmware to read
/// only, and none of them is qcow2. (A raw disk QMP adds read-only is not found this
/// way: name it on the command line.)
pub fn images_among(open: Vec<OpenPath>, named: &ArgFiles) -> Vec<PathBuf> {
    open.into_iter()
        .filter(|f| {
            named.disks.contains(&f.path)
                || (!named.not_disks.contains(&f.path) && (f.read_write || is_qcow2(&f.path)))
        })
        .map(|f| f.path)
        .collect()
}

/// Whether the file starts with qcow2's magic.
fn is_qcow2(p: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| magic == *b"QFI\xfb")
}

impl From<&QemuInfo> for viopath_probes::chunks::QemuBinary {
    fn from(q: &QemuInfo) -> Self {
        viopath_probes::chunks::QemuBinary {
            binary: q.binary.clone(),
            version_line: q.version_line.clone(),
            version: q.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

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
    fn version_from_the_binary_text() {
        let blob = b"\x7fELF junk\0%s version 7.2.15 (Debian 1:7.2+dfsg-7)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n\0more";
        assert_eq!(
            version_text(blob, Path::new("/usr/bin/qemu-img")).as_deref(),
            Some("qemu-img version 7.2.15 (Debian 1:7.2+dfsg-7)")
        );
        let system = b"\0QEMU emulator version 10.0.2\nCopyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\0";
        assert_eq!(
            version_text(system, Path::new("x")).as_deref(),
            Some("QEMU emulator version 10.0.2")
        );
        assert_eq!(version_text(b"no version here", Path::new("x")), None);
        // A copyright with no version before it is not enough.
        assert_eq!(
            version_text(b"\0the QEMU Project developers", Path::new("x")),
            None
        );
    }

    /// libvirt's command line: the image named only in a JSON -blockdev; the pid file,
    /// console log and a secret's file are no images, and an open file the line does
    /// not name is not taken for one.
    #[test]
    fn images_from_a_libvirt_command_line() {
        let dir = std::env::temp_dir().join(format!("viopath-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = |n: &str| {
            let p = dir.join(n);
            std::fs::write(&p, b"x").unwrap();
            p.canonicalize().unwrap()
        };
        let (img, pid, log, key) = (f("vm.qcow2"), f("vm.pid"), f("console.log"), f("key"));
        let args: Vec<String> = [
            "-pidfile".to_owned(),
            pid.display().to_string(),
            "-object".to_owned(),
            format!(
                "{{\"qom-type\":\"secret\",\"id\":\"s0\",\"file\":\"{}\"}}",
                key.display()
            ),
            "-blockdev".to_owned(),
            format!(
                "{{\"driver\":\"file\",\"filename\":\"{}\",\"node-name\":\"libvirt-1-storage\"}}",
                img.display()
            ),
            "-chardev".to_owned(),
            format!("file,id=charserial0,path={}", log.display()),
        ]
        .to_vec();
        let named = files_in_args(&args);
        assert_eq!(named, std::slice::from_ref(&img));
        let open_as = |p: &PathBuf, read_write: bool| OpenPath {
            path: p.clone(),
            read_write,
        };
        let open = vec![
            open_as(&img, true),
            open_as(&log, false),
            open_as(&pid, false),
        ];
        assert_eq!(
            images_among(open.clone(), &ArgFiles::of(&args)),
            std::slice::from_ref(&img)
        );
        // A command line naming no disk (all added by QMP): still not the log or the
        // pid file, open to write only.
        assert_eq!(
            images_among(open.clone(), &ArgFiles::default()),
            std::slice::from_ref(&img)
        );
        // Disks hot-plugged by QMP: one opened read-write, a qcow2 opened read-only.
        let (raw, ro) = (dir.join("hot.raw"), dir.join("hot-ro.qcow2"));
        std::fs::write(&raw, [0u8; 512]).unwrap();
        std::fs::write(&ro, b"QFI\xfb\0\0\0\x03").unwrap();
        let mut open = open;
        open.extend([open_as(&raw, true), open_as(&ro, false)]);
        assert_eq!(
            images_among(open.clone(), &ArgFiles::of(&args)),
            [img.clone(), raw.clone(), ro.clone()]
        );
        // A memory backend's file is open read-write, and named as no disk.
        let mem = f("guest-ram");
        let mut with_mem = args.clone();
        with_mem.extend([
            "-object".to_owned(),
            format!(
                "memory-backend-file,id=ram0,size=1M,mem-path={}",
                mem.display()
            ),
        ]);
        open.push(open_as(&mem, true));
        assert_eq!(images_among(open, &ArgFiles::of(&with_mem)), [img, raw, ro]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The static read agrees with what the program prints when run.
    #[test]
    fn version_matches_the_program_output() {
        let Some(bin) = which("qemu-img") else {
            assert!(
                std::env::var_os("VIOPATH_NO_SKIP").is_none(),
                "would be skipped (VIOPATH_NO_SKIP): skipped: no qemu-img on PATH"
            );
            eprintln!("skipped: no qemu-img on PATH");
            return;
        };
        let out = Command::new(&bin).arg("--version").output().unwrap();
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .to_owned();
        let info = QemuInfo::probe(&bin);
        assert_eq!(info.version_line, first);
        assert_eq!(info.version, parse_version(&first));
        assert!(info.is_qemu());
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
        assert_eq!(found.len(), 1);
        // A kernel, initrd or log file is no disk, however it is spelled.
        let args: Vec<String> = ["-kernel", "--initrd", "-D", "-drive"]
            .iter()
            .flat_map(|o| [o.to_string(), f.display().to_string()])
            .collect();
        assert_eq!(files_in_args(&args).len(), 1, "only -drive's: {args:?}");
        assert_eq!(files_in_args(&args[..6]), Vec::<PathBuf>::new());
        std::fs::remove_file(&f).unwrap();
    }
}
