"""Kronecker-factored curvature: KFAC and eigenvalue-corrected KFAC (EKFAC) as linear operators.

For a layer ``z = a W + b`` (kernel and bias one block, the bias as an input of ones) the curvature block of
the MEAN loss, ``(1/N) sum_n J_n^T H_n J_n``, is approximated by ``A ⊗ B`` with

    A = (1/N) sum_n a_n a_n^T,        B = (1/N) sum_n sum_c g_nc g_nc^T,

``g_nc`` the gradient of example ``n``'s loss (or of one column ``c`` of a square root of its output Hessian)
with respect to ``z`` (Martens & Grosse 2015). Layers that share weights over positions ``r`` (sequences,
convolution patches; Grosse & Martens 2016, Eschenhagen et al. 2023) use "expand" (``A`` averages
``a_nr a_nr^T`` over positions, ``B`` sums over them) or "reduce" (``A`` from the position-mean of ``a_nr``,
``B`` from the position-sum of ``g_nr``). These are the conventions of curvlinops' ``KFACLinearOperator``.

Depthwise convolutions (``DepthwiseConv1D``/``2D``) get one Kronecker block per input channel ``c``: channel
``c``'s weights ``kernel[..., c, :]`` (with ``bias[c*m:(c+1)*m]``, ``m`` the depth multiplier) are an ordinary small
convolution from the ``kh*kw`` patch of channel ``c`` alone to its ``m`` outputs, so ``A_c`` (``(kh*kw+1)^2``)
and ``B_c`` (``m^2``) are the factors of that convolution, with expand/reduce as above. A single Kronecker
product for the whole layer does not exist (the channels do not share one input), and the exact diagonal block
would drop every correlation inside a channel; per-channel blocks keep those at ``C((kh*kw+1)^2 + m^2)``
numbers and are exact (the GGN block of the channel) for one example and one output position. The blocks of
channel ``c`` are labelled ``"<layer>[c]"``.

Layers called inside another layer's ``call`` get their blocks too: the query, key, value and output
``EinsumDense`` projections of a ``MultiHeadAttention`` (labelled ``"<mha>/query"``, ``"<mha>/key"``,
``"<mha>/value"``, ``"<mha>/attention_output"``) and the layer wrapped by ``TimeDistributed``. Their calls are
intercepted only while tfpartials traces its own pass; the model is left as it was. Every token of a
projection is a weight-sharing position, so "expand" and "reduce" apply over tokens, and the block is the exact
GGN block only for one example at one token (a query projection reading one query token, an output projection
writing one token, a value projection of one value token). A layer called several times (a shared layer, the
steps of ``TimeDistributed``) is one weight-sharing layer whose positions are the rows of all its calls:
``A`` averages over all of them and ``B`` sums over them (expand), or both use the positions of all calls
(reduce).

Block layout: the block of a layer acts on the row-major flattening of its ``(d_in + 1, d_out)``
kernel-with-bias (bias row last), so it is ``kron(A, B)`` on ``[kernel.ravel(), bias]``; that is exactly the
operator's flat vector when kernel and bias are consecutive in the :class:`~tfpartials.params.ParameterSpace`
(the Keras order). Otherwise (an EinsumDense kernel whose output axes come first, a permuted selection),
:attr:`KFACBlock.indices` gives the flat position of every block coordinate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from .._backend import tf
from .._checks import InputError, check_choice, check_positive_float, check_positive_int, check_seed
from .._memory import DEFAULT_DENSE_LIMIT, require_fits, resolve_budget
from ..autodiff.problem import prepare
from ..autodiff.risk import accumulate, as_tensors
from ._kfac_layers import Tapped, find_layers, tapped_forward
from .operator import LinearOperator

__all__ = ["KFACBlock", "KFACOperator", "EKFACOperator", "FisherType", "KFACApprox"]

FisherType = Literal["type-2", "mc", "empirical"]
KFACApprox = Literal["expand", "reduce"]


@dataclass(frozen=True, eq=False)
class KFACBlock:
    """One diagonal block of a Kronecker-factored operator.

    Attributes:
        names: parameter names in the block (kernel first, then bias).
        layer: the layer's path.
        A: input factor ``(d_a, d_a)`` (``d_a = d_in + 1`` with a bias), float64; None for a diagonal block.
        B: output-gradient factor ``(d_out, d_out)``, float64; None for a diagonal block.
        kind: ``"kronecker"`` (block = ``kron(A, B)``) or ``"diagonal"`` (block = ``diag(diag)``).
        diag: the exact diagonal (flat, block order) of a ``"diagonal"`` block, else None.
        indices: flat-vector position of each block coordinate (row-major over ``(d_a, d_out)``).
        corrected: EKFAC only: the re-fitted eigenvalues ``(d_a, d_out)`` in the basis ``A_eig[1] ⊗ B_eig[1]``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]]); y = np.zeros((2, 1))
        >>> block = tp.KFACOperator(model, (x, y), loss="mse", precision="float64", quiet=True).blocks[0]
        >>> block.names, block.layer, block.kind
        (('lin/kernel', 'lin/bias'), 'lin', 'kronecker')
        >>> X1 = np.hstack([x, np.ones((2, 1))])              # one output: kron(A, B) = (2/N) [X 1]^T [X 1]
        >>> bool(np.allclose(np.kron(block.A, block.B), X1.T @ X1))
        True
    """

    names: tuple[str, ...]
    layer: str
    A: np.ndarray | None
    B: np.ndarray | None
    kind: str
    diag: np.ndarray | None
    indices: np.ndarray
    corrected: np.ndarray | None = None

    @property
    def offset(self) -> int:
        """First flat position of the block (its span is ``offset:offset+size`` when contiguous)."""
        return int(self.indices.min())

    @property
    def size(self) -> int:
        return int(self.indices.size)

    @property
    def contiguous(self) -> bool:
        return bool(np.array_equal(self.indices, np.arange(self.offset, self.offset + self.size)))

    @cached_property
    def A_eig(self) -> tuple[np.ndarray, np.ndarray]:
        """``(eigenvalues ascending, eigenvectors as columns)`` of ``A``."""
        return _eigh(self.A, self)

    @cached_property
    def B_eig(self) -> tuple[np.ndarray, np.ndarray]:
        """``(eigenvalues ascending, eigenvectors as columns)`` of ``B``."""
        return _eigh(self.B, self)

    @property
    def eigenvalues(self) -> np.ndarray:
        """This block's eigenvalues, ``(d_a, d_out)`` (KFAC: outer product of the factors' spectra)."""
        if self.kind == "diagonal":
            return self.diag
        if self.corrected is not None:
            return self.corrected
        return np.outer(self.A_eig[0], self.B_eig[0])

    def to_dense(self) -> np.ndarray:
        """The block as a dense ``(size, size)`` matrix in block order."""
        if self.kind == "diagonal":
            return np.diag(self.diag)
        if self.corrected is None:
            return np.kron(self.A, self.B)
        Q = np.kron(self.A_eig[1], self.B_eig[1])
        return (Q * self.corrected.reshape(-1)) @ Q.T


def _eigh(M, block):
    if M is None:
        raise InputError(f"block {block.layer!r} is diagonal: it has no Kronecker factors")
    vals, vecs = np.linalg.eigh(M)
    return np.maximum(vals, 0.0), vecs


# ---------------------------------------------------------------------------------- per-batch factor kernel
def _values(obj, params) -> dict:
    model = obj.model
    vals = {id(v): t for v, t in zip(model.trainable_variables, obj.space.full_trainable(params))}
    vals.update({id(v): t for v, t in zip(model.non_trainable_variables, obj.non_trainable())})
    return vals


def _record(obj, params, x, tapped, tape, sizes=None):
    """Run the model under ``tape``; returns (flat outputs (B, C), structure, outputs, taps {name: (a, z,
    to_rows)}). ``sizes``: the width of each flattened output, so ``C`` is static even in a trace whose input
    shapes were relaxed to unknown dimensions (the loss columns loop over it in Python)."""
    taps: dict = {}
    by_id = {id(s.layer): s for s in tapped}

    def on_tap(spec, a, z, to_rows):  # one entry per call: a layer with shared weights is tapped at every use
        tape.watch(z)
        taps.setdefault(spec.name, []).append((a, z, to_rows))
        return z

    out = tapped_forward(obj.model, _values(obj, params), x, by_id, on_tap, obj.training)
    missing = [s.name for s in tapped if s.name not in taps]
    if missing:
        raise obj._remember(InputError(
            f"KFAC: layer {missing[0]!r} was not called while re-evaluating model {obj.model.name!r} (its owner "
            "reads its weights without calling it); exclude it with wrt=..."))
    outs = [tf.cast(o, obj.dtype) for o in tf.nest.flatten(out)]
    sizes = [-1] * len(outs) if sizes is None else sizes
    flat = tf.concat([tf.reshape(o, (tf.shape(o)[0], c)) for o, c in zip(outs, sizes)], axis=1)
    return flat, out, outs, taps


def _unflatten(flat, structure, outs, sizes):
    parts, start = [], 0
    for o, size in zip(outs, sizes):
        parts.append(tf.reshape(flat[:, start:start + size], tf.shape(o)))
        start += size
    return tf.nest.pack_sequence_as(structure, parts)


def _loss_columns(obj, flat, structure, outs, sizes, y, fisher):
    """``(B, C, K)``: per example, K vectors whose outer products sum to the output curvature."""
    f0 = tf.stop_gradient(flat)
    with tf.GradientTape() as t2:
        t2.watch(f0)
        with tf.GradientTape() as t1:
            t1.watch(f0)
            per = tf.cast(obj._loss_of(_unflatten(f0, structure, outs, sizes), y), obj.dtype)
            total = tf.reduce_sum(per)
        grad = t1.gradient(total, f0)
    if fisher != "type-2":
        return grad[:, :, None]
    H = t2.batch_jacobian(grad, f0)
    H = 0.5 * (H + tf.linalg.matrix_transpose(H))
    evals, evecs = tf.linalg.eigh(H)
    return evecs * tf.sqrt(tf.nn.relu(evals))[:, None, :]


def _grouped(t):
    """``(B, R, d) -> (B, R, 1, d)``; grouped layers (depthwise convolutions) already are ``(B, R, G, d)``."""
    return t[:, :, None, :] if t.shape.rank == 3 else t


def _positions(parts):
    """The uses of one layer as weight-sharing positions: ``(B, R_1 + ... + R_U, G, d)``."""
    parts = [_grouped(t) for t in parts]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)


def _features(spec: Tapped, uses, approx):
    """Input features (over all uses of the layer) with the ones of the bias; expand: (B, R, G, d_a); reduce:
    (B, 1, G, d_a) of position means."""
    a = _positions([u[0] for u in uses])
    parts = []
    if spec.kernel is not None:
        parts.append(a)
    if spec.bias is not None:
        parts.append(tf.ones_like(a[..., :1]))
    feats = tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]
    if approx == "reduce":
        feats = tf.reduce_mean(feats, axis=1, keepdims=True)
    return feats


def _factor_kernel(obj, tapped, diag_idx, fisher, approx, factor, ekfac, sizes):
    def fn(params, x, y, mask, scale, regw, *bases):
        w = scale * tf.cast(mask, obj.dtype)
        with tf.GradientTape(persistent=True) as tape:
            diag_params = [params[i] for i in diag_idx]
            tape.watch(diag_params)
            flat, structure, outs, taps = _record(obj, params, x, tapped, tape, sizes)
        cols = _loss_columns(obj, flat, structure, outs, sizes, y, fisher)
        uses = [taps[s.name] for s in tapped]
        zs = [z for u in uses for _, z, _ in u]
        feats = [_features(s, u, approx) for s, u in zip(tapped, uses)]
        wf = w * factor
        jacs = [tape.jacobian(flat, p, unconnected_gradients=tf.UnconnectedGradients.ZERO) for p in diag_params]
        Bs = [tf.zeros((s.groups, s.d_out, s.d_out), obj.dtype) for s in tapped]
        Cs = [tf.zeros((s.groups, s.d_a, s.d_out), obj.dtype) for s in tapped] if ekfac else []
        Ds = [tf.zeros_like(params[i]) for i in diag_idx]
        for c in range(cols.shape[-1]):
            u = cols[:, :, c]
            gz = tape.gradient(flat, zs, output_gradients=u) if zs else []
            _check_connected(obj, tapped, uses, gz)
            per_layer, start = [], 0
            for use in uses:
                per_layer.append(_positions([to_rows(g) for (_, _, to_rows), g in zip(use, gz[start:])]))
                start += len(use)
            for k, (s, g) in enumerate(zip(tapped, per_layer)):
                if ekfac:  # the true per-example gradient sum_r a_r g_r^T, projected onto the eigenbasis
                    full = _features(s, uses[k], "expand")
                    G = tf.einsum("brgi,brgj->bgij", full, g)
                    P = tf.einsum("gia,bgij,gjc->bgac", bases[2 * k], G, bases[2 * k + 1])
                    Cs[k] = Cs[k] + tf.einsum("b,bgac->gac", wf, P * P)
                    continue
                if approx == "reduce":
                    g = tf.reduce_sum(g, axis=1, keepdims=True)
                Bs[k] = Bs[k] + tf.einsum("b,brgi,brgj->gij", wf, g, g)
            for j, jac in enumerate(jacs):  # per-example gradient of <f_n, u_nc> w.r.t. the variable
                J = tf.einsum("bc,bc...->b...", u, jac)
                Ds[j] = Ds[j] + tf.tensordot(wf, J * J, [[0], [0]])
        if ekfac:
            return Cs
        As = []
        for f in feats:
            R = tf.cast(tf.shape(f)[1], obj.dtype)
            As.append(tf.einsum("b,brgi,brgj->gij", w / R, f, f))
        return As + Bs + Ds

    return fn


def _check_connected(obj, tapped, uses, gz):
    start = 0
    for s, use in zip(tapped, uses):
        if any(g is None for g in gz[start:start + len(use)]):
            raise obj._remember(InputError(
                f"KFAC: the output of layer {s.name!r} does not reach the model's outputs by a path the tape can "
                "follow (e.g. it runs inside a loop of its owner); exclude it with wrt=..."))
        start += len(use)


# ---------------------------------------------------------------------------------- block-diagonal products
def _block_matmat(terms, perm, inv, V):
    """Apply a list of per-block terms to V (n, k): ("kron", A, B), ("eig", QA, QB, S), ("diag", d)."""
    Vp = tf.gather(V, perm)
    sizes = [t[-1] for t in terms]
    outs = []
    for (kind, *mats, _size), Vb in zip(terms, tf.split(Vp, sizes, axis=0)):
        if kind == "diag":
            outs.append(mats[0][:, None] * Vb)
            continue
        if kind == "kron":
            A, B = mats
            X = tf.reshape(tf.transpose(Vb), (-1, A.shape[0], B.shape[0]))
            Y = tf.einsum("ij,kjl,lm->kim", A, X, B)
        else:
            QA, QB, S = mats
            X = tf.reshape(tf.transpose(Vb), (-1, QA.shape[0], QB.shape[0]))
            P = tf.einsum("ia,kij,jc->kac", QA, X, QB) * S
            Y = tf.einsum("ia,kac,jc->kij", QA, P, QB)
        outs.append(tf.transpose(tf.reshape(Y, (tf.shape(Vb)[1], -1))))
    return tf.gather(tf.concat(outs, axis=0), inv)


class _BlockOperator(LinearOperator):
    """A symmetric block-diagonal operator given by per-block terms (inverses of KFAC/EKFAC)."""

    def __init__(self, n, dtype, space, perm, terms, psd=True):
        super().__init__(n, dtype, symmetric=True, psd=psd, space=space)
        self._perm, self._inv = perm, np.argsort(perm)
        self._terms = [(t[0], *[tf.constant(m, dtype) for m in t[1:-1]], t[-1]) for t in terms]

    def _matmat(self, V):
        return _block_matmat(self._terms, self._perm, self._inv, V)


# ---------------------------------------------------------------------------------- the operators
class KFACOperator(LinearOperator):
    """Kronecker-factored approximate curvature (KFAC) of the mean loss, block-diagonal over layers.

    ``K = blockdiag_l(A_l ⊗ B_l)`` approximates the Gauss-Newton / Fisher matrix of
    ``(1/N) sum_n loss_n`` (see the module docstring for ``A`` and ``B``). ``fisher="type-2"`` uses an exact
    square root of each example's output Hessian (one backward pass per output; exact GGN blocks for a single
    example), ``"mc"`` targets sampled from the model (``mc_samples`` per example, ``seed``; the Gaussian,
    Bernoulli and categorical likelihoods of mse and the cross-entropies) and ``"empirical"`` the observed
    targets. Supported layers: Dense, EinsumDense, Conv1D/2D, DepthwiseConv1D/2D (one block per channel, see the
    module docstring) and Embedding, also when another layer calls them: the query/key/value/output projections
    of ``MultiHeadAttention``, a layer under ``TimeDistributed``; a layer called several times shares its
    weights over all its calls. Variables of normalisation layers get the exact diagonal of the same curvature;
    any other layer's variable is an error naming it (leave it out with ``wrt=``). Regularisation: the model's regularisation
    losses are NOT included (an L2 penalty ``l * ||w||^2`` adds ``2 l I``: pass it as ``damping``).
    Negative eigenvalues of an output Hessian (non-convex losses) are clipped at zero, so K is always PSD.

    Cost: one pass over the data with ``C`` (outputs) backward passes per batch for type-2, one for mc and
    empirical; memory ``sum_l (d_a^2 + d_out^2)`` numbers, refused up front above ``max_memory``. Products,
    ``inverse``, ``logdet``, ``trace``, ``eigenvalues`` use the factors (and their eigendecompositions) only.

    Args:
        model, data, loss, wrt, batch_size, precision, from_logits, allow_nan, training: as in
            :class:`~tfpartials.GGNOperator`.
        fisher: ``"type-2"`` (default), ``"mc"`` or ``"empirical"``.
        mc_samples, seed: Monte-Carlo targets per example and their seed (``fisher="mc"``; default seed 0).
        kfac_approx: ``"expand"`` (default) or ``"reduce"`` for layers with weight sharing.
        max_memory: budget for the factors (default 2GiB).
        quiet: no progress bar.

    Attributes:
        blocks: list of :class:`KFACBlock` in flat-vector order.
        num_examples: ``N``; ``op.num_examples * op`` is the curvature of the SUM of the losses.

    Reference: Martens & Grosse (2015), "Optimizing neural networks with Kronecker-factored approximate
    curvature"; Grosse & Martens (2016) for convolutions; Eschenhagen et al. (2023) for expand/reduce.

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]]); y = np.zeros((2, 1))
        >>> K = KFACOperator(model, (x, y), loss="mse", precision="float64", quiet=True)
        >>> K.blocks[0].A.tolist()      # (1/N) sum_n [x_n 1]^T [x_n 1]
        [[0.5, 0.0, 0.5], [0.0, 2.0, 1.0], [0.5, 1.0, 1.0]]
        >>> np.round(K.blocks[0].B, 12).tolist()      # the output Hessian of (y - f)^2
        [[2.0]]
        >>> bool(np.allclose(K.to_dense(), 2 * K.blocks[0].A))   # = the exact GGN of a linear model
        True
    """

    def __init__(self, model, data, loss: Any = None, wrt=None, *, fisher: FisherType = "type-2",
                 mc_samples: int = 1, seed: int | None = None, kfac_approx: KFACApprox = "expand",
                 batch_size: int | None = None, precision: str | None = None, quiet: bool = False,
                 max_memory: str | int | None = None, training: bool = False, from_logits: bool | None = None,
                 allow_nan: bool = False):
        check_choice("fisher", fisher, ("type-2", "mc", "empirical"))
        check_choice("kfac_approx", kfac_approx, ("expand", "reduce"))
        self.mc_samples = check_positive_int("mc_samples", mc_samples)
        if fisher != "mc" and mc_samples != 1:
            raise InputError(f"mc_samples: only fisher='mc' draws samples; expected 1, got {mc_samples}")
        self.seed = check_seed(0 if seed is None else seed)
        self.fisher, self.kfac_approx, self.quiet = fisher, kfac_approx, bool(quiet)
        obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision, training=training,
                         from_logits=from_logits, allow_nan=allow_nan)
        self.objective, self.data = obj, d
        tapped, diagonal = find_layers(obj.model, obj.space)
        self._tapped = tapped
        self._plan_memory(tapped, obj.space.size, max_memory)
        self._factor = 1.0
        self._pass_data = d
        if fisher == "mc":
            from .curvature import _sampled_data

            self._pass_data, self._factor = _sampled_data(obj, d, self.seed, self.mc_samples)
        names = obj.space.names
        self._diag_idx = [names.index(n) for n, _ in diagonal]
        self._check_reevaluation()
        raw = self._pass(ekfac=False)
        nt, nd = len(tapped), len(self._diag_idx)
        As, Bs, Ds = raw[:nt], raw[nt:2 * nt], raw[2 * nt:2 * nt + nd]
        blocks = []
        for s, A, B in zip(tapped, As, Bs):
            for g in range(s.groups):
                blocks.append(KFACBlock(self._block_names(s), _block_label(s, g), _sym(A[g]), _sym(B[g]),
                                        "kronecker", None, self._block_indices(s, g)))
        for (name, _), D in zip(diagonal, Ds):
            sl = obj.space.slice_of(name)
            blocks.append(KFACBlock((name,), name.rsplit("/", 1)[0], None, None, "diagonal",
                                    np.asarray(D, np.float64).reshape(-1), np.arange(sl.start, sl.stop)))
        self.blocks: list[KFACBlock] = sorted(blocks, key=lambda b: b.offset)
        self._perm = np.concatenate([b.indices for b in self.blocks]) if self.blocks else np.zeros(0, np.int64)
        if not np.array_equal(np.sort(self._perm), np.arange(obj.space.size)):  # pragma: no cover - invariant
            raise InputError("KFAC: the blocks do not cover the parameter vector exactly once")
        super().__init__(obj.space.size, obj.dtype, symmetric=True, psd=True, space=obj.space)
        self._terms_cache = None

    # -- construction helpers ------------------------------------------------------------------------------------
    def _plan_memory(self, tapped, n, max_memory):
        budget = DEFAULT_DENSE_LIMIT if max_memory is None else resolve_budget(max_memory)
        total = 0
        for s in tapped:
            nbytes = 3 * 8 * s.groups * (s.d_a ** 2 + s.d_out ** 2)  # factors, eigenvectors, working copies
            what = f"{s.groups} x " if s.groups > 1 else ""
            require_fits(nbytes, budget, f"the Kronecker factors of layer {s.name!r} ({what}{s.d_a}x{s.d_a} and "
                         f"{s.d_out}x{s.d_out})", "leave the layer out with wrt=... or raise max_memory")
            total += nbytes
        require_fits(total + 3 * 8 * n, budget, f"the Kronecker factors of {len(tapped)} layers",
                     "leave large layers out with wrt=... or raise max_memory")

    def _block_names(self, s: Tapped) -> tuple[str, ...]:
        space_names = dict(zip(map(id, self.objective.space.variables), self.objective.space.names))
        return tuple(space_names[id(v)] for v in (s.kernel, s.bias) if v is not None)

    def _block_indices(self, s: Tapped, group: int = 0) -> np.ndarray:
        space = self.objective.space
        names = dict(zip(map(id, space.variables), space.names))
        rows = []
        if s.kernel is not None:
            start = space.slice_of(names[id(s.kernel)]).start
            rows.append((start + np.reshape(s.kernel_order, (s.groups, -1))[group]).reshape(s.d_in, s.d_out))
        if s.bias is not None:
            start = space.slice_of(names[id(s.bias)]).start
            order = np.arange(s.d_out) if s.bias_order is None else s.bias_order[group]
            rows.append(start + order[None, :])
        return np.concatenate(rows, axis=0).reshape(-1)

    def _check_reevaluation(self) -> None:
        """The layer-by-layer re-evaluation must reproduce ``stateless_call`` (first batch), and the gradient of
        one fixed output projection with respect to each tapped layer's weights must be ``sum_r a_r g_r^T`` over
        the layer's recorded calls (so no use of the weights escapes the taps, e.g. a kernel its owner also reads
        directly); records the width of each flattened output in ``self._sizes``."""
        obj = self.objective
        tapped = self._tapped

        def build():
            def fn(params, x):
                params = list(params)
                with tf.GradientTape(persistent=True) as tape:
                    tape.watch(params)
                    flat, _, _, taps = _record(obj, params, x, tapped, tape)
                    u = tf.sin(1.3 * tf.cast(tf.range(tf.size(flat)), obj.dtype) + 0.7)
                    proj = tf.reduce_sum(tf.reshape(flat, [-1]) * u)
                ref = [tf.cast(o, obj.dtype) for o in tf.nest.flatten(obj.forward(params, x))]
                sizes = tf.stack([tf.reduce_prod(tf.shape(o)[1:]) for o in ref])
                ref = tf.concat([tf.reshape(o, (tf.shape(o)[0], -1)) for o in ref], axis=1)
                grads = tape.gradient(proj, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                full = tf.concat([tf.reshape(tf.convert_to_tensor(g), [-1]) for g in grads], axis=0)
                uses = [taps[s.name] for s in tapped]
                gz = tape.gradient(proj, [z for use in uses for _, z, _ in use])
                _check_connected(obj, tapped, uses, gz)
                recon, start = [], 0
                for s, use in zip(tapped, uses):
                    rows = _positions([to_rows(g) for (_, _, to_rows), g in zip(use, gz[start:])])
                    start += len(use)
                    recon.append(tf.einsum("brgi,brgj->gij", _features(s, use, "expand"), rows))
                return tf.reduce_max(tf.abs(flat - ref)), tf.reduce_max(tf.abs(ref)), sizes, full, recon
            return fn

        fn = obj.function(f"kfac/check/{_key(tapped)}", build)
        batch = next(iter(self.data.batches()))
        diff, scale, sizes, full, recon = fn(obj.space.values(), as_tensors(batch.x, obj.dtype))
        diff, scale, self._sizes = float(diff), float(scale), [int(c) for c in np.asarray(sizes)]
        tol = (1e-10 if obj.dtype == tf.float64 else 1e-4) * max(1.0, scale)
        if not diff <= tol:
            raise InputError(f"KFAC: re-evaluating model {obj.model.name!r} layer by layer differs from the model "
                             f"by {diff:.3g}; a layer is not what it claims to be (exclude it with wrt=...)")
        full = np.asarray(full, np.float64)
        rel = 1e-8 if obj.dtype == tf.float64 else 1e-3
        for s, M in zip(tapped, recon):
            M = np.asarray(M, np.float64)
            for g in range(s.groups):
                true = full[self._block_indices(s, g)]
                err = float(np.max(np.abs(M[g].reshape(-1) - true), initial=0.0))
                if not err <= rel * max(float(np.max(np.abs(true), initial=0.0)), 1e-30) + 1e-30:
                    raise InputError(f"KFAC: the gradient of layer {s.name!r}'s weights is not carried by its "
                                     f"calls alone (off by {err:.3g}; are its weights also used outside its "
                                     "call?); exclude it with wrt=...")

    def _pass(self, ekfac: bool, bases=()):
        obj = self.objective
        key = (f"kfac/{self.fisher}/{self.kfac_approx}/{self._factor!r}/{ekfac}/{_key(self._tapped)}/"
               f"{self._diag_idx}/{self._sizes}")
        step = obj.function(key, lambda: _factor_kernel(obj, self._tapped, [] if ekfac else self._diag_idx,
                                                        self.fisher, self.kfac_approx, self._factor, ekfac,
                                                        self._sizes))
        what = "EKFAC eigenvalues" if ekfac else "KFAC factors"
        out = accumulate(obj, self._pass_data, step, obj.space.values(), *bases, description=what,
                         quiet=self.quiet)
        return [np.asarray(t, np.float64) for t in (out or [])]

    # -- public API ----------------------------------------------------------------------------------------------
    @property
    def num_examples(self) -> int:
        """Number of examples N (the operator is the curvature of the mean loss: scale by N for the sum)."""
        return int(self.data.num_examples)

    def _terms(self, damping: float | None = None, pi_damping: bool = False):
        """Per-block terms for ``_block_matmat``: the operator (damping None) or ``(K + damping I)^-1``."""
        terms = []
        for b in self.blocks:
            if b.kind == "diagonal":
                terms.append(("diag", b.diag if damping is None else 1.0 / (b.diag + damping), b.size))
            elif damping is None:
                terms.append(("kron", b.A, b.B, b.size))
            else:
                (la, QA), (lb, QB) = b.A_eig, b.B_eig
                if pi_damping:
                    pi = _pi(la, lb)
                    S = 1.0 / np.outer(la + pi * np.sqrt(damping), lb + np.sqrt(damping) / pi)
                else:
                    S = 1.0 / (np.outer(la, lb) + damping)
                terms.append(("eig", QA, QB, S, b.size))
        return terms

    def _matmat(self, V):
        if self._terms_cache is None:
            self._terms_cache = [(t[0], *[tf.constant(m, self.dtype) for m in t[1:-1]], t[-1])
                                 for t in self._terms()]
        return _block_matmat(self._terms_cache, self._perm, np.argsort(self._perm), V)

    def inverse(self, damping: float, pi_damping: bool = False) -> LinearOperator:
        """``(K + damping I)^-1`` exactly, through the eigenbases of the factors (no iterative solve).

        With ``pi_damping=True`` the heuristic of Martens & Grosse (2015, sec. 6.3) is used instead:
        ``((A + pi sqrt(damping) I) ⊗ (B + sqrt(damping)/pi I))^-1`` with
        ``pi = sqrt((tr A / d_a) / (tr B / d_out))``; diagonal blocks always get ``(d + damping)^-1``.
        Cost per vector: two small matrix products per factor.
        """
        damping = check_positive_float("damping", damping, allow_zero=not pi_damping)
        if damping == 0.0 and min(float(np.min(b.eigenvalues)) for b in self.blocks) <= 0.0:
            raise InputError("damping: the operator is singular; expected damping > 0, got 0")
        return _BlockOperator(self.n, self.dtype, self.space, self._perm, self._terms(damping, pi_damping))

    def logdet(self, damping: float = 0.0) -> float:
        """``log det(K + damping I)`` from the blocks' eigenvalues (``-inf`` if singular)."""
        damping = check_positive_float("damping", damping, allow_zero=True)
        vals = self.eigenvalues() + damping
        if np.any(vals <= 0):
            return float("-inf")
        return float(np.sum(np.log(vals)))

    def eigenvalues(self) -> np.ndarray:
        """All ``n`` eigenvalues, descending (Kronecker products of the factors' spectra)."""
        vals = np.concatenate([np.asarray(b.eigenvalues).reshape(-1) for b in self.blocks])
        return np.sort(vals)[::-1]

    def trace(self) -> float:
        """``tr K = sum_l tr(A_l) tr(B_l)`` (+ the diagonal blocks)."""
        return float(sum(np.trace(b.A) * np.trace(b.B) if b.kind == "kronecker" else b.diag.sum()
                         for b in self.blocks))

    def frobenius_norm(self) -> float:
        """``||K||_F = sqrt(sum_l ||A_l||_F^2 ||B_l||_F^2)`` (+ the diagonal blocks)."""
        return float(np.sqrt(sum(np.sum(b.A ** 2) * np.sum(b.B ** 2) if b.kind == "kronecker"
                                 else np.sum(b.diag ** 2) for b in self.blocks)))

    def to_dense(self, chunk: int | None = None) -> tf.Tensor:
        """The dense ``(n, n)`` matrix, assembled from the blocks (refused above 2GiB)."""
        require_fits(self.n * self.n * 8, DEFAULT_DENSE_LIMIT, f"the dense KFAC matrix of {self.n:,} parameters",
                     "use products, inverse(), logdet() or eigenvalues() instead")
        M = np.zeros((self.n, self.n))
        for b in self.blocks:
            M[np.ix_(b.indices, b.indices)] = b.to_dense()
        return tf.constant(M, self.dtype)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, dtype={self.dtype.name}, fisher={self.fisher!r}, "
                f"blocks={len(self.blocks)}, examples={self.num_examples}, psd)")


class EKFACOperator(KFACOperator):
    """Eigenvalue-corrected KFAC: the KFAC eigenbasis with the eigenvalues re-fitted to the data.

    ``E = blockdiag_l (Q_A ⊗ Q_B) diag(s) (Q_A ⊗ Q_B)^T`` with ``s_ij = (1/N) sum_n sum_c
    [(Q_A^T G_nc Q_B)_ij]^2`` and ``G_nc = sum_r a_nr g_ncr^T`` the per-example gradient (of the loss, or of
    one output-Hessian square-root column for type-2) reshaped like the block: the diagonal in that basis
    closest (Frobenius) to the Gauss-Newton/Fisher block. Same arguments and API as :class:`KFACOperator`;
    ``inverse(damping)`` and ``logdet(damping)`` are exact for ``E + damping I``. Cost: KFAC plus a second
    pass over the data. Reference: George, Laurent, Bouthillier, Ballas & Vincent (2018), "Fast approximate
    natural gradient descent in a Kronecker-factored eigenbasis".

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0], [2.0]]); y = np.zeros((2, 1))
        >>> E = EKFACOperator(model, (x, y), loss="mse", precision="float64", quiet=True)
        >>> bool(np.isclose(E.trace(), np.trace(E.to_dense().numpy())))
        True
    """

    def __init__(self, model, data, loss: Any = None, wrt=None, **kwargs):
        super().__init__(model, data, loss, wrt, **kwargs)
        kron = [b for b in self.blocks if b.kind == "kronecker"]
        by_layer = {b.layer: b for b in kron}
        bases = []
        for s in self._tapped:
            bs = [by_layer[_block_label(s, g)] for g in range(s.groups)]
            bases += [tf.constant(np.stack([b.A_eig[1] for b in bs]), self.dtype),
                      tf.constant(np.stack([b.B_eig[1] for b in bs]), self.dtype)]
        corrected = {}
        for s, C in zip(self._tapped, self._pass(ekfac=True, bases=bases)):
            corrected.update({_block_label(s, g): C[g] for g in range(s.groups)})
        self.blocks = [b if b.kind == "diagonal" else
                       KFACBlock(b.names, b.layer, b.A, b.B, b.kind, None, b.indices, corrected[b.layer])
                       for b in self.blocks]
        for old, new in zip(kron, [b for b in self.blocks if b.kind == "kronecker"]):
            new.__dict__["A_eig"], new.__dict__["B_eig"] = old.A_eig, old.B_eig  # the basis the fit used
        self._terms_cache = None

    def _terms(self, damping: float | None = None, pi_damping: bool = False):
        if pi_damping:
            raise InputError("pi_damping: EKFAC has no factor-wise damping; use pi_damping=False")
        terms = []
        for b in self.blocks:
            if b.kind == "diagonal":
                terms.append(("diag", b.diag if damping is None else 1.0 / (b.diag + damping), b.size))
                continue
            S = b.corrected if damping is None else 1.0 / (b.corrected + damping)
            terms.append(("eig", b.A_eig[1], b.B_eig[1], S, b.size))
        return terms

    def trace(self) -> float:
        return float(sum(np.sum(b.eigenvalues) for b in self.blocks))

    def frobenius_norm(self) -> float:
        return float(np.sqrt(sum(np.sum(np.asarray(b.eigenvalues) ** 2) for b in self.blocks)))


def _sym(M) -> np.ndarray:
    M = np.asarray(M, np.float64)
    return 0.5 * (M + M.T)


def _pi(la, lb) -> float:
    ta, tb = np.mean(la), np.mean(lb)
    if ta <= 0 or tb <= 0:
        return 1.0
    return float(np.sqrt(ta / tb))


def _block_label(s: Tapped, group: int) -> str:
    """The ``layer`` of a block: the layer's path, with ``[c]`` for channel ``c`` of a depthwise convolution."""
    return s.name if s.groups == 1 else f"{s.name}[{group}]"


def _key(tapped) -> str:
    return ",".join(f"{s.name}:{s.kind}:{int(s.kernel is not None)}{int(s.bias is not None)}" for s in tapped)
