# A raw image on xfs on an LVM volume striped over two PVs, NVMe partition 2 and SCSI
# partition 2 (64 KiB stripes; io_uring).
stack lvm-striped
lvm pvcreate -qq /dev/nvme0n1p2 /dev/sda2
lvm vgcreate -qq labstr /dev/nvme0n1p2 /dev/sda2
lvm lvcreate -qq -y -n str -i 2 -I 64k -L 512M labstr
dm_nodes
image_on /dev/mapper/labstr-str xfs /mnt/str raw
workload "$img" raw io_uring
oracles "$img"
umount /mnt/str
