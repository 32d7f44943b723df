#!/usr/bin/env bash
# Builds the warmstartd image's root filesystem from Debian's packages
# alone, without pulling any image: Debian 12's essential set (dpkg, coreutils,
# a shell) plus the runtime libraries of runtime-packages.txt, then the
# binaries, the warmstart user (10001) and /run/warmstart.
#
#   deploy/image/build-rootfs.sh OUT.tar WARMSTARTD WARMSTARTCTL
#   podman import --change 'USER=10001:10001' \
#       --change 'ENTRYPOINT=["/usr/local/bin/warmstartd"]' OUT.tar NAME
#
# Needs mmdebstrap (Debian's package) and root; about a minute. Manual
# pages, documentation and locales are left out.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 OUT.tar WARMSTARTD WARMSTARTCTL" >&2
  exit 1
fi
out="$1"
warmstartd="$2"
warmstartctl="$3"
here="$(cd "$(dirname "$0")" && pwd)"
packages="$(grep -v '^#' "$here/runtime-packages.txt" | tr '\n' ',' |
            sed 's/,$//')"
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
install -m 0755 "$warmstartd" "$staging/warmstartd"
install -m 0755 "$warmstartctl" "$staging/warmstartctl"

# The essential set's usrmerge (a converter, useless in a root that is
# merged-/usr from the start) brings perl: usr-is-merged replaces it, and
# perl goes.
mmdebstrap --quiet --format=tar --variant=essential --include="usr-is-merged,$packages" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='chroot "$1" dpkg --purge usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl perl-modules-5.36 libperl5.36 libgdbm-compat4 libgdbm6' \
  --customize-hook='mkdir -p "$1/usr/local/bin"' \
  --customize-hook="copy-in $staging/warmstartd $staging/warmstartctl /usr/local/bin" \
  --customize-hook='echo "warmstart:x:10001:10001:warmstart:/nonexistent:/usr/sbin/nologin" >> "$1/etc/passwd"' \
  --customize-hook='echo "warmstart:x:10001:" >> "$1/etc/group"' \
  --customize-hook='install -d -m 0750 -o 10001 -g 10001 "$1/run/warmstart"' \
  --customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists" "$1/var/log/"*' \
  bookworm "$out"
