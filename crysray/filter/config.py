"""``FunnelConfig``: every setting of the stability funnel, with one set of defaults.

The jobs build their command-line options from these fields (``add_funnel_arguments``), the
run manifest records ``as_dict()``, and the actors, the funnel and the relaxation read the same
object, so an option keeps its name and default all the way down. The Materials Project API key
is deliberately not a field: it is a secret, used once on the driver (crysray.mp.api_key).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

HULL_NAMES = ("mp", "local")


@dataclass(frozen=True)
class FunnelConfig:
    potential: str | None = None
    hull: str = "mp"
    offline: bool = False
    training_dataset: str | None = None
    relax_steps: int = 500
    fmax: float = 0.05
    stable_threshold: float = 0.1
    # 500, not more, on CPUs: 256 MP-20 crystals relaxed at the same speed with 500 atoms per
    # call as with 2000, at 1.6 GB peak per actor instead of 4.0 GB (the graphs, three-body
    # lists and their gradients grow with the batch; benchmarks/bench_funnel_memory.py).
    # A GPU wants larger calls: raise it there (--max-atoms-per-batch)
    max_atoms_per_batch: int = 500
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.hull not in HULL_NAMES:
            raise ValueError(f"unknown hull {self.hull!r} (choose from {', '.join(HULL_NAMES)})")
        if self.relax_steps < 1 or self.fmax <= 0 or self.max_atoms_per_batch < 1:
            raise ValueError("--relax-steps, --fmax and --max-atoms-per-batch must be positive")

    def as_dict(self) -> dict:
        return asdict(self)


HELP = {
    "potential": "MatGL potential folder or name (default: $CRYSRAY_MATGL_MODEL, else "
    "M3GNet-MP-2021.2.8-PES)",
    "hull": "reference hull: mp = the Materials Project's GGA/GGA+U entries via mp-api "
    "(needs MP_API_KEY once, then cached); local = offline, from the MP-derived rows on disk",
    "offline": "never touch the network: use only cached Materials Project entries",
    "training_dataset": "CSV split of known crystals for novelty (default: the checkpoint's "
    "training split)",
    "relax_steps": "FIRE step limit per crystal",
    "fmax": "force convergence threshold, eV/A",
    "stable_threshold": "stable means e_above_hull <= this, eV/atom",
    "max_atoms_per_batch": "atoms per batched MatGL call: bounds an actor's memory (about "
    "1.6 GB at 500, 4 GB at 2000 on MP-20 cells); raise it on a GPU",
    "cache_dir": "cache for hull references (default: $CRYSRAY_CACHE or ~/.cache/crysray)",
}


def add_funnel_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per ``FunnelConfig`` field, named ``--field-name``, with its default."""
    group = parser.add_argument_group("stability funnel")
    for f in fields(FunnelConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if f.type == "bool":
            group.add_argument(flag, action="store_true", help=HELP[f.name])
        elif f.name == "hull":
            group.add_argument(flag, choices=HULL_NAMES, default=default, help=HELP[f.name])
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            group.add_argument(flag, type=kind, default=default, help=HELP[f.name])
    group.add_argument(
        "--mp-api-key",
        default=None,
        help="Materials Project API key (default: $MP_API_KEY); never written",
    )
    group.add_argument("--funnel-replicas", type=int, default=1, help="MatGL actors")
    group.add_argument("--funnel-cpus", type=float, default=None,
                       help="CPUs per funnel actor (default: 1 with a GPU; on CPUs, all the "
                       "machine's CPUs but half of one, shared by the actors)")  # fmt: skip
    group.add_argument(
        "--funnel-gpus",
        type=float,
        default=None,
        help="GPUs per funnel actor (default: 1 if the cluster has GPUs)",
    )
    group.add_argument(
        "--uniqueness",
        choices=("distributed", "local"),
        default="distributed",
        help="run-wide uniqueness as a Ray Data stage over the cluster (default), or in the "
        "driver process (small runs)",
    )


def funnel_config_from_args(args: argparse.Namespace, default_training=None) -> FunnelConfig:
    """The FunnelConfig of parsed options; the novelty set defaults to ``default_training``."""
    values = {f.name: getattr(args, f.name) for f in fields(FunnelConfig)}
    if values["training_dataset"] is None and default_training is not None:
        values["training_dataset"] = str(default_training)
    if args.funnel_replicas < 1:
        raise ValueError("--funnel-replicas must be >= 1")
    config = FunnelConfig(**values)
    if config.training_dataset and not Path(config.training_dataset).is_file():
        raise FileNotFoundError(f"training dataset not found: {config.training_dataset}")
    return config
