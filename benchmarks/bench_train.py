"""Samples/s of a family's training step and of the input pipeline that feeds it, per Keras backend.

Each backend runs in a fresh interpreter (Keras picks its backend at import), so the
peak host RSS printed is that run's own. For each it prints the device, batch size,
precision policy and whether XLA was on, then:

- step: training samples/s at each of --widths (85: the DREAM window; others a lentiMPRA-like
  table of that width, read whole) of the baseline config (192/5/4/4 unless --set changes it),
  or with `--family legnet` of the published LegNet with its ingredients (150 bp padded
  input, strand and singleton channels, bins head; LEGNET_RECIPE), timed per step inside
  `fit` on the trial's own input pipeline, first (compiling) step excluded; best and
  median of the timed steps;
- draw: samples/s of `WindowBatches` alone, one thread (shuffled, shift-augmented uint8
  windows out of the memory-mapped arrays);
- fed: samples/s of the trial's `CodeBatches` through Keras `fit` into a model with five
  weights, i.e. the input pipeline as the trainer consumes it (data adapter, prefetch
  threads, host-to-device copy), without the mini-Enformer's compute.

The targets: step >= 1,500 samples/s on the 2-core CPU at batch 1,000 (2.5x the seed's
own code there) and >= 1,000,000 on one H100; the input pipeline (fed) at least 3x the step.

`--full-size` instead runs a full-size trial's input side over the 6.7M-sequence
synthetic set (made once under benchmarks/out/): one whole epoch of the input pipeline,
the evaluation of the 10,000 held-out sequences and --full-size-steps training steps of
the baseline, printing host RSS after each stage (target: under 4 GB).

    python benchmarks/bench_train.py                                # both backends, batch 10,000
    python benchmarks/bench_train.py --batch-size 1000 --steps 8    # CPU-sized
    python benchmarks/bench_train.py --backend jax --precision mixed_bfloat16 --jit on
    python benchmarks/bench_train.py --family legnet --batch-size 128 --steps 8
    python benchmarks/bench_train.py --full-size --backend tensorflow
    python benchmarks/bench_train.py --backend tensorflow --batch-size 1000 --widths 85 230 --rounds 3
    python benchmarks/bench_train.py --backend tensorflow --batch-size 1000 --precision float32 mixed_bfloat16 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_prepare import machine
from search.cli import config_setting

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
FULL_SIZE = 6_700_000
EVAL_SIZE = 10_000
TARGETS = {"cpu_step": 1_500, "gpu_step": 1_000_000, "input_over_step": 3.0, "full_size_rss_mb": 4096}
PRECISIONS = {"auto": "auto", "float32": False, "mixed_bfloat16": True}
JIT = {"auto": "auto", "on": True, "off": False}
DREAM_WINDOW = 85  # --widths 85 is the DREAM set's window; any other width is a library table read whole


# ---- measurements (child process, one backend) --------------------------------------


def memory_mb() -> dict:
    """Current and peak resident set, and how much of it is file-backed (the shared page cache)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"], "anon_mb": fields["RssAnon"], "file_mb": fields["RssFile"]}


def prepared_set(n: int) -> Path:
    """A prepared synthetic set of n sequences under benchmarks/out, made once.

    The 6.7M-line text file may already be there from bench_prepare.py; it is reused.
    """
    from data_prep import ensure_synthetic, prepare

    prepared = OUT / f"synthetic-n{n}-seed0-eval{EVAL_SIZE}"
    source = OUT / f"synthetic-n{n}-seed0.txt"
    if not (prepared / "manifest.json").exists() and source.exists():
        prepare(source, prepared, eval_size=EVAL_SIZE, split_seed=0)
    return ensure_synthetic(OUT, n, seed=0, eval_size=EVAL_SIZE)


def table_set(width: int, n: int) -> Path:
    """A prepared one-task library table of n sequences `width` bp long (lentiMPRA-like), made once."""
    from dataclasses import replace

    from data_prep.prepare import TableOptions, prepare
    from data_prep.synth_tables import LENTIMPRA, write_library

    prepared = OUT / f"table-{width}bp-n{n}-seed0"
    if not (prepared / "manifest.json").exists():
        shape = replace(LENTIMPRA, length=width, shortest=width)
        source = write_library(OUT / f"table-{width}bp-n{n}-seed0.tsv", shape, n, seed=0)
        prepare(source, prepared, eval_size=EVAL_SIZE, overwrite=True, table=TableOptions(target_columns=("mean_value",)))
    return prepared


def configs(spec: dict):
    """The trial config: the baseline, or the published LegNet, at the benchmark's batch and precision."""
    from model import LEGNET_RECIPE, split_config

    return split_config(
        {
            **(LEGNET_RECIPE if spec["family"] == "legnet" else {}),
            "batch_size": spec["batch_size"],
            "mixed_precision": PRECISIONS[spec["precision"]],
            "jit_compile": JIT[spec["jit"]],
            **dict(spec["set"]),
        }
    )


class StepClock:
    """Wall time of each training step; reading the loss waits for the device to finish it."""

    def __init__(self):
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == 0:
                    clock.times = [time.perf_counter()]

            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])
                clock.times.append(time.perf_counter())

        self.callback = Callback()
        self.times: list[float] = []

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def window_batches(data, rows, batch: int, trial):
    """The trial's own input batches: its window length, and singleton flags when it has that channel."""
    from data_prep.batches import WindowBatches

    inputs, facts = trial.inputs, data.facts
    return WindowBatches(
        data.codes, data.targets, rows, batch, seed=0, length=inputs.length(facts), singleton=inputs.singleton_channel,
        layout=facts.layout,
    )


def trivial_model(jit_compile: bool, trial, facts):
    """Five weights after the one-hot: what the input pipeline alone costs inside `fit`."""
    import keras

    from model import BaseOneHot, poisson_loss

    codes = keras.Input((trial.inputs.length(facts),), dtype="uint8")
    x = keras.layers.GlobalAveragePooling1D()(BaseOneHot()(codes))
    model_inputs = codes
    if trial.inputs.singleton_channel:
        flags = keras.Input((1,))
        x, model_inputs = keras.layers.Concatenate()([x, flags]), [codes, flags]
    outputs = keras.layers.Dense(len(facts.tasks), activation="softplus")(x)
    model = keras.Model(model_inputs, outputs)
    model.compile(optimizer="sgd", loss=poisson_loss, jit_compile=jit_compile)
    return model


def draw_rate(batches, repeats: int) -> float:
    """Single-thread samples/s of WindowBatches over (at most) its first 50 batches, best of repeats."""
    count = min(len(batches), 50)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        samples = sum(len(batches[i][1]) for i in range(count))
        best = max(best, samples / (time.perf_counter() - started))
    return best


def fed_rate(code_batches, jit_compile: bool, repeats: int, trial, facts) -> float:
    """Samples/s of CodeBatches through `fit` into the trivial model, best of repeats after a warm-up."""
    model = trivial_model(jit_compile, trial, facts)
    samples = len(code_batches.batches.rows)
    model.fit(code_batches, epochs=1, verbose=0, shuffle=False)
    best = 0.0
    for epoch in range(1, repeats + 1):
        code_batches.set_epoch(epoch)
        started = time.perf_counter()
        model.fit(code_batches, epochs=1, verbose=0, shuffle=False)
        best = max(best, samples / (time.perf_counter() - started))
    return best


def measure_speed(spec: dict) -> dict:
    import keras

    from data_prep import PreparedData
    from model import build_training_model, compile_for_training, devices, set_precision
    from model.config import resolved_loss
    from model.inputs import CodeBatches

    trial = configs(spec)
    train = trial.train
    batch = train.batch_size
    steps = 1 + spec["warmup"] + spec["steps"]
    if spec["width"] == DREAM_WINDOW:
        data = PreparedData.load(prepared_set(max(spec["n"], batch * steps + EVAL_SIZE)))
    else:  # a table is read whole: its width is the window
        data = PreparedData.load(table_set(spec["width"], batch * max(steps, 50) + EVAL_SIZE))
    facts = data.facts
    policy = set_precision(train)
    keras.utils.set_random_seed(0)
    training = compile_for_training(
        build_training_model(trial.architecture, trial.inputs, facts), train, steps, resolved_loss(trial.inputs, facts)
    )
    rows = data.train_index[: batch * steps]
    clock = StepClock()
    training.fit(
        CodeBatches(window_batches(data, rows, batch, trial)),
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[clock.callback],
    )
    step_times = clock.steps()
    timed = step_times[1 + spec["warmup"] :]

    # The input pipeline over up to 200 batches of the same size, so it is timed over more than a blink.
    input_rows = data.train_index[: batch * min(200, len(data.train_index) // batch)]
    input_batches = window_batches(data, input_rows, batch, trial)
    result = {
        "family": trial.family,
        "width": spec["width"],
        "backend": keras.backend.backend(),
        "device": devices.describe(),
        "gpu": bool(devices.gpus()),
        "batch_size": batch,
        "precision": policy,
        "xla": bool(training.jit_compile),
        "model": trial.to_flat(),
        "first_step_s": step_times[0],
        "steps_timed": len(timed),
        "step_best": batch / min(timed),
        "step_median": batch / statistics.median(timed),
        "draw": draw_rate(input_batches, spec["repeats"]),
        "fed": fed_rate(CodeBatches(input_batches), bool(training.jit_compile), spec["repeats"], trial, facts),
        "load": os.getloadavg(),
    }
    return {**result, **memory_mb()}


def measure_full_size(spec: dict) -> dict:
    """A full-size trial's input side and host memory, stage by stage."""
    import keras

    from data_prep import PreparedData
    from model import build_training_model, compile_for_training, core_model, devices, set_precision
    from model.config import resolved_loss
    from model.inputs import CodeBatches
    from search.trainable import evaluate

    trial = configs(spec)
    train = trial.train
    data = PreparedData.load(prepared_set(FULL_SIZE))
    stages = {"loaded": memory_mb()}
    policy = set_precision(train)
    training = compile_for_training(
        build_training_model(trial.architecture, trial.inputs, data.facts), train, 1, resolved_loss(trial.inputs, data.facts)
    )
    stages["model built"] = memory_mb()

    code_batches = CodeBatches(window_batches(data, data.train_index, train.batch_size, trial))
    started = time.perf_counter()
    trivial_model(bool(training.jit_compile), trial, data.facts).fit(code_batches, epochs=1, verbose=0, shuffle=False)
    epoch_s = time.perf_counter() - started
    stages["input epoch"] = memory_mb()

    started = time.perf_counter()
    metrics, _ = evaluate(core_model(training), data, train.batch_size)
    eval_s = time.perf_counter() - started
    stages["evaluation"] = memory_mb()

    if spec["full_size_steps"]:
        rows = data.train_index[: train.batch_size * spec["full_size_steps"]]
        training.fit(CodeBatches(window_batches(data, rows, train.batch_size, trial)), verbose=0, shuffle=False)
        stages[f"training steps ({spec['full_size_steps']})"] = memory_mb()
    return {
        "backend": keras.backend.backend(),
        "device": devices.describe(),
        "batch_size": train.batch_size,
        "precision": policy,
        "xla": bool(training.jit_compile),
        "train_size": len(data.train_index),
        "input_epoch_s": epoch_s,
        "input_epoch_rate": len(data.train_index) / epoch_s,
        "eval_s": eval_s,
        "eval_pearson_untrained": metrics["eval_pearson"],
        "stages": stages,
        "load": os.getloadavg(),
    }


# ---- driver (parent process) ---------------------------------------------------------


def run_child(backend: str, spec: dict) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    child = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True, text=True
    )
    if child.returncode != 0:
        raise SystemExit(f"bench_train: the {backend} run failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def print_speed(results: list[dict]) -> None:
    print(f"machine: {machine()}")
    print("| family | width (bp) | backend | device | batch | precision | XLA | compile+first step (s) | step samples/s best (median) "
          "| input draw samples/s | input fed samples/s | fed / step | peak RSS (MB) | load 1/5 min |")
    print("|---|---:|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['family']} | {r['width']} | {r['backend']} | {r['device']} | {r['batch_size']:,} | {r['precision']} | {'on' if r['xla'] else 'off'} "
            f"| {r['first_step_s']:.1f} | {r['step_best']:,.0f} ({r['step_median']:,.0f}) | {r['draw']:,.0f} "
            f"| {r['fed']:,.0f} | {r['fed'] / r['step_best']:,.0f}x | {r['peak_rss_mb']:,.0f} "
            f"| {r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    for r in results:
        on_gpu = r["gpu"]
        target = TARGETS["gpu_step"] if on_gpu else TARGETS["cpu_step"]
        verdict = "meets" if r["step_best"] >= target else "misses"
        if r["width"] != DREAM_WINDOW:
            verdict = f"(at {r['width']} bp; the target is for the {DREAM_WINDOW} bp window) against"
        fed = "meets" if r["fed"] >= TARGETS["input_over_step"] * r["step_best"] else "misses"
        print(
            f"{r['backend']}: step {r['step_best']:,.0f} samples/s {verdict} the {'GPU' if on_gpu else 'CPU'} target "
            f"of {target:,}; input pipeline {fed} the {TARGETS['input_over_step']:g}x target "
            f"({r['steps_timed']} timed steps)"
        )


def print_medians(results: list[dict]) -> None:
    """Per backend, width and precision, the median over rounds of the median step, and its ratio to the first's."""
    for backend in dict.fromkeys(r["backend"] for r in results):
        medians = {}
        for r in results:
            if r["backend"] == backend:
                medians.setdefault((r["width"], r["precision"]), []).append(r["step_median"])
        first = statistics.median(next(iter(medians.values())))
        for (width, precision), rates in medians.items():
            median = statistics.median(rates)
            print(
                f"{backend} {width} bp {precision}: step median {median:,.0f} samples/s over {len(rates)} round(s), "
                f"{median / first:.2f}x the first"
            )


def print_full_size(results: list[dict]) -> None:
    print(f"machine: {machine()}")
    for r in results:
        print(
            f"\n{r['device']}, batch {r['batch_size']:,}, {r['precision']}, XLA {'on' if r['xla'] else 'off'}: "
            f"one input epoch of {r['train_size']:,} sequences in {r['input_epoch_s']:.1f} s "
            f"({r['input_epoch_rate']:,.0f} samples/s), evaluation in {r['eval_s']:.1f} s "
            f"(load {r['load'][0]:.1f} / {r['load'][1]:.1f})"
        )
        print("| stage | RSS (MB) | peak RSS (MB) | anonymous (MB) | file-backed (MB) |")
        print("|---|---:|---:|---:|---:|")
        for stage, m in r["stages"].items():
            print(f"| {stage} | {m['rss_mb']:,.0f} | {m['peak_rss_mb']:,.0f} | {m['anon_mb']:,.0f} | {m['file_mb']:,.0f} |")
        peak = max(m["peak_rss_mb"] for m in r["stages"].values())
        verdict = "meets" if peak < TARGETS["full_size_rss_mb"] else "misses"
        print(f"peak host RSS {peak:,.0f} MB: {verdict} the < {TARGETS['full_size_rss_mb']:,} MB target")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--backend", choices=["tensorflow", "jax", "both"], default="both", help="(default: %(default)s)")
    parser.add_argument(
        "--family", choices=["mini_enformer", "legnet"], default="mini_enformer",
        help="the baseline mini-Enformer, or LegNet with its published ingredients and recipe (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=10_000, help="training batch (default: the seed's %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first, compiling one (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="input pipeline timings, best kept (default: %(default)s)")
    parser.add_argument(
        "--precision", choices=list(PRECISIONS), nargs="+", default=["auto"],
        help="one or more, interleaved with --rounds (default: auto: bfloat16 on GPUs and CPUs measured faster in it)",
    )
    parser.add_argument("--jit", choices=list(JIT), default="auto", help="XLA (default: %(default)s: on for GPUs and JAX, off for TensorFlow on CPU)")
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic sequences for the speed runs (default: %(default)s)")
    parser.add_argument("--set", type=config_setting, action="append", default=[], metavar="KEY=VALUE", help="a model or training config field, e.g. --set channels=96")
    parser.add_argument("--full-size", action="store_true", help=f"the full-size ({FULL_SIZE:,}) trial input side and its host RSS")
    parser.add_argument("--full-size-steps", type=int, default=1, help="baseline training steps in --full-size (default: %(default)s)")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[DREAM_WINDOW],
        help=f"sequence widths the model reads: {DREAM_WINDOW} is the DREAM window, others a library table that wide "
        "(e.g. --widths 85 230; default: %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of every width and precision, interleaved (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        result = measure_full_size(spec) if spec["full_size"] else measure_speed(spec)
        print(json.dumps(result))
        return 0

    spec = {
        "family": args.family,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "jit": args.jit,
        "n": args.n,
        "set": args.set,
        "full_size": args.full_size,
        "full_size_steps": args.full_size_steps,
    }
    backends = ["tensorflow", "jax"] if args.backend == "both" else [args.backend]
    widths = [DREAM_WINDOW] if args.full_size else args.widths
    results = []
    for _ in range(args.rounds):
        for backend in backends:
            for width in widths:
                for precision in args.precision:
                    print(f"{backend}, {width} bp, {precision}: running (load average {os.getloadavg()[0]:.1f}) ...", flush=True)
                    results.append(run_child(backend, {**spec, "width": width, "precision": precision}))
    (print_full_size if args.full_size else print_speed)(results)
    if len(widths) > 1 or len(args.precision) > 1 or args.rounds > 1:
        print_medians(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
