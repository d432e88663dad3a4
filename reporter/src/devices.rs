//! Which guest device each disk is, from QEMU's command line: the SCSI address a
//! `scsi-hd` (or `scsi-block`) on a virtio-scsi controller gives its drive, assigned
//! the way QEMU assigns what the line leaves out. Reports name a SCSI disk by it, and
//! the join gives a LUN's commands that reach no image file (a flush with nothing to
//! sync, an INQUIRY, a read of unallocated clusters) their disk.

use crate::cache::{keyval, same_file};
use std::collections::HashMap;

/// A SCSI disk's address on its controller's bus: the guest's H:C:T:L without the
/// host number (the guest's own numbering of its controllers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiAddr {
    pub channel: u32,
    pub target: u32,
    pub lun: u32,
}

/// One SCSI disk of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiDisk {
    /// Its image file as the command line names it.
    pub file: String,
    /// Its controller (`bus` up to its dot; "" for the default bus).
    pub controller: String,
    pub addr: ScsiAddr,
}

/// The SCSI disks of a system emulator's command line, in its order, with the number
/// of virtio-scsi controllers it has.
pub fn scsi_disks(cmd: &[String]) -> (Vec<ScsiDisk>, usize) {
    let mut drives: HashMap<String, String> = HashMap::new();
    let mut nodes: Vec<HashMap<String, String>> = Vec::new();
    let mut devices: Vec<HashMap<String, String>> = Vec::new();
    let mut it = cmd.iter().skip(1);
    while let Some(a) = it.next() {
        let opt = a.trim_start_matches('-');
        if !a.starts_with('-') || !matches!(opt, "drive" | "blockdev" | "device") {
            continue;
        }
        let Some(v) = it.next() else { break };
        let mut kv = keyval(v);
        match opt {
            "drive" => {
                if let (Some(id), Some(f)) = (
                    kv.get("id").cloned(),
                    kv.get("file").or_else(|| kv.get("file.filename")).cloned(),
                ) {
                    drives.insert(id, f);
                }
            }
            "blockdev" => nodes.push(kv),
            _ => {
                // The driver may come first without its key: `-device scsi-hd,...`.
                if !kv.contains_key("driver")
                    && let Some(first) = v.split(',').next().filter(|f| !f.contains('='))
                {
                    kv.insert("driver".into(), first.to_owned());
                }
                devices.push(kv);
            }
        }
    }
    // A -blockdev node's image file: its own, or that of the node it is a format on.
    let file_of = |name: &str| -> Option<String> {
        let mut cur = name.to_owned();
        for _ in 0..8 {
            let n = nodes
                .iter()
                .find(|n| n.get("node-name").map(String::as_str) == Some(cur.as_str()))?;
            if let Some(f) = n.get("filename").or_else(|| n.get("file.filename")) {
                return Some(f.clone());
            }
            cur = n.get("file")?.clone();
        }
        None
    };
    let controllers = devices
        .iter()
        .filter(|d| {
            d.get("driver")
                .is_some_and(|x| x.starts_with("virtio-scsi"))
        })
        .count();
    let mut out: Vec<ScsiDisk> = Vec::new();
    for d in &devices {
        if !matches!(
            d.get("driver").map(String::as_str),
            Some("scsi-hd" | "scsi-block")
        ) {
            continue;
        }
        let Some(drive) = d.get("drive") else {
            continue;
        };
        let Some(file) = drives.get(drive).cloned().or_else(|| file_of(drive)) else {
            continue;
        };
        let controller = d
            .get("bus")
            .map(|b| b.split('.').next().unwrap_or("").to_owned())
            .unwrap_or_default();
        let num = |k: &str| d.get(k).and_then(|v| v.parse::<u32>().ok());
        let channel = num("channel").unwrap_or(0);
        let taken = |out: &[ScsiDisk], target: u32, lun: u32| {
            out.iter().any(|o| {
                o.controller == controller
                    && o.addr
                        == ScsiAddr {
                            channel,
                            target,
                            lun,
                        }
            })
        };
        // QEMU's scsi_qdev_realize: no target, the first free one at the LUN (0 if
        // not given either); a target but no LUN, its first free LUN.
        let (target, lun) = match (num("scsi-id"), num("lun")) {
            (Some(t), Some(l)) => (t, l),
            (None, l) => {
                let l = l.unwrap_or(0);
                let t = (0..=255).find(|&t| !taken(&out, t, l)).unwrap_or(0);
                (t, l)
            }
            (Some(t), None) => (t, (0..16384).find(|&l| !taken(&out, t, l)).unwrap_or(0)),
        };
        out.push(ScsiDisk {
            file,
            controller,
            addr: ScsiAddr {
                channel,
                target,
                lun,
            },
        });
    }
    (out, controllers)
}

/// Which of the layout's disks (by their top image's path) is at each SCSI address:
/// `None` for a disk that is not a SCSI disk of the command line. An address is only
/// given where the line has one virtio-scsi controller (the probes tell controllers
/// apart by pointer, which the line does not know).
pub fn scsi_addrs(cmd: &[String], disks: &[&str]) -> Vec<Option<ScsiAddr>> {
    let (scsi, controllers) = scsi_disks(cmd);
    disks
        .iter()
        .map(|p| {
            scsi.iter()
                .find(|s| same_file(&s.file, p))
                .filter(|_| controllers == 1)
                .map(|s| s.addr)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn addr(target: u32, lun: u32) -> ScsiAddr {
        ScsiAddr {
            channel: 0,
            target,
            lun,
        }
    }

    /// Addresses given, left out (QEMU assigns them in order), by -drive and by
    /// -blockdev, in both syntaxes.
    #[test]
    fn scsi_disks_and_the_addresses_qemu_gives_them() {
        let cmd = args(&[
            "qemu-system-x86_64",
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-drive",
            "file=/vm/a.qcow2,if=none,id=d0",
            "-device",
            "scsi-hd,bus=scsi0.0,scsi-id=0,lun=3,drive=d0",
            "-drive",
            "file=/vm/b.qcow2,if=none,id=d1",
            "-device",
            "scsi-hd,drive=d1",
            "-drive",
            "file=/vm/c.qcow2,if=none,id=d2",
            "-device",
            "scsi-hd,drive=d2",
            "-blockdev",
            r#"{"driver":"file","filename":"/vm/d.raw","node-name":"f3"}"#,
            "-blockdev",
            r#"{"driver":"raw","file":"f3","node-name":"n3"}"#,
            "-device",
            r#"{"driver":"scsi-hd","drive":"n3","scsi-id":0}"#,
            "-drive",
            "file=/vm/e.qcow2,if=none,id=d4",
            "-device",
            "virtio-blk-pci,drive=d4",
        ]);
        let (disks, controllers) = scsi_disks(&cmd);
        assert_eq!(controllers, 1);
        let got: Vec<(&str, ScsiAddr)> = disks.iter().map(|d| (d.file.as_str(), d.addr)).collect();
        assert_eq!(
            got,
            [
                ("/vm/a.qcow2", addr(0, 3)),
                // No address: the first free target at LUN 0 (target 0 has LUN 3 only).
                ("/vm/b.qcow2", addr(0, 0)),
                ("/vm/c.qcow2", addr(1, 0)),
                // A target, no LUN: its first free LUN.
                ("/vm/d.raw", addr(0, 1)),
            ]
        );
        let addrs = scsi_addrs(&cmd, &["/vm/c.qcow2", "/vm/e.qcow2"]);
        assert_eq!(addrs, [Some(addr(1, 0)), None]);
    }

    /// Two controllers: the same address on each, which the line cannot tell apart.
    #[test]
    fn two_controllers_give_no_addresses() {
        let cmd = args(&[
            "qemu-system-x86_64",
            "-device",
            "virtio-scsi-pci,id=s0",
            "-device",
            "virtio-scsi-pci,id=s1",
            "-drive",
            "file=/vm/a.qcow2,if=none,id=d0",
            "-device",
            "scsi-hd,bus=s0.0,drive=d0",
            "-drive",
            "file=/vm/b.qcow2,if=none,id=d1",
            "-device",
            "scsi-hd,bus=s1.0,drive=d1",
        ]);
        let (disks, controllers) = scsi_disks(&cmd);
        assert_eq!(controllers, 2);
        assert_eq!(disks[0].addr, disks[1].addr);
        assert_eq!(scsi_addrs(&cmd, &["/vm/a.qcow2"]), [None]);
    }
}
