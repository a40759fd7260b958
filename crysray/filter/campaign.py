"""The funnel over a sampling campaign directory, one work unit at a time (no Ray here).

For every ``data/unit-*.parquet`` written by a sampling run, ``FunnelUnitWorker`` writes
``funnel/unit-*.parquet``: the same rows with the per-row stages (structure, composition,
novelty, relaxation, hull) added, atomically and named by unit, so reruns skip finished units
exactly as sampling does. Uniqueness needs the whole run, so ``finalize_run`` decides it at the
end, comparing crystals only inside groups of equal reduced formula (near-linear cost), and
writes ``funnel/unique.parquet`` and ``funnel/summary.json``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from crysray.atomic import atomic_path, write_text_atomic
from crysray.filter.actor import StabilityFunnel
from crysray.filter.config import FunnelConfig
from crysray.filter.counts import STAGES, bools, funnel_counts
from crysray.filter.uniqueness import uniqueness
from crysray.sample.campaign import DATA_DIR, RunDirectoryError, unit_path
from crysray.sample.schema import read_samples, rows_to_structures

FUNNEL_DIR = "funnel"
FUNNEL_MANIFEST = "manifest.json"
PER_UNIT_STAGES = tuple(s for s in STAGES if s != "unique")


def funnel_path(run_dir: Path, unit: int) -> Path:
    return Path(run_dir) / FUNNEL_DIR / unit_path(run_dir, unit).name


def open_funnel(run_dir: str | Path, config: FunnelConfig, hull: dict) -> None:
    """Record the funnel settings and hull in ``funnel/manifest.json``; refuse other settings.

    Per-unit funnel files of one run must come from one configuration, or the run-wide
    counts would mix hulls; a rerun with the same settings resumes.
    """
    path = Path(run_dir) / FUNNEL_DIR / FUNNEL_MANIFEST
    if path.is_file():
        saved = json.loads(path.read_text())["config"]
        if saved != config.as_dict():
            changed = sorted(k for k in saved.keys() | config.as_dict().keys()
                             if saved.get(k) != config.as_dict().get(k))  # fmt: skip
            raise RunDirectoryError(
                f"{run_dir} was filtered with other funnel settings ({', '.join(changed)}); "
                "rerun with the same settings or filter a copy"
            )
        return
    write_text_atomic(path, json.dumps({"config": config.as_dict(), "hull": hull}, indent=1))


def read_funnel_manifest(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / FUNNEL_DIR / FUNNEL_MANIFEST).read_text())


class FunnelUnitWorker:
    """One funnel replica (potential, hull reference, training set loaded once)."""

    def __init__(self, run_dir: str, config: dict, torch_threads: int | None = None):
        self.run_dir = Path(run_dir)
        (self.run_dir / FUNNEL_DIR).mkdir(exist_ok=True)
        self.funnel = StabilityFunnel(
            FunnelConfig(**config), stages=PER_UNIT_STAGES, torch_threads=torch_threads
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Filters the batch's units; passes the batch through (e.g. sampling summaries)."""
        for unit in batch["unit"]:
            self.run_unit(int(unit))
        return batch

    def run_unit(self, unit: int) -> Path | None:
        out = funnel_path(self.run_dir, unit)
        if not unit_path(
            self.run_dir, unit
        ).exists():  # sampling gave this unit up: nothing to filter
            return None
        if not out.exists():  # done by an earlier attempt
            table = self.funnel(read_samples([unit_path(self.run_dir, unit)]))
            with atomic_path(out) as tmp:
                pq.write_table(table, tmp)
        return out


def sampled_units(run_dir: str | Path) -> list[int]:
    return sorted(
        int(p.stem.split("-")[1]) for p in (Path(run_dir) / DATA_DIR).glob("unit-*.parquet")
    )


def pending_funnel_units(run_dir: str | Path) -> list[int]:
    return [u for u in sampled_units(run_dir) if not funnel_path(Path(run_dir), u).exists()]


def finalize_run(run_dir: str | Path) -> dict:
    """Run-wide uniqueness, S.U.N. and counts over the finished per-unit funnel files."""
    run_dir = Path(run_dir)
    table = funnel_table(run_dir)
    unique, duplicate_of = run_uniqueness(table)
    decided = pa.table(
        {
            "sample_id": table["sample_id"],
            "unique": unique,
            "duplicate_of": pa.array(duplicate_of, pa.string()),
        }
    )
    with atomic_path(run_dir / FUNNEL_DIR / "unique.parquet") as tmp:
        pq.write_table(decided, tmp)
    full = with_uniqueness(table, unique)
    counts = funnel_counts(full)
    write_text_atomic(run_dir / FUNNEL_DIR / "summary.json", json.dumps(counts, indent=1))
    return counts


def funnel_table(run_dir: str | Path) -> pa.Table:
    """All per-unit funnel rows of a run (without the run-wide uniqueness columns)."""
    files = sorted((Path(run_dir) / FUNNEL_DIR).glob("unit-*.parquet"))
    return ds.dataset([str(f) for f in files], format="parquet").to_table()


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
