"""A checkpoint's training domain, and the compositions that fall outside it.

A CSP model answers for any composition it is given, including ones it has never seen
anything like: elements absent from its training split, cells larger than any training cell,
or (for a model trained only on Perov-5) anything that is not a five-atom ABX3 perovskite
cell. Such answers are guesses, so the sampling jobs count them as out of domain, per reason,
in the run summary and the manifest.

The domain is stored in an exported checkpoint (``domain`` key). For a checkpoint written
before that, it is the packaged domain of its dataset (``domains.json``: Perov-5 and the reduced
MP split, computed from their checksum-pinned training files by ``dataset_domain``), else it
is computed from the training split the checkpoint names (found like every dataset,
crysray.resources) and cached. Parsing a training split on the first sampling run of a fresh
machine would cost a minute; the packaged file avoids it for the shipped models.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from crysray.atomic import atomic_path
from crysray.paths import default_cache_dir
from crysray.structures import cell_formula

# Perov-5 holds one structure type: the five-atom cubic perovskite cell ABX3 (with mixed sites
# such as ABX2Y: every training cell has 5 atoms of 2 to 5 elements)
PEROVSKITE_DATASETS = {"perov_5"}
PACKAGED = Path(__file__).with_name("domains.json")
MAX_NAMED = 100  # compositions named in a manifest; the rest are counted
UNSEEN_ELEMENTS = "elements never seen in training"
LARGER_CELL = "cell larger than any training cell"
NOT_PEROVSKITE = "not a five-atom perovskite cell (a Perov-5 model knows only those)"


@dataclass(frozen=True)
class TrainingDomain:
    """What a model was trained on: its dataset, elements (Z) and largest cell."""

    dataset: str
    elements: tuple[int, ...]
    max_atoms: int

    @classmethod
    def of_table(cls, dataset: str, table) -> TrainingDomain:
        """From a training split (a ``CrystalTable``)."""
        return cls(
            dataset,
            tuple(int(z) for z in np.unique(np.asarray(table.atom_types))),
            int(np.max(table.num_atoms)),
        )

    def reasons(self, atomic_numbers: np.ndarray) -> list[tuple[str, str]]:
        """Why a cell is outside the domain, as (reason, detail) pairs (empty: inside)."""
        from pymatgen.core import Element

        numbers = np.asarray(atomic_numbers, dtype=int)
        out = []
        unseen = sorted(set(numbers.tolist()) - set(self.elements))
        if unseen:
            symbols = " ".join(Element.from_Z(z).symbol for z in unseen)
            out.append((UNSEEN_ELEMENTS, symbols))
        if len(numbers) > self.max_atoms:
            out.append((LARGER_CELL, f"{len(numbers)} atoms > {self.max_atoms}"))
        if self.dataset in PEROVSKITE_DATASETS and not _perovskite_like(numbers):
            out.append((NOT_PEROVSKITE, f"{len(numbers)} atoms"))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _perovskite_like(numbers: np.ndarray) -> bool:
    return len(numbers) == 5 and len(set(numbers.tolist())) >= 2


@dataclass
class OutOfDomain:
    """Compositions outside a domain: how many, per reason, and the first ones named."""

    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    named: list[str] = field(default_factory=list)

    def add(self, where: str, reasons: list[tuple[str, str]]) -> None:
        self.count += 1
        self.reasons.update(reason for reason, _ in reasons)
        if len(self.named) < MAX_NAMED:
            self.named.append(f"{where}: " + "; ".join(f"{r} ({d})" for r, d in reasons))

    def to_dict(self) -> dict:
        return {"count": self.count, "reasons": dict(self.reasons), "named": self.named}


def out_of_domain(targets: Iterable, domain: TrainingDomain) -> OutOfDomain:
    """Check every CSP target (``Composition``: source_id, atomic_numbers) against ``domain``."""
    found = OutOfDomain()
    for target in targets:
        reasons = domain.reasons(target.atomic_numbers)
        if reasons:
            found.add(cell_formula(target.atomic_numbers) + f" ({target.source_id})", reasons)
    return found


def checkpoint_domain(payload: dict) -> TrainingDomain:
    """The domain stored in a checkpoint, else its dataset's packaged or computed domain."""
    if "domain" in payload:
        return _from_dict(payload["domain"])
    dataset = payload["config"]["data"]["dataset"]
    packaged = json.loads(PACKAGED.read_text())
    if dataset in packaged:
        return _from_dict(packaged[dataset])
    return dataset_domain(dataset)


def _from_dict(d: dict) -> TrainingDomain:
    return TrainingDomain(d["dataset"], tuple(d["elements"]), int(d["max_atoms"]))


def dataset_domain(dataset: str) -> TrainingDomain:
    from crysray.data.csv import dataset_path, load_split

    path = dataset_path(dataset, "train")
    cache = default_cache_dir() / "domain" / f"{dataset}-{path.stat().st_size}.json"
    if cache.is_file():
        return _from_dict(json.loads(cache.read_text()))
    domain = TrainingDomain.of_table(dataset, load_split(path))
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps(domain.to_dict()))
    return domain
