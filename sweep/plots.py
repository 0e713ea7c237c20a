"""Matplotlib figures, as in the tutorials: accuracy and loss per epoch, training vs validation."""

from __future__ import annotations

from pathlib import Path


def pyplot():  # noqa: ANN201 - matplotlib.pyplot, imported lazily with a headless backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_with_legend_below(fig, legend_from, title: str, path: Path) -> Path:  # noqa: ANN001
    """Shared finish of multi-panel figures: one legend under the panels, a title, saved and closed."""
    handles, labels = legend_from.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=9)
    fig.suptitle(title)
    fig.savefig(path)
    pyplot().close(fig)
    return path


def curve(history: dict[str, list[float]], metric: str, title: str, path: Path) -> Path:
    """Plot `metric` and `val_<metric>` against epoch and save a PNG at `path`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
        if key in history:
            values = history[key]
            ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves(history: dict[str, list[float]], label: str, folder: Path) -> list[Path]:
    """The tutorials' two plots for one trial: `accuracy.png` and `loss.png` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        curve(history, "accuracy", f"Model accuracy — {label}", folder / "accuracy.png"),
        curve(history, "loss", f"Model loss — {label}", folder / "loss.png"),
    ]
