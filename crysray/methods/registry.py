"""Method name -> config section and implementation. Nothing else in crysray branches on it.

Adding a method is one entry here: its config section (a ``MethodConfig`` subclass, in a module
without torch) and its ``GenerativeMethod`` subclass, imported lazily so that reading a config
never imports torch models. Reading a whole run config needs the sections, so the config
readers (``load_config``, ``config_from_dict``, ``override_config``) live here too, above
crysray.config, which knows no method.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from crysray.config import (
    MethodConfig,
    RunConfig,
    apply_overrides,
    parse_run_config,
    read_config_file,
)
from crysray.methods.crysbfn_config import CrysBFNConfig
from crysray.methods.kldm_config import KLDMConfig


@dataclass(frozen=True)
class MethodEntry:
    config: type[MethodConfig]
    implementation: str  # "module:Class"

    def load(self):
        from crysray.methods.base import GenerativeMethod

        module, _, name = self.implementation.partition(":")
        cls = getattr(importlib.import_module(module), name)
        if not issubclass(cls, GenerativeMethod):
            raise TypeError(f"{self.implementation} is not a GenerativeMethod")
        return cls


METHODS = {
    "crysbfn": MethodEntry(CrysBFNConfig, "crysray.methods.crysbfn:CrysBFN"),
    "kldm": MethodEntry(KLDMConfig, "crysray.methods.kldm:KLDM"),
}
METHOD_SECTIONS = {name: entry.config for name, entry in METHODS.items()}


def method_entry(name: str) -> MethodEntry:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


def method_config_class(name: str) -> type[MethodConfig]:
    return method_entry(name).config


def config_from_dict(d: dict) -> RunConfig:
    """A run config from a dict of any config version (a file, a checkpoint, a manifest)."""
    return parse_run_config(d, METHOD_SECTIONS)


def override_config(config: RunConfig, assignments: list[str]) -> RunConfig:
    """``config`` with ``section.key=value`` assignments applied (config.apply_overrides)."""
    return apply_overrides(config, assignments, METHOD_SECTIONS)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    """A packaged config by name (``crysbfn_perov5``) or a YAML file path, then overrides."""
    return override_config(config_from_dict(read_config_file(name_or_path)), overrides or [])


def method_class(config: RunConfig):
    return method_entry(config.method.name).load()


def build_method(config: RunConfig):
    return method_class(config)(config)


def fit_statistics(config: RunConfig, train_table) -> RunConfig:
    """``config`` with every statistic of the training split (a ``CrystalTable``) that the
    model needs filled in; statistics already set are kept. The one place they are computed:
    training, tests and tools all call this."""
    return method_class(config).fit_config(config, train_table)
