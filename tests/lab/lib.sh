# Sourced by every lab script (bash, inside the lab). The harness sets QEMU_PREFIX and
# VIOPATH before it; each stack writes its trace and the independent views of its
# layout (dmsetup, filefrag, qemu-img map, sysfs) to /share/STACK.
set -euo pipefail
log() { echo "lab[$(cut -d' ' -f1 /proc/uptime)]: $*"; }

# The lab's disks, partitioned alike: GPT, partitions 1..4 of 448 MiB each from 1 MiB.
partition() {
    local d
    for d in "$@"; do
        printf 'label: gpt\nstart=2048, size=917504\nsize=917504\nsize=917504\nsize=917504\n' |
            sfdisk -q "$d"
    done
    mdev -s
}

# The /dev/mapper nodes of new dm devices: with no udev in the lab, nobody else makes
# them.
dm_nodes() {
    dmsetup mknodes
    mdev -s
}

# image_on DEVICE FSTYPE MOUNTPOINT FORMAT: a filesystem made on DEVICE and mounted, and
# a 64 MiB image of FORMAT in it ($img). A raw one is written once beforehand, so the
# workload's writes overwrite allocated blocks.
image_on() {
    local dev=$1 fs=$2 mnt=$3 fmt=$4
    "mkfs.$fs" -q "$dev"
    mkdir -p "$mnt" && mount -t "$fs" "$dev" "$mnt"
    img=$mnt/disk.$fmt
    "$QEMU_PREFIX/bin/qemu-img" create -q -f "$fmt" "$img" 64M
    if [ "$fmt" = raw ]; then
        dd if=/dev/zero of="$img" bs=1M count=64 conv=notrunc,fsync status=none
    fi
}

# stack NAME: a stack's results go to /share/NAME ($out).
stack() {
    out=/share/$1
    mkdir -p "$out"
    log "stack $1"
}

# workload IMAGE FORMAT AIO [RECORD OPTIONS...]: `viopath record -- qemu-io` with a known
# list of requests, written to $out/requests (op, offset, bytes): 8 writes of 64 KiB
# in flight together, then 8 reads of them in flight together.
workload() {
    local img=$1 fmt=$2 aio=$3
    shift 3
    local cmds=() op i off
    : > "$out/requests"
    for op in write read; do
        for i in 0 1 2 3 4 5 6 7; do
            off=$((i * 1048576 + i * 12288))
            cmds+=(-c "aio_$op -q -P $((i + 1)) $off 65536")
            echo "$op $off 65536" >> "$out/requests"
        done
        # aio_flush waits for the requests in flight; it sends no flush. (qemu-io's own
        # `flush` goes through blk_flush, which no probe sees as a request: guests'
        # flushes come through blk_aio_flush and are tested with guests.)
        cmds+=(-c aio_flush)
    done
    "$VIOPATH" record -q --json -o "$out/trace" "$@" -- \
        "$QEMU_PREFIX/bin/qemu-io" -f "$fmt" -t none --aio "$aio" "${cmds[@]}" "$img" \
        > "$out/record.json" 2> "$out/record.err" || { cat "$out/record.err"; return 1; }
}

# oracles IMAGE: what the image's bytes are on the devices, from the tools that own
# each layer, for the test to compute the expected sectors from.
oracles() {
    local img=$1 b
    qemu_img=$QEMU_PREFIX/bin/qemu-img
    "$qemu_img" map --output=json "$img" > "$out/map.json"
    filefrag -e -b512 "$img" > "$out/filefrag"
    # The filesystem's device number, as the kernel gives it (mountinfo's 3rd field).
    awk -v m="$(df -P "$img" | awk 'NR==2{print $6}')" '$5 == m {print $3}' /proc/self/mountinfo \
        > "$out/fs-dev"
    # btrfs: its devices (devid, path) and its chunk tree, as btrfs-progs prints them.
    local mnt src
    mnt=$(df -P "$img" | awk 'NR==2{print $6}')
    if [ "$(awk -v m="$mnt" '$2 == m {print $3}' /proc/mounts)" = btrfs ]; then
        src=$(df -P "$img" | awk 'NR==2{print $1}')
        btrfs filesystem show "$src" | awk '/devid/ {print $2, $NF}' > "$out/btrfs-devs"
        btrfs inspect-internal dump-tree -t chunk "$src" > "$out/btrfs-chunks"
    fi
    # name, major:minor, and for a partition its first sector and its disk.
    for b in /sys/class/block/*; do
        # NVMe's per-controller paths (nvme0c0n1) are hidden and have no number.
        [ -f "$b/dev" ] || continue
        if [ -f "$b/partition" ]; then
            echo "$(basename "$b") $(cat "$b/dev") $(cat "$b/start") $(basename "$(dirname "$(readlink -f "$b")")")"
        else
            echo "$(basename "$b") $(cat "$b/dev") - -"
        fi
    done > "$out/blocks"
    # NVMe multipath paths, "head path" a line: the disks with no number (hidden; 6.2 and
    # later also say so in `hidden`), named nvme<subsystem>c<controller>n<namespace>
    # after their head nvme<subsystem>n<namespace>.
    for b in /sys/class/block/nvme*c*n*; do
        [ -e "$b" ] && [ ! -f "$b/dev" ] || continue
        p=$(basename "$b")
        echo "$(echo "$p" | sed 's/c[0-9]*n/n/') $p"
    done > "$out/multipath"
    # md arrays, "array level member data-offset" a line: mdadm's own view (the
    # members in sync from --detail, each one's data offset in sectors from --examine).
    for m in /dev/md[0-9]*; do
        [ -b "$m" ] || continue
        level=$(mdadm --detail "$m" | awk -F' : ' '/Raid Level/ {print $2}')
        for leg in $(mdadm --detail "$m" | awk '/active sync/ {print $NF}'); do
            echo "$(basename "$m") $level $(basename "$leg") $(mdadm --examine "$leg" | awk '/Data Offset/ {print $4}')"
        done
    done > "$out/md"
    dmsetup table > "$out/dmsetup-table" 2>/dev/null || true
    dmsetup info -c --noheadings -o name,major,minor --separator ' ' > "$out/dmsetup-info" 2>/dev/null || true
    lvs --segments --noheadings --units s -o lv_name,segtype,stripes,stripe_size,seg_start,seg_size,devices \
        > "$out/lvs" 2>/dev/null || true
}
