"""Where crysray finds the external files it needs (placeholder until the resolver lands)."""

from __future__ import annotations

from pathlib import Path

from crysray.paths import REPO_PARENT


def mp_elemental_references_file() -> Path:
    return REPO_PARENT / "shared" / "data" / "mp_reference" / "mp-elemental-reference-entries-2023-02-07.json.gz"


def dataset_file(dataset: str, split: str) -> Path:
    from crysray.data.csv import dataset_path

    return dataset_path(dataset, split)
