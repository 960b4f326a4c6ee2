"""Every tutorial of the documentation runs as a plain script and passes its own checks.

The tutorials (docs/tutorials/t*.py, executed again by ``mkdocs build``) assert their numbers against closed
forms, dense references or float64 central differences, so a wrong library makes them exit non-zero here.
A separate test marked ``docs`` builds the whole site with ``mkdocs build --strict`` when MkDocs is installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("t[0-9][0-9]_*.py"))
PER_TUTORIAL_LIMIT = 180  # seconds; each runs in ~10-45 s on 2 idle cores, t07 (MobileNetV3Small) ~60-90 s (the limit leaves room for a shared machine)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2", TFPARTIALS_PROGRESS="0", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 4, [p.name for p in TUTORIALS]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is not None,
                    reason="the strict site build below executes every tutorial and fails on any failed check")
@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_and_passes_its_checks(script, tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=PER_TUTORIAL_LIMIT)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, f"{script.name} failed after {elapsed:.0f} s:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{script.name} printed nothing"


@pytest.mark.docs
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="needs the docs extra: pip install -e '.[docs]'")
def test_site_builds_strict_with_executed_tutorials(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env=_env(tmp_path) | {"NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    for script in TUTORIALS:
        page = (site / "tutorials" / script.stem / "index.html").read_text(encoding="utf-8")
        assert "data:image/png;base64" in page, f"{script.stem}: no figure in the built page"
        assert "Traceback" not in page, f"{script.stem}: an error was rendered"
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="soundness/"' in index and 'href="performance/"' in index
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--data D" in cli
