#!/bin/sh
# Installs the distribution's QEMU as hypervisor hosts run it: Debian's own
# qemu-system-x86 10.0 (stripped: exported symbols only) from bookworm-backports, for
# tests/e2e/distro_e2e.rs. Does nothing when that version is installed. Needs root;
# about 15 MB of downloads.
set -eu
if dpkg -s qemu-system-x86 2>/dev/null | grep -q '^Version: 1:10\.0'; then
    exit 0
fi
sh "$(dirname "$0")/backports.sh"
apt-get update -qq
# Only these from backports (QEMU 10.0 wants its own common files and a newer SeaBIOS);
# their libraries from bookworm.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
    qemu-system-data/bookworm-backports seabios/bookworm-backports >/dev/null
