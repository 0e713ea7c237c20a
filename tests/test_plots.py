"""Figures (sweep/plots.py): long titles are wrapped and laid out whole inside the image."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweep.plots import curve_figure, fit_text, legend_below, pyplot, training_curves

LABEL = "activation=prelu, prelu_alpha_init=0.25, prelu_shared_axes=[1, 2]"
HISTORY = {"accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.7],
           "loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.6, 0.4]}


def _titles(fig) -> list:  # noqa: ANN001
    texts = [*fig.texts, *(t for ax in fig.axes for t in (ax.title, ax._left_title, ax._right_title))]  # noqa: SLF001
    return [t for t in texts if t.get_text()]


def _assert_inside(fig) -> None:  # noqa: ANN001
    fig.draw_without_rendering()  # the layout, as savefig draws it
    renderer = fig.canvas.get_renderer()
    titles = _titles(fig)
    assert titles
    for t in titles:
        box, frame = t.get_window_extent(renderer), fig.bbox
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, \
            (t.get_text(), box, frame)


def test_a_trial_plot_title_is_whole_inside_the_image() -> None:
    fig = curve_figure(HISTORY, "accuracy", f"Model accuracy — {LABEL}")
    _assert_inside(fig)
    title = fig.axes[0].title.get_text()
    assert "\n" in title and title.replace("\n", " ") == f"Model accuracy — {LABEL}"  # wrapped, nothing lost
    assert fig.get_size_inches() == pytest.approx((6, 4))
    pyplot().close(fig)


def test_a_short_title_stays_on_one_line() -> None:
    fig = curve_figure(HISTORY, "loss", "Model loss — relu")
    assert fig.axes[0].title.get_text() == "Model loss — relu"
    _assert_inside(fig)
    pyplot().close(fig)


@pytest.mark.parametrize("panels", [1, 3])
def test_a_multi_panel_title_is_whole_inside_the_image(panels: int) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 4.2), dpi=100, squeeze=False, layout="constrained")
    for i, ax in enumerate(axes[0]):
        ax.plot([1, 2], [1, 2], label=f"prelu, prelu_alpha_init=0.25 (n=3) #{i}")
        ax.set_title(f"conv2d_{i} (18,816 / 37,632 alphas each, prelu_shared_axes=[1, 2])")
    title = f"seed-cnn-activations: learned PReLU alphas (pooled over repeats), {LABEL}"
    legend_below(fig, axes[0][0], title)
    _assert_inside(fig)
    assert fig.get_suptitle().replace("\n", " ") == title
    plt.close(fig)


def test_a_word_wider_than_the_room_is_broken() -> None:
    plt = pyplot()
    fig = plt.figure(figsize=(2, 2), dpi=100)
    t = fig.text(0.5, 0.5, "x" * 80, ha="center")
    fit_text(t, 150)
    renderer = fig.canvas.get_renderer()
    assert t.get_window_extent(renderer).width <= 150 and t.get_text().replace("\n", "") == "x" * 80
    plt.close(fig)


def test_training_curves_are_pngs_of_the_figure_size(tmp_path: Path) -> None:
    import matplotlib.image

    paths = training_curves(HISTORY, LABEL, tmp_path / "plots")
    assert [p.name for p in paths] == ["accuracy.png", "loss.png"]
    for p in paths:
        assert matplotlib.image.imread(p).shape[:2] == (400, 600)
