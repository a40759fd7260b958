"""The thin Ray layer: starting Ray, the sampling and funnel actor pools, run-wide uniqueness
and Ray Train, each a few calls of Ray around a library function that knows nothing of Ray.

Everything else in crysray runs without Ray; the command line (crysray.commands) and the job
scripts (jobs/) are the only callers.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

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
from crysray.sample.campaign import CampaignWorker
from crysray.sample.plan import CampaignPlan, num_tasks
from crysray.sample.schema import STRUCTURE_COLUMNS
from crysray.sizing import actor_resources
from crysray.storage import Storage

# hash partitions of the formula shuffle: Ray Data's default, fewer for a run of fewer units
# (each partition costs a task even when it holds nothing)
MAX_FORMULA_PARTITIONS = 200
PRIVATE = "local"  # ray.init's address for a new instance of our own


def start_ray(address: str | None = None, log_to_driver: bool = False,
              verbose: bool = False) -> str:  # fmt: skip
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a private local instance.

    Never ``ray.init()`` bare: that joins whatever cluster someone on this machine started
    with ``ray start``, and dies when they stop it. Ray Data's progress bars only with
    ``verbose`` (the command line draws its own). Returns what was joined.
    """
    address = address or os.environ.get("RAY_ADDRESS") or PRIVATE
    # crysray is importable on every worker (pip install, or `ray job submit --working-dir`);
    # no runtime_env here, so Ray can use its prestarted worker processes
    try:
        ray.init(address=address, log_to_driver=log_to_driver)
    except Exception as err:  # Ray raises builtin types here (timeouts, connection errors)
        what = "start a private Ray instance" if address == PRIVATE else f"join Ray at {address}"
        raise RayFailure(f"could not {what}: {type(err).__name__}: {err}") from err
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    return address


class RayFailure(RuntimeError):
    """Ray itself failed (could not start, or lost its processes): not the input's fault."""


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Crystals done, added to by every replica after each network batch."""

    def __init__(self):
        self.count = 0

    def add(self, crystals: int) -> None:
        self.count += crystals

    def total(self) -> int:
        return self.count


class RayProgress:
    """What a replica holds of the counter: ``add`` without waiting for the answer."""

    def __init__(self, counter):
        self.counter = counter

    def add(self, crystals: int) -> None:
        self.counter.add.remote(crystals)


def sample_campaign(store: Storage, plan: CampaignPlan, options, funnel_config=None,
                    on_progress=None) -> list[tuple[float, int]]:  # fmt: skip
    """Run the plan's units on a pool of ``options.replicas`` sampler actors (and the funnel's
    pool after it); ``on_progress(crystals_sampled, units_finished)`` about every second.

    Ray Data over an actor pool: one callable class per replica (the model loads once), work
    units as rows. Each replica writes its unit file itself, named by unit, so resume is a file
    listing and rows never pass through the driver. Actors that die are restarted and their
    tasks retried (Ray Data's defaults for actor pools). Returns (time, rows) per finished unit.
    """
    res = actor_resources(ray.cluster_resources(), options.replicas, options.cpus_per_replica,
                          options.gpus_per_replica, options.threads_per_replica)  # fmt: skip
    counter = ProgressCounter.remote()
    units = ray.data.from_items(
        [{"unit": u} for u in plan.todo],
        override_num_blocks=num_tasks(len(plan.todo), options.replicas, options.units_per_task),
    )
    summaries = units.map_batches(
        CampaignWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=options.replicas),
        num_cpus=res.num_cpus, num_gpus=res.num_gpus,
        fn_constructor_kwargs={
            "checkpoint": str(options.checkpoint.resolve()),
            "out_dir": store.location,  # absolute path, or the URL (no credentials)
            "spec": plan.spec.__dict__, "targets": plan.targets, "threads": res.threads,
            "device": "cuda" if res.num_gpus else "cpu", "session": options.session,
            "progress": RayProgress(counter),
        },
    )  # fmt: skip
    if funnel_config is not None:  # MatGL stage: its own actor pool, fed unit by unit
        summaries = add_funnel_stage(summaries, funnel_config, store, options.funnel_replicas,
                                     options.funnel_cpus, options.funnel_gpus)  # fmt: skip
    arrivals = []
    with _polling(counter, lambda n: on_progress and on_progress(n, len(arrivals))):
        for summary in summaries.iter_rows():
            arrivals.append((time.perf_counter(), int(summary["rows"])))
    return arrivals


class _polling:
    """Calls ``report(counter total)`` every second from a thread while the block runs."""

    def __init__(self, counter, report, every: float = 1.0):
        self.counter, self.report, self.every = counter, report, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        if exc[0] is None:
            self._tick()

    def _run(self):
        while not self.stop.wait(self.every):
            self._tick()

    def _tick(self):
        try:
            self.report(ray.get(self.counter.total.remote(), timeout=10))
        except Exception:  # noqa: BLE001, S110 - progress is best effort; the pipeline reports
            pass


def new_session() -> str:
    """A token marking this invocation's attempts in flight (crysray.sample.campaign)."""
    return uuid.uuid4().hex[:12]


def filter_units(store: Storage, todo: list[int], config: FunnelConfig, options,
                 on_progress=None) -> None:  # fmt: skip
    """The funnel's actor pool over the sampled units ``todo``; ``on_progress(crystals)``, the
    crystals filtered so far, about every second (counted within units as they relax)."""
    counter = ProgressCounter.remote()
    units = ray.data.from_items([{"unit": u} for u in todo], override_num_blocks=len(todo))
    stage = add_funnel_stage(units, config, store, options.funnel_replicas, options.funnel_cpus,
                             options.funnel_gpus, progress=RayProgress(counter))  # fmt: skip
    with _polling(counter, lambda n: on_progress and on_progress(n)):
        for _ in stage.iter_rows():
            pass


def add_funnel_stage(
    dataset,
    config: FunnelConfig,
    store: Storage,
    replicas: int,
    cpus: float | None = None,
    gpus: float | None = None,
    progress: RayProgress | None = None,
):
    """Append the funnel actor pool to a Ray Data pipeline of ``{"unit": ...}`` rows.

    The actors open the run by ``store.location``: an absolute path or a URL, which any node
    can open (the URL holds no credentials)."""
    res = actor_resources(ray.cluster_resources(), replicas, cpus, gpus)
    return dataset.map_batches(
        FunnelUnitWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=res.num_cpus, num_gpus=res.num_gpus,
        fn_constructor_kwargs={"run_dir": store.location, "config": config.as_dict(),
                               "torch_threads": res.threads or 1, "progress": progress},
    )  # fmt: skip


def decide_run_distributed(store: Storage) -> dict:
    """Run-wide uniqueness as a Ray Data stage; a ``decide_run`` for ``finalize_run``.

    Reads only the columns uniqueness and the counts need from the per-unit funnel files (the
    structure columns once), shuffles the candidates by reduced formula so that one task
    decides each formula group (``decide_formula_group``, as the one-process path does), and
    writes the decisions as shards under ``funnel/_unique/`` from the tasks. The driver
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


def train_with_ray(config, workers: int, gpu: bool, threads_per_worker: int, storage: str,
                   name: str, max_failures: int):  # fmt: skip
    """DDP training with Ray Train (gloo on CPU, NCCL on GPU); the same storage and name
    resume. Returns Ray Train's result (metrics, last checkpoint)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu,
            resources_per_worker=None if gpu else {"CPU": threads_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )  # fmt: skip
    return trainer.fit()


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: shard the data, wrap in DDP, report checkpoints."""
    import tempfile
    from pathlib import Path

    import ray.train
    import ray.train.torch

    from crysray.methods.registry import config_from_dict, fit_statistics
    from crysray.train.local import load_dataset_splits
    from crysray.train.loop import train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = config_from_dict(loop_config["config"])
    train_table, val_table = load_dataset_splits(config)
    config = fit_statistics(config, train_table)
    batch = config.train.batch_size // world  # the global batch stays the configured one
    steps_per_epoch = len(train_table.batch_indices(batch, shuffle=False, rank=rank,
                                                    world_size=world, drop_last=True))  # fmt: skip
    config = config.replace("train", checkpoint_every=max(1, steps_per_epoch))  # once per epoch
    workdir = Path(tempfile.mkdtemp(prefix=f"crysray-rank{rank}-"))
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            (workdir / "checkpoint.pt").write_bytes((Path(d) / "checkpoint.pt").read_bytes())

    def epoch_batches(epoch: int):
        return train_table.iterate_batches(batch, shuffle=True, seed=config.train.seed,
                                           epoch=epoch, rank=rank, world_size=world,
                                           drop_last=True)  # fmt: skip

    def report(path: Path, record: dict) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(path.parent)) if rank == 0 else None
        ray.train.report({k: v for k, v in record.items() if v is not None}, checkpoint=checkpoint)

    train(
        config, epoch_batches, workdir / "checkpoint.pt",
        val_batches=(lambda: val_table.iterate_batches(512, shuffle=False)) if rank == 0 else None,
        wrap_model=ray.train.torch.prepare_model, on_checkpoint=report, is_main=rank == 0,
        rank=rank, device=ray.train.torch.get_device(),
    )  # fmt: skip


def screen_units(store: Storage, todo: list[int], screen, funnel: FunnelConfig, options,
                 known_paths=(), hull_exclude=(), on_progress=None) -> None:  # fmt: skip
    """The tiered funnel's actor pool (``ScreenUnitWorker``) over the screening units ``todo``;
    ``on_progress(crystals)`` about every second. Joins Ray, or starts it, if not yet done."""
    from crysray.screen.stage import ScreenUnitWorker

    if not ray.is_initialized():
        start_ray(options.address, verbose=options.verbose)
    counter = ProgressCounter.remote()
    res = actor_resources(ray.cluster_resources(), options.funnel_replicas, options.funnel_cpus,
                          options.funnel_gpus)  # fmt: skip
    units = ray.data.from_items([{"unit": u} for u in todo], override_num_blocks=len(todo))
    pool = ray.data.ActorPoolStrategy(size=options.funnel_replicas)
    stage = units.map_batches(
        ScreenUnitWorker, batch_size=1, compute=pool,
        num_cpus=res.num_cpus, num_gpus=res.num_gpus,
        fn_constructor_kwargs={"run_dir": store.location, "screen": screen.as_dict(),
                               "funnel": funnel.as_dict(), "known_paths": list(known_paths),
                               "hull_exclude": dict(hull_exclude),
                               "torch_threads": res.threads or 1,
                               "progress": RayProgress(counter)},
    )  # fmt: skip
    with _polling(counter, lambda n: on_progress and on_progress(n)):
        for _ in stage.iter_rows():
            pass
