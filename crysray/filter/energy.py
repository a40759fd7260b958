"""Formation energies on the Materials Project's scale from a potential's total energy.

A potential trained on Materials-Project-compatible PBE/PBE+U total energies
(M3GNet-MP-2021.2.8-PES) predicts what an MP relaxation would have computed *before* the
Materials Project's corrections. So its energy is treated exactly as an MP calculation is
(the route Matbench Discovery scores every potential by):

1. entered as a pymatgen ``ComputedStructureEntry`` with the run type, U values and POTCAR
   symbols the Materials Project would have used (``pymatgen.io.vasp.sets.MPRelaxSet``):
   GGA+U with MP's U values when the crystal holds O or F and one of Co, Cr, Fe, Mn, Mo, Ni,
   V, W, plain GGA otherwise; with bond-valence oxidation states in ``entry.data`` when
   pymatgen's ``BVAnalyzer`` finds them, as the Materials Project's entries carry (they decide
   which anion corrections apply; without them the scheme guesses from the composition);
2. corrected with ``MaterialsProject2020Compatibility`` (anion and U corrections, the oxide
   type read from the structure);
3. referenced to the Materials Project's elemental entries (the lowest-energy entry per
   element), so ``E_form = (E_corrected - sum_el n_el * e_el) / N``.

No offsets are fitted, so nothing here is tuned on the crystals it is evaluated on. A potential
trained on another DFT scale (the MatPES models: PBE without U, other references) gives energies
that must not be mixed with Materials Project entries; ``require_mp_compatible`` refuses it.
"""

from __future__ import annotations

import gzip
import json
import math
import warnings
from functools import lru_cache
from pathlib import Path

from pymatgen.core import Composition, Structure
from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from pymatgen.io.vasp.sets import MPRelaxSet

# Potentials whose total energies are on the Materials Project's GGA/GGA+U scale.
MP_COMPATIBLE_MARKERS = ("-MP-", "CHGNet", "MACE-MP", "SevenNet-0")
OTHER_SCALE_MARKERS = ("MatPES", "OMat", "r2SCAN")


def require_mp_compatible(model: str) -> None:
    """Raise ValueError unless ``model`` predicts Materials-Project-compatible energies."""
    name = Path(str(model)).name
    if any(m in name for m in OTHER_SCALE_MARKERS) or not any(
        m in name for m in MP_COMPATIBLE_MARKERS
    ):
        raise ValueError(
            f"potential {name!r} is not trained on Materials-Project-compatible PBE/PBE+U "
            "energies, so its energies cannot be placed on a Materials Project hull; use "
            "M3GNet-MP-2021.2.8-PES (or another MP-compatible potential) for the hull stage"
        )


def mp_run_parameters(composition: Composition) -> dict:
    """The ``parameters`` of an MP relaxation of ``composition`` (run type, U, POTCARs)."""
    config = MPRelaxSet.CONFIG
    symbols = sorted({el.symbol for el in composition.elements})
    u_by_anion = config["INCAR"]["LDAUU"]
    hubbards = {}
    for anion in ("F", "O"):  # MPRelaxSet gives F precedence over O
        if anion in symbols and not hubbards:
            hubbards = {s: u_by_anion[anion].get(s, 0.0) for s in symbols}
    is_hubbard = any(u > 0 for u in hubbards.values())
    return {
        "run_type": "GGA+U" if is_hubbard else "GGA",
        "is_hubbard": is_hubbard,
        "hubbards": hubbards if is_hubbard else {},
        "potcar_symbols": [f"PBE {config['POTCAR'][s]}" for s in symbols],
    }


@lru_cache(maxsize=1)
def _compatibility() -> MaterialsProject2020Compatibility:
    return MaterialsProject2020Compatibility(check_potcar=False)


def corrected_energy(structure: Structure, energy: float) -> float:
    """Total energy (eV per cell) after ``MaterialsProject2020Compatibility``; NaN if refused.

    The scheme refuses e.g. a crystal whose anion correction cannot be decided.
    """
    if not math.isfinite(energy):
        return float("nan")
    entry = ComputedStructureEntry(
        structure, energy, parameters=mp_run_parameters(structure.composition),
        data=bond_valence_oxidation_states(structure),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "failed guess oxidation states" and similar chatter
        processed = _compatibility().process_entry(entry, inplace=False)
    return float("nan") if processed is None else float(processed.energy)


def bond_valence_oxidation_states(structure: Structure) -> dict:
    """``{"oxidation_states": {symbol: mean valence}}``, or {} when BVAnalyzer finds none."""
    from pymatgen.analysis.bond_valence import BVAnalyzer

    try:
        valences = BVAnalyzer().get_valences(structure)
    except ValueError:  # no charge-balanced assignment (metals, odd generated crystals)
        return {}
    by_element: dict[str, list[float]] = {}
    for site, valence in zip(structure, valences):
        by_element.setdefault(site.specie.symbol, []).append(valence)
    return {"oxidation_states": {el: sum(v) / len(v) for el, v in by_element.items()}}


class ElementalReferences:
    """The Materials Project's elemental reference energies (eV/atom), by element symbol."""

    def __init__(self, energies: dict[str, float]):
        self.energies = energies

    @classmethod
    def from_file(cls, path: str | Path) -> ElementalReferences:
        """A gzipped JSON dict ``symbol -> ComputedEntry`` (Matbench Discovery's file)."""
        with gzip.open(path, "rt") as f:
            raw = json.load(f)
        return cls({s: ComputedEntry.from_dict(d).energy_per_atom for s, d in raw.items()})

    def covers(self, composition: Composition) -> bool:
        return all(el.symbol in self.energies for el in composition.elements)

    def formation_energy_per_atom(self, composition: Composition, energy: float) -> float:
        """(eV/atom) from a corrected total energy ``energy`` (eV per cell of ``composition``)."""
        if not (math.isfinite(energy) and self.covers(composition)):
            return float("nan")
        reference = sum(n * self.energies[el.symbol] for el, n in composition.items())
        return (energy - reference) / composition.num_atoms


@lru_cache(maxsize=4)
def load_elemental_references(path: str | None = None) -> ElementalReferences:
    """Elemental references from ``path`` (default: resolved by crysray.resources)."""
    from crysray.resources import mp_elemental_references_file

    return ElementalReferences.from_file(path or mp_elemental_references_file())
