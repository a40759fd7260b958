"""Typed, frozen configuration: dataclass defaults, YAML files and ``a.b=c`` overrides.

The whole configuration is stored in every checkpoint and in Parquet provenance, so a
checkpoint rebuilds its own model. Plain dataclasses that know no method: each method's
section lives beside the method, and crysray.methods.registry (``load_config``,
``config_from_dict``) passes the name -> section mapping to the parsers here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml


@dataclass(frozen=True)
class NetConfig:
    hidden_dim: int = 256
    num_layers: int = 4
    num_freqs: int = 32  # Fourier frequencies k = 0..num_freqs-1 of fractional differences
    time_dim: int = 128
    max_atomic_number: int = 100


@dataclass(frozen=True)
class MethodConfig:
    """Fields every method has. Each method extends it with its own section, which lives beside
    the method (crysray/methods/<name>_config.py); the registry maps ``name`` to the section
    class, so ``method.name`` in a config file selects both the method and its keys."""

    name: str = "crysbfn"
    task: str = "csp"  # "csp" (types given) or "dng" (types generated)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "perov_5"
    lattice_std: float = 0.0  # 0: computed from the training split and then stored here
    # de novo generation (task dng), filled from the training split and stored with the model:
    # the atomic numbers the model generates, and how many training crystals have n atoms
    # (entry n), the distribution sampled cells are drawn from
    atom_types: tuple[int, ...] = ()
    num_atoms_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.0
    max_steps: int = 100_000
    max_minutes: float = 0.0  # wall-clock limit, 0 = none
    ema_decay: float = 0.995
    ema_start: int = 500
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    threads: int = 0  # torch intra-op threads, 0 = torch default
    init_from: str = ""  # checkpoint whose EMA weights start a new run (fresh optimiser)


CONFIG_VERSION = 2  # 1: before per-method sections (a flat CrysBFN-only method section)

# method name -> its config section; the registry (crysray.methods.registry) owns the mapping
MethodSections = Mapping[str, type[MethodConfig]]


@dataclass(frozen=True)
class RunConfig:
    net: NetConfig = field(default_factory=NetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"version": CONFIG_VERSION, **json.loads(json.dumps(dataclasses.asdict(self)))}

    def replace(self, section: str, **values) -> RunConfig:
        return dataclasses.replace(
            self, **{section: dataclasses.replace(getattr(self, section), **values)}
        )


_SECTIONS = {"net": NetConfig, "method": MethodConfig, "data": DataConfig, "train": TrainConfig}


def parse_run_config(d: dict, method_sections: MethodSections) -> RunConfig:
    """Build from a dict of any config version; missing keys take today's defaults, so a config
    written before a field existed still loads (and compares equal once normalised).
    ``method.name`` picks the method section class from ``method_sections``."""
    d = dict(d)
    version = d.pop("version", 1)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ValueError(
            f"config version {version!r} is newer than this crysray understands "
            f"({CONFIG_VERSION}); upgrade crysray"
        )
    unknown = set(d) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"unknown config sections: {sorted(unknown)}")
    sections = {
        name: _build(cls, d.get(name) or {}) for name, cls in _SECTIONS.items() if name != "method"
    }
    method = d.get("method") or {}
    name = method.get("name", "crysbfn")
    if name not in method_sections:
        raise ValueError(f"unknown method {name!r}; known: {sorted(method_sections)}")
    return RunConfig(method=_build(method_sections[name], method), **sections)


def apply_overrides(
    config: RunConfig, assignments: list[str], method_sections: MethodSections
) -> RunConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML). ``method.name`` is applied
    first, so the other method keys are checked against the chosen method's section."""
    d = config.to_dict()
    items = sorted(assignments, key=lambda item: not item.startswith("method.name="))
    for item in items:
        key, sep, raw = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or section not in d or section == "version" or name not in d[section]:
            raise ValueError(f"unknown config override {item!r} (expected section.key=value)")
        d[section][name] = yaml.safe_load(raw)
        if key == "method.name":  # another method: its own section with its defaults
            d = {**d, "method": {"name": d["method"]["name"], "task": d["method"]["task"]}}
            d = parse_run_config(d, method_sections).to_dict()
    return parse_run_config(d, method_sections)


def _build(cls, values: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown keys in config section {cls.__name__}: {sorted(unknown)}")
    defaults = cls()
    return cls(
        **{k: _coerce(getattr(defaults, k), v, f"{cls.__name__}.{k}") for k, v in values.items()}
    )


def _coerce(default, value, name: str):
    """Give ``value`` the type of the field's default (YAML reads ``3e-4`` as a string)."""
    try:
        if isinstance(default, tuple):
            return tuple(type(default[0])(v) for v in value) if default else tuple(value)
        if isinstance(default, bool):
            return bool(value)
        return type(default)(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"config {name}: cannot use {value!r} as {type(default).__name__}"
        ) from None


def read_config_file(name_or_path: str) -> dict:
    """The dict of a packaged config by name (``crysbfn_perov5``) or of a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        resource = resources.files("crysray") / "configs" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise FileNotFoundError(f"no config file or packaged config named {name_or_path!r}")
        text = resource.read_text()
    return yaml.safe_load(text) or {}
