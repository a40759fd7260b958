"""Ray resources of an actor pool, sized from the cluster's totals (one rule for every pool).

No Ray here: the caller passes ``ray.cluster_resources()``, so the rule is testable as a
function of a plain dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ActorResources:
    """What each actor of a pool reserves, and the torch threads it runs."""

    num_cpus: float
    num_gpus: float
    threads: int | None  # None: torch's own default (an actor that computes on a GPU)


def actor_resources(
    cluster: dict,
    replicas: int,
    cpus: float | None = None,
    gpus: float | None = None,
    threads: int | None = None,
) -> ActorResources:
    """Per-actor resources of a pool of ``replicas`` actors; explicit values win.

    A GPU each when the cluster has GPUs (and one CPU to feed it). On a CPU-only machine,
    reserving a whole CPU per actor starves the tasks that feed the pool, so the actors share
    all CPUs but half of one, and each runs as many torch threads as CPUs it holds.
    """
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    if cpus is None:
        cpus = 1.0 if gpus else max(0.25, (cluster.get("CPU", 1) - 0.5) / replicas)
    if threads is None and not gpus:
        threads = max(1, math.ceil(cpus))
    return ActorResources(float(cpus), float(gpus), threads)
