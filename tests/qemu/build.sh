#!/bin/sh
# Builds the QEMU the recorder tests run: upstream QEMU 10.0.2 from Debian's source
# package (its .orig tarball), with symbols, tools (qemu-io, qemu-storage-daemon) and a
# qemu-system-x86_64. Debian's own binaries are stripped; these keep .symtab so every
# probe in the catalog can attach.
#
# Cached by version: prints the install prefix and does nothing else when it exists.
#   tests/qemu/build.sh            -> /var/cache/viopath/qemu-10.0.2
# VIOPATH_CACHE overrides the cache directory. Needs root for apt (sources and build
# dependencies), about 3 minutes on 2 cores, and ~1.5 GiB of scratch space.
set -eu
VERSION=10.0.2
DEBVERSION=1:10.0.2+ds-2+deb13u1~bpo12+1
cache=${VIOPATH_CACHE:-/var/cache/viopath}
prefix=$cache/qemu-$VERSION
if [ -x "$prefix/bin/qemu-io" ] && [ -x "$prefix/bin/qemu-system-x86_64" ]; then
    echo "$prefix"
    exit 0
fi
log() { echo "build-qemu: $*" >&2; }

# Debian's archive serves the source and a newer meson in bookworm-backports.
sh "$(dirname "$0")/backports.sh"
log "installing build dependencies"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports meson >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ninja-build libglib2.0-dev libaio-dev \
    liburing-dev libpixman-1-dev flex bison python3-pycotap python3-venv pkg-config \
    xz-utils >/dev/null

work=$(mktemp -d "${TMPDIR:-/var/tmp}/viopath-qemu.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
log "fetching the source of qemu $DEBVERSION"
# Only the upstream (.orig) tarball is needed; Debian's packaging part may be missing
# from the archive, which makes apt-get report a failure after the orig download.
apt-get source --download-only -qq "qemu=$DEBVERSION" >/dev/null 2>&1 || true
tarball=$(ls qemu_"$VERSION"*.orig.tar.xz 2>/dev/null | head -n 1)
[ -n "$tarball" ] || { log "could not download qemu_${VERSION}+ds.orig.tar.xz"; exit 1; }
tar xf "$tarball"
cd "qemu-$VERSION"
# The +ds tarball has no edk2 firmware blobs: do not try to unpack them.
sed -i "s/unpack_edk2_blobs = bzip2.found()/unpack_edk2_blobs = bzip2.found() and get_option('install_blobs')/" meson.build
log "configuring"
./configure --prefix="$prefix" --python=/usr/bin/python3 --target-list=x86_64-softmmu \
    --without-default-features --enable-tools --enable-linux-aio --enable-linux-io-uring \
    --enable-tcg --enable-kvm --enable-debug-info --disable-docs --disable-install-blobs \
    --disable-download --disable-fdt --disable-werror >configure.log 2>&1 || { tail -40 configure.log >&2; exit 1; }
log "building (this takes a while)"
make -j"$(nproc)" >build.log 2>&1 || { tail -60 build.log >&2; exit 1; }
# The cache check above wants both binaries, so an interrupted install is redone.
make install >install.log 2>&1 || { tail -40 install.log >&2; exit 1; }
[ -x "$prefix/bin/qemu-io" ] || { log "install did not produce qemu-io"; exit 1; }
echo "$prefix"
