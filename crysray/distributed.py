"""The thin Ray layer shared by the jobs: the stability funnel as a Ray Data stage.

Kept out of crysray's library modules (which never import Ray) and out of the job scripts
(which do not import each other).
"""

from __future__ import annotations

from pathlib import Path

import ray

from crysray.filter.campaign import FunnelUnitWorker
from crysray.filter.config import FunnelConfig
from crysray.storage import is_url


def funnel_resources(cluster: dict, replicas: int, cpus=None, gpus=None) -> tuple[float, float]:
    """(CPUs, GPUs) per funnel actor: a GPU each when the cluster has GPUs; on a CPU-only
    machine the actors share all CPUs but half of one, which the feeding tasks need."""
    gpus = gpus if gpus is not None else (1.0 if cluster.get("GPU", 0) >= 1 else 0.0)
    cpus = cpus or (1.0 if gpus else max(0.25, (cluster.get("CPU", 1) - 0.5) / replicas))
    return cpus, gpus


def add_funnel_stage(
    dataset,
    config: FunnelConfig,
    run_dir: str | Path,
    replicas: int,
    cpus: float | None = None,
    gpus: float | None = None,
):
    """Append the funnel actor pool to a Ray Data pipeline of ``{"unit": ...}`` rows."""
    cpus, gpus = funnel_resources(ray.cluster_resources(), replicas, cpus, gpus)
    return dataset.map_batches(
        FunnelUnitWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1,
        fn_constructor_kwargs={"run_dir": _absolute(run_dir), "config": config.as_dict(),
                               "torch_threads": max(1, int(cpus))},
    )  # fmt: skip


def _absolute(run_dir: str | Path) -> str:
    """What actors on any node can open: an absolute path, or the URL as it is."""
    return str(run_dir) if is_url(run_dir) else str(Path(run_dir).resolve())
