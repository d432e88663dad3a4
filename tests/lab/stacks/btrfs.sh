# A qcow2 on btrfs (one device: NVMe partition 4, data single, metadata DUP), aio=native.
# FIEMAP gives btrfs's logical addresses: the layout maps them through the chunk tree.
stack btrfs
mkfs.btrfs -q -f -d single -m dup /dev/nvme0n1p4
mkdir -p /mnt/btrfs && mount -t btrfs /dev/nvme0n1p4 /mnt/btrfs
img=/mnt/btrfs/disk.qcow2
"$QEMU_PREFIX/bin/qemu-img" create -q -f qcow2 "$img" 64M
workload "$img" qcow2 native
oracles "$img"
umount /mnt/btrfs
