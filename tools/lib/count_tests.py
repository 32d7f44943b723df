"""Counts test cases in Bazel's test.xml files and prints the closing line.

Usage: count_tests.py TESTLOGS_DIR LABELS_FILE BAZEL_EXIT_CODE FUZZ_EXIT_CODE
                      [WALLS_EXIT_CODE]

LABELS_FILE lists the test targets of this run, one label a line; only their
results count (bazel-testlogs keeps those of earlier runs too).

GoogleTest and pytest write JUnit XML (one <testcase> per case); a target
whose XML has no cases counts as one case. A Bazel failure that left no
failing case behind (a build error) counts as one failure, and so does a
failed fuzzing run. WALLS_EXIT_CODE, when given, is the clang build's
(layering_check, -Wextra -Werror): one check passed or failed. Exits 1 on any failure or when nothing passed.
"""
import os
import sys
import xml.etree.ElementTree as ElementTree


def count_file(path):
    passed = failed = skipped = 0
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return 0, 1, 0
    cases = list(root.iter("testcase"))
    if not cases:
        # A target without cases: one case, failed if the suite says so.
        suite_failed = any(
            int(s.get("failures", 0)) + int(s.get("errors", 0)) > 0
            for s in root.iter("testsuite"))
        return (0, 1, 0) if suite_failed else (1, 0, 0)
    for case in cases:
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif (case.find("skipped") is not None
              or case.get("result") == "skipped"
              or case.get("status") == "notrun"):
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


def main():
    logs, labels_file = sys.argv[1], sys.argv[2]
    bazel_rc, fuzz_rc = int(sys.argv[3]), int(sys.argv[4])
    # The clang build of everything (layering_check, -Wextra -Werror): one
    # check, passed or failed.
    walls_rc = int(sys.argv[5]) if len(sys.argv) > 5 else None
    passed = failed = skipped = 0
    with open(labels_file) as labels:
        for label in labels:
            package, _, name = label.strip().lstrip("/").partition(":")
            if not name:
                continue
            xml = os.path.join(logs, package, name, "test.xml")
            if not os.path.exists(xml):
                continue  # Not run: a build error, counted below.
            p, f, s = count_file(xml)
            passed, failed, skipped = passed + p, failed + f, skipped + s
    if bazel_rc != 0 and failed == 0:
        failed = 1
    if fuzz_rc != 0:
        failed += 1
    if walls_rc is not None:
        if walls_rc == 0:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
