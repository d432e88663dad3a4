# A qcow2 on ext4 on an LVM linear volume on NVMe partition 1 (aio=native), recorded
# twice: kernel-function probes as fentry/fexit (the default where the kernel allows),
# then forced to kprobes/kretprobes on a second image.
stack lvm-linear
lvm pvcreate -qq /dev/nvme0n1p1
lvm vgcreate -qq lablin /dev/nvme0n1p1
lvm lvcreate -qq -y -n lin -L 256M lablin
dm_nodes
image_on /dev/mapper/lablin-lin ext4 /mnt/lin qcow2
workload "$img" qcow2 native
oracles "$img"
stack lvm-linear-kprobe
"$QEMU_PREFIX/bin/qemu-img" create -q -f qcow2 /mnt/lin/disk2.qcow2 64M
workload /mnt/lin/disk2.qcow2 qcow2 native --kernel-attach kprobe
oracles /mnt/lin/disk2.qcow2
umount /mnt/lin
