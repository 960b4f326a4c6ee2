"""Start-up: ``--help`` without TensorFlow, a clear message when TensorFlow is missing, the version checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_parser_does_not_import_tensorflow():
    r = _python("""
        import sys
        import tfpartials.cli.main as m
        m.build_parser().format_help()
        heavy = sorted(k for k in ("tensorflow", "keras", "h5py", "matplotlib", "scipy") if k in sys.modules)
        print(heavy)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_help_runs_without_tensorflow():
    r = subprocess.run([sys.executable, "-m", "tfpartials", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: tfpartials" in r.stdout and "gradients" in r.stdout
    r = subprocess.run([sys.executable, "-m", "tfpartials", "gradients", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--sandbox" in r.stdout and "--timeout" in r.stdout


_NO_TF = """
    import sys
    sys.modules["tensorflow"] = None      # as if TensorFlow were not installed
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, Hide())
"""


def test_clear_message_when_tensorflow_is_missing():
    r = _python(_NO_TF + """
    try:
        import tfpartials
    except ImportError as exc:
        print(exc)
    """)
    assert r.returncode == 0, r.stderr
    assert "tfpartials needs TensorFlow, which is not installed" in r.stdout
    assert "pip install 'tfpartials[cpu]'" in r.stdout


def test_backend_message_when_tensorflow_is_missing():
    r = _python(_NO_TF + """
    import importlib.util
    importlib.util.find_spec = lambda name, *a: object()    # get past the package's own early check
    try:
        import tfpartials._backend
    except ImportError as exc:
        print(exc)
    """)
    assert "tfpartials needs TensorFlow" in r.stdout and "tfpartials[gpu]" in r.stdout, r.stderr


def test_old_keras_is_refused():
    r = _python("""
    import importlib.machinery, sys, types
    for name in ("tensorflow", "keras"):                  # stand-ins: only the version matters
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules["keras"].__version__ = "3.10.0"
    try:
        import tfpartials._backend
    except ImportError as exc:
        print(exc)
    """)
    assert "tfpartials needs keras>=3.15.1" in r.stdout and "found 3.10.0" in r.stdout, r.stderr


@pytest.mark.parametrize("text,expected", [("3.15.1", (3, 15, 1)), ("3.16.0rc1", (3, 16, 0)), ("4", (4,)),
                                           ("3.15.1.dev20260101", (3, 15, 1))])
def test_version_parsing(text, expected):
    from tfpartials._backend import _version_tuple

    assert _version_tuple(text) == expected
