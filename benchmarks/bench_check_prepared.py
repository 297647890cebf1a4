"""Time `check_prepared` on a full-size prepared directory (6.7M sequences, 737 MB of codes).

Every study checks its data before Ray starts and every trial again when it loads it,
so the check must cost well under a trial's start-up. It scans the values once through
a memory map; the alternative, a digest recorded at prepare time, is timed beside it.
The arrays are random (codes 0..4) with a valid manifest, built once under
benchmarks/out/ (git-ignored). "cold" evicts the files from the page cache first
(posix_fadvise DONTNEED on these files only), "warm" reads them again.

    python benchmarks/bench_check_prepared.py
    python benchmarks/bench_check_prepared.py --rows 1000000 --repeats 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def build(directory: Path, rows: int, eval_size: int) -> Path:
    from data_prep.prepare import FORMAT_VERSION, MANIFEST, array_layout

    if (directory / MANIFEST).exists():
        return directory
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    codes = np.lib.format.open_memmap(directory / "codes.npy", mode="w+", dtype=np.uint8, shape=(rows, 110))
    for start in range(0, rows, 1 << 20):
        stop = min(rows, start + (1 << 20))
        codes[start:stop] = rng.integers(0, 5, size=(stop - start, 110), dtype=np.uint8)
    codes.flush()
    del codes
    targets = rng.random(rows, dtype=np.float32)
    order = rng.permutation(rows).astype(np.int64)
    test_index = np.sort(order[eval_size : 2 * eval_size])  # a test split as large as the validation one
    np.save(directory / "eval_index.npy", np.sort(order[:eval_size]))
    np.save(directory / "test_index.npy", test_index)
    np.save(directory / "train_index.npy", np.sort(order[2 * eval_size :]))
    np.save(directory / "test_targets.npy", targets[test_index])
    targets[test_index] = np.nan
    np.save(directory / "targets.npy", targets)
    train_size = rows - 2 * eval_size
    manifest = {
        "format_version": FORMAT_VERSION,
        "count": rows,
        "train_size": train_size,
        "eval_size": eval_size,
        "test_size": eval_size,
        "arrays": array_layout(rows, train_size, eval_size, eval_size),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def evict(directory: Path) -> None:
    os.sync()
    for path in directory.iterdir():
        descriptor = os.open(path, os.O_RDONLY)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(descriptor)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def sha256_all(directory: Path) -> None:
    for path in sorted(directory.glob("*.npy")):
        with path.open("rb") as stream:
            hashlib.file_digest(stream, "sha256")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_700_000)
    parser.add_argument("--eval-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from data_prep import check_prepared

    directory = build(OUT / f"check-{args.rows}", args.rows, args.eval_size)
    results: dict[str, list[float]] = {"check cold": [], "check warm": [], "sha256 warm": []}
    for _ in range(args.repeats):
        evict(directory)
        results["check cold"].append(timed(lambda: check_prepared(directory)))
        results["check warm"].append(timed(lambda: check_prepared(directory)))
        results["sha256 warm"].append(timed(lambda: sha256_all(directory)))
    size = sum(p.stat().st_size for p in directory.iterdir()) / 1e6
    print(f"{args.rows:,} rows, {size:,.0f} MB of arrays; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for name, values in results.items():
        print(f"{name:12s} median {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
