# A raw image on xfs on an LVM volume striped over two PVs, NVMe partition 2 and SCSI
# partition 2 (64 KiB stripes; io_uring).
stack lvm-striped
lvm pvcreate -qq /dev/nvme0n1p2 /dev/sda2
lvm vgcreate -qq labstr /dev/nvme0n1p2 /dev/sda2
lvm lvcreate -qq -y -n str -i 2 -I 64k -L 512M labstr
dm_nodes
mkfs.xfs -q /dev/mapper/labstr-str
mkdir -p /mnt/str && mount -t xfs /dev/mapper/labstr-str /mnt/str
"$QEMU_PREFIX/bin/qemu-img" create -q -f raw /mnt/str/disk.raw 64M
# Written once beforehand, so the workload's writes overwrite allocated blocks.
dd if=/dev/zero of=/mnt/str/disk.raw bs=1M count=64 conv=notrunc,fsync status=none
workload /mnt/str/disk.raw raw io_uring
oracles /mnt/str/disk.raw
umount /mnt/str
