"""``mp``: the Materials Project's GGA/GGA+U hull, fetched with mp-api and cached per system.

Cache layout (one Parquet file per *exact* chemical system, written atomically; an empty file
records that the Materials Project has no entry there, so it is not asked again)::

    <cache>/mp/thermo-GGA_GGA+U/<chemsys>.parquet
        material_id, entry_id, composition (cell formula), energy (corrected, eV per cell),
        uncorrected_energy (eV), energy_above_hull, formation_energy_per_atom (MP's, eV/atom)

The driver calls ``MPHull.prepare`` once per run with every chemical system the run needs;
it fetches only what the cache lacks. Actors open ``MPHull`` and read the cache only: a cache
hit never touches the network, and a system missing from the cache is an error that names it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from crysray import mp
from crysray.atomic import atomic_path
from crysray.filter.hull import HullReference, chemsys_name, subsystems
from crysray.paths import default_cache_dir

logger = logging.getLogger("crysray.filter")

FIELDS = ["material_id", "chemsys", "entries", "energy_above_hull", "formation_energy_per_atom"]
CHEMSYS_PER_REQUEST = 100  # keeps the query string well inside URL length limits
SCHEMA = pa.schema(
    [
        ("material_id", pa.string()),
        ("entry_id", pa.string()),
        ("composition", pa.string()),
        ("energy", pa.float64()),
        ("uncorrected_energy", pa.float64()),
        ("energy_above_hull", pa.float64()),
        ("formation_energy_per_atom", pa.float64()),
    ]
)


class MissingReference(FileNotFoundError):
    """Chemical systems the cache does not hold (and that may not be fetched now)."""


class MPHull(HullReference):
    name = "mp"

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        super().__init__()
        self.folder = Path(cache_dir or default_cache_dir()) / "mp" / f"thermo-{mp.THERMO_TYPE}"

    def path(self, chemsys) -> Path:
        return self.folder / f"{chemsys_name(chemsys)}.parquet"

    def missing(self, chemsystems: Iterable) -> list[str]:
        """Names of the (sub)systems of ``chemsystems`` that are not cached."""
        needed = {sub for c in chemsystems for sub in subsystems(c)}
        return sorted(chemsys_name(c) for c in needed if not self.path(c).is_file())

    def prepare(
        self, chemsystems: Iterable, key: str | None = None, *, offline: bool = False
    ) -> dict:
        """Fetch what the cache lacks for ``chemsystems`` (one call per run, on the driver).

        Returns counts: systems needed, fetched, materials written, malformed records skipped.
        Raises MissingReference offline, MPError when the Materials Project cannot answer.
        """
        chemsystems = list(chemsystems)
        todo = self.missing(chemsystems)
        needed = len({sub for c in chemsystems for sub in subsystems(c)})
        counts = {"systems": needed, "fetched": 0, "materials": 0, "skipped_records": 0}
        if not todo:
            return counts
        if offline:
            raise MissingReference(self._missing_message(todo))
        key = mp.api_key(key)
        with mp.rester(key) as client:
            for start in range(0, len(todo), CHEMSYS_PER_REQUEST):
                chunk = todo[start : start + CHEMSYS_PER_REQUEST]
                docs = mp.search(client, "thermo", FIELDS, chemsys=chunk,
                                 thermo_types=[mp.THERMO_TYPE])  # fmt: skip
                written, skipped = self._store(chunk, docs)
                counts["fetched"] += len(chunk)
                counts["materials"] += written
                counts["skipped_records"] += skipped
        if counts["skipped_records"]:
            logger.warning("mp hull: skipped %d malformed records", counts["skipped_records"])
        return counts

    def _store(self, chunk: list[str], docs: list[dict]) -> tuple[int, int]:
        rows: dict[str, list[dict]] = {name: [] for name in chunk}
        skipped = 0
        for doc in docs:
            row = thermo_row(doc)
            if row is None or row[0] not in rows:
                skipped += 1
                continue
            rows[row[0]].append(row[1])
        for name, items in rows.items():
            table = pa.Table.from_pylist(items, schema=SCHEMA)
            with atomic_path(self.folder / f"{name}.parquet") as tmp:
                pq.write_table(table, tmp)
        return sum(map(len, rows.values())), skipped

    def entries(self, chemsys: frozenset[str]) -> list[ComputedEntry]:
        missing = self.missing([chemsys])
        if missing:
            raise MissingReference(self._missing_message(missing))
        out = []
        for sub in subsystems(chemsys):
            for row in pq.read_table(self.path(sub)).to_pylist():
                composition = Composition(row["composition"])
                out.append(ComputedEntry(composition, row["energy"], entry_id=row["entry_id"]))
        return out

    def cached_rows(self, chemsys) -> list[dict]:
        """The cached materials of exactly ``chemsys`` (with the Materials Project's E_hull)."""
        return pq.read_table(self.path(chemsys)).to_pylist()

    def describe(self) -> dict:
        return {"name": self.name, "thermo_type": mp.THERMO_TYPE, "cache": str(self.folder)}

    def _missing_message(self, names: list[str]) -> str:
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        return (
            f"the Materials Project hull cache {self.folder} lacks {len(names)} chemical "
            f"system(s): {shown}; run without --offline (with MP_API_KEY set) to fetch them"
        )


def thermo_row(doc: dict) -> tuple[str, dict] | None:
    """(chemsys, cache row) of one thermo document, or None if the record is malformed."""
    try:
        entries = doc["entries"]
        data = entries.get("GGA+U") or entries.get("GGA") or next(iter(entries.values()))
        entry = ComputedStructureEntry.from_dict(data)
        energy, composition = float(entry.energy), entry.composition
        chemsys = chemsys_name(el.symbol for el in composition.elements)
        if not math.isfinite(energy) or chemsys != doc.get("chemsys", chemsys):
            return None
        return chemsys, {
            "material_id": str(doc["material_id"]),
            "entry_id": str(entry.entry_id or doc["material_id"]),
            "composition": composition.formula,
            "energy": energy,
            "uncorrected_energy": float(entry.uncorrected_energy),
            "energy_above_hull": _float(doc.get("energy_above_hull")),
            "formation_energy_per_atom": _float(doc.get("formation_energy_per_atom")),
        }
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration):
        return None


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
