//! A test guest: the command line that boots the kernel and busybox initramfs built by
//! `tests/vm/guest.sh` under qemu-system-x86_64 (TCG: these machines have no usable
//! KVM) with virtio-blk disks, and runs a shell workload in the guest.
//!
//! Shared by `viopath demo` and the end-to-end VM test (which includes this file), so
//! both boot the same way. Only std: the test pulls it in with `#[path]`.

use std::path::{Path, PathBuf};

/// Where `tests/vm/guest.sh` leaves a guest: vmlinuz, initramfs.cpio.gz, firmware/.
#[derive(Debug, Clone)]
pub struct GuestAssets {
    pub dir: PathBuf,
}

impl GuestAssets {
    /// `$VIOPATH_GUEST_DIR`, else the newest `guest-*` under the cache directory
    /// (`$VIOPATH_CACHE`, default /var/cache/viopath).
    pub fn find() -> Option<GuestAssets> {
        let ok = |d: &Path| {
            ["vmlinuz", "initramfs.cpio.gz", "firmware/bios-256k.bin"]
                .iter()
                .all(|f| d.join(f).is_file())
        };
        if let Some(d) = std::env::var_os("VIOPATH_GUEST_DIR") {
            let d = PathBuf::from(d);
            return ok(&d).then_some(GuestAssets { dir: d });
        }
        let cache = std::env::var_os("VIOPATH_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/cache/viopath".into());
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("guest-"))
                    && ok(p)
            })
            .collect();
        dirs.sort();
        dirs.pop().map(|dir| GuestAssets { dir })
    }
}

/// The qemu-system arguments (without the program) that boot the guest with `disk`
/// (qcow2) as its virtio-blk disk /dev/vda, opened with O_DIRECT (`cache=none`) so
/// every guest request reaches the host's block devices, with QEMU's `aio` mode
/// (threads, native, io_uring) and `discard=unmap` (QEMU's default drops the guest's
/// discards before they reach the image), and run `workload` (a busybox sh script) as
/// root in the guest, which then powers off. Writes the guest's initramfs, with the
/// workload, into `scratch`.
pub fn qemu_args(
    assets: &GuestAssets,
    disk: &Path,
    aio: &str,
    workload: &str,
    scratch: &Path,
) -> std::io::Result<Vec<String>> {
    qemu_args_disks(assets, &[disk], aio, workload, scratch)
}

/// How the VM is shaped beyond its disks' `aio` mode: what production hosts vary.
#[derive(Debug, Clone, Default)]
pub struct VmShape {
    /// vCPUs (1 when 0).
    pub cpus: u32,
    /// virtio-blk queues per disk (QEMU's default when 0).
    pub queues: u32,
    /// Serve each disk from its own iothread rather than QEMU's main loop.
    pub iothread: bool,
    /// QEMU's IO throttling of each disk (`throttling.iops-total`).
    pub iops_limit: Option<u32>,
    /// A QMP socket to listen on (server, not waiting for a client).
    pub qmp: Option<PathBuf>,
    /// Start paused (`-S`), for a QMP client to set things up and `cont`.
    pub paused: bool,
    /// The disks' cache mode (`none` when unset: the image opened with O_DIRECT).
    pub cache: Option<&'static str>,
    /// The disks' image format (`qcow2` when unset).
    pub format: Option<&'static str>,
    /// Spread each disk's queues over this many iothreads of its own
    /// (`iothread-vq-mapping`, QEMU 9.0 on); 0: not.
    pub vq_iothreads: u32,
    /// Give the disks to the guest as SCSI disks (`scsi-hd`) on one virtio-scsi
    /// controller, disk *i* as LUN *i* of target 0 (/dev/sda, /dev/sdb, ... in the
    /// guest), rather than each as a virtio-blk device. `queues` and `iothread` then
    /// shape the controller.
    pub scsi: bool,
}

/// [`qemu_args`] with several disks: `disks[0]` is /dev/vda, the next /dev/vdb, ...
///
/// The workload goes to the guest as /workload.sh in a cpio archive appended to a copy
/// of the initramfs (the kernel unpacks both), which the guest's init runs: unlike the
/// kernel command line (2048 bytes on x86, and a longer one hangs the guest before its
/// first message), this has no length limit.
pub fn qemu_args_disks(
    assets: &GuestAssets,
    disks: &[&Path],
    aio: &str,
    workload: &str,
    scratch: &Path,
) -> std::io::Result<Vec<String>> {
    qemu_args_shaped(assets, disks, aio, &VmShape::default(), workload, scratch)
}

/// [`qemu_args_disks`] with the VM shaped by `shape`.
pub fn qemu_args_shaped(
    assets: &GuestAssets,
    disks: &[&Path],
    aio: &str,
    shape: &VmShape,
    workload: &str,
    scratch: &Path,
) -> std::io::Result<Vec<String>> {
    let mut initrd = std::fs::read(assets.dir.join("initramfs.cpio.gz"))?;
    // The kernel looks for the next archive at a 4-byte boundary, skipping zeros.
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    cpio_newc(&mut initrd, "workload.sh", 0o100_755, workload.as_bytes());
    cpio_newc(&mut initrd, "TRAILER!!!", 0, b"");
    let path = scratch.join("initramfs-workload.cpio");
    std::fs::write(&path, initrd)?;
    Ok(boot_args(assets, &path, disks, aio, shape))
}

/// One entry of an uncompressed `newc` cpio archive (what the kernel unpacks into its
/// initial root filesystem): header, name, data, each padded to 4 bytes.
fn cpio_newc(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let nlink = u32::from(mode != 0);
    let fields = [
        0,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    let start = out.len();
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    // Entries start 4-aligned.
    let pad = |out: &mut Vec<u8>, from: usize| {
        let n = out.len() - from;
        out.resize(from + n.next_multiple_of(4), 0);
    };
    pad(out, start);
    let at = out.len();
    out.extend_from_slice(data);
    pad(out, at);
}

fn boot_args(
    assets: &GuestAssets,
    initrd: &Path,
    disks: &[&Path],
    aio: &str,
    shape: &VmShape,
) -> Vec<String> {
    let d = &assets.dir;
    let cpus = shape.cpus.max(1).to_string();
    let mut args: Vec<String> = [
        "-M",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "512",
        "-smp",
        &cpus,
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-L",
        &d.join("firmware").display().to_string(),
        "-kernel",
        &d.join("vmlinuz").display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        "console=ttyS0 quiet panic=-1",
    ]
    .map(String::from)
    .to_vec();
    if let Some(q) = &shape.qmp {
        args.extend([
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", q.display()),
        ]);
    }
    if shape.paused {
        args.push("-S".to_owned());
    }
    if shape.scsi {
        let mut controller = "virtio-scsi-pci,id=scsi0".to_owned();
        if shape.queues > 0 {
            controller.push_str(&format!(",num_queues={}", shape.queues));
        }
        if shape.iothread {
            args.extend(["-object".to_owned(), "iothread,id=ioscsi".to_owned()]);
            controller.push_str(",iothread=ioscsi");
        }
        args.extend(["-device".to_owned(), controller]);
    }
    for (i, disk) in disks.iter().enumerate() {
        let mut drive = format!(
            "file={},if=none,id=d{i},format={},cache={},aio={aio},discard=unmap",
            disk.display(),
            shape.format.unwrap_or("qcow2"),
            shape.cache.unwrap_or("none")
        );
        if let Some(n) = shape.iops_limit {
            drive.push_str(&format!(",throttling.iops-total={n}"));
        }
        if shape.vq_iothreads > 0 {
            // The mapping is a list: only the JSON form of -device takes it.
            let mapping: Vec<String> = (0..shape.vq_iothreads)
                .map(|k| {
                    args.extend(["-object".to_owned(), format!("iothread,id=io{i}q{k}")]);
                    format!("{{\"iothread\":\"io{i}q{k}\"}}")
                })
                .collect();
            let queues = if shape.queues > 0 {
                shape.queues
            } else {
                2 * shape.vq_iothreads
            };
            let device = format!(
                "{{\"driver\":\"virtio-blk-pci\",\"drive\":\"d{i}\",\"id\":\"vd{i}\",\
                 \"num-queues\":{queues},\"iothread-vq-mapping\":[{}]}}",
                mapping.join(",")
            );
            args.extend(["-drive".to_owned(), drive, "-device".to_owned(), device]);
            continue;
        }
        if shape.scsi {
            let device = format!("scsi-hd,bus=scsi0.0,scsi-id=0,lun={i},drive=d{i},id=sd{i}");
            args.extend(["-drive".to_owned(), drive, "-device".to_owned(), device]);
            continue;
        }
        let mut device = format!("virtio-blk-pci,drive=d{i},id=vd{i}");
        if shape.queues > 0 {
            device.push_str(&format!(",num-queues={}", shape.queues));
        }
        if shape.iothread {
            args.extend(["-object".to_owned(), format!("iothread,id=io{i}")]);
            device.push_str(&format!(",iothread=io{i}"));
        }
        args.extend(["-drive".to_owned(), drive, "-device".to_owned(), device]);
    }
    args
}

#[cfg(test)]
mod tests {
    /// An entry as the newc format (cpio(5), "New ASCII Format") lays it out, written
    /// out by hand: magic, 13 fields of 8 hex digits, the name with its NUL padded to
    /// 4 bytes from the entry's start, then the data padded to 4 bytes.
    #[test]
    fn cpio_entries_are_newc() {
        let mut out = Vec::new();
        super::cpio_newc(&mut out, "ab", 0o100_755, b"xyz");
        let header = concat!(
            "070701", "00000000", "000081ED", "00000000", "00000000", "00000001", "00000000",
            "00000003", "00000000", "00000000", "00000000", "00000000", "00000003", "00000000",
        );
        let mut want = header.as_bytes().to_vec();
        // 110 + "ab\0" = 113: three zeros to 116; "xyz" and one zero to 120.
        want.extend_from_slice(b"ab\0\0\0\0xyz\0");
        assert_eq!(out, want);
        super::cpio_newc(&mut out, "TRAILER!!!", 0, b"");
        assert_eq!(out.len(), 120 + 124, "{}", String::from_utf8_lossy(&out));
        assert!(out[120..].starts_with(b"070701"));
    }
}
