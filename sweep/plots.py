"""Matplotlib figures, as in the tutorials: accuracy and loss per epoch, training vs validation.

Titles carry a trial's params (`Model accuracy — activation=prelu, prelu_alpha_init=0.25, ...`)
and run past a figure's edge, where matplotlib cuts them off: `fit_titles` wraps them to the
room they have, and the constrained layout makes room for the extra lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

# the part of its room a title may fill: an axes title is centred on its axes, which the layout
# shifts by the tick labels' width, so a line as wide as the cell would touch the edge
TITLE_ROOM = 0.92


def pyplot():  # noqa: ANN201 - matplotlib.pyplot, imported lazily with a headless backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fit_text(text: Text, width: float) -> None:
    """Wrap `text` at spaces so that no line is wider than `width` pixels; a word wider than
    that alone is broken between characters. Measured with the figure's renderer."""
    renderer = text.get_figure(root=True).canvas.get_renderer()

    def fits(s: str) -> bool:
        text.set_text(s)
        return text.get_window_extent(renderer).width <= width

    lines = []
    for paragraph in text.get_text().split("\n"):
        line = ""
        for word in paragraph.split(" "):
            if fits(f"{line} {word}" if line else word):
                line = f"{line} {word}" if line else word
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # only a word too wide alone comes here character by character
                if line and not fits(line + char):
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    text.set_text("\n".join(lines))


def fit_titles(fig: Figure) -> Figure:
    """Wrap the figure's title to its width and each axes' titles to the width of its grid
    cell, so that with the constrained layout every title is whole inside the image."""
    width = fig.bbox.width * TITLE_ROOM
    if fig._suptitle is not None:  # noqa: SLF001 - matplotlib keeps the suptitle's Text only here
        fit_text(fig._suptitle, width)  # noqa: SLF001
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        share = 1.0 if spec is None else len(spec.colspan) / spec.get_gridspec().ncols
        for title in (ax.title, ax._left_title, ax._right_title):  # noqa: SLF001 - the three title slots
            if title.get_text():
                fit_text(title, width * share)
    return fig


def legend_below(fig: Figure, legend_from, title: str) -> Figure:  # noqa: ANN001
    """Shared finish of multi-panel figures (made with `layout="constrained"`): one legend under
    the panels, a title, every title wrapped to fit."""
    handles, labels = legend_from.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=9)
    fig.suptitle(title)
    return fit_titles(fig)


def save_with_legend_below(fig: Figure, legend_from, title: str, path: Path) -> Path:  # noqa: ANN001
    """`legend_below`, then saved and closed."""
    legend_below(fig, legend_from, title).savefig(path)
    pyplot().close(fig)
    return path


def curve_figure(history: dict[str, list[float]], metric: str, title: str) -> Figure:
    """`metric` and `val_<metric>` against epoch, titled `title` (wrapped to fit)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100, layout="constrained")
    for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
        if key in history:
            values = history[key]
            ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return fit_titles(fig)


def curve(history: dict[str, list[float]], metric: str, title: str, path: Path) -> Path:
    """Plot `metric` and `val_<metric>` against epoch and save a PNG at `path`."""
    fig = curve_figure(history, metric, title)
    fig.savefig(path)
    pyplot().close(fig)
    return path


def training_curves(history: dict[str, list[float]], label: str, folder: Path) -> list[Path]:
    """The tutorials' two plots for one trial: `accuracy.png` and `loss.png` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        curve(history, "accuracy", f"Model accuracy — {label}", folder / "accuracy.png"),
        curve(history, "loss", f"Model loss — {label}", folder / "loss.png"),
    ]
