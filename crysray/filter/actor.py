"""``StabilityFunnel``: the funnel as a callable class for Ray Data ``map_batches``.

``__init__`` loads the potential, the hull reference and the training set once per actor;
``__call__`` maps a pyarrow batch to the same rows with the funnel columns added. No Ray
import here (house style: jobs/ own the Ray calls), e.g.::

    ds.map_batches(StabilityFunnel, batch_format="pyarrow", batch_size=256, concurrency=4,
                   num_gpus=1, fn_constructor_kwargs={"training_dataset": train_csv})

Uniqueness is decided inside each batch. For uniqueness across a whole run, group rows by
``formula`` first (e.g. ``ds.groupby("formula").map_groups(...)``) or call
``crysray.filter.uniqueness.uniqueness`` on the collected survivors.
"""

from __future__ import annotations

import os

import pyarrow as pa
import torch

from crysray.filter.funnel import STAGES, run_funnel
from crysray.filter.hull import STABLE_THRESHOLD
from crysray.filter.potential import load_potential
from crysray.filter.reference import build_reference


class StabilityFunnel:
    """Load once, then ``table -> table`` (see crysray.filter.funnel for the columns).

    Args:
        model: potential folder or name (``load_potential``; default the shared M3GNet-MP).
        training_dataset: CSV(.gz) split of known crystals for novelty; None skips novelty.
        reference_datasets: CSV(.gz) files for the hull (``build_reference``; None: default).
        cache_dir: where the reference and parsed splits are cached.
        stages, relax_steps, fmax, stable_threshold, max_atoms_per_batch: as ``run_funnel``.
        torch_threads: intra-op threads of this actor (None leaves torch's default).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        training_dataset: str | os.PathLike | None = None,
        reference_datasets=None,
        cache_dir: str | os.PathLike | None = None,
        stages: tuple[str, ...] = STAGES,
        relax_steps: int = 500,
        fmax: float = 0.05,
        stable_threshold: float = STABLE_THRESHOLD,
        max_atoms_per_batch: int = 2000,
        torch_threads: int | None = None,
    ):
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.potential = load_potential(model) if "relax" in stages else None
        self.reference = (
            build_reference(self.potential, reference_datasets, cache_dir=cache_dir)
            if "hull" in stages
            else None
        )
        self.training = _training_set(training_dataset, cache_dir) if "novel" in stages else None
        self.options = {
            "stages": stages,
            "relax_steps": relax_steps,
            "fmax": fmax,
            "stable_threshold": stable_threshold,
            "max_atoms_per_batch": max_atoms_per_batch,
        }
        self.last_counts: dict = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        table, self.last_counts = run_funnel(
            batch,
            potential=self.potential,
            reference=self.reference,
            training_structures=self.training,
            **self.options,
        )
        return table


def _training_set(path, cache_dir):
    if path is None:
        return None
    from crysray.data.csv import load_split
    from crysray.filter.uniqueness import TrainingSet

    return TrainingSet.from_table(load_split(path, cache_dir=cache_dir, workers=1))
