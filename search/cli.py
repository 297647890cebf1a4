"""`dream-hpo`: parse, call one library function, print.

Heavy imports (TensorFlow, Ray, MLflow) happen inside the subcommands, so `--help`
and `prepare` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from search.settings import (
    BACKENDS,
    CONFIRM_FROM_TRIALS,
    CONFIRM_SEEDS,
    DEFAULT_NUM_TRIALS,
    EMBEDDED,
    QUICK,
    QUICK_SEARCH,
    SCHEDULERS,
    default,
)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dream-hpo"


def _progress_bar(label: str):
    last = None

    def report(done: int, total: int) -> None:
        nonlocal last
        if (done, total) == last:
            return  # readers report the end of a file again after its last block
        last = (done, total)
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def cmd_prepare(args) -> int:
    from data_prep import prepare
    from data_prep.prepare import TableOptions

    table = TableOptions(
        sequence_column=args.sequence_column,
        target_columns=tuple(args.target_column),
        split_column=args.split_column,
        validation_values=tuple(args.validation_values),
        test_values=tuple(args.test_values),
        length=args.length,
        trim=args.trim,
        pad=args.pad,
        window=args.window,
    )
    manifest = prepare(
        args.train,
        args.out,
        eval_size=args.eval_size,
        test_size=args.test_size,
        split_seed=args.split_seed,
        overwrite=args.overwrite,
        progress=_progress_bar(f"prepare {args.train.name}"),
        format=args.format,
        table=table,
    )
    rule = f" (by {manifest['eval_size_rule']})" if args.split_column else _default_splits(args.eval_size, args.test_size)
    print(
        f"prepared {manifest['count']:,} sequences into {args.out}: {manifest['train_size']:,} for training, "
        f"{manifest['eval_size']:,} for validation and {manifest['test_size']:,} for test" + rule
    )
    if manifest["source_format"] == "table":
        print(_table_summary(manifest))
    if not manifest["test_size"]:
        print("no test split (--test-size 0): a study's figures on this data are validation figures")
    return 0


def _table_summary(manifest: dict) -> str:
    """What prepare made of a table: its columns, the stored width, and what it padded and cut."""
    layout = manifest["layout"]
    tasks = ", ".join(manifest["tasks"])
    lines = [
        f"sequences from column {manifest['sequence_column']!r}; "
        f"{'tasks' if len(manifest['tasks']) > 1 else 'task'}: {tasks}",
        f"stored {layout['width']} bases wide: {manifest['padded']:,} padded with N on the {layout['pad']}, "
        f"{manifest['truncated']:,} cut" + (f" on the {layout['trim']}" if manifest["truncated"] else "")
        + f"; models read columns {layout['window_start']}..{layout['window_start'] + layout['window_length']}"
        + f", shifted by {'/'.join(f'{s:+d}' for s in layout['shifts'])} in training",
    ]
    if manifest["ignored_columns"]:
        lines.append(f"ignored columns: {', '.join(manifest['ignored_columns'])}")
    return "\n".join(lines)


def _default_splits(eval_size: int | None, test_size: int | None) -> str:
    """Which held-out split took the default rule, for prepare's summary line."""
    from data_prep.prepare import DEFAULT_EVAL_RULE as rule

    if eval_size is None and test_size is None:
        return f" ({rule} each)"
    if eval_size is None or test_size is None:
        return f" (the {'validation' if eval_size is None else 'test'} split by default: {rule})"
    return ""


def cmd_synth(args) -> int:
    if args.kind == "dream":
        from data_prep.synth import write_synthetic

        write_synthetic(args.out, args.n, seed=args.seed)
        print(f"wrote {args.n:,} synthetic DREAM-format lines to {args.out}")
        return 0
    from data_prep.synth_tables import SHAPES, write_library

    shape = SHAPES[args.kind]
    write_library(args.out, shape, args.n, seed=args.seed)
    tasks = ", ".join(task.name for task in shape.tasks)
    print(f"wrote a {args.kind} table of {args.n:,} sequences to {args.out} (targets: {tasks}; split column: {shape.split_column})")
    return 0


def resolve_data(args, defaults: dict) -> Path:
    """The user's prepared directory, or the embedded synthetic set (made once, then reused)."""
    if args.data is not None:
        return args.data
    from data_prep import ensure_synthetic

    print(f"no --data given: using the embedded synthetic data set ({defaults['n']:,} sequences)")
    return ensure_synthetic(cache_dir(), defaults["n"], seed=0, eval_size=defaults["eval_size"])


def study_config(args, kind: str, data_dir: Path, fixed: dict, **fields):
    """The StudyConfig of a baseline or search command: the options they share plus each one's own."""
    from search.settings import StudyConfig

    return StudyConfig(
        name=study_name(args, kind),
        data_dir=data_dir,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        address=args.address,
        storage_path=args.storage_path,
        shared_storage=args.shared_storage,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        seed=args.seed,
        resume=args.resume,
        fixed=fixed,
        backend=args.backend,
        verbose=args.verbose,
        **fields,
    )


def mlflow_executable() -> str:
    """`mlflow` when it is on PATH, else the one beside this Python (a virtual environment's bin)."""
    import shutil

    beside = Path(sys.executable).with_name("mlflow")
    if shutil.which("mlflow") or not beside.exists():
        return "mlflow"
    return str(beside)


def print_ui_hint(args) -> None:
    from search.tracking_store import resolve_tracking_uri, ui_command

    print(f"\nbrowse the results: {ui_command(resolve_tracking_uri(args.tracking_uri), mlflow_executable())}")


def given(value, default):
    """The flag's value when the user gave one (0 included, so it is checked, not replaced), else the default."""
    return default if value is None else value


def baseline_config(args, data_dir: Path):
    """The baseline command's study: one trial, the seed changed by --set and --config when given."""
    defaults = QUICK if args.quick else EMBEDDED
    fixed = {"seed": args.seed, "epochs": given(args.epochs, defaults["epochs"])}
    if args.quick or args.batch_size is not None:
        fixed["batch_size"] = given(args.batch_size, defaults["batch_size"])
    overrides = {**(load_trial_config(args.config) if args.config else {}), **dict(args.set)}
    for key in ("epochs", "seed", "batch_size"):
        # the command's own flags decide these, whatever the config file trained with
        if key in fixed:
            overrides.pop(key, None)
    return study_config(
        args,
        "baseline",
        data_dir,
        fixed,
        overrides=overrides,
        derived_from=str(args.config.resolve()) if args.config else None,
    )


def search_config(args, data_dir: Path, space: dict):
    """The search command's study: the space, the trials and their scheduling, --set fields fixed for all.

    Values of the space that cannot be built on this data are dropped, each listed once.
    """
    from data_prep.prepare import read_facts
    from search.space import restrict_to_data

    defaults = QUICK_SEARCH if args.quick else EMBEDDED
    if "batch_size" in space and args.batch_size is not None:
        raise ValueError(
            f"--batch-size {args.batch_size}: this study's space searches batch_size; drop --batch-size, "
            "or take batch_size out of the space (--space FILE)"
        )
    fixed = {"epochs": given(args.max_epochs, defaults["epochs"]), "seed": args.seed}
    if "batch_size" not in space and (args.quick or args.batch_size is not None):
        fixed["batch_size"] = given(args.batch_size, defaults["batch_size"])
    fixed.update(dict(args.set))
    facts = read_facts(data_dir)
    if facts is not None:
        space, dropped = restrict_to_data(space, fixed, facts)
        for line in dropped:
            print(f"search space: dropped {line}")
    dream = facts is None or facts.format == "dream"
    return study_config(
        args,
        "search",
        data_dir,
        fixed,
        space=space,
        num_trials=given(args.num_trials, defaults.get("num_trials", DEFAULT_NUM_TRIALS)),
        max_concurrent=given(args.max_concurrent, defaults.get("max_concurrent")),
        scheduler=args.scheduler,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        register_as=args.register_as,
        ensemble_size=args.ensemble_size,
        confirm_seeds=args.confirm_seeds,
        # The --quick demo stays a few minutes: a LegNet epoch costs about five of the baseline's on CPUs.
        # The published recipe reads the DREAM plasmid and whole-number measurements: DREAM data only.
        legnet_reference=not (args.no_legnet_reference or args.quick) and dream,
    )


def cmd_baseline(args) -> int:
    from search.report import trial_table
    from search.study import run_study

    data_dir = resolve_data(args, QUICK if args.quick else EMBEDDED)
    result = run_study(baseline_config(args, data_dir))
    print()
    print("\n".join(trial_table(result)))
    if result.best and result.best.run_id:
        print(f"its model: run {result.best.run_id} (--model for predict, evaluate and explain)")
    print_ui_hint(args)
    return 0 if result.best else 1


def cmd_search(args) -> int:
    from search.report import ensemble_line, seed_lines, test_line, trial_table
    from search.results import write_best_config
    from search.study import run_study

    from search.space import load_space

    space = load_space(args.space)  # refused before the embedded data set is made
    config = search_config(args, resolve_data(args, QUICK_SEARCH if args.quick else EMBEDDED), space)
    explain_out = search_explain_out(args, config.name)
    result = run_study(config)
    print()
    print("\n".join(trial_table(result)))
    if test_line(result):
        print(test_line(result))
    for line in seed_lines(result):
        print(line)
    best = result.best
    if best:
        out = args.best_config or Path(f"{config.name}-best_config.json")
        write_best_config(best, out, result.test_size)
        print(f"\nbest config written to {out}; retrain it with: dream-hpo baseline --config {out}")
    else:
        print("\nno trial finished with a finite eval Pearson and a logged model; see the reasons above", file=sys.stderr)
    if result.registered.best:
        print(f"best model registered as {result.registered.best}")
    if result.ensemble:
        print(ensemble_line(result.ensemble, result.registered.ensemble))
    if best and explain_out is not None:
        explain_best(args, result, explain_out)
    print_ui_hint(args)
    return 0 if best else 1


def search_explain_out(args, name: str) -> Path | None:
    """Where the search's end explains its best model (NAME-explain), checked before the study starts; None with --explain 0."""
    from search.explain import check_out

    if args.explain == 0:
        return None
    if args.explain < 0:
        raise ValueError(f"--explain {args.explain}: give the number of validation sequences to explain, or 0 to skip it")
    try:
        return check_out(Path(f"{name}-explain"), "--explain's folder")
    except ValueError as error:
        raise ValueError(f"{error}; move it, or give --explain 0") from None


def explain_best(args, result, out: Path) -> None:
    """Explain the best trial's model on a sample of validation sequences, logged to the study's parent run."""
    from search.explain import explain

    best = result.registered.best or f"runs:/{result.best.run_id}/model"
    print(f"\nwhat the best model ({best}) learned:")
    explanation = explain(
        best, out, data=result.data_dir, n=args.explain, tracking_uri=args.tracking_uri,
        progress=_progress_bar, log_to=result.parent_run_id,
    )
    print_explanation(explanation)


def cmd_predict(args) -> int:
    from search.predict import predict_file, predict_variants

    if args.variants is not None:
        count = predict_variants(
            args.model,
            args.variants,
            args.out,
            sequences=args.sequences,
            ref_column=args.ref_column,
            alt_column=args.alt_column,
            format=args.format,
            tracking_uri=args.tracking_uri,
            batch_size=args.batch_size,
            progress=_progress_bar,
        )
        print(f"wrote {count:,} variant effects to {args.out}")
        return 0
    if args.ref_column or args.alt_column:
        raise ValueError("--ref-column and --alt-column choose the columns of --variants PAIRS; give --variants")
    if args.sequences is None:
        raise ValueError("the following arguments are required: --sequences (or --variants PAIRS)")
    count = predict_file(
        args.model,
        args.sequences,
        args.out,
        format=args.format,
        tracking_uri=args.tracking_uri,
        batch_size=args.batch_size,
        progress=_progress_bar,
    )
    print(f"wrote {count:,} predictions to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from model.challenge_scores import format_table
    from search.predict import evaluate_file, evaluate_prepared

    if args.data is not None:
        if args.subsets or args.public_leaderboard:
            raise ValueError("--subsets and --public-leaderboard index a DREAM test file: give --sequences, not --data")
        scores = evaluate_prepared(
            args.model,
            args.data,
            split=args.split,
            log_to=args.log_to,
            tracking_uri=args.tracking_uri,
            batch_size=args.batch_size,
            progress=_progress_bar,
        )
        print(f"{args.split} split of {args.data}")
    else:
        scores = evaluate_file(
            args.model,
            args.sequences,
            subsets=args.subsets,
            public_leaderboard=args.public_leaderboard,
            log_to=args.log_to,
            tracking_uri=args.tracking_uri,
            batch_size=args.batch_size,
            progress=_progress_bar,
        )
    print(format_table(scores, challenge_file=args.data is None))
    if args.log_to:
        print(f"logged the scores to MLflow run {args.log_to}")
    return 0


def cmd_explain(args) -> int:
    from search.explain import explain

    explanation = explain(
        args.model,
        args.out,
        data=args.data,
        sequences=args.sequences,
        n=args.n,
        motifs_file=args.motifs,
        tracking_uri=args.tracking_uri,
        batch_size=args.batch_size,
        progress=_progress_bar,
    )
    print_explanation(explanation)
    return 0


def print_explanation(explanation) -> None:
    """What explain found and where it wrote it: a line per motif, the gradient check, the folder and the run."""
    from search.explain import motif_lines

    attributions = explanation.attributions
    if attributions.agreement is not None:
        agreement = ", ".join(f"{r:.2f}" for r in attributions.agreement)
        print(f"gradient x input vs mutagenesis: median per-sequence r over positions {agreement}")
    for note in explanation.notes:
        print(note)
    for line in motif_lines(explanation):
        print(line)
    print(f"wrote {explanation.out}/summary.html, motifs.tsv, attributions.npz and logos/")
    if explanation.logged_to:
        print(f"logged under {explanation.artifact_path}/ in MLflow run {explanation.logged_to}")


def study_name(args, kind: str) -> str:
    """The user's --name, or a fresh time-stamped one (a resume must name its study)."""
    if args.name:
        return args.name
    if args.resume:
        raise ValueError("--resume needs the --name of the study to continue")
    import time

    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_trial_config(path: Path) -> dict:
    """A config file written by `dream-hpo search` (its best trial), to retrain it."""
    import json

    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--config {path}: cannot read a trial config: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path}: expected a JSON object of config fields, got {type(config).__name__}")
    from search.results import FIGURES_KEY

    config.pop("data_dir", None)
    config.pop(FIGURES_KEY, None)
    return config


def window_columns(text: str) -> tuple[int, int]:
    """`--window START:END` as two integers."""
    start, colon, end = text.partition(":")
    try:
        if not colon:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:END (two whole numbers, e.g. 0:200)") from None


def config_setting(text: str) -> tuple[str, object]:
    """`--set KEY=VALUE`: a config field (model_family, a family's, an ingredient's, training's), the value read as
    YAML (1e-3, false, adam)."""
    from search.space import read_yaml

    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key = key.strip()
    from model.config import flat_fields

    allowed = flat_fields()
    if key not in allowed:
        raise argparse.ArgumentTypeError(f"{key!r} is not a config field; allowed: {', '.join(allowed)}")
    if key in FIELDS_WITH_FLAGS:
        raise argparse.ArgumentTypeError(f"{key!r} has its own flag: use {FIELDS_WITH_FLAGS[key]} instead of --set")
    return key, read_yaml(value)


# Config fields the study commands set with flags of their own; `--set` would contradict them.
FIELDS_WITH_FLAGS = {"epochs": "--epochs (baseline) or --max-epochs (search)", "seed": "--seed", "batch_size": "--batch-size"}


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="prepared data directory (default: embedded synthetic set)")
    parser.add_argument("--experiment", default=default("experiment"), help="MLflow experiment name (default: %(default)s)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite:///mlflow.db in the working directory)",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to join: 'auto', the head's HOST:PORT or ray://HOST:PORT (default: start a local Ray)",
    )
    parser.add_argument(
        "--storage-path",
        help="where Ray Tune keeps checkpoints and results; on a multi-node cluster an s3:// or gs:// "
        "URI, or a shared mount with --shared-storage (default: ./ray_results)",
    )
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        help="the --storage-path is a file system mounted at the same path on every node (NFS, EFS, Lustre)",
    )
    parser.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial; fractions pack trials on one GPU (default: 1 when the cluster has GPUs or its "
        "autoscaler can start GPU workers, else 0)",
    )
    parser.add_argument("--cpus-per-trial", type=float, default=default("cpus_per_trial"), help="CPUs per trial (default: %(default)s)")
    parser.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=default("backend"),
        help="Keras backend the trials train on (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=default("seed"), help="training seed (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the study of this --name after a crash")
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray Tune's own reporter and the workers' output (TensorFlow, CUDA)"
    )
    parser.add_argument(
        "--set",
        type=config_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix any model or training config field for every trial, e.g. --set optimizer=adamw "
        "--set jit_compile=false (repeatable)",
    )


def add_model_arguments(
    parser: argparse.ArgumentParser, sequences=None, sequences_help: str = "DREAM test file: SEQUENCE[<TAB>EXPRESSION] per line"
) -> None:
    """--model, --sequences (on `sequences`, a group, when it has an alternative), --tracking-uri, --batch-size."""
    parser.add_argument(
        "--model",
        required=True,
        help="an MLflow run id, models:/NAME/VERSION (e.g. a search's registered best) or a .keras file",
    )
    (sequences or parser).add_argument(
        "--sequences", type=Path, required=sequences is None, help=sequences_help
    )
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db in the working directory)"
    )
    from model.inference import DEFAULT_BATCH_SIZE

    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="sequences per batch (default: %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    from search.explain import DEFAULT_SEQUENCES

    parser = argparse.ArgumentParser(
        prog="dream-hpo",
        description="Hyperparameter search for the DREAM 2022 mini-Enformer on Ray Tune, Optuna and MLflow.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser(
        "prepare",
        help="validate a DREAM training file or a sequence table and write compact training arrays",
        description="Parse a DREAM file (SEQUENCE<TAB>EXPRESSION lines, no header) or a table with a header "
        "(tab- or comma-separated; plain or gzipped) into uint8 codes, float32 targets and fixed validation "
        "and test splits, with a JSON manifest. The format is detected from the first line.",
    )
    prepare.add_argument("train", type=Path, help="DREAM training file or a table with a header (.gz allowed)")
    prepare.add_argument("--format", choices=["dream", "table"], help="the input's format (default: detected)")
    table = prepare.add_argument_group("tables", "Reading a table with a header line (not the DREAM format).")
    table.add_argument(
        "--sequence-column", metavar="NAME", help="the DNA column (default: the one column of A/C/G/T/N strings)"
    )
    table.add_argument(
        "--target-column",
        metavar="NAME",
        action="append",
        default=[],
        help="a measured column to predict; repeat it for several tasks, in this order "
        "(default: the one other numeric column)",
    )
    table.add_argument(
        "--split-column",
        metavar="NAME",
        help="the table's own split: train/val(idation)/test, or folds mapped by --validation-values and --test-values",
    )
    table.add_argument(
        "--validation-values", metavar="VALUE", nargs="+", default=[], help="split-column values held out for validation"
    )
    table.add_argument("--test-values", metavar="VALUE", nargs="+", default=[], help="split-column values held out for test")
    table.add_argument(
        "--length", type=int, metavar="N", help="stored width in bases (default: the longest sequence; nothing is cut)"
    )
    table.add_argument(
        "--trim",
        choices=["left", "right", "both"],
        help="with --length: cut longer sequences on this side (without it they are refused)",
    )
    table.add_argument(
        "--pad", choices=["left", "right", "both"], default="right", help="pad shorter sequences with N on this side (default: %(default)s)"
    )
    table.add_argument(
        "--window",
        type=window_columns,
        metavar="START:END",
        help="the columns models read, 0-based, END excluded (default: the whole width)",
    )
    prepare.add_argument(
        "--out", type=Path, required=True, help="output directory: new, empty, or a prepared one with --overwrite"
    )
    prepare.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier prepared --out (only a manifest and its arrays; anything else is never deleted)",
    )
    prepare.add_argument(
        "--eval-size",
        type=int,
        help="validation sequences, on which a study makes every choice (default: the smaller of 10,000 and 10%% "
        "of the sequences)",
    )
    prepare.add_argument(
        "--test-size",
        type=int,
        help="test sequences, scored once when a study has chosen (default: the smaller of 10,000 and 10%%, "
        "as for --eval-size; 0: no test split, for scoring on your own test file)",
    )
    prepare.add_argument("--split-seed", type=int, default=0, help="seed of the splits (default: %(default)s)")
    prepare.set_defaults(handler=cmd_prepare)

    synth = commands.add_parser(
        "synth",
        help="write a synthetic DREAM-format file or library table from a planted regulatory grammar",
        description="--kind dream: random 80 bp promoters between the real constant flanks, with expression "
        "from documented yeast motif effects plus noise (data_prep/synth.py). --kind lentimpra: a TSV of "
        "230 bp enhancers with adapters, a signed activity and a fold column; --kind starr: a CSV of 249 bp "
        "enhancers with two signed activities and a Train/Val/Test column (data_prep/synth_tables.py).",
    )
    synth.add_argument(
        "--kind", choices=("dream", "lentimpra", "starr"), default="dream", help="what to write (default: %(default)s)"
    )
    synth.add_argument("--n", type=int, required=True, help="number of sequences")
    synth.add_argument("--out", type=Path, required=True, help="output file (a table ending in .gz is gzipped)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    synth.set_defaults(handler=cmd_synth)

    baseline = commands.add_parser(
        "baseline",
        help="train the seed's 192/5/4/4 baseline as one Ray Tune trial, logged to MLflow",
        description="Train the seed's configuration (192 channels, stem width 5, tower width 4, 4 "
        "transformer layers, SGD lr 0.01) through the same trainable a search uses.",
    )
    add_cluster_arguments(baseline)
    baseline.add_argument("--epochs", type=int, help=f"epochs (default: {EMBEDDED['epochs']}, quick: {QUICK['epochs']})")
    baseline.add_argument("--batch-size", type=int, help="batch size (default: the seed's 10,000; quick: 256)")
    baseline.add_argument("--config", type=Path, help="a trial config JSON (e.g. a search's best_config.json)")
    baseline.add_argument("--name", help="study name for Ray Tune and MLflow (default: baseline-DATE-TIME)")
    baseline.add_argument(
        "--quick",
        action="store_true",
        help=f"a small demo: {QUICK['n']:,} synthetic sequences, {QUICK['epochs']} epochs, batch {QUICK['batch_size']}",
    )
    baseline.set_defaults(handler=cmd_baseline)

    search = commands.add_parser(
        "search",
        help="Optuna trials around the baseline on Ray Tune, each logged to MLflow",
        description="Search filter count, conv widths, transformer depth and learning rate around the "
        "seed's 192/5/4/4 (always the first trial), with Optuna's TPE sampler and ASHA early stopping.",
    )
    add_cluster_arguments(search)
    search.add_argument(
        "--space",
        help="'extended' (adds optimizer, schedule, weight decay, batch size, dropouts, reverse-complement "
        "averaging), 'families' (the mini-Enformer or LegNet, each with its own knobs, and the winners' "
        "ingredients for either) or a search space file (.yaml or .toml); default: the seed's five dimensions",
    )
    search.add_argument(
        "--no-legnet-reference",
        action="store_true",
        help="skip the reference trial that trains the challenge winner, LegNet, with its published recipe "
        "beside the baseline (it is not counted in --num-trials and is never stopped early; --quick skips it)",
    )
    search.add_argument(
        "--num-trials", type=int,
        help=f"trials, the baseline included (default: {DEFAULT_NUM_TRIALS}; quick: {QUICK_SEARCH['num_trials']})"
    )
    search.add_argument("--max-concurrent", type=int, help="trials running at once (default: as resources allow)")
    search.add_argument(
        "--scheduler", choices=list(SCHEDULERS), default=default("scheduler"), help="early stopping (default: %(default)s)"
    )
    search.add_argument(
        "--grace-period", type=int, default=default("grace_period"),
        help="ASHA: epochs before a trial may stop (default: %(default)s)",
    )
    search.add_argument(
        "--reduction-factor", type=int, default=default("reduction_factor"),
        help="ASHA: keep 1/F at each rung (default: %(default)s)",
    )
    search.add_argument("--max-epochs", type=int, help=f"epochs per trial (default: {EMBEDDED['epochs']}, quick: {QUICK_SEARCH['epochs']})")
    search.add_argument("--batch-size", type=int, help="batch size unless searched (default: 10,000; quick: 256)")
    search.add_argument("--name", help="study name (default: search-DATE-TIME); --resume needs it")
    search.add_argument(
        "--register-as", default=default("register_as"), help="Model Registry name for the best model (default: %(default)s)"
    )
    search.add_argument(
        "--ensemble-size",
        type=int,
        default=default("ensemble_size"),
        help="blend finished trials and the k-mer reference by greedy selection on validation: K picks with "
        "replacement, weights by picks; scored and registered as NAME-ensemble "
        "(default: %(default)s; 0 or 1 turns it off). The single best stays the registered default",
    )
    search.add_argument(
        "--confirm-seeds",
        type=int,
        metavar="K",
        help="once the search has chosen, train the best and the baseline configs with K more seeds and report "
        f"each seed's test r, mean and sd (default: {CONFIRM_SEEDS} for {CONFIRM_FROM_TRIALS} trials or more, else 0)",
    )
    search.add_argument(
        "--explain",
        type=int,
        default=DEFAULT_SEQUENCES,
        metavar="N",
        help="explain the best model on N validation sequences when the search ends: motifs and logos in "
        "NAME-explain/ and the parent run's explain/ (default: %(default)s; 0 turns it off)",
    )
    search.add_argument("--best-config", type=Path, help="where to write the best config (default: NAME-best_config.json)")
    search.add_argument(
        "--quick",
        action="store_true",
        help=f"a small demo: {QUICK_SEARCH['num_trials']} trials on {QUICK_SEARCH['n']:,} synthetic sequences, "
        f"{QUICK_SEARCH['epochs']} epochs at most, batch {QUICK_SEARCH['batch_size']}",
    )
    search.set_defaults(handler=cmd_search)

    predict = commands.add_parser(
        "predict",
        help="predict a DREAM test file and write the challenge's submission file",
        description="Encode each sequence exactly as in training (110-wide, unshifted 85 bp window, N as "
        "zeros), predict in batches and write the final-phase TSV (sequence<TAB>prediction, input order) "
        "or the leaderboard JSON ({\"index\": prediction}).",
    )
    predicted = predict.add_argument_group("what to predict (--sequences, --variants PAIRS, or both)")
    add_model_arguments(predict, sequences=predicted)
    predict.add_argument(
        "--out", type=Path, required=True,
        help="file to write (replaced atomically): the submission, or with --variants the variant effects",
    )
    predict.add_argument(
        "--format", choices=["tsv", "json"], help="submission format (default: json for a .json --out, else tsv)"
    )
    predicted.add_argument(
        "--variants",
        type=Path,
        metavar="PAIRS",
        help="a table of ref and alt sequences (header; tab or comma; plain or .gz; other columns carried), or with "
        "--sequences a challenge subset CSV of its lines (alt_pos, ref_pos): write ref_TASK, alt_TASK and "
        "delta_TASK (alt - ref) per pair, not a submission",
    )
    predicted.add_argument(
        "--ref-column",
        metavar="NAME",
        help="with --variants PAIRS: the reference sequences (default: the column named ref, any case; else the "
        "first of the table's two sequence columns)",
    )
    predicted.add_argument(
        "--alt-column",
        metavar="NAME",
        help="with --variants PAIRS: the variant sequences (default: the column named alt, any case; else the "
        "second of the two)",
    )
    predict.set_defaults(handler=cmd_predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a model on a test file with measured expression, or on a prepared directory's test split",
        description="Pearson and Spearman overall and, with the organisers' test_subset_ids, per subset "
        "(paired subsets on alt - ref differences) and the weighted PearsonScore and SpearmanScore. "
        "With --data, on the prepared directory's test split (the sequences no search chose on).",
    )
    from search.predict import SPLITS

    source = evaluate.add_mutually_exclusive_group(required=True)
    add_model_arguments(evaluate, sequences=source)
    source.add_argument("--data", type=Path, help="a directory from `dream-hpo prepare`: score its --split")
    evaluate.add_argument(
        "--split", choices=SPLITS, default="test", help="with --data: which split to score (default: %(default)s)"
    )
    evaluate.add_argument("--subsets", type=Path, help="the challenge's test_subset_ids folder (CSV index files)")
    evaluate.add_argument(
        "--public-leaderboard",
        type=Path,
        help="the challenge's public_leaderboard_ids folder: leave its sequences out, as the final scores did",
    )
    evaluate.add_argument("--log-to", metavar="RUN_ID", help="log the scores as metrics of this MLflow run")
    evaluate.set_defaults(handler=cmd_evaluate)

    explain = commands.add_parser(
        "explain",
        help="what a model learned: mutagenesis and gradient maps, TF-MoDISco motifs named by TOMTOM, logos",
        description="In-silico mutagenesis of every base of each sequence's window (through the model's own "
        "windowing, strand averaging and ensemble weights), gradient x input checked against it, TF-MoDISco "
        "motifs in the mutagenesis maps named by TOMTOM against --motifs (default: the planted synthetic "
        "grammar; for DREAM data five real yeast motifs), and logos. Writes --out and logs it to the model's "
        "MLflow run under explain/.",
    )
    source = explain.add_mutually_exclusive_group(required=True)
    add_model_arguments(explain, sequences=source, sequences_help="sequences to explain: a DREAM-style file or a table with a header")
    source.add_argument("--data", type=Path, help="a directory from `dream-hpo prepare`: explain a sample of its validation split")
    explain.add_argument("--out", type=Path, required=True, help="output directory: new or empty")
    explain.add_argument(
        "--n", type=int, default=DEFAULT_SEQUENCES,
        help="sequences to explain: a seeded sample of --data's validation split, or --sequences' first N (default: %(default)s)",
    )
    explain.add_argument("--motifs", type=Path, help="MEME-format motif file to name the patterns by (e.g. a JASPAR export)")
    explain.set_defaults(handler=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as error:  # bad input and I/O failures (disk full, read-only): one line
        print(f"dream-hpo {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a failure deep inside Keras or MLflow: its cause in one line, not its dump
        if args.command not in ("predict", "evaluate", "explain"):
            raise
        from search.predict import cause

        print(f"dream-hpo {args.command}: error: {type(error).__name__}: {cause(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interruption:
        print(f"dream-hpo {args.command}: interrupted {interruption}".rstrip(), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
