"""cluster.yaml's node types under Ray's own autoscaler, with MLflow auth and Ray jobs, on loopback.

The head is `ray start --head --autoscaling-config` with the fake multi-node provider of Ray's
`ray.cluster_utils.AutoscalingCluster`: the real autoscaler decides, and each worker it launches
is a local raylet whose GPUs are fake, so trials train on the CPU. The node types are cluster.yaml's
head and GPU worker (a smaller maximum and idle timeout). AutoscalingCluster itself is not
called: its start() and shutdown() run `ray stop --force`, which would kill every Ray session on
the machine, and the pip wheel lacks the example.yaml it reads. Here the head and everything it
starts, autoscaled workers included, are one process session of ours, killed by its id.

The head's home is a temporary directory laid out as on a `ray up` head: the autoscaler's config
in ~/ray_bootstrap_config.yaml and ~/mlflow/auth.env written by cluster.yaml's own setup command.
Every server listens on loopback: the head on 127.0.0.2, the workers on 127.0.0.1 (Ray's laptop
mode, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), the dashboard and MLflow on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_cluster import (
    LEARNING_RATE,
    TINY,
    WAIT_FOR_NODES,
    executable,
    free_port,
    load_cluster_yaml,
    steps,
    trial_results,
)

HEAD_IP = "127.0.0.2"
WORKER_IP = "127.0.0.1"  # where Ray's laptop mode puts every node the fake provider launches
EXPERIMENT = "autoscaler"

NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"ip": n["NodeManagerAddress"], "alive": n["Alive"]} for n in ray.nodes()]))
"""


def session_members(session: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[3]) == session:
                members.append(int(entry.name))
    return members


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and everything in its session.

    The autoscaler launches workers from inside the head's processes, and a killed parent's
    children move to init: the session id still names all of them.
    """
    assert os.getsid(process.pid) == process.pid, "only a session of our own is killed"
    deadline = time.time() + 30
    while members := session_members(process.pid):
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.time() < deadline, f"processes {members} outlived SIGKILL"
        time.sleep(0.1)
    process.wait(timeout=30)


def autoscaler_config(gcs_address: str) -> dict:
    """cluster.yaml's head and worker node types, for Ray's fake multi-node provider."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    cluster = load_cluster_yaml()
    types = cluster["available_node_types"]
    workers = {
        name: {
            "node_config": {},
            "resources": {**node_type["resources"], "object_store_memory": 100_000_000},
            "min_workers": node_type["min_workers"],
            "max_workers": 2,
        }
        for name, node_type in types.items()
        if name != cluster["head_node_type"]
    }
    head = {"node_config": {}, "resources": types[cluster["head_node_type"]]["resources"], "max_workers": 0}
    return {
        "cluster_name": "autoscaler-test",
        "max_workers": 2,
        "upscaling_speed": cluster["upscaling_speed"],
        "idle_timeout_minutes": 0.1,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        "available_node_types": {FAKE_HEAD_NODE_TYPE: head, **workers},
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **{key: [] for key in cluster if key.endswith("_commands")},
    }


def auth_setup_command() -> str:
    [command] = [c for c in load_cluster_yaml()["head_setup_commands"] if "auth.env" in c]
    return command


def read_env_file(path: Path) -> dict[str, str]:
    """`export NAME=VALUE` lines, as the head's shells source them."""
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines())


@dataclass
class AutoscalingHead:
    root: Path
    home: Path
    shared: Path
    env: dict
    port: int
    dashboard_port: int
    tracking_uri: str = ""

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def auth(self) -> dict[str, str]:
        return read_env_file(self.home / "mlflow" / "auth.env")

    def nodes(self) -> list[dict]:
        listed = subprocess.run([sys.executable, "-c", NODES, self.address], env=self.env, capture_output=True,
                                text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr[-3000:]
        return json.loads(listed.stdout.strip().splitlines()[-1])

    def alive(self) -> list[str]:
        return sorted(node["ip"] for node in self.nodes() if node["alive"])

    def search(self, name: str, space: Path, *extra: str) -> list[str]:
        """A `dream-hpo search` on this cluster's data and MLflow server; GPUs per trial left to the default."""
        tiny = [f"--set={key}={json.dumps(value)}" for key, value in TINY.items() if key != "batch_size"]
        return [
            "dream-hpo", "search", "--name", name, "--data", str(self.shared / "prepared"),
            "--experiment", EXPERIMENT, "--tracking-uri", self.tracking_uri,
            "--storage-path", str(self.shared / "ray_results"), "--shared-storage",
            "--space", str(space), "--num-trials", "2", "--max-concurrent", "2", "--scheduler", "none",
            "--max-epochs", "2", "--batch-size", str(TINY["batch_size"]), "--no-legnet-reference", "--explain", "0",
            *tiny, *extra,
        ]

    def runs(self, study: str):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id], f"tags.study = '{study}'") if experiment else []
        parents = [r for r in runs if r.data.tags.get("study_parent") == "true"]
        return client, parents, [r for r in runs if r.data.tags.get("study_parent") != "true"]

    def wait_for(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert time.time() < deadline, f"{what} not within {timeout:g} s; monitor log: {self.monitor_log()[-3000:]}"
            time.sleep(1)

    def monitor_log(self) -> str:
        logs = list((self.root / "ray").glob("session_*/logs/monitor.log"))
        return logs[0].read_text() if logs else ""


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until the server answers at all (a refusal of the login counts as an answer)."""
    deadline = time.time() + timeout
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        assert time.time() < deadline, f"{url} did not answer within {timeout:g} s: {log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def head():
    """An autoscaling head with no workers, its dashboard, a basic-auth MLflow server, and data."""
    from data_prep import prepare
    from data_prep.synth import write_synthetic

    root = Path(tempfile.mkdtemp(prefix="da", dir="/tmp"))  # short: Ray's unix sockets live below it
    home, shared = root / "home", root / "shared"
    home.mkdir()
    token = root / "auth_token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))
    bin_dir = str(Path(sys.executable).parent)
    base = dict(
        os.environ,
        HOME=str(home),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        TF_CPP_MIN_LOG_LEVEL="2",
        RAY_USAGE_STATS_ENABLED="0",
        # What Ray writes outside a node's --temp-dir (its current-cluster file, port locks) stays ours too.
        RAY_TMPDIR=str(root),
        RAY_AUTH_MODE="token",  # as cluster.yaml's setup_commands
        RAY_AUTH_TOKEN_PATH=str(token),
    )
    setup = subprocess.run(["bash", "-c", auth_setup_command()], env=base, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stderr
    # What the head's ~/.bashrc sources into every shell, `ray start` and drivers included.
    env = {**base, **read_env_file(home / "mlflow" / "auth.env")}
    # This process reads the MLflow server as a driver does: logged in through the environment.
    logins = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update({name: env[name] for name in logins})
    port = free_port()
    cluster = AutoscalingHead(root, home, shared, env, port, free_port())
    processes = []
    try:
        mlflow_port = free_port()
        with open(root / "mlflow.log", "ab") as log:
            processes.append(subprocess.Popen(
                [executable("mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                 "--port", str(mlflow_port), "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                 "--serve-artifacts", "--artifacts-destination", str(root / "mlartifacts")],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
            ))
        cluster.tracking_uri = f"http://127.0.0.1:{mlflow_port}"

        config = home / "ray_bootstrap_config.yaml"  # where `ray up` puts it on the head
        config.write_text(yaml.safe_dump(autoscaler_config(cluster.address)))
        declared = load_cluster_yaml()
        head_resources = declared["available_node_types"][declared["head_node_type"]]["resources"]
        with open(root / "head.log", "ab") as log:
            processes.append(subprocess.Popen(
                [executable("ray"), "start", "--head", "--block", f"--port={port}", f"--node-ip-address={HEAD_IP}",
                 f"--num-cpus={head_resources.get('CPU', 0)}", f"--num-gpus={head_resources.get('GPU', 0)}",
                 f"--autoscaling-config={config}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={cluster.dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
                 f"--ray-client-server-port={free_port()}", f"--temp-dir={root / 'ray'}",
                 "--object-store-memory=100000000", "--disable-usage-stats", "--log-style=record"],
                # The fake provider's settings, as AutoscalingCluster.start sets them.
                env={**env, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
                     "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
            ))

        write_synthetic(root / "synthetic.txt", 900, seed=5)
        prepare(root / "synthetic.txt", shared / "prepared", eval_size=300, split_seed=0)
        waited = subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, cluster.address, HEAD_IP], env=env,
                                timeout=120, capture_output=True, text=True)
        assert waited.returncode == 0, waited.stderr[-3000:] + (root / "head.log").read_text()[-3000:]
        wait_for_http(f"{cluster.dashboard}/api/version", processes[1], root / "head.log")
        wait_for_http(f"{cluster.tracking_uri}/health", processes[0], root / "mlflow.log")
        yield cluster
    finally:
        for process in reversed(processes):
            kill_session(process)
        for name, value in logins.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


def write_space(directory: Path) -> Path:
    space = directory / "space.yaml"
    space.write_text(yaml.safe_dump(LEARNING_RATE))
    return space


@pytest.mark.slow
def test_mlflow_server_asks_every_request_for_the_generated_login(head):
    search = f"{head.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(search, timeout=60)
    assert refused.value.code == 401

    auth_env = head.home / "mlflow" / "auth.env"
    assert stat.S_IMODE(auth_env.stat().st_mode) == 0o600
    auth = head.auth
    assert auth["MLFLOW_TRACKING_USERNAME"] == "admin"
    password = auth["MLFLOW_TRACKING_PASSWORD"]
    assert password == auth["MLFLOW_AUTH_ADMIN_PASSWORD"] and len(password) >= 24
    login = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
    with urllib.request.urlopen(urllib.request.Request(search, headers=login), timeout=60) as ok:
        assert ok.status == 200

    # The next `ray up` runs the command again: the password the server knows stays.
    rerun = subprocess.run(["bash", "-c", auth_setup_command()], env=head.env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert head.auth == auth
    assert (head.home / ".bashrc").read_text().count("source ~/mlflow/auth.env") == 1


@pytest.mark.slow
def test_wrong_mlflow_password_is_one_line_before_ray_starts(head, tmp_path):
    ray_tmp = tmp_path / "ray"
    env = {**head.env, "MLFLOW_TRACKING_PASSWORD": "not-the-password", "RAY_TMPDIR": str(ray_tmp)}
    # No --address: a study that got past the check would start a Ray of its own under RAY_TMPDIR.
    refused = subprocess.run(head.search("wrong-password", write_space(tmp_path)), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    # TensorFlow's start-up lines may come first; the error is the last line, and no traceback.
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"dream-hpo search: error: the MLflow server at {head.tracking_uri} refused the login of user 'admin' "
        "(HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account on that server"
    )
    assert not ray_tmp.exists() and not (head.shared / "ray_results" / "wrong-password").exists()
    _, parents, children = head.runs("wrong-password")
    assert parents == [] and children == []


def run_and_check_study(head, name: str, command_output: str) -> dict:
    """What a finished GPU study on the autoscaled workers must show; its trials' logged values."""
    # The default asked each trial for a GPU although the cluster had none when the study started.
    assert "resources: 1 GPU and 1 CPU per trial" in command_output, command_output[-3000:]
    results = trial_results(head.shared / "ray_results" / name)
    assert len(results) == 2
    for rows in results.values():
        assert [r["epoch"] for r in rows] == [1, 2]
        assert {r["node_ip"] for r in rows} == {WORKER_IP}, rows  # autoscaled workers, never the head

    client, [parent], children = head.runs(name)
    assert parent.info.status == "FINISHED" and len(children) == 2
    logged = {}
    for child in children:
        assert child.info.status == "FINISHED" and steps(client, child) == [1, 2]
        history = client.get_metric_history(child.info.run_id, "eval_pearson")
        logged[child.data.tags["trial_number"]] = (
            child.data.params["learning_rate"], [m.value for m in sorted(history, key=lambda m: m.step)]
        )
    return logged


@pytest.fixture(scope="module")
def foreground(head, tmp_path_factory):
    """The GPU search run in the foreground, from a head without workers."""
    assert head.alive() == [HEAD_IP]
    tmp = tmp_path_factory.mktemp("foreground")
    driver = subprocess.run(head.search("foreground", write_space(tmp), "--address", head.address), cwd=tmp,
                            env=head.env, capture_output=True, text=True, timeout=600)
    assert driver.returncode == 0, driver.stderr[-5000:]
    return driver.stdout


@pytest.mark.slow
def test_gpu_search_starts_workers_from_zero_and_they_go_when_idle(head, foreground):
    run_and_check_study(head, "foreground", foreground)
    head.wait_for(lambda: head.alive() == [HEAD_IP], "the idle GPU workers removed")
    # The autoscaler's own account: only GPU workers added, and each removed for being idle.
    log = head.monitor_log()
    added = re.findall(r":event_summary:Adding (\d+) node\(s\) of type (\S+)\.$", log, re.MULTILINE)
    removed = re.findall(r":event_summary:Removing (\d+) nodes of type (\S+) \((\w+)\)\.$", log, re.MULTILINE)
    assert {node_type for _, node_type in added} == {"gpu_worker"}, added
    assert {(node_type, reason) for _, node_type, reason in removed} == {("gpu_worker", "idle")}, removed
    workers = [node for node in head.nodes() if node["ip"] == WORKER_IP]
    assert 1 <= len(workers) <= 2 and not any(node["alive"] for node in workers)
    assert sum(int(count) for count, *_ in removed) == len(workers), removed


@pytest.mark.slow
def test_ray_job_submit_runs_the_same_search_detached(head, foreground, tmp_path):
    results_of_foreground = run_and_check_study(head, "foreground", foreground)
    head.wait_for(lambda: head.alive() == [HEAD_IP], "the idle GPU workers removed")
    # The README's steps: the dashboard's address in RAY_ADDRESS; `bash -c '...'` so that the
    # head's shell, not the submitting one, reads the command line (and expands its $VARIABLES).
    ray_cli, env = executable("ray"), {**head.env, "RAY_ADDRESS": head.dashboard}
    job = "search-detached"
    entrypoint = shlex.join(head.search("detached", write_space(tmp_path), "--address", "auto",
                                        "--best-config", str(tmp_path / "best_config.json")))
    submit = [ray_cli, "job", "submit", "--submission-id", job, "--no-wait", "--", "bash", "-c", entrypoint]
    submitted = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    followed = subprocess.run([ray_cli, "job", "logs", "--follow", job], env=env, capture_output=True, text=True,
                              timeout=600)
    assert followed.returncode == 0, followed.stderr[-3000:]
    status = subprocess.run([ray_cli, "job", "status", job], env=env, capture_output=True, text=True, timeout=120)
    assert f"Job '{job}' succeeded" in status.stdout, followed.stdout[-5000:] + status.stdout

    detached = run_and_check_study(head, "detached", followed.stdout)
    assert detached.keys() == results_of_foreground.keys() == {"1", "2"}
    for number, (learning_rate, pearson) in detached.items():
        assert learning_rate == results_of_foreground[number][0]
        assert pearson == pytest.approx(results_of_foreground[number][1], abs=1e-4), number
    assert (tmp_path / "best_config.json").exists()


def test_an_unreachable_mlflow_server_is_one_line_and_a_local_store_is_not_checked(tmp_path):
    from search.tracking_store import check_tracking_server

    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError) as refused:
        check_tracking_server(closed)
    assert str(refused.value) == (
        f"cannot reach the MLflow server at {closed} ([Errno 111] Connection refused); start it or fix --tracking-uri"
    )
    assert check_tracking_server(f"sqlite:///{tmp_path}/mlflow.db") is None and check_tracking_server(None) is None
