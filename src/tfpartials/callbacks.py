"""Keras callbacks that watch gradients and curvature on a fixed probe batch while a model trains.

Both callbacks compute on the model's current weights through ``model.stateless_call`` (nothing is assigned,
no optimizer state is touched), with the model in inference mode, and use the model's compiled loss unless
given another. Values go into the ``logs`` dict (so ``History`` and later callbacks see them) and, with
``log_dir``, to TensorBoard as scalars at step = optimizer steps completed.

* :class:`GradientMonitor`: per-layer norm of the probe gradient, per-example gradient variance and SNR.
  Cost per call: the B per-example gradients of the probe batch (B = probe size), computed as one vectorised
  backward pass: about the FLOPs of one gradient of the probe batch, with B x n working memory.
* :class:`CurvatureMonitor`: top Hessian eigenvalue(s) by Lanczos and the Hutch++ trace. Cost per call:
  ``k + 10`` to ``~30`` Hessian-vector products for the eigenvalues plus ``trace_matvecs`` for the trace; one
  HVP costs about two gradients of the probe batch.

Example:
    >>> import numpy as np, keras, tfpartials as tp
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="lin")])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x = np.ones((8, 3), "float32"); y = np.zeros((8, 1), "float32")
    >>> h = model.fit(x, y, epochs=1, verbose=0, callbacks=[tp.GradientMonitor((x, y))])
    >>> sorted(k for k in h.history if k.startswith("grad_snr"))
    ['grad_snr', 'grad_snr/lin']
"""

from __future__ import annotations

from typing import Any

from ._backend import keras, tf
from ._checks import InputError, check_positive_int, check_seed

__all__ = ["GradientMonitor", "CurvatureMonitor"]


def _scalar_metadata():
    meta = tf.compat.v1.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"  # TensorBoard's scalar dashboard
    return meta


_SCALAR_METADATA = _scalar_metadata()


def _optional_every(name: str, value) -> int | None:
    return None if value is None else check_positive_int(name, value)


class _ProbeMonitor(keras.callbacks.Callback):
    """Common part: the probe data, the schedule, the step counter and the TensorBoard writer."""

    def __init__(self, probe_data, loss: Any = None, *, every_n_steps: int | None = None,
                 every_n_epochs: int | None = 1, log_dir: str | None = None, wrt=None):
        super().__init__()
        if probe_data is None:
            raise InputError("probe_data: expected (x, y) arrays (a fixed probe batch), got None")
        self.probe_data = probe_data
        self.loss = loss
        self.wrt = wrt
        self.every_n_steps = _optional_every("every_n_steps", every_n_steps)
        self.every_n_epochs = _optional_every("every_n_epochs", every_n_epochs)
        if self.every_n_steps is None and self.every_n_epochs is None:
            raise InputError("every_n_steps and every_n_epochs are both None: the callback would never run; "
                             "set one of them")
        self.log_dir = None if log_dir is None else str(log_dir)
        self._writer = None
        self._state: tuple | None = None  # (model, objective, data, extra) built on first use
        self._batches_seen = 0
        self._last_step: int | None = None
        self.last_values: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._prepared()  # bad probe data or loss fail here, before the first training step

    def on_train_batch_end(self, batch, logs=None):
        self._batches_seen += 1
        if self.every_n_steps is not None:
            step = self._step()
            if step % self.every_n_steps == 0:
                self._record(step, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._record(self._step(), logs)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- helpers --------------------------------------------------------------------------------------------------
    def _step(self) -> int:
        opt = getattr(self.model, "optimizer", None)
        iterations = getattr(opt, "iterations", None)
        if iterations is not None:
            try:
                return int(tf.convert_to_tensor(iterations).numpy())
            except (TypeError, ValueError):  # pragma: no cover - an optimizer without a readable counter
                pass
        return self._batches_seen

    def _prepared(self):
        from .autodiff.problem import prepare

        if self._state is None or self._state[0] is not self.model:
            if self.model is None:
                raise InputError(f"{type(self).__name__}: no model set; pass the callback to model.fit")
            obj, data = prepare(self.model, self.probe_data, self.loss, self.wrt)
            self._state = (self.model, obj, data, self._extra(obj, data))
        return self._state

    def _extra(self, obj, data):
        return None

    def _record(self, step: int, logs) -> dict[str, float]:
        if step != self._last_step:  # both schedules may fire on the same step: compute once
            _, obj, data, extra = self._prepared()
            self.last_values = self._compute(obj, data, extra)
            self._last_step = step
            self._write(step, self.last_values)
        if logs is not None:
            logs.update(self.last_values)
        return self.last_values

    def _write(self, step: int, values: dict[str, float]) -> None:
        if self.log_dir is None:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for tag, value in values.items():
                # what tf.summary.scalar writes, without needing the tensorboard package installed
                tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)
        self._writer.flush()

    def _compute(self, obj, data, extra) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class GradientMonitor(_ProbeMonitor):
    """Per-layer gradient norm, per-example gradient variance and SNR on a fixed probe batch.

    Logged (``logs`` keys and TensorBoard tags), for each layer L with chosen variables:

    * ``grad_norm/L``: ``||m_L||``, the norm of the probe-batch gradient restricted to L;
    * ``grad_variance/L``: ``mean_{j in L} var_j`` with ``var = (1/B) sum_i (g_i - m)**2``;
    * ``grad_snr/L``: ``||m_L||**2 / sum_{j in L} var_j``;

    and ``grad_norm`` / ``grad_snr`` over all chosen parameters, where ``g_i`` are the per-example gradients
    of the B probe examples and ``m`` their mean (see :mod:`tfpartials.autodiff.statistics`).

    Cost per call: the B per-example gradients of the probe batch (one vectorised backward pass, about one
    probe-batch gradient in FLOPs; B x n floats of memory). With ``every_n_epochs=1`` that is negligible next to
    an epoch of training; ``every_n_steps=1`` roughly doubles the cost of a step of batch size B.

    Args:
        probe_data: ``(x, y)`` arrays (or anything :func:`tfpartials.load_data` accepts) kept fixed.
        loss: loss name, object or callable; default the model's compiled loss (``model.loss``).
        every_n_steps: also log every this many optimizer steps (None: off).
        every_n_epochs: log at the end of every this many epochs (None: off).
        log_dir: directory for TensorBoard event files (None: only ``logs``).
        wrt: variable names / globs / layer names to watch; default all trainable variables.
        max_memory: working-memory budget for the per-example gradients.

    Reference: Dangel, Kunstner & Hennig, "BackPACK: Packing more into backprop" (ICLR 2020).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros", name="lin")])
        >>> model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")   # weights stay put
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.ones((2, 1), "float32")
        >>> h = model.fit(x, y, epochs=1, verbose=0, callbacks=[tp.GradientMonitor((x, y))])
        >>> # g_i = -2 [x_i, 1]: mean -(1, 2, 2) of norm 3, variance (1, 4, 0), SNR 9 / 5
        >>> [round(h.history[k][0], 5) for k in ("grad_norm/lin", "grad_variance/lin", "grad_snr/lin")]
        [3.0, 1.66667, 1.8]
    """

    def __init__(self, probe_data, loss: Any = None, every_n_steps: int | None = None,
                 every_n_epochs: int | None = 1, log_dir: str | None = None, wrt=None, *,
                 max_memory: str | int | None = None):
        super().__init__(probe_data, loss, every_n_steps=every_n_steps, every_n_epochs=every_n_epochs,
                         log_dir=log_dir, wrt=wrt)
        self.max_memory = max_memory
        self.last_statistics = None

    def _extra(self, obj, data):
        from .autodiff.per_example import PerExampleEngine

        return PerExampleEngine(obj)

    def _compute(self, obj, data, engine) -> dict[str, float]:
        from .autodiff.statistics import statistics_of

        s = statistics_of(obj, data, engine=engine, max_memory=self.max_memory, quiet=True)
        self.last_statistics = s
        values: dict[str, float] = {}
        for layer in s.layer_norm:
            values[f"grad_norm/{layer}"] = s.layer_norm[layer]
            values[f"grad_variance/{layer}"] = s.layer_variance[layer]
            values[f"grad_snr/{layer}"] = s.layer_snr[layer]
        values["grad_norm"] = float(sum(v * v for v in s.layer_norm.values()) ** 0.5)
        values["grad_snr"] = s.total_snr
        return values


class CurvatureMonitor(_ProbeMonitor):
    """Top Hessian eigenvalue(s) and the Hutch++ Hessian trace of the loss on a fixed probe batch.

    Logged: ``hessian/top_eigenvalue`` (the largest eigenvalue, the "sharpness"), ``hessian/eigenvalue_i``
    for i = 1..top_k when ``top_k > 1``, ``hessian/trace`` and ``hessian/trace_std_error`` (when
    ``trace_matvecs`` > 0). The Hessian is that of the probe objective ``(1/B) sum_i loss_i + R`` at the
    current weights (inference mode).

    Cost per call: Lanczos needs about ``top_k + 10`` to ``30`` Hessian-vector products, Hutch++ exactly
    ``trace_matvecs``; one HVP (forward-over-reverse) costs about two gradients of the probe batch. With the
    defaults and a probe batch of B examples: about 60 to 80 probe-batch gradients per epoch.

    Args:
        probe_data: ``(x, y)`` arrays kept fixed.
        loss: default the model's compiled loss.
        every_n_epochs: log at the end of every this many epochs.
        top_k: number of top eigenvalues.
        trace_matvecs: Hutch++ budget (a multiple of 3; 0 disables the trace).
        seed: seed of the Lanczos start vector and the trace probes (the same every call).
        log_dir: TensorBoard directory (None: only ``logs``).
        wrt: restrict the Hessian to these variables.
        tol: relative residual tolerance of the eigenvalues.

    Reference: Yao et al., "PyHessian: Neural networks through the lens of the Hessian" (2020); Meyer et al.,
    "Hutch++: Optimal stochastic trace estimation" (SOSA 2021).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.ones((2, 1), "float32")
        >>> h = model.fit(x, y, epochs=1, verbose=0, callbacks=[tp.CurvatureMonitor((x, y), trace_matvecs=9)])
        >>> X1 = np.hstack([x, np.ones((2, 1))])        # a linear model's Hessian: (2/N) [X 1]^T [X 1], N = 2
        >>> bool(np.isclose(h.history["hessian/top_eigenvalue"][0], np.linalg.eigvalsh(X1.T @ X1)[-1], rtol=1e-5))
        True
        >>> round(h.history["hessian/trace"][0], 4)     # tr = 1 + 4 + 2; Hutch++ with 9 >= 3 n products is exact
        7.0
    """

    def __init__(self, probe_data, loss: Any = None, every_n_epochs: int = 1, top_k: int = 1,
                 trace_matvecs: int = 30, seed: int = 0, log_dir: str | None = None, wrt=None, *,
                 tol: float = 1e-6):
        super().__init__(probe_data, loss, every_n_steps=None, every_n_epochs=check_positive_int(
            "every_n_epochs", every_n_epochs), log_dir=log_dir, wrt=wrt)
        self.top_k = check_positive_int("top_k", top_k)
        if isinstance(trace_matvecs, bool) or not isinstance(trace_matvecs, int) or trace_matvecs < 0:
            raise InputError(f"trace_matvecs: expected a non-negative integer (0 disables the trace), "
                             f"got {trace_matvecs!r}")
        if 0 < trace_matvecs < 3:
            raise InputError(f"trace_matvecs: Hutch++ needs at least 3 matvecs (or 0 to disable), got {trace_matvecs}")
        self.trace_matvecs = trace_matvecs
        self.seed = check_seed(seed)
        self.tol = float(tol)
        self.last_eigenvalues = None
        self.last_trace = None

    def _compute(self, obj, data, extra) -> dict[str, float]:
        from .estimators.eigenvalues import top_eigenvalues
        from .estimators.trace import hutchpp_trace
        from .linalg.curvature import HessianOperator

        op = HessianOperator(obj, data, quiet=True)
        if self.top_k >= op.shape[0]:
            raise InputError(f"top_k: expected fewer than the {op.shape[0]} parameters, got {self.top_k}")
        eig = top_eigenvalues(op, k=self.top_k, tol=self.tol, seed=self.seed, quiet=True)
        self.last_eigenvalues = eig
        values = {"hessian/top_eigenvalue": float(eig.eigenvalues[0])}
        if self.top_k > 1:
            for i, lam in enumerate(eig.eigenvalues, 1):
                values[f"hessian/eigenvalue_{i}"] = float(lam)
        if self.trace_matvecs:
            tr = hutchpp_trace(op, num_matvecs=self.trace_matvecs, seed=self.seed, quiet=True)
            self.last_trace = tr
            values["hessian/trace"] = tr.value
            values["hessian/trace_std_error"] = tr.std_error
        return values
