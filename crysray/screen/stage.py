"""The tiered funnel over a sampled campaign, in resumable work units (no Ray here).

Sampling writes the k samples of a composition into many units (compositions cycle through
the sample indices), while the tiers compare the samples of one composition with each other.
``regroup`` therefore reads the finished samples once and writes one input file per screening
unit, ``screen/_input/unit-N.parquet``: ``formulas_per_unit`` reduced formulas each, in sorted
order, so the units of a run are the same on every rerun. ``ScreenUnitWorker`` turns an input
into ``screen/unit-N.parquet`` (the rows with the tier columns, crysray.screen.tiers),
written atomically and skipped once it exists: a rerun, or a retried task, does only what is
missing. (Regrouping holds the structure columns of the run in one process: a few hundred
bytes per crystal, fine up to millions of samples.)
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc
import torch

from crysray.filter.config import FunnelConfig
from crysray.sample.campaign import finished_units, unit_key, unit_name, unit_of
from crysray.sample.schema import read_samples
from crysray.screen.config import ScreenConfig
from crysray.screen.tiers import Models, screen_formula, tier_counts
from crysray.storage import Location, Storage, storage_of

SCREEN_DIR = "screen"
INPUT_DIR = f"{SCREEN_DIR}/_input"
COUNTS_DIR = f"{SCREEN_DIR}/_counts"


def input_key(unit: int) -> str:
    return f"{INPUT_DIR}/{unit_name(unit)}"


def output_key(unit: int) -> str:
    return f"{SCREEN_DIR}/{unit_name(unit)}"


def regroup(run_dir: Location, screen: ScreenConfig) -> list[int]:
    """Write the screening units' inputs that are missing; all the run's screening units."""
    store = storage_of(run_dir)
    samples = read_samples([store.path(unit_key(u)) for u in finished_units(store)],
                           filesystem=store.fs)  # fmt: skip
    formulas = sorted(set(samples["formula"].to_pylist()))
    units = list(range(-(-len(formulas) // screen.formulas_per_unit)))
    store.make_dir(INPUT_DIR)
    for unit in units:
        if store.exists(input_key(unit)) or store.exists(output_key(unit)):
            continue
        mine = formulas[unit * screen.formulas_per_unit : (unit + 1) * screen.formulas_per_unit]
        rows = samples.filter(pc.is_in(samples["formula"], pa.array(mine)))
        rows = rows.take(
            pc.sort_indices(rows, [("formula", "ascending"), ("sample_id", "ascending")])
        )
        store.write_table(input_key(unit), rows)
    return units


def _counts_key(unit: int) -> str:
    return f"{COUNTS_DIR}/{unit_name(unit).removesuffix('.parquet')}.json"


def screened_units(run_dir: Location) -> list[int]:
    return [unit_of(n) for n in storage_of(run_dir).list_names(SCREEN_DIR, "unit-", ".parquet")]


class ScreenUnitWorker:
    """One screening replica: potential, hull and known materials loaded once.

    Args:
        run_dir: the campaign's location (absolute path or URL).
        screen, funnel: ``as_dict()`` of the campaign's ScreenConfig and FunnelConfig.
        known_paths: CSV splits of known materials (novelty); hull_exclude: material ids left
            out of the hull and the known materials; exclude_chemsys: their chemical systems.
        progress: an object whose ``add(rows)`` counts rows screened, or None.
    """

    def __init__(self, run_dir: str, screen: dict, funnel: dict, known_paths=(),
                 hull_exclude=(), torch_threads: int | None = None, progress=None):  # fmt: skip
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.store, self.progress = Storage(run_dir), progress
        self.screen, self.funnel = ScreenConfig(**screen), FunnelConfig(**funnel)
        self.models = load_models(self.funnel, known_paths, hull_exclude)

    def __call__(self, batch: dict) -> dict:
        for unit in batch["unit"]:
            self.run_unit(int(unit))
        return batch

    def run_unit(self, unit: int) -> str:
        out = output_key(unit)
        if self.store.exists(out):
            return out
        rows = self.store.read_table(input_key(unit))
        start = time.perf_counter()
        parts, seconds = [], {}
        for formula in sorted(set(rows["formula"].to_pylist())):
            group = rows.filter(pc.equal(rows["formula"], formula))
            parts.append(screen_formula(group, self.screen, self.funnel, self.models, seconds))
            if self.progress is not None:
                self.progress.add(group.num_rows)
        table = pa.concat_tables(parts)
        counts = {**tier_counts(table), "seconds": time.perf_counter() - start,
                  "tier_seconds": seconds}  # fmt: skip
        self.store.make_dir(COUNTS_DIR)
        self.store.write_text(_counts_key(unit), json.dumps(counts))
        self.store.write_table(out, table)
        return out


def load_models(funnel: FunnelConfig, known_paths=(), hull_exclude=()) -> Models:
    """Potential, hull (without ``hull_exclude``), MP elemental references, known materials."""
    from crysray.filter.energy import load_elemental_references, require_mp_compatible
    from crysray.filter.potential import load_potential, model_name
    from crysray.screen.known import known_materials

    potential = load_potential(funnel.potential)
    require_mp_compatible(model_name(potential))
    excluded = dict(hull_exclude or {})
    known = known_materials(known_paths, excluded, funnel.cache_dir) if known_paths else None
    return Models(potential, campaign_hull(funnel, excluded), load_elemental_references(), known)


def campaign_hull(funnel: FunnelConfig, hull_exclude=()):
    """The funnel's hull, without the materials of ``hull_exclude`` ({material_id: formula})."""
    from pymatgen.core import Composition

    from crysray.filter.hull import ExcludingHull, chemsys_of
    from crysray.filter.hulls import open_hull

    hull = open_hull(funnel)
    excluded = dict(hull_exclude or {})
    if not excluded:
        return hull
    systems = {chemsys_of(Composition(f)) for f in excluded.values()}
    return ExcludingHull(hull, excluded, systems)


SECONDS = f"{SCREEN_DIR}/_seconds.json"


def add_seconds(run_dir: Location, stage: str, seconds: float) -> dict:
    """Add a stage's wall time to the campaign's record (a resumed campaign adds only the
    time of the work it did); returns every stage's total so far."""
    store = storage_of(run_dir)
    total = json.loads(store.read_text(SECONDS)) if store.exists(SECONDS) else {}
    total[stage] = total.get(stage, 0.0) + seconds
    store.make_dir(SCREEN_DIR)
    store.write_text(SECONDS, json.dumps(total))
    return total


def screen_counts(run_dir: Location) -> dict:
    """The tier counts of every screened unit, added up."""
    store = storage_of(run_dir)
    total: dict = {}
    for name in store.list_names(COUNTS_DIR, "unit-", ".json"):
        _add(total, json.loads(store.read_text(f"{COUNTS_DIR}/{name}")))
    return total


def _add(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


def screened_table(run_dir: Location, columns=None) -> pa.Table:
    store = storage_of(run_dir)
    return store.dataset([output_key(u) for u in screened_units(store)]).to_table(columns=columns)
