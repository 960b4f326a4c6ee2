"""Import TensorFlow and Keras once, with clear messages when they are missing or too old."""

from __future__ import annotations

import os

MIN_KERAS = (3, 15, 1)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

try:
    import tensorflow as tf  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "tfpartials needs TensorFlow, which is not installed. Install it with the extra for your machine: "
        "pip install 'tfpartials[cpu]' (CPU) or pip install 'tfpartials[gpu]' (CUDA)."
    ) from exc

import keras  # noqa: E402


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"3.16.0rc1"`` -> ``(3, 16, 0)``: the leading digits of the first three parts."""
    parts = []
    for piece in text.split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


if _version_tuple(keras.__version__) < MIN_KERAS:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"tfpartials needs keras>={'.'.join(map(str, MIN_KERAS))} (the first release patched against the "
        f"2025-26 model-loading vulnerabilities), found {keras.__version__}; run pip install -U 'keras>=3.15.1'"
    )

if keras.backend.backend() != "tensorflow":  # pragma: no cover
    raise ImportError(
        f"tfpartials needs the TensorFlow backend of Keras, but KERAS_BACKEND is {keras.backend.backend()!r}; "
        "set KERAS_BACKEND=tensorflow"
    )
