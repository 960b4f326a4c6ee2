"""``tfpartials gradients MODEL --data D --per-example [--full] [--out pe.npz]`` (a helper, not a command).

Writes per-example gradient norms (``norms`` (N,), ``norms/<name>`` (N,) per variable) and, with ``--full``,
the per-example gradients themselves keyed by parameter name (N, *shape); prints the mean, median and maximum
norm per variable and the gradient signal-to-noise ratio.
"""

from __future__ import annotations

__all__ = ["run_per_example"]


def run_per_example(args, model, data) -> int:
    import numpy as np

    from ..._checks import ResourceError
    from ...autodiff.per_example import per_example_gradients
    from ...autodiff.problem import prepare
    from ...autodiff.statistics import statistics_from_gradients, statistics_of
    from ...io.writers import save_npz
    from ..common import print_table

    obj, d = prepare(model, data, args._loss, args.wrt, precision=args.precision,
                     include_regularization=not args.no_regularization, unconnected=args.unconnected)
    arrays: dict[str, np.ndarray] = {}
    if args.full:
        try:
            grads = per_example_gradients(obj, d, max_memory=getattr(args, "max_memory", None), quiet=args.quiet)
        except ResourceError as exc:
            raise ResourceError(f"{exc} (without --full only the per-example norms are kept)") from None
        stats = statistics_from_gradients(grads)
        arrays.update(grads)
    else:
        stats = statistics_of(obj, d, max_memory=getattr(args, "max_memory", None), quiet=args.quiet)
    arrays["norms"] = stats.norms
    for name in stats.names:
        arrays[f"norms/{name}"] = stats.variable_norms[name]

    def row(label, shape, norms, snr):
        return [label, shape, float(np.mean(norms)), float(np.median(norms)), float(np.max(norms)), snr]

    rows = [row(name, str(tuple(stats.mean[name].shape)), stats.variable_norms[name], stats.snr[name])
            for name in stats.names]
    rows.append(row("total", str(obj.space.size), stats.norms, stats.total_snr))
    if not args.quiet:
        print_table(args, f"Per-example gradient norms ({stats.num_examples} examples, loss {obj.loss.name})",
                    ["parameter", "shape", "mean", "median", "max", "SNR"], rows)
    if args.out:
        save_npz(args.out, arrays, overwrite=args.overwrite)
    return 0
