//! The cache mode each disk ran with, from QEMU's command line, checked against the
//! open flags the kernel reported for its image files.
//!
//! QEMU's cache modes are three switches: `cache.direct` (the image is opened with
//! O_DIRECT, bypassing the host page cache), `cache.no-flush` (flushes are ignored) and
//! the device's write cache (off: every write is synced before it completes). The
//! command line says how they were asked for; `O_DIRECT` in /proc/PID/fdinfo says what
//! the kernel got for the first of them.

use crate::layout::Layout;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use viopath_probes::chunks::{End, Header};

/// QEMU's named cache modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    None,
    Writeback,
    Writethrough,
    Directsync,
    Unsafe,
}

impl CacheMode {
    pub fn parse(s: &str) -> Option<CacheMode> {
        Some(match s {
            "none" | "off" => CacheMode::None,
            "writeback" => CacheMode::Writeback,
            "writethrough" => CacheMode::Writethrough,
            "directsync" => CacheMode::Directsync,
            "unsafe" => CacheMode::Unsafe,
            _ => return None,
        })
    }

    /// From the three switches.
    pub fn from_switches(direct: bool, no_flush: bool, write_cache: bool) -> CacheMode {
        match (direct, no_flush, write_cache) {
            (_, true, _) => CacheMode::Unsafe,
            (true, _, true) => CacheMode::None,
            (true, _, false) => CacheMode::Directsync,
            (false, _, true) => CacheMode::Writeback,
            (false, _, false) => CacheMode::Writethrough,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::Directsync => "directsync",
            CacheMode::Unsafe => "unsafe",
        }
    }

    /// The image is opened with O_DIRECT.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }

    /// Every write is synced before it completes.
    pub fn syncs_writes(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }
}

/// One disk's cache mode, as the report states it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskCache {
    /// The disk's top image, as the layout names it.
    pub disk: String,
    /// `None`: the command line did not say (and has no default we know).
    pub mode: Option<CacheMode>,
    /// Where the mode came from: "command line", or "default of <program>".
    pub from: String,
    /// Whether the kernel reported the image open with O_DIRECT (`None`: not seen
    /// open while the recorder looked).
    pub opened_direct: Option<bool>,
}

impl DiskCache {
    /// Whether the image was opened with O_DIRECT: the kernel's word when it was seen
    /// open, else the command line's; `None` when neither says.
    pub fn direct(&self) -> Option<bool> {
        self.opened_direct.or(self.mode.map(CacheMode::direct))
    }

    /// One line for the summary: the mode, where it came from, and the kernel's word
    /// when it contradicts it.
    pub fn describe(&self) -> String {
        let mut s = match self.mode {
            Some(m) => format!("{} ({})", m.name(), self.from),
            None => "not on the command line".to_owned(),
        };
        match (self.opened_direct, self.mode) {
            (Some(d), Some(m)) if d != m.direct() => s.push_str(&format!(
                "; but the image was opened {}",
                if d {
                    "with O_DIRECT"
                } else {
                    "without O_DIRECT"
                }
            )),
            (Some(d), None) => s.push_str(if d {
                "; opened with O_DIRECT (none or directsync)"
            } else {
                "; opened without O_DIRECT (through the host page cache)"
            }),
            _ => {}
        }
        s
    }
}

/// The cache mode of every disk of the layout.
pub fn disk_caches(header: &Header, end: Option<&End>, layout: &Layout) -> Vec<DiskCache> {
    // Each disk's VM's command line and open files (a trace of several VMs lists them).
    let vms = end.map_or(&[][..], |e| &e.vms[..]);
    let cmd = header.target.command.clone().unwrap_or_default();
    let parsed_one = from_command(&cmd);
    let parsed_vms: Vec<Parsed> = vms.iter().map(|v| from_command(&v.command)).collect();
    layout
        .disks
        .iter()
        .map(|d| {
            let same = |p: &str| same_file(p, &d.path);
            let vm = vms.get(usize::from(d.vm)).filter(|_| vms.len() > 1);
            let parsed = match vm {
                Some(_) => &parsed_vms[usize::from(d.vm)],
                None => &parsed_one,
            };
            let open_files = match (vm, end) {
                (Some(v), _) => &v.open_files[..],
                (None, Some(e)) => &e.open_files[..],
                (None, None) => &[][..],
            };
            let (mode, from) = match parsed {
                Parsed::All(m, from) => (*m, from.clone()),
                Parsed::Drives(drives) => match drives.iter().find(|(f, _)| same(f)) {
                    Some((_, m)) => (Some(*m), "command line".to_owned()),
                    None => (None, String::new()),
                },
            };
            let opened_direct = open_files
                .iter()
                .find(|f| same(&f.path.to_string_lossy()))
                .map(|f| f.direct);
            DiskCache {
                disk: d.path.clone(),
                mode,
                from,
                opened_direct,
            }
        })
        .collect()
}

/// Whether two paths name one file (offline, where the files may be gone: one the
/// other's tail).
pub(crate) fn same_file(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let canon = |p: &str| Path::new(p).canonicalize().ok();
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        // Offline, the files may be gone: one path the other's tail (a command line's
        // relative path), not merely the same file name in two directories.
        _ => {
            let (a, b) = (Path::new(a), Path::new(b));
            a.file_name().is_some() && (a.ends_with(b) || b.ends_with(a))
        }
    }
}

/// What a command line says.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// One mode for every image (qemu-io, qemu-nbd), and where it came from; `None`
    /// when neither the line nor the program's default says.
    All(Option<CacheMode>, String),
    /// Per image file, for a system emulator's drives and block nodes.
    Drives(Vec<(String, CacheMode)>),
}

/// The cache modes a QEMU command line asks for.
pub fn from_command(cmd: &[String]) -> Parsed {
    let prog = cmd
        .first()
        .and_then(|p| Path::new(p).file_name())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // qemu-io and qemu-nbd: one image, `-t MODE` / `--cache=MODE`, `-n` for none.
    let default = match prog.as_str() {
        // qemu-io opens images write-through unless told otherwise.
        p if p.starts_with("qemu-io") => Some(CacheMode::Writethrough),
        // qemu-nbd leaves flushing to its client.
        p if p.starts_with("qemu-nbd") => Some(CacheMode::Writeback),
        p if p.starts_with("qemu-img") => None,
        _ => return Parsed::Drives(drives(&cmd[1.min(cmd.len())..])),
    };
    let mut mode = None;
    let mut it = cmd.iter().skip(1);
    while let Some(a) = it.next() {
        let value = match a.as_str() {
            "-t" | "--cache" => it.next().cloned(),
            "-n" | "--nocache" => Some("none".to_owned()),
            _ => a
                .strip_prefix("--cache=")
                .or_else(|| a.strip_prefix("-t").filter(|v| !v.is_empty()))
                .map(str::to_owned),
        };
        if let Some(m) = value.as_deref().and_then(CacheMode::parse) {
            mode = Some(m);
        }
    }
    match (mode, default) {
        (Some(m), _) => Parsed::All(Some(m), "command line".to_owned()),
        (None, Some(d)) => Parsed::All(Some(d), format!("default of {prog}")),
        (None, None) => Parsed::All(None, String::new()),
    }
}

/// One `key=value,...` option of a system emulator, or its JSON form.
pub(crate) fn keyval(v: &str) -> HashMap<String, String> {
    if v.trim_start().starts_with('{')
        && let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(v)
    {
        let mut out = HashMap::new();
        flatten("", &serde_json::Value::Object(o), &mut out);
        return out;
    }
    // A doubled comma is a comma inside a value.
    let joined = v.replace(",,", "\u{0}");
    joined
        .split(',')
        .filter_map(|p| {
            let (k, val) = p.split_once('=')?;
            Some((k.to_owned(), val.replace('\u{0}', ",")))
        })
        .collect()
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut HashMap<String, String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn on(v: Option<&String>) -> Option<bool> {
    match v?.as_str() {
        "on" | "true" | "yes" | "y" => Some(true),
        "off" | "false" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// `-drive`s, and `-blockdev` nodes with the `-device` using them: each image file and
/// the mode it was asked for.
fn drives(args: &[String]) -> Vec<(String, CacheMode)> {
    let mut out = Vec::new();
    let mut nodes: Vec<HashMap<String, String>> = Vec::new();
    let mut devices: Vec<HashMap<String, String>> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let opt = a.trim_start_matches('-');
        if !a.starts_with('-') || !matches!(opt, "drive" | "blockdev" | "device") {
            continue;
        }
        let Some(v) = it.next() else { break };
        let kv = keyval(v);
        match opt {
            "drive" => {
                let Some(file) = kv.get("file").or_else(|| kv.get("file.filename")) else {
                    continue;
                };
                let mode = kv
                    .get("cache")
                    .and_then(|c| CacheMode::parse(c))
                    .unwrap_or_else(|| {
                        CacheMode::from_switches(
                            on(kv.get("cache.direct")).unwrap_or(false),
                            on(kv.get("cache.no-flush")).unwrap_or(false),
                            on(kv.get("cache.writeback")).unwrap_or(true),
                        )
                    });
                out.push((file.clone(), mode));
            }
            "blockdev" => nodes.push(kv),
            _ => devices.push(kv),
        }
    }
    // A -blockdev node's cache switches apply to the nodes below it unless they set
    // their own; the device's write-cache (default on) is the third switch.
    for n in &nodes {
        let Some(file) = n.get("filename") else {
            continue;
        };
        let name = n.get("node-name").map(String::as_str).unwrap_or("");
        // The chain from this file node up: the nodes whose `file` is it, and so on.
        let mut chain = vec![n];
        let mut cur = name;
        for _ in 0..8 {
            let Some(up) = nodes
                .iter()
                .find(|u| !cur.is_empty() && u.get("file").map(String::as_str) == Some(cur))
            else {
                break;
            };
            chain.push(up);
            cur = up.get("node-name").map(String::as_str).unwrap_or("");
        }
        let switch = |k: &str| chain.iter().find_map(|c| on(c.get(k)));
        let top = chain
            .last()
            .and_then(|c| c.get("node-name"))
            .map(String::as_str)
            .unwrap_or("");
        let write_cache = devices
            .iter()
            .find(|d| !top.is_empty() && d.get("drive").map(String::as_str) == Some(top))
            .and_then(|d| on(d.get("write-cache")))
            .unwrap_or(true);
        out.push((
            file.clone(),
            CacheMode::from_switches(
                switch("cache.direct").unwrap_or(false),
                switch("cache.no-flush").unwrap_or(false),
                write_cache,
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn qemu_io_modes_and_its_default() {
        let p = |s: &[&str]| from_command(&args(s));
        assert_eq!(
            p(&[
                "/opt/q/bin/qemu-io",
                "-f",
                "qcow2",
                "-t",
                "writeback",
                "-c",
                "read 0 4k",
                "x"
            ]),
            Parsed::All(Some(CacheMode::Writeback), "command line".into())
        );
        assert_eq!(
            p(&["qemu-io", "--cache=directsync", "x"]),
            Parsed::All(Some(CacheMode::Directsync), "command line".into())
        );
        assert_eq!(
            p(&["qemu-io", "-n", "x"]),
            Parsed::All(Some(CacheMode::None), "command line".into())
        );
        assert_eq!(
            p(&["qemu-io", "-c", "write 0 4k", "x"]),
            Parsed::All(Some(CacheMode::Writethrough), "default of qemu-io".into())
        );
        assert_eq!(
            p(&["qemu-img", "convert", "a", "b"]),
            Parsed::All(None, String::new())
        );
    }

    #[test]
    fn drives_blockdevs_and_devices() {
        let cmd = args(&[
            "qemu-system-x86_64",
            "-drive",
            "file=/i/a.qcow2,if=none,id=d0,format=qcow2,cache=unsafe",
            "-drive",
            "file=/i/b.qcow2,if=virtio",
            "-drive",
            "file=/i/c,,d.raw,cache.direct=on,format=raw",
            "-blockdev",
            r#"{"driver":"file","filename":"/i/e.qcow2","node-name":"f1","cache":{"direct":true,"no-flush":false}}"#,
            "-blockdev",
            r#"{"node-name":"q1","driver":"qcow2","file":"f1"}"#,
            "-device",
            "virtio-blk-pci,drive=q1,write-cache=off",
            "-blockdev",
            "driver=file,filename=/i/f.raw,node-name=f2",
            "-device",
            "virtio-blk-pci,drive=f2",
        ]);
        let Parsed::Drives(d) = from_command(&cmd) else {
            panic!("a system emulator's drives");
        };
        assert_eq!(
            d,
            vec![
                ("/i/a.qcow2".to_owned(), CacheMode::Unsafe),
                ("/i/b.qcow2".to_owned(), CacheMode::Writeback),
                ("/i/c,d.raw".to_owned(), CacheMode::None),
                ("/i/e.qcow2".to_owned(), CacheMode::Directsync),
                ("/i/f.raw".to_owned(), CacheMode::Writeback),
            ]
        );
    }

    #[test]
    fn offline_a_relative_path_names_its_file_but_a_namesake_elsewhere_does_not() {
        assert!(same_file("vm.qcow2", "/nonexistent/vm/vm.qcow2"));
        assert!(same_file("vm/vm.qcow2", "/nonexistent/vm/vm.qcow2"));
        assert!(!same_file(
            "/nonexistent/a/vm.qcow2",
            "/nonexistent/b/vm.qcow2"
        ));
    }

    #[test]
    fn the_kernels_open_flags_say_direct_before_the_command_line() {
        let c = |mode, opened_direct| DiskCache {
            disk: "/dev/vg/lv".into(),
            mode,
            from: "command line".into(),
            opened_direct,
        };
        assert_eq!(
            c(Some(CacheMode::Writeback), Some(true)).direct(),
            Some(true)
        );
        assert_eq!(c(Some(CacheMode::None), None).direct(), Some(true));
        assert_eq!(c(Some(CacheMode::Unsafe), None).direct(), Some(false));
        assert_eq!(c(None, None).direct(), None);
    }

    #[test]
    fn the_kernel_contradicting_the_command_line_is_said() {
        let c = DiskCache {
            disk: "/i/a".into(),
            mode: Some(CacheMode::Writeback),
            from: "command line".into(),
            opened_direct: Some(true),
        };
        assert_eq!(
            c.describe(),
            "writeback (command line); but the image was opened with O_DIRECT"
        );
        let c = DiskCache {
            mode: None,
            opened_direct: Some(false),
            ..c
        };
        assert!(c.describe().contains("without O_DIRECT"));
    }
}
