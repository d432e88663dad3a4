# A raw image on ext4 on an LVM thin volume, its pool on the virtio-blk disk's partition
# 1 (io_uring). The layout does not map a pool's blocks: the join follows dm-thin's
# remaps down to the disk; the test maps them from the pool's own metadata (thin_dump).
stack thin
# lvm runs thin_check at the pool's activation, from where Debian installs it.
mkdir -p /usr/sbin && ln -sf /bin/thin_check /usr/sbin/thin_check
lvm pvcreate -qq /dev/vda1
lvm vgcreate -qq labthin /dev/vda1
lvm lvcreate -qq -y -L 320M -T labthin/pool
lvm lvcreate -qq -y -V 256M -T labthin/pool -n thin
dm_nodes
# (The raw image written once: the pool's blocks are provisioned before the workload.)
image_on /dev/mapper/labthin-thin ext4 /mnt/thin raw
workload "$img" raw io_uring
oracles "$img"
# The pool's mapping of each thin block, from a snapshot of its live metadata.
dmsetup message labthin-pool-tpool 0 reserve_metadata_snap
thin_dump --metadata-snap /dev/mapper/labthin-pool_tmeta > "$out/thin-dump"
dmsetup message labthin-pool-tpool 0 release_metadata_snap
umount /mnt/thin
