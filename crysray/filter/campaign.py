"""The funnel over a sampling campaign, one work unit at a time (no Ray here).

For every ``data/unit-*.parquet`` written by a sampling run, ``FunnelUnitWorker`` writes
``funnel/unit-*.parquet``: the same rows with the per-row stages (structure, composition,
novelty, relaxation, hull) added, atomically and named by unit, so reruns skip finished units
exactly as sampling does. Uniqueness needs the whole run, so ``finalize_run`` decides it at the
end, comparing crystals only inside groups of equal reduced formula (near-linear cost; one
``decide_formula_group`` call per group, in this process or in a Ray Data stage of
crysray.distributed), and writes shards of decisions under ``funnel/_unique/`` and
``funnel/_summary.json``. The run may be a local directory or an object-storage URL
(crysray.storage); the funnel's files go next to the samples.

Everything in ``funnel/`` that is not a row of the funnel starts with ``_``, which Parquet
readers skip, so ``pandas.read_parquet(run / "funnel")`` reads exactly the funnel's rows. Runs
filtered before that hold ``manifest.json``, ``summary.json`` and ``unique/`` instead; they are
still read (and resumed).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crysray.filter.actor import StabilityFunnel
from crysray.filter.config import FunnelConfig
from crysray.filter.counts import FLAGS, STAGES, bools, funnel_counts
from crysray.filter.uniqueness import uniqueness
from crysray.sample.campaign import RunDirectoryError, finished_units, unit_key, unit_name, unit_of
from crysray.sample.schema import STRUCTURE_COLUMNS, read_samples
from crysray.storage import Location, Storage, storage_of
from crysray.structures import rows_to_structures

FUNNEL_DIR = "funnel"
FUNNEL_MANIFEST = "_manifest.json"
FUNNEL_SUMMARY = f"{FUNNEL_DIR}/_summary.json"
LEGACY_FUNNEL_MANIFEST = "manifest.json"
PER_UNIT_STAGES = tuple(s for s in STAGES if s != "unique")
UNIQUE_DIR = f"{FUNNEL_DIR}/_unique"  # decision shards: sample_id, unique, duplicate_of
LEGACY_UNIQUE_DIR = f"{FUNNEL_DIR}/unique"
LEGACY_UNIQUE_FILE = f"{FUNNEL_DIR}/unique.parquet"
DECISIONS = ("sample_id", "unique", "duplicate_of")
# what deciding a row needs: who it is, its group, whether it is a candidate, its structure
DECISION_INPUTS = ("sample_id", "formula", "pass_structure", *STRUCTURE_COLUMNS)
COUNTED_COLUMNS = ("relax_status", "hull_status", "hull_reference", "hull_reference_phases")


def funnel_key(unit: int) -> str:
    return f"{FUNNEL_DIR}/{unit_name(unit)}"


def open_funnel(run_dir: Location, config: FunnelConfig, hull: dict) -> None:
    """Record the funnel settings and hull in ``funnel/_manifest.json``; refuse other settings.

    Per-unit funnel files of one run must come from one configuration, or the run-wide
    counts would mix hulls; a rerun with the same settings resumes.
    """
    store = storage_of(run_dir)
    key = _funnel_manifest_key(store)
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
    store = storage_of(run_dir)
    return json.loads(store.read_text(_funnel_manifest_key(store)))


def _funnel_manifest_key(store: Storage) -> str:
    """Where this run's funnel manifest is (or goes): the legacy name if a run has it."""
    legacy = f"{FUNNEL_DIR}/{LEGACY_FUNNEL_MANIFEST}"
    return legacy if store.exists(legacy) else f"{FUNNEL_DIR}/{FUNNEL_MANIFEST}"


class FunnelUnitWorker:
    """One funnel replica (potential, hull reference, training set loaded once)."""

    def __init__(self, run_dir: str, config: dict, torch_threads: int | None = None,
                 progress=None):  # fmt: skip
        """``progress``: an object whose ``add(rows)`` counts rows filtered, or None."""
        self.store, self.progress = Storage(run_dir), progress
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
            report = self.progress.add if self.progress is not None else None
            self.store.write_table(out, self.funnel(samples, on_progress=report))
        return out


def sampled_units(run_dir: Location) -> list[int]:
    return finished_units(run_dir)


def filtered_units(run_dir: Location) -> list[int]:
    return [unit_of(n) for n in storage_of(run_dir).list_names(FUNNEL_DIR, "unit-", ".parquet")]


def pending_funnel_units(run_dir: Location) -> list[int]:
    store = storage_of(run_dir)
    done = set(filtered_units(store))
    return [u for u in sampled_units(store) if u not in done]


def finalize_run(run_dir: Location, decide_run=None) -> dict:
    """Run-wide uniqueness, S.U.N. and counts over the finished per-unit funnel files.

    ``decide_run(store) -> counts`` writes the decision shards under ``funnel/_unique/`` and
    returns the run's counts; the default decides in this process (``decide_run_locally``),
    crysray.distributed has the same decisions as a Ray Data stage for large runs.
    """
    store = storage_of(run_dir)
    clear_decisions(store)  # shards of an earlier finalize would be counted twice
    counts = (decide_run or decide_run_locally)(store)
    store.write_text(FUNNEL_SUMMARY, json.dumps(counts, indent=1))
    store.delete(f"{FUNNEL_DIR}/summary.json")  # a legacy run's summary is now out of date
    return counts


def decide_run_locally(store: Storage) -> dict:
    """All funnel rows in this process: one decision shard, the counts of the whole table."""
    table = funnel_table(store)
    unique, duplicate_of = run_uniqueness(table)
    decided = pa.table(
        {
            "sample_id": table["sample_id"],
            "unique": unique,
            "duplicate_of": pa.array(duplicate_of, pa.string()),
        }
    )
    store.make_dir(UNIQUE_DIR)
    store.write_table(f"{UNIQUE_DIR}/part-local.parquet", decided)
    return funnel_counts(with_uniqueness(table, unique))


def clear_decisions(store: Storage) -> None:
    for folder in (UNIQUE_DIR, LEGACY_UNIQUE_DIR):
        for name in store.list_names(folder, suffix=".parquet"):
            store.delete(f"{folder}/{name}")
    store.delete(LEGACY_UNIQUE_FILE)


def read_decisions(run_dir: Location, columns: list[str] | None = None) -> pa.Table | None:
    """The run-wide decisions (sample_id, unique, duplicate_of), None before finalize.

    Runs finalized before the decisions were sharded hold them in ``funnel/unique.parquet``,
    runs finalized before the ``_`` names in ``funnel/unique/``.
    """
    store = storage_of(run_dir)
    shards = [f"{folder}/{n}" for folder in (UNIQUE_DIR, LEGACY_UNIQUE_DIR)
              for n in store.list_names(folder, suffix=".parquet")]  # fmt: skip
    if shards:
        return store.dataset(shards).to_table(columns=columns)
    if store.exists(LEGACY_UNIQUE_FILE):
        return store.read_table(LEGACY_UNIQUE_FILE, columns=columns)
    return None


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


def uniqueness_columns(schema: pa.Schema) -> list[str]:
    """What run-wide uniqueness reads of the funnel files: the decision's inputs and what the
    counts need (columns the run lacks are left out, as ``funnel_counts`` leaves their stage)."""
    wanted = DECISION_INPUTS + tuple(FLAGS.values()) + COUNTED_COLUMNS
    return [c for c in dict.fromkeys(wanted) if c in schema.names]


def run_uniqueness(table: pa.Table) -> tuple[np.ndarray, list[str | None]]:
    """Uniqueness among structurally valid rows, grouped by reduced formula, in one process.

    Returns ``unique`` and ``duplicate_of`` aligned with ``table``'s rows; every formula group
    is decided by ``decide_formula_group``, as in the distributed stage.
    """
    unique = np.zeros(table.num_rows, dtype=bool)
    duplicate_of: list[str | None] = [None] * table.num_rows
    rows = table.select(list(DECISION_INPUTS)).append_column(
        "row", pa.array(np.arange(table.num_rows))
    )
    groups = defaultdict(list)
    valid = bools(table["pass_structure"])
    for i, formula in enumerate(table["formula"].to_pylist()):
        if valid[i]:
            groups[formula].append(i)
    for members in groups.values():
        decided = decide_formula_group(rows.take(members))
        for i, flag, dup in zip(*(decided[c].to_pylist() for c in ("row", *DECISIONS[1:]))):
            unique[i], duplicate_of[i] = flag, dup
    return unique, duplicate_of


def decide_formula_group(rows: pa.Table) -> pa.Table:
    """Uniqueness within one group of candidates sharing a reduced formula.

    Rows are put in sample_id order first (unique within a run), so the representative kept is
    the same whichever order the rows arrive in, on one process or from a shuffle. Returns the
    rows in that order with ``unique`` and ``duplicate_of`` (the kept row's sample_id) added.
    """
    rows = rows.take(pc.sort_indices(rows, sort_keys=[("sample_id", "ascending")]))
    unique, duplicate_of = uniqueness(rows_to_structures(rows), rows["sample_id"].to_pylist())
    return rows.append_column("unique", pa.array(unique, pa.bool_())).append_column(
        "duplicate_of", pa.array(duplicate_of, pa.string())
    )


def undecided_rows(rows: pa.Table) -> pa.Table:
    """The rows that are not candidates (no valid structure): never unique."""
    rows = rows.filter(pc.invert(pc.fill_null(rows["pass_structure"], False)))
    return rows.append_column("unique", pa.array(np.zeros(rows.num_rows, bool))).append_column(
        "duplicate_of", pa.nulls(rows.num_rows, pa.string())
    )


def candidate_rows(rows: pa.Table) -> pa.Table:
    return rows.filter(pc.fill_null(rows["pass_structure"], False))


def write_decision_shard(rows: pa.Table, store: Storage) -> dict:
    """Write decided rows' (sample_id, unique, duplicate_of) as one shard; return their counts.

    The shard is named by its rows, so a retried task overwrites its own shard.
    """
    ids = rows["sample_id"].to_pylist()
    name = hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:20]
    store.make_dir(UNIQUE_DIR)
    store.write_table(f"{UNIQUE_DIR}/part-{name}.parquet", rows.select(list(DECISIONS)))
    unique = bools(rows["unique"])
    return funnel_counts(with_uniqueness(rows.drop_columns(["unique", "duplicate_of"]), unique))
