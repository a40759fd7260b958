"""CSP targets from a dataset split (CSV with ``cif``) or a text file of formulas."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Composition as PmgComposition
from pymatgen.core import Element

from crysray.data.csv import load_split
from crysray.data.dataset import CrystalTable
from crysray.sample.sampler import Composition

DEFAULT_MAX_ATOMS = 200  # CSPNet's graph is fully connected: memory grows with n_atoms^2


@dataclass(frozen=True)
class CompositionLimits:
    """What a model can sample: cells of at most ``max_atoms`` atoms of elements Z <= ``max_z``."""

    max_atoms: int = DEFAULT_MAX_ATOMS
    max_z: int = 118

    def check(self, atoms: np.ndarray, where: str) -> None:
        if len(atoms) > self.max_atoms:
            raise ValueError(f"{where}: {len(atoms)} atoms per cell, above the limit of "
                             f"{self.max_atoms} (--max-atoms)")  # fmt: skip
        if int(atoms.max()) > self.max_z:
            raise ValueError(f"{where}: element Z={int(atoms.max())} is beyond the model's "
                             f"Z <= {self.max_z}")  # fmt: skip


def read_targets(
    path: str | Path, limits: CompositionLimits | None = None, skip_invalid: bool = False
) -> tuple[list[Composition], Counter]:
    """Targets from ``path`` (``read_compositions``), each checked against ``limits``.

    A bad target raises ValueError naming its line (or material id); with ``skip_invalid``
    it is skipped instead and counted by reason. Returns (targets, skip reasons -> counts).
    """
    limits = limits or CompositionLimits()
    out, skipped = [], Counter()
    for where, make in _target_makers(Path(path)):
        try:
            target = make()
            limits.check(target.atomic_numbers, where)
        except ValueError as err:
            if not skip_invalid:
                raise
            skipped[str(err).split(": ", 1)[-1].split(" (")[0]] += 1
            continue
        out.append(target)
    if not out:
        raise ValueError(
            f"composition file {path} holds no usable formulas ({sum(skipped.values())} skipped)"
        )
    return out, skipped


def _target_makers(path: Path):
    """(where, () -> Composition) per target of a composition file or CSV split."""
    if not path.is_file():
        raise FileNotFoundError(f"composition file not found: {path}")
    if path.name.endswith((".csv", ".csv.gz")):
        return [
            (f"{path}: {c.source_id}", lambda c=c: c) for c in table_compositions(load_split(path))
        ]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read composition file {path}: {err}") from None
    makers = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            formula, _, source_id = (part.strip() for part in text.partition(","))
            where = f"{path}:{number}"
            makers.append((where, lambda f=formula, i=source_id, w=where:
                           Composition(i or f, formula_atoms(f, w))))  # fmt: skip
    return makers


def read_compositions(path: str | Path) -> list[Composition]:
    """Targets from ``path``.

    * ``.csv`` / ``.csv.gz`` (CDVAE format): the composition of every parsable crystal,
      ``source_id`` = material_id.
    * anything else: a text file, one cell formula per line (``SrTiO3``, ``Ca2 Ti2 O6``), with
      an optional id after a comma (``SrTiO3,my-id``); blank lines and ``#`` comments skipped.
    """
    return read_targets(path, CompositionLimits(max_atoms=10**9))[0]


def formula_atoms(formula: str, where: str = "") -> np.ndarray:
    """Atomic numbers of one cell with this formula, e.g. 'SrTiO3' -> [38, 22, 8, 8, 8]."""
    try:
        comp = PmgComposition(formula)
    except Exception:  # noqa: BLE001 - pymatgen raises several types for bad formulas
        raise ValueError(f"{where}: not a chemical formula: {formula!r}") from None
    atoms = []
    for element, amount in comp.items():
        if not isinstance(element, Element):
            raise ValueError(f"{where}: unknown element {element.symbol!r} in {formula!r}")
        if amount <= 0 or abs(amount - round(amount)) > 1e-8:
            raise ValueError(f"{where}: formula {formula!r} needs whole numbers of atoms")
        atoms += [element.Z] * round(amount)
    if not atoms:
        raise ValueError(f"{where}: empty formula")
    return np.asarray(atoms, dtype=np.int64)


def table_compositions(table: CrystalTable) -> list[Composition]:
    return [
        Composition(str(mid), table.atom_types[table.offsets[b] : table.offsets[b + 1]].copy())
        for b, mid in enumerate(table.material_id)
    ]
