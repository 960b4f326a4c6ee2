"""Records: section names, hashes, paths into the results, and the gradient plots' histogram."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest


def test_section_names_and_aliases():
    from tfpartials.reports.records import canonical_section

    assert canonical_section("spectrum") == "curvature"
    assert canonical_section("Per-Example") == "per_example"
    assert canonical_section("attribution") == "attributions"
    with pytest.raises(ValueError, match="unknown section 'hessians'; expected one of gradients, per-example"):
        canonical_section("hessians")
    with pytest.raises(TypeError, match="expected section names"):
        canonical_section(3)


def test_file_and_directory_hashes(tmp_path):
    from tfpartials.reports.records import file_sha256

    f = tmp_path / "a.bin"
    f.write_bytes(b"abc" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    d = tmp_path / "saved"
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"graph")
    (d / "variables" / "v.data").write_bytes(b"weights")
    h = hashlib.sha256(b"saved_model.pb\0graph" + b"variables/v.data\0weights").hexdigest()
    assert file_sha256(d) == h
    (d / "variables" / "v.data").write_bytes(b"weightz")
    assert file_sha256(d) != h


def test_lookup_dotted_paths():
    from tfpartials.reports.records import lookup

    res = {"sections": {"g": {"rows": [{"norm": 1.5}, {"norm": 2.5}]}}}
    assert lookup(res, "sections.g.rows.1.norm") == 2.5
    with pytest.raises(KeyError):
        lookup(res, "sections.h")


def test_numeric_part_drops_only_timing():
    from tfpartials.reports.records import numeric_part

    res = {"summary": {"loss": np.float32(0.5)}, "provenance": {"seed": 1, "timing": {"started": "now"}}}
    assert numeric_part(res) == {"summary": {"loss": 0.5}, "provenance": {"seed": 1}}


def test_histogram_matches_numpy():
    from tfpartials.reports.plots_gradients import histogram

    v = np.random.default_rng(0).lognormal(size=500)
    counts, edges = histogram(v, bins=20)
    ref, _ = np.histogram(v, np.geomspace(v.min(), v.max(), 21))
    assert counts.tolist() == ref.tolist() and counts.sum() == 500
    counts, edges = histogram(np.full(7, 2.0))
    assert counts.sum() == 7 and edges[0] < 2.0 < edges[-1]


def test_plots_are_pngs(tmp_path):
    from tfpartials.reports.plots_gradients import histogram, plot_gradient_norms, plot_norm_histogram

    plot_gradient_norms(["a/kernel", "a/bias", "b/kernel"], [1e-3, 0.0, 2.0], tmp_path / "g.png")
    counts, edges = histogram(np.random.default_rng(1).lognormal(size=50))
    plot_norm_histogram(counts, edges, tmp_path / "h.png")
    for name in ("g.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
