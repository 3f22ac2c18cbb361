#!/usr/bin/env bash
# Installs the host packages iovirt's demo and tests use (Debian 12, as root). Idempotent and quiet when done before.
set -euo pipefail
PKGS=(qemu-system-x86 qemu-utils busybox-static fio cpio kmod xz-utils zstd pciutils iproute2 procps ethtool jq nbd-client gnuplot-nox)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "iovirt: missing packages: ${missing[*]} — run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "iovirt: installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
