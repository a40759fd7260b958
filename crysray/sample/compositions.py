"""CSP targets from a dataset split (CSV with ``cif``), or a text or Parquet file of formulas."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pymatgen.core import Composition as PmgComposition
from pymatgen.core import Element

from crysray.data.csv import load_split
from crysray.data.dataset import CrystalTable
from crysray.sample.sampler import Composition
from crysray.structures import cell_formula

DEFAULT_MAX_ATOMS = 200  # CSPNet's graph is fully connected: memory grows with n_atoms^2
# bad lines named in an error and skipped lines named in a run's manifest; the rest are counted
# (a list of millions of lines must not become a message or a manifest of millions of lines)
MAX_NAMED_LINES = 100
# one element and its amount: 'Ca2 Ti2 O6' is one cell written with spaces, 'Fe2O3 O2' is two
_ELEMENT_TOKEN = re.compile(r"[A-Z][a-z]{0,2}\d*(\.\d+)?")
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]{0,2}\d*(\.\d+)?)+")


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
    Holds every target in memory; crysray.sample.composition_store streams instead.
    """
    skipped = Counter()
    out = [c for chunk in checked_chunks(path, limits, skip_invalid, skipped) for c in chunk]
    if not out:
        raise ValueError(
            f"composition file {path} holds no usable formulas ({sum(skipped.values())} skipped)"
        )
    return out, skipped


def checked_chunks(
    path: str | Path,
    limits: CompositionLimits | None = None,
    skip_invalid: bool = False,
    skipped: Counter | None = None,
    chunk_size: int = 65536,
    skipped_lines: list[str] | None = None,
) -> Iterator[list[Composition]]:
    """The targets of ``path`` in file order, checked, in lists of at most ``chunk_size``.

    Streams: a text or Parquet file is read a chunk at a time. Every bad target is found
    before the first error is raised, so one run of the check names them all
    (``BadCompositions``). Skipped targets (with ``skip_invalid``) are counted by reason into
    ``skipped`` and, the first ``MAX_NAMED_LINES`` of them, named in ``skipped_lines``.
    """
    limits = limits or CompositionLimits()
    skipped = Counter() if skipped is None else skipped
    bad: list[str] = []
    bad_count = 0
    chunk = []
    for where, make in _target_makers(Path(path)):
        try:
            target = make()
            limits.check(target.atomic_numbers, where)
        except ValueError as err:
            if skip_invalid:
                skipped[str(err).split(": ", 1)[-1].split(" (")[0]] += 1
                if skipped_lines is not None and len(skipped_lines) < MAX_NAMED_LINES:
                    skipped_lines.append(str(err))
            else:
                bad_count += 1
                if len(bad) < MAX_NAMED_LINES:
                    bad.append(str(err))
            continue
        chunk.append(target)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if bad_count:
        raise BadCompositions(path, bad, bad_count)
    if chunk:
        yield chunk


class BadCompositions(ValueError):
    """Every bad line of a composition file: one line for one, a list for several."""

    def __init__(self, path: str | Path, named: list[str], count: int):
        self.named, self.count = named, count
        if count == 1:
            super().__init__(named[0])
            return
        more = [f"... and {count - len(named)} more"] if count > len(named) else []
        super().__init__(
            f"{path}: {count} bad lines (fix them, or skip them with "
            "--skip-invalid-compositions):\n  " + "\n  ".join(named + more)
        )


def _target_makers(path: Path) -> Iterator[tuple[str, Callable[[], Composition]]]:
    """(where, () -> Composition) per target of a composition file or CSV split, lazily."""
    if not path.is_file():
        raise FileNotFoundError(f"composition file not found: {path}")
    if path.name.endswith((".csv", ".csv.gz")):
        for c in table_compositions(load_split(path)):
            yield f"{path}: {c.source_id}", lambda c=c: c
        return
    if path.name.endswith(".parquet"):
        yield from _parquet_makers(path)
        return
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                text = line.split("#", 1)[0].strip()
                if text:
                    formula, _, source_id = (part.strip() for part in text.partition(","))
                    where = f"{path}:{number}"
                    yield where, _formula_maker(formula, source_id, where)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read composition file {path}: {err}") from None


def _parquet_makers(path: Path) -> Iterator[tuple[str, Callable[[], Composition]]]:
    """Rows of a Parquet file with a ``formula`` (or ``atomic_numbers``) column and an optional
    ``id``; row n (from 1) is named ``path:n``. Read a row group at a time."""
    try:
        source = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"cannot read composition file {path}: {err}") from None
    names = set(source.schema_arrow.names)
    column = "formula" if "formula" in names else "atomic_numbers"
    if column not in names:
        raise ValueError(f"composition file {path} has no 'formula' or 'atomic_numbers' column")
    columns = [column] + (["id"] if "id" in names else [])
    number = 0
    for batch in source.iter_batches(batch_size=65536, columns=columns):
        values = batch.column(column).to_pylist()
        ids = batch.column("id").to_pylist() if "id" in names else [None] * len(values)
        for value, source_id in zip(values, ids):
            number += 1
            yield f"{path}:{number}", _parquet_maker(value, source_id, f"{path}:{number}")


def _parquet_maker(value, source_id: str | None, where: str) -> Callable[[], Composition]:
    source_id = None if source_id is None else str(source_id)
    if isinstance(value, str):
        return _formula_maker(value, source_id, where)
    atoms = np.asarray(value or [], dtype=np.int64)

    def make() -> Composition:
        if len(atoms) == 0 or int(atoms.min()) < 1:
            raise ValueError(f"{where}: atomic numbers must be >= 1, got {atoms.tolist()}")
        return Composition(source_id or cell_formula(atoms), atoms)

    return make


def _formula_maker(formula: str, source_id: str | None, where: str) -> Callable[[], Composition]:
    return lambda: Composition(source_id or formula, formula_atoms(formula, where))


def read_compositions(path: str | Path) -> list[Composition]:
    """Targets from ``path``.

    * ``.csv`` / ``.csv.gz`` (CDVAE format): the composition of every parsable crystal,
      ``source_id`` = material_id.
    * anything else: a text file, one cell formula per line (``SrTiO3``, ``Ca2 Ti2 O6``), with
      an optional id after a comma (``SrTiO3,my-id``); blank lines and ``#`` comments skipped.
    """
    return read_targets(path, CompositionLimits(max_atoms=10**9))[0]


def formula_atoms(formula: str, where: str = "") -> np.ndarray:
    """Atomic numbers of one cell with this formula, e.g. 'SrTiO3' -> [38, 22, 8, 8, 8].

    Spaces may separate elements ('Ca2 Ti2 O6'), not formulas: pymatgen would read
    'Fe2O3 O2' as Fe2O5, a cell nobody asked for.
    """
    tokens = formula.split()
    if (
        len(tokens) > 1
        and all(_FORMULA_TOKEN.fullmatch(t) for t in tokens)
        and not all(_ELEMENT_TOKEN.fullmatch(t) for t in tokens)
    ):
        raise ValueError(
            f"{where}: {formula!r} holds more than one formula; write one cell formula per "
            "line (spaces may only separate elements, as in 'Ca2 Ti2 O6')"
        )
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
