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
