"""One crystal at a time with matgl's own ``Relaxer`` (ASE FIRE + FrechetCellFilter).

The reference that ``crysray.filter.relax.relax_batch`` is checked and benchmarked against.
``Relaxer`` builds its calculator with ``stress_unit="eV/A3"`` (the ASE convention), so
``fmax`` means the same thing in both: eV/A on atoms and on the cell rows of the filter.
"""

from __future__ import annotations

import warnings

import numpy as np
from pymatgen.core import Structure

from crysray.filter.config import FunnelConfig
from crysray.filter.relax import RelaxResult
from crysray.structures import wrap_frac


def relax_one_by_one(
    structures: list[Structure],
    potential,
    *,
    fmax: float = FunnelConfig.fmax,
    relax_steps: int = FunnelConfig.relax_steps,
    relax_cell: bool = True,
) -> RelaxResult:
    """Relax each structure with ``matgl.ext.ase.Relaxer``; a crystal that raises or gives
    non-finite numbers gets status "nan" instead of stopping the loop.

    ``steps`` counts FIRE steps as ASE does (its trajectory holds the start, one frame per
    step and a final repeat of the last frame); "converged" means it stopped before the limit.
    """
    from matgl.ext.ase import Relaxer

    relaxer = Relaxer(potential, optimizer="FIRE", relax_cell=relax_cell)
    rows = [_relax_one(relaxer, s, fmax, relax_steps) for s in structures]
    return RelaxResult(
        lattice=np.stack([r[0] for r in rows]),
        frac_coords=[r[1] for r in rows],
        energy=np.array([r[2] for r in rows]),
        steps=np.array([r[3] for r in rows], dtype=np.int64),
        fmax=np.full(len(rows), np.nan),  # ASE does not report it
        status=[r[4] for r in rows],
    )


def _relax_one(relaxer, structure: Structure, fmax: float, relax_steps: int):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ASE's set_calculator deprecation, once per crystal
            out = relaxer.relax(structure, fmax=fmax, steps=relax_steps)
    except Exception:  # noqa: BLE001 - a crystal that breaks the relaxer is a data point
        return _failed(structure, "nan")
    final: Structure = out["final_structure"]
    energy = float(out["trajectory"].energies[-1])
    steps = max(len(out["trajectory"].energies) - 2, 0)
    if not np.isfinite(energy) or not np.isfinite(final.lattice.matrix).all():
        return _failed(structure, "nan")
    status = "converged" if steps < relax_steps else "not_converged"
    return final.lattice.matrix.copy(), wrap_frac(final.frac_coords), energy, steps, status


def _failed(structure: Structure, status: str):
    return (np.array(structure.lattice.matrix), wrap_frac(structure.frac_coords), np.nan, 0, status)
