"""The repository stands alone: a plain clone holds everything the tests,
the demo and CI read. Checks the tracked files of the source tree this test
was built from (found through its own runfiles symlink)."""
import os
import re
import subprocess

import pytest

# Matches a path to the project's private folder beside the checkout, as a
# relative path or as the Bazel repository that once pointed at it.
OUTSIDE_THE_CLONE = re.compile(r"\.\./shared\b|@shared//|external/shared/")
# A path into the test data, as scripts, BUILD files and tests name it.
TESTDATA_PATH = re.compile(r"tests/testdata/[\w./-]+\.(?:gguf|safetensors|tensors|json)")
DATA_SUFFIXES = (".gguf", ".safetensors", ".tensors")


def source_root_file():
    """This test's source file in the checkout (not in the runfiles)."""
    return os.path.realpath(__file__)


def source_root():
    """The checkout this test's source file lives in."""
    return os.path.dirname(os.path.dirname(source_root_file()))


def tracked_files(root):
    """Paths (relative to `root`) of the files git tracks, or of every file
    outside build outputs where `root` is not a git checkout."""
    if os.path.exists(os.path.join(root, ".git")):  # A file in worktrees.
        out = subprocess.run(["git", "-C", root, "ls-files", "-z"],
                             check=True, capture_output=True).stdout
        return [p for p in out.decode().split("\0") if p]
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs
                      if not d.startswith(("bazel-", ".")) and d != "out"]
        paths += [os.path.relpath(os.path.join(directory, f), root)
                  for f in files]
    return paths


def text_of(root, path):
    with open(os.path.join(root, path), "rb") as f:
        data = f.read()
    if b"\0" in data:
        return None  # a binary file: weights, not references
    return data.decode("utf-8", errors="replace")


def references_outside(root, paths):
    """(path, line number, line) of every line naming the folder beside the
    checkout."""
    found = []
    for path in paths:
        text = text_of(root, path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_THE_CLONE.search(line):
                found.append((path, number, line.strip()))
    return found


@pytest.fixture(scope="module")
def root():
    return source_root()


@pytest.fixture(scope="module")
def files(root):
    paths = tracked_files(root)
    assert "tools/test" in paths and "tools/demo" in paths, (
        f"{root} does not look like the warmstart checkout")
    return paths


def test_no_tracked_file_names_the_folder_beside_the_checkout(root, files):
    # This file names the folder on purpose, to recognise it.
    this_file = os.path.relpath(source_root_file(), root)
    assert this_file in files
    others = [path for path in files if path != this_file]
    assert references_outside(root, others) == []


def test_the_check_catches_a_reference(tmp_path):
    (tmp_path / "script").write_text('cp "$(cd .. && pwd)/shared/x" .\n'
                                     "model=../shared/fixtures/a.gguf\n")
    (tmp_path / "BUILD").write_text('data = ["@shared//:fixtures"]\n')
    found = references_outside(str(tmp_path), ["script", "BUILD"])
    assert [(p, n) for p, n, _ in found] == [("script", 2), ("BUILD", 1)]


def test_every_named_test_data_file_is_in_the_repository(root, files):
    tracked = set(files)
    missing = []
    for path in files:
        if path.startswith("tests/testdata/"):
            continue
        text = text_of(root, path)
        if text is None:
            continue
        for name in TESTDATA_PATH.findall(text):
            if name not in tracked:
                missing.append((path, name))
    assert missing == []


def test_every_test_data_file_has_expected_values_and_provenance(root, files):
    with open(os.path.join(root, "tests/testdata/README.md")) as f:
        readme = f.read()
    data = [p for p in files
            if p.startswith("tests/testdata/") and p.endswith(DATA_SUFFIXES)]
    assert len(data) >= 39, data
    problems = []
    for path in data:
        expected = (path[:-len(".gguf")] + ".json" if path.endswith(".gguf")
                    else path + ".json")
        if expected not in files:
            problems.append(f"{path}: no expected-values file {expected}")
        relative = path[len("tests/testdata/"):].split("/", 1)[1]
        if f"`{relative}`" not in readme:
            problems.append(f"{path}: not listed in tests/testdata/README.md")
    assert problems == []


def test_the_demo_serves_a_model_the_repository_carries(root, files):
    text = text_of(root, "tools/demo")
    models = TESTDATA_PATH.findall(text)
    assert models == ["tests/testdata/gguf/ollama-llama-2-tiny-random.gguf"]
    assert models[0] in files
