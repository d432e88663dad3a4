//! The process to trace: a running QEMU by pid, or a command started held at its first
//! instruction; its binary, its image files and the block devices below them.

use super::RecordError;
use super::Target;
use super::child::GatedChild;
use crate::elf::Symbols;
use crate::qemu::{self, QemuInfo};
use std::collections::BTreeSet;
use std::path::PathBuf;
use viopath_layouts::host::{DevId, DeviceKind, FileMap, Topology};

/// What `record` traces.
pub(super) struct Traced {
    pub(super) pid: u32,
    /// Its files (images among them), rescanned while recording.
    pub(super) files: Vec<PathBuf>,
    /// The image files its command line names.
    pub(super) named: Vec<PathBuf>,
    /// Its command line: the command started, or the running process's.
    pub(super) command: Vec<String>,
    /// The command started, held until every probe is attached.
    pub(super) child: Option<GatedChild>,
    pub(super) qemu: Option<QemuInfo>,
    pub(super) symbols: Option<Symbols>,
    /// The libvirt domain it runs, when named by it.
    pub(super) domain: Option<viopath_probes::chunks::Domain>,
}

/// Find the target's process, binary, symbols and files; start the command (held).
pub(super) fn resolve(target: &Target) -> Result<Traced, RecordError> {
    let mut child = None;
    let mut domain = None;
    let (pid, binary, files, command) = match target {
        Target::Command(argv) => {
            let binary = qemu::which(&argv[0]);
            let files = qemu::files_in_args(&argv[1..]);
            let c = GatedChild::spawn(argv)?;
            let pid = c.child.id();
            child = Some(c);
            (pid, binary, files, argv.clone())
        }
        Target::Pid(pid) => running(*pid)?,
        Target::Domain(name) => {
            let r = crate::libvirt::running(name, std::path::Path::new(crate::libvirt::RUN_DIR))?;
            domain = Some(r.domain);
            running(r.pid)?
        }
    };
    let qemu = binary.as_ref().map(|b| QemuInfo::probe(b));
    let symbols = match &binary {
        Some(b) => Some(Symbols::load(b).map_err(|e| RecordError::Load(Box::new(e)))?),
        None => None,
    };
    let named = qemu::files_in_args(&command[1.min(command.len())..]);
    Ok(Traced {
        pid,
        files,
        named,
        command,
        child,
        qemu,
        symbols,
        domain,
    })
}

/// A process found: its pid, binary, files and command line.
type Found = (u32, Option<PathBuf>, Vec<PathBuf>, Vec<String>);

/// A running QEMU's binary, files and command line.
fn running(pid: u32) -> Result<Found, RecordError> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|_| RecordError::PidNotFound(pid))?;
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
    let named = qemu::files_in_args(&cmdline[1.min(cmdline.len())..]);
    let mut files = qemu::images_among(qemu::open_files(pid), &named);
    files.extend(named);
    files.sort();
    files.dedup();
    Ok((pid, Some(exe), files, cmdline))
}

/// Every block device at or below `dev`: partitions lead to their disk, loop devices to
/// the device of their backing file, device-mapper to its targets' devices.
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
                devices_below(topo, fm.dev, out);
            }
        }
        DeviceKind::DeviceMapper { targets, .. } => {
            for t in targets {
                match &t.kind {
                    viopath_layouts::host::DmTargetKind::Linear { dev, .. } => {
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
            }
        }
    }
    out
}
