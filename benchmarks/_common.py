"""Shared helpers for the benchmark scripts: timing, machine facts, rows, writing JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs after ``warmup`` untimed runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def row(benchmark: str, case: str, value: float, unit: str, baseline: str | None = None,
        baseline_value: float | None = None, target: str | None = None, meets_target: bool | None = None,
        **extra) -> dict:
    ratio = (value / baseline_value) if baseline_value else None
    return {"benchmark": benchmark, "case": case, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": ratio, "target": target, "meets_target": meets_target,
            **extra}


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions = {}
    for mod in ("tensorflow", "keras", "numpy", "jax", "torch", "tfpartials"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write(topic: str, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{topic}.json"
    path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    return path


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        ratio = f"{r['ratio']:.3g}x {r['baseline']}" if r.get("ratio") is not None else ""
        ok = {True: "meets", False: "MISSES", None: ""}[r.get("meets_target")]
        print(f"{r['benchmark']:<22} {r['case']:<44} {r['value']:>12.4g} {r['unit']:<8} {ratio:<34} "
              f"{r.get('target') or '':<22} {ok}")


def peers() -> dict[str, bool]:
    out = {}
    for mod in ("jax", "torch"):
        try:
            __import__(mod)
            out[mod] = True
        except Exception:
            out[mod] = False
    return out
