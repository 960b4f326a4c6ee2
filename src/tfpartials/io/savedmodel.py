"""Restored TF SavedModels (``model.export()``, ``tf.saved_model.save``) as differentiable Keras models.

A SavedModel holds graphs, not Python layers: ``tf.saved_model.load`` gives functions that read the restored
variables through captured handles, so their outputs are functions of the *variables* and cannot be evaluated
at other parameter values, which is what every parameter-space derivative here needs (``stateless_call``).
The adapter therefore freezes the serving function's graph (every function call inlined, every variable read
replaced by a named constant), and re-imports it as one pure function ``f(inputs, *variable values)``. It is
wrapped as a functional Keras model whose weights are Keras variables holding the restored values, named by
the restored variables' paths (``h/kernel:0`` -> parameter ``h/kernel``): ``stateless_call``, parameter
selection (``wrt=``), input derivatives and attribution then work unchanged, with exact derivatives of the
exported graph. What cannot work is what the graph does not define: an op without a registered gradient (or
second derivative). :func:`require_derivatives` finds that by tracing the derivative on a symbolic batch, before
any data is touched, and names the op.

Chosen over re-implementing ``Objective`` for a second model kind (the spine stays one) and over assigning
parameter values into the restored variables (derivatives would not flow from the parameters, and the user's
objects would be mutated).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._backend import keras, tf
from .._checks import InputError

__all__ = ["load_savedmodel", "require_derivatives", "RestoredGraph"]

_SIGNATURE_KEYS = ("serving_default", "serve")


@dataclass(frozen=True)
class RestoredGraph:
    """What was restored: the serving function used, input/output names, and the variables' paths."""

    path: str
    signature_key: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    variable_paths: tuple[str, ...]
    pure: Any  # f(*inputs, *variable values) -> list of outputs
    specs: tuple  # input specs then variable specs (for probing)


class _Refs:
    """A plain holder of variable references (Keras does not track it, so the variables keep one owner)."""

    def __init__(self, variables: Sequence):
        self.variables = list(variables)


class _Scope(keras.layers.Layer):
    """One scope of restored variables (``h`` of ``h/kernel``), nested scopes as sublayers; passes input on."""

    def __init__(self, name: str, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.children: list[_Scope] = []

    def call(self, x):
        return x

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, dtype=x.dtype)  # a new node, so the scope joins the layer graph


class _RestoredCall(keras.layers.Layer):
    """Evaluates the frozen serving graph at the current values of the restored variables."""

    def __init__(self, graph: RestoredGraph, variables: Sequence, output_specs: Sequence, name: str, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self._graph = graph
        self._refs = _Refs(variables)
        self._output_specs = list(output_specs)

    def call(self, inputs):
        inputs = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
        values = [v.value for v in self._refs.variables]  # the substituted values inside stateless_call
        outs = self._graph.pure(*inputs, *values)
        outs = list(outs) if isinstance(outs, list | tuple) else [outs]
        if len(outs) == 1:
            return outs[0]
        return dict(zip(self._graph.output_names, outs))

    def compute_output_spec(self, inputs):
        first = inputs[0] if isinstance(inputs, list | tuple) else inputs
        batch = first.shape[0]
        specs = [keras.KerasTensor((batch, *s.shape[1:]), dtype=s.dtype.name) for s in self._output_specs]
        if len(specs) == 1:
            return specs[0]
        return dict(zip(self._graph.output_names, specs))

    def get_config(self):  # a restored graph has no Python config: a float64 copy cannot be rebuilt
        raise InputError(f"{self._graph.path}: a restored SavedModel computes in the dtype it was exported in; "
                         "a float64 copy cannot be rebuilt from its graph (export the model in float64 instead)")


def _short(msg: str, n: int = 200) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def _signature(loaded, p: Path):
    sigs = dict(getattr(loaded, "signatures", {}) or {})
    for key in _SIGNATURE_KEYS:
        if key in sigs:
            return key, sigs[key]
    if sigs:
        key = sorted(sigs)[0]
        return key, sigs[key]
    raise InputError(f"{p}: the SavedModel has no serving signature (expected 'serving_default'); export it with "
                     "model.export(path) or tf.saved_model.save(obj, path, signatures=...)")


def _freeze(cf, p: Path):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2_as_graph

    try:
        return convert_variables_to_constants_v2_as_graph(cf)
    except Exception as exc:  # control flow or ops the freezer cannot inline
        raise InputError(f"{p}: cannot turn the serving function into a function of its variables "
                         f"({type(exc).__name__}: {_short(str(exc))})") from None


def _restore(p: Path) -> tuple[RestoredGraph, list, list]:
    try:
        loaded = tf.saved_model.load(str(p))
    except Exception as exc:
        raise InputError(f"{p}: not a loadable SavedModel ({type(exc).__name__}: {_short(str(exc))})") from None
    key, cf = _signature(loaded, p)
    kw_specs = cf.structured_input_signature[1]
    if cf.structured_input_signature[0] or not kw_specs:
        raise InputError(f"{p}: signature {key!r} takes positional inputs; expected named inputs (as model.export() "
                         "writes)")
    input_names = tuple(sorted(kw_specs))
    in_specs = [kw_specs[n] for n in input_names]
    found = _restored_variables(loaded)
    by_handle = {id(v.handle): v for v, _ in found.values()}
    captured = []
    for external, internal in cf.graph.captures:
        var = by_handle.get(id(external))
        if var is None:
            if external.dtype == tf.resource:
                raise InputError(f"{p}: the serving function reads a resource that is not a restored variable "
                                 f"({internal.op.name}); only variables and tensors are supported")
            continue  # a captured constant: frozen into the graph
        captured.append((var, internal.op.name))
    if not captured:
        raise InputError(f"{p}: the serving function reads no variables; nothing to differentiate")
    frozen, graph_def = _freeze(cf, p)
    placeholders = {t.op.name: t for t in cf.inputs}
    feed_names = []
    for n, spec in zip(input_names, in_specs):
        op_name = spec.name or n
        if op_name not in placeholders:
            raise InputError(f"{p}: cannot find the placeholder of input {n!r} in the serving graph")
        feed_names.append(op_name)
    out_structure = cf.structured_outputs
    output_names = tuple(sorted(out_structure)) if isinstance(out_structure, dict) else tuple(
        f"output_{i}" for i in range(len(tf.nest.flatten(out_structure))))
    fetches = [t.name for t in frozen.outputs]
    out_specs = [tf.TensorSpec(t.shape, t.dtype) for t in tf.nest.flatten(out_structure)]
    variables = [v for v, _ in captured]
    var_specs = [tf.TensorSpec(v.shape, v.dtype) for v in variables]
    const_names = [name for _, name in captured]

    def imported(*args):
        xs, values = args[: len(feed_names)], args[len(feed_names):]
        input_map = dict(zip(feed_names, xs))
        input_map.update(zip(const_names, values))
        return tf.graph_util.import_graph_def(graph_def, input_map=input_map, return_elements=fetches, name="g")

    pure = tf.compat.v1.wrap_function(imported, [*in_specs, *var_specs])
    paths = tuple(v.name.split(":")[0] for v in variables)
    if len(set(paths)) < len(paths) or not all("/" in q for q in paths):  # unscoped (tf.Module) or repeated
        # variable names: the attribute paths in the restored object instead
        paths = tuple(found[v.ref()][1] for v in variables)
    graph = RestoredGraph(str(p), key, input_names, output_names, paths, pure, (*in_specs, *var_specs))
    return graph, variables, out_specs


def _restored_variables(loaded) -> dict:
    """Every variable reachable from the restored object (by ``ref()``) -> ``(variable, attribute path)``."""
    found: dict = {}
    seen = {id(loaded)}
    queue = [(loaded, "")]
    while queue:
        obj, prefix = queue.pop(0)
        try:
            children = obj._trackable_children()
        except Exception:  # an object that does not list its children
            continue
        for name, child in children.items():
            path = f"{prefix}{name}"
            if isinstance(child, tf.Variable):
                found.setdefault(child.ref(), (child, path))
            elif id(child) not in seen:
                seen.add(id(child))
                queue.append((child, path + "/"))
    for v in getattr(loaded, "variables", []) or []:
        found.setdefault(v.ref(), (v, v.name.split(":")[0]))
    return found


def _scopes(paths: Sequence[str], dtype) -> tuple[list[_Scope], list[tuple[_Scope, str]]]:
    """Scope layers for variable paths ``a/b/kernel`` (root-level variables go to a scope named 'variables')."""
    roots: dict[str, _Scope] = {}
    placed = []
    for path in paths:
        parts = [s for s in path.split("/") if s] or ["variable"]
        scope_parts, leaf = (parts[:-1] or ["variables"]), parts[-1]
        if scope_parts[0] not in roots:
            roots[scope_parts[0]] = _Scope(scope_parts[0], dtype=dtype)
        scope = roots[scope_parts[0]]
        for part in scope_parts[1:]:
            child = next((c for c in scope.children if c.name == part), None)
            if child is None:
                child = _Scope(part, dtype=dtype)
                scope.children = [*scope.children, child]
            scope = child
        placed.append((scope, leaf))
    return list(roots.values()), placed


def load_savedmodel(path: str | Path) -> keras.Model:
    """A TF SavedModel directory as a functional Keras model over its restored variables (see module docstring).

    The serving function (``serving_default``) becomes the model's forward pass; its restored variables become
    the model's weights (trainable as restored), named by their paths. Only for directories you trust: loading
    a SavedModel runs its graph. First derivatives (w.r.t. parameters and inputs) are checked here.

    Raises:
        InputError: not a SavedModel, no serving signature, no variables, or a graph without gradients.
    """
    p = Path(path)
    graph, variables, out_specs = _restore(p)
    dtypes = {v.dtype.name for v in variables if v.dtype.is_floating}
    dtype = sorted(dtypes)[0] if len(dtypes) == 1 else None
    in_specs = graph.specs[: len(graph.input_names)]
    inputs = [keras.Input(shape=tuple(s.shape[1:]), dtype=s.dtype.name, name=n)
              for n, s in zip(graph.input_names, in_specs)]
    roots, placed = _scopes(graph.variable_paths, dtype)
    weights = []
    for (scope, leaf), var in zip(placed, variables):
        w = scope.add_weight(shape=tuple(var.shape), dtype=var.dtype.name, name=leaf, trainable=var.trainable,
                             initializer="zeros")
        w.assign(var.numpy())
        weights.append(w)
    first = inputs[0]
    for scope in roots:  # the scopes join the model's layer graph, so their variables are the model's
        first = scope(first)
    call = _RestoredCall(graph, weights, out_specs, name=graph.output_names[0] if len(out_specs) == 1 else "restored",
                         dtype=dtype)
    outputs = call([first, *inputs[1:]])
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=p.name or "savedmodel")
    model._tfpartials_restored = graph
    require_derivatives(model, 1)
    return model


_OP_TYPE = re.compile(r"(?:op type: |no entry for: )([A-Za-z0-9_]+)")
_OP_NAME = re.compile(r"No gradient defined for operation '([^']+)'")


def require_derivatives(model, order: int = 1) -> None:
    """Check that a restored SavedModel's graph has derivatives of ``order`` (1 or 2), without running it.

    Traces the ``order``-th derivative of the outputs with respect to the variables and the floating inputs on a
    symbolic batch; an op with no registered gradient fails the trace. Models that are not restored
    SavedModels pass (their layers are differentiable Python code).

    Raises:
        InputError: one line naming the op type and what is unavailable.
    """
    graph: RestoredGraph | None = getattr(model, "_tfpartials_restored", None)
    if graph is None:
        return
    cache = graph.__dict__.setdefault("_probed", {})  # frozen dataclass: a cache outside the fields
    if order in cache:
        if cache[order] is not None:
            raise cache[order]
        return
    n_in = len(graph.input_names)
    floating = [i for i, s in enumerate(graph.specs[:n_in]) if s.dtype.is_floating]

    def probe(*args):
        args = list(args)
        watched = [args[i] for i in floating] + args[n_in:]
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(watched)
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(watched)
                outs = graph.pure(*args)
                y = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float64)) for o in tf.nest.flatten(outs)
                              if o.dtype.is_floating])
            grads = inner.gradient(y, watched, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            s = tf.add_n([tf.reduce_sum(tf.cast(g, tf.float64)) for g in grads])
        if order >= 2:
            return outer.gradient(s, watched, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads

    error = None
    try:
        tf.function(probe, autograph=False).get_concrete_function(*graph.specs)
    except LookupError as exc:
        msg = str(exc)
        op_type = _OP_TYPE.search(msg)
        op_name = _OP_NAME.search(msg)
        op = op_type.group(1) if op_type else (op_name.group(1) if op_name else _short(msg, 80))
        what = ("first derivatives (gradients, input Jacobians, attributions)" if order == 1 else
                "second derivatives (HVPs, Hessians, curvature spectra, input Hessians)")
        error = InputError(f"{graph.path}: the SavedModel's graph has no {'second ' if order == 2 else ''}"
                           f"derivative for op {op}: {what} are not available for it")
    cache[order] = error
    if error is not None:
        raise error
