"""ASHA that lets the baseline trial run all its epochs.

Every trial's "vs baseline" difference is against the baseline's best epoch; a
baseline stopped at the first rung (the seed's slow SGD recipe often is) would make
any search look better than it is. The baseline still fills ASHA's rungs, so other
trials are compared with it as usual.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.baseline import is_baseline
from search.runtime import trial_config


class BaselineKeepingASHA(ASHAScheduler):
    def __init__(self, fixed: dict, **asha):
        super().__init__(**asha)
        self.fixed = fixed

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and is_baseline(trial_config(trial), self.fixed):
            return TrialScheduler.CONTINUE  # its function ends by itself after the last epoch
        return decision
