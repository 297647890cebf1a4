"""How a study stops trials early, and what Optuna learns from the stopped ones.

`StudyASHA` is ASHA with two rules of the study's own:
- the reference trials (the baseline and the published LegNet) train all their epochs
  and stay out of the rungs: every "vs baseline" and "vs LegNet" figure is against
  their best epoch, and neither the seed's recipe, which often collapses on real data,
  nor the winner's lifts a worse trial over a rung or pushes a better one out;
- a trial with no signal by the end of its grace period (best eval r at or below 0, or
  constant or non-finite predictions) stops, whatever the rungs hold.

`WithReferences` hands out the study's reference trials that are not points of the
space (the published LegNet in every space but `families`) beside the searcher's own,
and keeps their results from Optuna, which could not place them. A reference that is a
point of the space is one of Optuna's trials instead, like the baseline, and TPE learns
from it.

`PrunedAwareOptunaSearch` tells Optuna that a trial stopped before the last epoch was
pruned, with the per-epoch scores it reported, instead of finished with its last one,
so TPE does not take a rung-1 score for a final one.
"""

from __future__ import annotations

import math

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.baseline import reference_of
from search.results import NO_SIGNAL_FLOOR
from search.runtime import trial_config
from search.trainable import TUNE_METRIC


def no_signal_reason(result: dict, grace_period: int) -> str | None:
    """Why a trial at this result has shown no signal by the end of its grace period, or None.

    Decided on the number ASHA ranks (the best eval Pearson so far, -1 while there is none).
    """
    epoch = int(result.get("epoch", 0))
    score = result.get(TUNE_METRIC)
    if epoch < grace_period or score is None or score > NO_SIGNAL_FLOOR:
        return None
    best = result.get("best_eval_pearson", math.nan)
    detail = f"best eval r {best:.3f} <= {NO_SIGNAL_FLOOR:g}" if math.isfinite(best) else "constant or non-finite predictions"
    return f"stopped: no signal by epoch {epoch}, its grace period ({detail})"


class StudyASHA(ASHAScheduler):
    def __init__(self, fixed: dict, **asha):
        super().__init__(**asha)
        self.fixed = fixed
        self.grace_period = asha["grace_period"]

    def _is_reference(self, trial) -> bool:
        return reference_of(trial_config(trial), self.fixed) is not None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._is_reference(trial):
            return TrialScheduler.CONTINUE  # its function ends by itself after the last epoch
        if no_signal_reason(result, self.grace_period):
            self._num_stopped += 1
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict):
        if self._is_reference(trial):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


class PrunedAwareOptunaSearch(OptunaSearch):
    def __init__(self, max_epochs: int, **optuna_search):
        super().__init__(**optuna_search)
        self.max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        if result and not error:
            # Ray hands a trial's last result to on_trial_complete only: it is an epoch too.
            self.on_trial_result(trial_id, result)
        if error or not result or int(result.get("epoch", self.max_epochs)) >= self.max_epochs:
            return super().on_trial_complete(trial_id, result, error)
        import optuna

        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class WithReferences(Searcher):
    """A searcher that suggests `references` once its inner searcher made `after` suggestions (the baseline)."""

    def __init__(self, searcher: Searcher, references: list[dict], after: int = 1):
        self.searcher, self.pending, self.after = searcher, [dict(r) for r in references], after
        self.suggested, self.reference_ids = 0, set()
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.pending and self.suggested >= self.after:
            self.reference_ids.add(trial_id)
            return self.pending.pop(0)
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.suggested += 1
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.reference_ids:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.reference_ids:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        """Its own state; Ray saves the wrapped searcher itself (SearchGenerator.save_to_dir)."""
        return {"pending": self.pending, "suggested": self.suggested, "reference_ids": set(self.reference_ids)}

    def set_state(self, state: dict) -> None:
        self.pending, self.suggested, self.reference_ids = state["pending"], state["suggested"], state["reference_ids"]


def early_stop_reason(last: dict, grace_period: int, max_epochs: int) -> str | None:
    """Why ASHA ended a trial before its last epoch (no signal, or its rung), or None when it did not."""
    epoch = int(last.get("epoch", 0))
    if last.get("diverged") or epoch >= max_epochs:
        return None
    return no_signal_reason(last, grace_period) or f"stopped early by ASHA after epoch {epoch}"
