"""Build (once) and cache the reference hull of crysray.filter.hull from dataset splits.

The reference crystals' MatGL energies are computed on their DFT-relaxed structures, either
as single points (``relax_steps=0``) or after a short batched relaxation, which puts them on
the same footing as relaxed generated crystals. ``mu`` is then fitted (``fit_element_energies``)
and everything is written as two Parquet files::

    <cache_dir>/hull-reference/<model>-<protocol>-<sha256 of the dataset files, [:16]>/
        entries.parquet   material_id, formula, num_atoms, formation_energy_per_atom (DFT),
                          e_above_hull (DFT, from the dataset), matgl_energy_per_atom
        mu.parquet        element, mu (eV/atom), n_entries

The directory is written under a temporary name and renamed, so concurrent builders (one per
Ray actor) never read a half-written cache. Build it once before starting many actors (they
would otherwise each spend the ~100 s single-thread build).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pymatgen.core import Composition

from crysray.data.csv import dataset_path
from crysray.paths import default_cache_dir
from crysray.filter.graphs import single_point_energies
from crysray.filter.hull import LinearHullReference, fit_element_energies
from crysray.filter.potential import model_name
from crysray.filter.relax import relax_batch
from crysray.structures import parse_cif, structure_to_arrays

logger = logging.getLogger("crysray.filter")


# MP-20 crystals that are not in the MP-20 test split (MP-20's splits share no material_id).
DEFAULT_DATASETS = (("mp_20_pilot", "train"), ("mp_20_pilot", "val"), ("mp_20_biternary", "val"))


def default_reference_paths() -> list[Path]:
    """The files of ``DEFAULT_DATASETS``, found by ``crysray.resources.dataset_file``."""
    return [dataset_path(name, split) for name, split in DEFAULT_DATASETS]


def build_reference(
    potential,
    datasets: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    relax_steps: int = 0,
    fmax: float = 0.05,
) -> LinearHullReference:
    """The reference hull for ``potential`` from CDVAE-format splits, from cache when possible.

    Args:
        datasets: one or more CSV(.gz) files with ``cif``, ``material_id`` and
            ``formation_energy_per_atom`` columns; a material_id seen in an earlier file is
            skipped. Default ``default_reference_paths()``.
        cache_dir: default ``crysray.paths.default_cache_dir()``.
        limit: use only the first ``limit`` rows of each file (tests, quick runs).
        relax_steps: 0 for single points on the given structures, else FIRE steps per crystal.
        fmax: force threshold of that relaxation, eV/A.
    """
    if datasets is None:
        paths = default_reference_paths()
    elif isinstance(datasets, (str, os.PathLike)):
        paths = [Path(datasets)]
    else:
        paths = [Path(p) for p in datasets]
    blobs = [p.read_bytes() for p in paths]
    digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blobs)).hexdigest()[:16]
    protocol = ("sp" if relax_steps == 0 else f"relax{relax_steps}-f{fmax:g}") + (
        f"-n{limit}" if limit else ""
    )
    folder = (
        (Path(cache_dir) if cache_dir else default_cache_dir())
        / "hull-reference"
        / (f"{model_name(potential)}-{protocol}-{digest}")
    )
    if (folder / "mu.parquet").is_file():
        return load_reference(folder)
    frames = [reference_entries(p, b, limit) for p, b in zip(paths, blobs)]
    entries = pd.concat(frames, ignore_index=True).drop_duplicates("material_id", ignore_index=True)
    entries["matgl_energy_per_atom"] = _energies_per_atom(potential, entries, relax_steps, fmax)
    entries = entries.drop(columns=["lattice", "frac_coords", "atomic_numbers"])
    mu = fit_element_energies(
        [Composition(f) for f in entries["formula"]],
        entries["matgl_energy_per_atom"].to_numpy(),
        entries["formation_energy_per_atom"].to_numpy(),
    )
    _write(
        folder,
        entries,
        mu,
        {
            "model": model_name(potential),
            "protocol": protocol,
            "datasets": ",".join(str(p) for p in paths),
        },
    )
    return LinearHullReference(
        mu=mu,
        formulas=entries["formula"].to_list(),
        formation_energy=entries["formation_energy_per_atom"].to_numpy(),
        model=model_name(potential),
    )


def reference_entries(path: Path, data: bytes, limit: int | None = None) -> pd.DataFrame:
    """One row per parsable crystal: ids, DFT energies and the structure as arrays."""
    raw = gzip.decompress(data) if path.name.endswith(".gz") else data
    frame = pd.read_csv(io.BytesIO(raw), dtype={"material_id": str}, nrows=limit)
    rows = []
    for row in frame.itertuples(index=False):
        try:
            structure = parse_cif(row.cif)
        except ValueError as e:
            logger.warning("%s: skipping %s (%s)", path, row.material_id, e)
            continue
        lattice, frac, z = structure_to_arrays(structure)
        rows.append(
            {
                "material_id": row.material_id,
                "formula": structure.composition.reduced_formula,
                "num_atoms": len(z),
                "formation_energy_per_atom": float(row.formation_energy_per_atom),
                "e_above_hull": float(getattr(row, "e_above_hull", np.nan)),
                "lattice": lattice,
                "frac_coords": frac,
                "atomic_numbers": z,
            }
        )
    return pd.DataFrame(rows)


def _energies_per_atom(
    potential, entries: pd.DataFrame, relax_steps: int, fmax: float
) -> np.ndarray:
    lattices = np.stack(entries["lattice"].to_list())
    fracs, numbers = entries["frac_coords"].to_list(), entries["atomic_numbers"].to_list()
    if relax_steps == 0:
        energy = single_point_energies(potential, lattices, fracs, numbers)
    else:
        result = relax_batch(potential, lattices, fracs, numbers, fmax=fmax, max_steps=relax_steps)
        # A reference that did not fully converge in a short run is still close to its minimum.
        bad = np.isin(result.status, ["nan", "exploded", "unsupported_element"])
        energy = np.where(bad, np.nan, result.energy)
    return energy / entries["num_atoms"].to_numpy()


def load_reference(folder: str | os.PathLike) -> LinearHullReference:
    """Read a reference written by ``build_reference``."""
    folder = Path(folder)
    entries = pq.read_table(folder / "entries.parquet")
    mu_table = pq.read_table(folder / "mu.parquet")
    meta = {k.decode(): v.decode() for k, v in (mu_table.schema.metadata or {}).items()}
    mu = dict(zip(mu_table["element"].to_pylist(), mu_table["mu"].to_pylist()))
    return LinearHullReference(
        mu=mu,
        formulas=entries["formula"].to_pylist(),
        formation_energy=entries["formation_energy_per_atom"].to_numpy(),
        model=meta.get("model", "unknown"),
    )


def _write(folder: Path, entries: pd.DataFrame, mu: dict[str, float], meta: dict[str, str]) -> None:
    counts = {el: 0 for el in mu}
    for formula in entries["formula"]:
        for el in Composition(formula).elements:
            counts[el.symbol] = counts.get(el.symbol, 0) + 1
    mu_table = pa.table(
        {
            "element": list(mu),
            "mu": list(mu.values()),
            "n_entries": [counts.get(el, 0) for el in mu],
        }
    )
    metadata = {k.encode(): v.encode() for k, v in meta.items()}
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(entries, preserve_index=False), tmp / "entries.parquet")
        pq.write_table(mu_table.replace_schema_metadata(metadata), tmp / "mu.parquet")
        os.replace(tmp, folder)
    except OSError as e:  # another process won the race, or the cache is read-only
        logger.warning("could not write reference cache %s: %s", folder, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
