"""A campaign before anything runs: its systems, its cell compositions, its manifest section."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from crysray.sample.chemspace import CellComposition, cell_compositions, parse_chemsys
from crysray.screen.config import ScreenConfig
from crysray.storage import Storage

MANIFEST = "manifest.json"


def systems_of(chemsys: list[str], elements: list[str] = (), size: int = 3) -> list[str]:
    """Requested systems in their canonical spelling (``Li-Mn-O``), each once, in order;
    arguments that are files contribute their lines; ``elements`` adds every ``size``-element
    system of them."""
    names = []
    for item in chemsys:
        names += Path(item).read_text().split() if Path(item).is_file() else [item]
    if elements:
        checked = parse_chemsys("-".join(elements))
        if not 1 <= size <= len(checked):
            raise ValueError(f"--system-size {size}: choose 1 to {len(checked)}")
        names += ["-".join(c) for c in itertools.combinations(checked, size)]
    systems = list(dict.fromkeys("-".join(sorted(parse_chemsys(n))) for n in names))
    if not systems:
        raise ValueError("no chemical system given (--chemsys Li-Mn-O, or --elements)")
    return systems


def enumerate_campaign(systems: list[str], screen: ScreenConfig, exclude_formulas=frozenset()
                       ) -> tuple[list[CellComposition], dict]:  # fmt: skip
    """Every cell to sample (each cell formula once, for the first system that has it) and,
    per system, how many reduced formulas and cells it gave."""
    cells, seen, per_system = [], set(), {}
    for system in systems:
        mine = cell_compositions(system, screen.max_atoms, subsystems=screen.subsystems)
        kept = [c for c in mine if c.reduced_formula not in exclude_formulas]
        per_system[system] = {
            "formulas": len({c.reduced_formula for c in kept}),
            "cells": len(kept),
            "excluded_formulas": len({c.reduced_formula for c in mine}
                                     - {c.reduced_formula for c in kept}),
        }  # fmt: skip
        for cell in kept:
            if cell.cell_formula not in seen:
                seen.add(cell.cell_formula)
                cells.append(cell)
    if not cells:
        raise ValueError("no composition to screen: every formula was excluded or implausible")
    return cells, per_system


def write_compositions(cells: list[CellComposition], folder: Path) -> Path:
    """The cells as a composition file of ``crysray sample`` (``cell formula,id`` lines)."""
    path = folder / "compositions.txt"
    path.write_text("".join(f"{c.cell_formula},{c.chemsys}:{c.reduced_formula}:{c.z}\n"
                            for c in cells))  # fmt: skip
    return path


def check_campaign_section(store: Storage, section: dict) -> None:
    """Refuse to resume a run made with other campaign settings (mixed tiers or hulls)."""
    if not store.exists(MANIFEST):
        return
    saved = json.loads(store.read_text(MANIFEST)).get("campaign")
    if saved is None:
        raise ValueError(f"{store.display()} holds a sampling run that is not a campaign; "
                         "choose a new --out")  # fmt: skip
    keys = ("systems", "screen", "funnel", "hull_exclude", "known")
    changed = [k for k in keys if json.dumps(saved.get(k), sort_keys=True)
               != json.dumps(section[k], sort_keys=True)]  # fmt: skip
    if changed:
        raise ValueError(
            f"{store.display()} holds a campaign with other settings "
            f"({', '.join(changed)}); rerun with the same options or a new --out"
        )
