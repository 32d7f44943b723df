#!/usr/bin/env bash
# The wheel of the Python package: built by build_wheel.sh (as tools/install
# builds it), installed by pip with no index, it is a real distribution:
# dist-info with a RECORD listing the package and libwarmstart.so, the
# daemon's version everywhere (wheel name, dist-info, warmstart.__version__
# from the library, `warmstartd --version`), and the installed package
# imports (warmstart.torch included) with the library beside it and no
# WARMSTART_LIBRARY.
# Usage: wheel_test.sh BUILD_WHEEL_SH SETUP_PY LIBWARMSTART_SO VERSION_H WARMSTARTD
set -euo pipefail
build_wheel="$1"
package="$(dirname "$2")"
library="$3"
version_h="$4"
warmstartd="$5"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }

daemon_version="$("$warmstartd" --version | awk '{print $2}')"
[ -n "$daemon_version" ] || fail "warmstartd --version printed no version"

wheel="$("$build_wheel" "$package" "$library" "$version_h" "$tmp/dist")"
[ "$(basename "$wheel")" = \
  "warmstart-$daemon_version-py3-none-linux_$(uname -m).whl" ] ||
  fail "wheel $wheel is not named for version $daemon_version"

site="$tmp/site"
/usr/bin/python3 -m pip install -q --no-deps --no-index --no-cache-dir \
    --disable-pip-version-check --root-user-action=ignore \
    --target "$site" "$wheel"
[ -f "$site/warmstart/libwarmstart.so" ] || fail "no libwarmstart.so installed"
record="$site/warmstart-$daemon_version.dist-info/RECORD"
[ -f "$record" ] || fail "no $record"
for file in warmstart/__init__.py warmstart/torch.py \
    warmstart/libwarmstart.so; do
  grep -q "^$file," "$record" || fail "RECORD does not list $file"
done

env -u WARMSTART_LIBRARY PYTHONPATH="$site" /usr/bin/python3 - \
    "$daemon_version" "$site" <<'PY'
import importlib.metadata
import os
import sys

want, site = sys.argv[1], sys.argv[2]
import warmstart
import warmstart.torch

assert warmstart.__file__.startswith(site), warmstart.__file__
assert warmstart.__version__ == want, (warmstart.__version__, want)
dist = importlib.metadata.distribution("warmstart")
assert dist.version == want, dist.version
assert os.path.samefile(dist.locate_file("warmstart/libwarmstart.so"),
                        os.path.join(site, "warmstart", "libwarmstart.so"))
assert dist.metadata["Requires-Python"] == ">=3.9"
assert "numpy" in dist.requires
print(f"wheel {want}: installed and imported from {site}")
PY
