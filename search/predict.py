"""`dream-hpo predict` and `evaluate`: apply a trained model to a DREAM test file.

A model is named the way a user finds it: an MLflow run id (a trial run, whose
logged model is `model`), a Model Registry URI `models:/NAME/VERSION` (what a
search registers), or a `.keras` file. Test files are read and checked before
the model is loaded, so bad input fails in seconds, with its file and line.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable

from data_prep.submission import FORMATS
from model.inference import DEFAULT_BATCH_SIZE, check_batch_size

RUN_ID = re.compile(r"[0-9a-f]{32}")
MLFLOW_SCHEMES = ("models:/", "runs:/")

Progress = Callable[[str], Callable[[int, int], None]]


def resolve_model(spec: str) -> str:
    """The MLflow model URI or `.keras` path named by `spec`; checked before any long work."""
    spec = str(spec)
    if spec.endswith(".keras"):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"{spec}: no such model file")
        return spec
    if RUN_ID.fullmatch(spec):
        from search.serving import LOGGED_MODEL_NAME

        return f"runs:/{spec}/{LOGGED_MODEL_NAME}"
    if spec.startswith(MLFLOW_SCHEMES):
        return spec
    raise ValueError(
        f"--model {spec!r} is not a model: give an MLflow run id (32 hex characters), "
        "a models:/NAME/VERSION (or runs:/ID/model) URI, or a path to a .keras file"
    )


def load_blend(model: str, tracking_uri: str | None = None):
    """The `model.inference.Blend` behind a resolved `.keras` path (a blend of one) or MLflow URI.

    A model that does not load is a ValueError naming it and the first line of the
    cause, not the model config Keras wraps around it.
    """
    import_keras_quietly()
    try:
        if not model.startswith(MLFLOW_SCHEMES):
            from model import load_model
            from model.inference import Blend

            return Blend(models=(load_model(model),), weights=(1.0,))
        return _load_logged_model(model, tracking_uri)
    except Exception as error:
        raise ValueError(f"cannot load model {model}: {cause(error)}") from error


def _load_logged_model(model: str, tracking_uri: str | None):
    import mlflow
    from mlflow.exceptions import MlflowException

    from search.serving import load_sequence_model
    from search.tracking_store import existing_tracking_store

    tracking_uri = existing_tracking_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    # predict draws its own progress bar; MLflow's download bars would interleave with it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return load_sequence_model(model)
    except MlflowException as error:
        raise ValueError(f"{error.message} (in the MLflow store {tracking_uri})") from None


def cause(error: BaseException) -> str:
    """The first line of the innermost error, without the model config Keras appends to it."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).rpartition("Exception encountered: ")[2].partition(" Full object config")[0].strip()
    return text.splitlines()[0] if text else type(error).__name__


def import_keras_quietly() -> None:
    """Import Keras, and TensorFlow under it, without TensorFlow's start-up lines on the console.

    TF_CPP_MIN_LOG_LEVEL=3 silences TensorFlow's C++ log from then on (the cuInit
    error on a machine without a GPU). The oneDNN and CUDA lines it writes while
    loading come before absl's log is initialised, which no setting silences, so
    the process's stderr points at a file during the import; the file is shown
    only if the import fails.
    """
    if "keras" in sys.modules:
        return
    import tempfile

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


def check_store(model: str, tracking_uri: str | None) -> None:
    """Refuse a missing MLflow store before the test file is read, when the model comes from one."""
    if model.startswith(MLFLOW_SCHEMES):
        from search.tracking_store import existing_tracking_store

        existing_tracking_store(tracking_uri)


def output_format(out, format: str | None) -> str:
    """The requested format, or the output's suffix (.json gives JSON, anything else TSV)."""
    if format is None:
        return "json" if Path(out).suffix.lower() == ".json" else "tsv"
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}; got {format!r}")
    return format


def predict_file(
    model: str,
    sequences,
    out,
    format: str | None = None,
    tracking_uri: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    notice: Callable[[str], None] = print,
) -> int:
    """Write the predictions for every sequence of `sequences` to `out`; returns their number.

    A DREAM model writes the challenge's submission formats. A table's model reads the
    sequences by its training layout (`notice` says how many it padded or cut) and
    writes a column per task under a header (TSV) or an object per sequence (JSON).
    `sequences` is a DREAM-style file (a sequence per line, perhaps a value after a tab)
    or a table with a header and one column of sequences.
    """
    from data_prep.submission import write_submission, write_task_predictions

    format = output_format(out, format)
    check_output(out, {"--sequences": sequences})
    check_batch_size(batch_size)
    model = resolve_model(model)
    check_store(model, tracking_uri)
    test = read_sequence_file(sequences, _stage(progress, f"read {Path(sequences).name}"))
    blend = load_blend(model, tracking_uri)
    codes = stored_codes(blend, test, notice)
    predictions = blend.predict(codes, batch_size, _stage(progress, "predict"))
    if blend.layout.preset == "dream" and len(blend.tasks) == 1:
        write_submission(out, test.sequences, predictions, format)
    else:
        write_task_predictions(out, test.sequences, predictions, blend.tasks, format)
    return len(predictions)


def predict_variants(
    model: str,
    variants,
    out,
    sequences=None,
    ref_column: str | None = None,
    alt_column: str | None = None,
    format: str | None = None,
    tracking_uri: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    notice: Callable[[str], None] = print,
) -> int:
    """Write each pair's predictions and their difference (alt - ref) per task to `out`; returns the pairs' number.

    `variants` is a table of ref and alt sequences or, with `sequences` (a test file read as
    `predict_file` reads it), a challenge subset CSV naming pairs of its lines. Rows keep the
    input order: carried columns, `ref`, `alt`, then `ref_TASK`, `alt_TASK`, `delta_TASK` per
    task. Each distinct sequence is predicted once: an SNV set repeats its reference per variant.
    """
    from data_prep.encoding import encode_sequences
    from data_prep.submission import SequenceFile, write_table
    from data_prep.variant_pairs import ROLES, check_subset_file, read_pairs_table, read_subset_pairs

    format = output_format(out, format)
    check_output(out, {"--variants": variants, "--sequences": sequences})
    if sequences is not None and (ref_column or alt_column):
        raise ValueError(
            "--ref-column and --alt-column name columns of a table of sequences; with --sequences, "
            "--variants is a challenge subset CSV, whose pairs are its alt_pos and ref_pos lines"
        )
    check_batch_size(batch_size)
    model = resolve_model(model)
    check_store(model, tracking_uri)
    if sequences is None:
        pairs = read_pairs_table(variants, ref_column, alt_column)
    else:
        check_subset_file(variants)
        test = read_sequence_file(sequences, _stage(progress, f"read {Path(sequences).name}"))
        pairs = read_subset_pairs(variants, test.sequences)
    distinct = list(dict.fromkeys(pairs.ref + pairs.alt))
    notice(f"{len(pairs.ref):,} pairs, {len(distinct):,} distinct sequences to predict")
    blend = load_blend(model, tracking_uri)
    codes = stored_codes(blend, SequenceFile(distinct, encode_sequences(distinct), None), notice)
    predicted = blend.predict(codes, batch_size, _stage(progress, "predict"))
    predicted = predicted.reshape(len(distinct), len(blend.tasks))
    row_of = {sequence: row for row, sequence in enumerate(distinct)}
    ref = predicted[[row_of[sequence] for sequence in pairs.ref]]
    alt = predicted[[row_of[sequence] for sequence in pairs.alt]]
    values = {}
    for index, task in enumerate(blend.tasks):
        values[f"ref_{task}"], values[f"alt_{task}"] = ref[:, index], alt[:, index]
        values[f"delta_{task}"] = alt[:, index] - ref[:, index]
    text = {**dict(pairs.carried), **dict(zip(ROLES, (pairs.ref, pairs.alt)))}
    write_table(out, text, values, format, rows="pairs")
    return len(pairs.ref)


def check_output(out, inputs: dict) -> None:
    """Refuse an output that cannot be written or is one of the inputs (by name or through a link), before any work."""
    from data_prep.submission import check_output_path

    check_output_path(out)
    for flag, given in inputs.items():
        if given is not None and Path(out).exists() and Path(given).exists() and os.path.samefile(out, given):
            raise ValueError(
                f"--out {out} is the {flag} file; give another file name, predict never overwrites its input"
            )


def stored_codes(blend, test, notice: Callable[[str], None] = print):
    """A sequence file's codes as the model's training data stored them; `notice` says what fitting them did."""
    from data_prep.encoding import DREAM_LAYOUT

    if blend.layout == DREAM_LAYOUT:
        return test.codes
    codes, fitted = blend.encode(test.sequences)
    layout = blend.layout
    notice(
        f"read as the model's training data was stored, {layout.width} bases wide: "
        f"{fitted.padded:,} sequences padded with N on the {layout.pad}, {fitted.trimmed:,} cut"
        + (f" on the {layout.trim}" if fitted.trimmed else "")
    )
    return codes


def read_sequence_file(path, progress=None):
    """The sequences of a DREAM-style file (read strictly, 110-wide codes) or of a table with a header."""
    from data_prep.encoding import encode_sequences
    from data_prep.submission import SequenceFile, read_test_sequences
    from data_prep.table_format import detect_format, read_table

    if _first_field_is_sequence(path) or detect_format(path) == "dream":
        return read_test_sequences(path, progress=progress)
    table = read_table(path, require_targets=False)
    sequences = list(table.sequences)
    return SequenceFile(sequences, encode_sequences(sequences), None)


def _first_field_is_sequence(path) -> bool:
    """Whether the file's first line starts with a DNA sequence (no header): a DREAM-style sequence list."""
    import gzip

    if not Path(path).is_file():
        return True  # the strict reader names the problem
    with Path(path).open("rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
        stream.seek(0)
        first = stream.readline(1 << 20).split(b"\t")[0].strip()
    return bool(first) and not first.upper().strip(b"ACGTN")


def evaluate_file(
    model: str,
    sequences,
    subsets=None,
    public_leaderboard=None,
    log_to: str | None = None,
    tracking_uri: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
):
    """Challenge scores of the model on a test file with measured expression; logged to `log_to` if given."""
    from data_prep.challenge_subsets import read_subsets
    from data_prep.submission import read_test_sequences
    from model.challenge_scores import challenge_scores

    if public_leaderboard is not None and subsets is None:
        raise ValueError("--public-leaderboard only filters subsets: give --subsets too")
    check_batch_size(batch_size)
    model = resolve_model(model)
    check_store(model, tracking_uri)
    client = _run_client(log_to, tracking_uri) if log_to else None
    reading = _stage(progress, f"read {Path(sequences).name}")
    test = read_test_sequences(sequences, with_expression=True, progress=reading)
    chosen = read_subsets(subsets, len(test.sequences), public_leaderboard) if subsets is not None else None
    predictions = _predict(model, test.codes, tracking_uri, batch_size, progress)
    scores = challenge_scores(test.expression, predictions, chosen)
    if client is not None:
        log_scores(client, log_to, scores)
    return scores


# The splits of a prepared directory `evaluate --data` scores; test by default, the figure to quote.
SPLITS = ("test", "validation")


def evaluate_prepared(
    model: str,
    data_dir,
    split: str = "test",
    log_to: str | None = None,
    tracking_uri: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
):
    """Scores of the model on a split of a prepared directory: its test split unless `split` says validation."""
    from data_prep import PreparedData
    from model.challenge_scores import challenge_scores, task_scores

    if split not in SPLITS:
        raise ValueError(f"--split must be one of {list(SPLITS)}; got {split!r}")
    check_batch_size(batch_size)
    model = resolve_model(model)
    check_store(model, tracking_uri)
    data = PreparedData.load(data_dir)
    if split == "test" and not data.has_test_split:
        raise ValueError(
            f"--data {data_dir} has no test split (prepared with --test-size 0 or by an earlier version); "
            "give --split validation, or prepare it again"
        )
    client = _run_client(log_to, tracking_uri) if log_to else None
    blend = load_blend(model, tracking_uri)
    facts = data.facts
    check_fits_data(blend, facts, model, data_dir)
    rows = data.test_index if split == "test" else data.eval_index
    measured = data.read_test_targets() if split == "test" else data.targets[data.eval_index]
    predictions = blend.predict(data.codes[rows], batch_size, _stage(progress, "predict"))
    scores = task_scores(measured, predictions, facts.tasks) if facts.format == "table" else challenge_scores(measured, predictions)
    if client is not None:
        log_scores(client, log_to, scores, challenge_file=False)
    return scores


def check_fits_data(blend, facts, model: str, data_dir) -> None:
    """Refuse a model whose training data was stored or labelled unlike the prepared `data_dir`."""
    if (blend.layout, blend.tasks) != (facts.layout, facts.tasks):
        raise ValueError(
            f"--model {model} was trained on data stored {blend.layout.width} wide with tasks {list(blend.tasks)}; "
            f"--data {data_dir} is stored {facts.layout.width} wide with tasks {list(facts.tasks)}: "
            "use data prepared like its own"
        )


def log_scores(client, run_id: str, scores, challenge_file: bool = True) -> None:
    """The scores as metrics (finite ones; NaN marks an undefined correlation) and the table as an artifact."""
    import math
    import time

    from mlflow.entities import Metric

    from model.challenge_scores import format_table

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in scores.metrics().items() if math.isfinite(v)]
    client.log_batch(run_id, metrics=metrics)
    client.log_text(run_id, format_table(scores, challenge_file) + "\n", "evaluation/challenge_scores.txt")


def _run_client(run_id: str, tracking_uri: str | None):
    """A client for the store holding `run_id`; refuses a missing run before any work is done."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from search.tracking_store import existing_tracking_store

    tracking_uri = existing_tracking_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"--log-to {run_id}: no such run in the MLflow store {tracking_uri}") from None
    return client


def _predict(model: str, codes, tracking_uri: str | None, batch_size: int, progress: Progress | None):
    return load_blend(model, tracking_uri).predict(codes, batch_size, _stage(progress, "predict"))


def _stage(progress: Progress | None, label: str):
    return progress(label) if progress else None
