"""The Parquet contract of generated crystals: one row per crystal, versioned.

Columns (SCHEMA_VERSION 2):

| column | type | meaning |
|---|---|---|
| sample_id | string | ``{seed}-{work_unit}-{index}``: deterministic, unique within a run |
| work_unit | int64 | work unit that produced the row |
| source_id | string | CSP: id of the composition (e.g. material_id); DNG: "" |
| formula | string | reduced formula (pymatgen) |
| num_atoms | int32 | atoms in the cell |
| atomic_numbers | list<int16> | Z per atom |
| frac_coords | list<float64> | n*3 fractional coordinates, row-major, in [0, 1) |
| lattice | list<float64> | 9 entries of the 3x3 matrix, rows are lattice vectors, Angstrom |
| a, b, c | float64 | lattice lengths, Angstrom |
| alpha, beta, gamma | float64 | lattice angles, degrees |
| valid_structure | bool | struct-valid: finite lattice, volume >= 0.1 A^3, distances >= 0.5 A |
| method | string | generative method name |
| checkpoint_hash | string | sha256 prefix of the checkpoint file |
| steps | int32 | sampler steps (CrysBFN: N) |
| seed | int64 | run seed |
| sampler | string | sampler name (CrysBFN: end-back; KLDM: em or pc) (v2) |
| sampler_options | string | its other options as sorted JSON, e.g. `{"snr": 0.25}` (v2) |
| network_evaluations | int32 | network evaluations per crystal (v2) |

The schema version and the run configuration are also stored in the file metadata. Version 1
files (CrysBFN only, before the sampler columns) are read through ``read_samples``, which adds
the columns with the values those runs used: end-back sampling, no options, N evaluations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pymatgen.core import Composition

from crysray.storage import locate_files
from crysray.structures import rows_to_structures, structure_validity
from crysray.types import CrystalBatch

SCHEMA_VERSION = 2
# the columns a pymatgen Structure is built from
STRUCTURE_COLUMNS = ("atomic_numbers", "frac_coords", "lattice")

SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("work_unit", pa.int64()),
        ("source_id", pa.string()),
        ("formula", pa.string()),
        ("num_atoms", pa.int32()),
        ("atomic_numbers", pa.list_(pa.int16())),
        ("frac_coords", pa.list_(pa.float64())),
        ("lattice", pa.list_(pa.float64())),
        ("a", pa.float64()),
        ("b", pa.float64()),
        ("c", pa.float64()),
        ("alpha", pa.float64()),
        ("beta", pa.float64()),
        ("gamma", pa.float64()),
        ("valid_structure", pa.bool_()),
        ("method", pa.string()),
        ("checkpoint_hash", pa.string()),
        ("steps", pa.int32()),
        ("seed", pa.int64()),
        ("sampler", pa.string()),
        ("sampler_options", pa.string()),
        ("network_evaluations", pa.int32()),
    ],
    metadata={"crysray_schema_version": str(SCHEMA_VERSION)},
)


def sample_id(seed: int, work_unit: int, index: int) -> str:
    return f"{seed}-{work_unit}-{index}"


def lattice_parameters(lattice: np.ndarray) -> np.ndarray:
    """(B, 3, 3) -> (B, 6) a, b, c (A), alpha, beta, gamma (deg); NaN where degenerate."""
    lengths = np.linalg.norm(lattice, axis=-1)
    with np.errstate(all="ignore"):

        def angle(j, k):
            cos = np.einsum("bi,bi->b", lattice[:, j], lattice[:, k]) / (
                lengths[:, j] * lengths[:, k]
            )
            return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))

        return np.column_stack([lengths, angle(1, 2), angle(0, 2), angle(0, 1)])


def batch_to_table(
    batch: CrystalBatch,
    *,
    work_unit: int,
    first_index: int,
    source_ids: list[str],
    method: str,
    checkpoint_hash: str,
    steps: int,
    seed: int,
    sampler_options: dict,
    network_evaluations: int,
) -> pa.Table:
    """Rows for the crystals of ``batch``; row k gets index ``first_index + k``.

    ``sampler_options`` is the method's complete option record (``{"sampler": name, ...}``).
    """
    lattice = batch.lattice.double().numpy()
    frac = batch.frac_coords.double().numpy()
    z = batch.atom_types.numpy()
    counts = batch.num_atoms.numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)])
    params = lattice_parameters(lattice)
    valid, formulas = [], []
    for b in range(len(counts)):
        atoms = slice(offsets[b], offsets[b + 1])
        valid.append(structure_validity(lattice[b], frac[atoms]))
        formulas.append(Composition.from_dict(_count(z[atoms])).reduced_formula)
    n = len(counts)
    columns = {
        "sample_id": [sample_id(seed, work_unit, first_index + k) for k in range(n)],
        "work_unit": np.full(n, work_unit, dtype=np.int64),
        "source_id": source_ids,
        "formula": formulas,
        "num_atoms": counts.astype(np.int32),
        "atomic_numbers": pa.ListArray.from_arrays(offsets.astype(np.int32), z.astype(np.int16)),
        "frac_coords": pa.ListArray.from_arrays((offsets * 3).astype(np.int32), frac.reshape(-1)),
        "lattice": pa.ListArray.from_arrays(
            np.arange(0, 9 * n + 1, 9, dtype=np.int32), lattice.reshape(-1)
        ),
        **{name: params[:, k] for k, name in enumerate(("a", "b", "c", "alpha", "beta", "gamma"))},
        "valid_structure": valid,
        "method": [method] * n,
        "checkpoint_hash": [checkpoint_hash] * n,
        "steps": np.full(n, steps, dtype=np.int32),
        "seed": np.full(n, seed, dtype=np.int64),
        "sampler": [sampler_options["sampler"]] * n,
        "sampler_options": [options_json(sampler_options)] * n,
        "network_evaluations": np.full(n, network_evaluations, dtype=np.int32),
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def options_json(sampler_options: dict) -> str:
    return json.dumps({k: v for k, v in sampler_options.items() if k != "sampler"}, sort_keys=True)


def upgrade(table: pa.Table) -> pa.Table:
    """A table of any schema version as the current one (columns in SCHEMA order first)."""
    if "sampler" not in table.column_names:  # version 1: CrysBFN end-back sampling
        n = table.num_rows
        table = (
            table.append_column("sampler", pa.array(["end-back"] * n, pa.string()))
            .append_column("sampler_options", pa.array(["{}"] * n, pa.string()))
            .append_column("network_evaluations", table.column("steps").cast(pa.int32()))
        )
    rest = [c for c in table.column_names if c not in SCHEMA.names]
    return table.select(SCHEMA.names + rest).replace_schema_metadata(
        {**(table.schema.metadata or {}), **SCHEMA.metadata}
    )


def read_samples(paths, columns: list[str] | None = None, filesystem=None) -> pa.Table:
    """Generated rows from Parquet files of any schema version, as one current-version table.

    ``paths`` are local paths or URLs (``s3://bucket/run/data/unit-00000000.parquet``, see
    crysray.storage), or paths on ``filesystem`` (a pyarrow.fs.FileSystem) when it is given.
    """
    located = [(filesystem, p) for p in paths] if filesystem else locate_files(paths)
    tables = [upgrade(pq.read_table(path, filesystem=fs)) for fs, path in located]
    if not tables:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    table = pa.concat_tables(tables, promote_options="permissive")
    return table if columns is None else table.select(columns)


def _count(z: np.ndarray) -> dict[int, int]:
    from pymatgen.core import Element

    values, counts = np.unique(z, return_counts=True)
    return {Element.from_Z(int(v)).symbol: int(c) for v, c in zip(values, counts)}


def write_structures(
    table: pa.Table, directory, fmt: str = "cif", relaxed: bool | None = None
) -> int:
    """Write the crystals of ``table``: one CIF per row named ``{sample_id}_{formula}.cif``
    (``cif``), one ``structures.extxyz`` file, or one folder per row, ``{sample_id}_{formula}/``,
    holding DFT-ready inputs of the Materials Project's relaxation (``vasp``: pymatgen's
    ``MPRelaxSet``, i.e. MP's INCAR with its U values and magnetic moments, KPOINTS, POSCAR, and
    ``POTCAR.spec`` naming MP's POTCARs, which are licensed and not shipped); so a DFT
    calculation is comparable with the Materials Project's energies and hull. Returns how many
    were written.

    ``relaxed`` (default: whenever the rows carry the funnel's relaxed cell) writes the relaxed
    crystals; rows that were not relaxed are then left out. Rows that cannot be built are
    skipped.
    """
    if relaxed is None:
        relaxed = "relaxed_lattice" in table.column_names
    structures = rows_to_structures(table, prefix="relaxed_" if relaxed else "")
    kept = [(r, s) for r, s in zip(_names(table), structures) if s is not None]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "cif":
        for name, s in kept:
            s.to(filename=str(directory / f"{name}.cif"))
    elif fmt == "extxyz":
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = [AseAtomsAdaptor.get_atoms(s) for _, s in kept]
        write(str(directory / "structures.extxyz"), atoms, format="extxyz")
    elif fmt == "vasp":
        from pymatgen.io.vasp.sets import MPRelaxSet

        for name, s in kept:
            MPRelaxSet(s).write_input(str(directory / name), potcar_spec=True)
    else:
        raise ValueError(f"unknown structure format {fmt!r} (cif, extxyz or vasp)")
    return len(kept)


def _names(table: pa.Table) -> list[str]:
    ids = table.column("sample_id").to_pylist()
    formulas = table.column("formula").to_pylist()
    return [f"{sid}_{formula}" for sid, formula in zip(ids, formulas)]
