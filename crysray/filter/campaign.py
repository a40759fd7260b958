"""The funnel over a sampling campaign, one work unit at a time (no Ray here).

For every ``data/unit-*.parquet`` written by a sampling run, ``FunnelUnitWorker`` writes
``funnel/unit-*.parquet``: the same rows with the per-row stages (structure, composition,
novelty, relaxation, hull) added, atomically and named by unit, so reruns skip finished units
exactly as sampling does. Uniqueness needs the whole run, so ``finalize_run`` decides it at the
end, comparing crystals only inside groups of equal reduced formula (near-linear cost), and
writes ``funnel/unique.parquet`` and ``funnel/summary.json``. The run may be a local directory or
an object-storage URL (crysray.storage); the funnel's files go next to the samples.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crysray.filter.actor import StabilityFunnel
from crysray.filter.config import FunnelConfig
from crysray.filter.counts import STAGES, bools, funnel_counts
from crysray.filter.uniqueness import uniqueness
from crysray.sample.campaign import RunDirectoryError, finished_units, unit_key, unit_name, unit_of
from crysray.sample.schema import read_samples, rows_to_structures
from crysray.storage import Location, Storage, storage_of

FUNNEL_DIR = "funnel"
FUNNEL_MANIFEST = "manifest.json"
PER_UNIT_STAGES = tuple(s for s in STAGES if s != "unique")


def funnel_key(unit: int) -> str:
    return f"{FUNNEL_DIR}/{unit_name(unit)}"


def open_funnel(run_dir: Location, config: FunnelConfig, hull: dict) -> None:
    """Record the funnel settings and hull in ``funnel/manifest.json``; refuse other settings.

    Per-unit funnel files of one run must come from one configuration, or the run-wide
    counts would mix hulls; a rerun with the same settings resumes.
    """
    store = storage_of(run_dir)
    key = f"{FUNNEL_DIR}/{FUNNEL_MANIFEST}"
    if store.exists(key):
        saved = json.loads(store.read_text(key))["config"]
        if saved != config.as_dict():
            changed = sorted(k for k in saved.keys() | config.as_dict().keys()
                             if saved.get(k) != config.as_dict().get(k))  # fmt: skip
            raise RunDirectoryError(
                f"{store} was filtered with other funnel settings ({', '.join(changed)}); "
                "rerun with the same settings or filter a copy"
            )
        return
    store.write_text(key, json.dumps({"config": config.as_dict(), "hull": hull}, indent=1))


def read_funnel_manifest(run_dir: Location) -> dict:
    return json.loads(storage_of(run_dir).read_text(f"{FUNNEL_DIR}/{FUNNEL_MANIFEST}"))


class FunnelUnitWorker:
    """One funnel replica (potential, hull reference, training set loaded once)."""

    def __init__(self, run_dir: str, config: dict, torch_threads: int | None = None):
        self.store = Storage(run_dir)
        self.store.make_dir(FUNNEL_DIR)
        self.funnel = StabilityFunnel(
            FunnelConfig(**config), stages=PER_UNIT_STAGES, torch_threads=torch_threads
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Filters the batch's units; passes the batch through (e.g. sampling summaries)."""
        for unit in batch["unit"]:
            self.run_unit(int(unit))
        return batch

    def run_unit(self, unit: int) -> str | None:
        """The unit's funnel file (its key), or None when sampling gave the unit up."""
        out = funnel_key(unit)
        if not self.store.exists(unit_key(unit)):  # sampling gave this unit up
            return None
        if not self.store.exists(out):  # else done by an earlier attempt
            samples = read_samples([self.store.path(unit_key(unit))], filesystem=self.store.fs)
            self.store.write_table(out, self.funnel(samples))
        return out


def sampled_units(run_dir: Location) -> list[int]:
    return finished_units(run_dir)


def filtered_units(run_dir: Location) -> list[int]:
    return [unit_of(n) for n in storage_of(run_dir).list_names(FUNNEL_DIR, "unit-", ".parquet")]


def pending_funnel_units(run_dir: Location) -> list[int]:
    store = storage_of(run_dir)
    done = set(filtered_units(store))
    return [u for u in sampled_units(store) if u not in done]


def finalize_run(run_dir: Location) -> dict:
    """Run-wide uniqueness, S.U.N. and counts over the finished per-unit funnel files."""
    store = storage_of(run_dir)
    table = funnel_table(store)
    unique, duplicate_of = run_uniqueness(table)
    decided = pa.table(
        {
            "sample_id": table["sample_id"],
            "unique": unique,
            "duplicate_of": pa.array(duplicate_of, pa.string()),
        }
    )
    store.write_table(f"{FUNNEL_DIR}/unique.parquet", decided)
    full = with_uniqueness(table, unique)
    counts = funnel_counts(full)
    store.write_text(f"{FUNNEL_DIR}/summary.json", json.dumps(counts, indent=1))
    return counts


def funnel_table(run_dir: Location) -> pa.Table:
    """All per-unit funnel rows of a run (without the run-wide uniqueness columns)."""
    store = storage_of(run_dir)
    return store.dataset([funnel_key(u) for u in filtered_units(store)]).to_table()


def with_uniqueness(table: pa.Table, unique) -> pa.Table:
    """Funnel rows plus the run-wide ``unique`` flag and ``sun`` (stable, unique, novel)."""
    table = table.append_column("unique", pa.array(unique))
    if "novel" in table.column_names and "stable" in table.column_names:
        sun = bools(table["stable"]) & bools(table["novel"]) & np.asarray(unique, dtype=bool)
        table = table.append_column("sun", pa.array(sun))
    return table


def run_uniqueness(table: pa.Table) -> tuple[np.ndarray, list[str | None]]:
    """Uniqueness among structurally valid rows, in sample order, grouped by reduced formula."""
    valid = bools(table["pass_structure"])
    order = np.argsort(
        np.asarray(table["sample_id"].to_pylist(), dtype=object).astype(str), kind="stable"
    )
    unique = np.zeros(table.num_rows, dtype=bool)
    duplicate_of: list[str | None] = [None] * table.num_rows
    groups = defaultdict(list)
    for i, formula in zip(order, pc.take(table["formula"], pa.array(order)).to_pylist()):
        if valid[i]:
            groups[formula].append(int(i))
    ids = table["sample_id"].to_pylist()
    for rows in groups.values():
        structures = rows_to_structures(table.take(rows))
        flags, dups = uniqueness(structures, [ids[i] for i in rows])
        for i, flag, dup in zip(rows, flags, dups):
            unique[i], duplicate_of[i] = bool(flag), dup
    return unique, duplicate_of
