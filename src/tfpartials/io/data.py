"""Data: arrays, tensors, ``tf.data`` datasets and files -> fixed-order, fixed-shape batches.

Every batch has the same shape (the last one is padded by repeating real examples) and comes with a 0/1 mask,
so compiled functions trace once and the dataset objective divides by the exact example count N.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._backend import tf
from .._checks import InputError, check_positive_int
from .signature import Signature, signature

__all__ = ["Data", "load_data", "read_inputs", "DEFAULT_BATCH_SIZE"]

DEFAULT_BATCH_SIZE = 128


@dataclass
class Batch:
    """One fixed-shape batch: inputs, targets (or None), and a mask of real (1) vs padded (0) rows."""

    x: Any
    y: Any
    mask: np.ndarray
    count: int


@dataclass
class Data:
    """An ordered dataset of N examples served in batches of ``batch_size`` (last one padded + masked).

    Attributes:
        x: inputs as one numpy array or a list (one per model input).
        y: targets (one array or a list per output) or ``None`` for inputs-only data.
        num_examples: N, exact.
        feature_names: column names when read from a CSV.

    Example:
        >>> import numpy as np, tfpartials as tp
        >>> data = tp.load_data((np.arange(10.0).reshape(5, 2), np.zeros(5)), batch_size=2)
        >>> data.num_examples, data.num_batches
        (5, 3)
        >>> [b.mask.tolist() for b in data.batches()]     # the last batch is padded and masked
        [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
    """

    x: Any
    y: Any
    batch_size: int
    num_examples: int
    feature_names: list[str] | None = None
    source: str = "arrays"
    _stream: Any = field(default=None, repr=False)

    @property
    def num_batches(self) -> int:
        return -(-self.num_examples // self.batch_size)

    @property
    def has_targets(self) -> bool:
        return self.y is not None or (self._stream is not None and self._stream_has_y)

    _stream_has_y: bool = False

    def batches(self) -> Iterator[Batch]:
        """Yield fixed-shape batches in order; the last is padded by repeating examples and masked."""
        if self._stream is not None:
            yield from self._stream_batches()
            return
        n, bs = self.num_examples, self.batch_size
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            idx = np.arange(start, start + bs)
            idx = np.where(idx < stop, idx, start + (idx - start) % (stop - start))
            mask = (np.arange(start, start + bs) < stop).astype(np.float32)
            yield Batch(_take(self.x, idx), None if self.y is None else _take(self.y, idx), mask, stop - start)

    def _stream_batches(self) -> Iterator[Batch]:
        bs = self.batch_size
        for elem in self._stream:
            if isinstance(elem, tuple | list) and len(elem) >= 2:
                x, y = elem[0], elem[1]
            else:
                x, y = elem, None
            x = _to_numpy(x)
            y = None if y is None else _to_numpy(y)
            count = _length(x)
            if count < bs:
                idx = np.arange(bs) % count
                x, y = _take(x, idx), None if y is None else _take(y, idx)
            mask = (np.arange(bs) < count).astype(np.float32)
            yield Batch(x, y, mask, count)

    def first(self, k: int) -> tuple[Any, Any]:
        """The first ``k`` examples (inputs, targets) as numpy arrays."""
        if self._stream is None:
            k = min(k, self.num_examples)
            idx = np.arange(k)
            return _take(self.x, idx), None if self.y is None else _take(self.y, idx)
        xs, ys, got = [], [], 0
        for b in self.batches():
            take = min(b.count, k - got)
            xs.append(_take(b.x, np.arange(take)))
            if b.y is not None:
                ys.append(_take(b.y, np.arange(take)))
            got += take
            if got >= k:
                break
        return _concat(xs), (_concat(ys) if ys else None)

    def arrays(self) -> tuple[Any, Any]:
        """All inputs and targets in memory (materialises a stream)."""
        if self._stream is None:
            return self.x, self.y
        return self.first(self.num_examples)

    def with_batch_size(self, batch_size: int) -> Data:
        if self._stream is not None:
            raise InputError("cannot change the batch size of a streamed dataset; pass batch_size to load_data")
        return Data(self.x, self.y, check_positive_int("batch_size", batch_size), self.num_examples,
                    self.feature_names, self.source)

    def cast(self, dtype) -> Data:
        """Floating inputs/targets cast to ``dtype`` (integer arrays such as class labels are kept)."""
        if self._stream is not None:
            ds = self._stream.map(lambda *e: tuple(tf.nest.map_structure(
                lambda t: tf.cast(t, dtype) if t.dtype.is_floating else t, list(e))))
            out = Data(None, None, self.batch_size, self.num_examples, self.feature_names, self.source, ds)
            out._stream_has_y = self._stream_has_y
            return out
        return Data(_cast(self.x, dtype), None if self.y is None else _cast(self.y, dtype), self.batch_size,
                    self.num_examples, self.feature_names, self.source)


def _cast(a, dtype):
    if isinstance(a, list):
        return [_cast(e, dtype) for e in a]
    return a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a


def _take(a, idx):
    if isinstance(a, list):
        return [np.asarray(e)[idx] for e in a]
    if isinstance(a, dict):
        return {k: np.asarray(v)[idx] for k, v in a.items()}
    return np.asarray(a)[idx]


def _concat(parts):
    if isinstance(parts[0], list):
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    return np.concatenate(parts)


def _to_numpy(a):
    if isinstance(a, dict):
        return {k: np.asarray(v) for k, v in a.items()}
    if isinstance(a, list | tuple):
        return [np.asarray(v) for v in a]
    return np.asarray(a)


def _length(a) -> int:
    if isinstance(a, list):
        return len(a[0])
    if isinstance(a, dict):
        return len(next(iter(a.values())))
    return len(a)


# ----------------------------------------------------------------------------------------------------- files
def _read_npz(path: Path, sig: Signature | None):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(f"{path}: contains pickled objects, which are refused (they can run code)") from None
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    if not arrays:
        raise InputError(f"{path}: the .npz file holds no arrays")
    if "x" in arrays:
        x = arrays["x"]
    elif sig is not None and all(n in arrays for n in sig.input_names):
        x = [arrays[n] for n in sig.input_names]
        x = x[0] if len(x) == 1 else x
    else:
        expect = "'x'" + (f" or {', '.join(map(repr, sig.input_names))}" if sig is not None else "")
        raise InputError(f"{path}: expected an array named {expect}; found {', '.join(arrays)}")
    if "y" in arrays:
        y = arrays["y"]
    elif sig is not None and all(n in arrays for n in sig.output_names):
        y = [arrays[n] for n in sig.output_names]
        y = y[0] if len(y) == 1 else y
    else:
        y = None
    return x, y, None


def _read_csv(path: Path, target: Sequence[str] | None):
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file") from None
    if not rows or not rows[0]:
        raise InputError(f"{path}: the CSV file is empty")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not body:
        raise InputError(f"{path}: the CSV file has a header but no rows")
    targets = list(target or [])
    for t in targets:
        if t not in header:
            raise InputError(f"{path}: --target column {t!r} not found; columns: {', '.join(header)}")
    values = np.empty((len(body), len(header)), dtype=np.float64)
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise InputError(f"{path}: row {i + 2} has {len(row)} fields, expected {len(header)}")
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise InputError(f"{path}: column {header[j]!r} is not numeric (row {i + 2}: {cell!r})") from None
    feat = [j for j, h in enumerate(header) if h not in targets]
    tcol = [header.index(t) for t in targets]
    x = values[:, feat].astype(np.float32)
    y = values[:, tcol].astype(np.float32) if tcol else None
    return x, y, [header[j] for j in feat]


def read_inputs(path: str | os.PathLike, target: Sequence[str] | None = None, model=None):
    """Read ``(x, y, feature_names)`` from ``.npz``, ``.npy`` or ``.csv``; ``y`` may be None."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"data file not found: {p}")
    if p.is_dir():
        raise InputError(f"{p}: expected a data file (.npz, .npy or .csv), got a directory")
    sig = signature(model) if model is not None else None
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _read_npz(p, sig)
    if suffix == ".npy":
        try:
            x = np.load(p, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise InputError(f"{p}: contains pickled objects, which are refused (they can run code)") from None
            raise InputError(f"{p}: not a readable .npy file ({exc})") from None
        except Exception as exc:
            raise InputError(f"{p}: not a readable .npy file ({type(exc).__name__})") from None
        return x, None, None
    if suffix == ".csv":
        return _read_csv(p, target)
    raise InputError(f"{p}: unsupported data format {suffix or '(none)'}; expected .npz, .npy or .csv")


# ------------------------------------------------------------------------------------------------ validation
def _check_numeric(name: str, a: np.ndarray, allow_nan: bool):
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise InputError(f"{name}: expected numeric data, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(f"{name}: expected real numbers, got dtype {a.dtype}")
    if not allow_nan and np.issubdtype(a.dtype, np.floating) and a.size and not np.isfinite(a).all():
        bad = int(np.size(a) - np.isfinite(a).sum())
        raise InputError(f"{name}: {bad} NaN/Inf value(s); clean the data or pass allow_nan=True (--allow-nan)")


def _check_shape(name: str, a: np.ndarray, expected: tuple[int | None, ...]):
    got = tuple(a.shape[1:])
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        shown = "(N, " + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise InputError(f"{name}: expected shape {shown}, got {tuple(a.shape)}")


def _structure_inputs(x, sig: Signature | None):
    if isinstance(x, Mapping):
        if sig is None:
            return [np.asarray(v) for v in x.values()]
        missing = [n for n in sig.input_names if n not in x]
        if missing:
            raise InputError(f"inputs: missing {', '.join(missing)}; the model takes {', '.join(sig.input_names)}")
        return [np.asarray(x[n]) for n in sig.input_names]
    if isinstance(x, list | tuple):
        return [np.asarray(v) for v in x]
    return np.asarray(x)


def _check_labels(loss_name: str | None, y, sig: Signature | None):
    if loss_name is None or y is None or isinstance(y, list):
        return
    out_shape = sig.output_shapes[0] if sig is not None and sig.single_output else None
    if loss_name == "sparse_categorical_crossentropy":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise InputError("targets: sparse categorical crossentropy expects integer class labels")
        k = out_shape[-1] if out_shape else None
        if y.size and (y.min() < 0 or (k is not None and y.max() >= k)):
            raise InputError(f"targets: class labels must lie in [0, {k - 1 if k else '?'}], "
                             f"got values in [{int(y.min())}, {int(y.max())}]")
        if out_shape is not None and y.ndim not in (1, len(out_shape), len(out_shape) + 1):
            raise InputError(f"targets: expected labels of shape (N,) for output {out_shape}, got {y.shape}")
        if y.ndim == len(out_shape) + 1 and y.shape[-1] != 1:
            raise InputError(f"targets: expected labels of shape (N,) for output {out_shape}, got {y.shape}")
        return
    if out_shape is not None:
        want = tuple(out_shape)
        got = tuple(y.shape[1:])
        ok = len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got))
        if not ok and len(want) == 1 and got == () and want[0] == 1:
            ok = True  # (N,) targets for a (N, 1) output are broadcast like Keras does
        if not ok:
            shown = "(N, " + ", ".join("?" if w is None else str(w) for w in want) + ")"
            raise InputError(f"targets: expected shape {shown} to match the model output for loss "
                             f"{loss_name!r}, got {tuple(y.shape)}")


def load_data(
    data: Any,
    *,
    batch_size: int | None = None,
    target: str | Sequence[str] | None = None,
    model=None,
    loss_name: str | None = None,
    allow_nan: bool = False,
    require_targets: bool = True,
) -> Data:
    """Load and validate data into a :class:`Data` of fixed-shape batches.

    Args:
        data: ``(x, y)`` arrays or tensors, ``x`` alone (inputs only), a ``tf.data.Dataset`` of ``(x, y)``
            (batched or not), a :class:`Data`, or a path to ``.npz`` / ``.npy`` / ``.csv``.
        batch_size: examples per batch (default 128, or the dataset's own batching for ``tf.data``).
        target: CSV column(s) holding the targets.
        model: when given, inputs and targets are checked against its signature.
        loss_name: canonical loss name, to check label shapes and ranges.
        allow_nan: accept NaN/Inf values (refused by default).
        require_targets: raise if the data carries no targets.

    Example:
        >>> import os, tempfile, tfpartials as tp
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "houses.csv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("a,b,price\\n1,2,3\\n4,5,6\\n")
        >>> data = tp.load_data(path, target="price")
        >>> data.feature_names, data.x.tolist(), data.y.tolist()
        (['a', 'b'], [[1.0, 2.0], [4.0, 5.0]], [[3.0], [6.0]])
        >>> tmp.cleanup()
    """
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if isinstance(target, str):
        target = [target]
    sig = signature(model) if model is not None else None
    if isinstance(data, Data):
        out = data if batch_size is None or batch_size == data.batch_size else data.with_batch_size(batch_size)
        if require_targets and not out.has_targets:
            raise InputError("the data has inputs only; this quantity needs targets (y)")
        return out
    if isinstance(data, tf.data.Dataset):
        return _from_dataset(data, batch_size, sig, require_targets)
    feature_names = None
    source = "arrays"
    if isinstance(data, str | os.PathLike):
        x, y, feature_names = read_inputs(data, target, model)
        source = str(data)
    elif isinstance(data, tuple) and len(data) == 2:
        x, y = data
    elif isinstance(data, tuple | list) and len(data) == 1:
        x, y = data[0], None
    else:
        x, y = data, None
    if x is None:
        raise InputError("no inputs given")
    x = _structure_inputs(_to_numpy_any(x), sig)
    if y is not None:
        y = _structure_outputs(_to_numpy_any(y), sig)
    xs = x if isinstance(x, list) else [x]
    ys = [] if y is None else (y if isinstance(y, list) else [y])
    for i, a in enumerate(xs):
        if a.ndim == 0:
            raise InputError("inputs: expected an array with a leading example axis, got a scalar")
        _check_numeric(f"inputs[{i}]" if len(xs) > 1 else "inputs", a, allow_nan)
    n = len(xs[0])
    if n == 0:
        raise InputError("the data is empty (0 examples)")
    for i, a in enumerate(xs[1:], 1):
        if len(a) != n:
            raise InputError(f"inputs: input {i} has {len(a)} examples, input 0 has {n}")
    for a in ys:
        if a.ndim == 0:
            raise InputError("targets: expected an array with a leading example axis, got a scalar")
        _check_numeric("targets", a, allow_nan)
        if len(a) != n:
            raise InputError(f"x/y count mismatch: {n} inputs but {len(a)} targets")
    if sig is not None:
        if len(xs) != len(sig.input_names):
            raise InputError(f"inputs: the model takes {len(sig.input_names)} input(s) "
                             f"({', '.join(sig.input_names)}), got {len(xs)}")
        for i, (a, shp) in enumerate(zip(xs, sig.input_shapes)):
            _check_shape(f"inputs {sig.input_names[i]!r}" if len(xs) > 1 else "inputs", a, shp)
        if ys and len(ys) != len(sig.output_names):
            raise InputError(f"targets: the model has {len(sig.output_names)} output(s), got {len(ys)} target arrays")
        _check_labels(loss_name, y, sig)
    if require_targets and y is None:
        raise InputError("the data has inputs only; this quantity needs targets (y): pass (x, y), an .npz with "
                         "'y', or --target COL for a CSV")
    # float64 arrays become float32 unless the model is float64: the objective is cast on entry anyway
    return Data(x, y, batch_size or min(DEFAULT_BATCH_SIZE, n), n, feature_names, source)


def _to_numpy_any(a):
    if isinstance(a, Mapping):
        return {k: np.asarray(v) for k, v in a.items()}
    if isinstance(a, list | tuple) and a and not np.isscalar(a[0]) and hasattr(a[0], "shape"):
        return [np.asarray(v) for v in a]
    return np.asarray(a)


def _structure_outputs(y, sig: Signature | None):
    if isinstance(y, Mapping):
        if sig is None:
            return [np.asarray(v) for v in y.values()]
        missing = [n for n in sig.output_names if n not in y]
        if missing:
            raise InputError(f"targets: missing {', '.join(missing)}; the model outputs {', '.join(sig.output_names)}")
        out = [np.asarray(y[n]) for n in sig.output_names]
        return out[0] if len(out) == 1 else out
    return y


def _from_dataset(ds, batch_size, sig, require_targets) -> Data:
    spec = ds.element_spec
    has_y = isinstance(spec, tuple) and len(spec) >= 2
    if require_targets and not has_y:
        raise InputError("the tf.data.Dataset must yield (x, y) pairs; this quantity needs targets")
    xspec = spec[0] if isinstance(spec, tuple) else spec
    first = tf.nest.flatten(xspec)[0]
    batched = False
    if sig is not None and first.shape.rank is not None:
        batched = first.shape.rank == len(sig.input_shapes[0]) + 1
    elif first.shape.rank is not None and first.shape.rank >= 1 and first.shape[0] is None:
        batched = True
    base = ds.unbatch() if batched else ds
    bs = batch_size
    if bs is None:
        bs = DEFAULT_BATCH_SIZE
    stream = base.batch(bs).prefetch(tf.data.AUTOTUNE)
    n = int(base.cardinality().numpy())
    if n < 0:
        n = int(base.reduce(np.int64(0), lambda c, _e: c + 1).numpy()) if has_y else int(
            base.reduce(np.int64(0), lambda c, _e: c + 1).numpy())
    if n == 0:
        raise InputError("the dataset is empty (0 examples)")
    out = Data(None, None, bs, n, None, "tf.data", stream)
    out._stream_has_y = has_y
    return out
