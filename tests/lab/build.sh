#!/usr/bin/env bash
# Builds the lab: what a small hypervisor host boots under TCG to test the recorder on
# the kernels hypervisors run. One directory per kernel, each with
#   vmlinuz            Debian's own generic amd64 kernel (6.1 from bookworm, 6.12 from
#                      bookworm-backports), from its package
#   initramfs.cpio     the whole root filesystem (uncompressed: the kernel copies it
#                      faster than it could inflate it under TCG): busybox, kmod, the
#                      storage tools (lvm2, dmsetup, cryptsetup, mdadm, xfsprogs,
#                      btrfs-progs, ocfs2-tools, e2fsprogs) with their libraries from
#                      Debian's packages, our QEMU build's qemu-io, qemu-img and
#                      qemu-storage-daemon, and the kernel's storage modules
#   kernel-release     the kernel's release string (uname -r inside)
# The viopath binary is not in it: tests/e2e/lab_e2e.rs shares it with the lab (9p)
# with each run's script, so one cached lab serves every build.
#
# Usage: tests/lab/build.sh SUITE QEMU_PREFIX    (SUITE: bookworm | bookworm-backports)
# Prints the lab directory; does nothing else when it exists (cached by kernel).
# VIOPATH_CACHE overrides /var/cache/viopath. Needs root (apt) and ~150 MB of downloads.
set -euo pipefail
suite=${1:?usage: build.sh bookworm|bookworm-backports QEMU_PREFIX}
qemu_prefix=${2:?usage: build.sh SUITE QEMU_PREFIX}
cache=${VIOPATH_CACHE:-/var/cache/viopath}
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "lab: $*" >&2; }
# Bump when the root filesystem changes, so caches are rebuilt.
layout=2

# The storage tools the lab runs, from Debian's packages (installed here so their
# libraries can be followed with ldd, as Debian's own initramfs-tools does).
tools_pkgs="busybox-static kmod lvm2 thin-provisioning-tools dmsetup cryptsetup-bin mdadm \
xfsprogs btrfs-progs ocfs2-tools e2fsprogs util-linux"
need=()
for p in $tools_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    # mdadm's and lvm2's maintainer scripts want to rebuild an initramfs and start
    # services; neither applies to a build machine.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi

if [ "$suite" = bookworm-backports ]; then
    sh "$here/../qemu/backports.sh"
fi
meta="linux-image-amd64"
[ "$suite" = bookworm ] || meta="linux-image-amd64/$suite"
kpkg() {
    apt-cache depends "$meta" 2>/dev/null |
        sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1
}
pkg=$(kpkg)
if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(kpkg); fi
[ -n "$pkg" ] || { log "no $meta in the apt sources"; exit 1; }
kver=${pkg#linux-image-}
out=$cache/lab-$kver-v$layout
if [ -f "$out/initramfs.cpio" ] && [ -f "$out/vmlinuz" ]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/viopath-lab.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading $pkg ($suite)"
if [ "$suite" = bookworm ]; then
    apt-get download -qq "$pkg" 2>/dev/null || { apt-get update -qq && apt-get download -qq "$pkg"; }
else
    apt-get download -qq "$pkg/$suite" 2>/dev/null ||
        { apt-get update -qq && apt-get download -qq "$pkg/$suite"; }
fi
dpkg-deb -x ./linux-image-*.deb kernel
[ -f "kernel/boot/vmlinuz-$kver" ] || { log "the package has no vmlinuz-$kver"; exit 1; }

root=$work/root
mkdir -p "$root"/{bin,sbin,etc,dev,proc,sys,run,tmp,mnt,share,var/tmp,lib64} "$root/usr/lib/x86_64-linux-gnu"
ln -s ../bin "$root/usr/bin"
ln -s ../sbin "$root/usr/sbin"
apt-get download -qq busybox-static 2>/dev/null || true
if ls ./busybox-static_*.deb >/dev/null 2>&1; then
    dpkg-deb -x ./busybox-static_*.deb bb
    cp bb/bin/busybox "$root/bin/busybox"
else
    cp /bin/busybox "$root/bin/busybox"
fi

# An executable and every library it loads, at the paths the host has them
# (the dynamic loader looks there).
copy_libs() {
    ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
copy_exec() {
    local src=$1 dst=${2:-/bin/$(basename "$1")}
    [ -e "$src" ] || { log "missing $src"; exit 1; }
    mkdir -p "$root$(dirname "$dst")"
    cp -L "$src" "$root$dst"
    copy_libs "$src"
}
# bash runs the tests' scripts: busybox's sh would run its own applets (mkfs.ext4,
# losetup, blkid) ahead of the real tools on PATH.
for t in bash kmod lvm dmsetup cryptsetup mdadm mkfs.xfs xfs_io xfs_db mkfs.btrfs btrfs \
         mkfs.ocfs2 tunefs.ocfs2 debugfs.ocfs2 mounted.ocfs2 mke2fs debugfs filefrag \
         e2fsck thin_check thin_dump sfdisk blkid flock; do
    copy_exec "$(command -v "$t")"
done
# kmod's modprobe (busybox's cannot read compressed modules) in /sbin, which comes
# first in the lab's PATH, so busybox's applet links in /bin do not shadow it.
for t in modprobe insmod lsmod depmod; do ln -sf ../bin/kmod "$root/sbin/$t"; done
ln -sf mke2fs "$root/bin/mkfs.ext4"
# xfs_bmap is a shell script around xfs_io.
cp "$(command -v xfs_bmap)" "$root/bin/xfs_bmap"
for t in qemu-io qemu-img qemu-storage-daemon; do
    copy_exec "$qemu_prefix/bin/$t" "$qemu_prefix/bin/$t"
done
# What a Rust binary built on this machine (viopath) needs beyond the tools' libraries.
for lib in /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libm.so.6; do
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
done
# LVM without udev (the lab has none): no waiting for udev, and the thin tools found.
mkdir -p "$root/etc/lvm"
cat > "$root/etc/lvm/lvm.conf" <<'LVM'
activation {
    udev_sync = 0
    udev_rules = 0
}
devices {
    obtain_device_list_from_udev = 0
}
global {
    use_lvmetad = 0
    thin_check_executable = "/bin/thin_check"
}
LVM
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"

# The kernel's modules for storage, filesystems, virtio, 9p and crypto; the rest of
# the tree (network, graphics, sound) is left out to keep the archive small.
kmods=kernel/lib/modules/$kver
mkdir -p "$root/lib/modules/$kver/kernel"
cp "$kmods"/modules.* "$root/lib/modules/$kver/" 2>/dev/null || true
for d in drivers/block drivers/md drivers/nvme drivers/scsi drivers/virtio drivers/char \
         fs lib crypto arch block net/9p; do
    [ -d "$kmods/kernel/$d" ] || continue
    mkdir -p "$root/lib/modules/$kver/kernel/$d"
    cp -a "$kmods/kernel/$d/." "$root/lib/modules/$kver/kernel/$d/"
done

# The package leaves modules.dep to its maintainer script.
depmod -b "$root" "$kver"

cp "$here/init" "$root/init"
chmod +x "$root/init"
mkdir -p stage
cp "kernel/boot/vmlinuz-$kver" stage/vmlinuz
echo "$kver" > stage/kernel-release
(cd "$root" && find . | ./bin/busybox cpio -o -H newc 2>/dev/null) > stage/initramfs.cpio
mkdir -p "$cache"
rm -rf "$out"
mv stage "$out"
log "built $out ($(du -sh "$out/initramfs.cpio" | cut -f1) root filesystem)"
echo "$out"
