"""One process of the two-worker test: computes the dataset gradient (and an HVP) under TF_CONFIG.

Usage: python -m tests.distribute._worker OUT.npz   (TF_CONFIG in the environment, or none for 1 process)
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(out: str) -> None:
    import numpy as np

    from tfpartials.distribute import make_strategy

    strategy = make_strategy()  # MultiWorkerMirroredStrategy from TF_CONFIG, or None
    import tfpartials as tp
    from tests import models as M

    model, x, y = M.mlp(n=29)
    kw = dict(loss="sparse_categorical_crossentropy", from_logits=True, batch_size=4, strategy=strategy)
    g = tp.gradients(model, (x, y), **kw)
    arrays = {f"grad/{k}": v for k, v in g.items()}
    try:
        from tfpartials.autodiff.hvp import hvp
    except ImportError:
        hvp = None
    if hvp is not None:
        v = {k: np.random.default_rng(1).normal(size=a.shape).astype("float32") for k, a in g.items()}
        hv = hvp(model, (x, y), v, **kw)
        arrays.update({f"hvp/{k}": a for k, a in hv.items()})
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    np.savez(out, replicas=replicas, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
