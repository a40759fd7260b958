"""``crysray campaign`` (``jobs/campaign.py``): screen chemical systems end to end.

    crysray campaign --chemsys Li-Mn-O Na-Fe-P-O --out outputs/screen1

1. every SMACT-plausible reduced formula of each system (``--subsystems``: of its subsystems
   too) at every cell size up to ``--max-atoms``, counted per system; a system whose count
   would explode is refused before anything runs (crysray.sample.chemspace);
2. ``--samples-per-composition`` CSP samples of every cell (``--model``: the shipped
   Materials Project model by default), by the sampling actor pool of ``crysray sample``;
3. the tiered funnel (crysray.screen.tiers) on a pool of MatGL actors: duplicates merged, a
   short pre-relaxation, full relaxations only for the best of each composition, the hull;
4. per system: ``systems/<system>/candidates.parquet`` (ranked), ``hull.png``, ``cif/`` and
   ``dft/`` (MPRelaxSet inputs with POTCAR.spec) of the best candidates that match no known
   material; ``report.md`` and ``summary.json`` for the whole campaign.

The output location (a directory or an object-storage URL) holds one ``manifest.json``;
rerunning the same command resumes at whatever stage it stopped. ``campaign(...)`` runs it
from Python with the same options as keywords.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from crysray.command.common import add_ray_arguments, check_location

DEFAULT_MODEL = "mp"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from crysray.command.sample import CHECKPOINT_HELP
    from crysray.filter.config import add_funnel_arguments
    from crysray.screen.config import add_screen_arguments

    systems = p.add_argument_group("chemical systems")
    systems.add_argument(
        "--chemsys",
        nargs="+",
        default=[],
        help="systems such as Li-Mn-O, or files of them (one per line)",
    )
    systems.add_argument(
        "--elements",
        nargs="+",
        default=[],
        help="also every system of --system-size of these elements",
    )
    systems.add_argument(
        "--system-size", type=int, default=3, help="elements per system built from --elements"
    )
    systems.add_argument("--exclude-formulas", nargs="+", default=[],
                         help="reduced formulas not to screen (e.g. already known), or files of "
                         "them")  # fmt: skip
    systems.add_argument(
        "--hull-exclude",
        type=Path,
        default=None,
        help="CSV of material_id,formula: materials treated as unknown, left "
        "out of the hull and of the known materials (rediscovery benchmarks; default: none)",
    )
    systems.add_argument(
        "--known",
        nargs="+",
        type=Path,
        default=None,
        help="CSV splits (CDVAE format) of known materials: candidates matching one are named, "
        "not called novel (default: the model's training split and, with --hull local, the "
        "hull's own splits)",
    )
    p.add_argument(
        "--model",
        "--checkpoint",
        dest="checkpoint",
        default=DEFAULT_MODEL,
        help=CHECKPOINT_HELP.replace(
            "(the shipped CrysBFN CSP model of Perov-5, the default)", ""
        ).replace("cells of <= 20 atoms)", "cells of <= 20 atoms, the default)"),
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the method's)")
    p.add_argument("--batch-size", type=int, default=256, help="crystals per network call")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (Ray actors)")
    p.add_argument(
        "--cpus-per-replica",
        type=float,
        default=None,
        help="default: 1 with a GPU, else the machine's CPUs but half of one",
    )
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="default: 1 if the cluster has GPUs, else 0",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--out", required=True, help="output directory or URL (created, or resumed)")
    add_screen_arguments(p)
    add_ray_arguments(p)
    add_funnel_arguments(p)
    for action in p._actions:  # a campaign screens with the local hull unless told otherwise
        if action.dest == "hull":
            action.default = "local"


def campaign(**options) -> dict:
    """Run a campaign from Python: ``campaign(chemsys=["Li-Mn-O"], out="screen1")``; any
    option of ``crysray campaign`` as a keyword (dashes as underscores). Returns the summary."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--out", str(options.pop("out"))])
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"campaign() got an unknown option {key!r}")
        setattr(args, key, value)
    return run_campaign(args)


def run(args) -> int:
    summary = run_campaign(args)
    print(json.dumps({k: summary[k] for k in ("systems", "tiers", "seconds")}, indent=1))
    print(f"report: {summary['report']}")
    return 0


def run_campaign(args) -> dict:
    from crysray.command.sample import resolve_model
    from crysray.filter.config import funnel_config_from_args
    from crysray.screen.config import screen_config_from_args
    from crysray.screen.plan import enumerate_campaign, systems_of
    from crysray.storage import Storage

    check_location(args.out, "--out")
    screen = screen_config_from_args(args)
    systems = systems_of(args.chemsys, args.elements, args.system_size)
    excluded = _read_exclusions(args.exclude_formulas)
    hull_exclude = _read_hull_exclude(args.hull_exclude)
    cells, per_system = enumerate_campaign(systems, screen, excluded)
    args.checkpoint = resolve_model(args.checkpoint)
    store = Storage(args.out)
    funnel = funnel_config_from_args(args)
    from crysray.command.sample import sample_with_ray
    from crysray.screen.report import write_campaign_report
    from crysray.screen.stage import add_seconds

    start = time.perf_counter()
    plan, sample_options, known_paths = _plan(args, store, screen, funnel, cells, per_system,
                                              hull_exclude)  # fmt: skip
    sampled = sample_with_ray(sample_options, store, plan, None)
    seconds = add_seconds(store, "sampling", time.perf_counter() - start if plan.todo else 0.0)
    start = time.perf_counter()
    if _screen(args, store, screen, funnel, known_paths, hull_exclude):
        seconds = add_seconds(store, "screening", time.perf_counter() - start)
    return write_campaign_report(store, systems, per_system, screen, funnel, hull_exclude,
                                 seconds, sampled)  # fmt: skip


def _plan(args, store, screen, funnel, cells, per_system, hull_exclude):
    """The sampling run of the campaign (created or resumed) and its manifest section."""
    import tempfile

    from crysray.data.csv import dataset_path
    from crysray.filter.hulls import prepare_hull
    from crysray.filter.local_hull import default_local_sources
    from crysray.sample.campaign import record_manifest_section
    from crysray.sample.plan import plan_campaign
    from crysray.screen.plan import check_campaign_section, write_compositions
    from crysray.train.checkpoint import read_checkpoint

    payload = read_checkpoint(args.checkpoint)
    if payload["config"]["method"]["task"] != "csp":
        raise ValueError(f"{args.checkpoint} is not a CSP model; a campaign needs one")
    hull = prepare_hull(funnel, {c.reduced_formula for c in cells}, args.mp_api_key)
    if args.known:
        known = [str(p) for p in args.known]
    else:
        train = dataset_path(payload["config"]["data"]["dataset"], "train")
        known = [str(train)] + ([str(p) for p in default_local_sources()]
                                if funnel.hull == "local" else [])  # fmt: skip
    for path in known:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--known: no such file {path}")
    section = {"systems": per_system, "screen": screen.as_dict(), "funnel": funnel.as_dict(),
               "hull": hull, "hull_exclude": sorted(hull_exclude),
               "known": [Path(p).name for p in known]}  # fmt: skip
    check_campaign_section(store, section)
    with tempfile.TemporaryDirectory(prefix="crysray-campaign-") as scratch:
        options = _sample_options(args, screen, write_compositions(cells, Path(scratch)), cells)
        plan = plan_campaign(options, store, payload, None)
    record_manifest_section(store, "campaign", section)
    return plan, options, known


def _sample_options(args, screen, compositions: Path, cells) -> argparse.Namespace:
    """The options of ``crysray sample`` this campaign amounts to (its defaults elsewhere)."""
    from crysray.command.sample import add_arguments as add_sample_arguments

    p = argparse.ArgumentParser()
    add_sample_arguments(p)
    options = p.parse_args(["--out", str(args.out)])
    options.checkpoint, options.compositions, options.task = args.checkpoint, compositions, "csp"
    options.num_samples = screen.samples_per_composition * len(cells)
    options.max_atoms = screen.max_atoms
    for name in ("steps", "batch_size", "replicas", "cpus_per_replica", "gpus_per_replica",
                 "seed", "address", "verbose"):  # fmt: skip
        setattr(options, name, getattr(args, name))
    return options


def _screen(args, store, screen, funnel, known_paths, hull_exclude) -> bool:
    """The tiered funnel over the units not screened yet; False when there were none."""
    from crysray.console import Progress, quiet_stderr
    from crysray.screen.stage import regroup, screened_units

    units = regroup(store, screen)
    todo = sorted(set(units) - set(screened_units(store)))
    if not todo:
        return False
    from crysray.command.common import log_file

    args.log_file = log_file(store, "campaign")
    with quiet_stderr(args.log_file, args.verbose) as terminal:
        from crysray.distributed import screen_units

        total = store.dataset([f"screen/_input/unit-{u:08d}.parquet" for u in todo]).count_rows()
        progress = Progress("screened", total, unit="crystals", stream=terminal)
        screen_units(store, todo, screen, funnel, args, known_paths, hull_exclude,
                     on_progress=progress.update_to)  # fmt: skip
        progress.update_to(total)
        progress.close()
    return True


def _read_exclusions(items: list[str]) -> set[str]:
    """Reduced formulas from the arguments, a file's lines where an argument is a file."""
    from pymatgen.core import Composition

    out = set()
    for item in items:
        lines = Path(item).read_text().split() if Path(item).is_file() else [item]
        for line in lines:
            try:
                out.add(Composition(line).reduced_formula)
            except ValueError as err:
                raise ValueError(f"--exclude-formulas: {line!r} is not a formula") from err
    return out


def _read_hull_exclude(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            material, _, formula = (part.strip() for part in line.partition(","))
            if not formula:
                raise ValueError(f"{path}:{n}: expected material_id,formula")
            out[material] = formula
    return out
