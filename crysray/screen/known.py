"""Known materials a candidate may simply be: the model's training split and the hull's rows.

A candidate matching a known material (StructureMatcher, pymatgen defaults) is a
rediscovery, not a new compound: the ranked output names the material instead of calling it
novel. Known crystals are grouped by reduced formula and built into Structures on demand, so
a campaign pays only for the formulas it screens.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from pymatgen.core import Structure

from crysray.filter.composition import composition_of
from crysray.filter.uniqueness import default_matcher, prepare_for_matching, prepared_fit
from crysray.structures import arrays_to_structure


class KnownMaterials:
    """Crystals with ids, by reduced formula; ``matches`` names the first one that fits."""

    def __init__(self, tables: Iterable, exclude: Iterable[str] = ()):
        """``tables``: ``CrystalTable``s (``load_split``); ``exclude``: material ids left out."""
        excluded = set(exclude)
        self._rows: dict[str, list[tuple[str, tuple]]] = defaultdict(list)
        seen = set()
        for table in tables:
            fracs = np.split(table.frac_coords, table.offsets[1:-1])
            numbers = table.compositions()
            for m, material in enumerate(table.material_id):
                if material in excluded or material in seen:
                    continue
                seen.add(material)
                formula = composition_of(numbers[m]).reduced_formula
                self._rows[formula].append(
                    (str(material), (table.lattice[m], fracs[m], numbers[m]))
                )
        self._built: dict[str, list[tuple[str, Structure]]] = {}
        self.matcher = default_matcher()

    def __len__(self) -> int:
        return sum(map(len, self._rows.values()))

    def of_formula(self, formula: str) -> list[tuple[str, Structure]]:
        """The known crystals of ``formula``, reduced for matching (built once)."""
        if formula not in self._built:
            self._built[formula] = [
                (m, prepare_for_matching(self.matcher, arrays_to_structure(*a)))
                for m, a in self._rows[formula]
            ]
        return self._built[formula]

    def matches(self, structures: list[Structure | None]) -> list[str | None]:
        """The id of a known crystal each structure matches, else None."""
        out = []
        for s in structures:
            known = self.of_formula(s.composition.reduced_formula) if s is not None else []
            mine = prepare_for_matching(self.matcher, s)
            out.append(next((m for m, k in known if prepared_fit(self.matcher, k, mine)), None))
        return out


def known_materials(paths, exclude: Iterable[str] = (), cache_dir=None) -> KnownMaterials:
    """Known crystals of the CSV splits ``paths`` (cached by ``load_split``)."""
    from crysray.data.csv import load_split

    return KnownMaterials([load_split(p, cache_dir=cache_dir, workers=1) for p in paths], exclude)
