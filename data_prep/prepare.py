"""Turn a DREAM training file into the arrays every trial memory-maps.

A prepared directory holds `codes.npy` (uint8, n x 110), `targets.npy` (float32),
`train_index.npy` / `eval_index.npy` (the fixed split) and `manifest.json`. It is
built in a temporary directory beside the target and renamed into place only when
complete, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data_prep.dream_format import DreamFormatError, read_blocks
from data_prep.encoding import N_CODE, SEQUENCE_WIDTH, WINDOW_LENGTH, WINDOW_START

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("codes", "targets", "train_index", "eval_index")


def prepare(
    source,
    out_dir,
    eval_size: int = 10_000,
    split_seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Validate and encode `source` into `out_dir`; returns the manifest.

    Refuses to overwrite an existing directory that is not a prepared one.
    """
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).exists():
        raise FileExistsError(f"{out_dir} exists and is not a prepared data directory; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Made with mkdir, not mkdtemp, so the directory gets the umask's permissions, not 0700.
    scratch = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.tmp"
    scratch.mkdir()
    try:
        manifest = _write_arrays(source, scratch, eval_size, split_seed, progress)
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(scratch, out_dir)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return manifest


def _write_arrays(source: Path, scratch: Path, eval_size: int, split_seed: int, progress) -> dict:
    lengths = np.zeros(0, dtype=np.int64)
    targets = []
    count = n_characters = 0
    with (scratch / "codes.npy").open("wb+") as codes_file:
        header = _npy_header(0)
        codes_file.write(header)
        for block in read_blocks(source, require_expression=True, progress=progress):
            codes_file.write(block.codes.tobytes())
            count += len(block.codes)
            targets.append(block.expression)
            lengths = _add_counts(lengths, block.lengths)
            n_characters += _n_characters(block)
        final_header = _npy_header(count)
        assert len(final_header) == len(header), "NumPy's .npy header must not change size"
        codes_file.seek(0)
        codes_file.write(final_header)
    if eval_size < 1 or eval_size >= count:
        raise DreamFormatError(
            source, f"has {count:,} sequences; the evaluation split of {eval_size:,} must be at least 1 and leave training data"
        )
    targets = np.concatenate(targets).astype(np.float32)
    np.save(scratch / "targets.npy", targets)
    order = np.random.default_rng(split_seed).permutation(count)
    np.save(scratch / "eval_index.npy", np.sort(order[:eval_size]))
    np.save(scratch / "train_index.npy", np.sort(order[eval_size:]))
    return {
        "format_version": FORMAT_VERSION,
        "source": str(source.resolve()),
        "source_sha256": sha256(source),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "count": count,
        "train_size": count - eval_size,
        "eval_size": eval_size,
        "split_seed": split_seed,
        "sequence_width": SEQUENCE_WIDTH,
        "window_start": WINDOW_START,
        "window_length": WINDOW_LENGTH,
        "length_histogram": {str(k): int(v) for k, v in enumerate(lengths) if v},
        "truncated": int(lengths[SEQUENCE_WIDTH + 1 :].sum()),
        "padded": int(lengths[:SEQUENCE_WIDTH].sum()),
        "n_characters": n_characters,
        "expression": {
            "min": float(targets.min()),
            "max": float(targets.max()),
            "mean": float(targets.mean()),
            "std": float(targets.std()),
            "whole_numbers": float(np.mean(targets == np.round(targets))),
        },
    }


def _npy_header(rows: int) -> bytes:
    """The .npy header of a (rows, 110) uint8 array; NumPy pads it so its size never depends on rows."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (rows, SEQUENCE_WIDTH)}
    )
    return buffer.getvalue()


def _add_counts(histogram: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    counts = np.bincount(lengths)
    size = max(len(histogram), len(counts))
    return np.pad(histogram, (0, size - len(histogram))) + np.pad(counts, (0, size - len(counts)))


def _n_characters(block) -> int:
    """N characters in the kept part of the sequences, not counting the 3' padding."""
    padding = np.maximum(SEQUENCE_WIDTH - block.lengths, 0).sum()
    return int(np.count_nonzero(block.codes == N_CODE) - padding)


def sha256(path: Path) -> str:
    with Path(path).open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


@dataclass
class PreparedData:
    """A prepared directory, arrays memory-mapped read-only so every trial shares the page cache."""

    directory: Path
    manifest: dict
    codes: np.ndarray
    targets: np.ndarray
    train_index: np.ndarray
    eval_index: np.ndarray

    @classmethod
    def load(cls, directory) -> "PreparedData":
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"{directory} is not a prepared data directory (no {MANIFEST}); "
                "make one with `dream-hpo prepare TRAIN.txt --out DIR`"
            )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{directory} has format version {manifest.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}; prepare the data again"
            )
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        return cls(directory, manifest, **arrays)


def check_prepared(directory) -> dict:
    """The manifest of a prepared directory, refused with a one-line message when it is not one."""
    return PreparedData.load(directory).manifest
