#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the Linux guest that iovirt's real-guest tests and demo boot under QEMU, and caches it.
#
# Output (cached under ${IOVIRT_CACHE:-$HOME/.cache/iovirt}/guest/<stamp>, <stamp> = hash of this script, so an
# edited script rebuilds; IOVIRT_GUEST_REBUILD=1 forces a rebuild):
#   vmlinux   uncompressed ELF kernel (boots through PVH, ~3 s faster under TCG than the XZ bzImage)
#   bzImage   the Debian vmlinuz, as a fallback for QEMU builds without PVH
#   base.cpio busybox-static, kernel modules with their insmod order, and /init (see below)
#   fio.cpio  fio and its shared libraries: a layer to append to base.cpio only for guests that run fio
# Prints key=value lines (the manifest) on stdout; progress goes to stderr.
#
# /init mounts proc/sys/devtmpfs, loads the modules named by the kernel argument modules=a,b (default:
# virtio_pci,virtio_blk), runs /run.sh (added per run as another cpio archive appended to base.cpio: the kernel
# unpacks concatenated archives) and prints "iovirt-guest: payload exit N" before powering off. Kernel command-line
# key=value words reach /init and /run.sh as environment variables.
set -euo pipefail

CACHE="${IOVIRT_CACHE:-$HOME/.cache/iovirt}/guest"
SELF="$(readlink -f "${BASH_SOURCE[0]}")"
STAMP="$(sha256sum "$SELF" | cut -c1-12)"
OUT="$CACHE/$STAMP"
log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

missing=()
for tool in apt-get apt-cache dpkg depmod modprobe busybox cpio xz fio ldd flock; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} — run scripts/install-deps.sh as root (installs busybox-static, fio, cpio, kmod, xz-utils)"
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || die "/bin/busybox is missing — apt-get install busybox-static"
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static /bin/busybox || die "/bin/busybox is dynamically linked — apt-get install busybox-static (not busybox)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  log "another build of the guest is running; waiting for it"
  flock 9
fi

if [ -f "$OUT/manifest" ] && [ -z "${IOVIRT_GUEST_REBUILD:-}" ]; then
  cat "$OUT/manifest"
  exit 0
fi

T0=$(date +%s)
WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- 1. kernel package: whatever linux-image-amd64 depends on now -------------------------------------------------
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG="$(kernel_pkg)"
if [ -z "$KPKG" ]; then
  [ "$(id -u)" = 0 ] || die "apt knows no linux-image-amd64 (package lists missing?) — run 'apt-get update' as root"
  log "apt package lists missing or stale: apt-get update"
  apt-get update -qq >&2
  KPKG="$(kernel_pkg)"
  [ -n "$KPKG" ] || die "apt-cache finds no kernel that linux-image-amd64 depends on — is a Debian main source configured?"
fi
KVER="${KPKG#linux-image-}"
DEBS="$CACHE/debs"
mkdir -p "$DEBS"
DEB="$(ls "$DEBS/${KPKG}_"*.deb 2>/dev/null | head -1 || true)"
if [ -z "$DEB" ]; then
  log "downloading $KPKG (~70 MB)"
  (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >&2) \
    || die "apt-get download $KPKG failed — check network access to the Debian mirror"
  DEB="$(ls "$DEBS/${KPKG}_"*.deb | head -1)"
fi
log "unpacking $(basename "$DEB")"
K="$WORK/kernel"
dpkg -x "$DEB" "$K"
VMLINUZ="$K/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "$DEB has no boot/vmlinuz-$KVER"

# --- 2. uncompressed ELF vmlinux: the payload after the first XZ stream magic that decompresses to an ELF ----------
log "extracting the uncompressed vmlinux from vmlinuz"
VMLINUX="$WORK/out/vmlinux"
mkdir -p "$WORK/out"
found=""
for off in $(LC_ALL=C grep -obUaP '\xFD7zXZ\x00' "$VMLINUZ" | cut -d: -f1); do
  # tail dies of SIGPIPE when xz stops after the stream: only xz's status matters.
  if { tail -c +$((off + 1)) "$VMLINUZ" || true; } | xz -dc --single-stream >"$VMLINUX" 2>/dev/null \
     && [ "$(head -c 4 "$VMLINUX" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
    found=1; break
  fi
done
[ -n "$found" ] || { rm -f "$VMLINUX"; log "warning: no XZ-compressed ELF inside vmlinuz; only bzImage is available"; }
cp "$VMLINUZ" "$WORK/out/bzImage"

# --- 3. modules and their insmod order ------------------------------------------------------------------------------
log "resolving module dependencies (depmod, modprobe --show-depends)"
depmod -b "$K" "$KVER"
MODULES=(virtio virtio_ring virtio_pci virtio_blk virtio_net virtio_console e1000 9pnet_virtio 9p nvme vfio
         vfio_iommu_type1 vfio_pci ahci libata sd_mod pktgen)
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,mnt,etc,root,lib/modules/order}
MODROOT="$K/lib/modules/$KVER"
for m in "${MODULES[@]}"; do
  name="${m//-/_}"
  deps="$(modprobe -d "$K" -S "$KVER" --show-depends "$m")" || die "modprobe cannot resolve module $m in $KPKG"
  : >"$R/lib/modules/order/$name"
  while read -r verb path _; do
    case "$verb" in
      insmod)
        rel="${path#"$MODROOT"/}"
        grep -qxF "$rel" "$R/lib/modules/order/$name" || echo "$rel" >>"$R/lib/modules/order/$name"
        if [ ! -f "$R/lib/modules/$rel" ]; then
          mkdir -p "$(dirname "$R/lib/modules/$rel")"
          cp "$path" "$R/lib/modules/$rel"
        fi ;;
      builtin) ;;  # compiled into the kernel: nothing to load
      *) die "unexpected modprobe output for $m: $verb $path" ;;
    esac
  done <<<"$deps"
done
echo "$KVER" >"$R/etc/kernel-release"

# --- 4. busybox: every applet except busybox itself (a self-link makes the kernel loop: error -40) ----------------
log "installing busybox applets"
cp /bin/busybox "$R/bin/busybox"
/bin/busybox --list-full | while read -r applet; do
  [ "$(basename "$applet")" = busybox ] && continue
  [ -e "$R/$applet" ] || ln -s /bin/busybox "$R/$applet"
done

cat >"$R/init" <<'INIT'
#!/bin/sh
# PID 1 of the iovirt test guest. Loads modules, runs /run.sh, reports its exit status, powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ip link set lo up 2>/dev/null

# load NAME...: insmod NAME and its dependencies in the order modprobe resolved at build time. Soft dependencies
# may refuse this CPU (crct10dif-pclmul without PCLMULQDQ under TCG: "No such device"), so an insmod failure is
# only fatal when the module asked for does not end up loaded.
load() {
  for want in "$@"; do
    name="$(echo "$want" | tr - _)"
    order="/lib/modules/order/$name"
    [ -f "$order" ] || { echo "iovirt-guest: module $want is not in the image"; return 1; }
    failed=""
    while read -r ko; do
      mod="$(basename "$ko" .ko | tr - _)"
      [ -d "/sys/module/$mod" ] && continue
      insmod "/lib/modules/$ko" 2>/tmp/insmod.err || failed="$failed; $ko: $(cat /tmp/insmod.err)"
    done <"$order"
    [ -d "/sys/module/$name" ] || { echo "iovirt-guest: module $want failed to load$failed"; return 1; }
  done
}

echo "iovirt-guest: init $(cut -d' ' -f1 /proc/uptime)s"
rc=0
load $(echo "${modules:-virtio_pci,virtio_blk}" | tr , ' ') || rc=125
if [ "$rc" = 0 ]; then
  if [ -f /run.sh ]; then
    echo "iovirt-guest: payload start $(cut -d' ' -f1 /proc/uptime)s"
    (cd /root && exec sh /run.sh </dev/null)
    rc=$?
  else
    echo "iovirt-guest: no /run.sh in the initramfs"
    rc=126
  fi
fi
sync
echo "iovirt-guest: payload exit $rc ($(cut -d' ' -f1 /proc/uptime)s)"
poweroff -f
INIT
chmod 755 "$R/init"

# --- 5. fio layer: fio and the shared libraries it loads --------------------------------------------------------------
log "collecting fio and its shared libraries"
F="$WORK/fio"
mkdir -p "$F/usr/bin" "$F/etc"
cp -L "$(command -v fio)" "$F/usr/bin/fio"
libdirs=()
for lib in $(ldd "$(command -v fio)" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  mkdir -p "$F$(dirname "$lib")"
  cp -L "$lib" "$F$lib"
  libdirs+=("$(dirname "$lib")")
done
printf '%s\n' "${libdirs[@]}" | sort -u >"$F/etc/ld.so.conf"
ldconfig -r "$F" 2>/dev/null || die "ldconfig -r failed to build the fio layer's ld.so.cache"

# --- 6. archives ----------------------------------------------------------------------------------------------------
mkcpio() { (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) >"$2"; }
log "writing base.cpio and fio.cpio"
mkcpio "$R" "$WORK/out/base.cpio"
mkcpio "$F" "$WORK/out/fio.cpio"

{
  echo "version=$STAMP"
  echo "kernel_package=$(basename "$DEB")"
  echo "kernel_release=$KVER"
  if [ -f "$VMLINUX" ]; then echo "kernel=$OUT/vmlinux"; fi
  echo "bzimage=$OUT/bzImage"
  echo "initrd=$OUT/base.cpio"
  echo "fio_layer=$OUT/fio.cpio"
} >"$WORK/out/manifest"

rm -rf "$OUT"
mv "$WORK/out" "$OUT"
# Older stamps are builds of earlier scripts; keep the two newest of them (a guest of another checkout may be
# booting from one right now) and drop the rest. The downloaded .deb stays for reuse.
ls -1dt "$CACHE"/*/manifest 2>/dev/null | sed 's,/manifest$,,' | grep -vxF "$OUT" | tail -n +3 | xargs -r rm -rf || true
log "guest ready in $(( $(date +%s) - T0 )) s: $OUT ($(du -sh "$OUT" | cut -f1))"
cat "$OUT/manifest"
