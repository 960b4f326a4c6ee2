"""What a model takes and gives: input and output names and shapes, without running it."""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import InputError

__all__ = ["Signature", "signature"]


@dataclass(frozen=True)
class Signature:
    """Input/output names and per-example shapes (batch dimension removed; ``None`` = any size)."""

    input_names: tuple[str, ...]
    input_shapes: tuple[tuple[int | None, ...], ...]
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int | None, ...], ...]
    dict_inputs: bool = False

    @property
    def single_input(self) -> bool:
        return len(self.input_names) == 1

    @property
    def single_output(self) -> bool:
        return len(self.output_names) == 1

    def input_index(self, which: int | str | None) -> int:
        return _index("input", which, self.input_names)

    def output_index(self, which: int | str | None) -> int:
        return _index("output", which, self.output_names)


def _index(kind: str, which, names) -> int:
    if which is None:
        if len(names) != 1:
            raise InputError(f"the model has {len(names)} {kind}s ({', '.join(names)}); choose one with "
                             f"{kind}=NAME or an index")
        return 0
    if isinstance(which, str):
        if which not in names:
            raise InputError(f"unknown {kind} {which!r}; available: {', '.join(names)}")
        return names.index(which)
    if isinstance(which, bool) or not isinstance(which, int):
        raise TypeError(f"{kind}: expected a name or an index, got {which!r}")
    if not -len(names) <= which < len(names):
        raise InputError(f"{kind} index {which} out of range: the model has {len(names)} {kind}(s)")
    return which % len(names)


def _as_list(shape):
    if isinstance(shape, dict):
        return list(shape.values())
    if isinstance(shape, list) and shape and isinstance(shape[0], tuple | list):
        return shape
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple | list):
        return list(shape)
    return [shape]


def signature(model) -> Signature:
    """Read the input and output signature of a built Keras model."""
    try:
        ishape = model.input_shape
        oshape = model.output_shape
    except (AttributeError, ValueError) as exc:
        raise InputError(f"the model has no defined input/output shape ({exc}); build it with an Input first") from None
    inputs = getattr(model, "inputs", None) or []
    in_shapes = [tuple(s)[1:] for s in _as_list(ishape)]
    out_shapes = [tuple(s)[1:] for s in _as_list(oshape)]
    dict_inputs = isinstance(ishape, dict)
    if dict_inputs:
        in_names = list(ishape.keys())
    else:
        in_names = [getattr(t, "name", f"input_{i}") for i, t in enumerate(inputs)] or ["input"]
        if len(in_names) != len(in_shapes):
            in_names = [f"input_{i}" for i in range(len(in_shapes))]
    out_names = list(getattr(model, "output_names", None) or [])
    if isinstance(oshape, dict):
        out_names = list(oshape.keys())
    if len(out_names) != len(out_shapes):
        last = model.layers[-1].name if getattr(model, "layers", None) else "output"
        out_names = [last] if len(out_shapes) == 1 else [f"output_{i}" for i in range(len(out_shapes))]
    return Signature(tuple(in_names), tuple(in_shapes), tuple(out_names), tuple(out_shapes), dict_inputs)
