"""Cells that may crash the interpreter, run in a child process that is restarted after a crash.

``python -m tests.soundness.isolated JOBS.json OUTDIR``: for each job the child writes ``OUTDIR/<id>.start``
before computing and ``OUTDIR/<id>.npz`` + ``OUTDIR/<id>.json`` after, so when it dies (a native crash of a
vectorised path, exit code 139) the parent knows which cell killed it and starts a new child for the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RESTARTS = 8


def _child(jobs_path: str, outdir: str) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TFPARTIALS_PROGRESS", "0")
    import numpy as np

    import tfpartials as tp
    from tests.soundness import catalogue as C
    from tests.soundness import quantities as Q

    out = Path(outdir)
    with open(jobs_path) as fh:
        jobs = json.load(fh)
    arrays = dict(np.load(jobs["arrays"]))
    models: dict = {}
    for job in jobs["jobs"]:
        cid, key = job["id"], job["key"]
        if (out / f"{cid}.json").exists() or (out / f"{cid}.start").exists():
            continue
        (out / f"{cid}.start").write_text("")
        case = C.CASES[key]
        if key not in models:
            models[key] = tp.load_model(job["path"])
        res = Q.compute(job["quantity"], models[key], arrays[f"{key}:x"], arrays[f"{key}:y"], arrays[f"{key}:v"],
                        loss=case.loss, from_logits=True if case.loss != "mse" else None,
                        training=case.training, precision=job["precision"])
        if res.value is not None:
            np.save(out / f"{cid}.npy", res.value)
        meta = {"fallbacks": res.fallbacks, "warnings": res.warnings, "refused": res.refused, "error": res.error,
                "stderr": res.stderr}
        (out / f"{cid}.json").write_text(json.dumps(meta))
    return 0


def run_isolated(jobs: list[dict], arrays: str, workdir: Path, root: Path) -> dict[str, dict]:
    """Run ``jobs`` in child processes; ``{id: meta}`` with ``meta["crash"]`` set for a cell that killed one."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "jobs.json").write_text(json.dumps({"arrays": arrays, "jobs": jobs}))
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2", "TFPARTIALS_PROGRESS": "0"}
    results: dict[str, dict] = {}
    for _ in range(RESTARTS):
        before = len(results)
        proc = subprocess.run([sys.executable, "-m", "tests.soundness.isolated", str(workdir / "jobs.json"),
                               str(workdir)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        for job in jobs:
            cid = job["id"]
            if cid in results:
                continue
            done, started = workdir / f"{cid}.json", workdir / f"{cid}.start"
            if done.exists():
                results[cid] = json.loads(done.read_text())
                npy = workdir / f"{cid}.npy"
                results[cid]["value"] = str(npy) if npy.exists() else None
            elif started.exists():  # started, never finished: this cell killed the child
                results[cid] = {"crash": proc.returncode, "stderr": proc.stderr[-2000:]}
        if proc.returncode == 0 or len(results) == before or all(j["id"] in results for j in jobs):
            break
    failure = proc.stderr[-2000:] if proc.returncode != 0 else ""

    for job in jobs:
        results.setdefault(job["id"], {"crash": f"not run (child exit {proc.returncode})", "stderr": failure})
    return results


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:]))
