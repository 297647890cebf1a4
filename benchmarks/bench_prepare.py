"""Time `prepare` on a full-size synthetic DREAM file (6.7M lines, like the challenge's training set),
or with --table on a user-sized library table (500,000 rows of 230 bp, two target columns).

The file is generated once (`write_synthetic`, or `synthesize_library` for the table)
and cached under benchmarks/out/ (git-ignored). `prepare` then runs in a fresh Python
process, so its peak RSS is the prepare's own and not the generator's. Targets on a
2-core, 24 GB machine: at most 30 s and 1.5 GB for the DREAM file, 10 s and 2 GB for the
table. The source file is freshly written or read, so it is in the page cache: the
figure is for a warm cache.

    python benchmarks/bench_prepare.py            # 6.7M lines
    python benchmarks/bench_prepare.py --lines 500000
    python benchmarks/bench_prepare.py --table    # 500,000 rows x 230 bp, 2 targets
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
TARGETS = {"dream": (30.0, 1536.0), "table": (10.0, 2048.0)}  # (seconds, peak RSS MB)
TABLE_LENGTH = 230


def generate(path: Path, lines: int, seed: int) -> Path:
    """The cached synthetic file, written on the first run only."""
    from data_prep.synth import write_synthetic

    if path.exists():
        print(f"using cached {path} ({path.stat().st_size / 1e6:,.0f} MB)", flush=True)
        return path
    print(f"generating {lines:,} synthetic lines into {path} (once; cached for later runs)", flush=True)
    started = last = time.perf_counter()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= 5 or done == total:
            last = now
            rate = done / (now - started)
            print(f"  {done:>10,}/{total:,} lines  {now - started:6.1f} s  {rate:,.0f} lines/s", flush=True)

    write_synthetic(path, lines, seed=seed, progress=report)
    return path


def table_shape():
    """The STARR-seq-like shape at a lentiMPRA's 230 bp: two signed targets and a set column."""
    from dataclasses import replace

    from data_prep.synth_tables import STARR

    return replace(STARR, name="bench", length=TABLE_LENGTH, shortest=TABLE_LENGTH - 20)


def generate_table(path: Path, rows: int, seed: int) -> Path:
    from data_prep.synth_tables import write_library

    if path.exists():
        print(f"using cached {path} ({path.stat().st_size / 1e6:,.0f} MB)", flush=True)
        return path
    print(f"generating a {rows:,}-row table into {path} (once; cached for later runs)", flush=True)
    return write_library(path, table_shape(), rows, seed)


def prepare_in_child(source: Path, prepared: Path, eval_size: int, kind: str) -> dict:
    """Run `prepare` in a fresh interpreter; returns its wall and CPU time, peak RSS and line count."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(source), str(prepared), str(eval_size), kind],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def child_main(source: str, prepared: str, eval_size: str, kind: str) -> None:
    from data_prep.prepare import TableOptions, prepare

    started = time.perf_counter()
    if kind == "table":
        targets = tuple(task.name for task in table_shape().tasks)
        manifest = prepare(source, prepared, table=TableOptions(target_columns=targets, split_column="set"))
    else:
        manifest = prepare(source, prepared, eval_size=int(eval_size))
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)  # ru_maxrss is in kilobytes on Linux
    cpu = usage.ru_utime + usage.ru_stime
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": usage.ru_maxrss / 1024, "count": manifest["count"]}))


def machine() -> str:
    """CPU model and core count, e.g. 'Intel(R) Xeon(R) Processor, 2 cores, 23 GB'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory_gb:.0f} GB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="store_true", help="a 230 bp library table with two targets instead")
    parser.add_argument("--lines", type=int, help="synthetic lines (default: 6,700,000; with --table 500,000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic file (default: %(default)s)")
    parser.add_argument("--eval-size", type=int, default=10_000, help="held-out sequences (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="cache directory (default: benchmarks/out)")
    parser.add_argument("--keep", action="store_true", help="keep the prepared directory after timing")
    parser.add_argument("--child", nargs=4, metavar=("SOURCE", "PREPARED", "EVAL_SIZE", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return 0

    kind = "table" if args.table else "dream"
    lines = args.lines or (500_000 if args.table else 6_700_000)
    if args.table:
        source = generate_table(args.out / f"table-{TABLE_LENGTH}bp-n{lines}-seed{args.seed}.csv", lines, args.seed)
    else:
        source = generate(args.out / f"synthetic-n{lines}-seed{args.seed}.txt", lines, args.seed)
    prepared = args.out / f"prepared-{kind}-n{lines}-seed{args.seed}"
    target_seconds, target_rss_mb = TARGETS[kind]
    # Other work on the machine stretches wall time, not CPU time: the load average says how much.
    load = os.getloadavg()[0]
    print(f"timing prepare on {source.name} in a fresh process (load average {load:.1f}) ...", flush=True)
    try:
        result = prepare_in_child(source, prepared, args.eval_size, kind)
    finally:
        if not args.keep:
            shutil.rmtree(prepared, ignore_errors=True)
    wall, cpu, rss, count = result["wall_s"], result["cpu_s"], result["peak_rss_mb"], result["count"]
    verdict = "meets" if wall <= target_seconds and rss <= target_rss_mb else "misses"
    print(f"prepare: {count:,} lines in {wall:.1f} s ({count / wall:,.0f} lines/s, {cpu:.1f} s CPU), ", end="")
    print(f"peak RSS {rss:,.0f} MB")
    print(f"target <= {target_seconds:.0f} s and <= {target_rss_mb:,.0f} MB: {verdict}\n")
    print("| machine | lines | wall (s) | lines/s | CPU (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| {machine()} | {count:,} | {wall:.1f} | {count / wall:,.0f} | {cpu:.1f} | {rss:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
