"""Sample a DNG checkpoint and score it with the DNG metrics (crysray.eval.dng).

python -m crysray.eval.run_dng --checkpoint my_dng_model.pt --num-samples 10000 --workers 2

Atom counts come from the checkpoint's training distribution; the test split is the reference
for coverage and Wasserstein distances, the training split for novelty.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from crysray.data.csv import dataset_path, load_split
from crysray.eval.dng import dng_metrics
from crysray.eval.report import emit
from crysray.filter.uniqueness import TrainingSet
from crysray.sample.sampler import CrystalSampler, add_sampler_arguments, sampler_options_from_args
from crysray.sample.schema import rows_to_structures
from crysray.sample.targets import AtomCountTargets


def evaluate_dng(
    checkpoint: str | Path,
    num_samples: int = 10_000,
    steps: int | None = None,
    batch_size: int = 512,
    seed: int = 0,
    workers: int = 1,
    sampler_options: dict | None = None,
    test_limit: int | None = None,
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
    train = TrainingSet.from_table(load_split(dataset_path(config.data.dataset, "train")))
    metrics = dng_metrics(
        rows_to_structures(rows), test.structures(), train, config.data.dataset, workers, seed
    )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=None, help="default: the method's")
    add_sampler_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes for fingerprints")
    parser.add_argument("--out", type=Path, default=None, help="append the result as a JSON line")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num-samples must be >= 1")
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
        ),
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
