"""Test support shared by test modules (importable as ``support``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from crysray.methods.kldm_lattice import LatticeStats
from crysray.methods.registry import METHODS, build_method, load_config
from crysray.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "crysbfn_perov5.pt"  # the Perov-5 CrysBFN the README samples

TINY_NET = ["net.hidden_dim=32", "net.num_layers=1", "net.num_freqs=4", "net.time_dim=16"]
TINY = [*TINY_NET, "method.train_steps=[10]", "method.noise_bank_size=2048"]  # CrysBFN

# Perov-5-like lattice statistics (5-atom cells, ~4 A edges) for untrained KLDM models
PEROV_STATS = LatticeStats.from_table(
    torch.tensor([5, 5]), torch.tensor([[4.0, 4.0, 4.0], [4.2, 4.1, 4.0]]), min_count=1
).to_dict()

# every registered method: its packaged Perov-5 config, the overrides that make it tiny and
# the training-split statistics it needs (section, values)
TINY_METHODS = {
    "crysbfn": ("crysbfn_perov5", TINY, ("data", {"lattice_std": 1.96})),
    "kldm": ("kldm_perov5", TINY_NET, ("method", {"lattice_stats": PEROV_STATS})),
}
assert set(TINY_METHODS) == set(METHODS), "add the new method to TINY_METHODS"


# de novo generation: Perov-5-like types, and cells of 2 (weight 1), 4 (2) or 5 (3) atoms
DNG_DATA = {"atom_types": (8, 22, 38, 56), "num_atoms_counts": (0, 0, 1, 0, 2, 3)}


def tiny_config(method: str = "crysbfn", overrides: list[str] = ()):
    """A tiny config of a registered method, with the training-split statistics filled in."""
    name, tiny, (section, statistics) = TINY_METHODS[method]
    config = load_config(name, list(tiny) + list(overrides)).replace(section, **statistics)
    return config.replace("data", **DNG_DATA) if config.method.task == "dng" else config


def write_tiny_checkpoint(path: Path, overrides: list[str] = (), method: str = "crysbfn") -> Path:
    """An untrained tiny checkpoint (fast to load and sample)."""
    config = tiny_config(method, overrides)
    model = build_method(config)
    save_checkpoint(path, {"config": config.to_dict(), "ema": model.state_dict(), "step": 0})
    return path


# ---- jobs ------------------------------------------------------------------------------------


def job_command(script: str, *args) -> list[str]:
    """``python jobs/<script> args...`` with every argument as a string."""
    return [sys.executable, str(REPO / "jobs" / script), *map(str, args)]


def job_environment(ray_address: str | None = None, env: dict | None = None) -> dict:
    """The job's environment: ``env`` (default: this process's), joining ``ray_address``
    (``RAY_ADDRESS``) when given instead of starting a Ray instance of its own."""
    environment = dict(os.environ if env is None else env)
    if ray_address is not None:
        environment["RAY_ADDRESS"] = ray_address
    return environment


def run_job(
    script: str, *args, timeout: float = 900, ray_address: str | None = None,
    env: dict | None = None, cwd: Path = REPO,
) -> subprocess.CompletedProcess:  # fmt: skip
    """A job of ``jobs/`` run to the end as a user runs it from the repository root, its output
    captured as text. The environment (S3 endpoint, cache, offline) is inherited unless ``env``
    is given; the job starts its own Ray instance unless ``ray_address`` names one."""
    return subprocess.run(
        job_command(script, *args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env=job_environment(ray_address, env),
    )  # fmt: skip


def start_job(script: str, *args, ray_address: str | None = None) -> subprocess.Popen:
    """A job started in a session of its own (so that a test can kill exactly its processes),
    stdout and stderr together in ``proc.stdout``."""
    return subprocess.Popen(
        job_command(script, *args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, env=job_environment(ray_address),
        preexec_fn=_default_sigint,  # noqa: PLW1509 - sets one signal disposition, no locks
    )  # fmt: skip


def _default_sigint() -> None:
    """A test run started in the background of a shell inherits SIGINT ignored, and so would
    the job, which then could not be interrupted: give the job the default, as a terminal does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
