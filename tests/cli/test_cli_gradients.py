"""``tfpartials gradients`` against the closed form, atomic outputs, --overwrite, --timeout and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.cli.conftest import closed_form_gradient


def _assert_closed_form(path, files, keys=("lin/kernel", "lin/bias")):
    ref = closed_form_gradient(files)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(keys)
        for k in keys:
            np.testing.assert_allclose(z[k], ref[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_attr,data_attr,extra", [
    ("lin_keras", "lin_npz", ["--batch-size", "5"]),            # 37 = 7*5 + 2: a partial last batch
    ("lin_h5", "lin_npz", []),
    ("lin_keras", "lin_csv", ["--target", "t", "--batch-size", "36"]),
])
def test_gradients_equal_closed_form(files, cli, tmp_path, model_attr, data_attr, extra):
    out = tmp_path / "g.npz"
    code, stdout, err = cli("gradients", getattr(files, model_attr), "--data", getattr(files, data_attr),
                            *extra, "--out", out)
    assert code == 0, err
    assert "lin/kernel" in stdout and err == ""
    _assert_closed_form(out, files)
    assert sorted(os.listdir(tmp_path)) == ["g.npz"]     # no temp files left beside it


def test_wrt_selects_one_variable(files, cli, tmp_path):
    out = tmp_path / "g.npz"
    code, _, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--wrt", "lin/bias", "--out", out,
                       "--quiet")
    assert code == 0, err
    _assert_closed_form(out, files, keys=("lin/bias",))


def test_overwrite_replaces_only_when_asked(files, cli, tmp_path):
    out = tmp_path / "g.npz"
    out.write_bytes(b"old")
    code, _, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--out", out, "--quiet")
    assert code == 2 and "already exists; pass --overwrite" in err and out.read_bytes() == b"old"
    code, _, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--out", out, "--quiet",
                       "--overwrite")
    assert code == 0, err
    _assert_closed_form(out, files)


def test_interrupted_write_leaves_nothing(files, cli, tmp_path, monkeypatch):
    """Ctrl-C while the file is being written: exit 130, no output, no temp file."""
    import numpy

    def half_then_interrupt(fh, **arrays):
        fh.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(numpy, "savez", half_then_interrupt)
    out = tmp_path / "g.npz"
    code, _, err = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--out", out, "--quiet")
    assert code == 130
    assert err == "tfpartials: interrupted; no output written\n"
    assert os.listdir(tmp_path) == []


def test_interrupted_overwrite_keeps_the_old_file(files, cli, tmp_path, monkeypatch):
    import numpy

    def interrupt(fh, **arrays):
        fh.write(b"partial")
        raise KeyboardInterrupt

    out = tmp_path / "g.npz"
    out.write_bytes(b"previous result")
    monkeypatch.setattr(numpy, "savez", interrupt)
    code, _, _ = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--out", out, "--quiet", "--overwrite")
    assert code == 130
    assert out.read_bytes() == b"previous result" and os.listdir(tmp_path) == ["g.npz"]


def _fifo(tmp_path, name="stuck.npz"):
    path = tmp_path / name
    os.mkfifo(path)
    return path


def test_timeout_stops_cleanly(files, cli, tmp_path):
    """Data that never arrives (a FIFO nobody writes): --timeout ends the run with one line, nothing written."""
    out = tmp_path / "g.npz"
    start = time.monotonic()
    code, _, err = cli("gradients", files.lin_keras, "--data", _fifo(tmp_path), "--timeout", "1.5", "--out", out)
    assert code == 2
    assert err == "tfpartials: error: timed out after 1.5 s; nothing written\n"
    assert time.monotonic() - start >= 1.5
    assert sorted(os.listdir(tmp_path)) == ["stuck.npz"]


def test_timeout_restores_an_outer_timer(files, cli, tmp_path):
    """A timer that was running before (a test runner's own timeout) keeps running afterwards."""
    seen = []
    old = signal.signal(signal.SIGALRM, lambda *a: seen.append("outer"))
    try:
        signal.setitimer(signal.ITIMER_REAL, 120)
        code, _, _ = cli("gradients", files.lin_keras, "--data", files.lin_npz, "--timeout", "60", "--quiet")
        assert code == 0
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 120
        assert signal.getsignal(signal.SIGALRM) is not None and seen == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _interruptible():
    """In the child: Ctrl-C as a terminal delivers it (a test runner's worker may ignore or block SIGINT, and a
    child inherits both)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _wait_for_reader(fifo, proc, limit=240.0):
    """Block until a process has the FIFO open for reading (then it is mid-run, waiting for data)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the command ended early: {proc.communicate()}")
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.1)
            continue
        return fd
    raise AssertionError("the command never opened its data")


def test_ctrl_c_in_a_real_process(files, tmp_path):
    """SIGINT to ``python -m tfpartials`` mid-run: exit 130, one line, no output and no temp files."""
    fifo = _fifo(tmp_path)
    out = tmp_path / "g.npz"
    proc = subprocess.Popen([sys.executable, "-m", "tfpartials", "gradients", str(files.lin_keras), "--data",
                             str(fifo), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_interruptible)
    fd = _wait_for_reader(fifo, proc)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        os.close(fd)
    assert proc.returncode == 130
    assert err == "tfpartials: interrupted; no output written\n"
    assert sorted(os.listdir(tmp_path)) == ["stuck.npz"]


def test_help_lists_the_guards():
    from tfpartials.cli.main import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["gradients"].format_help()
    for flag in ("--sandbox", "--sandbox-memory", "--timeout", "--trust", "--overwrite"):
        assert flag in text


def test_module_entry_points(tmp_path):
    for module in ("tfpartials", "tfpartials.cli.main"):
        r = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("tfpartials "), r


def test_no_command_prints_help_and_exits_2(cli):
    code, out, _ = cli()
    assert code == 2 and "usage: tfpartials" in out


def test_main_thread_only_timeout(files, cli):
    results = []

    def run():
        from tfpartials.cli.main import main

        results.append(main(["gradients", str(files.lin_keras), "--data", str(files.lin_npz), "--timeout", "5",
                             "--quiet"]))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert results == [2]
