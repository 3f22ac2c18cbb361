# SPDX-License-Identifier: Apache-2.0
# Sourced by the benchmark scripts. listening PATH: true once some process listens on the UNIX socket PATH.
# A socket file exists from bind(2) on, but connect(2) is refused until the server has called listen(2) (iovirt sets
# the file's mode in between), so a frontend started when the file appears can fail with "Connection refused" —
# scripts/bench-net.sh lost half of its iovirt runs that way. /proc/net/unix lists the bound path with the flag
# __SO_ACCEPTCON (00010000) once it listens.
listening() {
  awk -v p="$1" '$NF == p && $4 == "00010000" { found = 1 } END { exit !found }' /proc/net/unix
}
