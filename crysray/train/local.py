"""Training on one machine without Ray: the dataset splits of a config and the loop around them.

``crysray train`` / ``crysray-train`` call ``run_local_training``; Ray Train workers
(crysray.distributed) load their splits with ``load_dataset_splits`` too.
"""

from __future__ import annotations

from pathlib import Path

from crysray.config import RunConfig
from crysray.data.csv import dataset_path, load_split
from crysray.data.dataset import CrystalTable
from crysray.methods.registry import fit_statistics
from crysray.train.checkpoint import export_inference
from crysray.train.loop import train


def load_dataset_splits(
    config: RunConfig, val_rows: int = 1024
) -> tuple[CrystalTable, CrystalTable]:
    """Training split and a fixed validation subset of the config's dataset."""
    train_table = load_split(dataset_path(config.data.dataset, "train"))
    val_table = load_split(dataset_path(config.data.dataset, "val"))
    return train_table, val_table.subset(range(min(val_rows, len(val_table))))


def run_local_training(config: RunConfig, run_dir: Path, snapshot_every: int = 2) -> dict:
    """Train on this machine (no Ray): checkpoint.pt and EMA snapshots in ``run_dir``; a rerun
    resumes. The training split's statistics are fitted first (``fit_statistics``)."""
    train_table, val_table = load_dataset_splits(config)
    config = fit_statistics(config, train_table)
    print(config, flush=True)
    (run_dir / "snapshots").mkdir(parents=True, exist_ok=True)
    t = config.train

    def epoch_batches(epoch: int):
        return train_table.iterate_batches(
            t.batch_size, shuffle=True, seed=t.seed, epoch=epoch, drop_last=True
        )

    def val_batches():
        return val_table.iterate_batches(512, shuffle=False)

    count = {"n": 0}

    def keep_snapshot(path: Path, record: dict) -> None:
        # EMA-only snapshots make the learning curve (match rate vs time) measurable afterwards
        count["n"] += 1
        if count["n"] % snapshot_every == 0:
            export_inference(path, run_dir / "snapshots" / f"step{record['step']:07d}.pt")

    return train(
        config,
        epoch_batches,
        run_dir / "checkpoint.pt",
        val_batches=val_batches,
        on_checkpoint=keep_snapshot,
    )
