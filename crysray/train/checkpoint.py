"""Checkpoints that rebuild their own model.

A checkpoint is one ``torch.save`` file of plain containers and tensors (loadable with
``weights_only=True``): the format tag, the full ``RunConfig`` as a dict, the EMA weights and,
for training checkpoints, the raw weights, optimiser state and progress counters.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from crysray.methods.registry import build_method, config_from_dict

FORMAT = "crysray-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the code."""


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically so a crash never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch errors mean the same to a user
        # the first line only: torch's unpickling advice is for checkpoints, not for files
        # that are not one (a CIF, a YAML given as --checkpoint)
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path} is not a crysray checkpoint (cannot read it: {type(err).__name__}: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a crysray checkpoint (expected format {FORMAT})")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "ema"):
    """Rebuild the method from a checkpoint's config and load its (EMA) weights strictly."""
    payload = read_checkpoint(path)
    try:
        config = config_from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: configuration does not match this crysray version: {err}"
        ) from None
    model = build_method(config)
    load_weights(model, payload[weights], source=str(path))
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, state: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with one readable line instead of a long traceback."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape differs", wrong),
            )
            if keys
        )
        raise CheckpointError(
            f"{source} was written for a different model configuration ({detail})"
        )
    model.load_state_dict(state)


def export_inference(src: str | Path, dst: str | Path) -> None:
    """Keep only config + EMA weights (what sampling needs): the file that ships."""
    payload = read_checkpoint(src)
    keep = {k: payload[k] for k in ("config", "ema", "step", "metrics") if k in payload}
    save_checkpoint(Path(dst), keep)


def checkpoint_hash(path: str | Path) -> str:
    """Short content hash, recorded with every generated crystal."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digest[:16]
