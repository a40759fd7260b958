"""``crysray-train``: train a method on one machine without Ray (``crysray ray-train`` adds Ray
Train).

Example (the shipped Perov-5 model)::

    crysray-train --config crysbfn_perov5 --run-dir runs/perov5 \
        --export checkpoints/crysbfn_perov5.pt \
        train.max_minutes=97 train.ema_decay=0.999 train.threads=1

Rerunning the same command resumes the run (or, once it is finished, only re-exports).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crysray.config import RunConfig
from crysray.data.csv import dataset_path, load_split
from crysray.data.dataset import CrystalTable
from crysray.methods.registry import fit_statistics
from crysray.train.checkpoint import export_inference
from crysray.train.loop import train


def prepare_config(config: RunConfig, train_table: CrystalTable) -> RunConfig:
    """Fill in the statistics that come from the training split."""
    return fit_statistics(config, train_table)


def load_dataset_splits(
    config: RunConfig, val_rows: int = 1024
) -> tuple[CrystalTable, CrystalTable]:
    """Training split and a fixed validation subset of the config's dataset."""
    train_table = load_split(dataset_path(config.data.dataset, "train"))
    val_table = load_split(dataset_path(config.data.dataset, "val"))
    return train_table, val_table.subset(range(min(val_rows, len(val_table))))


def run_local_training(config: RunConfig, run_dir: Path, snapshot_every: int = 2) -> dict:
    train_table, val_table = load_dataset_splits(config)
    config = prepare_config(config, train_table)
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


def train_main(argv: list[str] | None = None) -> int:
    """``crysray-train`` (also ``crysray train``)."""
    from crysray.command.common import HelpFormatter, finish
    from crysray.command.train import add_local_arguments, run_local

    parser = argparse.ArgumentParser(prog="crysray-train", description=__doc__,
                                     formatter_class=HelpFormatter)  # fmt: skip
    add_local_arguments(parser)
    return finish("crysray-train", run_local, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(train_main())
