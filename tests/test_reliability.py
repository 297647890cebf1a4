"""Faults a user meets: full and read-only disks, no permission, interrupted commands, resumed studies.

Disks are real: a tmpfs of a few pages, or one remounted read-only, inside a
private mount namespace (`unshare`), so nothing is mounted outside the test and
the mount vanishes with it. Permission is denied by a 0555 directory; as root
(which ignores it) the command runs under an unprivileged user namespace.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import interrupt_at_checkpoint
from data_prep import check_prepared, prepare

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
CLI = f"{shlex.quote(sys.executable)} -m search.cli"
SEQUENCE = b"TGCATTTTTTTCACATCACGTTACCCGGATATAAAGCTAGCATCGATCGGATCCTTACCCGTTTTTTTTTATGCATGCAACGTTAGCGGTTACGGCTGTT"


def training_file(path: Path, lines: int) -> Path:
    """A valid DREAM file of `lines` lines (one sequence, varied expression), written in one go."""
    values = np.arange(lines) % 17
    path.write_bytes(b"".join(SEQUENCE + b"\t%d\n" % value for value in values))
    return path


def tree(root: Path) -> dict[str, str]:
    """Every entry under `root`, files with their sha256: what a test compares to say nothing changed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def can_unshare(*flags: str) -> bool:
    try:
        return subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


needs_mounts = pytest.mark.skipif(not can_unshare("-rm"), reason="no user and mount namespaces (unshare -rm)")


def in_mount_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell script as root of a private mount namespace: its mounts end with it."""
    return subprocess.run(
        ["unshare", "-rm", "/bin/sh", "-c", script], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def error_lines(stderr: str) -> list[str]:
    """dream-hpo's own messages and any traceback (TensorFlow's start-up noise left out)."""
    return [line for line in stderr.splitlines() if line.startswith(("dream-hpo", "Traceback"))]


# --- prepare on a full, a read-only and a forbidden disk ---------------------------------------


@needs_mounts
def test_prepare_on_a_full_disk_fails_in_one_line_and_keeps_the_earlier_output(tmp_path):
    small = training_file(tmp_path / "small.txt", 50)
    big = training_file(tmp_path / "big.txt", 20_000)  # 2.2 MB of codes for a 1 MB disk
    disk = tmp_path / "disk"
    disk.mkdir()
    result = in_mount_namespace(
        f"""set -u
        mount -t tmpfs -o size=1m tmpfs {disk} || exit 99
        {CLI} prepare {small} --out {disk}/prepared --eval-size 5 > /dev/null 2>&1 || exit 98
        sha256sum {disk}/prepared/* > before.sha256
        {CLI} prepare {big} --out {disk}/new --eval-size 5; echo "new rc=$?"
        {CLI} prepare {big} --out {disk}/prepared --eval-size 5 --overwrite; echo "overwrite rc=$?"
        echo "left: $(ls -A {disk})"
        sha256sum --check --quiet before.sha256 && echo "earlier output intact"
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "new rc=2", "overwrite rc=2", "left: prepared", "earlier output intact"
    ], result.stdout + result.stderr
    assert error_lines(result.stderr) == [
        f"dream-hpo prepare: error: {disk}/new: cannot write the prepared data: No space left on device; "
        "the partial output was removed",
        f"dream-hpo prepare: error: {disk}/prepared: cannot write the prepared data: No space left on device; "
        "the partial output was removed",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before.sha256", "big.txt", "disk", "small.txt"]


@needs_mounts
def test_prepare_on_a_read_only_disk_fails_in_one_line_before_reading(tmp_path):
    small = training_file(tmp_path / "small.txt", 50)
    disk = tmp_path / "disk"
    disk.mkdir()
    result = in_mount_namespace(
        f"""set -u
        mount -t tmpfs -o size=1m tmpfs {disk} || exit 99
        {CLI} prepare {small} --out {disk}/prepared --eval-size 5 > /dev/null 2>&1 || exit 98
        sha256sum {disk}/prepared/* > before.sha256
        mount -o remount,ro {disk} || exit 97
        {CLI} prepare {small} --out {disk}/new/nested --eval-size 5; echo "new rc=$?"
        {CLI} prepare {small} --out {disk}/prepared --eval-size 5 --overwrite; echo "overwrite rc=$?"
        echo "left: $(ls -A {disk})"
        sha256sum --check --quiet before.sha256 && echo "earlier output intact"
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["new rc=2", "overwrite rc=2", "left: prepared", "earlier output intact"]
    # No progress bar: the output directory is tried before the file is read.
    assert "prepare small.txt [" not in result.stderr
    assert error_lines(result.stderr) == [
        f"dream-hpo prepare: error: {disk}/new/nested: cannot write the prepared data: Read-only file system; "
        "the partial output was removed",
        f"dream-hpo prepare: error: {disk}/prepared: cannot write the prepared data: Read-only file system; "
        "the partial output was removed",
    ]


def unprivileged() -> list[str]:
    """A prefix that runs a command without root's power to ignore permissions."""
    if os.geteuid() != 0:
        return []
    if not can_unshare("-U", "--map-user=1000", "--map-group=1000"):
        pytest.skip("running as root without user namespaces: cannot test a permission error")
    return ["unshare", "-U", "--map-user=1000", "--map-group=1000"]


def test_prepare_without_permission_fails_in_one_line_and_creates_nothing(tmp_path):
    small = training_file(tmp_path / "small.txt", 50)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for out in (locked / "prepared", locked / "a" / "b" / "prepared"):
            result = subprocess.run(
                [*unprivileged(), sys.executable, "-m", "search.cli", "prepare", str(small), "--out", str(out)],
                env=ENV, capture_output=True, text=True, timeout=120,
            )
            assert result.returncode == 2
            assert error_lines(result.stderr) == [
                f"dream-hpo prepare: error: {out}: cannot write the prepared data: Permission denied; "
                "the partial output was removed"
            ]
            assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@needs_mounts
def test_predict_on_a_full_disk_keeps_the_old_submission(tmp_path):
    """The submission is written beside and renamed: a full disk leaves the old one and no partial file."""
    from model import ModelConfig, build_model, save_model

    model = save_model(
        build_model(ModelConfig(channels=48, transformer_layers=1, num_heads=8)), tmp_path / "tiny.keras"
    )
    test = tmp_path / "test.txt"
    test.write_bytes(SEQUENCE * 3 + b"\n" + (SEQUENCE + b"\n") * 200)  # about 25 kB of TSV for a 16 kB disk
    disk = tmp_path / "disk"
    disk.mkdir()
    result = in_mount_namespace(
        f"""set -u
        mount -t tmpfs -o size=16k tmpfs {disk} || exit 99
        echo "previous submission" > {disk}/submission.tsv
        {CLI} predict --model {model} --sequences {test} --out {disk}/submission.tsv; echo "rc=$?"
        echo "left: $(ls -A {disk})"
        cat {disk}/submission.tsv
        """,
        tmp_path,
    )
    assert result.stdout.splitlines() == ["rc=2", "left: submission.tsv", "previous submission"], result.stderr
    assert error_lines(result.stderr) == [
        f"dream-hpo predict: error: {disk}/submission.tsv: cannot write it: No space left on device; "
        "nothing was written"
    ]


# --- interrupted prepare --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["Ctrl-C", "killed"])
def test_an_interrupted_prepare_leaves_the_earlier_output_intact(tmp_path, sig):
    """Ctrl-C removes the scratch directory; a kill cannot, and leaves only that hidden directory."""
    small = training_file(tmp_path / "small.txt", 50)
    big = training_file(tmp_path / "big.txt", 1_000_000)  # six 16 MB blocks: time to interrupt
    prepare(small, tmp_path / "prepared", eval_size=5)
    before = tree(tmp_path)
    command = [sys.executable, "-m", "search.cli", "prepare", str(big), "--out", str(tmp_path / "prepared"), "--overwrite"]
    # As from a terminal: a suite started in the background (nohup, `&`) ignores SIGINT, and
    # Python leaves an inherited "ignore" in place, so Ctrl-C would never reach prepare.
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    progress = b""
    while b"prepare big.txt [" not in progress:  # the first block is read, the scratch directory filled
        chunk = os.read(process.stderr.fileno(), 200)
        assert chunk, f"prepare ended before its first progress report: {process.wait()}"
        progress += chunk
    process.send_signal(sig)
    returncode = process.wait(timeout=60)
    stderr = (progress + process.stderr.read()).decode()
    process.stdout.close()
    process.stderr.close()

    after = tree(tmp_path)
    scratch = {name for name in after if name.startswith(".prepared.")}
    assert {k: v for k, v in after.items() if k.split("/")[0] not in scratch} == before
    assert check_prepared(tmp_path / "prepared")["count"] == 50
    if sig == signal.SIGINT:
        assert returncode == 130 and "dream-hpo prepare: interrupted" in stderr and "Traceback" not in stderr
        assert scratch == set()
    else:
        assert returncode == -signal.SIGKILL
        [directory] = {name.split("/")[0] for name in scratch}
        assert directory.startswith(".prepared.") and directory.endswith(".tmp")


# --- a resumed study repeats the uninterrupted one ------------------------------------------------


@pytest.mark.slow
def test_a_baseline_interrupted_after_epoch_2_logs_the_same_metrics_as_an_uninterrupted_one(
    tmp_path, make_synthetic_data
):
    """Weights, optimizer state, dropout RNG and the epoch's shuffle all survive the checkpoint."""
    data = make_synthetic_data(1_200, seed=3, eval_size=300)
    epochs = 5

    def command(name: str) -> list[str]:
        return [
            sys.executable, "-m", "search.cli", "baseline", "--data", str(data), "--name", name,
            "--experiment", "tests", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage-path", str(tmp_path / "ray_results"), "--gpus-per-trial", "0",
            "--epochs", str(epochs), "--batch-size", "16", "--set", "jit_compile=false",
            "--set", "channels=48", "--set", "transformer_layers=1",
        ]

    assert subprocess.run(command("straight"), cwd=tmp_path, env=ENV, timeout=900, capture_output=True).returncode == 0

    study_dir = tmp_path / "ray_results" / "resumed"
    assert interrupt_at_checkpoint(command("resumed"), tmp_path, ENV, study_dir, "checkpoint_000001", 300) != 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tests").experiment_id

    def history(study: str) -> dict[str, list[tuple[int, float]]]:
        [run] = client.search_runs([experiment], filter_string=f"tags.study = '{study}'")
        return {
            metric: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
            for metric in ("train_loss", "eval_pearson", "eval_spearman", "eval_mse", "eval_poisson")
        }

    interrupted_at = len(history("resumed")["eval_pearson"])
    assert 2 <= interrupted_at < epochs

    resumed = subprocess.run(command("resumed") + ["--resume"], cwd=tmp_path, env=ENV, timeout=900, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    straight, again = history("straight"), history("resumed")
    for metric, values in straight.items():
        assert [step for step, _ in again[metric]] == list(range(1, epochs + 1)), metric
        np.testing.assert_allclose(
            [value for _, value in again[metric]], [value for _, value in values], rtol=1e-6, err_msg=metric
        )
