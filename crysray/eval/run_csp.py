"""Sample a checkpoint on a dataset split and score it (CSP match rate / RMSE, docs E2).

Besides match rate and RMSE over matches it reports the tightness metrics of
``crysray.eval.csp``: ``tight_0.05`` / ``tight_0.1`` (share of crystals matched with RMSE below
0.05 / 0.1), ``rmse_all`` (RMSE over all crystals, unmatched ones counted at stol = 0.5) and
``close_atoms_share`` (generated structures with two atoms closer than 0.5 A).

python -m crysray.eval.run_csp --checkpoint checkpoints/crysbfn_perov5.pt --steps 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from crysray.data.csv import dataset_path, load_split
from crysray.eval.csp import match_rate_rmse
from crysray.eval.report import emit
from crysray.sample.compositions import table_compositions
from crysray.sample.sampler import CrystalSampler, add_sampler_arguments, sampler_options_from_args
from crysray.structures import rows_to_structures


def evaluate_csp(
    checkpoint: str | Path,
    dataset: str | None = None,
    split: str = "test",
    steps: int = 10,
    k: int = 1,
    batch_size: int = 512,
    seed: int = 0,
    limit: int | None = None,
    workers: int = 2,
    precision: str = "fp32",
    sampler_options: dict | None = None,
    subset: int | None = None,
) -> dict:
    """Sample k candidates per crystal of the split and score them against the split.

    ``limit`` keeps the first crystals of the split, ``subset`` a uniform random choice of that
    many (the same for every call: numpy seed 0), which estimates the full split's rates.
    ``dataset`` defaults to the one the checkpoint was trained on.
    """
    sampler = CrystalSampler(
        str(checkpoint),
        steps,
        batch_size=batch_size,
        precision=precision,
        sampler_options=sampler_options,
    )
    dataset = dataset or sampler.model.config.data.dataset
    table = load_split(dataset_path(dataset, split))
    if limit:
        table = table.subset(range(min(limit, len(table))))
    if subset and subset < len(table):
        table = table.subset(np.sort(np.random.default_rng(0).permutation(len(table))[:subset]))
    compositions = table_compositions(table)
    start = time.perf_counter()
    # candidate j of every crystal comes from work unit j
    candidates = [rows_to_structures(sampler.sample_unit(j, seed, compositions)) for j in range(k)]
    sampling_seconds = time.perf_counter() - start
    predictions = [[candidates[j][b] for j in range(k)] for b in range(len(table))]
    metrics = match_rate_rmse(predictions, table.structures(), workers=workers)
    return {
        **metrics,
        "steps": steps,
        "sampler_options": sampler.sampler_options,
        "network_evaluations": sampler.network_evaluations,
        "method": sampler.model.name,
        "precision": precision,
        "dataset": dataset,
        "split": split,
        "seed": seed,
        "sampling_seconds": sampling_seconds,
        "crystals_per_second": k * len(table) / sampling_seconds,
        "checkpoint": str(checkpoint),
        "checkpoint_hash": sampler.checkpoint_hash,
    }


def main(argv: list[str] | None = None) -> int:
    from crysray.command.common import HelpFormatter

    parser = argparse.ArgumentParser(prog="crysray eval csp", description=__doc__,
                                     formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", required=True,
                        help="inference checkpoint (crysray-train --export), e.g. "
                        "checkpoints/crysbfn_perov5.pt")  # fmt: skip
    parser.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    parser.add_argument("--split", default="test", help="dataset split to score against")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps (CrysBFN: N)")
    add_sampler_arguments(parser)
    parser.add_argument("--subset", type=int, default=None,
                        help="random SUBSET crystals only (default: all)")  # fmt: skip
    parser.add_argument("--k", type=int, default=1, help="candidates per crystal (@k)")
    parser.add_argument("--batch-size", type=int, default=512, help="crystals per network call")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--limit", type=int, default=None,
                        help="first LIMIT crystals only (default: all)")  # fmt: skip
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: backbone under bfloat16 autocast")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="processes for structure matching")
    parser.add_argument("--out", type=Path, default=None,
                        help="append the result as a JSON line to this file (default: stdout "
                        "only)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.steps < 1 or args.k < 1:
        parser.error("--steps and --k must be >= 1")
    return emit(
        "run_csp",
        lambda: evaluate_csp(
            args.checkpoint,
            args.dataset,
            args.split,
            args.steps,
            args.k,
            args.batch_size,
            args.seed,
            args.limit,
            args.workers,
            args.precision,
            sampler_options_from_args(args),
            args.subset,
        ),
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
