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
/// root in the guest, which then powers off.
pub fn qemu_args(assets: &GuestAssets, disk: &Path, aio: &str, workload: &str) -> Vec<String> {
    qemu_args_disks(assets, &[disk], aio, workload)
}

/// x86 Linux's `COMMAND_LINE_SIZE`, the terminating zero included.
pub const MAX_CMDLINE: usize = 2048;

/// [`qemu_args`] with several disks: `disks[0]` is /dev/vda, the next /dev/vdb, ...
pub fn qemu_args_disks(
    assets: &GuestAssets,
    disks: &[&Path],
    aio: &str,
    workload: &str,
) -> Vec<String> {
    let d = &assets.dir;
    let append = format!(
        "console=ttyS0 quiet panic=-1 viopath.run={}",
        base64(workload.as_bytes())
    );
    // The kernel keeps only this much of its command line (x86's COMMAND_LINE_SIZE):
    // a longer one leaves the guest hanging before its first message, not failing.
    assert!(
        append.len() < MAX_CMDLINE,
        "the guest workload is too long for the kernel command line: {} of {MAX_CMDLINE} bytes once base64-encoded",
        append.len()
    );
    let mut args: Vec<String> = [
        "-M",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "512",
        "-smp",
        "1",
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
        &d.join("initramfs.cpio.gz").display().to_string(),
        "-append",
        &append,
    ]
    .map(String::from)
    .to_vec();
    for (i, disk) in disks.iter().enumerate() {
        args.extend([
            "-drive".to_owned(),
            format!(
                "file={},if=none,id=d{i},format=qcow2,cache=none,aio={aio},discard=unmap",
                disk.display()
            ),
            "-device".to_owned(),
            format!("virtio-blk-pci,drive=d{i}"),
        ]);
    }
    args
}

/// Standard base64 with padding (the guest decodes it with busybox `base64 -d`).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
