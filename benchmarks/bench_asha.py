"""How early-stopping rules behave with few workers: the study's own ASHA and Optuna's pruners, replayed.

Each rule is the real object a study would use (`search.scheduler.StudyASHA`, Ray's ASHA
underneath; Optuna's pruners on a real Optuna study through `should_prune`), fed the
epochs of simulated trials in the order W asynchronous workers would finish them. A
trial's validation Pearson rises to its own ceiling at its own pace, with noise; a share
of trials never learn (the seed's recipe collapsing, a learning rate too high), and a
trial's epochs cost more the larger it is. The baseline runs first and to the end, as
in a study. Per setting (workers x trials, 10 seeds each) it prints, against running
every trial to the end:

- compute: the epochs' cost spent, as a share of running every trial to its last epoch;
- regret: the no-stopping best validation Pearson minus the rule's best (what stopping lost);
- reaching: the share of the trials that trained epochs 1, 3, 9 and the last (halving
  by 3 from epoch 1 would keep 1, 1/3, 1/9).

The curves are a model, not measurements; the rules' decisions are the real ones. The
rule the default uses is chosen from this table; `bench_search.py` then checks it on the
synthetic and the real data.

    python benchmarks/bench_asha.py
    python benchmarks/bench_asha.py --workers 2 4 8 --trials 16 32 64 --epochs 12
"""

from __future__ import annotations

import argparse
import heapq
import math
import statistics
import sys
from dataclasses import dataclass

import numpy as np

NO_SIGNAL_SHARE, NOISE_SD = 0.2, 0.015


@dataclass(frozen=True)
class Curve:
    """A simulated trial: its ceiling, how many epochs to reach about two thirds of it, and an epoch's cost."""

    ceiling: float
    pace: float
    cost: float
    noise: tuple[float, ...]

    def score(self, epoch: int) -> float:
        return self.ceiling * (1 - math.exp(-epoch / self.pace)) + self.noise[epoch - 1]


def curves(trials: int, epochs: int, seed: int) -> list[Curve]:
    rng = np.random.default_rng(seed)
    made = []
    for index in range(trials):
        dead = index > 0 and rng.random() < NO_SIGNAL_SHARE
        ceiling = rng.normal(0.0, 0.03) if dead else rng.uniform(0.2, 0.65)
        made.append(Curve(ceiling, rng.uniform(1.0, 6.0), rng.uniform(0.5, 2.0), tuple(rng.normal(0, NOISE_SD, epochs))))
    return made


class AshaRule:
    """The study's ASHA: the baseline (trial 0) runs to the end outside the rungs."""

    def __init__(self, epochs: int, grace: int, factor: int):
        from ray.tune.experiment import Trial

        from search.baseline import baseline_config
        from search.scheduler import StudyASHA

        self.fixed = {"epochs": epochs, "seed": 0}
        self.scheduler = StudyASHA(
            self.fixed, time_attr="epoch", metric="search_score", mode="max", max_t=epochs, grace_period=grace,
            reduction_factor=factor,
        )
        base = dict(baseline_config(self.fixed), data_dir="data")
        self.make = lambda index: Trial("__fake", config=base if index == 0 else dict(base, learning_rate=0.001 + index * 1e-6), stub=True)
        self.trials = {}

    def add(self, index: int) -> None:
        self.trials[index] = self.make(index)
        self.scheduler.on_trial_add(None, self.trials[index])

    def stop(self, index: int, epoch: int, best: float) -> bool:
        from ray.tune.schedulers import TrialScheduler

        result = {"epoch": epoch, "search_score": best, "best_eval_pearson": best}
        return self.scheduler.on_trial_result(None, self.trials[index], result) == TrialScheduler.STOP

    def finish(self, index: int, epoch: int, best: float) -> None:
        self.scheduler.on_trial_complete(None, self.trials[index], {"epoch": epoch, "search_score": best})


class OptunaRule:
    """An Optuna pruner deciding on a real study's intermediate values; the baseline is never pruned."""

    def __init__(self, pruner):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
        self.trials = {}

    def add(self, index: int) -> None:
        self.trials[index] = self.study.ask()

    def stop(self, index: int, epoch: int, best: float) -> bool:
        trial = self.trials[index]
        trial.report(best, epoch)
        if index == 0 or not trial.should_prune():
            return False
        import optuna

        self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return True

    def finish(self, index: int, epoch: int, best: float) -> None:
        self.study.tell(self.trials[index], best)


class NoStopping:
    def add(self, index: int) -> None:
        pass

    def stop(self, index: int, epoch: int, best: float) -> bool:
        return False

    def finish(self, index: int, epoch: int, best: float) -> None:
        pass


def replay(rule, made: list[Curve], workers: int, epochs: int) -> dict:
    """Run the trials on `workers` asynchronous workers under `rule`; cost spent, best score, epochs per trial."""
    queue, clock, started = [], 0.0, 0
    best = [-1.0] * len(made)
    reached = [0] * len(made)

    def start(index: int, now: float) -> None:
        rule.add(index)
        heapq.heappush(queue, (now + made[index].cost, index))

    while started < min(workers, len(made)):
        start(started, 0.0)
        started += 1
    spent = 0.0
    while queue:
        clock, index = heapq.heappop(queue)
        curve = made[index]
        reached[index] += 1
        spent += curve.cost
        epoch = reached[index]
        best[index] = max(best[index], curve.score(epoch))
        if epoch >= epochs:
            rule.finish(index, epoch, best[index])
        elif not rule.stop(index, epoch, best[index]):
            heapq.heappush(queue, (clock + curve.cost, index))
            continue
        if started < len(made):
            start(started, clock)
            started += 1
    return {"spent": spent, "best": max(best), "reached": reached}


RULES = {
    "ASHA rf 3, grace 1 (default)": lambda epochs: AshaRule(epochs, 1, 3),
    "ASHA rf 3, grace 2": lambda epochs: AshaRule(epochs, 2, 3),
    "ASHA rf 2, grace 1": lambda epochs: AshaRule(epochs, 1, 2),
    "ASHA rf 4, grace 1": lambda epochs: AshaRule(epochs, 1, 4),
    "Optuna successive halving rf 3": lambda epochs: OptunaRule(__import__("optuna").pruners.SuccessiveHalvingPruner(1, 3)),
    "Optuna median, 4 startup, 1 warm-up": lambda epochs: OptunaRule(__import__("optuna").pruners.MedianPruner(4, 1)),
    "Optuna hyperband rf 3": lambda epochs: OptunaRule(__import__("optuna").pruners.HyperbandPruner(1, epochs, 3)),
}


def reaching(reached: list[int], epochs: list[int]) -> list[float]:
    """Per epoch in `epochs`, the share of the trials (baseline left out) that trained at least that many."""
    others = reached[1:]
    return [sum(r >= epoch for r in others) / len(others) for epoch in epochs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8], help="(default: %(default)s)")
    parser.add_argument("--trials", type=int, nargs="+", default=[16, 32, 64], help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per trial (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=10, help="simulated studies per setting (default: %(default)s)")
    args = parser.parse_args(argv)

    marks = sorted({1, 3, 9, args.epochs} & set(range(1, args.epochs + 1)))
    print(f"{args.epochs} epochs at most, {args.seeds} simulated studies per setting, medians over them; "
          f"reaching: the share of trials (baseline left out) that trained epoch {', '.join(map(str, marks))}")
    print("| rule | workers | trials | compute vs no stopping | regret (Pearson) | worst regret | reaching " + " / ".join(map(str, marks)) + " |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, make in RULES.items():
        for workers in args.workers:
            for trials in args.trials:
                computes, regrets, shares = [], [], []
                for seed in range(args.seeds):
                    made = curves(trials, args.epochs, seed)
                    full = replay(NoStopping(), made, workers, args.epochs)
                    run = replay(make(args.epochs), made, workers, args.epochs)
                    computes.append(run["spent"] / full["spent"])
                    regrets.append(full["best"] - run["best"])
                    shares.append(reaching(run["reached"], marks))
                medians = [statistics.median(share[i] for share in shares) for i in range(len(marks))]
                print(
                    f"| {name} | {workers} | {trials} | {statistics.median(computes):.0%} | {statistics.median(regrets):.4f} "
                    f"| {max(regrets):.4f} | " + " / ".join(f"{m:.2f}" for m in medians) + " |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
