"""Seconds for in-silico mutagenesis of 1,000 DREAM sequences (85 bp window: 255,000 substitutions) with the baseline.

The model is the seed's 192/5/4/4 mini-Enformer (untrained: the time does not
depend on the weights), built under each --precision policy, predicted in batches of
--batch-size through `model.attribution.mutagenesis`, the code `dream-hpo explain`
runs. Policies alternate round by round in one process (one sitting); the median
per policy is printed with peak RSS. Then, once, gradient x input on the same
sequences and TF-MoDISco plus TOMTOM on the mutagenesis maps, for the rest of an
explain's time. Target: mutagenesis <= 60 s on the 2-core CPU.

    python benchmarks/bench_explain.py
    python benchmarks/bench_explain.py --sequences 1000 --rounds 3 --precision float32 mixed_bfloat16
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench_prepare import machine  # noqa: E402

TARGET_SECONDS = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1_024)
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"], choices=["float32", "mixed_bfloat16"])
    args = parser.parse_args()

    import keras

    from data_prep import synthesize
    from data_prep.encoding import encode_sequences
    from model import ModelConfig, build_model
    from model.attribution import gradient_x_input, hypothetical, mutagenesis
    from model.inference import Blend

    text, _, _ = synthesize(args.sequences, seed=1)
    codes = encode_sequences([line.split(b"\t")[0].decode() for line in text.splitlines()])
    blends = {}
    for policy in args.precision:
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        blends[policy] = Blend(models=(build_model(ModelConfig()),), weights=(1.0,))
    keras.mixed_precision.set_global_policy("float32")
    variants = args.sequences * 85 * 3
    print(f"machine: {machine()}")
    print(f"in-silico mutagenesis: {args.sequences:,} sequences x 85 positions x 3 bases = {variants:,} predictions, "
          f"batch {args.batch_size:,}, baseline 192/5/4/4, backend {keras.backend.backend()}")
    blend = blends[args.precision[0]]
    mutagenesis(blend, codes[:4], args.batch_size)  # builds the predict function once, outside the timing
    seconds = {policy: [] for policy in args.precision}
    for round_number in range(1, args.rounds + 1):
        for policy, blend in blends.items():
            start = time.perf_counter()
            effects, _ = mutagenesis(blend, codes, args.batch_size)
            seconds[policy].append(time.perf_counter() - start)
            print(f"  round {round_number}  {policy:<15} {seconds[policy][-1]:6.1f} s")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for policy, values in seconds.items():
        median = statistics.median(values)
        verdict = "meets" if median <= TARGET_SECONDS else "misses"
        print(f"{policy:<15} median {median:.1f} s ({variants / median:,.0f} predictions/s): {verdict} the {TARGET_SECONDS:.0f} s target")
    if len(seconds) == 2:
        first, second = (statistics.median(v) for v in seconds.values())
        print(f"{args.precision[1]} / {args.precision[0]}: {second / first:.2f}x the time")
    print(f"peak RSS {peak_mb:,.0f} MB")

    start = time.perf_counter()
    gradient_x_input(blends[args.precision[0]], codes)
    print(f"gradient x input ({args.precision[0]}): {time.perf_counter() - start:.1f} s")
    from model.motifs import discover, missing_packages, name_patterns

    if missing_packages():
        print(f"motifs skipped: install {missing_packages()}")
        return 0
    from data_prep.encoding import one_hot
    from data_prep.motif_files import planted_motifs

    window = one_hot(codes[:, 15:100])
    start = time.perf_counter()
    patterns = discover(window, hypothetical(effects)[..., 0], "expression")
    named = name_patterns(patterns, planted_motifs())
    print(f"TF-MoDISco + TOMTOM (untrained model, {len(named)} patterns): {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
