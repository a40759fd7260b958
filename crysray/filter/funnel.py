"""The stability funnel: ordered stages, cheapest first, over a pyarrow Table of crystals.

Input rows follow crysray.sample.schema (``sample_id``, ``atomic_numbers``, ``frac_coords``,
``lattice``). Every stage adds columns to every row; no row is ever dropped:

- structure: ``pass_structure`` (finite cell, volume >= 0.1 A^3, distances >= 0.5 A);
- composition: ``pass_composition`` (SMACT, crysray.filter.composition);
- unique: ``unique``, ``duplicate_of`` (sample_id of the first match); flag ``unique``;
- novel: ``novel`` (no StructureMatcher match in the training set); flag ``novel``;
- relax: ``relax_status``, ``relax_steps_taken``, ``energy_per_atom`` (eV/atom), ``relaxed_lattice``
  (9 floats, A), ``relaxed_frac_coords`` (3n floats); flag ``pass_relax`` (converged);
- hull: ``formation_energy_per_atom`` (eV/atom, Materials Project scale, crysray.filter.energy),
  ``e_above_hull`` (eV/atom), ``hull_status`` ("ok", "no_reference": an element without a
  reference, "incompatible": refused by the MP2020 correction scheme), ``hull_reference``
  (the hull's name) and ``hull_reference_phases`` (reference compounds in the crystal's
  chemical system: few means the call is a guess); flag ``stable``.

Uniqueness and novelty are checked on structurally valid rows. Only rows that pass every
stage in ``relax_gate`` (default: all the cheap stages that run) are relaxed; the others get
null energies and ``pass_relax`` False. ``e_above_hull`` is filled for every relaxed row with a
finite energy (a "not_converged" energy is an upper bound), but ``stable`` also needs a
converged relaxation. ``sun`` = stable, unique and novel (MatterGen's S.U.N.).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from crysray.filter.composition import composition_check, composition_of
from crysray.filter.config import FunnelConfig
from crysray.filter.counts import FLAGS, STAGES, bools, funnel_counts
from crysray.filter.energy import ElementalReferences, corrected_energy
from crysray.filter.hull import HullReference, stable_flags
from crysray.filter.relax import relax_batch
from crysray.filter.uniqueness import TrainingSet, novelty, uniqueness
from crysray.structures import arrays_to_structure, arrays_valid, table_arrays

CHEAP_STAGES = ("structure", "composition", "unique", "novel")


@dataclass
class _Run:
    """What the stages of one funnel run share: input rows, settings, columns made so far."""

    table: pa.Table
    rows: list
    stages: tuple[str, ...]
    config: FunnelConfig
    potential: object
    hull: HullReference | None
    references: ElementalReferences | None
    training: TrainingSet | None
    relax_gate: tuple[str, ...]
    on_progress: object = None  # called with crystals done (relaxed, or not to be relaxed)
    columns: dict = field(default_factory=dict)


def run_funnel(
    table: pa.Table,
    config: FunnelConfig | None = None,
    *,
    potential=None,
    hull: HullReference | None = None,
    references: ElementalReferences | None = None,
    training_structures: TrainingSet | None = None,
    stages: tuple[str, ...] = STAGES,
    relax_gate: tuple[str, ...] | None = None,
    on_progress=None,
) -> tuple[pa.Table, dict]:
    """Run the stages in order on ``table``; return (table with the new columns, counts).

    Args:
        config: relaxation and stability settings (``relax_steps``, ``fmax``,
            ``stable_threshold``, ``max_atoms_per_batch``).
        potential: matgl Potential (needed by "relax").
        hull, references: hull reference and MP elemental references (needed by "hull").
        training_structures: known crystals for "novel"; None skips that stage.
        stages: subset of STAGES to run (always in STAGES order).
        relax_gate: stages a row must pass to be relaxed; default the cheap stages that run.
        on_progress: called with a number of rows whenever they are done (the relaxation
            takes the time: rows it skips count at its start, the others as they settle);
            the calls add up to the number of rows.

    Returns:
        counts: see ``funnel_counts``, plus "seconds" (wall time per stage).
    """
    config = config or FunnelConfig()
    if training_structures is None:
        stages = tuple(s for s in stages if s != "novel")
    if "hull" in stages and ("relax" not in stages or hull is None or references is None):
        raise ValueError("the hull stage needs the relax stage, a hull and elemental references")
    if "relax" in stages and potential is None:
        raise ValueError("the relax stage needs a potential")
    stages = tuple(s for s in STAGES if s in stages)
    gate = relax_gate if relax_gate is not None else tuple(s for s in CHEAP_STAGES if s in stages)
    run = _Run(
        table=table, rows=table_arrays(table), stages=stages, config=config, potential=potential,
        hull=hull, references=references, training=training_structures, relax_gate=gate,
        on_progress=_Tally(on_progress),
    )  # fmt: skip
    seconds = {}
    for stage in stages:
        start = time.perf_counter()
        run.columns.update(_STAGE_FUNCTIONS[stage](run))
        seconds[stage] = time.perf_counter() - start
    if {"unique", "novel", "hull"} <= set(stages):
        run.columns["sun"] = pa.array(
            _passing(run.columns, ("unique", "novel", "hull"), len(run.rows))
        )
    run.on_progress.finish(len(run.rows))
    out = _attach(table, run.columns)
    return out, {**funnel_counts(out), "seconds": seconds}


class _Tally:
    """Forwards progress to ``report`` (if any) and remembers how much was reported, so the end
    of a run can report the rest exactly once."""

    def __init__(self, report=None):
        self.report, self.done = report, 0

    def __call__(self, rows: int) -> None:
        if rows > 0:
            self.done += rows
            if self.report is not None:
                self.report(rows)

    def finish(self, total: int) -> None:
        self(total - self.done)


def _structure_stage(run: _Run) -> dict:
    return {"pass_structure": pa.array(structure_flags(run.rows))}


def _composition_stage(run: _Run) -> dict:
    """SMACT's verdict; null where it was not asked (too many elements), which fails the stage
    and is counted as ``composition_not_checked``."""
    return {
        "pass_composition": pa.array(
            [composition_check(r[2]) if r is not None else False for r in run.rows], pa.bool_()
        )
    }


def _unique_stage(run: _Run) -> dict:
    names = run.table.column_names
    ids = (
        run.table["sample_id"].to_pylist()
        if "sample_id" in names
        else list(map(str, range(len(run.rows))))
    )
    unique, duplicate_of = uniqueness(_structures(run), ids)
    return {"unique": pa.array(unique), "duplicate_of": pa.array(duplicate_of, pa.string())}


def _novel_stage(run: _Run) -> dict:
    return {"novel": pa.array(novelty(_structures(run), run.training))}


def _relax_stage(run: _Run) -> dict:
    selected = _passing(run.columns, run.relax_gate, len(run.rows))
    run.on_progress(int(len(selected) - selected.sum()))
    return relax_columns(run.rows, selected, run.potential, run.config, run.on_progress)


def _hull_stage(run: _Run) -> dict:
    return hull_columns(run, run.config.stable_threshold)


_STAGE_FUNCTIONS = {
    "structure": _structure_stage,
    "composition": _composition_stage,
    "unique": _unique_stage,
    "novel": _novel_stage,
    "relax": _relax_stage,
    "hull": _hull_stage,
}


def structure_flags(rows) -> list[bool]:
    """The codec's validity rule per row of ``table_arrays`` (malformed rows are invalid)."""
    return [arrays_valid(r) for r in rows]


def _structures(run: _Run):
    """One pymatgen Structure per structurally valid row, None elsewhere (built once)."""
    if "_structures" not in run.columns:
        flags = run.columns.get("pass_structure")
        valid = flags.to_pylist() if flags is not None else structure_flags(run.rows)
        run.columns["_structures"] = [
            arrays_to_structure(*r) if ok else None for r, ok in zip(run.rows, valid)
        ]
    return run.columns["_structures"]


def _passing(columns, stages, n: int) -> np.ndarray:
    """(n,) bool: True where every present flag column of ``stages`` is True."""
    keep = np.ones(n, dtype=bool)
    for stage in stages:
        if FLAGS[stage] in columns:
            keep &= bools(columns[FLAGS[stage]])
    return keep


def relax_columns(
    rows, selected: np.ndarray, potential, config: FunnelConfig, on_settled=None
) -> dict[str, pa.Array]:
    """Relax the ``selected`` rows in one batched run; null values for the others."""
    idx = np.flatnonzero(selected)
    n = len(rows)
    status, steps, energy = [None] * n, [None] * n, [None] * n
    lattices, fracs = [None] * n, [None] * n
    for i, r in zip(idx, relax_arrays([rows[i] for i in idx], potential, config,
                                      on_settled=on_settled)):  # fmt: skip
        status[i], steps[i], energy[i] = r.status, r.steps, r.energy_per_atom
        lattices[i], fracs[i] = r.lattice.reshape(-1).tolist(), r.frac_coords.reshape(-1).tolist()
    return {
        "relax_status": pa.array(status, pa.string()),
        "relax_steps_taken": pa.array(steps, pa.int32()),
        "energy_per_atom": pa.array(energy, pa.float64()),
        "relaxed_lattice": pa.array(lattices, pa.list_(pa.float64())),
        "relaxed_frac_coords": pa.array(fracs, pa.list_(pa.float64())),
        "pass_relax": pa.array([s == "converged" for s in status]),
    }


@dataclass(frozen=True)
class Relaxed:
    """One crystal after ``relax_arrays``: its final cell and what the potential says of it."""

    status: str  # converged, not_converged, or why it was given up (relax_batch)
    steps: int
    energy_per_atom: float | None  # eV/atom; None unless (not_)converged with a finite energy
    lattice: np.ndarray  # (3, 3) A
    frac_coords: np.ndarray  # (n, 3)
    atomic_numbers: np.ndarray  # (n,)


def relax_arrays(rows, potential, config: FunnelConfig, relax_steps: int | None = None,
                 on_settled=None) -> list[Relaxed]:  # fmt: skip
    """Relax crystals given as ``(lattice, frac, Z)`` rows together (``relax_batch``).

    ``relax_steps`` overrides the config's limit (a short pre-relaxation). The energy of a
    crystal that did not end converged or not_converged (exploded, unusable) is None: it is
    not an energy of that composition.
    """
    if not rows:
        return []
    result = relax_batch(
        potential,
        np.stack([r[0] for r in rows]),
        [r[1] for r in rows],
        [r[2] for r in rows],
        fmax=config.fmax,
        relax_steps=relax_steps or config.relax_steps,
        max_atoms_per_batch=config.max_atoms_per_batch,
        on_settled=on_settled,
    )
    out = []
    for k, r in enumerate(rows):
        e = result.energy[k] / len(r[2])
        usable = np.isfinite(e) and result.status[k] in ("converged", "not_converged")
        energy = float(e) if usable else None
        lattice, frac = (
            np.reshape(result.lattice[k], (3, 3)),
            np.reshape(result.frac_coords[k], (-1, 3)),
        )
        out.append(Relaxed(result.status[k], int(result.steps[k]), energy, lattice, frac,
                           np.asarray(r[2])))  # fmt: skip
    return out


@dataclass(frozen=True)
class HullValues:
    formation_energy_per_atom: float | None
    e_above_hull: float | None
    status: str  # ok, no_reference, incompatible
    phases: int | None


def hull_values(crystal: Relaxed, hull: HullReference, references: ElementalReferences
                ) -> HullValues:  # fmt: skip
    """Formation energy on the Materials Project's scale and e_above_hull of a relaxed crystal
    with an energy (MP2020 corrections on its relaxed structure)."""
    z = crystal.atomic_numbers
    composition = composition_of(z)
    if not references.covers(composition):
        return HullValues(None, None, "no_reference", None)
    structure = arrays_to_structure(crystal.lattice, crystal.frac_coords, z)
    energy = corrected_energy(structure, crystal.energy_per_atom * len(z))
    if not np.isfinite(energy):
        return HullValues(None, None, "incompatible", None)
    formation = references.formation_energy_per_atom(composition, energy)
    point = hull.e_above_hull(composition, energy)
    if not np.isfinite(point.e_above_hull):
        return HullValues(formation, None, "no_reference", point.phases)
    return HullValues(formation, point.e_above_hull, "ok", point.phases)


def hull_columns(run: _Run, threshold: float) -> dict[str, pa.Array]:
    """Formation energy (MP scale) and e_above_hull of every row with a relaxed energy."""
    energies = run.columns["energy_per_atom"].to_pylist()
    lattices = run.columns["relaxed_lattice"].to_pylist()
    fracs = run.columns["relaxed_frac_coords"].to_pylist()
    statuses = run.columns["relax_status"].to_pylist()
    values = [
        None if e is None else hull_values(
            Relaxed(statuses[i], 0, e, np.reshape(lattices[i], (3, 3)),
                    np.reshape(fracs[i], (-1, 3)), run.rows[i][2]),
            run.hull, run.references)
        for i, e in enumerate(energies)
    ]  # fmt: skip
    n = len(run.rows)
    e_array = np.array([np.nan if v is None or v.e_above_hull is None else v.e_above_hull
                        for v in values])  # fmt: skip
    stable = stable_flags(e_array, threshold) & bools(run.columns["pass_relax"])
    return {
        "formation_energy_per_atom": pa.array(
            [v and v.formation_energy_per_atom for v in values], pa.float64()
        ),
        "e_above_hull": pa.array([v and v.e_above_hull for v in values], pa.float64()),
        "hull_status": pa.array([v and v.status for v in values], pa.string()),
        "hull_reference": pa.array([run.hull.name] * n, pa.string()),
        "hull_reference_phases": pa.array([v and v.phases for v in values], pa.int32()),
        "stable": pa.array(stable),
    }


def _attach(table: pa.Table, columns: dict) -> pa.Table:
    """``table`` plus the new columns (replacing same-named ones from an earlier run)."""
    for name, values in columns.items():
        if name.startswith("_"):
            continue
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, values)
    return table
