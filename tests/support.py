"""Test support shared by test modules (importable as ``support``)."""

from __future__ import annotations

from pathlib import Path

from crysray.config import load_config
from crysray.methods.registry import build_method
from crysray.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "net.hidden_dim=32",
    "net.num_layers=1",
    "net.num_freqs=4",
    "net.time_dim=16",
    "method.train_steps=[10]",
    "method.noise_bank_size=2048",
]


def write_tiny_checkpoint(path: Path, overrides: list[str] = ()) -> Path:
    """An untrained tiny CrysBFN checkpoint (fast to load and sample)."""
    config = load_config("crysbfn_perov5", TINY + list(overrides)).replace("data", lattice_std=1.96)
    model = build_method(config)
    save_checkpoint(path, {"config": config.to_dict(), "ema": model.state_dict(), "step": 0})
    return path
