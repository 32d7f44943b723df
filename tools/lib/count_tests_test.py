"""count_tests.py prints the closing line from Bazel's test XML."""
import os
import subprocess
import sys
import tempfile

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "count_tests.py")

GTEST_XML = """<?xml version="1.0"?>
<testsuites tests="3" failures="1">
  <testsuite name="S" tests="3" failures="1">
    <testcase name="a" status="run" result="completed"/>
    <testcase name="b" status="run" result="completed"><failure message="x"/></testcase>
    <testcase name="c" status="run" result="skipped"><skipped message="no GPU"/></testcase>
  </testsuite>
</testsuites>"""

NO_CASES_XML = """<?xml version="1.0"?>
<testsuites><testsuite name="sh" tests="1" failures="0"></testsuite></testsuites>"""


def run(logs, labels, bazel_rc=0, fuzz_rc=0, walls_rc=None):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(labels) + "\n")
    args = [sys.executable, SCRIPT, logs, f.name, str(bazel_rc), str(fuzz_rc)]
    if walls_rc is not None:
        args.append(str(walls_rc))
    try:
        return subprocess.run(args, capture_output=True, text=True)
    finally:
        os.unlink(f.name)


@pytest.fixture
def logs():
    with tempfile.TemporaryDirectory() as d:
        def write(label, xml):
            package, name = label.lstrip("/").split(":")
            os.makedirs(os.path.join(d, package, name))
            with open(os.path.join(d, package, name, "test.xml"), "w") as f:
                f.write(xml)
        yield d, write


def test_counts_cases_across_targets(logs):
    d, write = logs
    write("//a:t1", GTEST_XML)
    write("//b:t2", NO_CASES_XML)
    write("//old:gone", GTEST_XML)  # Not in this run's labels: ignored.
    result = run(d, ["//a:t1", "//b:t2"])
    assert result.stdout.strip().split("\n")[-1] == "2 passed, 1 failed, 1 skipped"
    assert result.returncode == 1


def test_all_green_exits_zero(logs):
    d, write = logs
    write("//b:t2", NO_CASES_XML)
    result = run(d, ["//b:t2"])
    assert result.stdout.strip() == "1 passed, 0 failed, 0 skipped"
    assert result.returncode == 0


def test_build_failure_without_results_is_a_failure(logs):
    d, _ = logs
    result = run(d, ["//a:t1"], bazel_rc=1)
    assert result.stdout.strip() == "0 passed, 1 failed, 0 skipped"
    assert result.returncode == 1


def test_nothing_ran_is_a_failure(logs):
    d, _ = logs
    result = run(d, [])
    assert result.stdout.strip() == "0 passed, 0 failed, 0 skipped"
    assert result.returncode == 1


def test_failed_fuzzing_counts(logs):
    d, write = logs
    write("//b:t2", NO_CASES_XML)
    result = run(d, ["//b:t2"], fuzz_rc=1)
    assert result.stdout.strip() == "1 passed, 1 failed, 0 skipped"


def test_the_clang_build_counts_as_one_check(logs):
    d, write = logs
    write("//b:t2", NO_CASES_XML)
    passed = run(d, ["//b:t2"], walls_rc=0)
    assert passed.stdout.strip() == "2 passed, 0 failed, 0 skipped"
    assert passed.returncode == 0
    failed = run(d, ["//b:t2"], walls_rc=1)
    assert failed.stdout.strip() == "1 passed, 1 failed, 0 skipped"
    assert failed.returncode == 1
