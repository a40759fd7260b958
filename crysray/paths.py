"""Where crysray keeps its caches (files it reads live in crysray.resources)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$CRYSRAY_CACHE, else ``~/.cache/crysray``."""
    return Path(os.environ.get("CRYSRAY_CACHE") or Path.home() / ".cache" / "crysray")
