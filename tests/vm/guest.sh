#!/bin/sh
# Builds what a test guest boots: a Debian cloud kernel (bzImage) and a busybox-static
# initramfs that loads the virtio-blk and virtio-scsi drivers (and SCSI disk support),
# runs a workload script given base64-encoded on the kernel command line
# (viopath.run=...; or /workload.sh from an appended cpio archive), and powers off.
# Also the SeaBIOS and QEMU option ROMs the QEMU from tests/qemu/build.sh boots with (that
# build installs no firmware blobs).
#
# Cached by kernel version: prints the directory and does nothing else when it exists.
#   tests/vm/guest.sh    -> /var/cache/viopath/guest-6.1.0-57-cloud-amd64-v3
# Files: vmlinuz, initramfs.cpio.gz, firmware/ (pass to qemu-system as -L).
# VIOPATH_CACHE overrides the cache directory. Needs root (apt-get download) and
# about 30 MB of downloads.
set -eu
cache=${VIOPATH_CACHE:-/var/cache/viopath}
log() { echo "guest: $*" >&2; }

# The kernel the cloud metapackage points at today (it moves with security updates).
kver=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    sed -n 's/.*Depends: linux-image-\(.*-cloud-amd64\)$/\1/p' | head -n 1)
if [ -z "$kver" ]; then
    apt-get update -qq
    kver=$(apt-cache depends linux-image-cloud-amd64 |
        sed -n 's/.*Depends: linux-image-\(.*-cloud-amd64\)$/\1/p' | head -n 1)
fi
[ -n "$kver" ] || { log "no linux-image-cloud-amd64 in the apt sources"; exit 1; }
# Bump when the initramfs changes, so caches are rebuilt.
layout=3
out=$cache/guest-$kver-v$layout
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/firmware/bios-256k.bin" ]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/viopath-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading linux-image-$kver, busybox-static, seabios, qemu-system-data"
# apt-get download runs as _apt when it can; in a root-only directory it warns and
# downloads as root, which is fine here.
apt-get download -qq "linux-image-$kver" busybox-static seabios qemu-system-data 2>/dev/null ||
    { apt-get update -qq && apt-get download -qq "linux-image-$kver" busybox-static seabios qemu-system-data 2>/dev/null; }
for d in ./*.deb; do dpkg-deb -x "$d" root; done

mkdir -p stage/firmware
cp "root/boot/vmlinuz-$kver" stage/vmlinuz
# SeaBIOS and the option ROMs a q35/pc machine loads for -kernel.
cp root/usr/share/seabios/bios-256k.bin root/usr/share/seabios/bios.bin \
    root/usr/share/qemu/linuxboot_dma.bin root/usr/share/qemu/kvmvapic.bin \
    root/usr/share/qemu/pvh.bin stage/firmware/

ird=initramfs
mkdir -p $ird/bin $ird/dev $ird/proc $ird/sys $ird/mnt $ird/lib/modules
cp root/bin/busybox $ird/bin/busybox
mods=root/lib/modules/$kver/kernel/drivers
# The order matters: each needs the ones before it.
for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_modern_dev \
         virtio/virtio_pci_legacy_dev virtio/virtio_pci block/virtio_blk \
         scsi/scsi_common scsi/scsi_mod scsi/sd_mod scsi/virtio_scsi; do
    f=$(ls "$mods/$m.ko"* | head -n 1)
    case $f in
        *.xz) xz -dc "$f" > "$ird/lib/modules/$(basename "$m").ko" ;;
        *) cp "$f" "$ird/lib/modules/$(basename "$m").ko" ;;
    esac
done
cat > $ird/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
         scsi_common scsi_mod sd_mod virtio_scsi; do
    insmod /lib/modules/$m.ko || echo "viopath-guest: insmod $m failed"
done
# SCSI disks appear once their bus scan is done, asynchronously.
for i in $(seq 100); do [ -b /dev/vda ] || [ -b /dev/sda ] && break; sleep 0.1; done
mdev -s
echo "viopath-guest: up $(cat /proc/uptime)"
# The workload comes base64-encoded on the kernel command line (viopath.run=...), so
# one cached initramfs serves every test; or as /workload.sh in an appended archive.
for arg in $(cat /proc/cmdline); do
    case $arg in
        viopath.run=*) echo "${arg#viopath.run=}" | base64 -d > /workload.sh && chmod +x /workload.sh ;;
    esac
done
if [ -x /workload.sh ]; then
    /workload.sh
    echo "viopath-guest: workload exit $?"
fi
sync
poweroff -f
INIT
chmod +x $ird/init
(cd $ird && find . | busybox_cpio=1 ../root/bin/busybox cpio -o -H newc 2>/dev/null) | gzip -9 > stage/initramfs.cpio.gz

mkdir -p "$cache"
rm -rf "$out"
mv stage "$out"
log "built $out"
echo "$out"
