#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the host packages iovirt's demo and tests use (Debian 12, as root). Idempotent and quiet when done before.
# --demo: only what './iovirt demo' needs (QEMU, and the tools that build its guest), not the test, packaging and
# daemon-test tools below: the demo used to refuse to start for a user without libvirt, promtool, gdb or asciidoctor
# ("run as root"), and as root it installed libvirt's daemon on the host.
set -euo pipefail
DEMO=0
case "${1:-}" in
  --demo) DEMO=1 ;;
  "") ;;
  *) echo "install-deps.sh: unknown argument '$1' — use --demo (the demo's packages only) or nothing (all)" >&2; exit 2 ;;
esac
# unzip: ./mvnw fetches Maven as a zip when unzip exists; without it, a tar.gz that fails the wrapper's zip checksum
DEMO_PKGS=(qemu-system-x86 qemu-utils busybox-static fio cpio kmod xz-utils zstd unzip)
# asciidoctor, man-db, fakeroot: the man pages and the Debian package (scripts/package.sh); strace: tests that check
# which system calls a process makes (StateStoreAccessTest: the state directory is fsynced into its parent); gdb: the
# backtrace of a crashed child's core (ChildProcessTest checks it; a crashing QEMU or testpmd reports one);
# linux-libc-dev: <linux/vfio.h>, which VfioAbiTest parses (a build machine has it, a fresh Debian does not);
# adduser: the package's Depends and postinst — DebianPackageTest installs it with dpkg -i, which resolves nothing
# systemd: DebianPackageTest boots it as PID 1 of its own namespaces to run the maintainer scripts against a real
# service manager (a container's PID 1 is not systemd); lintian: DebianPackageTest checks the package with it
PKGS=(qemu-system-x86 qemu-utils busybox-static fio cpio kmod xz-utils zstd unzip pciutils iproute2 procps ethtool jq nbd-client gnuplot-nox
      asciidoctor man-db fakeroot fuse2fs fuse3 strace gdb linux-libc-dev adduser systemd lintian)
[ "$DEMO" = 1 ] && PKGS=("${DEMO_PKGS[@]}")
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "iovirt: missing packages: ${missing[*]} — run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "iovirt: installing ${missing[*]} ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$DEMO" = 1 ] && exit 0

# The daemon's tests: libvirt (virt-xml-validate needs xmllint; libvirtd with the QEMU driver, started by the test
# itself) and promtool. promtool ships only in Debian's 'prometheus' package (19 MB download, 96 MB installed, plus
# JavaScript UI libraries and a system user): take just the promtool binary out of the .deb instead of installing it.
DAEMON_PKGS=(libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu libxml2-utils curl python3 util-linux passwd)
missing=()
for p in "${DAEMON_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "iovirt: missing: ${missing[*]} promtool — run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ ${#missing[@]} -gt 0 ]; then
    echo "iovirt: installing ${missing[*]} ..." >&2
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! command -v promtool >/dev/null; then
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq prometheus && dpkg-deb -x prometheus_*.deb x)
    install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
  fi
fi
