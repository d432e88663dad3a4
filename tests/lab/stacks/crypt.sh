# A qcow2 on ext4 on dm-crypt (LUKS2, a key file) on SCSI partition 1, with QEMU's
# thread pool (aio=threads): dm-crypt's workers queue the encrypted copies below.
stack crypt
head -c 64 /dev/urandom > /tmp/crypt.key
# pbkdf2 with few iterations: argon2's memory-hard default takes long under TCG, and
# the key's strength is not what is tested.
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file /tmp/crypt.key /dev/sda1
cryptsetup open --key-file /tmp/crypt.key /dev/sda1 labcrypt
dm_nodes
image_on /dev/mapper/labcrypt ext4 /mnt/crypt qcow2
workload "$img" qcow2 threads
oracles "$img"
umount /mnt/crypt
cryptsetup close labcrypt
