"""What a person watching a study sees: one header, one line per trial epoch, the events that matter.

Ray Tune's own table reporter and every worker's TensorFlow/CUDA/absl output are
off by default (`--verbose` brings Ray's reporter and the workers' output back);
this callback prints the study's own progress from the driver instead.
"""

from __future__ import annotations

import math
import sys
import time

from ray import tune

from search.baseline import reference_of
from search.runtime import error_summary, trial_config, trial_number
from search.scheduler import early_stop_reason


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h07m."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ConsoleReporter(tune.Callback):
    """Per-epoch lines with the study's estimated time left; early stops, divergence, failures, retries.

    The time left is an upper bound: every trial not yet finished is assumed to train
    to the last epoch at the study's mean epoch time, spread over the trials running at once.
    """

    def __init__(self, num_trials: int, max_epochs: int, searched: bool, fixed: dict, grace_period: int | None,
                 out=print):
        self.searched = searched
        self.grace_period = grace_period
        self.num_trials = num_trials
        self.max_epochs = max_epochs
        self.fixed = fixed
        self.out = out
        self.started = time.monotonic()
        self.epochs_seen: dict[str, int] = {}
        self.finished: set[str] = set()
        self.epoch_seconds: list[float] = []

    def __getstate__(self):
        # Pickled with the tuner for --resume; `out` may be a closure that does not pickle.
        return {**self.__dict__, "out": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.out = self.out or print
        self.started = time.monotonic()

    def _label(self, trial) -> str:
        reference = reference_of(trial_config(trial), self.fixed)
        tag = {"baseline": " [baseline]", "legnet": " [LegNet reference]"}.get(reference, "")
        return f"trial {trial_number(trial, self.searched)}/{self.num_trials}{tag}"

    def _time_left(self, trials) -> float:
        if not self.epoch_seconds:
            return math.nan
        running = max(1, sum(1 for trial in trials if trial.status == "RUNNING"))
        remaining = sum(
            self.max_epochs - self.epochs_seen.get(trial.trial_id, 0)
            for trial in trials
            if trial.trial_id not in self.finished
        )
        remaining += (self.num_trials - len(trials)) * self.max_epochs
        return remaining * (sum(self.epoch_seconds) / len(self.epoch_seconds)) / running

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result.get("epoch", 0))
        self.epochs_seen[trial.trial_id] = epoch
        if result.get("diverged"):
            self.out(f"{self._label(trial)}  stopped: {result.get('stop_reason', 'diverged')}")
            return
        self.epoch_seconds.append(float(result.get("epoch_seconds", 0.0)))
        problem = f"  ({result['problem']})" if result.get("problem") else ""
        self.out(
            f"{self._label(trial)}  epoch {epoch}/{self.max_epochs}  "
            f"loss {result.get('train_loss', math.nan):.4f}  eval r {result.get('eval_pearson', math.nan):.4f}  "
            f"{result.get('samples_per_second', 0):,.0f} samples/s  "
            f"elapsed {duration(time.monotonic() - self.started)}  "
            f"left <= {duration(self._time_left(trials))}{problem}"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished.add(trial.trial_id)
        reason = early_stop_reason(trial.last_result or {}, self.grace_period, self.max_epochs) if self.grace_period else None
        if reason:
            self.out(f"{self._label(trial)}  {reason}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finished.add(trial.trial_id)
        self.out(f"{self._label(trial)}  FAILED: {error_summary(trial)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(
            f"warning: {self._label(trial)} failed (a lost worker?) and is retried from its last checkpoint",
            file=sys.stderr,
        )
