"""``crysray-train``: train a method on one machine without Ray (``crysray ray-train`` adds Ray
Train).

Example (the shipped Perov-5 model)::

    crysray-train --config crysbfn_perov5 --run-dir runs/perov5 \
        --export checkpoints/crysbfn_perov5.pt \
        train.max_minutes=97 train.ema_decay=0.999 train.threads=1

Rerunning the same command resumes the run (or, once it is finished, only re-exports).
"""

from __future__ import annotations

import argparse
import sys


def train_main(argv: list[str] | None = None) -> int:
    """``crysray-train`` (also ``crysray train``)."""
    from crysray.command.common import HelpFormatter, finish
    from crysray.command.train import add_local_arguments, run_local

    parser = argparse.ArgumentParser(prog="crysray-train", description=__doc__,
                                     formatter_class=HelpFormatter)  # fmt: skip
    add_local_arguments(parser)
    return finish("crysray-train", run_local, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(train_main())
