#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Boots systemd (Debian's /lib/systemd/systemd) as PID 1 of new PID, mount, UTS, IPC and network namespaces, for
# SystemdNamespace: a real service manager on a machine whose PID 1 is not systemd. Usage: boot-systemd.sh CGROUP.
# The file system is the machine's (what apt-get installs there is what this systemd runs); what would touch the
# machine outside the namespaces is kept out:
#  - its cgroup tree is CGROUP under each hierarchy's root, so it neither manages nor kills anything of the machine's;
#  - /run is its own tmpfs (so /run/systemd/system, its sockets and the units' RuntimeDirectory= are its own);
#  - /sys is read-only, as in any container: no udev, no writes to the kernel's device settings;
#  - it boots into an empty target, and every unit the early-boot targets would pull in (udev, tmpfiles' /tmp
#    cleaning, sysctl, fsck and root remount, timers, gettys...) is masked in its /run; journald is left running.
set -euo pipefail
if [ "${1:-}" != --inside ]; then
  cg="${1:?usage: boot-systemd.sh CGROUP}"
  # Its root cgroup: systemd takes the cgroup it starts in as the root of what it manages. The named systemd
  # hierarchy (cgroup v1 or hybrid) and the unified one decide that; systemd creates its own in the others.
  while read -r _ dir type opts _; do
    case "$type:$opts" in
      cgroup2:* | cgroup:*name=systemd*) mkdir -p "$dir/$cg" && echo $$ > "$dir/$cg/cgroup.procs" ;;
    esac
  done < /proc/self/mounts
  exec unshare --pid --fork --mount --uts --ipc --net --mount-proc --propagation private bash "$0" --inside
fi

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -o remount,bind,ro /sys
mkdir -p /run/systemd/system /run/lock
cat > /run/systemd/system/idle-for-tests.target <<'UNIT'
[Unit]
Description=Nothing but the journal: the units a test starts, and what they need
DefaultDependencies=no
# Its log and the units' (journalctl inside the namespaces), kept in this /run only: nothing flushes it to /var.
Wants=systemd-journald.socket systemd-journald-dev-log.socket
After=systemd-journald.socket systemd-journald-dev-log.socket
UNIT
mask() { [ -e "/run/systemd/system/$1" ] || ln -s /dev/null "/run/systemd/system/$1"; }
shopt -s nullglob
for dir in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
  for target in sysinit basic sockets timers paths local-fs local-fs-pre swap slices cryptsetup veritysetup \
    integritysetup getty multi-user graphical remote-fs network network-online network-pre rescue emergency; do
    for unit in "$dir/$target.target.wants"/* "$dir/$target.target.requires"/*; do
      case "${unit##*/}" in
        systemd-journald.service | systemd-journald.socket | systemd-journald-dev-log.socket) ;;
        *) mask "${unit##*/}" ;;
      esac
    done
  done
done
# And, in case a unit names them directly: everything that changes the machine beyond these namespaces.
for unit in systemd-remount-fs.service systemd-fsck-root.service systemd-tmpfiles-setup.service \
  systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.service systemd-tmpfiles-clean.timer \
  systemd-sysctl.service systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
  systemd-modules-load.service systemd-sysusers.service systemd-firstboot.service systemd-machine-id-commit.service \
  systemd-binfmt.service systemd-random-seed.service systemd-journal-flush.service systemd-update-utmp.service \
  systemd-timesyncd.service systemd-networkd.service systemd-resolved.service systemd-logind.service \
  networking.service ifupdown-pre.service systemd-pstore.service; do
  mask "$unit"
done
exec env -i container=iovirt-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --unit=idle-for-tests.target --log-target=journal --show-status=no
