"""Motif sets: the grammars the synthetic generators plant, and MEME-format files in and out.

A motif is a position probability matrix `(width, 4)` over A, C, G, T, rows summing
to 1. `planted_motifs` gives every motif the generators plant (data_prep.synth and
data_prep.synth_tables), each as its consensus with a little probability spread
over the other bases, so motif comparison never divides by a hard zero. A user's
own set (JASPAR, CIS-BP, YEASTRACT exports) comes as a MEME text file, read
strictly here: a bad line is one error naming the file, line and value.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from data_prep.synth import MOTIFS
from data_prep.synth_tables import SHAPES

BASES = "ACGT"
# Probability a planted motif's PWM gives each base other than its consensus base.
PLANTED_SPREAD = 0.01


def consensus_matrix(bases: str) -> np.ndarray:
    """The PWM `(len(bases), 4)` of a consensus string."""
    matrix = np.full((len(bases), len(BASES)), PLANTED_SPREAD)
    matrix[np.arange(len(bases)), [BASES.index(b) for b in bases]] = 1 - 3 * PLANTED_SPREAD
    return matrix


def planted_motifs() -> dict[str, np.ndarray]:
    """Every motif the synthetic generators plant, by name ("dream:reb1", "starr:GATA", ...)."""
    motifs = {f"dream:{name}": consensus_matrix(bases) for name, (bases, *_) in MOTIFS.items()}
    for shape in SHAPES.values():
        for task in shape.tasks:
            for name, bases, _ in task.motifs:
                motifs[f"{shape.name}:{name}"] = consensus_matrix(bases)
    return motifs


def planted_effects() -> dict[str, float]:
    """The sign the generators give each planted motif: +1 raises the target, -1 lowers it."""
    signs = {f"dream:{name}": float(np.sign(effect)) for name, (_, _, effect, _) in MOTIFS.items()}
    for shape in SHAPES.values():
        for task in shape.tasks:
            signs.update({f"{shape.name}:{name}": float(np.sign(effect)) for name, _, effect in task.motifs})
    return signs


class MotifFileError(ValueError):
    """A MEME file that cannot be read: file, line and what is wrong, in one line."""

    def __init__(self, path, line: int | None, message: str):
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"{where}: {message}")


def read_meme(path) -> dict[str, np.ndarray]:
    """The motifs of a MEME-format text file: name (the MOTIF line's identifier and alias) -> PWM `(width, 4)`.

    Needs `ALPHABET= ACGT` (or no ALPHABET line), then per motif a `MOTIF` line, a
    `letter-probability matrix:` line with `w=` and `w` rows of four probabilities.
    """
    path = Path(path)
    if not path.is_file():
        raise MotifFileError(path, None, "no such file; give a MEME-format motif file (--motifs)")
    motifs: dict[str, np.ndarray] = {}
    name, width, rows = None, None, []
    with path.open(encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, start=1):
            text = line.strip()
            if text.startswith("ALPHABET") and text.partition("=")[2].strip() not in ("ACGT", ""):
                raise MotifFileError(
                    path, number, f"alphabet {text.partition('=')[2].strip()!r}; only DNA (ACGT) motifs are read"
                )
            if text.startswith("MOTIF"):
                if name is not None:
                    raise MotifFileError(
                        path, number, f"motif {name!r} has no letter-probability matrix before the next MOTIF"
                    )
                name = " ".join(text.split()[1:]) or f"motif_{len(motifs) + 1}"
                if name in motifs:
                    raise MotifFileError(path, number, f"motif {name!r} appears twice")
            elif text.startswith("letter-probability matrix"):
                if name is None:
                    raise MotifFileError(path, number, "a letter-probability matrix outside a MOTIF")
                fields = dict(
                    pair.split("=", 1) for pair in text.partition(":")[2].replace("= ", "=").split() if "=" in pair
                )
                if not fields.get("w", "").isdigit() or int(fields["w"]) < 1:
                    raise MotifFileError(
                        path, number, f"w={fields.get('w')!r}; the matrix line needs its width, w= a whole number >= 1"
                    )
                width, rows = int(fields["w"]), []
            elif width is not None and text:
                values = text.split()
                try:
                    row = [float(v) for v in values]
                except ValueError:
                    row = []
                if len(row) != len(BASES) or min(row) < 0 or not np.isfinite(row).all():
                    raise MotifFileError(
                        path, number, f"{text!r} in motif {name!r}; a matrix row is four probabilities >= 0 (A C G T)"
                    )
                rows.append(row)
                if len(rows) == width:
                    matrix = np.asarray(rows, np.float64)
                    sums = matrix.sum(axis=1, keepdims=True)
                    if (sums <= 0).any():
                        raise MotifFileError(path, number, f"motif {name!r} has a row of zeros")
                    motifs[name] = matrix / sums
                    name, width = None, None
    if name is not None:
        raise MotifFileError(path, number, f"motif {name!r} ends before its {width or 'matrix'} rows")
    if not motifs:
        raise MotifFileError(
            path, None, "no motifs; expected MEME format (MOTIF lines, each with a letter-probability matrix)"
        )
    return motifs


def write_meme(path, motifs: dict[str, np.ndarray]) -> Path:
    """Write motifs (name -> PWM `(width, 4)`) as a MEME text file, replacing `path` atomically."""
    path = Path(path)
    lines = [
        "MEME version 4",
        "",
        "ALPHABET= ACGT",
        "",
        "strands: + -",
        "",
        "Background letter frequencies",
        "A 0.25 C 0.25 G 0.25 T 0.25",
        "",
    ]
    for name, matrix in motifs.items():
        lines += [f"MOTIF {name}", f"letter-probability matrix: alength= 4 w= {len(matrix)}"]
        lines += [" ".join(f"{p:.6f}" for p in row) for row in np.asarray(matrix)]
        lines.append("")
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        temporary.write_text("\n".join(lines))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def expected_motifs(dream: bool, tasks: tuple[str, ...]) -> dict[str, dict[str, float]] | None:
    """Per task, the planted motifs a model of this data should find (name -> sign), or None when no generator made it.

    A DREAM-format model's one task expects the DREAM grammar; a table's model expects
    the grammar of the library shape whose target columns are its tasks.
    """
    signs = planted_effects()
    if dream:
        return {task: {n: s for n, s in signs.items() if n.startswith("dream:")} for task in tasks}
    for shape in SHAPES.values():
        if tuple(t.name for t in shape.tasks) == tuple(tasks):
            return {
                t.name: {f"{shape.name}:{name}": float(np.sign(effect)) for name, _, effect in t.motifs}
                for t in shape.tasks
            }
    return None
