"""What every command shares: help with defaults, the Ray options, and how a command ends
(its result, one error line, an interruption, or a failure of Ray itself)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
ADDRESS_HELP = (
    "Ray cluster to join, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS; without "
    "either, a private Ray instance of this run's own on this machine, never a cluster "
    "someone else started)"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; every option's default after its help, unless the help
    already says it (options whose default is computed say how)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings:
            return text
        if action.default == []:  # a repeatable option given no times
            return text + " (default: none)"
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray")
    group.add_argument("--address", default=None, help=ADDRESS_HELP)
    group.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own output (start-up, progress blocks, warnings) in the terminal; by "
        "default it goes to the log file named at the start of the run",
    )


def job_working_dir() -> str | None:
    """The working directory a ``ray job submit --working-dir`` job runs in (a temporary copy,
    gone when the cluster stops), or None when this process is not such a job."""
    config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not config:
        return None
    try:
        runtime_env = json.loads(config).get("runtime_env") or {}
    except ValueError:
        return None
    return os.getcwd() if runtime_env.get("working_dir") else None


def check_location(location: str, option: str) -> None:
    """Refuse a relative local path inside a job's working directory: it would name a place in
    the job's temporary copy of the directory, lost when the cluster stops (and the job cannot
    know the directory it was submitted from)."""
    if "://" in str(location) or Path(location).is_absolute():
        return
    copy = job_working_dir()
    if copy is not None:
        raise ValueError(
            f"{option} {location} is relative, and this job runs in a temporary copy of the "
            f"submitting directory ({copy}), lost when the cluster stops; give an absolute path "
            "on storage every node shares, or a URL such as s3://bucket/prefix"
        )


def log_file(store, command: str) -> Path:
    """Where Ray's own output goes: ``logs/<command>.log`` in a local run directory, a
    temporary file for a run on object storage."""
    from crysray.storage import is_url

    if not is_url(store.location):
        return Path(store.location) / "logs" / f"{command}.log"
    folder = Path(tempfile.gettempdir()) / "crysray-logs"
    return folder / f"{command}-{os.getpid()}.log"


def finish(name: str, run, args) -> int:
    """Run ``run(args)`` and turn its end into an exit code and at most one stderr line."""
    from crysray.mp import MPError
    from crysray.train.checkpoint import CheckpointError

    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, OSError, CheckpointError, MPError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # Ray's own failures: one line, the details in the log
        # Ray's own exceptions, and ours for a Ray that would not start (crysray.distributed)
        if not type(err).__module__.startswith(("ray", "crysray.distributed")):
            raise
        where = getattr(args, "log_file", None)
        details = f"; details in {where}" if where else ""
        print(f"{name}: error: {ray_failure(err)}; finished work is kept, rerun the same "
              f"command to resume{details}", file=sys.stderr)  # fmt: skip
        return 3


def ray_failure(err: Exception) -> str:
    """One line for a failure Ray reports: the error a worker raised if Ray's message carries
    one (e.g. a replica that could not load its checkpoint), else Ray's own first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # Ray colours its messages
    if type(err).__name__ == "RayFailure":  # crysray.distributed's own words
        return (text.strip().splitlines() or [""])[0][:400]
    raised = [line for line in text.splitlines() if _RAISED.match(line)]
    if raised:
        kind, _, message = raised[-1].partition(": ")
        return f"a Ray worker failed: {kind.rsplit('.', 1)[-1]}: {message.strip()[:400]}"
    first = (text.strip().splitlines() or [""])[0][:300]
    return f"Ray failed ({type(err).__name__}: {first})"


_RAISED = re.compile(r"^[\w.]*(Error|Exception|Interrupt): ")
