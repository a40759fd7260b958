"""How the evaluation commands end: one JSON line on stdout (and appended to ``--out``), or one
error line and exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from crysray.train.checkpoint import CheckpointError


def emit(command: str, compute: Callable[[], dict], out: Path | None) -> int:
    try:
        result = compute()
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    if out:
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0
