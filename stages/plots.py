"""Saving figures reproducibly: no software version or date in the PNG, written under a temporary name."""

from __future__ import annotations

from pathlib import Path


def new_figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, metadata={"Software": None})  # same data, same bytes
    plt.close(fig)
    tmp.rename(path)
