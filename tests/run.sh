#!/usr/bin/env bash
# The test command (README.md). On a fresh machine of this kind (Debian or a derivative,
# as root) it installs what the whole suite needs: the oracles (qemu-img, qemu-io,
# debugfs, filefrag, mkfs, sfdisk, losetup), Chromium and chromedriver for the HTML
# pages, the eBPF toolchain for the probe freshness check, a QEMU built with symbols,
# the distribution's QEMU, libvirt, the test guest and the lab (the builds cached by version in
# /var/cache/viopath, so a second run reuses them). Then it runs every test with
# VIOPATH_NO_SKIP=1: a test that would skip for want of something fails instead.
# Arguments go to `cargo test` (a test name, `-- --nocapture`). Plain `cargo test
# --workspace` runs what it can without all this and says SKIPPED for the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: needs root (apt, BPF, loop devices): sudo tests/run.sh" >&2
    exit 1
fi

# Oracles the tests compare against, and the browser the HTML pages are tested in
# (command -> Debian package).
missing=()
for pair in qemu-img:qemu-utils qemu-io:qemu-utils debugfs:e2fsprogs filefrag:e2fsprogs \
            mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs sfdisk:fdisk losetup:mount \
            partx:util-linux \
            readelf:binutils chromium:chromium chromedriver:chromium-driver; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The eBPF toolchain: the test that the committed probe object is fresh compiles it.
command -v clang-19 >/dev/null 2>&1 && [ -f /usr/include/bpf/bpf_helpers.h ] || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-19 llvm-19 libbpf-dev >/dev/null
}
# QEMU with symbols for the recorder tests, built once and cached by version.
VIOPATH_QEMU_PREFIX=$(bash tests/qemu/build.sh)
export VIOPATH_QEMU_PREFIX
echo "QEMU for tests: $VIOPATH_QEMU_PREFIX"
# The distribution's stripped QEMU, for the tests that record with it; libvirt, for
# the test that records a domain by name.
bash tests/qemu/debian.sh
sh tests/libvirt/setup.sh install
# The test guest (Debian cloud kernel, busybox initramfs, firmware), cached by kernel.
VIOPATH_GUEST_DIR=$(bash tests/vm/guest.sh)
export VIOPATH_GUEST_DIR
echo "guest for tests: $VIOPATH_GUEST_DIR"
# The lab (tests/lab, docs/lab.md): Debian's 6.1 and 6.12 kernels as small hypervisor
# hosts, each cached by kernel version.
for suite in bookworm bookworm-backports; do
    echo "lab for tests: $(bash tests/lab/build.sh "$suite" "$VIOPATH_QEMU_PREFIX")"
done
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing || true
# Loop-device tests need the loop driver's control node.
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true

export VIOPATH_NO_SKIP=1
exec cargo test --workspace "$@"
