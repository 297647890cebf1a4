"""Figures people would rather look at than read: training curves and fit quality."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curve(history: list[dict], path: Path) -> None:
    """Train loss and eval Pearson per epoch on twin axes, the view of the seed's Figure 2."""
    epochs = [h["epoch"] for h in history]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train Poisson loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train Poisson loss", color="tab:blue")
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
    axis.set_title(f"Eval split, Pearson r = {r:.3f}" + (f" ({title})" if title else ""))
    low, high = float(min(observed.min(), predicted.min())), float(max(observed.max(), predicted.max()))
    axis.plot([low, high], [low, high], "--", color="grey", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
