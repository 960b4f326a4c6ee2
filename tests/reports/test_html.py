"""The page: self-contained, every value agrees with results.json, and it renders in a headless browser."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest


class _Page(HTMLParser):
    """Collects data-key cells (path, text), text outside them, and resource references."""

    def __init__(self):
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self.free_text: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self._stack: list[tuple[str, str | None]] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for attr in ("src", "href"):
            if attr in a:
                self.refs.append((tag, attr, a[attr]))
        key = a.get("data-key")
        if tag in ("style", "title", "head", "script"):
            self._skip += 1
        self._stack.append((tag, key))
        if key is not None:
            self.cells.append((key, ""))

    def handle_endtag(self, tag):
        while self._stack:
            t, _ = self._stack.pop()
            if t in ("style", "title", "head", "script"):
                self._skip -= 1
            if t == tag:
                break

    def handle_data(self, data):
        keys = [k for _, k in self._stack if k is not None]
        if keys:
            k, text = self.cells[-1]
            self.cells[-1] = (k, text + data)
        elif not self._skip:
            self.free_text.append(data)


def _lookup(results, path):
    node = results
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _agrees(text: str, value) -> bool:
    text = text.strip()
    if value is None:
        return text == "n/a"
    if isinstance(value, bool):
        return text == ("yes" if value else "no")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return text == "n/a"
        return math.isclose(float(text), float(value), rel_tol=1e-5, abs_tol=1e-300)
    return text == str(value)


def _parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.mark.parametrize("case", ["tabular_case", "image_case"])
def test_every_value_on_the_page_comes_from_results_json(case, request):
    out = request.getfixturevalue(case)[3]
    results = json.loads((out / "results.json").read_text())
    page = _parse(out / "index.html")
    assert len(page.cells) > 40
    for key, text in page.cells:
        value = _lookup(results, key)
        assert _agrees(text, value), f"{key}: page shows {text!r}, results.json has {value!r}"
    numbers = [k for k, t in page.cells if re.fullmatch(r"-?[\d.]+(e[-+]?\d+)?", t.strip())]
    assert any(k.startswith("sections.gradients.results.per_variable.") for k in numbers)
    assert "summary.gradient_norm" in numbers


@pytest.mark.parametrize("case", ["tabular_case", "image_case"])
def test_no_number_on_the_page_outside_a_data_key_cell(case, request):
    out = request.getfixturevalue(case)[3]
    text = " ".join(_parse(out / "index.html").free_text)
    text = re.sub(r"\b(L2|SHA-256)\b", "", text)  # names of things, not numbers
    context = re.findall(r".{0,20}\d.{0,20}", text)
    assert not context, f"digits outside data-key cells: {context[:5]}"


@pytest.mark.parametrize("case", ["tabular_case", "image_case"])
def test_page_is_self_contained(case, request):
    out = request.getfixturevalue(case)[3]
    page = _parse(out / "index.html")
    assert page.tags.count("script") <= 1  # the inline table sorter only (no src: checked below)
    assert not [v for t, a, v in page.refs if t == "script"]
    imgs = [v for t, a, v in page.refs if t == "img"]
    assert imgs and all(v.startswith("data:image/png;base64,") for v in imgs)
    for tag, attr, value in page.refs:
        assert not re.match(r"^(https?:)?//", value), f"external reference {tag} {attr}={value}"
        assert value.startswith(("data:", "#")), f"{tag} {attr}={value} needs a file next to the page"
    html = (out / "index.html").read_text()
    assert "@import" not in html and "url(" not in html


def test_render_index_links_reports_and_tags_values(tmp_path):
    from tfpartials.reports.html import render_index

    text = render_index("demo", [{"href": "a/index.html", "title": "A", "summary": {"loss": 0.5, "trace": None}}])
    page = _Page()
    page.feed(text)
    assert ("a", "href", "a/index.html") in page.refs
    assert dict(page.cells) == {"reports.0.title": "A", "reports.0.summary.loss": "0.5",
                                "reports.0.summary.trace": "n/a"}


def test_format_value():
    from tfpartials.reports.html import format_value

    assert [format_value(v) for v in (None, True, False, 3, 0.123456789, float("nan"), "x")] == \
        ["n/a", "yes", "no", "3", "0.123457", "n/a", "x"]


# ------------------------------------------------------------------------------------------------ chromium
def _chromium(url: str, shot, profile):
    exe = shutil.which("chromium")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2000",
           "--enable-logging=stderr", "--v=0", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
            or "Failed to load resource" in line or "net::ERR_" in line]


def _distinct_colours(png_path) -> int:
    from matplotlib.image import imread

    img = imread(str(png_path))
    flat = (np.asarray(img)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(flat, axis=0))


@pytest.mark.chromium
def test_chromium_detects_a_console_error(tmp_path):
    """Control: the console capture below really sees errors (so its silence on the report means something)."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom-marker')</script></body></html>")
    res = _chromium(page.as_uri(), tmp_path / "bad.png", tmp_path / "profile")
    assert any("boom-marker" in line for line in _console_errors(res.stderr)), res.stderr[-2000:]


@pytest.mark.chromium
@pytest.mark.parametrize("case", ["image_case"])
def test_report_opens_in_headless_chromium_without_console_errors(case, request, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    out = request.getfixturevalue(case)[3]
    shot = tmp_path / "shot.png"
    res = _chromium((out / "index.html").as_uri(), shot, tmp_path / "profile")
    assert res.returncode == 0, res.stderr[-2000:]
    assert _console_errors(res.stderr) == []
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert _distinct_colours(shot) > 50, "the screenshot looks blank"
