"""tf.distribute for every dataset-level quantity: local devices, logical CPUs and multi-worker clusters.

Pass ``strategy=`` to any dataset-level function or operator (``gradients``, ``hvp``, ``HessianOperator``,
``hessian``, ...). Batches are spread over the replicas and SUM-reduced with exact 1/N weights, so results do
not depend on the number of replicas; random probes of estimators are drawn once on the host from the seed, so
they do not either. Only the data pass is distributed: a dense Hessian still needs n² memory on every worker.
"""

from __future__ import annotations

import json
import os

from .._backend import tf
from .._checks import InputError, check_positive_int

__all__ = ["make_strategy", "use_logical_cpus", "strategy_from_environment", "describe_strategy"]


def use_logical_cpus(n: int) -> list[str]:
    """Split the physical CPU into ``n`` logical devices (call before TensorFlow runs its first op).

    Returns the device names. Raises InputError if devices were already initialised with another count.
    """
    n = check_positive_int("devices", n)
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        have = tf.config.list_logical_devices("CPU")
        if len(have) < n:
            raise InputError(f"--devices {n}: TensorFlow already started with {len(have)} CPU device(s); "
                             "logical devices must be configured before the first operation") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")[:n]]


def make_strategy(devices: int | None = None):
    """A strategy for ``devices`` local devices: GPUs when there are that many, else logical CPUs.

    With ``TF_CONFIG`` set in the environment (a cluster spec), returns a ``MultiWorkerMirroredStrategy``.
    Returns None for a single device (the default, non-distributed path).
    """
    env = strategy_from_environment()
    if env is not None:
        return env
    if devices is None or devices == 1:
        return None
    devices = check_positive_int("devices", devices)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) >= devices:
        names = [f"/gpu:{i}" for i in range(devices)]
    else:
        names = use_logical_cpus(devices)
    return tf.distribute.MirroredStrategy(names, cross_device_ops=tf.distribute.ReductionToOneDevice())


def strategy_from_environment():
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster with more than one worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        cfg["task"]["index"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError("TF_CONFIG is set but is not a valid cluster spec: expected "
                         '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}') from None
    if len(workers) < 2:
        return None
    return tf.distribute.MultiWorkerMirroredStrategy()


def describe_strategy(strategy) -> dict:
    """Small JSON-able description for provenance records."""
    if strategy is None:
        return {"kind": "none", "replicas": 1}
    return {"kind": type(strategy).__name__, "replicas": int(strategy.num_replicas_in_sync)}
