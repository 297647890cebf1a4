"""The Ray side of a study's process: connecting, quieting Ray's own output, Ctrl-C, and reading Ray's trials.

Nothing here knows MLflow or Keras; the scheduler and the console use the trial helpers
without pulling in either.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from search.settings import StudyError


def connect_ray(address: str | None, backend: str = "tensorflow", verbose: bool = False) -> None:
    """A local Ray on this machine by default; `auto` or `ray://...` joins a cluster.

    Trials run Keras on `backend`: Ray starts every worker with KERAS_BACKEND set.
    A local Ray uses a loopback node address and Ray's token authentication (see the
    README's Reliability section for the ports it opens). Without `verbose`, the
    workers' output (TensorFlow, CUDA, absl) stays in Ray's log files.
    """
    import ray

    os.environ["KERAS_BACKEND"] = backend
    if ray.is_initialized():
        running = (ray.get_runtime_context().runtime_env.get("env_vars") or {}).get("KERAS_BACKEND", "tensorflow")
        if running != backend:
            raise StudyError(
                f"--backend {backend}: Ray is already connected with KERAS_BACKEND={running}; a {backend} "
                "study needs a new process (or ray.shutdown() first)"
            )
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    env_vars = {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "GRPC_VERBOSITY": "ERROR",
        # Ray workers must import this project whether it is installed or run from a checkout.
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "KERAS_BACKEND": backend,
        # JAX takes 75% of a GPU at start unless told not to; packed trials share the card.
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    local = {} if address else {"_node_ip_address": LOCAL_NODE_IP}
    ray.init(
        address=address,
        runtime_env={"env_vars": env_vars},
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        **local,
    )


# Ray turns 127.0.0.1 into the machine's network address; the rest of 127/8 stays loopback.
LOCAL_NODE_IP = "127.0.0.2"


def quiet_driver() -> None:
    """Ray Tune's and MLflow's info messages (result paths, TensorBoard hints, download bars) are for --verbose."""
    import warnings

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    for name in ("ray", "ray.tune", "ray.train", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="optuna")
    warnings.filterwarnings("ignore", message=".*is experimental.*")


class GracefulInterrupt:
    """Ctrl-C asks Ray Tune to stop gracefully (saving its state), and is remembered.

    Tune swallows Ctrl-C and returns as if it had finished; here Ctrl-C instead
    sends Tune the SIGUSR1 that stops it the same way, and the command can then
    exit non-zero and tell the user to resume. A second Ctrl-C interrupts at once.
    """

    def __enter__(self):
        self.happened = False
        self.previous = None
        self.tune_setting = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        if threading.current_thread() is threading.main_thread():
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self.previous = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def _interrupt(self, signum, frame):
        self.happened = True
        signal.signal(signal.SIGINT, self.previous)
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            if self.tune_setting is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self.tune_setting
        return False


def trial_number(trial, searched: bool) -> int:
    """A trial's 1-based creation order; the baseline is 1.

    Ray numbers a search algorithm's trials from 1 and a plain one-trial study's from 0.
    """
    return int(trial.experiment_tag.split("_", 1)[0]) + (0 if searched else 1)


def trial_config(trial) -> dict:
    """A Ray trial's (or trial result's) config fields, without the data directory every trial shares."""
    return {k: v for k, v in (trial.config or {}).items() if k != "data_dir"}


def error_summary(trial) -> str:
    """The last line of a failed trial's error (the exception itself), and where the full trace is."""
    text = ""
    if trial.error_file and Path(trial.error_file).exists():
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
        text = lines[-1].strip() if lines else ""
    return f"{text or 'see the Ray logs'} (trace: {trial.error_file})"


