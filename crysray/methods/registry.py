"""Method name -> config section and implementation. Nothing else in crysray branches on it.

Adding a method is one entry here: its config section (a ``MethodConfig`` subclass) and its
``GenerativeMethod`` subclass, imported lazily so that reading a config never imports torch
models.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from crysray.config import CrysBFNConfig, KLDMConfig, MethodConfig, RunConfig


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


def method_entry(name: str) -> MethodEntry:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


def method_class(config: RunConfig):
    return method_entry(config.method.name).load()


def build_method(config: RunConfig):
    return method_class(config)(config)
