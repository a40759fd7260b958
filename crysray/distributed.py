"""The thin Ray layer shared by the jobs: the stability funnel and run-wide uniqueness as Ray
Data stages.

Kept out of crysray's library modules (which never import Ray) and out of the job scripts
(which do not import each other).
"""

from __future__ import annotations

import json

import pyarrow as pa
import ray

from crysray.filter.campaign import (
    FunnelUnitWorker,
    candidate_rows,
    decide_formula_group,
    filtered_units,
    funnel_key,
    undecided_rows,
    uniqueness_columns,
    write_decision_shard,
)
from crysray.filter.config import FunnelConfig
from crysray.filter.counts import merge_counts
from crysray.sample.schema import STRUCTURE_COLUMNS
from crysray.storage import Storage

# hash partitions of the formula shuffle: Ray Data's default, fewer for a run of fewer units
# (each partition costs a task even when it holds nothing)
MAX_FORMULA_PARTITIONS = 200


def funnel_resources(cluster: dict, replicas: int, cpus=None, gpus=None) -> tuple[float, float]:
    """(CPUs, GPUs) per funnel actor: a GPU each when the cluster has GPUs; on a CPU-only
    machine the actors share all CPUs but half of one, which the feeding tasks need."""
    gpus = gpus if gpus is not None else (1.0 if cluster.get("GPU", 0) >= 1 else 0.0)
    cpus = cpus or (1.0 if gpus else max(0.25, (cluster.get("CPU", 1) - 0.5) / replicas))
    return cpus, gpus


def add_funnel_stage(
    dataset,
    config: FunnelConfig,
    store: Storage,
    replicas: int,
    cpus: float | None = None,
    gpus: float | None = None,
):
    """Append the funnel actor pool to a Ray Data pipeline of ``{"unit": ...}`` rows.

    The actors open the run by ``store.location``: an absolute path or a URL, which any node
    can open (the URL holds no credentials)."""
    cpus, gpus = funnel_resources(ray.cluster_resources(), replicas, cpus, gpus)
    return dataset.map_batches(
        FunnelUnitWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1,
        fn_constructor_kwargs={"run_dir": store.location, "config": config.as_dict(),
                               "torch_threads": max(1, int(cpus))},
    )  # fmt: skip


def decide_run_distributed(store: Storage) -> dict:
    """Run-wide uniqueness as a Ray Data stage; a ``decide_run`` for ``finalize_run``.

    Reads only the columns uniqueness and the counts need from the per-unit funnel files (the
    structure columns once), shuffles the candidates by reduced formula so that one task
    decides each formula group (``decide_formula_group``, as the one-process path does), and
    writes the decisions as shards under ``funnel/unique/`` from the tasks. The driver
    receives one small dict of counts per block, never rows.
    """
    keys = [funnel_key(u) for u in filtered_units(store)]
    columns = uniqueness_columns(store.dataset(keys[:1]).schema)
    paths = [store.path(k) for k in keys]
    # Ray Data pushes each selection down into the Parquet read; the rest are decided without
    # their structures, so the second read skips the bulky columns
    candidates = ray.data.read_parquet(paths, filesystem=store.fs).select_columns(columns)
    rest = ray.data.read_parquet(paths, filesystem=store.fs).select_columns(
        [c for c in columns if c not in STRUCTURE_COLUMNS]
    )
    decided = (
        candidates.map_batches(candidate_rows, batch_format="pyarrow")
        .groupby("formula", num_partitions=min(len(keys), MAX_FORMULA_PARTITIONS))
        .map_groups(decide_formula_group, batch_format="pyarrow")
    ).union(rest.map_batches(undecided_rows, batch_format="pyarrow"))
    parts = decided.map_batches(
        _write_shard, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"location": store.location},
    )  # fmt: skip
    return merge_counts([json.loads(row["counts"]) for row in parts.iter_rows()])


def _write_shard(rows, location: str):
    """One block of decided rows -> its shard on storage and a one-row table of its counts."""
    if rows.num_rows == 0:
        return pa.table({"counts": pa.array([], pa.string())})
    counts = write_decision_shard(rows, Storage(location))
    return pa.table({"counts": [json.dumps(counts)]})
