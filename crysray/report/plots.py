"""The report's PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot(out: Path, name: str, labels, values, title: str, xlabel: str, hist: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    if hist:
        ax.hist(values, bins=50, color="tab:blue")
        ax.axvline(0.1, color="tab:red", ls="--", label="0.1 eV/atom")
        ax.legend()
    else:
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=7)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("crystals")
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
