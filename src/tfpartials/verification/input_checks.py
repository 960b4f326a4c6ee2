"""Input-Jacobian check: ``J_b d`` by autodiff against float64 central differences of the model outputs."""

from __future__ import annotations

import numpy as np

from .._backend import tf
from ..io.precision import float64_copy
from .finite_differences import input_difference, relative_step, unit_directions
from .results import (
    ALL_COORDINATES,
    FULL_AUTO_LIMIT,
    CheckResult,
    Comparison,
    make_result,
    resolve_tolerances,
    skipped_result,
    validate_options,
)

__all__ = ["check_input_jacobian", "jacobian_check"]


def _input_arrays(model, x) -> list:
    from ..io.data import load_data

    data = load_data(list(x) if isinstance(x, tuple) else x, model=model, require_targets=False)
    return [np.asarray(a) for a in (data.x if isinstance(data.x, list) else [data.x])]


def _jacobian_pairs(model, input, output) -> list[tuple[int, int]]:
    from ..io.signature import signature

    sig = signature(model)
    ins = range(len(sig.input_names)) if input is None else [sig.input_index(input)]
    outs = range(len(sig.output_names)) if output is None else [sig.output_index(output)]
    return [(i, o) for i in ins for o in outs]


def check_input_jacobian(model, x, output: int | str | None = None, input: int | str | None = None, *,
                         directions: int = 4, full: bool | None = None, seed: int = 0, rtol: float | None = None,
                         atol: float | None = None, eps: float | None = None,
                         precision: str | None = None) -> CheckResult:
    """Check the per-example input Jacobian against float64 central differences along input directions.

    ``J_b d`` (:func:`tfpartials.input_jacobian`) against ``(y(x_b + h d) - y(x_b - h d)) / 2h`` on a float64
    copy, for ``directions`` seeded unit directions in the space of one example (applied to every example) or
    every input coordinate (``full``; automatic up to 128), for every floating input and every output (or the
    ones chosen). Integer inputs (token ids) are skipped with the reason. Cost: one Jacobian plus two float64
    forward passes per direction. Step ``h = eps^(1/3) * max(1, |x|_inf)``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh")])
        >>> tp.check_input_jacobian(m, np.ones((4, 3), "float32")).passed
        True
    """
    from ..io.precision import with_precision

    k, full, seed = validate_options(directions, full, seed)
    if not hasattr(model, "trainable_variables"):
        raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
    work = with_precision(model, precision)
    return jacobian_check(model, work, None, x, output, input, k, full, seed, rtol, atol, eps)


def jacobian_check(model, work, model64, x, output, input, k, full, seed, rtol, atol, eps) -> CheckResult:
    from ..inputs.jacobian import input_jacobian
    from ..io.signature import signature

    dtype = tf.as_dtype(work.trainable_variables[0].dtype if work.trainable_variables else "float32")
    rtol, atol = resolve_tolerances(dtype, rtol, atol)
    sig = signature(model)
    arrays = _input_arrays(model, x)
    pairs = _jacobian_pairs(model, input, output)
    floating = [(i, o) for i, o in pairs if np.issubdtype(_input_dtype(model, i, arrays[i]), np.floating)]
    if not floating:
        names = ", ".join(repr(sig.input_names[i]) for i in sorted({i for i, _ in pairs}))
        kinds = ", ".join(sorted({str(_input_dtype(model, i, arrays[i])) for i, _ in pairs}))
        return skipped_result("jacobian", f"input {names} has integer dtype {kinds} (e.g. token ids): outputs have "
                                    "no derivative with respect to it")
    if model64 is None:
        model64 = work if dtype == tf.float64 else float64_copy(model)
    h_rel = relative_step("float64", eps)
    comp = Comparison(rtol, atol)
    rng = np.random.default_rng(seed)
    evaluations, used = 0, {}
    for i, o in floating:
        J = input_jacobian(work, arrays if len(arrays) > 1 else arrays[0], output=o, input=i, quiet=True)
        B = len(arrays[i])
        in_shape = arrays[i].shape[1:]
        n_in = int(np.prod(in_shape, dtype=np.int64))
        J = np.asarray(J, np.float64).reshape(B, -1, n_in)
        out_shape = tuple(sig.output_shapes[o])
        use_full = n_in <= FULL_AUTO_LIMIT if full is None else full
        vectors = np.eye(n_in) if use_full else unit_directions(n_in, k, rng)
        label = sig.output_names[o] + (f"/d{sig.input_names[i]}" if len(sig.input_names) > 1 else "")
        used[label] = ALL_COORDINATES if use_full else vectors
        h = h_rel * max(1.0, float(np.max(np.abs(arrays[i]))))
        refs = input_difference(model64, arrays, i, o, vectors.reshape(-1, *in_shape), h)  # (k, B, n_out)
        evaluations += 2 * len(vectors)
        for v, ref in zip(vectors, refs):
            jv = J @ v  # (B, n_out)
            for c in range(jv.shape[1]):
                comp.add(_component(label, c, out_shape), jv[:, c], ref[:, c])
    all_coords = all(isinstance(u, str) for u in used.values())
    details = {"mode": "coordinates" if all_coords else "directions", "autodiff_dtype": dtype.name,
               "reference_dtype": "float64", "relative_step": h_rel, "num_examples": int(len(arrays[0]))}
    skipped_inputs = sorted({sig.input_names[i] for i, o in pairs if (i, o) not in floating})
    if skipped_inputs:
        details["skipped_inputs"] = skipped_inputs
    return make_result("jacobian", comp, ALL_COORDINATES if all_coords else used, evaluations, details)


def _input_dtype(model, i: int, array: np.ndarray):
    tensors = getattr(model, "inputs", None) or []
    if len(tensors) > i and getattr(tensors[i], "dtype", None) is not None:
        return np.dtype(tf.as_dtype(tensors[i].dtype).as_numpy_dtype)
    return array.dtype


def _component(label: str, c: int, out_shape) -> str:
    if None in out_shape or len(out_shape) <= 1:
        return f"{label}[{c}]"
    return f"{label}[{', '.join(str(int(j)) for j in np.unravel_index(c, out_shape))}]"
