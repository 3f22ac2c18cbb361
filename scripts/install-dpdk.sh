#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs DPDK 22.11's dpdk-testpmd (the peer for virtio-net tests and benchmarks) without dpdk-dev's 228 packages:
# the binary is extracted from the dpdk-dev .deb into the cache and only its runtime libraries are apt-installed.
# Prints the path of dpdk-testpmd on success.
set -euo pipefail
CACHE="${IOVIRT_CACHE:-$HOME/.cache/iovirt}/dpdk"
BIN="$CACHE/usr/bin/dpdk-testpmd"
LIBS=(librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23 librte-ethdev23 librte-cmdline23
      librte-crypto-scheduler23 librte-bitratestats23 librte-metrics23 librte-bpf23 librte-gro23 librte-gso23
      librte-latencystats23 librte-pdump23 librte-net-bnxt23 librte-net-i40e23 librte-net-ixgbe23 librte-bus-dpaa23
      librte-mempool-dpaa23 librte-net-dpaa23 librte-net-bond23 librte-net-ice23 librte-net-mlx5-23 libpcap0.8)

if [ -x "$BIN" ] && ! ldd "$BIN" | grep -q 'not found'; then echo "$BIN"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "install-dpdk: run as root (needs apt-get install of DPDK runtime libraries)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${LIBS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-dpdk: installing DPDK runtime libraries (${#missing[@]} packages)..." >&2
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq dpdk-dev >/dev/null 2>&1) || { apt-get update -qq; (cd "$tmp" && apt-get download -qq dpdk-dev >/dev/null); }
mkdir -p "$CACHE"
dpkg-deb --fsys-tarfile "$tmp"/dpdk-dev_*.deb | tar -x -C "$CACHE" ./usr/bin/dpdk-testpmd
if ldd "$BIN" | grep -q 'not found'; then
  echo "install-dpdk: dpdk-testpmd still lacks libraries: $(ldd "$BIN" | grep 'not found' | awk '{print $1}' | tr '\n' ' ')" >&2
  exit 1
fi
echo "$BIN"
