#!/bin/sh
# libvirt for tests/e2e/libvirt_e2e.rs, as a hypervisor host runs it: Debian's
# libvirt-daemon with its QEMU driver. `install` installs it (11.x from
# bookworm-backports: bookworm's 9.0 passes QEMU 10.0 the -no-acpi option it no
# longer has), `start` configures the QEMU driver for this machine and starts libvirtd
# unless it runs. Needs root.
#
# This machine has no systemd and no per-user QEMU, so the driver runs QEMU as root,
# with no cgroups, mount namespaces or security labels, and its console in a file.
set -eu
here=$(dirname "$0")
case "${1:-}" in
install)
    if libvirtd --version 2>/dev/null | grep -q ' 11\.'; then
        exit 0
    fi
    sh "$here/../qemu/backports.sh"
    apt-get update -qq
    pkgs="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt0 libvirt-common
          libvirt-daemon-common libvirt-daemon-log"
    bpo=""
    for p in $pkgs; do bpo="$bpo $p/bookworm-backports"; done
    # The package's own qemu.conf is kept as shipped; `start` appends to it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $bpo >/dev/null
    ;;
start)
    command -v libvirtd >/dev/null 2>&1 || { echo "libvirt is not installed (setup.sh install)" >&2; exit 1; }
    # libvirt looks its default QEMU user up before it reads qemu.conf.
    getent group kvm >/dev/null || groupadd -r kvm
    getent passwd libvirt-qemu >/dev/null ||
        useradd -r -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    conf=/etc/libvirt/qemu.conf
    mkdir -p /etc/libvirt /var/log/libvirt /var/lib/libvirt /run/libvirt
    if ! grep -q '^# viopath tests' "$conf" 2>/dev/null; then
        cat >> "$conf" <<'CONF'
# viopath tests: QEMU as root, no cgroups, namespaces or security labels, console to a file
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
swtpm_user = "root"
swtpm_group = "root"
CONF
        pkill -x libvirtd 2>/dev/null && sleep 1 || true
    fi
    if ! pgrep -x libvirtd >/dev/null; then
        libvirtd -d
    fi
    for i in $(seq 50); do
        virsh -c qemu:///system uri >/dev/null 2>&1 && exit 0
        sleep 0.2
    done
    echo "libvirtd did not answer; see /var/log/libvirt/libvirtd.log" >&2
    exit 1
    ;;
*)
    echo "usage: $0 install|start" >&2
    exit 2
    ;;
esac
