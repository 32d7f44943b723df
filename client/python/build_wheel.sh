#!/usr/bin/env bash
# Builds the wheel of the Python package `warmstart` (with its dist-info,
# libwarmstart.so inside the package) into OUTDIR, offline, with Debian's
# pip, setuptools and wheel; prints the wheel's path. The version is the
# daemon's: kVersion in common/version.h.
# Usage: build_wheel.sh PACKAGE_DIR LIBWARMSTART_SO VERSION_H OUTDIR
#   PACKAGE_DIR: client/python (holding setup.py and warmstart/).
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: build_wheel.sh PACKAGE_DIR LIBWARMSTART_SO VERSION_H OUTDIR" >&2
  exit 1
fi
package="$1"
library="$2"
version_h="$3"
out="$4"
version="$(sed -n 's/^inline constexpr char kVersion\[\] = "\(.*\)";$/\1/p' \
    "$version_h")"
if [ -z "$version" ]; then
  echo "build_wheel.sh: no kVersion in $version_h" >&2
  exit 1
fi
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
install -d "$staging/warmstart"
install -m 0644 "$package/setup.py" "$staging/"
install -m 0644 "$package"/warmstart/*.py "$staging/warmstart/"
install -m 0755 "$library" "$staging/warmstart/libwarmstart.so"
mkdir -p "$out"
log="$staging/log"
if ! WARMSTART_VERSION="$version" /usr/bin/python3 -m pip wheel \
    --no-deps --no-index --no-build-isolation --no-cache-dir \
    --disable-pip-version-check \
    --wheel-dir "$out" "$staging" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
wheel="$out/warmstart-$version-py3-none-linux_$(uname -m).whl"
if [ ! -f "$wheel" ]; then
  echo "build_wheel.sh: pip made no $wheel:" >&2
  ls "$out" >&2
  exit 1
fi
echo "$wheel"
