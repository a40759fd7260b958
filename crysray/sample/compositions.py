"""CSP targets from a dataset split (CSV with ``cif``) or a text file of formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pymatgen.core import Composition as PmgComposition

from crysray.data.csv import load_split
from crysray.data.dataset import CrystalTable
from crysray.sample.sampler import Composition


def read_compositions(path: str | Path) -> list[Composition]:
    """Targets from ``path``.

    * ``.csv`` / ``.csv.gz`` (CDVAE format): the composition of every parsable crystal,
      ``source_id`` = material_id.
    * anything else: a text file, one cell formula per line (``SrTiO3``, ``Ca2 Ti2 O6``), with
      an optional id after a comma (``SrTiO3,my-id``); blank lines and ``#`` comments skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"composition file not found: {path}")
    if path.name.endswith((".csv", ".csv.gz")):
        return table_compositions(load_split(path))
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read composition file {path}: {err}") from None
    out = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            formula, _, source_id = (part.strip() for part in text.partition(","))
            out.append(Composition(source_id or formula, formula_atoms(formula, f"{path}:{number}")))
    if not out:
        raise ValueError(f"composition file {path} holds no formulas")
    return out


def formula_atoms(formula: str, where: str = "") -> np.ndarray:
    """Atomic numbers of one cell with this formula, e.g. 'SrTiO3' -> [38, 22, 8, 8, 8]."""
    try:
        comp = PmgComposition(formula)
    except Exception:  # noqa: BLE001 - pymatgen raises several types for bad formulas
        raise ValueError(f"{where}: not a chemical formula: {formula!r}") from None
    atoms = []
    for element, amount in comp.items():
        if amount <= 0 or abs(amount - round(amount)) > 1e-8 or not hasattr(element, "Z"):
            raise ValueError(f"{where}: formula {formula!r} needs whole numbers of real elements")
        atoms += [element.Z] * int(round(amount))
    if not atoms:
        raise ValueError(f"{where}: empty formula")
    return np.asarray(atoms, dtype=np.int64)


def table_compositions(table: CrystalTable) -> list[Composition]:
    return [
        Composition(str(mid), table.atom_types[table.offsets[b] : table.offsets[b + 1]].copy())
        for b, mid in enumerate(table.material_id)
    ]
