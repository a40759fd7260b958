"""``local``: an offline hull from every Materials-Project-derived row crysray can read.

Each row of the MP-derived splits (MP-20 pilot train/val/test, the MP-20 binary/ternary val
rows, MPTS-52 val) gives two points on the Materials Project's scale:

* the material itself, at its DFT formation energy;
* the hull point E_form - E_hull at its composition: ``e_above_hull`` says how far the
  Materials Project's hull lies below the material, so the hull's own energy at that
  composition is known exactly even when the competing phases are not in the data.

Energies become totals with the Materials Project's elemental entries (the same end points as
the ``mp`` hull), so both references answer the same question on the same scale. The rows'
compositions are cached as Parquet, keyed by the files' sha256 (MPTS-52 has only CIFs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry

from crysray.atomic import atomic_path
from crysray.filter.energy import ElementalReferences, load_elemental_references
from crysray.filter.hull import IndexedHull
from crysray.paths import default_cache_dir

logger = logging.getLogger("crysray.filter")

LOCAL_SOURCES = (
    ("mp_20_pilot", "train"),
    ("mp_20_pilot", "val"),
    ("mp_20_pilot", "test"),
    ("mp_20_biternary", "val"),
    ("mpts_52", "val"),
)
ROWS_VERSION = "local-hull-rows-1"


def default_local_sources() -> list[Path]:
    from crysray.resources import dataset_file

    return [dataset_file(name, split) for name, split in LOCAL_SOURCES]


class LocalHull(IndexedHull):
    name = "local"

    def __init__(self, rows: pd.DataFrame, references: ElementalReferences, sources=()):
        self.rows = rows
        self.sources = [str(s) for s in sources]
        super().__init__(local_entries(rows, references))

    @classmethod
    def build(
        cls,
        sources: Sequence[str | os.PathLike] | None = None,
        *,
        exclude: Iterable[str] = (),
        cache_dir: str | os.PathLike | None = None,
        references: ElementalReferences | None = None,
    ) -> LocalHull:
        """The hull of ``sources`` (default ``LOCAL_SOURCES``) without the ``exclude`` ids."""
        paths = [Path(p) for p in (sources or default_local_sources())]
        rows = hull_rows(paths, cache_dir)
        rows = rows[~rows["material_id"].isin(set(exclude))]
        return cls(rows, references or load_elemental_references(), paths)

    def describe(self) -> dict:
        return {**super().describe(), "materials": len(self.rows), "sources": self.sources}


def local_entries(rows: pd.DataFrame, references: ElementalReferences) -> list[ComputedEntry]:
    """Material and implied hull point per row, plus the elemental end points."""
    entries = [
        ComputedEntry(Composition(el), energy, entry_id=f"mp-elemental-reference:{el}")
        for el, energy in references.energies.items()
    ]
    for row in rows.itertuples(index=False):
        composition = Composition(row.formula)
        if not references.covers(composition) or not np.isfinite(row.formation_energy_per_atom):
            continue
        n = composition.num_atoms
        elements = sum(k * references.energies[el.symbol] for el, k in composition.items())
        total = elements + row.formation_energy_per_atom * n
        entries.append(ComputedEntry(composition, total, entry_id=row.material_id))
        if np.isfinite(row.e_above_hull) and row.e_above_hull > 0:
            hull = total - row.e_above_hull * n
            entries.append(ComputedEntry(composition, hull, entry_id=f"{row.material_id}:hull"))
    return entries


def hull_rows(paths: list[Path], cache_dir=None) -> pd.DataFrame:
    """material_id, formula, formation_energy_per_atom, e_above_hull of every row (cached)."""
    blobs = [p.read_bytes() for p in paths]
    digest = hashlib.sha256(ROWS_VERSION.encode())
    for blob in blobs:
        digest.update(hashlib.sha256(blob).digest())
    cache = (
        Path(cache_dir or default_cache_dir()) / "hull-local" / f"{digest.hexdigest()[:24]}.parquet"
    )
    if cache.is_file():
        return pq.read_table(cache).to_pandas()
    frames = [_rows_of(path, blob) for path, blob in zip(paths, blobs)]
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("material_id", ignore_index=True)
    try:
        with atomic_path(cache) as tmp:
            pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp)
    except OSError as e:  # a read-only cache must not stop a run
        logger.warning("could not cache %s: %s", cache, e)
    return rows


def _rows_of(path: Path, blob: bytes) -> pd.DataFrame:
    raw = gzip.decompress(blob) if path.name.endswith(".gz") else blob
    frame = pd.read_csv(io.BytesIO(raw), dtype={"material_id": str})
    hull_column = "e_above_hull" if "e_above_hull" in frame else "energy_above_hull"
    if "formation_energy_per_atom" not in frame or hull_column not in frame:
        raise ValueError(f"{path}: no formation_energy_per_atom / e_above_hull columns")
    if "pretty_formula" in frame:
        formulas = frame["pretty_formula"].tolist()
    else:
        formulas = [_formula_of_cif(cif) for cif in frame["cif"]]
    out = pd.DataFrame(
        {
            "material_id": frame["material_id"].astype(str),
            "formula": formulas,
            "formation_energy_per_atom": frame["formation_energy_per_atom"].astype(float),
            "e_above_hull": frame[hull_column].astype(float),
        }
    )
    bad = out["formula"].isna()
    if bad.any():
        logger.warning("%s: skipped %d rows without a readable composition", path, int(bad.sum()))
    return out[~bad]


def _formula_of_cif(cif) -> str | None:
    from crysray.structures import parse_cif

    try:
        return parse_cif(cif).composition.reduced_formula
    except (ValueError, TypeError):
        return None
