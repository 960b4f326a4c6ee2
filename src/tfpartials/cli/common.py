"""Flags and helpers shared by commands: model/data loading, output checks, tables."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_model_args", "add_data_args", "add_output_args", "add_guard_args", "load_model_and_data",
           "console", "quiet_tensorflow_import", "print_table"]


_STRATEGY = None


def current_strategy():
    """The tf.distribute strategy chosen by ``--devices`` or ``TF_CONFIG`` (None: one device)."""
    return _STRATEGY


def quiet_tensorflow_import(devices: int | None = None) -> None:
    """Import TensorFlow with its C++ start-up notices (oneDNN, CPU features) kept off the user's stderr.

    With ``devices`` > 1 or a ``TF_CONFIG`` cluster spec, the tf.distribute strategy is created here, before
    TensorFlow runs its first operation (logical devices and collectives must be configured first).
    """
    global _STRATEGY
    if devices is not None and devices < 1:
        from .._checks import InputError

        raise InputError(f"--devices: expected a positive integer, got {devices}")
    want_strategy = (devices or 1) > 1 or bool(os.environ.get("TF_CONFIG"))
    if "tensorflow" in sys.modules and not want_strategy:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no stderr fd
        import tensorflow  # noqa: F401
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow as tf

        if want_strategy and _STRATEGY is None:
            from ..distribute import make_strategy

            _STRATEGY = make_strategy(devices)
        tf.constant(0.0) + 1.0  # device initialisation prints its notices here
        import keras  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def add_model_args(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    if model:
        p.add_argument("model", metavar="MODEL", help="model file: .keras, .h5 or a SavedModel directory")
    p.add_argument("--trust", action="store_true",
                   help="allow formats that can run code (SavedModel, Python lambdas); only for files you made")
    p.add_argument("--precision", choices=["float32", "float64"], default=None,
                   help="compute on a float64 copy of the model (default: the model's dtype)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_guard_args(p)


def add_guard_args(p: argparse.ArgumentParser) -> None:
    """``--sandbox``, ``--sandbox-memory`` and ``--timeout`` (enforced by main, not by the command)."""
    p.add_argument("--sandbox", action="store_true",
                   help="load and differentiate in a confined child process (no network, no writes outside a "
                        "private directory, a memory limit): the way to look at a model you do not trust")
    p.add_argument("--sandbox-memory", default=None, metavar="SIZE",
                   help="address-space limit of the sandboxed child (default 8GiB)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds (exit 2, nothing written)")


def add_data_args(p: argparse.ArgumentParser, *, targets: bool = True) -> None:
    p.add_argument("--data", required=True, metavar="D",
                   help=".npz (x, y or one key per model input/output), .npy (inputs) or .csv (--target COL)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per batch (default 128)")
    p.add_argument("--target", action="append", default=None, metavar="COL", help="CSV target column (repeatable)")
    p.add_argument("--allow-nan", action="store_true", help="accept NaN/Inf in the data")
    if targets:
        p.add_argument("--loss", default=None, action=_LossAction, metavar="LOSS|OUTPUT=LOSS",
                       help="Keras loss name (default: the loss stored with the model); for a multi-output model "
                            "one OUTPUT=LOSS per output (repeatable; outputs not named get no loss)")
        p.add_argument("--loss-weight", dest="loss_weights", default=None, action=_LossWeightAction,
                       metavar="OUTPUT=W", help="weight of an output's loss (repeatable; default 1 or the "
                                                "model's compiled loss_weights)")
        p.add_argument("--from-logits", action="store_true", default=None,
                       help="the model outputs logits (cross-entropy losses)")
        p.add_argument("--wrt", action="append", default=None, metavar="GLOB",
                       help="differentiate with respect to these variables only (name, glob or layer; repeatable)")
        p.add_argument("--devices", type=int, default=None, metavar="N",
                       help="spread the data passes over N local devices (GPUs, else N logical CPUs); a "
                            "TF_CONFIG cluster spec in the environment selects multi-worker training instead")


class _LossAction(argparse.Action):
    """``--loss mse`` (one loss) or repeated ``--loss OUTPUT=LOSS`` (a dict, one loss per output)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        name, sep, loss = str(values).partition("=")
        if not sep:
            if isinstance(current, dict):
                parser.error(f"--loss: {values!r} (every output) and OUTPUT=LOSS (one output) exclude each other")
            if current is not None:
                parser.error(f"--loss: given twice ({current!r} and {values!r}); for several outputs use "
                             "--loss OUTPUT=LOSS once per output")
            setattr(namespace, self.dest, str(values))
            return
        if not name.strip() or not loss.strip():
            parser.error(f"--loss: expected LOSS or OUTPUT=LOSS, got {values!r}")
        if isinstance(current, str):
            parser.error(f"--loss: {current!r} (every output) and {values!r} (one output) exclude each other")
        current = dict(current or {})
        if name.strip() in current:
            parser.error(f"--loss: output {name.strip()!r} given twice")
        current[name.strip()] = loss.strip()
        setattr(namespace, self.dest, current)


class _LossWeightAction(argparse.Action):
    """Repeated ``--loss-weight OUTPUT=W`` -> ``{output: W}``."""

    def __call__(self, parser, namespace, values, option_string=None):
        import math

        name, sep, text = str(values).partition("=")
        try:
            weight = float(text) if sep and name.strip() else None
        except ValueError:
            weight = None
        if weight is None or not math.isfinite(weight) or weight < 0:
            parser.error(f"--loss-weight: expected OUTPUT=W with a finite W >= 0, got {values!r}")
        current = dict(getattr(namespace, self.dest, None) or {})
        if name.strip() in current:
            parser.error(f"--loss-weight: output {name.strip()!r} given twice")
        current[name.strip()] = weight
        setattr(namespace, self.dest, current)


def add_output_args(p: argparse.ArgumentParser, default: str | None = None, help: str = "output file") -> None:
    p.add_argument("--out", default=default, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def check_outputs(args) -> None:
    """Refuse bad output paths before any work: ``--out``/``--plot`` that exist (without ``--overwrite``) or sit in
    a missing directory, and a ``--plot`` that is not a ``.png``."""
    from .._checks import InputError
    from ..io.writers import check_output_path

    overwrite = bool(getattr(args, "overwrite", False))
    if getattr(args, "out", None):
        check_output_path(args.out, overwrite)
    plot = getattr(args, "plot", None)
    if plot:
        if not str(plot).lower().endswith(".png"):
            raise InputError(f"--plot: expected a .png file name, got {plot!r}")
        check_output_path(plot, overwrite)


def check_batch_size(args) -> None:
    from .._checks import InputError

    bs = getattr(args, "batch_size", None)
    if bs is not None and bs < 1:
        raise InputError(f"--batch-size: expected a positive integer, got {bs}")


# commands that differentiate twice (checked on a restored SavedModel before any data is read)
_SECOND_ORDER = {"hessian", "hvp", "spectrum", "check", "report"}


def load_model_and_data(args, *, targets: bool = True) -> tuple[Any, Any]:
    """Load MODEL (safely) and --data, validated against each other."""
    from .. import load_model
    from ..io.data import load_data

    check_batch_size(args)
    model = load_model(args.model, trust=args.trust)
    if getattr(args, "command", None) in _SECOND_ORDER or getattr(args, "order", 1) == 2:  # a restored graph
        # may lack second derivatives: refuse before any data is read
        from ..io.savedmodel import require_derivatives

        require_derivatives(model, 2)
    loss_name = None
    if targets:
        from ..io.losses import resolve_loss

        loss = resolve_loss(args.loss, getattr(args, "from_logits", None), model,
                            loss_weights=getattr(args, "loss_weights", None))
        loss_name = loss.name
        args._loss = loss
    data = load_data(args.data, batch_size=args.batch_size, target=args.target, model=model,
                     loss_name=loss_name, allow_nan=args.allow_nan, require_targets=targets)
    return model, data


def console(args=None):
    from rich.console import Console

    return Console(stderr=False, quiet=bool(getattr(args, "quiet", False)))


def print_table(args, title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        table.add_row(*[_fmt(v) for v in r])
    console(args).print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
