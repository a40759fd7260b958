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

# parameters renamed since checkpoints shipped (old key prefix -> new); every load goes through
# ``upgrade_state``, so the files themselves never need rewriting
RENAMED = {
    # one type-input module for given (embedded Z) and generated (type beliefs) atom types
    "denoiser.type_embedding.": "denoiser.type_input.",
}


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
        # one line of ours: torch's unpickling advice is about trusting a checkpoint, not
        # about a file that is none (a CIF or a YAML given as --checkpoint)
        raise CheckpointError(f"{path} is not a crysray checkpoint ({_unreadable(path, err)})")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a crysray checkpoint (expected format {FORMAT})")
    return payload


def _unreadable(path: Path, err: Exception) -> str:
    """Why torch could not read ``path``, in a few words."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
        return "cannot read it: not a file written by torch.save"
    if "Weights only load failed" in str(err):
        return "cannot read it: it holds Python objects, not only tensors and plain containers"
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"cannot read it: {type(err).__name__}: {first}"


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
    state = upgrade_state(state)
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


def upgrade_state(state: dict) -> dict:
    """A state dict with parameters saved under an old name (``RENAMED``) under today's."""
    return {_renamed(key): value for key, value in state.items()}


def _renamed(key: str) -> str:
    for old, new in RENAMED.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def export_inference(src: str | Path, dst: str | Path, domain: dict | None = None) -> None:
    """Keep only config + EMA weights (what sampling needs): the file that ships; with
    ``domain`` (crysray.data.domain.TrainingDomain.to_dict) the training domain the sampling
    jobs check compositions against."""
    payload = read_checkpoint(src)
    keep = {k: payload[k] for k in ("config", "ema", "step", "metrics", "domain") if k in payload}
    if domain is not None:
        keep["domain"] = domain
    save_checkpoint(Path(dst), keep)


def checkpoint_hash(path: str | Path) -> str:
    """Short content hash, recorded with every generated crystal."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digest[:16]
