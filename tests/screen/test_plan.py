"""A campaign before anything runs: systems from arguments and files, enumeration counted per
system, exclusions, refusals, and a resumed run with other settings refused."""

from __future__ import annotations

import json

import pytest

from crysray.sample.chemspace import cell_compositions
from crysray.screen.config import ScreenConfig
from crysray.screen.plan import (
    check_campaign_section,
    enumerate_campaign,
    systems_of,
    write_compositions,
)
from crysray.storage import Storage


def test_systems_come_from_arguments_files_and_element_lists(tmp_path):
    listed = tmp_path / "systems.txt"
    listed.write_text("O-Li\nNa-Cl\n")
    assert systems_of(["Mn-O-Li", str(listed)]) == ["Li-Mn-O", "Li-O", "Cl-Na"]
    assert systems_of([], ["Li", "Fe", "O"], 2) == ["Fe-Li", "Li-O", "Fe-O"]
    assert systems_of(["Li-O", "O-Li"]) == ["Li-O"]  # each system once
    with pytest.raises(ValueError, match="not an element"):
        systems_of(["Li-Xx"])
    with pytest.raises(ValueError, match="no chemical system"):
        systems_of([])
    with pytest.raises(ValueError, match="--system-size"):
        systems_of([], ["Li", "O"], 3)


def test_enumeration_counts_each_system_and_samples_each_cell_once():
    screen = ScreenConfig(max_atoms=6)
    cells, per_system = enumerate_campaign(["Cl-Na", "Li-O"], screen)
    assert per_system["Cl-Na"]["cells"] == len(cell_compositions("Na-Cl", 6))
    assert per_system["Cl-Na"]["formulas"] == len({c.reduced_formula for c in cells
                                                   if c.chemsys == "Cl-Na"})  # fmt: skip
    assert {"NaCl", "Li2O", "Li2O2"} <= {c.reduced_formula for c in cells}
    formulas = [c.cell_formula for c in cells]
    assert len(formulas) == len(set(formulas))

    # a subsystem's cells appear once, though two systems contain them
    with_sub = ScreenConfig(max_atoms=4, subsystems=True)
    cells, per_system = enumerate_campaign(["Li-Na-O", "Li-O"], with_sub)
    assert per_system["Li-O"]["cells"] > 0
    assert sum(c.reduced_formula == "Li2O" and c.z == 1 for c in cells) == 1

    cells, per_system = enumerate_campaign(["Li-O"], screen, exclude_formulas={"Li2O"})
    assert "Li2O" not in {c.reduced_formula for c in cells} and cells
    assert per_system["Li-O"]["excluded_formulas"] == 1
    with pytest.raises(ValueError, match="no composition to screen"):
        enumerate_campaign(["Cl-Na"], ScreenConfig(max_atoms=2), exclude_formulas={"NaCl"})


def test_a_system_too_large_to_enumerate_is_refused_with_its_count():
    with pytest.raises(ValueError, match=r"\d+ candidate formulas"):
        enumerate_campaign(["Li-Na-K-Rb-Cs-O"], ScreenConfig(max_atoms=80))


def test_compositions_file_names_each_cell_with_its_system(tmp_path):
    cells, _ = enumerate_campaign(["Cl-Na"], ScreenConfig(max_atoms=4))
    lines = write_compositions(cells, tmp_path).read_text().splitlines()
    assert "Na2Cl2,Cl-Na:NaCl:2" in lines and len(lines) == len(cells)


def test_a_campaign_resumed_with_other_settings_is_refused(tmp_path):
    store = Storage(str(tmp_path))
    section = {"systems": {"Cl-Na": {"cells": 3}}, "screen": ScreenConfig().as_dict(),
               "funnel": {"hull": "local"}, "hull_exclude": [], "known": ["train.csv"]}  # fmt: skip
    check_campaign_section(store, section)  # a new run: nothing to compare
    (tmp_path / "manifest.json").write_text(json.dumps({"task": "csp", "campaign": section}))
    check_campaign_section(store, section)  # the same settings resume
    other = {**section, "screen": ScreenConfig(prerelax_keep=2).as_dict()}
    with pytest.raises(ValueError, match="other settings \\(screen\\)"):
        check_campaign_section(store, other)
    (tmp_path / "manifest.json").write_text(json.dumps({"task": "csp"}))
    with pytest.raises(ValueError, match="not a campaign"):
        check_campaign_section(store, section)
