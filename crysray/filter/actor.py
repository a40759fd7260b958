"""``StabilityFunnel``: the funnel as a callable class for Ray Data ``map_batches``.

``__init__`` loads the potential, the hull reference and the training set once per actor;
``__call__`` maps a pyarrow batch to the same rows with the funnel columns added. No Ray
import here (house style: jobs/ own the Ray calls), e.g.::

    ds.map_batches(StabilityFunnel, batch_format="pyarrow", batch_size=256, concurrency=4,
                   num_gpus=1, fn_constructor_kwargs={"config": FunnelConfig(hull="mp")})

The hull is opened from its cache only (``crysray.filter.hulls.prepare_hull`` fills it once on
the driver), so actors never talk to the Materials Project. Uniqueness is decided inside each
batch; for a whole run, see crysray.filter.campaign.finalize_run (and its distributed stage,
crysray.distributed.decide_run_distributed).
"""

from __future__ import annotations

import pyarrow as pa
import torch

from crysray.filter.config import FunnelConfig
from crysray.filter.funnel import STAGES, run_funnel


class StabilityFunnel:
    """Load once, then ``table -> table`` (see crysray.filter.funnel for the columns).

    Args:
        config: the funnel settings (a FunnelConfig or its ``as_dict()``).
        stages: which stages run (STAGES order).
        torch_threads: intra-op threads of this actor (None leaves torch's default).
    """

    def __init__(
        self,
        config: FunnelConfig | dict | None = None,
        *,
        stages: tuple[str, ...] = STAGES,
        torch_threads: int | None = None,
    ):
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        if not isinstance(config, FunnelConfig):
            config = FunnelConfig(**(config or {}))
        self.config, self.stages = config, stages
        self.potential = self.hull = self.references = self.training = None
        if "relax" in stages:
            from crysray.filter.potential import load_potential

            self.potential = load_potential(config.potential)
        if "hull" in stages:
            self._open_hull()
        if "novel" in stages and config.training_dataset:
            self.training = _training_set(config.training_dataset, config.cache_dir)
        self.last_counts: dict = {}

    def _open_hull(self) -> None:
        from crysray.filter.energy import load_elemental_references, require_mp_compatible
        from crysray.filter.hulls import open_hull
        from crysray.filter.potential import model_name

        require_mp_compatible(model_name(self.potential))
        self.hull = open_hull(self.config)
        self.references = load_elemental_references()

    def __call__(self, batch: pa.Table, on_progress=None) -> pa.Table:
        """``batch`` through the funnel; ``on_progress(rows)`` as rows are done."""
        table, self.last_counts = run_funnel(
            batch,
            self.config,
            potential=self.potential,
            hull=self.hull,
            references=self.references,
            training_structures=self.training,
            stages=self.stages,
            on_progress=on_progress,
        )
        return table


def _training_set(path, cache_dir):
    from crysray.data.csv import load_split
    from crysray.filter.uniqueness import TrainingSet

    return TrainingSet.from_table(load_split(path, cache_dir=cache_dir, workers=1))
