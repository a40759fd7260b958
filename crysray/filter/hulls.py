"""Hull references by name: prepared once per run on the driver, opened by every actor."""

from __future__ import annotations

from collections.abc import Iterable

from pymatgen.core import Composition

from crysray.filter.config import FunnelConfig
from crysray.filter.hull import HullReference, chemsys_of
from crysray.filter.local_hull import LocalHull
from crysray.filter.mp_hull import MPHull


def open_hull(config: FunnelConfig) -> HullReference:
    """The run's hull for an actor: reads caches only (``prepare_hull`` filled them)."""
    if config.hull == "mp":
        return MPHull(config.cache_dir)
    return LocalHull.build(cache_dir=config.cache_dir)


def prepare_hull(config: FunnelConfig, formulas: Iterable[str], api_key: str | None = None) -> dict:
    """Fill the hull's cache for the chemical systems of ``formulas``; what it is, for manifests.

    ``mp`` fetches the systems the cache lacks (never with ``config.offline``); ``local``
    builds its row cache. Returns the hull's description plus what was fetched.
    """
    chemsystems = {chemsys_of(Composition(f)) for f in set(formulas)}
    if config.hull == "mp":
        hull = MPHull(config.cache_dir)
        counts = hull.prepare(chemsystems, api_key, offline=config.offline)
        return {**hull.describe(), **counts}
    return open_hull(config).describe()
