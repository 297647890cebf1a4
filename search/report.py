"""What a study shows people: the terminal table and the parent run's figures (formatting only; search.tracking logs)."""

from __future__ import annotations

import math


def _interval(figures: dict | None, signed: bool = False) -> str:
    if not figures:
        return "-"
    sign = "+" if signed else ""
    return f"{figures['estimate']:{sign}.3f} [{figures['low']:{sign}.3f}, {figures['high']:{sign}.3f}]"


def print_trial_table(summary: dict, top: int = 10, out=print) -> None:
    """Top trials against the baseline and the k-mer reference, with bootstrap 95 % intervals.

    "vs baseline" and "vs k-mer" are paired differences of eval Pearson on the same
    resampled evaluation rows: an interval above zero is a better model on this split.
    Failed trials come last with their reason.
    """
    header = f"{'rank':>4}  {'trial':<12} {'eval r [95% CI]':<24} {'vs baseline [95% CI]':<26} {'vs k-mer [95% CI]':<26} {'epochs':>6} {'hours':>7}  status     config"
    out(header)
    for rank, trial in enumerate(summary["trials"][:top], start=1):
        config = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["searched"].items())
        shown_rank = str(rank) if trial["status"] == "done" else "-"
        reason = f"  ({trial['reason']})" if trial["status"] != "done" and trial["reason"] else ""
        pearson = _interval(trial.get("interval")) if "interval" in trial else f"{trial['best_eval_pearson']:.3f}"
        out(
            f"{shown_rank:>4}  {(trial['trial_id'] or '?'):<12} {pearson:<24} "
            f"{_interval(trial.get('vs_baseline'), signed=True):<26} {_interval(trial.get('vs_kmer'), signed=True):<26} "
            f"{trial['epochs_trained']:>6} {trial['device_hours']:>7.3f}  "
            f"{trial['status']:<9}  {'[baseline] ' if trial['baseline'] else ''}{config}{reason}"
        )
    if "reference" in summary:
        out(f"{'':>4}  {'k-mer ridge':<12} {_interval(summary['reference']):<24} (ridge regression on 4- to 6-mer counts, same split)")
    if "compute" in summary:
        out(compute_line(summary["compute"]))


def compute_line(compute: dict) -> str:
    """One line on what the study spent: epochs against running every trial to the end, ASHA's rungs, start-up."""
    line = (
        f"compute: {compute['epochs_trained']} of {compute['epochs_without_early_stopping']} epochs "
        f"({compute['compute_saved_fraction']:.0%} saved), {compute['device_hours']:.3f} device-hours"
    )
    if compute.get("rungs"):
        reached = ", ".join(f"epoch {epoch}: {trials}" for epoch, trials in compute["rungs"].items())
        line += f"; trials reaching each ASHA rung: {reached}"
    if math.isfinite(compute["mean_trial_startup_seconds"]):
        line += f"; trial start-up {compute['mean_trial_startup_seconds']:.1f} s on average"
    return line


def optuna_figures(trials: list[dict], space: dict, directory) -> dict:
    """Optimisation history, parameter importances and parallel coordinates of the finished trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    distributions = {name: parameter.to_optuna() for name, parameter in space.items()}
    for trial in sorted(trials, key=lambda t: t["trial_id"] or ""):
        params = {k: trial["config"][k] for k in distributions}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=trial["best_eval_pearson"])
        )
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
