"""Sample a DNG checkpoint and score it with the DNG metrics (crysray.eval.dng).

python -m crysray.eval.run_dng --checkpoint my_dng_model.pt --num-samples 10000 --workers 2

Atom counts come from the checkpoint's training distribution; the test split is the reference
for coverage and Wasserstein distances, the training split for novelty. ``--sun-samples N``
also runs the first N crystals through the stability funnel (MatGL relaxation, offline
``local`` hull of Materials Project rows) and reports the S.U.N. rate: stable (converged,
E_hull <= 0.1 eV/atom), unique and novel, as a share of those N.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from crysray.data.csv import dataset_path, load_split
from crysray.eval.dng import dng_metrics
from crysray.eval.report import emit
from crysray.filter.actor import StabilityFunnel
from crysray.filter.config import FunnelConfig
from crysray.filter.uniqueness import TrainingSet
from crysray.sample.sampler import CrystalSampler, add_sampler_arguments, sampler_options_from_args
from crysray.sample.targets import AtomCountTargets
from crysray.structures import rows_to_structures


def evaluate_dng(
    checkpoint: str | Path,
    num_samples: int = 10_000,
    steps: int | None = None,
    batch_size: int = 512,
    seed: int = 0,
    workers: int = 1,
    sampler_options: dict | None = None,
    test_limit: int | None = None,
    sun_samples: int = 0,
) -> dict:
    """Generate ``num_samples`` crystals and compute the DNG table against the model's data."""
    probe = CrystalSampler(str(checkpoint), 1, sampler_options=sampler_options)
    config = probe.model.config
    if config.method.task != "dng":
        raise ValueError(f"{checkpoint} is a {config.method.task} model, not dng")
    steps = steps or probe.model.default_steps
    sampler = CrystalSampler(
        str(checkpoint), steps, batch_size=batch_size, sampler_options=sampler_options
    )
    targets = AtomCountTargets(config.data.num_atoms_counts)
    start = time.perf_counter()
    rows = sampler.sample_unit(0, seed, targets.for_unit(0, num_samples, seed, 0))
    seconds = time.perf_counter() - start
    test = load_split(dataset_path(config.data.dataset, "test"))
    if test_limit:
        test = test.subset(range(min(test_limit, len(test))))
    train_path = dataset_path(config.data.dataset, "train")
    train = TrainingSet.from_table(load_split(train_path))
    metrics = dng_metrics(
        rows_to_structures(rows), test.structures(), train, config.data.dataset, workers, seed
    )
    if sun_samples > 0:
        metrics.update(sun_rate(rows.slice(0, sun_samples), train_path))
    return {
        **metrics,
        "dataset": config.data.dataset,
        "steps": steps,
        "sampler_options": sampler.sampler_options,
        "network_evaluations": sampler.network_evaluations,
        "sampling_seconds": seconds,
        "crystals_per_second": num_samples / seconds,
        "checkpoint": str(checkpoint),
        "checkpoint_hash": sampler.checkpoint_hash,
    }


def sun_rate(rows: pa.Table, training_split: Path) -> dict:
    """The stability funnel on generated rows (offline ``local`` hull): the S.U.N. share of all
    rows; among the relaxed rows (only valid, unique and novel ones are relaxed) the stable
    share and mean E_hull of the converged ones; and the funnel counts."""
    funnel = StabilityFunnel(
        FunnelConfig(hull="local", offline=True, training_dataset=str(training_split))
    )
    start = time.perf_counter()
    out = funnel(rows)
    counts = funnel.last_counts
    status = out["relax_status"].to_pylist()  # null: not relaxed (failed a cheap stage)
    converged = np.array([s == "converged" for s in status])
    e_hull = out["e_above_hull"].to_numpy(zero_copy_only=False).astype(float)[converged]
    stable = e_hull <= funnel.config.stable_threshold
    return {
        "sun_samples": rows.num_rows,
        "sun_rate": counts["sun_fraction"],
        "relaxed": sum(s is not None for s in status),
        "stable_of_converged": float(stable.mean()) if len(e_hull) else float("nan"),
        "mean_e_above_hull": float(np.nanmean(e_hull)) if len(e_hull) else float("nan"),
        "funnel_counts": {k: counts[k] for k in ("passed", "funnel", "relax_status")},
        "funnel_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    from crysray.command.common import HelpFormatter

    parser = argparse.ArgumentParser(prog="crysray eval dng", description=__doc__,
                                     formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", required=True,
                        help="inference checkpoint (crysray-train --export), e.g. "
                        "checkpoints/crysbfn_perov5.pt")  # fmt: skip
    parser.add_argument("--num-samples", type=int, default=10_000, help="crystals to generate")
    parser.add_argument("--steps", type=int, default=None, help="default: the method's")
    add_sampler_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=512, help="crystals per network call")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--workers", type=int, default=1, help="processes for fingerprints")
    parser.add_argument(
        "--sun-samples",
        type=int,
        default=0,
        help="run this many of the samples through the stability funnel for the S.U.N. rate",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="append the result as a JSON line to this file (default: stdout "
                        "only)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num-samples must be >= 1")
    if not 0 <= args.sun_samples <= args.num_samples:
        parser.error("--sun-samples must be between 0 and --num-samples")
    return emit(
        "run_dng",
        lambda: evaluate_dng(
            args.checkpoint,
            args.num_samples,
            args.steps,
            args.batch_size,
            args.seed,
            args.workers,
            sampler_options_from_args(args),
            sun_samples=args.sun_samples,
        ),
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
