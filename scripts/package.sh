#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds a self-contained iovirt install tree and a Debian package from it, with Debian's own tools:
#   target/dist/root/usr/share/iovirt/{iovirt.jar,lib/*.jar} the jar and its dependencies (architecture-independent)
#   target/dist/root/usr/bin/iovirt                          the launcher (finds a JDK 25)
#   target/dist/root/usr/share/man/man1/iovirt*.1.gz         man pages (picocli ManPageGenerator -> asciidoctor)
#   target/dist/root/usr/share/bash-completion/completions/iovirt, .../zsh/vendor-completions/_iovirt
#   target/dist/root/usr/share/doc/iovirt/{copyright,changelog.gz,*.md}  copyright: packaging/copyright (DEP-5)
#   target/dist/root/usr/share/lintian/overrides/iovirt     packaging/lintian-overrides: the tags that are wrong here
#   target/dist/root/lib/systemd/system/                     units from packaging/systemd (daemon, per-export, standby pair)
#   target/dist/root/etc/                                    packaging/etc, conffiles: /etc/default/iovirt (the units'
#                                                            options), /etc/iovirt/daemon.json (no devices yet)
#   target/dist/root/DEBIAN/{postinst,prerm,postrm}          packaging/*: the units' user and group, daemon-reload,
#                                                            stop on removal, restart on upgrade, what purge removes
#   target/iovirt_<version>_all.deb                          dpkg-deb --build of that tree
# Options: --install (dpkg -i the package), --prefix DIR (with --install: copy the tree under DIR instead),
#          --build-dir DIR (build there instead of target/, e.g. while something runs from target/iovirt.jar: Maven
#          rewrites that jar in place, and a JVM running from it then fails to load any class it had not loaded yet).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INSTALL=0
PREFIX=""
OUT="$ROOT/target"
while [ $# -gt 0 ]; do
  case "$1" in
    --install) INSTALL=1 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
    --build-dir) OUT="$(realpath -m "${2:?--build-dir needs a directory}")"; shift ;;
    *) echo "package.sh: unknown argument '$1' — use --install, --prefix DIR and/or --build-dir DIR" >&2; exit 2 ;;
  esac
  shift
done

# It removes and rebuilds DIR/dist: a DIR that holds the sources would lose them.
if [ "$OUT" = / ] || [[ "$ROOT/" == "$OUT/"* ]]; then
  echo "package.sh: --build-dir $OUT contains the sources ($ROOT); give a directory of its own, e.g. /tmp/iovirt-build" >&2
  exit 2
fi

for tool in asciidoctor dpkg-deb gzip; do
  command -v "$tool" >/dev/null || "$ROOT/scripts/install-deps.sh" >&2
done
JDK=""
for cand in "${JAVA_HOME:-}" /usr/lib/jvm/*25*; do
  if [ -n "$cand" ] && [ -x "$cand/bin/java" ] && "$cand/bin/java" -version 2>&1 | grep -q 'version "25'; then JDK="$cand"; break; fi
done
[ -n "$JDK" ] || { echo "package.sh: JDK 25 not found — set JAVA_HOME" >&2; exit 1; }
export JAVA_HOME="$JDK"

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
# The same commit gives the same .deb, byte for byte: every time in it is the commit's (SOURCE_DATE_EPOCH, unless the
# caller set one) — the jar's entries (Maven's outputTimestamp), the changelog's date, and every file's mtime and the
# ar members' dates, which dpkg-deb clamps to SOURCE_DATE_EPOCH; otherwise each build stamps them with its own clock.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH
(cd "$ROOT" && ./mvnw -B -q -DskipTests -Diovirt.commit="$COMMIT" -Diovirt.buildDirectory="$OUT" \
  -Dproject.build.outputTimestamp="$SOURCE_DATE_EPOCH" package) >&2
VERSION="$(sed -n 's/^version=//p' "$OUT/classes/io/iovirt/cli/version.properties")"
DEB_VERSION="${VERSION/-SNAPSHOT/~snapshot}+git$COMMIT"

DIST="$OUT/dist"
TREE="$DIST/root"
rm -rf "$DIST"
# The jars and the JVM options are the same on every architecture (Architecture: all): /usr/share, where Debian's Java
# policy puts a program's private jars; packaging/iovirt.sh finds them relative to itself.
install -d "$TREE/usr/share/iovirt/lib" "$TREE/usr/bin" "$TREE/usr/share/man/man1" \
  "$TREE/usr/share/bash-completion/completions" "$TREE/usr/share/zsh/vendor-completions" \
  "$TREE/usr/share/doc/iovirt" "$TREE/usr/share/lintian/overrides" "$TREE/lib/systemd/system" "$TREE/DEBIAN"
install -m 0644 "$OUT/iovirt.jar" "$TREE/usr/share/iovirt/"
install -m 0644 "$OUT"/lib/*.jar "$TREE/usr/share/iovirt/lib/"
install -m 0755 "$ROOT/packaging/iovirt.sh" "$TREE/usr/bin/iovirt"
install -m 0644 "$ROOT/packaging/jvm.options" "$ROOT/packaging/backend-jvm.options" "$TREE/usr/share/iovirt/"
for adoc in "$OUT"/man/*.adoc; do
  asciidoctor -b manpage -a reproducible -D "$DIST/man" "$adoc"
done
for page in "$DIST"/man/*.1; do
  gzip -9n -c "$page" > "$TREE/usr/share/man/man1/$(basename "$page").gz"
done
# Without picocli's #! line: bash-completion sources the file, it is not run (a #! there suggests it can be).
sed '1{/^#!/d}' "$OUT/iovirt.bash-completion" > "$TREE/usr/share/bash-completion/completions/iovirt"
chmod 0644 "$TREE/usr/share/bash-completion/completions/iovirt"
cat > "$TREE/usr/share/zsh/vendor-completions/_iovirt" <<'ZSH'
#compdef iovirt
# picocli generates a bash completion script; zsh runs it through bashcompinit.
autoload -U +X bashcompinit && bashcompinit
source /usr/share/bash-completion/completions/iovirt
ZSH
# The package's contact (Maintainer, the changelog's trailer, the copyright's Upstream-Contact): the address the
# project's own commits carry, its only one; lintian takes no host without a domain (iovirt@localhost was an error).
MAINTAINER="iovirt maintainers <maintainers@users.noreply.r-seed-1b9482a8.example>"
# Every bundled jar needs its own Files: paragraph in packaging/copyright (its authors and licence); a new dependency
# without one stops the build here rather than shipping under the wrong notice.
for jar in "$OUT"/lib/*.jar; do
  covered=0
  while read -r pattern; do
    # shellcheck disable=SC2053 # the Files: value is a glob, matched as one
    [[ "usr/share/iovirt/lib/$(basename "$jar")" == $pattern ]] && covered=1
  done < <(sed -n 's/^Files: //p' "$ROOT/packaging/copyright" | tr ' ' '\n' | grep -vx '\*')
  if [ "$covered" != 1 ]; then
    echo "package.sh: $(basename "$jar") has no Files: paragraph in packaging/copyright — add its authors and licence" >&2
    exit 1
  fi
done
# DEP-5, the licence named and not copied: Debian ships its text as /usr/share/common-licenses/Apache-2.0.
sed "s|@MAINTAINER@|$MAINTAINER|" "$ROOT/packaging/copyright" > "$TREE/usr/share/doc/iovirt/copyright"
chmod 0644 "$TREE/usr/share/doc/iovirt/copyright"
install -m 0644 "$ROOT/packaging/lintian-overrides" "$TREE/usr/share/lintian/overrides/iovirt"
# A native package's changelog (no Debian revision in the version): one entry for this build, dated by its commit
# (SOURCE_DATE_EPOCH above) so that the same commit gives the same file.
{
  echo "iovirt ($DEB_VERSION) unstable; urgency=medium"
  echo
  echo "  * Built by scripts/package.sh from commit $COMMIT."
  echo
  echo " -- $MAINTAINER  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$TREE/usr/share/doc/iovirt/changelog.gz"
chmod 0644 "$TREE/usr/share/doc/iovirt/changelog.gz"
# The guides the units' Documentation= lines and the man pages point to.
install -m 0644 "$ROOT"/docs/*.md "$TREE/usr/share/doc/iovirt/"
find "$ROOT/packaging/systemd" -maxdepth 1 -type f \( -name '*.service' -o -name '*.socket' -o -name '*.path' -o -name '*.target' \) \
  -exec install -m 0644 {} "$TREE/lib/systemd/system/" \;

# /etc: what the units read. daemon.json must exist: iovirt.service passes --config /etc/iovirt/daemon.json, and a
# --config that cannot be read stops the daemon (Restart= would loop on a fresh install).
(cd "$ROOT/packaging/etc" && find . -type f) | while read -r f; do
  install -D -m 0644 "$ROOT/packaging/etc/$f" "$TREE/etc/$f"
done
# dpkg-deb marks nothing as a conffile by itself (debhelper would): without this list an upgrade would overwrite an
# administrator's edits, and a purge would leave the files behind.
(cd "$TREE" && find etc -type f | sort | sed 's|^|/|') > "$TREE/DEBIAN/conffiles"
# The maintainer scripts (postinst: user and group, daemon-reload, restart of running units on an upgrade; prerm:
# stop them on removal; postrm: daemon-reload, and what a purge removes), with the package's units in @UNITS@: the
# unit files installed above, a template as a glob of its instances (iovirt-blk@.service -> iovirt-blk@*.service).
UNITS="$(cd "$TREE/lib/systemd/system" && ls | sed 's/@\./@*./' | tr '\n' ' ' | sed 's/ $//')"
for script in postinst prerm postrm; do
  sed "s|@UNITS@|$UNITS|" "$ROOT/packaging/$script" > "$TREE/DEBIAN/$script"
  chmod 0755 "$TREE/DEBIAN/$script"
done

cat > "$TREE/DEBIAN/control" <<CONTROL
Package: iovirt
Version: $DEB_VERSION
Architecture: all
Maintainer: $MAINTAINER
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$TREE" | cut -f1)
Depends: adduser
Recommends: qemu-system-x86, qemu-utils
Description: I/O virtualization for KVM/QEMU guests
 vhost-user virtio-blk and virtio-net backends, a virtual switch, VFIO and
 SR-IOV host tooling, and a user-space VFIO NVMe driver. Needs a JDK 25
 (found in /usr/lib/jvm or through JAVA_HOME).
CONTROL
DEB="$OUT/iovirt_${DEB_VERSION}_all.deb"
dpkg-deb --root-owner-group -Zxz --build "$TREE" "$DEB" >&2
echo "$DEB"

if [ "$INSTALL" = 1 ]; then
  if [ -n "$PREFIX" ]; then
    install -d "$PREFIX"
    (cd "$TREE" && tar --exclude=./DEBIAN -cf - .) | (cd "$PREFIX" && tar -xf -)
    echo "iovirt: installed under $PREFIX (run $PREFIX/usr/bin/iovirt)" >&2
  else
    dpkg -i "$DEB" >&2
    echo "iovirt: installed $DEB (iovirt --version; man iovirt)" >&2
  fi
fi
