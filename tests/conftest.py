"""Fixtures shared by the test modules."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from data_prep import prepare, write_synthetic

DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "dream_demo_train.txt"


@pytest.fixture(scope="session")
def make_synthetic_data(tmp_path_factory):
    """Prepared synthetic data sets, each (n, seed, eval_size) made once per test session."""
    made: dict[tuple, Path] = {}

    def make(n: int, seed: int, eval_size: int) -> Path:
        key = (n, seed, eval_size)
        if key not in made:
            root = tmp_path_factory.mktemp(f"synthetic-{n}-{seed}")
            write_synthetic(root / "synthetic.txt", n, seed=seed)
            prepare(root / "synthetic.txt", root / "prepared", eval_size=eval_size, split_seed=0)
            made[key] = root / "prepared"
        return made[key]

    return make


def interrupt_at_checkpoint(command: list[str], cwd: Path, env: dict, study_dir: Path, checkpoint: str,
                            timeout: float) -> int:
    """Run a CLI driver, press Ctrl-C once a trial under `study_dir` has `checkpoint`; its exit code."""
    driver = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not list(study_dir.glob(f"*/{checkpoint}")):
        assert driver.poll() is None, f"the driver ended before {checkpoint}"
        assert time.time() < deadline, f"no {checkpoint} within {timeout:.0f} s"
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    return driver.wait(timeout=120)
