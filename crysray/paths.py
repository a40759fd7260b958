"""Where crysray reads shared inputs and keeps its caches (environment variables first)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_PARENT = Path(__file__).resolve().parents[2]  # crysray/paths.py -> checkout -> its parent


def default_data_dir() -> Path:
    """$CRYSRAY_DATA_DIR, else ``../shared/data`` next to the repository."""
    return Path(os.environ.get("CRYSRAY_DATA_DIR") or REPO_PARENT / "shared" / "data")


def default_cache_dir() -> Path:
    """$CRYSRAY_CACHE, else ``~/.cache/crysray``."""
    return Path(os.environ.get("CRYSRAY_CACHE") or Path.home() / ".cache" / "crysray")
