"""Latency on small models against PyTorch peers, in one run on twin models (same weights, data and loss).

Two Keras models, each copied to a torch twin (same weights, NHWC flatten order, the layout conversion of
``bench_kfac._torch_twin``):
an MLP 32-96-64-10 (10,026 parameters, 512 examples) and a small CNN 12x12x3 -> 2 x Conv2D(16, 3) -> Dense(10)
(13,018 parameters, 128 examples), softmax cross-entropy on logits, mean over the examples on both sides.
Everything float32 except the reference; wall times are the median of several repeats after a warm-up call,
and the first call (tracing, compilation) is reported apart.

1. One HVP on the whole data set as one batch: ``tp.hvp`` (the public call: objective lookup + product) and
   ``HessianOperator.matvec`` vs curvlinops ``HessianLinearOperator @ v``; a block of 16 HVPs (matmat) on both.
2. Per-example gradients of 128 examples vs ``torch.func.vmap(grad(loss))`` (built once, returns torch
   tensors): ``tp.per_example_gradients`` (the public call: validation, memory plan, numpy arrays) and
   ``tp.PerExampleGradients`` (built once, returns TensorFlow tensors: the like-for-like form). Ours is timed at
   TensorFlow's default threads in this process and at one intra-op thread in a child process (the setting is
   fixed when TensorFlow starts); each row takes the better, as torch's rows take its better thread count.
3. Top-3 Hessian eigenvalues at tol 1e-3: ``HessianOperator`` + ``tp.top_eigenvalues(k=3, tol=1e-3)`` vs
   PyHessian ``hessian(...).eigenvalues(top_n=3, tol=1e-3)`` (constructor included on both sides); the error
   of each is the max relative error of the three against the reference: the top eigenvalues of the float64
   torch twin's Hessian (independent of tfpartials) found by ARPACK (``scipy.sparse.linalg.eigsh``, tol 1e-10) on
   exact double-backward HVPs, i.e. those of the dense float64 Hessian to round-off (the Ritz residual, which
   bounds the error, is recorded; building the dense 10k x 10k matrix and its ``eigvalsh`` would take minutes
   on 2 cores). Without torch the reference is ARPACK on ``tp.hessian(precision="float64")``. PyHessian's start
   vectors are drawn from the torch seed, set per repeat.

torch runs at its better thread count (1 or 2, chosen per operation by the median; recorded as
``peer_threads``): on the shared 2-core machine two OpenMP threads were up to 10x slower than one under load.
Rows also carry the fastest repeat of each side (``min_s``, ``baseline_min_s``, ``ratio_of_min``).

The torch side runs in a child process of this run, started after ours is measured: TensorFlow loaded in the
same process slows torch's CPU kernels about tenfold (curvlinops' HVP on the MLP: 0.025 s alone, 0.24 s after
``import tensorflow``), which would flatter every ratio. Peers that are not installed are skipped with a
message; the rows then carry no ratio.

The top-3 rows come twice: the host Lanczos loop (the default) and ``compiled=True`` (the steps between
restarts in one compiled loop); their seeds are interleaved, and each row's ``first_call_s`` includes its
tracing.

    python benchmarks/bench_peers.py [--quick] [--only mlp|cnn ...] [--eig-only]

``--only`` and ``--eig-only`` (top-3 rows only, on both sides) write ``results/peers-partial.json``, so a
partial run does not replace the full results.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402

LOSS = "sparse_categorical_crossentropy"
PER_EXAMPLE = 128
BLOCK = 16
TOL = 1e-3


def median_time(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs (call it once before to warm up)."""
    return statistics.median(times_of(fn, repeat))


def times_of(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def peer_time(fn, repeat: int, res: dict, key: str) -> None:
    """torch at its better thread count (1 or 2), chosen by the median: under a shared machine's load two
    OpenMP threads can be several times slower than one. Writes ``key`` (median), ``key_min``, ``key_threads``."""
    import torch

    best = None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fn()
        t = times_of(fn, repeat)
        if best is None or statistics.median(t) < statistics.median(best[1]):
            best = (threads, t)
    res[key], res[key + "_min"], res[key + "_threads"] = statistics.median(best[1]), min(best[1]), best[0]
    torch.set_num_threads(best[0])


def first_time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _problem(kind: str, quick: bool):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    c = 10
    if kind == "mlp":
        n = 256 if quick else 512
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(96, activation="tanh", name="h1"),
                                  keras.layers.Dense(64, activation="tanh", name="h2"), keras.layers.Dense(c, name="out")])
        x = rng.normal(size=(n, 32)).astype("float32")
        w = rng.normal(size=(32, c))
        y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, c)), axis=1).astype("int32")
    else:
        n = 128
        model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(16, 3, activation="tanh", name="c1"),
                                  keras.layers.Conv2D(16, 3, activation="tanh", name="c2"), keras.layers.Flatten(),
                                  keras.layers.Dense(c, name="out")])
        x = rng.normal(size=(n, 12, 12, 3)).astype("float32")
        w = rng.normal(size=(12 * 12 * 3, c))
        y = np.argmax(x.reshape(n, -1) @ w + 0.5 * rng.normal(size=(n, c)), axis=1).astype("int32")
    # a few epochs, so the Hessian is that of a trained network (a clear top of the spectrum)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    return model, x, y


def _keras_to_torch_perm(model) -> np.ndarray:
    """Flat Keras index of every flat torch coordinate (kernel (.., in, out) -> weight (out, in, ..))."""
    parts, start = [], 0
    for v in model.trainable_variables:
        lab = np.arange(start, start + int(np.prod(v.shape))).reshape(v.shape)
        start += lab.size
        parts.append(lab.T if lab.ndim == 2 else (lab.transpose(3, 2, 0, 1) if lab.ndim == 4 else lab))
    return np.concatenate([p.ravel() for p in parts])


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))



def _spec(model) -> list[str]:
    """Layer kinds of a Sequential of Dense / Conv2D (valid, stride 1, tanh or linear) / Flatten."""
    import keras

    out = []
    for layer in model.layers:
        act = getattr(getattr(layer, "activation", None), "__name__", "linear")
        if isinstance(layer, keras.layers.Dense):
            out.append(f"dense:{act}")
        elif isinstance(layer, keras.layers.Conv2D):
            out.append(f"conv:{act}")
        elif isinstance(layer, keras.layers.Flatten):
            out.append("flatten")
        else:
            raise ValueError(f"expected Dense, Conv2D or Flatten layers, got {type(layer).__name__}")
    return out


def _torch_net(spec: list[str], weights: list[np.ndarray]):
    """The torch twin (same layout conversion as ``bench_kfac._torch_twin``, built without Keras)."""
    import torch

    class NHWC(torch.nn.Module):
        def forward(self, t):
            return t.permute(0, 2, 3, 1)   # flatten in Keras' (h, w, c) order

    mods, it = [], iter(weights)
    for s in spec:
        kind, _, act = s.partition(":")
        if kind == "flatten":
            mods += [NHWC(), torch.nn.Flatten()]
            continue
        kernel, bias = next(it), next(it)
        if kind == "dense":
            mod = torch.nn.Linear(*kernel.shape)
            w = kernel.T
        else:
            kh, kw, ci, co = kernel.shape
            mod = torch.nn.Conv2d(ci, co, (kh, kw))
            w = kernel.transpose(3, 2, 0, 1)
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            mod.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
        mods.append(mod)
        if act == "tanh":
            mods.append(torch.nn.Tanh())
    return torch.nn.Sequential(*mods).eval()


def _reference_top3(net, xt, yt) -> tuple[np.ndarray, float, float]:
    """Top-3 Hessian eigenvalues of the float64 torch twin: ARPACK (tol 1e-10) on its exact double-backward HVP.

    Independent of tfpartials. The Ritz residual bounds each eigenvalue's error (symmetric matrix), and it is
    returned: the values equal those of the dense float64 Hessian to round-off, without building it (a dense
    10k x 10k Hessian and its eigvalsh take minutes on 2 cores).
    """
    import copy

    import scipy.sparse.linalg as sla
    import torch

    t0 = time.perf_counter()
    net64 = copy.deepcopy(net).double()
    params = list(net64.parameters())
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    n = sum(sizes)
    loss = torch.nn.functional.cross_entropy(net64(xt.double()), yt)
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v):
        vs = [t.reshape(s) for t, s in zip(torch.split(torch.from_numpy(np.ascontiguousarray(v).ravel()), sizes),
                                           shapes)]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).numpy()

    H = sla.LinearOperator((n, n), matvec=hvp, dtype=np.float64)
    lam, vec = sla.eigsh(H, k=3, which="LA", tol=1e-10)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    resid = max(float(np.linalg.norm(hvp(vec[:, j]) - lam[j] * vec[:, j]) / abs(lam[j])) for j in range(3))
    return lam, resid, time.perf_counter() - t0


def _peer_child(inp: str, out: str) -> None:
    """The torch side, in its own process: TensorFlow in the same process slows torch's CPU kernels ~10x
    (measured: curvlinops HVP 0.025 s alone, 0.24 s after ``import tensorflow``)."""
    import json

    import torch

    torch.set_num_threads(2)
    z = np.load(inp, allow_pickle=False)
    spec = [str(s) for s in z["spec"]]
    weights = [z[f"w{i}"] for i in range(int(z["num_weights"]))]
    rep, rep_eig = int(z["rep"]), int(z["rep_eig"])
    net = _torch_net(spec, weights)
    x = z["x"]
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x)
    yt = torch.from_numpy(z["y"]).long()
    params = list(net.parameters())
    v_t, V_t = torch.from_numpy(z["v"]), torch.from_numpy(z["V"])
    res: dict = {"messages": []}
    arrays: dict = {}
    if bool(z["eig_only"]):
        _double_backward_threads(net, xt, yt, params, v_t, rep, res)  # PyHessian's thread count, as below
    else:
        _peer_products(net, xt, yt, params, v_t, V_t, z, rep, res, arrays)
    _peer_eigenvalues(net, xt, yt, rep_eig, res)
    np.savez(out, **arrays)
    print(json.dumps(res))


def _double_backward_threads(net, xt, yt, params, v_t, rep: int, res: dict) -> None:
    """Times the plain-autograd HVP (what PyHessian does) at 1 and 2 threads and leaves torch at the faster
    count, which PyHessian then runs at."""
    import torch

    sizes = [p.numel() for p in params]

    def double_backward():
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xt), yt), params, create_graph=True)
        vs = [t.reshape(p.shape) for t, p in zip(torch.split(v_t, sizes), params)]
        return torch.autograd.grad(grads, params, grad_outputs=vs)

    peer_time(double_backward, rep, res, "double_backward_s")


def _peer_products(net, xt, yt, params, v_t, V_t, z, rep: int, res: dict, arrays: dict) -> None:
    """curvlinops HVPs, plain double-backward HVPs and torch.func per-example gradients."""
    import torch

    try:
        from curvlinops import HessianLinearOperator
    except ImportError as exc:
        res["messages"].append(f"curvlinops not installed ({exc}): HVP rows without a peer "
                               "(pip install -e '.[bench]')")
    else:
        H = HessianLinearOperator(net, torch.nn.CrossEntropyLoss(), params, [(xt, yt)], check_deterministic=False)
        arrays["hv"] = (H @ v_t).detach().numpy()
        peer_time(lambda: (H @ v_t).detach().numpy(), rep, res, "mv_s")
        arrays["HV"] = (H @ V_t).detach().numpy()
        peer_time(lambda: (H @ V_t).detach().numpy(), rep, res, "mm_s")
    _double_backward_threads(net, xt, yt, params, v_t, rep, res)

    from torch.func import functional_call, grad, vmap

    pdict = {k: p.detach() for k, p in net.named_parameters()}

    def one_loss(p, xi, yi):
        return torch.nn.functional.cross_entropy(functional_call(net, p, (xi[None],)), yi[None])

    per_ex = vmap(grad(one_loss), in_dims=(None, 0, 0))
    b = int(z["per_example"])
    xb, yb = xt[:b], yt[:b]
    res["pe_first_s"], g = first_time(lambda: per_ex(pdict, xb, yb))
    peer_time(lambda: per_ex(pdict, xb, yb), rep, res, "pe_s")
    arrays["g"] = np.concatenate([t.reshape(b, -1).numpy() for t in g.values()], axis=1)


def _peer_eigenvalues(net, xt, yt, rep_eig: int, res: dict) -> None:
    """The float64 reference top-3 and PyHessian's top-3 at tol 1e-3."""
    import torch

    ref, resid, ref_s = _reference_top3(net, xt, yt)
    res.update(reference=[float(r) for r in ref], reference_rel_residual=resid, reference_s=ref_s)
    try:
        from pyhessian import hessian as pyhessian
    except ImportError as exc:
        res["messages"].append(f"PyHessian not installed ({exc}): eigenvalue rows without a peer "
                               "(pip install -e '.[bench]')")
    else:
        ph_mod = sys.modules["pyhessian.hessian"]  # the package re-exports the class under the module's name
        inner, counter = ph_mod.hessian_vector_product, {"n": 0}

        def counted(*a, **k):
            counter["n"] += 1
            return inner(*a, **k)

        ph_mod.hessian_vector_product = counted  # counts its products; what it computes is unchanged
        crit = torch.nn.CrossEntropyLoss()
        times, errs, mvs, vals_all = [], [], [], []
        for s in [0] + list(range(max(2, rep_eig - 2))):  # the first (seed 0) is the warm-up; ~10 s a call on the CNN
            torch.manual_seed(s)
            net.zero_grad(set_to_none=True)  # its constructor accumulates into .grad
            counter["n"] = 0
            t0 = time.perf_counter()
            vals, _ = pyhessian(net, crit, data=(xt, yt), cuda=False).eigenvalues(top_n=3, tol=TOL)
            times.append(time.perf_counter() - t0)
            est = np.sort(np.asarray(vals, dtype=float))[::-1]
            errs.append(float(np.max(np.abs(est - ref) / np.abs(ref))))
            mvs.append(counter["n"])
            vals_all.append(est.tolist())
        ph_mod.hessian_vector_product = inner
        res.update(eig_first_s=times[0], eig_s=statistics.median(times[1:]), eig_err=statistics.median(errs[1:]),
                   eig_matvecs=statistics.median(mvs[1:]), eig_per_seed_s=times[1:], eig_per_seed_error=errs[1:],
                   eig_values=vals_all[1:])


def _run_peers(model, x, y, v, V, rep: int, rep_eig: int, eig_only: bool = False) -> tuple[dict, dict]:
    """Run :func:`_peer_child` on this model's weights and data; (json results, arrays)."""
    import json
    import subprocess
    import tempfile

    weights = [w.numpy() for w in model.trainable_variables]
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, spec=np.array(_spec(model)), num_weights=len(weights), x=x, y=y, v=v, V=V, rep=rep,
                 rep_eig=rep_eig, per_example=PER_EXAMPLE, eig_only=eig_only,
                 **{f"w{i}": w for i, w in enumerate(weights)})
        proc = subprocess.run([sys.executable, __file__, "--peer-child", str(inp), str(out)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the torch peer process failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(out) as z:
            arrays = {k: z[k] for k in z.files}
    for m in res["messages"]:
        print("  " + m, flush=True)
    print(f"  reference: float64 torch twin, ARPACK (tol 1e-10) on exact HVPs in {res['reference_s']:.1f} s; "
          f"max relative Ritz residual {res['reference_rel_residual']:.1e}", flush=True)
    return res, arrays


def _ours_child(model_path: str, data_path: str) -> None:
    """Our per-example gradients at one TensorFlow intra-op thread (a process-wide setting, fixed before
    TensorFlow starts: hence its own process, like torch's thread count is chosen per operation)."""
    import json

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    import keras

    import tfpartials as tp

    model = keras.models.load_model(model_path)
    z = np.load(data_path)
    xb, yb, rep = z["x"], z["y"], int(z["rep"])
    pe_kw = {"loss": LOSS, "from_logits": True, "batch_size": len(xb), "quiet": True}
    pe_fn = tp.PerExampleGradients(model, LOSS, from_logits=True)
    res = {}
    for key, fn in (("function", lambda: tp.per_example_gradients(model, (xb, yb), **pe_kw)),
                    ("tensors", lambda: pe_fn(xb, yb))):
        fn()
        res[key] = times_of(fn, rep)
    print(json.dumps(res))


def _ours_one_thread(model, xb, yb, rep: int) -> dict:
    """:func:`_ours_child` on this model and batch: ``{"function": [s, ...], "tensors": [s, ...]}``."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model_path, data_path = Path(tmp) / "m.keras", Path(tmp) / "d.npz"
        model.save(model_path)
        np.savez(data_path, x=xb, y=yb, rep=rep)
        proc = subprocess.run([sys.executable, __file__, "--ours-child", str(model_path), str(data_path)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the one-thread process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _reference_without_torch(model, x, y, kw) -> np.ndarray:
    import scipy.sparse.linalg as sla

    import tfpartials as tp

    print("  torch not installed: reference from ARPACK on tp.hessian(precision='float64')", flush=True)
    H = tp.hessian(model, (x, y), precision="float64", quiet=True, **kw).matrix
    return np.sort(sla.eigsh((H + H.T) / 2, k=3, which="LA", tol=0.0)[0])[::-1]


def bench_model(kind: str, quick: bool, have_torch: bool, eig_only: bool = False) -> list[dict]:
    import tensorflow as tf

    import tfpartials as tp
    from tfpartials.linalg.curvature import HessianOperator

    rep = 5 if quick else 11
    rep_eig = 3 if quick else 5
    model, x, y = _problem(kind, quick)
    n = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    N = len(x)
    case = f"{kind.upper()} ({n:,} params, {N} examples)"
    print(f"== {case}", flush=True)
    kw = {"loss": LOSS, "from_logits": True, "batch_size": N}
    rng = np.random.default_rng(1)
    v = rng.standard_normal(n).astype("float32")
    V = rng.standard_normal((n, BLOCK)).astype("float32")
    vt, Vt = tf.constant(v), tf.constant(V)
    perm = _keras_to_torch_perm(model)

    # -- ours (this process) ----------------------------------------------------------------------------------
    if not eig_only:
        t_first_hvp, hv = first_time(lambda: tp.hvp(model, (x, y), v, quiet=True, **kw))
        t_hvp_all = times_of(lambda: tp.hvp(model, (x, y), v, quiet=True, **kw), rep)
        t_hvp = statistics.median(t_hvp_all)
        op = HessianOperator(model, (x, y), **kw)
        t_first_mv, hv_op = first_time(lambda: op.matvec(vt).numpy())
        t_mv_all = times_of(lambda: op.matvec(vt).numpy(), rep)
        t_mv = statistics.median(t_mv_all)
        t_first_mm, HV = first_time(lambda: op.matmat(Vt).numpy())
        t_mm_all = times_of(lambda: op.matmat(Vt).numpy(), rep)
        t_mm = statistics.median(t_mm_all)
        hv_flat = np.concatenate([np.ravel(a) for a in hv.values()])

        xb, yb = x[:PER_EXAMPLE], y[:PER_EXAMPLE]
        pe_kw = {"loss": LOSS, "from_logits": True, "batch_size": PER_EXAMPLE, "quiet": True}
        t_first_pe, g = first_time(lambda: tp.per_example_gradients(model, (xb, yb), **pe_kw))
        t_pe_all = times_of(lambda: tp.per_example_gradients(model, (xb, yb), **pe_kw), rep)
        g_flat = np.concatenate([np.reshape(a, (PER_EXAMPLE, -1)) for a in g.values()], axis=1)
        pe_fn = tp.PerExampleGradients(model, LOSS, from_logits=True)
        t_first_fn, g_fn = first_time(lambda: pe_fn(xb, yb))
        t_fn_all = times_of(lambda: pe_fn(xb, yb), rep)
        g_fn_flat = np.concatenate([np.reshape(a, (PER_EXAMPLE, -1)) for a in g_fn.values()], axis=1)
        one_thread = _ours_one_thread(model, xb, yb, rep)

    def ours_eig(seed, compiled):
        H_op = HessianOperator(model, (x, y), **kw)
        return tp.top_eigenvalues(H_op, k=3, tol=TOL, seed=seed, quiet=True, compiled=compiled)

    variants = (False, True)  # the host loop (default), compiled=True; seeds interleaved, order alternating
    t_first_eig = {c: first_time(lambda c=c: ours_eig(0, c))[0] for c in variants}
    eig_times: dict = {c: [] for c in variants}
    eig_res: dict = {c: [] for c in variants}
    for s in range(rep_eig):
        for c in (variants if s % 2 == 0 else variants[::-1]):
            t, r = first_time(lambda s=s, c=c: ours_eig(s, c))
            eig_times[c].append(t)
            eig_res[c].append(r)

    # -- peers (a torch process of their own) -----------------------------------------------------------------
    peer: dict = {}
    arrays: dict = {}
    if have_torch:
        peer, arrays = _run_peers(model, x, y, v[perm].copy(), V[perm].copy(), rep, rep_eig, eig_only)
        ref = np.asarray(peer["reference"])
    else:
        ref = _reference_without_torch(model, x, y, kw)
    eig_s = peer.get("eig_s")

    def eig_row(compiled: bool) -> dict:
        errs = [float(np.max(np.abs(r.eigenvalues - ref) / np.abs(ref))) for r in eig_res[compiled]]
        t, err = statistics.median(eig_times[compiled]), statistics.median(errs)
        how = "operator + Lanczos, compiled=True" if compiled else "operator + Lanczos"
        return row("peers", f"top-3 eigenvalues, tol 1e-3 ({how}): {case}", t, "s",
                   "PyHessian eigenvalues(top_n=3, tol=1e-3)", eig_s, "faster than PyHessian, lower error",
                   None if eig_s is None else bool(t < eig_s and err < peer["eig_err"]),
                   first_call_s=t_first_eig[compiled], max_rel_error=err, baseline_max_rel_error=peer.get("eig_err"),
                   matvecs=statistics.median(int(r.num_matvecs) for r in eig_res[compiled]),
                   baseline_matvecs=peer.get("eig_matvecs"), reference=[float(r) for r in ref],
                   reference_rel_residual=peer.get("reference_rel_residual"), per_seed_s=eig_times[compiled],
                   per_seed_error=errs, baseline_per_seed_s=peer.get("eig_per_seed_s"),
                   baseline_per_seed_error=peer.get("eig_per_seed_error"), min_s=min(eig_times[compiled]),
                   baseline_min_s=min(peer["eig_per_seed_s"]) if peer.get("eig_per_seed_s") else None)

    rows = []
    if not eig_only:
        def meets(ours, theirs):
            return None if theirs is None else bool(ours <= theirs)

        agree_mv = agree_mm = agree_pe = None
        if "hv" in arrays:
            agree_mv = max(_rel(hv_flat[perm], arrays["hv"]), _rel(hv_op[perm], arrays["hv"]))
            agree_mm = _rel(HV[perm], arrays["HV"])
        agree_fn = None
        if "g" in arrays:
            agree_pe = _rel(g_flat[:, perm], arrays["g"])
            agree_fn = _rel(g_fn_flat[:, perm], arrays["g"])
        mv_s, mm_s, pe_s = (peer.get(k) for k in ("mv_s", "mm_s", "pe_s"))
        target = "<= 1.0x curvlinops"

        def mins(ours_all, key):  # the fastest repeat on both sides (less sensitive to the shared machine's load)
            theirs = peer.get(key + "_min")
            return {"min_s": min(ours_all), "baseline_min_s": theirs, "peer_threads": peer.get(key + "_threads"),
                    "ratio_of_min": None if theirs is None else min(ours_all) / theirs}

        rows += [
            row("peers", f"one HVP, tp.hvp (public call): {case}", t_hvp, "s", "curvlinops Hessian @ v", mv_s,
                target, meets(t_hvp, mv_s), first_call_s=t_first_hvp, rel_diff_vs_peer=agree_mv,
                **mins(t_hvp_all, "mv_s")),
            row("peers", f"one HVP, HessianOperator.matvec: {case}", t_mv, "s", "curvlinops Hessian @ v", mv_s,
                target, meets(t_mv, mv_s), first_call_s=t_first_mv,
                torch_double_backward_s=peer.get("double_backward_s"), **mins(t_mv_all, "mv_s")),
            row("peers", f"{BLOCK} HVPs, HessianOperator.matmat: {case}", t_mm, "s",
                f"curvlinops Hessian @ V (n, {BLOCK})", mm_s, target, meets(t_mm, mm_s), first_call_s=t_first_mm,
                rel_diff_vs_peer=agree_mm, **mins(t_mm_all, "mm_s")),
        ]
        for label, times, first, key, agree in (
                ("tp.per_example_gradients (numpy arrays)", t_pe_all, t_first_pe, "function", agree_pe),
                ("PerExampleGradients (tensors)", t_fn_all, t_first_fn, "tensors", agree_fn)):
            # ours at TensorFlow's better intra-op thread count too (default or 1, the same rule as torch's)
            t_default, t_one = statistics.median(times), statistics.median(one_thread[key])
            best = times if t_default <= t_one else one_thread[key]
            t_best = statistics.median(best)
            rows.append(row(
                "peers", f"per-example gradients, {PER_EXAMPLE} examples, {label}: {case}", t_best, "s",
                "torch.func.vmap(grad)", pe_s, "<= 1.0x torch vmap", meets(t_best, pe_s), first_call_s=first,
                baseline_first_call_s=peer.get("pe_first_s"), rel_diff_vs_peer=agree,
                tf_intra_op_threads="default" if best is times else 1, default_threads_s=t_default,
                one_thread_s=t_one, **mins(best, "pe_s")))
    rows += [eig_row(False), eig_row(True)]
    for r in rows[-2:]:
        r["ratio_of_min"] = None if r["baseline_min_s"] is None else r["min_s"] / r["baseline_min_s"]
    load = os.getloadavg()[0]
    for r in rows:
        r["load_average_1min"] = round(load, 2)  # 2 cores shared: wall times are only as clean as this
    return rows


def run(quick: bool = False, only: tuple[str, ...] = ("mlp", "cnn"), eig_only: bool = False) -> list[dict]:
    import importlib.util

    have_torch = importlib.util.find_spec("torch") is not None
    if not have_torch:
        print("torch not installed: every peer skipped (pip install -e '.[bench]')", flush=True)
    rows = []
    for kind in only:
        rows.extend(bench_model(kind, quick, have_torch, eig_only))
    return rows


def _parse(argv):
    import argparse

    p = argparse.ArgumentParser(description="Latency on small models against PyTorch peers (see the module "
                                            "docstring).")
    p.add_argument("--quick", action="store_true", help="fewer examples and repeats")
    p.add_argument("--only", nargs="+", choices=("mlp", "cnn"), default=None,
                   help="only these models (writes results/peers-partial.json)")
    p.add_argument("--eig-only", action="store_true",
                   help="only the top-3 eigenvalue rows, on both sides (writes results/peers-partial.json)")
    return p.parse_args(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peer-child"]:
        _peer_child(sys.argv[2], sys.argv[3])
        raise SystemExit(0)
    if sys.argv[1:2] == ["--ours-child"]:
        _ours_child(sys.argv[2], sys.argv[3])
        raise SystemExit(0)
    args = _parse(sys.argv[1:])
    t0 = time.perf_counter()
    rows = run(quick=args.quick, only=tuple(args.only or ("mlp", "cnn")), eig_only=args.eig_only)
    print_rows(rows)
    partial = args.only is not None or args.eig_only
    print(f"wrote {write('peers-partial' if partial else 'peers', rows)} in {time.perf_counter() - t0:.0f} s")
