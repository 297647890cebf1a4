"""What a study shows people: the terminal table and the parent run's summary."""

from __future__ import annotations

import math


def print_trial_table(summary: dict, top: int = 10, out=print) -> None:
    """Top trials against the baseline: eval Pearson, delta, epochs and compute used."""
    trials = summary["trials"]
    baseline = next((t for t in trials if t["baseline"]), None)
    reference = baseline["best_eval_pearson"] if baseline else math.nan
    out(f"{'rank':>4}  {'trial':<12} {'eval r':>7} {'vs base':>8} {'epochs':>6} {'hours':>7}  status    config")
    for rank, trial in enumerate(trials[:top], start=1):
        delta = trial["best_eval_pearson"] - reference
        config = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["searched"].items())
        out(
            f"{rank:>4}  {(trial['trial_id'] or '?'):<12} {trial['best_eval_pearson']:>7.4f} "
            f"{delta:>+8.4f} {trial['epochs_trained']:>6} {trial['device_hours']:>7.3f}  "
            f"{trial['status']:<8}  {'[baseline] ' if trial['baseline'] else ''}{config}"
        )


def log_study_setup(client, run_id: str, config) -> None:
    """The parent run's params: how the study searches, so it can be repeated."""
    import json
    import tempfile
    from pathlib import Path

    from mlflow.entities import Param

    params = {
        "num_trials": config.num_trials,
        "max_concurrent": config.max_concurrent,
        "scheduler": config.scheduler,
        "grace_period": config.grace_period,
        "reduction_factor": config.reduction_factor,
        "sampler": "optuna TPE (multivariate)",
        "sampler_seed": config.seed,
        "gpus_per_trial": config.gpus_per_trial,
        "cpus_per_trial": config.cpus_per_trial,
        "backend": config.backend,
        **{f"fixed.{k}": v for k, v in config.fixed.items()},
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "search_space.json"
        path.write_text(json.dumps({n: p.to_spec() for n, p in config.space.items()}, indent=2))
        client.log_artifact(run_id, path, "study")


def finish_parent_run(client, run_id: str, summary: dict, config) -> None:
    """Best config, summary table and Optuna-style figures on the parent; best model registered."""
    import json
    import tempfile
    from pathlib import Path

    import pandas as pd

    trials = [t for t in summary["trials"] if math.isfinite(t["best_eval_pearson"])]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        table = pd.DataFrame(
            [
                {
                    "trial_id": t["trial_id"],
                    "run_id": t["run_id"],
                    "baseline": t["baseline"],
                    "best_eval_pearson": t["best_eval_pearson"],
                    "epochs_trained": t["epochs_trained"],
                    "device_hours": t["device_hours"],
                    "status": t["status"],
                    **t["searched"],
                }
                for t in summary["trials"]
            ]
        )
        table.to_csv(scratch / "trials.csv", index=False)
        client.log_artifact(run_id, scratch / "trials.csv", "study")
        if trials:
            best = trials[0]
            (scratch / "best_config.json").write_text(json.dumps(best["config"], indent=2, sort_keys=True))
            client.log_artifact(run_id, scratch / "best_config.json", "study")
            client.log_metric(run_id, "best_eval_pearson", best["best_eval_pearson"])
            baseline = next((t for t in trials if t["baseline"]), None)
            if baseline:
                client.log_metric(run_id, "baseline_eval_pearson", baseline["best_eval_pearson"])
            client.set_tag(run_id, "best_run_id", best["run_id"])
            client.set_tag(run_id, "best_config", json.dumps(best["searched"], sort_keys=True))
            for name, figure_path in optuna_figures(trials, config.space, scratch).items():
                client.log_artifact(run_id, figure_path, "plots")
            if config.register_as and best["run_id"]:
                summary["registered"] = register_best_model(client, best["run_id"], config.register_as)
    client.set_terminated(run_id, status="FINISHED")


def register_best_model(client, run_id: str, name: str) -> str:
    """Register the best trial's sequence-serving model; returns `models:/NAME/VERSION`."""
    import mlflow

    experiment_id = client.get_run(run_id).info.experiment_id
    logged = mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    from search.serving import LOGGED_MODEL_NAME

    serving = [model for model in logged if model.name == LOGGED_MODEL_NAME]
    if not serving:
        raise RuntimeError(f"the best run {run_id} has no logged '{LOGGED_MODEL_NAME}' to register")
    version = mlflow.register_model(serving[0].model_uri, name)
    return f"models:/{name}/{version.version}"


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
