#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs a command as on a host without /dev/kvm, on a host that has one: in a private mount namespace whose /dev is a
# copy without the kvm node (as root; the host's /dev is not touched). The way to check the TCG path of the
# accelerator probe — and so that the README's two commands work on a machine with no KVM at all — where every
# machine at hand has a /dev/kvm.
#
#   scripts/without-kvm.sh COMMAND [ARG...]
#
# e.g. scripts/without-kvm.sh ./iovirt demo (the demo's header then says "KVM unusable: /dev/kvm does not exist"),
# or scripts/without-kvm.sh ./iovirt test. /dev/shm, /dev/pts, /dev/mqueue and /dev/hugepages stay the host's (bind
# mounts), every other node is a copy (the same devices: null, net/tun, vhost-net, vfio...).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: scripts/without-kvm.sh COMMAND [ARG...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "without-kvm: needs root (a mount namespace with its own /dev)" >&2; exit 1; }
command -v unshare >/dev/null || { echo "without-kvm: unshare is missing — apt-get install util-linux" >&2; exit 1; }
exec unshare --mount --propagation private bash -c '
set -euo pipefail
dev="$(mktemp -d /tmp/without-kvm.XXXXXX)"
mount -t tmpfs -o mode=755 without-kvm "$dev"
cp -a /dev/. "$dev"/ 2>/dev/null || true # what a mount point below /dev holds is bound again below
rm -f "$dev/kvm"
for m in shm pts mqueue hugepages; do
  if mountpoint -q "/dev/$m"; then mkdir -p "$dev/$m"; mount --rbind "/dev/$m" "$dev/$m"; fi
done
mount --move "$dev" /dev
rmdir "$dev" # the mount point, now empty (and on the host file system)
[ ! -e /dev/kvm ] || { echo "without-kvm: /dev/kvm is still there" >&2; exit 1; }
exec "$@"' without-kvm "$@"
