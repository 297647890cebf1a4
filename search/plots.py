"""Every figure dream-hpo draws: a trial's training curve and fit, the search's Optuna plots, explain's logos. Files only."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


LOSS_LABELS = {"poisson": "Poisson", "mse": "MSE", "bins": "soft-bin KL"}


def training_curve(history: list[dict], path: Path, loss: str = "poisson") -> None:
    """Train loss (`loss`: the trial's resolved loss) and eval Pearson per epoch on twin axes, the view of the seed's Figure 2."""
    loss = LOSS_LABELS.get(loss, loss)
    epochs = [h["epoch"] for h in history]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label=f"train {loss} loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel(f"train {loss} loss", color="tab:blue")
    pearson_axis = loss_axis.twinx()
    pearson_axis.plot(epochs, [h["eval_pearson"] for h in history], "s-", color="tab:red", label="eval Pearson")
    pearson_axis.set_ylabel("eval Pearson r", color="tab:red")
    loss_axis.set_title("Training curve")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def observed_vs_predicted(observed: np.ndarray, predicted: np.ndarray, path: Path, title: str = "") -> None:
    """Density of predicted against measured expression on the eval split."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.hexbin(observed, predicted, gridsize=40, mincnt=1, cmap="viridis", bins="log")
    r = np.corrcoef(observed, predicted)[0, 1] if np.std(predicted) > 0 else float("nan")
    axis.set_xlabel("measured expression")
    axis.set_ylabel("predicted expression")
    axis.set_title(f"Eval split, Pearson r = {r:.3f}" + (f"\n{title}" if title else ""), fontsize="medium")
    low, high = float(min(observed.min(), predicted.min())), float(max(observed.max(), predicted.max()))
    axis.plot([low, high], [low, high], "--", color="grey", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def optuna_figures(trials: list[dict], space: dict, directory) -> dict:
    """Optimisation history, parameter importances and parallel coordinates of the finished trials.

    The LegNet reference trial stays out: the figures show the trials the search
    proposed and the baseline it starts from (in `families` Optuna also learns from the
    reference, as a point it was given). In a space over families each trial carries
    only the parameters its family drew.
    """
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    distributions = {name: parameter.to_optuna() for name, parameter in space.items()}
    trials = [trial for trial in trials if not trial.legnet_reference]
    for trial in sorted(trials, key=lambda t: t.trial_id or ""):
        drawn = {k: distributions[k] for k in distributions if k in trial.config}
        params = {k: trial.config[k] for k in drawn}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=drawn, value=trial.best_eval_pearson))
    figures = {"optimization_history": optuna_plots.plot_optimization_history}
    if len(trials) >= 2:
        figures["parallel_coordinate"] = optuna_plots.plot_parallel_coordinate
    if len(trials) >= 3:
        figures["param_importances"] = optuna_plots.plot_param_importances
    paths = {}
    for name, plot in figures.items():
        axes = plot(study)
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        paths[name] = directory / f"{name}.png"
        figure.savefig(paths[name], dpi=110)
        plt.close(figure)
    return paths


def _logo(axis, matrix: np.ndarray, start: int = 0) -> None:
    """Letters A/C/G/T stacked by `matrix` `(width, 4)`; negative values below the axis."""
    import logomaker
    import pandas as pd

    frame = pd.DataFrame(np.asarray(matrix, np.float64), columns=list("ACGT"), index=np.arange(start, start + len(matrix)))
    logomaker.Logo(frame, ax=axis, color_scheme="classic")
    axis.axhline(0, color="grey", linewidth=0.5)
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)


def motif_logo(contributions: np.ndarray, path: Path, title: str) -> None:
    """A discovered pattern's contribution weight matrix as a sequence logo."""
    with plt.style.context("default"):  # Optuna's figures switch the process to ggplot's grey
        _motif_logo(contributions, path, title)


def _motif_logo(contributions: np.ndarray, path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(max(3.0, 0.45 * len(contributions) + 1), 2.2))
    _logo(axis, contributions)
    axis.set_ylabel("contribution")
    axis.set_title(textwrap.fill(title, 48), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def attribution_logo(rows: list[tuple[str, np.ndarray]], path: Path, title: str, start: int = 0) -> None:
    """One sequence's per-base attributions `(L, 4)` (the present base's share only), one panel per method."""
    with plt.style.context("default"):
        _attribution_logo(rows, path, title, start)


def _attribution_logo(rows: list[tuple[str, np.ndarray]], path: Path, title: str, start: int) -> None:
    width = max(len(matrix) for _, matrix in rows)
    figure, axes = plt.subplots(len(rows), 1, figsize=(max(6.0, 0.16 * width + 1), 1.9 * len(rows)), squeeze=False)
    for axis, (label, matrix) in zip(axes[:, 0], rows):
        _logo(axis, matrix, start)
        axis.set_ylabel(label, fontsize="small")
    axes[0, 0].set_title(title, fontsize="small")
    axes[-1, 0].set_xlabel("position in the stored sequence (the window the model reads)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
