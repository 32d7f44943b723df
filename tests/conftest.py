"""pytest fixtures shared by the tests that start the real warmstartd
(daemon_models_test, ctl_test, python_client_test); the helpers they use
are in harness.py.

A test module may set
  WORKDIR_PREFIX: the prefix of its work directories' names ("ws-" if
    unset);
  MODEL_ROOT_FIXTURES: the shared fixtures copied into its model roots
    (none if unset);
or define its own `root` fixture, which `daemon` then uses.
"""
import os
import shutil
import signal
import tempfile

import pytest

import harness


@pytest.fixture
def workdir(request):
    """A fresh directory under /tmp (short enough for a unix socket),
    removed after the test."""
    prefix = getattr(request.module, "WORKDIR_PREFIX", "ws-")
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def root(request, workdir):
    """A model root, WORKDIR/models, holding copies of the module's
    MODEL_ROOT_FIXTURES (runfiles are symlinks out of the tree, which a
    model root rightly refuses)."""
    fixtures = getattr(request.module, "MODEL_ROOT_FIXTURES", ())
    return harness.make_model_root(os.path.join(workdir, "models"), fixtures)


@pytest.fixture
def daemon(workdir, root):
    """A ready warmstartd (host backend) serving `root`, killed after the
    test."""
    d = harness.Daemon(workdir, "--model_root", root)
    yield d
    d.stop(signal.SIGKILL)
