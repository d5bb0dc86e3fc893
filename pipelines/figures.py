"""Plots as files: matplotlib on its file-only backend, imported on first use (a run that
draws nothing never loads it), and one way to save a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only: no display needed on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: int = 120, tight: bool = True, **savefig: Any) -> None:
    """Lay out (``tight``), write ``fig`` to ``path`` and free it."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig)
    pyplot().close(fig)
