"""``crysray``: the command line (``crysray data mp ...``; training is ``crysray-train``).

    crysray data mp --preset mp20-like --out data/mp20_like
    crysray data mp --chemsys Li-Fe-O Li-Mn-O --max-sites 40 --experimental-only --out data/li_tm_o

Errors exit with code 2 and one line; the API key (``MP_API_KEY`` or ``--mp-api-key``) is
never printed or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _data_mp(args) -> dict:
    from crysray.data.mp import build_mp_dataset, query_from_options

    query = query_from_options(
        args.preset, elements=tuple(args.elements or ()), chemsys=tuple(args.chemsys or ()),
        max_sites=args.max_sites, max_e_above_hull=args.max_e_above_hull,
        experimental_only=args.experimental_only or None,
    )  # fmt: skip
    if query.max_sites < 1:
        raise ValueError("--max-sites must be >= 1")
    return build_mp_dataset(query, args.out, args.mp_api_key, offline=args.offline,
                            cache_dir=args.cache_dir, workers=args.workers)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    from crysray.data.mp import PRESETS

    top = argparse.ArgumentParser(prog="crysray", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = top.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="build datasets").add_subparsers(
        dest="source", required=True
    )
    mp = data.add_parser("mp", help="a training dataset from a Materials Project query")
    mp.add_argument(
        "--out", type=Path, required=True, help="directory for {train,val,test}.parquet"
    )
    mp.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="mp20-like: <= 20 sites, E_hull <= 0.08 eV/atom (not MP-20 itself: see "
        "crysray/data/mp.py)",
    )
    mp.add_argument("--elements", nargs="+", help="materials containing all of these elements")
    mp.add_argument("--chemsys", nargs="+", help="materials of exactly these systems, e.g. Li-Fe-O")
    mp.add_argument("--max-sites", type=int, default=None, help="default 20")
    mp.add_argument(
        "--max-e-above-hull", type=float, default=None, help="eV/atom (default: no limit)"
    )
    mp.add_argument(
        "--experimental-only", action="store_true", help="only materials with an ICSD entry"
    )
    mp.add_argument(
        "--offline", action="store_true", help="only the cached answer; never the network"
    )
    mp.add_argument("--mp-api-key", default=None, help="default $MP_API_KEY; never written")
    mp.add_argument(
        "--cache-dir", type=Path, default=None, help="default $CRYSRAY_CACHE or ~/.cache/crysray"
    )
    mp.add_argument("--workers", type=int, default=2, help="processes for canonicalisation")
    mp.set_defaults(run=_data_mp)
    return top


def main(argv: list[str] | None = None) -> int:
    from crysray.mp import MPError

    args = parser().parse_args(argv)
    try:
        summary = args.run(args)
    except (ValueError, OSError, MPError) as err:
        print(f"crysray {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
