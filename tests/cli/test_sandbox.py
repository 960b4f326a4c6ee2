"""--sandbox: the same gradients as in-process; hostile code inside the sandbox fails without effect.

The hostile models are loaded with --trust *inside* the sandbox, so their code really runs there: each test
first shows (in this process, or by construction) that the code does what it says outside the sandbox.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from tests.cli import hostile_files as H
from tests.cli.conftest import closed_form_gradient
from tfpartials.cli.sandbox import landlock_abi

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


def test_hostile_models_fail_inside_without_effect(files, cli, tmp_path, listener):
    """Four models whose code (loaded with --trust, so it really runs) writes, connects or reads outside.

    Each first shows its effect outside the sandbox (the control), then fails inside it: exit 2, one line naming
    what was blocked, no effect, no output. The four sandboxed runs go in parallel to save time.
    """
    port, state = listener
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "token.txt"
    secret.write_text("hunter2")
    graph_marker, py_marker = outside / "GRAPH_MARKER", outside / "PY_MARKER"
    cases = {
        "graph-write": (_graph_write(graph_marker), r"blocked by the tfpartials sandbox: the model tried an "
                        r"operation the sandbox forbids \(.*GRAPH_MARKER; Permission denied\)"),
        "python-write": (H.lambda_source_writing(py_marker),
                         f"the model tried to write '{py_marker}', outside the sandbox"),
        "network": (f"lambda t: (__import__('socket').create_connection(('127.0.0.1', {port}), timeout=5), t)[1]",
                    r"the model tried to use the network \(socket\.getaddrinfo\)"),
        "read": (f"lambda t: t + 0.0 * len(open({str(secret)!r}).read())",
                 f"the model tried to read '{secret}', outside the model and its data"),
    }
    models = {name: H.model_with_lambda(tmp_path / f"{name}.keras", src, py_marker) for name, (src, _) in cases.items()}
    # controls: building the models ran their Python code here (it connected; it wrote py_marker, since removed);
    # the graph op only runs when the model is differentiated, which in-process it does:
    deadline = time.monotonic() + 10
    while state["connections"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    connections = state["connections"]
    assert connections >= 1
    code, _, err = cli("gradients", models["graph-write"], "--data", files.lin_npz, "--loss", "mse", "--trust",
                       "--quiet")
    assert code == 0, err
    assert graph_marker.read_text() == "pwned"
    graph_marker.unlink()

    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "tfpartials", "gradients", str(path), "--data", str(files.lin_npz), "--loss", "mse",
         "--trust", "--sandbox", "--quiet", "--out", str(tmp_path / f"{name}.npz")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": tempfile.tempdir})
        for name, path in models.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("tfpartials: error: ") and "Traceback" not in err, (name, err)
        assert re.search(cases[name][1], err), (name, err)
        assert not (tmp_path / f"{name}.npz").exists()
    assert not graph_marker.exists() and not py_marker.exists()
    time.sleep(0.5)
    assert state["connections"] == connections



def test_python_api_returns_arrays(files, tmp_path):
    from tfpartials._checks import InputError
    from tfpartials.cli.sandbox import sandboxed

    g = sandboxed("gradients", files.lin_keras, data=(files.x, files.y), loss="mse", batch_size=8)
    ref = closed_form_gradient(files)
    assert sorted(g) == sorted(ref)
    for k in ref:
        np.testing.assert_allclose(g[k], ref[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"TensorFlow could not start within the memory limit of 300\.0 MiB"):
        sandboxed("gradients", files.lin_keras, data=files.lin_npz, memory="300MiB")


def test_memory_limit_is_enforced(files, cli, tmp_path):
    out = tmp_path / "g.npz"
    code, _, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--sandbox", "--sandbox-memory",
                       "300MiB", "--out", out, "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "memory limit of 300.0 MiB" in err and "--sandbox-memory" in err
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
    # Ctrl-C as a terminal delivers it, whatever the test runner's worker did with SIGINT
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code, _, err = cli("gradients", files.lin_keras, "--data", fifo, "--sandbox", "--out", tmp_path / "g.npz")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    assert code == 130 and err == "tfpartials: interrupted; no output written\n"
    assert sorted(os.listdir(tmp_path)) == ["stuck.npz", "tmp"]


def test_command_line_rewriting():
    from tfpartials.cli.sandbox import _readable_paths, _rewrite_outputs, _strip_parent_flags

    argv = ["gradients", "m.keras", "--sandbox", "--timeout=3", "--sandbox-memory", "2GiB", "--out=g.npz", "--quiet"]
    stripped = _strip_parent_flags(argv)
    assert stripped == ["gradients", "m.keras", "--out=g.npz", "--quiet"]
    from pathlib import Path

    assert _rewrite_outputs(stripped, {"--out": Path("/w/g.npz")}) == ["gradients", "m.keras", "--out", "/w/g.npz",
                                                                       "--quiet"]
    assert _readable_paths(["gradients", "/definitely/not/here", f"--data={__file__}"]) == [__file__]


def test_sandboxed_rejects_reserved_options(files, monkeypatch):
    from tfpartials._checks import InputError
    from tfpartials.cli.sandbox import sandboxed

    with pytest.raises(TypeError, match=r"sandboxed: out, sandbox cannot be passed as options"):
        sandboxed("gradients", files.lin_keras, data=files.lin_npz, sandbox=True, out="x.npz")
    with pytest.raises(InputError, match=r"'report' writes a directory"):
        sandboxed("report", files.lin_keras, data=files.lin_npz)
    monkeypatch.setenv("TFPARTIALS_SANDBOXED", "1")
    from tfpartials.cli.main import main

    assert main(["gradients", str(files.lin_keras), "--data", str(files.lin_npz), "--sandbox"]) == 2
