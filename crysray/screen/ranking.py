"""What a campaign hands its user: per chemical system, the candidates ranked by energy above
the hull, a hull diagram with them marked, CIFs and DFT-ready inputs of the best new ones.

Per requested system ``S``, the candidates are the survivors of the tiers
(crysray.screen.tiers: distinct, converged) whose elements all belong to ``S``, ranked by
``e_above_hull`` (then energy per atom). ``known_id`` names a known material a candidate
matches (training split or hull rows): those are rediscoveries, already computed, so the CIFs
and DFT inputs (``top_candidates`` per system) are written for the best candidates that match
no known material.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pymatgen.core import Composition

from crysray.filter.hull import HullReference
from crysray.storage import Storage

SYSTEMS_DIR = "systems"
DIAGRAM = "hull.png"
CANDIDATES = "candidates.parquet"


def elements_of(formula: str) -> frozenset[str]:
    return frozenset(el.symbol for el in Composition(formula).elements)


def system_candidates(table: pa.Table, chemsys: str) -> pa.Table:
    """The candidates of ``chemsys`` (every element in it), ranked; ``rank`` from 1 and
    ``composition_rank`` (1: the lowest energy of its reduced formula) added."""
    system = frozenset(chemsys.split("-"))
    mine = [
        i for i, (t, f) in enumerate(zip(table["tier"].to_pylist(), table["formula"].to_pylist()))
        if t == "candidate" and elements_of(f) <= system
    ]  # fmt: skip
    rows = table.take(pa.array(mine, pa.int64()))
    e_hull = rows["e_above_hull"].to_numpy(zero_copy_only=False).astype(float)
    energy = rows["energy_per_atom"].to_numpy(zero_copy_only=False).astype(float)
    order = np.lexsort((energy, np.where(np.isnan(e_hull), np.inf, e_hull)))
    rows = rows.take(pa.array(order, pa.int64()))
    formulas = rows["formula"].to_pylist()
    seen: dict[str, int] = {}
    composition_rank = []  # rows are in e_above_hull order, the same order as energy per formula
    for f in formulas:
        seen[f] = seen.get(f, 0) + 1
        composition_rank.append(seen[f])
    rows = rows.append_column("chemsys", pa.array([chemsys] * rows.num_rows, pa.string()))
    rows = rows.append_column("rank", pa.array(np.arange(1, rows.num_rows + 1), pa.int32()))
    rows = rows.append_column("composition_rank", pa.array(composition_rank, pa.int32()))
    return rows.append_column("space_group", pa.array(_space_groups(rows), pa.string()))


def _space_groups(rows: pa.Table) -> list[str | None]:
    """International symbol of each relaxed cell (symprec 0.1 A, as the Materials Project)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from crysray.structures import rows_to_structures

    out = []
    for s in rows_to_structures(rows, prefix="relaxed_"):
        try:
            out.append(SpacegroupAnalyzer(s, symprec=0.1).get_space_group_symbol())
        except Exception:  # noqa: BLE001 - spglib refuses odd cells; the symbol is then unknown
            out.append(None)
    return out


def write_system(store: Storage, chemsys: str, rows: pa.Table, hull: HullReference,
                 references, top: int) -> dict:  # fmt: skip
    """candidates.parquet, the hull diagram, CIFs and DFT inputs of one system; its counts."""
    from crysray.sample.schema import write_structures

    folder = f"{SYSTEMS_DIR}/{chemsys}"
    store.make_dir(folder)
    store.write_table(f"{folder}/{CANDIDATES}", rows)
    best_new = rows.filter(pc.fill_null(rows["novel"], False)).slice(0, top)
    with tempfile.TemporaryDirectory(prefix="crysray-system-") as scratch:
        for fmt in ("cif", "vasp"):
            local = Path(scratch) / fmt
            write_structures(best_new, local, fmt=fmt, relaxed=True)
            _upload(store, local, f"{folder}/{'dft' if fmt == 'vasp' else 'cif'}")
        drawn = draw_hull(chemsys, rows, hull, references, Path(scratch) / DIAGRAM)
        if drawn:
            store.write_file(f"{folder}/{DIAGRAM}", Path(scratch) / DIAGRAM)
    stable = pc.fill_null(rows["stable"], False)
    return {
        "candidates": rows.num_rows,
        "stable": int(pc.sum(stable).as_py() or 0),
        "stable_novel": int(pc.sum(pc.and_(stable, pc.fill_null(rows["novel"], False))).as_py()
                            or 0),
        "compositions": len(set(rows["formula"].to_pylist())),
        "written": best_new.num_rows,
        "diagram": f"{folder}/{DIAGRAM}" if drawn else None,
    }  # fmt: skip


def _upload(store: Storage, local: Path, key: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            store.write_file(f"{key}/{path.relative_to(local).as_posix()}", path)


def draw_hull(chemsys: str, rows: pa.Table, hull: HullReference, references, path: Path) -> bool:
    """pymatgen's hull diagram of a binary or ternary system: the reference phases, plus the
    lowest candidate of each composition, marked with a star; False for larger systems."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    # pymatgen's ternary plot sets an aspect that matplotlib reports on every figure
    logging.getLogger("matplotlib.axes._base").setLevel(logging.ERROR)
    import matplotlib.pyplot as plt
    from pymatgen.analysis.phase_diagram import PDPlotter, PhaseDiagram
    from pymatgen.entries.computed_entries import ComputedEntry

    system = frozenset(chemsys.split("-"))
    if not 2 <= len(system) <= 3:
        return False
    entries = list(hull.entries(system))
    covered = {el.symbol for e in entries if e.is_element for el in e.composition}
    if covered < system:
        return False
    marked = []
    lowest = rows.filter(pc.equal(rows["composition_rank"], 1))
    for f, e in zip(lowest["formula"].to_pylist(), lowest["formation_energy_per_atom"].to_pylist()):
        if e is None:
            continue
        composition = Composition(f)
        total = sum(k * references.energies[el.symbol] for el, k in composition.items())
        marked.append(ComputedEntry(composition, total + e * composition.num_atoms,
                                    entry_id=f"crysray:{f}"))  # fmt: skip
    diagram = PhaseDiagram(entries + marked)
    plotter = PDPlotter(diagram, backend="matplotlib", show_unstable=0.2)
    ax = plotter.get_plot(label_unstable=False)
    _, stable, unstable = plotter.pd_plot_data
    where = {id(e): c for c, e in stable.items()} | {id(e): c for e, c in unstable.items()}
    points = [where[id(e)] for e in marked if id(e) in where]
    if points:
        xs, ys = zip(*[(p[0], p[1]) for p in points])
        ax.scatter(xs, ys, marker="*", s=260, c="tab:orange", edgecolors="k", zorder=10,
                   label="crysray candidates")  # fmt: skip
        ax.legend(loc="best")
    ax.set_title(f"{chemsys}: hull ({hull.name}) and crysray candidates")
    ax.figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(ax.figure)
    return True


def markdown_table(rows: pa.Table, limit: int) -> str:
    """The ranked candidates as a Markdown table (the first ``limit``)."""
    head = ("| rank | formula | atoms | space group | E_hull (eV/atom) | E_form (eV/atom) | "
            "stable | hull phases | known as |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [head]
    for r in rows.slice(0, limit).to_pylist():
        lines.append(
            f"| {r['rank']} | {r['formula']} | {r['num_atoms']} | {r['space_group'] or '?'} | "
            f"{_num(r['e_above_hull'])} | {_num(r['formation_energy_per_atom'])} | "
            f"{'yes' if r['stable'] else 'no'} | {r['hull_reference_phases']} | "
            f"{r['known_id'] or 'new'} |"
        )
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"
