"""Training as a plain function over batches (nanoGPT order: lr, step, EMA, log, checkpoint).

``train`` knows nothing about Ray: a distributed caller passes ``wrap_model`` (DDP) and an
``on_checkpoint`` hook, and shards the batches itself.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from crysray.config import RunConfig
from crysray.methods.registry import build_method, config_from_dict
from crysray.train.checkpoint import load_weights, read_checkpoint, save_checkpoint
from crysray.types import CrystalBatch

log = logging.getLogger("crysray.train")


def learning_rate(config: RunConfig, step: int, elapsed_minutes: float) -> float:
    """Cosine decay from lr to min_lr over whichever budget (steps or minutes) ends first."""
    t = config.train
    progress = step / t.max_steps
    if t.max_minutes > 0:
        progress = max(progress, elapsed_minutes / t.max_minutes)
    progress = min(progress, 1.0)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate_loss(model, batches: Iterable[CrystalBatch], seed: int = 1234) -> float:
    """Mean loss over batches with a fixed generator, so values are comparable over time."""
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    total, count = 0.0, 0
    for batch in batches:
        loss, _ = model.loss(batch.to(device), generator)
        total += float(loss) * batch.num_crystals
        count += batch.num_crystals
    return total / max(count, 1)


def train(
    config: RunConfig,
    epoch_batches: Callable[[int], Iterable[CrystalBatch]],
    checkpoint_path: str | Path,
    *,
    val_batches: Callable[[], Iterable[CrystalBatch]] | None = None,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    on_checkpoint: Callable[[Path, dict], None] | None = None,
    is_main: bool = True,
    rank: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Train until ``max_steps`` or ``max_minutes``; resume from ``checkpoint_path`` if it exists.

    epoch_batches(epoch) yields this worker's batches of one epoch. Every rank must call
    ``on_checkpoint`` the same number of times (Ray Train requires it); only ``is_main`` writes.
    """
    t = config.train
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    model = build_method(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    # "batch": batches of the current epoch already trained on, so a resume continues the
    # epoch where the data left off instead of replaying it
    state = {"step": 0, "epoch": 0, "batch": 0, "elapsed": 0.0, "history": []}
    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.exists():
        state = _resume(checkpoint_path, model, ema, optimizer, config)
        log.info("resumed from %s at step %d", checkpoint_path, state["step"])
    elif t.init_from:
        _initialise(t.init_from, model, ema, config)
        log.info("initialised from the EMA weights of %s", t.init_from)
    trained = wrap_model(model)
    # draws happen where the model lives; a device generator keeps them reproducible there
    generator = torch.Generator(device=device).manual_seed(t.seed * 1000 + rank + state["step"])
    start = time.monotonic() - state["elapsed"] * 60
    metrics: dict = {}
    while not _finished(config, state):
        for batch in itertools.islice(epoch_batches(state["epoch"]), state["batch"], None):
            elapsed = (time.monotonic() - start) / 60
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, state["step"], elapsed)
            loss, metrics = trained(batch.to(device), generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _zero_nonfinite_grads(model)
            optimizer.step()
            state["step"] += 1
            state["batch"] += 1
            decay = t.ema_decay if state["step"] > t.ema_start else 0.0
            update_ema(ema, model, decay)
            state["elapsed"] = (time.monotonic() - start) / 60
            if is_main and state["step"] % t.log_every == 0:
                log.info(
                    "step %d/%d epoch %d %.1f min (ETA %s) lr %.2e %s",
                    state["step"],
                    t.max_steps,
                    state["epoch"],
                    state["elapsed"],
                    _eta(config, state),
                    optimizer.param_groups[0]["lr"],
                    _fmt(metrics),
                )
            if state["step"] % t.checkpoint_every == 0 or _finished(config, state):
                _checkpoint(
                    config,
                    state,
                    model,
                    ema,
                    optimizer,
                    metrics,
                    val_batches,
                    checkpoint_path,
                    on_checkpoint,
                    is_main,
                )
            if _finished(config, state):
                break
        else:
            state["epoch"] += 1
            state["batch"] = 0
    return {"step": state["step"], "epoch": state["epoch"], "minutes": state["elapsed"], **metrics}


def _eta(config: RunConfig, state: dict) -> str:
    """Time left, h:mm, by whichever budget (steps or minutes) ends first."""
    t = config.train
    done = state["step"] / t.max_steps
    if t.max_minutes > 0:
        done = max(done, state["elapsed"] / t.max_minutes)
    if done <= 0:
        return "--:--"
    minutes = round(state["elapsed"] * (1 - min(done, 1.0)) / done)
    return f"{minutes // 60}:{minutes % 60:02d}"


def _finished(config: RunConfig, state: dict) -> bool:
    t = config.train
    return state["step"] >= t.max_steps or (t.max_minutes > 0 and state["elapsed"] >= t.max_minutes)


def _zero_nonfinite_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            p.grad.zero_()


def _checkpoint(config, state, model, ema, optimizer, metrics, val_batches, path, hook, is_main):
    record = {
        "step": state["step"],
        "minutes": round(state["elapsed"], 3),
        "train_loss": metrics.get("loss"),
    }
    if val_batches is not None:
        record["val_loss"] = evaluate_loss(ema, val_batches())
    state["history"].append(record)
    if is_main:
        save_checkpoint(
            path,
            {
                "config": config.to_dict(),
                "ema": ema.state_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": state["step"],
                "epoch": state["epoch"],
                "batch": state["batch"],
                "elapsed": state["elapsed"],
                "history": state["history"],
                "metrics": record,
            },
        )
        log.info("checkpoint %s %s", path, _fmt(record))
    if hook is not None:
        hook(path, record)


def _resume(path, model, ema, optimizer, config) -> dict:
    payload = read_checkpoint(path)
    # budgets and logging may change between resumes; the model and its data may not
    changed = _changed_sections(payload, config, ("net", "method", "data"), path)
    if changed:
        raise ValueError(
            f"{path} holds a run with a different {'/'.join(changed)} configuration; "
            "use another run directory to start a new run"
        )
    load_weights(model, payload["model"], str(path))
    load_weights(ema, payload["ema"], str(path))
    optimizer.load_state_dict(payload["optimizer"])
    state = {k: payload[k] for k in ("step", "epoch", "elapsed", "history")}
    return {**state, "batch": payload.get("batch", 0)}  # runs saved before "batch" existed


def _initialise(path, model, ema, config) -> None:
    payload = read_checkpoint(path)
    # only the architecture and data must agree; loss options may differ from the source run
    changed = _changed_sections(payload, config, ("net", "data"), path)
    if changed:
        raise ValueError(f"{path} holds a model with a different {'/'.join(changed)} configuration")
    load_weights(model, payload["ema"], str(path))
    load_weights(ema, payload["ema"], str(path))


def _changed_sections(payload: dict, config: RunConfig, sections, path) -> list[str]:
    """Sections in which the checkpoint's config differs from ``config``, both normalised
    (fields added since the checkpoint was written compare at their defaults)."""
    try:
        saved = config_from_dict(payload.get("config", {})).to_dict()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: configuration does not match this crysray version: {err}")
    current = config.to_dict()
    return [k for k in sections if saved[k] != current[k]]


def _fmt(d: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
