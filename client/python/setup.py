"""Builds the wheel of the Python package `warmstart`: client/python/
build_wheel.sh runs it on a staging copy of the package that holds
libwarmstart.so beside __init__.py. Not for running by hand.

The version is the daemon's (kVersion in common/version.h), passed in
$WARMSTART_VERSION. The wheel carries a native library, so it is tagged for
this platform (py3-none-linux_x86_64: any Python 3, as ctypes needs no
particular ABI).
"""
import os
import sysconfig

from setuptools import setup
from wheel.bdist_wheel import bdist_wheel


class PlatformWheel(bdist_wheel):
    """A wheel for this platform, any Python 3: libwarmstart.so is loaded
    with ctypes, not linked against Python (so the files stay at the
    wheel's root, as a pure package's)."""

    def get_tag(self):
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        return "py3", "none", platform


setup(
    name="warmstart",
    version=os.environ["WARMSTART_VERSION"],
    description="Zero-copy access to model weights that warmstartd keeps "
                "resident",
    packages=["warmstart"],
    package_data={"warmstart": ["libwarmstart.so"]},
    python_requires=">=3.9",
    install_requires=["numpy"],
    extras_require={"torch": ["torch"]},
    # vLLM runs its general plug-ins in every one of its processes: this
    # registers the `warmstart` load format (warmstart/vllm_loader.py).
    entry_points={
        "vllm.general_plugins": ["warmstart = warmstart.vllm_loader:register"],
    },
    cmdclass={"bdist_wheel": PlatformWheel},
    zip_safe=False,
)
