"""``ScreenConfig``: the settings of a screening campaign, with one set of defaults.

As with ``FunnelConfig`` (whose relaxation and hull settings a campaign uses as they are), the
command line is generated from the fields (``add_screen_arguments``) and the run's manifest
records ``as_dict()``, so an option keeps its name and default all the way down.

Why the tier defaults: chosen on the MP-20 pilot val split (benchmarks/bench_campaign.py
--split val --sweep: 20 systems, every distinct sample of the 17 ground states that relaxing
everything finds pre-relaxed for 1, 5, 10 and 20 FIRE steps and relaxed fully). Keeping the 8
lowest of each composition after 5 steps, with no energy window, relaxes 17% of the samples
fully (5.8x fewer) and finds 11 of the 17; 20 steps find no more (11), and a 0.2 eV/atom
window loses more (8 at 5 steps): a rediscovered ground state is often a poor sample (up to
1.6 eV/atom above the best of its composition after 20 steps) that only a full relaxation
brings home. Pruning by energy therefore costs rediscoveries with this model; the trade-off
is measured, see the README. ``prerelax_keep`` large and the window unset relax everything.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, fields


@dataclass(frozen=True)
class ScreenConfig:
    samples_per_composition: int = 32
    max_atoms: int = 12
    subsystems: bool = False
    prerelax_steps: int = 5
    prerelax_window: float | None = None  # eV/atom; None: no window
    prerelax_keep: int = 8
    prerelax_hull_cut: float | None = None  # eV/atom; None: no cut (not measured on val)
    formulas_per_unit: int = 4
    top_candidates: int = 10

    def __post_init__(self) -> None:
        positive = ("samples_per_composition", "max_atoms", "prerelax_steps", "prerelax_keep",
                    "formulas_per_unit", "top_candidates")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if any(v is not None and v < 0 for v in (self.prerelax_window, self.prerelax_hull_cut)):
            raise ValueError("--prerelax-window and --prerelax-hull-cut must be >= 0")

    def as_dict(self) -> dict:
        return asdict(self)


HELP = {
    "samples_per_composition": "CSP samples k of every cell composition",
    "max_atoms": "largest cell enumerated (atoms); the number of compositions grows fast with it",
    "subsystems": "also enumerate the formulas of every subsystem of two or more elements",
    "prerelax_steps": "FIRE steps of the short pre-relaxation every distinct sample gets",
    "prerelax_window": "fully relax only pre-relaxed candidates within this of the best of "
    "their composition, eV/atom (default: no window)",
    "prerelax_keep": "and at most this many per composition (the lowest)",
    "prerelax_hull_cut": "and none whose pre-relaxed energy lies more than this above the hull, "
    "eV/atom (default: no cut)",
    "formulas_per_unit": "compositions per work unit of the tiered funnel",
    "top_candidates": "candidates per chemical system written as CIF and DFT input",
}


def add_screen_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per ``ScreenConfig`` field, ``--field-name``, with its default."""
    group = parser.add_argument_group("campaign")
    for f in fields(ScreenConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            group.add_argument(flag, action="store_true", help=HELP[f.name])
        else:
            kind = {"int": int, "float": float, "float | None": float}[f.type]
            group.add_argument(flag, type=kind, default=f.default, help=HELP[f.name])


def screen_config_from_args(args: argparse.Namespace) -> ScreenConfig:
    return ScreenConfig(**{f.name: getattr(args, f.name) for f in fields(ScreenConfig)
                           if f.default is not MISSING})  # fmt: skip
