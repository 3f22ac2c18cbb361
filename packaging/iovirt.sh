#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The installed iovirt launcher: finds a JDK 25 and runs the installed jar. IOVIRT_JAVA_OPTS is appended last.
set -eu
LIB="$(dirname "$(readlink -f "$0")")/../share/iovirt"
for cand in "${JAVA_HOME:-}" /usr/lib/jvm/*25*; do
  if [ -n "$cand" ] && [ -x "$cand/bin/java" ] && "$cand/bin/java" -version 2>&1 | grep -q 'version "25'; then
    # The same JVM options as the development launcher: jvm.options (it says why each), two malloc arenas.
    export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
    BACKEND=""
    case "${1:-}" in serve|vm) BACKEND="@$LIB/backend-jvm.options" ;; esac
    # shellcheck disable=SC2086 # IOVIRT_JAVA_OPTS is a list of options; BACKEND is one @argfile or nothing
    exec "$cand/bin/java" "@$LIB/jvm.options" $BACKEND ${IOVIRT_JAVA_OPTS:-} -jar "$LIB/iovirt.jar" "$@"
  fi
done
echo "iovirt: JDK 25 not found (looked at \$JAVA_HOME and /usr/lib/jvm/*25*) — install one (e.g. temurin-25-jdk from Adoptium's apt repository) or set JAVA_HOME" >&2
exit 1
