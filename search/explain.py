"""`dream-hpo explain` and the end of a search: what a model learned, written to a folder and logged to MLflow.

For a bounded sample of sequences it computes mutagenesis and gradient x input
(model.attribution), finds motifs in the mutagenesis maps with TF-MoDISco and names
them by TOMTOM (model.motifs) against a motif set: a user's MEME file, or else the
generators' planted grammar (data_prep.motif_files), which for DREAM data is five
real yeast motifs. The folder holds `attributions.npz`, `motifs.tsv`,
`patterns.meme`, logos under `logos/` and a self-contained `summary.html`; it is
written beside `--out` and renamed into place, and logged to the model's MLflow run
under `explain/`.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from model.inference import DEFAULT_BATCH_SIZE

# Sequences explained by default: about a minute on 2 CPU cores with the baseline model.
DEFAULT_SEQUENCES = 500
ARTIFACT_DIR = "explain"
# Sequences drawn as attribution logos: the highest predicted of each task.
LOGO_SEQUENCES = 3
SAMPLE_SEED = 0


@dataclass(frozen=True)
class MotifSet:
    """The motifs patterns are named by, where they came from, and per task the planted ones expected (name -> sign)."""

    motifs: dict
    source: str
    expected: dict | None = None


@dataclass(frozen=True)
class Explanation:
    """What one `explain` wrote and found."""

    out: Path
    tasks: tuple[str, ...]
    attributions: object  # model.attribution.Attributions
    patterns: tuple  # model.motifs.Pattern, matched
    motif_set: MotifSet
    notes: tuple[str, ...]  # what was left out and why
    logged_to: str | None = None  # MLflow run id
    artifact_path: str = ARTIFACT_DIR  # where in that run: explain/, or explain_2/ ... for a later explain

    def recovered(self, task: str) -> dict:
        """Planted motif name -> the pattern that recovered it with the expected sign, for `task`."""
        from model.motifs import recovered

        if not self.motif_set.expected:
            return {}
        return recovered([p for p in self.patterns if p.task == task], self.motif_set.expected[task])


def check_out(out, name: str = "--out") -> Path:
    """`--out` must be new or an empty directory: explain never replaces what it did not write."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "a directory that is not empty"
        raise ValueError(f"{name} {out} is {what}; explain writes into a new or empty directory")
    return out


def check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--n must be a whole number of at least 1, got {n!r}")
    return n


def motif_set(user: MotifSet | None, dream: bool, tasks: tuple[str, ...]) -> MotifSet:
    """The user's motifs, else the planted grammar (with what each task should find when a generator made the data)."""
    from data_prep.motif_files import expected_motifs, planted_motifs

    if user is not None:
        return user
    expected = expected_motifs(dream, tasks)
    planted = planted_motifs()
    if expected is None:
        return MotifSet(planted, "the synthetic generators' planted motifs (give --motifs for a real set)")
    names = {name for signs in expected.values() for name in signs}
    return MotifSet({n: m for n, m in planted.items() if n in names}, "the planted grammar", expected)


def sample_rows(total: int, n: int) -> np.ndarray:
    """`n` of `total` rows, drawn once with a fixed seed and sorted, so a rerun explains the same sequences."""
    if n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(total, n, replace=False))


def explain_blend(
    blend,
    codes: np.ndarray,
    out,
    motifs: MotifSet,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] = print,
) -> Explanation:
    """Attributions, motifs and files for `codes` (stored in the blend's layout); `out` checked by the caller."""
    from data_prep.encoding import one_hot
    from model.attribution import attribute, hypothetical
    from model.motifs import discover, missing_packages, name_patterns

    attributions, notes = attribute(blend, codes, batch_size, progress)
    notes = list(notes)
    patterns = []
    missing = missing_packages()
    if missing:
        notes.append(f"motif discovery left out: install {' and '.join(missing)} (pip install 'dream-hpo[explain]')")
    else:
        notice(f"finding motifs with TF-MoDISco, named by TOMTOM against {motifs.source}")
        windows = one_hot(attributions.window_codes)
        for task_index, task in enumerate(blend.tasks):
            found = discover(windows, hypothetical(attributions.mutagenesis)[..., task_index], task)
            patterns += name_patterns(found, motifs.motifs)
    explanation = Explanation(Path(out), tuple(blend.tasks), attributions, tuple(patterns), motifs, tuple(notes))
    _write(explanation, blend.layout.window_start)
    return explanation


def explain(
    model: str,
    out,
    data=None,
    sequences=None,
    n: int = DEFAULT_SEQUENCES,
    motifs_file=None,
    tracking_uri: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress=None,
    notice: Callable[[str], None] = print,
    log_to: str | None = None,
) -> Explanation:
    """`dream-hpo explain`: every input checked before the model loads, then `explain_blend` and the MLflow log.

    The folder is logged to `log_to` (a search's parent run) or else to the run that logged the model.
    """
    from data_prep.motif_files import read_meme
    from model.inference import check_batch_size
    from search.predict import check_fits_data, check_store, load_blend, read_sequence_file, resolve_model, stored_codes

    out = check_out(out)
    check_count(n)
    check_batch_size(batch_size)
    if (data is None) == (sequences is None):
        raise ValueError("give the sequences to explain: --data DIR (its validation split) or --sequences FILE")
    user_motifs = MotifSet(read_meme(motifs_file), str(motifs_file)) if motifs_file is not None else None
    model = resolve_model(model)
    check_store(model, tracking_uri)
    if data is not None:
        from data_prep import PreparedData

        prepared = PreparedData.load(data)
        rows = prepared.eval_index[sample_rows(len(prepared.eval_index), n)]
        blend = load_blend(model, tracking_uri)
        check_fits_data(blend, prepared.facts, model, data)
        codes = np.asarray(prepared.codes[rows])
        notice(f"explaining {len(rows):,} of the {len(prepared.eval_index):,} validation sequences of {data}")
    else:
        read = read_sequence_file(sequences, progress(f"read {Path(sequences).name}") if progress else None)
        blend = load_blend(model, tracking_uri)
        codes = stored_codes(blend, read, notice)[:n]
        notice(f"explaining the first {len(codes):,} of the {len(read.sequences):,} sequences of {sequences}")
    explanation = explain_blend(
        blend,
        codes,
        out,
        motif_set(user_motifs, blend.layout.preset == "dream", blend.tasks),
        batch_size,
        progress("in-silico mutagenesis") if progress else None,
        notice,
    )
    run_id = log_to or model_run(model, tracking_uri)
    if run_id:
        explanation = replace(explanation, logged_to=run_id, artifact_path=log_explanation(run_id, out, tracking_uri))
    return explanation


def model_run(model: str, tracking_uri: str | None) -> str | None:
    """The MLflow run that logged `model` (runs:/ID/..., models:/NAME/VERSION or @ALIAS), None for a .keras file."""
    if model.startswith("runs:/"):
        return model.split("/")[1]
    if not model.startswith("models:/"):
        return None
    from mlflow.tracking import MlflowClient

    from search.tracking_store import existing_tracking_store

    client = MlflowClient(existing_tracking_store(tracking_uri))
    name, _, version = model.removeprefix("models:/").partition("/")
    if "@" in name:
        name, _, alias = name.partition("@")
        return client.get_model_version_by_alias(name, alias).run_id
    return client.get_model_version(name, version).run_id if version.isdigit() else None


def log_explanation(run_id: str, out, tracking_uri: str | None) -> str:
    """Every file of `out` as artifacts of the run, under `explain/`, or `explain_2/`, ... when earlier ones are there.

    MLflow cannot delete artifacts, so a later explanation never mixes its files with an earlier one's.
    """
    from mlflow.tracking import MlflowClient

    from search.tracking_store import existing_tracking_store

    client = MlflowClient(existing_tracking_store(tracking_uri))
    taken = {artifact.path for artifact in client.list_artifacts(run_id)}
    path = next(
        name
        for number in range(1, len(taken) + 2)
        if (name := ARTIFACT_DIR if number == 1 else f"{ARTIFACT_DIR}_{number}") not in taken
    )
    client.log_artifacts(run_id, str(out), path)
    return path


def motif_lines(explanation: Explanation) -> list[str]:
    """One console line per discovered pattern, then per task how many planted motifs were recovered."""
    lines = []
    for p in explanation.patterns:
        match = f"matches {p.match} (q {p.q_value:.1e})" if p.match else f"no match (best q {p.q_value:.2f})"
        task = f"{p.task} " if len(explanation.tasks) > 1 else ""
        sign = "raises" if p.sign > 0 else "lowers"
        lines.append(f"  motif {task}{p.name:<6} {p.consensus:<16} {sign}, {p.seqlets:>4} sites  {match}")
    if explanation.motif_set.expected:
        for task in explanation.tasks:
            expected = explanation.motif_set.expected[task]
            found = explanation.recovered(task)
            missed = [name for name in expected if name not in found]
            of_task = f" for {task}" if len(explanation.tasks) > 1 else ""
            lines.append(
                f"  planted motifs recovered{of_task}: {len(found)} of {len(expected)}"
                + (f" (missed: {', '.join(missed)})" if missed else "")
            )
    return lines


# ---- the folder -------------------------------------------------------------------------


def _write(explanation: Explanation, window_start: int) -> None:
    """Write every file into a new folder beside `out`, then rename it into place."""
    out = explanation.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        (staging / "logos").mkdir(parents=True)
        _write_arrays(explanation, staging / "attributions.npz")
        _write_table(explanation.patterns, staging / "motifs.tsv")
        logos = _write_logos(explanation, staging / "logos", window_start)
        if explanation.patterns:
            from data_prep.motif_files import write_meme

            write_meme(staging / "patterns.meme", {f"{p.task}/{p.name}": p.probabilities for p in explanation.patterns})
        _write_summary(explanation, logos, staging / "summary.html")
        if out.exists():
            out.rmdir()  # checked empty before any work
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_arrays(explanation: Explanation, path: Path) -> None:
    a = explanation.attributions
    arrays = {
        "tasks": np.asarray(explanation.tasks),
        "window_codes": a.window_codes,
        "predictions": a.predictions,
        "mutagenesis": a.mutagenesis,
        "mutagenesis_importance": a.ism_importance,
    }
    if a.gradients is not None:
        arrays |= {"gradients": a.gradients, "gradient_importance": a.gradient_importance, "agreement": a.agreement}
    np.savez_compressed(path, **arrays)


MOTIF_COLUMNS = ("task", "pattern", "sign", "seqlets", "consensus", "best_match", "q_value")


def _write_table(patterns, path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
        writer.writerow(MOTIF_COLUMNS)
        for p in patterns:
            q = f"{p.q_value:.3g}" if math.isfinite(p.q_value) else ""
            writer.writerow([p.task, p.name, "+" if p.sign > 0 else "-", p.seqlets, p.consensus, p.match, q])


def _write_logos(explanation: Explanation, directory: Path, window_start: int) -> list[tuple[str, Path]]:
    """(caption, file) for each pattern's logo and each task's top sequences."""
    from data_prep.encoding import one_hot
    from model.attribution import hypothetical
    from search.plots import attribution_logo, motif_logo

    drawn = []
    for p in explanation.patterns:
        match = f"matches {p.match} (q {p.q_value:.1e})" if p.match else "no match in the motif set"
        caption = (
            f"{p.task} {p.name}: {p.seqlets} sites, {'raises' if p.sign > 0 else 'lowers'} the prediction; {match}"
        )
        path = directory / f"pattern_{_file_part(p.task)}_{p.name}.png"
        motif_logo(p.contributions, path, caption)
        drawn.append((caption, path))
    a = explanation.attributions
    present = one_hot(a.window_codes)
    for task_index, task in enumerate(explanation.tasks):
        for rank, row in enumerate(np.argsort(-a.predictions[:, task_index])[:LOGO_SEQUENCES], start=1):
            panels = [
                (
                    "mutagenesis",
                    (hypothetical(a.mutagenesis[row : row + 1]) * present[row : row + 1, ..., None])[
                        0, ..., task_index
                    ],
                )
            ]
            if a.gradients is not None:
                panels.append(
                    (
                        "gradient x input",
                        (hypothetical(a.gradients[row : row + 1]) * present[row : row + 1, ..., None])[
                            0, ..., task_index
                        ],
                    )
                )
            caption = f"{task}: predicted {a.predictions[row, task_index]:.2f}, the #{rank} of the sample (row {row})"
            path = directory / f"sequence_{_file_part(task)}_{rank}.png"
            attribution_logo(panels, path, caption, window_start)
            drawn.append((caption, path))
    return drawn


def _file_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _write_summary(explanation: Explanation, logos: list[tuple[str, Path]], path: Path) -> None:
    """One HTML page with the motif table, notes and every logo embedded (MLflow's artifact view shows it whole)."""
    a = explanation.attributions
    parts = [
        "<html><head><meta charset='utf-8'><title>What the model learned</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}td,th{padding:2px 10px;text-align:left}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}</style></head><body>",
        "<h2>What the model learned</h2>",
        f"<p>{len(a.window_codes):,} sequences, {a.window_codes.shape[1]} bases each; "
        f"motifs named against: {html.escape(explanation.motif_set.source)}.</p>",
    ]
    if a.agreement is not None:
        agreement = ", ".join(f"{t} {r:.2f}" for t, r in zip(explanation.tasks, a.agreement))
        parts.append(
            f"<p>Gradient x input against mutagenesis, median per-sequence r over positions: {html.escape(agreement)}.</p>"
        )
    for line in motif_lines(explanation):
        if "recovered" in line:
            parts.append(f"<p><b>{html.escape(line.strip())}</b></p>")
    parts += [f"<p><i>{html.escape(note)}</i></p>" for note in explanation.notes]
    parts.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in MOTIF_COLUMNS) + "</tr>")
    for p in explanation.patterns:
        q = f"{p.q_value:.2g}" if math.isfinite(p.q_value) else ""
        cells = (p.task, p.name, "+" if p.sign > 0 else "-", p.seqlets, p.consensus, p.match or "-", q)
        parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    for caption, logo in logos:
        data = base64.b64encode(logo.read_bytes()).decode()
        parts.append(f"<h4>{html.escape(caption)}</h4><img style='max-width:100%' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
