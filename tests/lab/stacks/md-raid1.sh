# A raw image on ext4 on md RAID1 over NVMe partition 3 and SCSI partition 3 (aio=native):
# each write goes to both members, each read to one.
stack md-raid1
/sbin/modprobe raid1
# --assume-clean: no initial resync, whose IO would run under the workload's.
mdadm --create /dev/md0 --run --quiet --level=1 --raid-devices=2 --metadata=1.2 \
    --assume-clean /dev/nvme0n1p3 /dev/sda3
mdev -s
image_on /dev/md0 ext4 /mnt/md raw
workload "$img" raw native
oracles "$img"
umount /mnt/md
mdadm --stop --quiet /dev/md0
