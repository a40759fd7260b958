"""Method name -> constructor. Nothing else in crysray branches on the method name."""

from __future__ import annotations

from crysray.config import RunConfig


def _crysbfn(config: RunConfig):
    from crysray.methods.crysbfn import CrysBFN

    return CrysBFN(config)


METHODS = {"crysbfn": _crysbfn}


def build_method(config: RunConfig):
    try:
        constructor = METHODS[config.method.name]
    except KeyError:
        raise ValueError(
            f"unknown method {config.method.name!r}; known: {sorted(METHODS)}"
        ) from None
    return constructor(config)
