"""``crysray``: the command line.

    crysray sample --out outputs/perov5_csp          sample crystals (a pool of Ray actors)
    crysray funnel --run outputs/perov5_csp          MatGL stability funnel over a run
    crysray report --run outputs/perov5_csp          report.md, report.json and plots
    crysray campaign --chemsys Li-Mn-O --out s1      screen chemical systems end to end
    crysray train --run-dir runs/perov5              train on this machine (= crysray-train)
    crysray ray-train --workers 2 --name perov5      train with Ray Train (DDP)
    crysray eval csp|dng --checkpoint model.pt       CSP or DNG metrics of a checkpoint
    crysray data mp --preset mp20-like --out d       a dataset from a Materials Project query

``crysray <command> --help`` lists a command's options with their defaults. The scripts in
jobs/ run the same commands (``python jobs/mass_sample.py`` is ``crysray sample``), for
``ray job submit``. Errors exit with code 2 and one line; Ctrl-C with one line and code 130;
a run that Ray itself fails keeps its finished work (code 3). Runs with no ``--address`` and
no ``RAY_ADDRESS`` start a private Ray instance. The Materials Project API key
(``MP_API_KEY`` or ``--mp-api-key``) is never printed or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crysray.command import campaign, funnel, report, sample, train
from crysray.command.common import HelpFormatter, finish

# name -> (module, help); each module has add_arguments(parser) and run(args)
COMMANDS = {
    "sample": (sample, "sample crystals with a pool of model replicas on Ray, into Parquet"),
    "funnel": (funnel, "the MatGL stability funnel over a sampling run"),
    "report": (report, "report.md, report.json and plots of a run"),
    "campaign": (campaign, "screen chemical systems: CSP, tiered funnel, ranked candidates"),
}
# the names the job scripts go by in their messages
JOB_NAMES = {"sample": "mass_sample", "funnel": "filter_stability", "report": "report",
             "campaign": "campaign", "ray-train": "train"}  # fmt: skip


def _data_mp(args) -> int:
    from crysray.data.mp import build_mp_dataset, query_from_options
    from crysray.mp import MPError

    query = query_from_options(
        args.preset, elements=tuple(args.elements or ()), chemsys=tuple(args.chemsys or ()),
        max_sites=args.max_sites, max_e_above_hull=args.max_e_above_hull,
        experimental_only=args.experimental_only or None,
    )  # fmt: skip
    if query.max_sites < 1:
        raise ValueError("--max-sites must be >= 1")
    try:
        summary = build_mp_dataset(query, args.out, args.mp_api_key, offline=args.offline,
                                   cache_dir=args.cache_dir, workers=args.workers)  # fmt: skip
    except MPError as err:
        if str(err).startswith("no Materials Project API key"):  # name this command's options
            raise MPError("no Materials Project API key: set MP_API_KEY or pass --mp-api-key; "
                          "--offline uses only an answer cached earlier") from None  # fmt: skip
        raise
    print(json.dumps(summary, indent=1, default=list))
    return 0


def _add_data(commands) -> None:
    from crysray.data.mp import PRESETS

    data = commands.add_parser("data", help="build datasets", formatter_class=HelpFormatter)
    sources = data.add_subparsers(dest="source", required=True)
    mp = sources.add_parser("mp", help="a training dataset from a Materials Project query",
                            formatter_class=HelpFormatter)  # fmt: skip
    mp.add_argument("--out", type=Path, required=True,
                    help="directory for {train,val,test}.parquet")  # fmt: skip
    mp.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="mp20-like: <= 20 sites, E_hull <= 0.08 eV/atom (not MP-20 itself: see "
                    "crysray/data/mp.py); default: no preset")  # fmt: skip
    mp.add_argument("--elements", nargs="+",
                    help="materials containing all of these elements (default: any)")
    mp.add_argument("--chemsys", nargs="+",
                    help="materials of exactly these systems, e.g. Li-Fe-O (default: any)")
    mp.add_argument("--max-sites", type=int, default=None, help="default 20")
    mp.add_argument("--max-e-above-hull", type=float, default=None,
                    help="eV/atom (default: no limit)")  # fmt: skip
    mp.add_argument("--experimental-only", action="store_true",
                    help="only materials with an ICSD entry")  # fmt: skip
    mp.add_argument("--offline", action="store_true",
                    help="only the cached answer; never the network")  # fmt: skip
    mp.add_argument("--mp-api-key", default=None, help="default $MP_API_KEY; never written")
    mp.add_argument("--cache-dir", type=Path, default=None,
                    help="default $CRYSRAY_CACHE or ~/.cache/crysray")  # fmt: skip
    mp.add_argument("--workers", type=int, default=2, help="processes for canonicalisation")
    mp.set_defaults(handler=_data_mp)


def _eval(args) -> int:
    if args.which == "csp":
        from crysray.eval.run_csp import main as run
    else:
        from crysray.eval.run_dng import main as run
    return run(args.rest)


def parser(prog: str = "crysray") -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    for name, (module, text) in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=module.__doc__,
                                  formatter_class=HelpFormatter)  # fmt: skip
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    local = commands.add_parser("train", help="train on this machine, no Ray (crysray-train)",
                                description=train.__doc__, formatter_class=HelpFormatter)
    train.add_local_arguments(local)
    local.set_defaults(handler=train.run_local)
    ray_train = commands.add_parser("ray-train", help="train with Ray Train (DDP), resumable",
                                    description=train.__doc__, formatter_class=HelpFormatter)
    train.add_ray_train_arguments(ray_train)
    ray_train.set_defaults(handler=train.run_ray)
    evaluate = commands.add_parser("eval", help="CSP or DNG metrics of a checkpoint "
                                   "(crysray eval csp --help)", add_help=False)  # fmt: skip
    evaluate.add_argument("which", choices=["csp", "dng"])
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)
    evaluate.set_defaults(handler=_eval)
    _add_data(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return finish(f"crysray {args.command}", args.handler, args)


def job_main(command: str, script: str, description: str, argv: list[str] | None = None) -> int:
    """A job script's main: ``crysray <command>`` under the script's name (its usage line and
    the ``<job>: error:`` prefix of its messages), its docstring as the description."""
    p = argparse.ArgumentParser(prog=script, description=description,
                                formatter_class=HelpFormatter)  # fmt: skip
    module = COMMANDS[command][0] if command in COMMANDS else train
    if command == "ray-train":
        train.add_ray_train_arguments(p)
        run = train.run_ray
    else:
        module.add_arguments(p)
        run = module.run
    return finish(JOB_NAMES[command], run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
