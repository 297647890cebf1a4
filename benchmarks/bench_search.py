"""The same number of trials with ASHA early stopping and without: compute spent and best eval Pearson.

Both studies search the same small space with the same Optuna seed on the same
synthetic set (made once under benchmarks/out/), through `search.study.run_study`, so
each is exactly what `dream-hpo search` would run. Device-hours are GPU-hours when the
trials hold GPUs and CPU-hours otherwise (a trial's time times its GPUs or CPUs), as the
search summary reports them. The target: ASHA's best within 0.01 of the best without
early stopping, for at most a quarter of the compute (a third with --data on real data). It also prints what a trial pays
before it learns (imports, data, model build; the driver's MLflow artifact logging),
read back from the studies' MLflow runs, and when each study's best so far first came
within 0.01 of its final best (and ASHA's within 0.01 of the no-stopping best), counted in
epochs, the trials' common unit of compute. `--data DIR` runs both on a prepared
directory, such as the DREAM sample, instead of the synthetic set.

The defaults are sized for a 2-core CPU (about 21 minutes for both studies): 16 trials
of a 48-channel, one-layer model on 15,000 sequences, 16 epochs at most, ASHA with the
study's defaults (grace period 1, reduction factor 3: rungs at epochs 1, 3, 9 and 16).
The LegNet reference trial is left out: it runs all its epochs under either scheduler.
`--gpus-per-trial 0.25` packs four trials per GPU; run
`--schedulers none` with 1, 0.5 and 0.25 to compare the aggregate samples/s of 1, 2 and
4 trials per GPU.

    python benchmarks/bench_search.py
    dream-hpo prepare ../shared/data/dream_demo_train.txt --out data/demo
    python benchmarks/bench_search.py --data data/demo --batch-size 128
    python benchmarks/bench_search.py --num-trials 32 --epochs 27 --reduction-factor 3 --n 200000 --batch-size 1024
    python benchmarks/bench_search.py --schedulers none --gpus-per-trial 0.25 --num-trials 8 --set channels=192
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_prepare import machine
from search.cli import config_setting

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
# ASHA's best within 0.01 of no stopping's, for at most a quarter of its compute on the synthetic set, a third on real data.
TARGET_PEARSON_GAP, TARGET_COMPUTE_RATIO = 0.01, {"synthetic": 1 / 4, "real": 1 / 3}

# Around the small model's baseline point (stem 5, tower 4, lr 0.01), which a space must contain.
SPACE = {
    "stem_width": {"type": "int", "low": 3, "high": 11},
    "tower_width": {"type": "int", "low": 2, "high": 6},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
}
SMALL_MODEL = {"channels": 48, "transformer_layers": 1, "optimizer": "adam"}


def run(args, scheduler: str, data_dir: Path, root: Path) -> dict:
    """One study, assembled from flags exactly as `dream-hpo search` assembles them."""
    from search.cli import build_parser, search_config
    from search.space import parse_space
    from search.study import run_study

    flags = [
        "search", "--data", str(data_dir), "--name", f"bench-{scheduler}", "--experiment", "bench-search",
        "--tracking-uri", f"sqlite:///{root}/mlflow.db", "--storage-path", str(root / "ray_results"),
        "--num-trials", str(args.num_trials), "--scheduler", scheduler, "--grace-period", str(args.grace_period),
        "--reduction-factor", str(args.reduction_factor), "--max-epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--cpus-per-trial", str(args.cpus_per_trial),
        "--backend", args.backend, "--no-legnet-reference",
        *[flag for key, value in {**SMALL_MODEL, **dict(args.set)}.items() for flag in ("--set", f"{key}={value}")],
    ]
    if args.max_concurrent is not None:
        flags += ["--max-concurrent", str(args.max_concurrent)]
    if args.gpus_per_trial is not None:
        flags += ["--gpus-per-trial", str(args.gpus_per_trial)]
    config = search_config(build_parser().parse_args(flags), data_dir, parse_space(SPACE, "bench_search space"))
    started = time.perf_counter()
    result = run_study(config, progress=lambda message: print(f"  {message}", flush=True))
    wall = time.perf_counter() - started
    train_size = json.loads((data_dir / "manifest.json").read_text())["train_size"]
    compute = result.compute
    return {
        "scheduler": scheduler,
        "rungs": compute.rungs or {},
        "startup": startup_figures(config.tracking_uri, config.experiment, config.name),
        "trials": len(result.trials),
        "done": sum(t.status == "done" for t in result.trials),
        "epochs_trained": compute.epochs_trained,
        "device_hours": compute.device_hours,
        "best_eval_pearson": result.best.best_eval_pearson if result.best else float("nan"),
        "best_by_epoch": best_by_epoch(config.tracking_uri, config.experiment, config.name),
        "wall_s": wall,
        "aggregate_samples_per_s": compute.epochs_trained * train_size / wall,
        "load": os.getloadavg(),
    }


STARTUP_METRICS = {
    "start-up": "system/startup_seconds",
    "imports": "system/startup_import_seconds",
    "data": "system/startup_data_seconds",
    "model build": "system/startup_build_seconds",
    "artifact logging": "system/artifact_logging_seconds",
}


def startup_figures(tracking_uri: str, experiment: str, study: str) -> dict:
    """Mean seconds per trial of each start-up part, from the study's MLflow trial runs.

    "new actor" trials are those that paid the imports (the first trial of each Ray
    actor); the others ran in a reused actor.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"tags.study = '{study}'")
    values = {
        name: [h.value for run in runs for h in client.get_metric_history(run.info.run_id, key)]
        for name, key in STARTUP_METRICS.items()
    }
    imports = values["imports"]
    figures = {name: _mean(xs) for name, xs in values.items()}
    figures["new actors"] = sum(x > 1.0 for x in imports)
    figures["start-up, new actor"] = _mean([s for s, i in zip(values["start-up"], imports) if i > 1.0])
    figures["start-up, reused actor"] = _mean([s for s, i in zip(values["start-up"], imports) if i <= 1.0])
    return figures


def best_by_epoch(tracking_uri: str, experiment: str, study: str) -> list[float]:
    """The study's best eval Pearson so far after each epoch trained, epochs in the order they finished.

    Epochs stand in for compute (a trial's epochs cost alike); every trial's epochs are
    merged by the time MLflow logged them.
    """
    import math

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"tags.study = '{study}'")
    points = sorted(
        (m.timestamp, m.value) for run in runs for m in client.get_metric_history(run.info.run_id, "eval_pearson")
    )
    best, curve = -math.inf, []
    for _, value in points:
        best = max(best, value) if math.isfinite(value) else best
        curve.append(best)
    return curve


def epochs_to_reach(curve: list[float], level: float) -> int | None:
    """Epochs trained when the best so far first reached `level`, or None if it never did."""
    return next((i + 1 for i, best in enumerate(curve) if best >= level), None)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def print_results(args, results: list[dict], data_dir: Path) -> None:
    gpus = "auto" if args.gpus_per_trial is None else f"{args.gpus_per_trial:g}"
    print(f"\nmachine: {machine()}; backend {args.backend}; data {data_dir.name}; {args.epochs} epochs max, "
          f"batch {args.batch_size}, GPUs per trial {gpus}, CPUs per trial {args.cpus_per_trial:g}")
    print("| scheduler | trials | epochs trained | device-hours | best eval Pearson | wall (s) "
          "| aggregate samples/s | load 1/5/15 min |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        load = " / ".join(f"{x:.1f}" for x in r["load"])
        print(f"| {r['scheduler']} | {r['trials']} | {r['epochs_trained']} | {r['device_hours']:.3f} "
              f"| {r['best_eval_pearson']:.4f} | {r['wall_s']:.0f} | {r['aggregate_samples_per_s']:,.0f} | {load} |")
    by = {r["scheduler"]: r for r in results}
    for r in results:
        reached = epochs_to_reach(r["best_by_epoch"], r["best_eval_pearson"] - TARGET_PEARSON_GAP)
        if reached:
            print(f"{r['scheduler']}: within {TARGET_PEARSON_GAP} of its own final best after {reached} of its "
                  f"{r['epochs_trained']} epochs ({reached / r['epochs_trained']:.0%})")
    if {"asha", "none"} <= set(by):
        target = TARGET_COMPUTE_RATIO["real" if args.data else "synthetic"]
        level = by["none"]["best_eval_pearson"] - TARGET_PEARSON_GAP
        reached = epochs_to_reach(by["asha"]["best_by_epoch"], level)
        full = by["none"]["epochs_trained"]
        print("asha: within {:g} of the no-stopping best ({:.4f}) ".format(TARGET_PEARSON_GAP, by["none"]["best_eval_pearson"])
              + (f"after {reached} epochs, {reached / full:.0%} of the no-stopping search's {full}" if reached else "never"))
        gap = by["none"]["best_eval_pearson"] - by["asha"]["best_eval_pearson"]
        ratio = by["asha"]["device_hours"] / by["none"]["device_hours"]
        verdict = "meets" if gap <= TARGET_PEARSON_GAP and ratio <= target else "misses"
        print(f"ASHA: best Pearson {gap:+.4f} below no early stopping, {ratio:.2f} of its device-hours "
              f"({by['asha']['epochs_trained'] / full:.2f} of its epochs); target <= {TARGET_PEARSON_GAP} and <= {target:.2f}: {verdict}")
    for r in results:
        if r["rungs"]:
            print(f"{r['scheduler']}: trials reaching each rung: "
                  + ", ".join(f"epoch {epoch}: {n}" for epoch, n in r["rungs"].items()))
        startup = ", ".join(f"{name} {value:.2f} s" if isinstance(value, float) else f"{name} {value}"
                            for name, value in r["startup"].items())
        print(f"{r['scheduler']}: mean per trial: {startup}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--schedulers", default="asha,none", help="comma-separated, run in this order (default: %(default)s)")
    parser.add_argument("--num-trials", type=int, default=16, help="trials per study, the baseline included (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=16, help="epochs per trial without early stopping (default: %(default)s)")
    parser.add_argument("--data", type=Path, help="a prepared directory (e.g. the DREAM sample) instead of the synthetic set")
    parser.add_argument("--n", type=int, default=15_000, help="synthetic sequences (default: %(default)s)")
    parser.add_argument("--eval-size", type=int, default=2_000, help="held-out sequences (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA (default: %(default)s)")
    parser.add_argument("--reduction-factor", type=int, default=3, help="ASHA (default: the study's %(default)s)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    parser.add_argument("--gpus-per-trial", type=float, help="fractions pack trials on a GPU (default: 1 with GPUs, else 0)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="(default: %(default)s)")
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default="tensorflow", help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data, Optuna and training seed (default: %(default)s)")
    parser.add_argument("--set", type=config_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="fix another config field for every trial, e.g. --set channels=96")
    parser.add_argument("--keep", action="store_true", help="keep the studies' MLflow store and Ray results")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    schedulers = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    if not schedulers or set(schedulers) - {"asha", "none"}:
        parser.error(f"--schedulers takes asha and/or none, got {args.schedulers!r}")

    from data_prep import ensure_synthetic

    data_dir = args.data or ensure_synthetic(OUT, args.n, seed=args.seed, eval_size=args.eval_size)
    OUT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench_search-", dir=OUT))
    results = []
    try:
        for scheduler in schedulers:
            print(f"{scheduler}: {args.num_trials} trials (load average {os.getloadavg()[0]:.1f}) ...", flush=True)
            results.append(run(args, scheduler, data_dir, root))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_results(args, results, data_dir)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
