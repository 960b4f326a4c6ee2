"""--sandbox: the same gradients as in-process; hostile code inside the sandbox fails without effect.

The hostile models are loaded with --trust *inside* the sandbox, so their code really runs there: each test
first shows (in this process, or by construction) that the code does what it says outside the sandbox.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time

import numpy as np
import pytest

from tests.cli import hostile_files as H
from tests.cli.conftest import closed_form_gradient
from tfpartials.sandbox import landlock_abi

pytestmark = pytest.mark.skipif(landlock_abi() < 1, reason="this kernel offers no Landlock; --sandbox refuses")


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Sandbox work directories go under tmp_path, so the tests can see that none is left behind."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    left = [n for n in os.listdir(root) if n.startswith("tfpartials-sandbox-")]
    assert left == [], "a sandbox work directory was left behind"


def _graph_write(marker):
    return f"lambda t: (__import__('tensorflow').io.write_file({str(marker)!r}, 'pwned'), t)[1]"


def test_sandbox_gradients_equal_in_process(files, cli, tmp_path):
    inproc, boxed = tmp_path / "a.npz", tmp_path / "b.npz"
    code, out_a, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--batch-size", "5", "--out", inproc)
    assert code == 0, err
    code, out_b, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--batch-size", "5", "--out", boxed,
                           "--sandbox")
    assert code == 0, err
    assert err == ""
    assert out_a == out_b                      # the same table, printed through the parent
    ref = closed_form_gradient(files)
    with np.load(inproc) as a, np.load(boxed) as b:
        assert sorted(a.files) == sorted(b.files) == sorted(ref)
        for k in ref:
            np.testing.assert_allclose(b[k], ref[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7)


def test_graph_op_writing_outside_is_blocked(files, cli, tmp_path):
    """A Lambda whose graph holds tf.io.write_file to a path outside: it writes in-process, not in the sandbox."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    marker = outside / "MARKER"
    model = H.model_with_lambda(tmp_path / "graphwrite.keras", _graph_write(marker))
    assert not marker.exists()               # building the model only traces the op
    out = tmp_path / "g.npz"
    code, _, err = cli("gradients", model, "--data", files.lin_npz, "--loss", "mse", "--trust", "--sandbox",
                       "--out", out, "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "blocked by the tfpartials sandbox" in err and "Permission denied" in err
    assert not marker.exists() and not out.exists()
    # the control: the same command without the sandbox does write the file
    code, _, err = cli("gradients", model, "--data", files.lin_npz, "--loss", "mse", "--trust", "--quiet")
    assert code == 0, err
    assert marker.read_text() == "pwned"


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 counting the connections it receives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    state = {"connections": 0, "stop": False}

    def serve():
        while not state["stop"]:
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            state["connections"] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], state
    state["stop"] = True
    thread.join(timeout=5)
    server.close()


def test_network_connection_is_blocked(files, cli, tmp_path, listener):
    port, state = listener
    source = f"lambda t: (__import__('socket').create_connection(('127.0.0.1', {port}), timeout=5), t)[1]"
    model = H.model_with_lambda(tmp_path / "net.keras", source)
    deadline = time.monotonic() + 10
    while state["connections"] < 1 and time.monotonic() < deadline:   # the control: building it connected
        time.sleep(0.05)
    assert state["connections"] == 1
    code, _, err = cli("gradients", model, "--data", files.lin_npz, "--loss", "mse", "--trust", "--sandbox",
                       "--quiet")
    assert code == 2 and err.count("\n") == 1
    assert "blocked by the tfpartials sandbox: the model tried to use the network" in err
    time.sleep(0.5)
    assert state["connections"] == 1


def test_reading_a_file_outside_is_blocked(files, cli, tmp_path):
    secret = tmp_path / "secrets" / "token.txt"
    secret.parent.mkdir()
    secret.write_text("hunter2")
    source = f"lambda t: t + 0.0 * len(open({str(secret)!r}).read())"
    model = H.model_with_lambda(tmp_path / "read.keras", source)
    code, _, err = cli("gradients", model, "--data", files.lin_npz, "--loss", "mse", "--trust", "--sandbox",
                       "--quiet")
    assert code == 2 and err.count("\n") == 1
    assert f"the model tried to read '{secret}', outside the model and its data" in err


def test_python_api_returns_arrays(files, tmp_path):
    from tfpartials._checks import InputError
    from tfpartials.sandbox import sandboxed

    g = sandboxed("gradients", files.lin_keras, data=(files.x, files.y), loss="mse", batch_size=8)
    ref = closed_form_gradient(files)
    assert sorted(g) == sorted(ref)
    for k in ref:
        np.testing.assert_allclose(g[k], ref[k], rtol=1e-5, atol=1e-6)
    marker = tmp_path / "MARKER"
    evil = H.model_with_lambda(tmp_path / "evil.keras", H.lambda_source_writing(marker), marker)
    with pytest.raises(InputError, match=f"blocked by the tfpartials sandbox: the model tried to write '{marker}'"):
        sandboxed("gradients", evil, data=files.lin_npz, loss="mse", trust=True)
    assert not marker.exists()


def test_memory_limit_is_enforced(files, cli, tmp_path):
    out = tmp_path / "g.npz"
    code, _, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--sandbox", "--sandbox-memory",
                       "300MiB", "--out", out, "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "memory" in err.lower()
    assert not out.exists()


def test_sandbox_checks_outputs_before_starting(files, cli, tmp_path):
    out = tmp_path / "g.npz"
    out.write_bytes(b"keep")
    code, _, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--sandbox", "--out", out)
    assert code == 2 and "already exists; pass --overwrite" in err and out.read_bytes() == b"keep"
    code, _, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--sandbox", "--out",
                       tmp_path / "missing" / "g.npz")
    assert code == 2 and "output directory does not exist" in err


def test_sandbox_timeout_kills_the_child(files, cli, tmp_path):
    fifo = tmp_path / "stuck.npz"
    os.mkfifo(fifo)
    out = tmp_path / "g.npz"
    code, _, err = cli("gradients", files.lin_keras, "--data", fifo, "--sandbox", "--timeout", "2", "--out", out)
    assert code == 2
    assert err == "tfpartials: error: timed out after 2 s; nothing written\n"
    assert not out.exists()


def test_sandbox_ctrl_c_kills_the_child(files, cli, tmp_path):
    fifo = tmp_path / "stuck.npz"
    os.mkfifo(fifo)
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code, _, err = cli("gradients", files.lin_keras, "--data", fifo, "--sandbox", "--out", tmp_path / "g.npz")
    finally:
        timer.cancel()
    assert code == 130 and err == "tfpartials: interrupted; no output written\n"
    assert sorted(os.listdir(tmp_path)) == ["stuck.npz", "tmp"]


def test_command_line_rewriting():
    from tfpartials.sandbox import _readable_paths, _rewrite_outputs, _strip_parent_flags

    argv = ["gradients", "m.keras", "--sandbox", "--timeout=3", "--sandbox-memory", "2GiB", "--out=g.npz", "--quiet"]
    stripped = _strip_parent_flags(argv)
    assert stripped == ["gradients", "m.keras", "--out=g.npz", "--quiet"]
    from pathlib import Path

    assert _rewrite_outputs(stripped, {"--out": Path("/w/g.npz")}) == ["gradients", "m.keras", "--out", "/w/g.npz",
                                                                       "--quiet"]
    assert _readable_paths(["gradients", "/definitely/not/here", f"--data={__file__}"]) == [__file__]
