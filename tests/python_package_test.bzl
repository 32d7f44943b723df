"""python_package_test: a pytest file that uses the Python package
`warmstart` (ctypes over //client:libwarmstart.so) against the real
daemon, run by client/python/pytest_runner.sh (which also handles
--config=asan) with the test venv's python."""

def python_package_test(name, size = "medium", data = [], **kwargs):
    """One sh_test running `name`.py; `data` adds to what every such test
    needs (the package, the library, the daemon, warmstartctl, the harness
    and the fixtures)."""
    native.sh_test(
        name = name,
        size = size,
        srcs = ["//client/python:pytest_runner.sh"],
        args = [
            "$(location //tools:pytest_runner.sh)",
            "$(location //client:libwarmstart.so)",
            "$(location %s.py)" % name,
            "$(location //tools/warmstartctl:warmstartctl)",
        ],
        data = [
            name + ".py",
            ":daemon_harness",
            "//client:libwarmstart.so",
            "//client/python:package",
            "//daemon:warmstartd",
            "//tools/warmstartctl:warmstartctl",
            "//tests/testdata:fixtures",
            "//tools:pytest_runner.sh",
        ] + data,
        **kwargs
    )
