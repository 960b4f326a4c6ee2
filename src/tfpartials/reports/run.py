"""The report pipeline: validate everything, then run each section on a planned budget and write the report.

:func:`build_report` is the Python entry point of ``tfpartials report``. It works in two phases:

1. :func:`plan_report` loads and checks the model, data, loss and options, and evaluates the loss and its
   gradient on two examples. Any problem is an :class:`~tfpartials.InputError` raised *before* heavy work
   (the command line turns it into one line and exit 2; no output directory is created).
2. :func:`run_plan` runs the sections (:data:`~tfpartials.reports.records.SECTIONS`, curvature last: see
   :data:`RUN_ORDER`), each a small function that imports what it needs lazily. A section that fails is
   recorded (status ``failed`` and the reason) and shown in the report; the others still run. Sections that
   start after the time budget is spent run at their smallest size (the budget sizes the work; it never drops
   a section).

The work of each section is sized before it starts (probe examples, matvecs, attribution steps), from the
measured cost of one product and its share of the time budget; every cut is recorded in the section's
``reduced``. The numbers are reproducible for the same inputs, seed and sizes: with no cuts (a large enough
``--time-budget``), same inputs and seed give the same ``results.json`` apart from ``provenance.timing``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import InputError, check_choice, check_positive_float, check_positive_int, check_seed
from .records import REPORT_FORMAT, SECTIONS, Section, canonical_section, now_iso

__all__ = ["build_report", "plan_report", "run_plan", "ReportPlan", "DEFAULT_NUM_MATVECS", "DEFAULT_TIME_BUDGET",
           "DEFAULT_PROBE_EXAMPLES", "normal_permissions"]

DEFAULT_NUM_MATVECS = 60       # most matvecs of the trace; every layer's trace comes from the same probes
DEFAULT_TIME_BUDGET = 60.0     # seconds for the sections; each plans its work to fit its share of it
DEFAULT_PROBE_EXAMPLES = 256   # examples in the curvature probe batch
DEFAULT_PER_EXAMPLE = 512      # examples whose individual gradients are measured
DENSITY_PROBES, DENSITY_STEPS = 4, 30   # SLQ: probes x Lanczos steps
CHECK_EXAMPLES, CHECK_DIRECTIONS = 32, 4  # finite-difference check: examples, seeded directions
IG_STEPS = 32
#: seconds of the budget the sections leave for writing the page, printing the summary and exiting (at most 5%)
TAIL_SECONDS = 2.0

_SEED_OFFSETS = {"gradients": 0, "per_example": 1, "curvature": 2, "attributions": 3, "check": 4,
                 "uncertainty": 5, "influence": 6, "sensitivity": 7}
#: the order the sections run in: curvature last, because its work (matvecs) scales smoothly with the time
#: it gets, while the others have fixed costs (traces) their plans cannot shrink; so it takes what is left
#: and absorbs their overruns. The report lists the sections in :data:`SECTIONS` order.
RUN_ORDER: tuple[str, ...] = tuple(k for k in SECTIONS if k != "curvature") + ("curvature",)
#: relative share of the time left that each section may plan for (the shares of sections not run carry over)
SECTION_WEIGHTS = {"gradients": 1.0, "per_example": 1.5, "curvature": 4.0, "attributions": 1.0, "check": 2.0,
                   "uncertainty": 1.5, "influence": 1.5, "sensitivity": 0.5}


@dataclass
class ReportPlan:
    """Validated inputs and settings of one report (see :func:`plan_report`)."""

    model: Any
    objective: Any
    data: Any
    settings: dict[str, Any]
    skip: frozenset[str]
    title: str
    kind: str
    feature_names: list[str] | None
    model_file: str | None = None
    data_file: str | None = None
    model_digest: str | None = None
    data_digest: str | None = None
    weights_digest: str | None = None
    strategy: Any = field(default=None, repr=False)
    quiet: bool = False
    log: Callable[[str], None] | None = field(default=None, repr=False)
    deadline: float | None = field(default=None, repr=False)
    eval_data: Any = None
    allotted: float = float("inf")  # seconds the running section may plan for
    costs: dict[str, float] = field(default_factory=dict, repr=False)  # measured seconds, shared by sections
    started: float | None = field(default=None, repr=False)  # perf_counter() the time budget counts from

    def out_of_time(self) -> bool:
        """True once the report's time budget is spent (long sections check this between their parts)."""
        return self.deadline is not None and time.perf_counter() > self.deadline

    def seconds_left(self) -> float:
        """Seconds left of the running section's share of the budget."""
        return self.allotted - (time.perf_counter() - self._section_start)

    _section_start: float = field(default=0.0, repr=False)

    def fit(self, sec: Section, what: str, asked: int, cost_each: float, fixed: float = 0.0, minimum: int = 1,
            unit: str = "", share: float = 1.0) -> int:
        """How many of ``what`` fit ``share`` of the section's time left at ``cost_each`` seconds each.

        Returns ``asked`` when they fit, else the largest count that does (at least ``minimum``), and records
        the reduction in the section (shown on the page and in ``results.json``).
        """
        room = share * self.seconds_left() - fixed
        if cost_each <= 0 or asked * cost_each <= room:
            return asked
        used = int(max(minimum, min(asked, np.floor(room / cost_each))))
        if used < asked:
            self.reduce(sec, what, asked, used, f"{cost_each:.3g} s per {unit or what.rstrip('s')}")
        return used

    def reduce(self, sec: Section, what: str, asked: Any, used: Any, measured: str = "") -> None:
        """Record that ``what`` was cut from ``asked`` to ``used`` to fit the time budget."""
        sec.reduced.append({"what": what, "asked": asked, "used": used})
        cost = f" (measured {measured})" if measured else ""
        sec.notes.append(f"reduced {what} from {asked} to {used} to fit this section's "
                         f"{self.allotted:.0f} s share of the time budget{cost}; raise --time-budget for more")

    def round_to_batches(self, k: int) -> int:
        """``k`` examples rounded down to whole batches (one compiled shape for every pass), at least one."""
        bs = self.data.batch_size
        return int(k) if k <= bs else int(max(bs, (k // bs) * bs))

    @property
    def loss(self):
        return self.objective.loss

    @property
    def space(self):
        return self.objective.space

    def seed(self, section: str, offset: int = 0) -> int:
        return int(self.settings["seed"]) + 97 * _SEED_OFFSETS.get(section, 9) + offset

    def subset(self, k: int):
        """The first ``k`` examples as a Data (same dtype as the objective)."""
        from ..io.data import load_data

        k = min(int(k), self.data.num_examples)
        if k >= self.data.num_examples:
            return self.data
        x, y = self.data.first(k)
        return load_data((x, y), batch_size=min(self.data.batch_size, k), model=self.objective.model,
                         loss_name=self.loss.name, require_targets=True, allow_nan=True)


# ------------------------------------------------------------------------------------------------ planning
def _input_kind(model) -> str:
    from ..io.signature import signature

    sig = signature(model)
    if not sig.single_input:
        return "multi-input"
    shape = sig.input_shapes[0]
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return "image"
    if len(shape) == 2 and all(s is not None and s >= 4 for s in shape):
        return "image"
    if len(shape) == 1:
        return "tabular"
    return "other"


def _weights_digest(model) -> str:
    from .records import array_sha256

    return array_sha256([np.asarray(v.numpy()) for v in model.weights])


def _digest_of_data(data) -> str | None:
    from .records import array_sha256

    if getattr(data, "_stream", None) is not None:
        return None
    return array_sha256(data.x, data.y)


def plan_report(model, data, loss: Any = None, *, skip: Iterable[str] = (), top_k: int = 3,
                num_matvecs: int = DEFAULT_NUM_MATVECS, seed: int = 0, time_budget: float = DEFAULT_TIME_BUDGET,
                batch_size: int | None = None, max_examples: int | None = None,
                probe_examples: int = DEFAULT_PROBE_EXAMPLES, per_example_examples: int = DEFAULT_PER_EXAMPLE,
                wrt=None, precision: str | None = None, from_logits: bool | None = None, target=None,
                allow_nan: bool = False, trust: bool = False, feature_names: Sequence[str] | None = None,
                title: str | None = None, quiet: bool = False, density_probes: int = DENSITY_PROBES,
                density_steps: int = DENSITY_STEPS, check_examples: int = CHECK_EXAMPLES,
                check_directions: int = CHECK_DIRECTIONS,
                check_what: Sequence[str] = ("gradients", "hvp", "jacobian"), strategy=None,
                eval_data=None, started: float | None = None) -> ReportPlan:
    """Check every input and option (cheaply) and return the plan; InputError on anything wrong.

    Options are those of :func:`build_report`; ``density_probes`` and ``density_steps`` size the SLQ density
    (probes x Lanczos steps matvecs), ``check_examples``, ``check_directions`` and ``check_what`` (any of
    ``"gradients"``, ``"hvp"``, ``"jacobian"``) the finite-difference check; ``eval_data`` is held-out data
    for the uncertainty section; ``started`` is the ``time.perf_counter()`` value the time budget counts from
    (default: this call, so loading the model and the input checks are inside the budget).
    """
    started = time.perf_counter() if started is None else float(started)
    from .._backend import keras
    from ..autodiff.problem import prepare
    from ..io.models import load_model

    skipped = frozenset(canonical_section(s) for s in ([skip] if isinstance(skip, str) else list(skip)))
    top_k = check_positive_int("top_k", top_k)
    num_matvecs = check_positive_int("num_matvecs", num_matvecs)
    seed = check_seed(seed)
    time_budget = check_positive_float("time_budget", time_budget)
    probe_examples = check_positive_int("probe_examples", probe_examples)
    density_probes = check_positive_int("density_probes", density_probes)
    density_steps = check_positive_int("density_steps", density_steps)
    check_examples = check_positive_int("check_examples", check_examples)
    check_directions = check_positive_int("check_directions", check_directions)
    check_what = [check_what] if isinstance(check_what, str) else list(check_what)
    for w in check_what:
        check_choice("check_what", w, ("gradients", "hvp", "jacobian"))
    if not check_what:
        raise InputError("check_what: expected at least one of 'gradients', 'hvp', 'jacobian'")
    per_example_examples = check_positive_int("per_example_examples", per_example_examples)
    if max_examples is not None:
        max_examples = check_positive_int("max_examples", max_examples)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)

    model_file = None
    model_digest = None
    if isinstance(model, str | os.PathLike):
        from .records import file_sha256

        model_file = str(model)
        model = load_model(model, trust=trust)
        model_digest = file_sha256(model_file)
    elif not isinstance(model, keras.Model):
        raise TypeError(f"model: expected a Keras model or a model file path, got {type(model).__name__}")
    data_file = str(data) if isinstance(data, str | os.PathLike) else None
    obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision, from_logits=from_logits,
                     allow_nan=allow_nan, target=target, strategy=strategy)
    if max_examples is not None and max_examples < d.num_examples:
        from ..io.data import load_data

        x, y = d.first(max_examples)
        d = load_data((x, y), batch_size=min(d.batch_size, max_examples), model=obj.model,
                      loss_name=obj.loss.name, allow_nan=allow_nan, require_targets=True)
    kind = _input_kind(obj.model)
    names = [str(n) for n in feature_names] if feature_names is not None else d.feature_names
    if feature_names is not None and not isinstance(feature_names, str | bytes):
        width = obj.model.input_shape[-1] if kind == "tabular" else None
        if width is not None and len(names) != width:
            raise InputError(f"feature_names: expected {width} names (one per input feature), got {len(names)}")
    elif feature_names is not None:
        raise TypeError(f"feature_names: expected a sequence of names, got {feature_names!r}")
    from .._tracing import captured_tf_logs

    with captured_tf_logs():
        preflight_seconds = _preflight(obj, d)
    if data_file is not None:
        from .records import file_sha256

        data_digest = file_sha256(data_file)
    else:
        data_digest = _digest_of_data(d)
    settings = {"top_k": top_k, "num_matvecs": num_matvecs, "seed": seed, "skip": sorted(skipped),
                "time_budget_seconds": time_budget, "batch_size": d.batch_size, "max_examples": max_examples,
                "probe_examples": min(probe_examples, d.num_examples),
                "per_example_examples": min(per_example_examples, d.num_examples),
                "wrt": None if wrt is None else ([wrt] if isinstance(wrt, str) else list(wrt)),
                "precision": precision or obj.dtype.name, "loss": obj.loss.name,
                "density_probes": density_probes, "density_lanczos_steps": density_steps,
                "check_examples": min(check_examples, d.num_examples), "check_directions": check_directions,
                "check_what": check_what,
                "replicas": int(strategy.num_replicas_in_sync) if strategy is not None else 1,
                "integrated_gradients_steps": IG_STEPS}
    eval_d = None
    if eval_data is not None:
        from ..io.data import load_data

        eval_d = load_data(eval_data, batch_size=d.batch_size, model=obj.model, loss_name=obj.loss.name,
                           target=target, allow_nan=allow_nan, require_targets=True)
        if obj.dtype.name == "float64":
            eval_d = eval_d.cast("float64")
        settings["eval_examples"] = int(eval_d.num_examples)
    return ReportPlan(model=obj.model, objective=obj, data=d, settings=settings, skip=skipped, eval_data=eval_d,
                      title=title or f"tfpartials report: {model.name}", kind=kind,
                      feature_names=list(names) if names is not None else None, model_file=model_file,
                      data_file=data_file, model_digest=model_digest, data_digest=data_digest, quiet=quiet,
                      weights_digest=_weights_digest(model), strategy=strategy,
                      costs={"preflight_pass": preflight_seconds}, started=started)


def _preflight(obj, data) -> float:
    """Loss and gradient on the first batch: wrong shapes, labels or unconnected variables fail here, before any
    output is written. The batch has the data's batch size, so the gradient compiled here is the one every
    later pass uses (on MobileNetV2 a second trace for a two-example batch cost 10-16 s). Returns its seconds."""
    from ..autodiff.gradient import value_and_gradient
    from ..io.data import load_data

    t0 = time.perf_counter()
    x, y = data.first(min(data.batch_size, data.num_examples))
    tiny = load_data((x, y), batch_size=data.batch_size, model=obj.model,
                     loss_name=obj.loss.name, allow_nan=True, require_targets=True)
    try:
        value, _ = value_and_gradient(obj, tiny, quiet=True, description="checking inputs")
    except InputError:
        raise
    except Exception as exc:  # TF shape/dtype errors from a model-loss-data mismatch
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"the model, loss {obj.loss.name!r} and data do not fit together: "
                         f"{type(exc).__name__}: {msg}") from None
    if not np.isfinite(float(value)):
        raise InputError("the loss is not finite on the first examples; check the data and the loss")
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------- running
def _layer_of(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else name


def _layers(space) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for n in space.names:
        groups.setdefault(_layer_of(n), []).append(n)
    return list(groups.items())


def run_plan(plan: ReportPlan, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run every section of ``plan``; with ``directory``, write the PNGs, ``results.json`` and ``index.html``."""
    from .records import provenance

    d = Path(directory) if directory is not None else None
    started, t0 = now_iso(), time.perf_counter()
    say = plan.log or _printer(plan.quiet)
    obj, data = plan.objective, plan.data
    results: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "title": plan.title,
        "model": _model_summary(plan),
        "data": {"num_examples": data.num_examples, "kind": plan.kind,
                 "feature_names": plan.feature_names},
        "loss": {"name": obj.loss.name, "value": None},
        "summary": {"loss": None, "gradient_norm": None, "top_eigenvalue": None, "trace": None,
                    "check_passed": None},
        "sections": {},
    }
    timing: dict[str, Any] = {}
    budget = float(plan.settings["time_budget_seconds"])
    clock = t0 if plan.started is None else plan.started  # the budget counts from here (loading included)
    plan.deadline = clock + budget - min(TAIL_SECONDS, 0.05 * budget)  # kept for the page, the summary, exit
    todo = [k for k in RUN_ORDER if k not in plan.skip and _applies(plan, k)]
    from .._tracing import captured_tf_logs

    with captured_tf_logs():
        for i, key in enumerate(RUN_ORDER):
            later = sum(SECTION_WEIGHTS.get(k, 1.0) for k in todo if RUN_ORDER.index(k) >= i)
            left = plan.deadline - time.perf_counter()
            plan.allotted = max(0.0, left) * SECTION_WEIGHTS.get(key, 1.0) / later if later else left
            plan._section_start = time.perf_counter()
            _run_section(plan, key, i, results, timing, d, say, clock, budget)
    results["sections"] = {k: results["sections"][k] for k in SECTIONS}  # listed in the report's order
    timing["measured_costs"] = {k: round(v, 4) for k, v in plan.costs.items()}
    prov = provenance(model_file=plan.model_file, model_digest=plan.model_digest, data_file=plan.data_file,
                      data_digest=plan.data_digest, seed=plan.settings["seed"], settings=plan.settings,
                      weights_digest=plan.weights_digest)
    prov["timing"] = {"started": started, "finished": now_iso(),
                      "seconds": {"total": round(time.perf_counter() - t0, 3),
                                  "since_start": round(time.perf_counter() - clock, 3), **timing}}
    results["provenance"] = prov
    if d is not None:
        from ..io.writers import save_json
        from .html import write_html

        save_json(d / "results.json", results)
        write_html(results, d)
    return results


def _applies(plan: ReportPlan, key: str) -> bool:
    """False for a section that will skip itself at once (it gets no share of the time budget)."""
    if key == "uncertainty":
        return plan.eval_data is not None and bool(getattr(plan.loss, "from_logits", False))
    if key in ("sensitivity", "attributions"):
        from .sections import _floating_input

        if not _floating_input(plan.objective.model):
            return False
        return plan.kind == "tabular" if key == "sensitivity" else plan.kind != "multi-input"
    return True


def _run_section(plan: ReportPlan, key: str, i: int, results: dict, timing: dict, d: Path | None, say,
                 t0: float, budget: float) -> None:
    """Run one section, recording failure, absence or a spent time budget instead of raising."""
    from . import sections as S

    sec = Section(key)
    t = time.perf_counter()
    if key in plan.skip:
        sec.status, sec.reason = "skipped", "skipped on request"
    else:
        if t - t0 > budget:  # never dropped for time: it runs at its smallest size, and says so
            sec.notes.append(f"the {budget:.0f} s time budget was spent before this section started "
                             f"({t - t0:.0f} s), so it ran at its smallest size; raise --time-budget for more")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    S.RUNNERS[key](plan, sec, d, results)
                finally:
                    sec.notes.extend(n for n in _notes(caught) if n not in sec.notes)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing section is recorded and shown, not fatal
            from .._tracing import short_reason

            sec.status, sec.reason = "failed", short_reason(exc, 400)  # numbers before the failure are kept
    timing[key] = round(time.perf_counter() - t, 3)
    if key not in plan.skip:  # one line per section: what ran, how it ended, how long it took
        cut = f", reduced {len(sec.reduced)} setting(s) to fit the budget" if sec.reduced else ""
        say(f"[{i + 1}/{len(SECTIONS)}] {key.replace('_', '-')}: {sec.status} ({timing[key]:.1f} s{cut})")
    results["sections"][key] = sec.to_dict()


def _notes(caught) -> list[str]:
    """User and runtime warnings raised inside a section, once each, as text for the report (not stderr).

    Other categories (deprecation, resource and import warnings) concern the environment, not the numbers,
    and are dropped.
    """
    out: list[str] = []
    for w in caught:
        if not issubclass(w.category, UserWarning | RuntimeWarning):
            continue
        text = f"{w.category.__name__}: {' '.join(str(w.message).split())}"
        if text not in out:
            out.append(text)
    return out


def _printer(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda msg: None
    import sys

    def say(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    return say


def _model_summary(plan: ReportPlan) -> dict[str, Any]:
    from ..io.signature import signature

    sig = signature(plan.model)
    space = plan.space
    return {"name": plan.model.name, "num_parameters": int(space.size), "num_variables": len(space.names),
            "num_layers_with_parameters": len(_layers(space)),
            "inputs": [{"name": n, "shape": list(s)} for n, s in zip(sig.input_names, sig.input_shapes)],
            "outputs": [{"name": n, "shape": list(s)} for n, s in zip(sig.output_names, sig.output_shapes)]}


# ---------------------------------------------------------------------------------------------- entry point
def build_report(model, data, loss: Any = None, out_dir: str | os.PathLike | None = None, *,
                 skip: Iterable[str] = (), top_k: int = 3, num_matvecs: int = DEFAULT_NUM_MATVECS, seed: int = 0,
                 time_budget: float = DEFAULT_TIME_BUDGET, quiet: bool = False,
                 feature_names: Sequence[str] | None = None, overwrite: bool = False, **options) -> dict[str, Any]:
    """Gradients, per-example gradient norms, curvature, attributions, uncertainty, influence, sensitivity and a
    finite-difference check, in one report sized to a time budget.

    Sections (each can be skipped by name): ``gradients`` (per-variable and per-layer norms of the dataset
    loss gradient), ``per-example`` (distribution of per-example gradient norms, per-layer SNR), ``curvature``
    (top-k Hessian eigenvalues by Lanczos at tol 1e-3; the trace and every layer's trace from the same shared
    probes, run to a 5% standard error; SLQ spectral density; on a probe batch), ``attributions`` (saliency and
    integrated gradients), ``uncertainty`` (MAP vs Laplace calibration on ``eval_data``), ``influence``
    (helpful/harmful training examples, self-influence), ``sensitivity`` (DGSM of tabular inputs) and
    ``check`` (autodiff vs float64 central differences). A failing section is recorded; the others still run.

    Sizing: the budget is shared among the sections that apply (by fixed weights, unused time carrying over);
    each section times one product (a gradient batch, a per-example batch, an HVP on one batch) and cuts its
    examples, matvecs, steps or directions to fit its share, recording every cut in the section's ``reduced``
    list and notes.

    Cost: about ``time_budget`` seconds (more only when the smallest useful size of the sections does not fit);
    at most one gradient pass over the data,
    ``per_example_examples`` single-example gradients, and ``top_k + 20 + num_matvecs + density_probes *
    density_steps`` Hessian-vector products on ``probe_examples`` examples.

    Args:
        model: a Keras model or a model file path (loaded safely; ``trust=True`` for formats that run code).
        data: ``(x, y)``, a ``tf.data.Dataset``, a :class:`~tfpartials.Data` or a data file path.
        loss: Keras loss name/object/callable; default the model's compiled loss.
        out_dir: directory to write (``index.html``, ``results.json``, PNGs), created atomically; ``None``
            computes the results only.
        skip: section names to leave out (``"curvature"``/``"spectrum"``, ``"per-example"``, ...).
        top_k: number of top Hessian eigenvalues.
        num_matvecs: Hutch++ matvecs for each trace estimate.
        seed: seed of every randomised estimator (same seed, same numbers).
        time_budget: seconds for the whole call (default 60), loading the model and checking the inputs
            included: each section plans its work to fit its share of what is left, from measured costs; a
            section that starts after the budget is spent runs at its smallest size (and says so).
        quiet: no progress output.
        feature_names: names of tabular input features (default: the CSV header).
        overwrite: replace an existing ``out_dir``.
        **options: ``eval_data`` (held-out data for the uncertainty section), ``batch_size``, ``max_examples``, ``probe_examples``, ``per_example_examples``, ``wrt``,
            ``precision``, ``from_logits``, ``target`` (CSV columns), ``allow_nan``, ``trust``, ``title``,
            ``density_probes``, ``density_steps``, ``check_examples``, ``check_directions``, ``check_what``,
            ``strategy`` (a ``tf.distribute.Strategy`` for the dataset gradient and the Hessian products; same
            numbers up to round-off), ``started`` (the ``time.perf_counter()`` the budget counts from; default
            the moment of the call; the CLI passes its own start, so the budget covers TensorFlow's start-up).

    Returns:
        The results dict (as written to ``results.json``).

    Example:
        Only the gradient section of a linear model, whose mean gradient ``-(2/N) [X 1]^T y`` is known:

        >>> import os, tempfile, numpy as np, keras, tfpartials as tp
        >>> from tfpartials.reports.records import SECTIONS
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.ones((2, 1), "float32")
        >>> tmp = tempfile.TemporaryDirectory(); out = os.path.join(tmp.name, "report")
        >>> results = tp.build_report(model, (x, y), "mse", out, skip=[s for s in SECTIONS if s != "gradients"],
        ...                           quiet=True)
        >>> results["summary"]["loss"], results["summary"]["gradient_norm"]     # |-(1, 2, 2)| = 3
        (1.0, 3.0)
        >>> sorted(os.listdir(out))
        ['gradients.png', 'index.html', 'results.json']
        >>> tp.load_results(out)["sections"]["gradients"]["status"]
        'ok'
        >>> tmp.cleanup()
    """
    from ..io.writers import atomic_directory, check_output_path

    options.setdefault("started", time.perf_counter())  # the budget covers loading and the input checks too
    if out_dir is not None:
        check_output_path(out_dir, overwrite, directory=True)
    plan = plan_report(model, data, loss, skip=skip, top_k=top_k, num_matvecs=num_matvecs, seed=seed,
                       time_budget=time_budget, feature_names=feature_names, quiet=quiet, **options)
    if out_dir is None:
        return run_plan(plan, None)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        results = run_plan(plan, tmp)
        normal_permissions(tmp)
    return results


def normal_permissions(directory: str | os.PathLike) -> None:
    """Give a report directory built from temporary files the usual modes (0777/0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    root = Path(directory)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
