"""The real warmstartd against what a hostile local user or a careless
operator puts in its way (issue 14): FIFOs under a model root, huge tensor
tables, descriptor and session floods, memory limits.

Binaries come from the test's runfiles ($WARMSTART_RUNFILES); every daemon
runs with the host backend on sockets and model roots under /tmp.
"""
import os
import signal

from harness import SAFETENSORS, in_root

WORKDIR_PREFIX = "wh-"
MODEL_ROOT_FIXTURES = (SAFETENSORS,)


def test_a_fifo_under_a_root_is_refused_and_shutdown_completes(daemon, root):
    # Opening a FIFO for reading blocks until a writer comes: before the
    # fix each LoadModel of one hung a handler thread forever, and SIGTERM
    # never completed. The subprocess timeouts turn a hang into a failure.
    fifo = os.path.join(root, "model.safetensors")
    os.mkfifo(fifo)
    for _ in range(3):
        loaded = daemon.ctl("load", "fifo", fifo, timeout=60)
        assert loaded.returncode == 2, loaded.stderr
        assert f"{fifo}: not a regular file (a FIFO)" in loaded.stderr
    assert daemon.status("fifo") is None
    # A directory holding the FIFO among real weights loads the real ones.
    sub = os.path.join(root, "dir")
    os.mkdir(sub)
    os.mkfifo(os.path.join(sub, "a.safetensors"))
    os.link(in_root(root, SAFETENSORS), os.path.join(sub, "b.safetensors"))
    loaded = daemon.ctl("load", "dir", sub, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    # The daemon still serves, and stops when told.
    assert daemon.ctl("ls").returncode == 0
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    assert "stopped" in daemon.logs()
