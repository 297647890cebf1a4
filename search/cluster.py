"""Where a study keeps its checkpoints when its trials may run on other nodes.

Ray Tune writes each trial's checkpoints from the node that runs the trial straight to
the storage path, and restores a trial from there wherever it restarts; it does not copy
files between nodes. A plain local path therefore only works while every trial runs on
the driver's node. On a cluster, a trial moved off a lost worker, or a resumed study,
would find no checkpoint, and the driver would not see what workers wrote.

Shared storage is declared in one of two ways:
- a URI that every node reaches by itself: `s3://bucket/prefix`, `gs://bucket/prefix`
  (any pyarrow file system scheme except `file://`);
- a file-system path mounted at the same place on every node (NFS, EFS, Lustre) plus
  `shared_storage=True` (`--shared-storage` on the command line). Ray cannot tell an NFS
  mount from a local disk, so the user says so.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import yaml

# `ray up` leaves the launcher config, node types included, here on the head; Ray Tune reads
# the same file to tell a cluster from a laptop (ray.tune.execution.cluster_info).
AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml")

SHARED_STORAGE_HELP = (
    "pass --storage-path s3://BUCKET/PREFIX (or gs://...), or a path mounted at the same "
    "place on every node (NFS, EFS, Lustre) together with --shared-storage"
)


class StorageError(ValueError):
    """A storage path that the cluster's nodes cannot all reach; the message says what to pass."""


def is_remote_uri(storage_path: str) -> bool:
    """s3://, gs://, abfs://...: every node opens it itself. file:// and plain paths are local."""
    scheme = urlparse(storage_path).scheme
    # A one-letter scheme is a Windows drive (C:\...), not a URI.
    return len(scheme) > 1 and scheme != "file"


def _fits(node_resources: dict, trial_resources: dict) -> bool:
    return all(node_resources.get(name, 0.0) >= amount for name, amount in trial_resources.items() if amount > 0)


def storage_problem(
    storage_path: str, shared: bool, nodes: list[dict], driver_node_id: str, trial_resources: dict
) -> str | None:
    """Why trials on this cluster cannot use this storage path, or None when they can.

    `nodes` is `ray.nodes()`; `trial_resources` is what one trial asks for, e.g.
    {"CPU": 1, "GPU": 1}. A local path is refused when another node is alive, and also
    when the driver's node cannot run a trial at all (a head with no GPUs or 0 CPUs): then
    every trial runs on workers that the autoscaler has not started yet.
    """
    if shared or is_remote_uri(storage_path):
        return None
    alive = [node for node in nodes if node.get("Alive")]
    others = [node for node in alive if node["NodeID"] != driver_node_id]
    driver_node = next((node for node in alive if node["NodeID"] == driver_node_id), None)
    if others:
        reason = f"the Ray cluster has {len(alive)} alive nodes"
    elif driver_node is not None and not _fits(driver_node.get("Resources", {}), trial_resources):
        wanted = ", ".join(f"{amount:g} {name}" for name, amount in trial_resources.items() if amount > 0)
        reason = f"this node cannot run a trial ({wanted}), so trials will run on worker nodes the autoscaler adds"
    else:
        return None
    return (
        f"storage path {storage_path!r} is local to one node, but {reason}; trials write "
        f"checkpoints on the node that runs them, so a trial restarted elsewhere or a resumed "
        f"study would not find them. {SHARED_STORAGE_HELP[0].upper()}{SHARED_STORAGE_HELP[1:]}."
    )


def check_storage(storage_path: str, shared: bool, trial_resources: dict) -> None:
    """Refuse, before any trial starts, a storage path that not every trial's node can reach."""
    import ray

    problem = storage_problem(
        storage_path, shared, ray.nodes(), ray.get_runtime_context().get_node_id(), trial_resources
    )
    if problem:
        raise StorageError(problem)


def default_gpus_per_trial(cluster_resources: dict, autoscaler_config: Path = AUTOSCALER_CONFIG) -> float:
    """1 GPU per trial when the cluster has GPUs or its autoscaler can start GPU workers, else 0.

    `cluster_resources` is `ray.cluster_resources()`. A `ray up` cluster has no GPU until a
    trial asks for one, so its resources alone would make every trial train on CPUs; the
    node types in the autoscaler's config say that GPU workers will come.
    """
    return 1.0 if cluster_resources.get("GPU", 0) > 0 or autoscaler_starts_gpus(autoscaler_config) else 0.0


def autoscaler_starts_gpus(autoscaler_config: Path = AUTOSCALER_CONFIG) -> bool:
    """Whether this cluster's autoscaler config declares GPU worker types it may start."""
    path = Path(autoscaler_config).expanduser()
    if not path.is_file():
        return False
    config = yaml.safe_load(path.read_text()) or {}
    head = config.get("head_node_type")
    workers = [t for name, t in (config.get("available_node_types") or {}).items() if name != head]
    return any((t.get("resources") or {}).get("GPU", 0) > 0 and t.get("max_workers", 0) > 0 for t in workers)


def warn_if_no_gpus(gpus_per_trial: float, cluster_resources: dict) -> None:
    """Trials that ask for GPUs where none is up: say whether the autoscaler will add some."""
    import sys

    if gpus_per_trial <= 0 or cluster_resources.get("GPU", 0) > 0:
        return
    if autoscaler_starts_gpus():
        print(f"waiting for the autoscaler to start GPU workers ({gpus_per_trial:g} GPU per trial)", file=sys.stderr)
    else:
        print(
            f"warning: each trial asks for {gpus_per_trial:g} GPU but the cluster has none and no autoscaler "
            "GPU workers: trials wait until GPU nodes join (pass --gpus-per-trial 0 to train on CPUs)",
            file=sys.stderr,
        )


# Schemes of pyarrow file systems Ray Tune can write checkpoints to; a plain path is a local directory.
REMOTE_STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def check_storage_location(storage_path: str) -> None:
    """Refuse, before Ray starts, a storage path no study could write: a file, an unwritable folder, an unknown scheme.

    Whether every node of a cluster reaches it is `check_storage`'s question, asked once Ray is up.
    """
    import os

    scheme = urlparse(storage_path).scheme
    flag = f"--storage-path {storage_path}"
    if is_remote_uri(storage_path):
        if scheme not in REMOTE_STORAGE_SCHEMES:
            raise StorageError(
                f"{flag}: unknown scheme {scheme!r}; use a directory, or one of "
                f"{', '.join(s + '://' for s in REMOTE_STORAGE_SCHEMES)}"
            )
        return
    path = Path(urlparse(storage_path).path if scheme == "file" else storage_path).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise StorageError(f"{flag}: {existing} is a file, not a directory; give a directory for the study's checkpoints")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"{flag}: cannot write in {existing} (permission denied); give a directory you can write")
