//! The processes to trace: running QEMUs by pid (or all of one binary's, also those
//! started while recording), or a command started held at its first instruction; their
//! binary, image files and the block devices below them.

use super::RecordError;
use super::Target;
use super::child::GatedChild;
use crate::elf::Symbols;
use crate::qemu::{self, QemuInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use viopath_layouts::host::{DevId, DeviceKind, FileMap, Topology};
use viopath_probes::chunks::{OpenFile, VmInfo, VmSkipped};

/// One QEMU process traced.
pub(super) struct Vm {
    pub(super) pid: u32,
    /// Its files (images among them), rescanned while recording.
    pub(super) files: Vec<PathBuf>,
    /// The files its command line names, as disks or not.
    pub(super) named: qemu::ArgFiles,
    /// Its command line: the command started, or the running process's.
    pub(super) command: Vec<String>,
    /// The command started, held until every probe is attached.
    pub(super) child: Option<GatedChild>,
    /// The libvirt domain it runs, when named by it.
    pub(super) domain: Option<viopath_probes::chunks::Domain>,
    /// The regular files open and their flags, as last seen.
    pub(super) open_files: Vec<OpenFile>,
    pub(super) threads: BTreeSet<u32>,
    pub(super) traced_from_ns: u64,
    /// When and why its tracing ended before the recording's.
    pub(super) ended: Option<(u64, String)>,
}

impl Vm {
    fn new(pid: u32, files: Vec<PathBuf>, command: Vec<String>) -> Vm {
        Vm {
            pid,
            files,
            named: qemu::ArgFiles::of(&command[1.min(command.len())..]),
            command,
            child: None,
            domain: None,
            open_files: Vec::new(),
            threads: BTreeSet::new(),
            traced_from_ns: 0,
            ended: None,
        }
    }

    /// Its name in the report: the libvirt domain, QEMU's `-name`, else the pid.
    pub(super) fn name(&self) -> String {
        if let Some(d) = &self.domain {
            return d.name.clone();
        }
        viopath_probes::chunks::qemu_name(&self.command)
            .unwrap_or_else(|| format!("pid {}", self.pid))
    }

    /// Its threads now, added to those seen before (a thread that started and ended
    /// between two looks is named by its `thread` event).
    pub(super) fn note_threads(&mut self) {
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) {
            self.threads.extend(
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
            );
        }
    }

    pub(super) fn info(&self) -> VmInfo {
        VmInfo {
            pid: self.pid,
            name: self.name(),
            command: self.command.clone(),
            domain: self.domain.clone(),
            images: self.files.clone(),
            open_files: self.open_files.clone(),
            threads: self.threads.iter().copied().collect(),
            traced_from_ns: self.traced_from_ns,
            traced_until_ns: self.ended.as_ref().map(|e| e.0),
            ended: self.ended.as_ref().map(|e| e.1.clone()),
        }
    }
}

/// What `record` traces.
pub(super) struct Traced {
    pub(super) vms: Vec<Vm>,
    pub(super) qemu: Option<QemuInfo>,
    pub(super) symbols: Option<Symbols>,
    /// The binary's file (device, inode): a process found later must run the same one.
    pub(super) binary_id: Option<(u64, u64)>,
    /// Pick up processes of the same binary started while recording.
    pub(super) all: bool,
    pub(super) skipped: Vec<VmSkipped>,
}

impl Traced {
    /// Every pid traced so far.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.vms.iter().map(|v| v.pid).collect()
    }

    /// Whether one process is traced and no other can be (the kernel side then
    /// compares its pid instead of looking it up).
    pub(super) fn single(&self) -> Option<u32> {
        (self.vms.len() == 1 && !self.all).then(|| self.vms[0].pid)
    }
}

/// Find the targets' processes, binary, symbols and files; start the command (held).
pub(super) fn resolve(target: &Target, qemu_binary: Option<&Path>) -> Result<Traced, RecordError> {
    let mut all = false;
    let mut vms = Vec::new();
    let mut skipped = Vec::new();
    let mut binary = None;
    match target {
        Target::Command(argv) => {
            binary = qemu::which(&argv[0]);
            let files = qemu::files_in_args(&argv[1..]);
            let c = GatedChild::spawn(argv)?;
            let mut vm = Vm::new(c.child.id(), files, argv.clone());
            vm.child = Some(c);
            vms.push(vm);
        }
        Target::Pids(pids) => {
            for &pid in pids {
                if vms.iter().any(|v: &Vm| v.pid == pid) {
                    continue;
                }
                let (exe, vm) = running(pid)?;
                match &binary {
                    None => binary = Some(exe),
                    Some(b) if same_binary(b, &exe) => {}
                    Some(b) => {
                        return Err(RecordError::OtherBinary {
                            pid,
                            exe: exe.display().to_string(),
                            first: b.display().to_string(),
                        });
                    }
                }
                vms.push(vm);
            }
        }
        Target::Domain(name) => {
            let r = crate::libvirt::running(name, Path::new(crate::libvirt::RUN_DIR))?;
            let (exe, mut vm) = running(r.pid)?;
            vm.domain = Some(r.domain);
            binary = Some(exe);
            vms.push(vm);
        }
        Target::All => {
            all = true;
            binary = qemu_binary.map(Path::to_owned);
            for (pid, exe) in system_emulators(&mut BTreeMap::new()) {
                match &binary {
                    None => binary = Some(exe.clone()),
                    Some(b) if same_binary(b, &exe) => {}
                    Some(b) => {
                        skipped.push(other_binary(pid, &exe, b));
                        continue;
                    }
                }
                // Gone since the look, or not readable: not traced, said why.
                match running(pid) {
                    Ok((_, vm)) => vms.push(vm),
                    Err(e) => skipped.push(VmSkipped {
                        pid,
                        exe: exe.display().to_string(),
                        why: viopath_layouts::error_text(&e),
                    }),
                }
            }
            if binary.is_none() {
                return Err(RecordError::NoQemuRunning);
            }
        }
    }
    let qemu = binary.as_ref().map(|b| QemuInfo::probe(b));
    let symbols = match &binary {
        Some(b) => Some(Symbols::load(b).map_err(|e| RecordError::Load(Box::new(e)))?),
        None => None,
    };
    let binary_id = binary
        .as_ref()
        .and_then(|b| std::fs::metadata(b).ok())
        .map(|m| (m.dev(), m.ino()));
    Ok(Traced {
        vms,
        qemu,
        symbols,
        binary_id,
        all,
        skipped,
    })
}

fn other_binary(pid: u32, exe: &Path, first: &Path) -> VmSkipped {
    VmSkipped {
        pid,
        exe: exe.display().to_string(),
        why: format!(
            "runs another QEMU binary than the one traced ({}); record it separately",
            first.display()
        ),
    }
}

/// Whether two paths are one binary file (the same device and inode).
fn same_binary(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => a == b,
    }
}

/// Every process running a QEMU system emulator, by its binary's own version text
/// ("QEMU emulator version ..."), not by its name: libvirt and others rename QEMU's
/// process. Each distinct binary is read once (`seen` keeps the answers between looks).
pub(super) fn system_emulators(seen: &mut BTreeMap<(u64, u64), bool>) -> Vec<(u32, PathBuf)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(md) = std::fs::metadata(format!("/proc/{pid}/exe")) else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        let emulator = *seen.entry((md.dev(), md.ino())).or_insert_with(|| {
            // Read through /proc: the file may have been replaced (a package update)
            // while this process runs the old one.
            let info = QemuInfo::probe(Path::new(&format!("/proc/{pid}/exe")));
            info.version_line.starts_with("QEMU emulator version")
        });
        if emulator {
            out.push((pid, exe));
        }
    }
    out.sort();
    out
}

/// A process `--all` found while recording: traced if it runs the traced binary.
pub(super) fn found(pid: u32, exe: &Path, binary_id: Option<(u64, u64)>) -> Result<Vm, VmSkipped> {
    let id = std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if id.is_none() || id != binary_id {
        return Err(VmSkipped {
            pid,
            exe: exe.display().to_string(),
            why: "runs another QEMU binary than the one traced; record it separately".into(),
        });
    }
    running(pid).map(|(_, vm)| vm).map_err(|e| VmSkipped {
        pid,
        exe: exe.display().to_string(),
        why: viopath_layouts::error_text(&e),
    })
}

/// A running QEMU's binary, files and command line.
fn running(pid: u32) -> Result<(PathBuf, Vm), RecordError> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|source| {
        if Path::new(&format!("/proc/{pid}")).exists() {
            RecordError::ExeUnreadable { pid, source }
        } else {
            RecordError::PidNotFound(pid)
        }
    })?;
    let info = QemuInfo::probe(&exe);
    if !info.is_qemu() {
        return Err(RecordError::NotQemu {
            pid,
            exe: exe.display().to_string(),
            version: info.version_line,
        });
    }
    let cmdline: Vec<String> = super::read_trim(&format!("/proc/{pid}/cmdline"))
        .split('\0')
        .map(str::to_owned)
        .collect();
    // Not the program itself.
    let named = qemu::ArgFiles::of(&cmdline[1.min(cmdline.len())..]);
    let mut files = qemu::images_among(qemu::open_files(pid), &named);
    files.extend(named.disks);
    files.sort();
    files.dedup();
    Ok((exe, Vm::new(pid, files, cmdline)))
}

/// The device number of the superblock `file` is on, as the kernel's fsync events name
/// it (`inode->i_sb->s_dev`): mountinfo's, for the mount point holding the file.
fn superblock_dev(file: &Path) -> Option<DevId> {
    let path = std::fs::canonicalize(file).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (dev, mnt) = (f.get(2)?, f.get(4)?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), dev.parse::<DevId>().ok()))
        })
        .max_by_key(|(n, _)| *n)
        .and_then(|(_, d)| d)
}

/// Every block device at or below `dev`: partitions lead to their disk, loop devices to
/// the device of their backing file, device-mapper to its targets' devices, md to its
/// members.
pub fn devices_below(topo: &mut Topology, dev: DevId, out: &mut BTreeSet<DevId>) {
    if !out.insert(dev) || out.len() > 256 {
        return;
    }
    let Ok(d) = topo.device(dev) else { return };
    match &d.kind {
        DeviceKind::Partition { parent, .. } => devices_below(topo, *parent, out),
        DeviceKind::Loop {
            backing_file: Some(p),
            ..
        } => {
            if let Ok(fm) = FileMap::load(p) {
                for d in fm.devices() {
                    devices_below(topo, d, out);
                }
            }
        }
        DeviceKind::DeviceMapper { targets, .. } => {
            for t in targets {
                match &t.kind {
                    viopath_layouts::host::DmTargetKind::Linear { dev, .. }
                    | viopath_layouts::host::DmTargetKind::Crypt { dev, .. } => {
                        devices_below(topo, *dev, out)
                    }
                    viopath_layouts::host::DmTargetKind::Striped { stripes, .. } => {
                        for (d, _) in stripes {
                            devices_below(topo, *d, out);
                        }
                    }
                    viopath_layouts::host::DmTargetKind::Other { .. } => {}
                }
            }
        }
        DeviceKind::Md { members, .. } => {
            for m in members {
                devices_below(topo, m.dev, out);
            }
        }
        _ => {}
    }
}

/// Devices holding `files`, and everything below them.
pub(super) fn devices_for(files: &[PathBuf]) -> BTreeSet<DevId> {
    let mut topo = Topology::system();
    let mut out = BTreeSet::new();
    for f in files {
        use std::os::unix::fs::MetadataExt;
        if let Ok(md) = std::fs::metadata(f) {
            // A block device given as a disk is itself under the image; a file, the
            // device its filesystem is on.
            let dev = if std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type()) {
                DevId::from_dev_t(md.rdev())
            } else {
                DevId::from_dev_t(md.dev())
            };
            if dev.major != 0 {
                devices_below(&mut topo, dev, &mut out);
            } else if let Ok(fm) = FileMap::load(f) {
                // No device of its own (btrfs): the devices its filesystem names, and
                // its anonymous number, which the kernel's fsync events give.
                for d in fm.devices() {
                    devices_below(&mut topo, d, &mut out);
                }
                // The superblock's number, not stat's (a btrfs subvolume's own).
                out.extend(superblock_dev(f));
            }
        }
    }
    out
}
