"""What a study shows people: the terminal table and the parent run's figures (formatting only; search.tracking logs)."""

from __future__ import annotations

import math


def print_trial_table(summary: dict, top: int = 10, out=print) -> None:
    """Top trials against the baseline: eval Pearson, delta, epochs and compute used; failures with their reason."""
    trials = summary["trials"]
    baseline = next((t for t in trials if t["baseline"]), None)
    reference = baseline["best_eval_pearson"] if baseline else math.nan
    out(f"{'rank':>4}  {'trial':<12} {'eval r':>7} {'vs base':>8} {'epochs':>6} {'hours':>7}  status     config")
    for rank, trial in enumerate(trials[:top], start=1):
        delta = f"{trial['best_eval_pearson'] - reference:>+8.4f}" if math.isfinite(reference) else f"{'-':>8}"
        config = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["searched"].items())
        shown_rank = str(rank) if trial["status"] == "done" else "-"
        reason = f"  ({trial['reason']})" if trial["status"] != "done" and trial["reason"] else ""
        out(
            f"{shown_rank:>4}  {(trial['trial_id'] or '?'):<12} {trial['best_eval_pearson']:>7.4f} "
            f"{delta} {trial['epochs_trained']:>6} {trial['device_hours']:>7.3f}  "
            f"{trial['status']:<9}  {'[baseline] ' if trial['baseline'] else ''}{config}{reason}"
        )


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
