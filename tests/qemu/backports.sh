#!/bin/sh
# Adds Debian's bookworm-backports (packages and sources) to apt's sources, once:
# the QEMU source and a newer meson for tests/qemu/build.sh, Debian's own QEMU 10.0
# for tests/qemu/debian.sh. Needs root.
set -eu
src_list=/etc/apt/sources.list.d/viopath-backports.sources
if [ ! -f "$src_list" ]; then
    cat > "$src_list" <<'SRC'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
