"""Session-scoped trained examples for the attribution tests (trained briefly, cached in a temp dir)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """A digits CNN trained for 3 epochs (about two seconds) and its held-out images."""
    from tfpartials.examples import digits_cnn

    return digits_cnn(epochs=3, cache=tmp_path_factory.mktemp("example-cache"))


@pytest.fixture(scope="session")
def diabetes(tmp_path_factory):
    from tfpartials.examples import diabetes_mlp

    return diabetes_mlp(epochs=10, cache=tmp_path_factory.mktemp("example-cache"))
