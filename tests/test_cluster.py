"""The multi-node path: cluster.yaml, the shared-storage check, and a real cluster on loopback.

The slow tests share one cluster started from the README's on-premises recipe, line by
line: a head (no CPUs, so it runs drivers but never trials) and two one-CPU workers, each
a `ray start` process with its own temp dir and its own loopback address (127.0.0.x), so
the `node_ip` a trial reports names its node; the recipe's `mlflow server` on a loopback
port; one temporary directory as the shared mount that holds data, checkpoints and MLflow.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from search.cluster import default_gpus_per_trial, storage_problem

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
README = ROOT / "README.md"
RECIPE = "<!-- on-premises recipe:"
# A small but real configuration, as in test_baseline.py, so CPU trials take seconds per epoch
# (XLA compilation alone costs about a minute per trial process on CPU).
TINY = {"channels": 48, "stem_width": 5, "tower_width": 4, "transformer_layers": 1, "batch_size": 64, "jit_compile": False}
LEARNING_RATE = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
HEAD_IP = "127.0.0.2"  # Ray rewrites 127.0.0.1 to the machine's address; the rest of 127/8 stays loopback.


# cluster.yaml


def load_cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_is_valid_for_the_installed_ray_autoscaler():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = load_cluster_yaml()
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    # What `ray up` runs before it touches AWS: the schema plus the cross-field checks.
    validate_config(fillout_defaults(config))

    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    docker = config["docker"]
    assert docker["head_image"] == f"rayproject/ray:{ray.__version__}-{python}-cpu"
    assert docker["worker_image"] == f"rayproject/ray:{ray.__version__}-{python}-gpu"
    assert config["file_mounts"]["~/dream-hpo"] == "."
    assert any('"$HOME/dream-hpo[gpu]"' in command for command in config["worker_setup_commands"])


def mlflow_server_options(config: dict) -> dict[str, str]:
    """The options of the `mlflow server` started by the head, shell variables left as written."""
    [command] = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    words = shlex.split(command.split("mlflow server", 1)[1].split(">", 1)[0])
    return {word: value for word, value in zip(words, words[1:] + [""]) if word.startswith("--")}


def test_cluster_yaml_opens_only_ssh_keeps_trials_off_the_head_and_mlflow_private():
    config = load_cluster_yaml()
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert all((rule["FromPort"], rule["ToPort"]) == (22, 22) for rule in rules), rules
    assert not any("SecurityGroupIds" in t["node_config"] for t in config["available_node_types"].values())

    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    [worker] = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert worker["min_workers"] == 0 and 1 <= worker["max_workers"] <= config["max_workers"]

    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    assert not any("0.0.0.0" in command for command in commands)
    assert any("--dashboard-host=127.0.0.1" in command for command in config["head_start_ray_commands"])
    assert any("export RAY_AUTH_MODE=token" in command for command in config["setup_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]

    options = mlflow_server_options(config)
    assert options["--host"] == "$HEAD_PRIVATE_IP"
    assert any("HEAD_PRIVATE_IP=%s" in c and "hostname -I" in c for c in config["head_setup_commands"])
    assert options["--gunicorn-opts"].startswith("--bind 127.0.0.1:5000 ")  # the `ray attach -p 5000` tunnel
    assert options["--port"] == "5000"
    assert "--serve-artifacts" in options and options["--artifacts-destination"].startswith("s3://")
    # MLflow's login is on; its password is made on the head (tests/test_autoscaler.py runs that command).
    assert options["--app-name"] == "basic-auth"
    assert any('"$HOME/dream-hpo[cluster,explain]"' in command for command in config["head_setup_commands"])
    assert "PASSWORD=$password" in " ".join(config["head_setup_commands"])


# The shared-storage check, on node tables shaped like ray.nodes()


def node(node_id: str, alive: bool = True, **resources) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


CLUSTER = [node("head", CPU=0), node("w1", CPU=4, GPU=1), node("w2", CPU=4, GPU=1)]


@pytest.mark.parametrize("path", ["s3://bucket/ray_results", "gs://bucket/prefix", "abfs://container/x"])
def test_remote_storage_serves_any_cluster(path):
    assert storage_problem(path, False, CLUSTER, "head", {"CPU": 1, "GPU": 1}) is None


def test_local_storage_is_refused_on_several_nodes_unless_declared_shared():
    problem = storage_problem("/home/ray/ray_results", False, CLUSTER, "head", {"CPU": 1, "GPU": 1})
    assert "'/home/ray/ray_results' is local to one node" in problem
    assert "the Ray cluster has 3 alive nodes" in problem
    assert "--storage-path s3://BUCKET/PREFIX" in problem and "--shared-storage" in problem
    assert storage_problem("file:///mnt/x", False, CLUSTER, "head", {"CPU": 1}) is not None
    assert storage_problem("/mnt/efs/ray_results", True, CLUSTER, "head", {"CPU": 1, "GPU": 1}) is None


def test_local_storage_serves_one_node_that_runs_the_trials_itself():
    alone = [node("laptop", CPU=8), node("gone", alive=False, CPU=8)]
    assert storage_problem("ray_results", False, alone, "laptop", {"CPU": 1, "GPU": 0}) is None


def test_local_storage_is_refused_when_trials_wait_for_autoscaled_workers():
    # The cluster.yaml head alone: {"CPU": 0}, no GPU workers started yet.
    head_only = [node("head", CPU=0, memory=2**34)]
    problem = storage_problem("/home/ray/ray_results", False, head_only, "head", {"CPU": 1, "GPU": 1})
    assert "this node cannot run a trial (1 CPU, 1 GPU)" in problem and "autoscaler" in problem
    gpu_less = [node("box", CPU=16)]
    assert "(1 CPU, 1 GPU)" in storage_problem("ray_results", False, gpu_less, "box", {"CPU": 1, "GPU": 1})


# The default GPUs per trial, from the cluster's resources and the autoscaler's node types


def test_trials_ask_for_a_gpu_that_the_autoscaler_will_start():
    # The cluster.yaml head alone, as `ray up` leaves it: no GPU yet, a GPU worker type declared.
    assert default_gpus_per_trial({"CPU": 0.0, "memory": 2.0**34}, CLUSTER_YAML) == 1.0


def test_trials_stay_on_cpus_where_no_gpu_is_or_can_come(tmp_path):
    assert default_gpus_per_trial({"CPU": 8.0}, tmp_path / "no_such_config.yaml") == 0.0
    config = load_cluster_yaml()
    config["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 16}
    cpu_workers = tmp_path / "cpu_workers.yaml"
    cpu_workers.write_text(yaml.safe_dump(config))
    assert default_gpus_per_trial({"CPU": 0.0}, cpu_workers) == 0.0
    config["available_node_types"]["gpu_worker"].update(resources={"CPU": 4, "GPU": 1}, max_workers=0)
    cpu_workers.write_text(yaml.safe_dump(config))
    assert default_gpus_per_trial({"CPU": 0.0}, cpu_workers) == 0.0
    # A head whose own GPUs are declared does not make workers bring any.
    config["available_node_types"]["head"]["resources"] = {"CPU": 0, "GPU": 1}
    config["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 16}
    config["available_node_types"]["gpu_worker"]["max_workers"] = 8
    cpu_workers.write_text(yaml.safe_dump(config))
    assert default_gpus_per_trial({"CPU": 0.0}, cpu_workers) == 0.0


def test_trials_use_the_gpus_a_cluster_has_now(tmp_path):
    assert default_gpus_per_trial({"CPU": 8.0, "GPU": 2.0}, tmp_path / "no_such_config.yaml") == 1.0


# A real cluster on loopback. Drivers are `dream-hpo` subprocesses, as on a real head: this
# process never joins the cluster, so Ray's per-process settings (token auth is read when
# Ray is imported) cannot leak into other test modules.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), so a node is torn down by its own pids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process we started and everything it started: a machine that vanishes."""
    for pid in [*descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


def executable(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def on_premises_recipe() -> list[str]:
    """The command lines of the README's on-premises recipe, comments left out."""
    text = README.read_text()
    block = text[text.index(RECIPE):]
    block = block[block.index("```bash\n") + len("```bash\n") :]
    block = block[: block.index("\n```")]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_on_premises_recipe_is_what_the_loopback_cluster_runs():
    # Every line is one of the steps LoopbackCluster.recipe takes, in the order the fixture runs them.
    steps = ["ray start --head ", "mkdir -p ", "mlflow server ", "ray start --address=", "dream-hpo search "]
    assert [next(s for s in steps if line.startswith(s)) for line in on_premises_recipe()] == steps


# Run in a subprocess with the cluster's environment: until these node IPs are the alive ones.
WAIT_FOR_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
while sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]) != sys.argv[2:]:
    time.sleep(0.5)
"""


@dataclass
class LoopbackCluster:
    root: Path  # short, for Ray's unix sockets
    shared: Path  # the README's /shared: data, checkpoints, the MLflow database and artifacts
    env: dict
    port: int = field(default_factory=free_port)
    mlflow_port: int = field(default_factory=free_port)
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)
    mlflow: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.port}"

    @property
    def storage(self) -> Path:
        return self.shared / "ray_results"

    @property
    def data(self) -> Path:
        return self.shared / "data" / "dream-full"

    @property
    def tracking_uri(self) -> str:
        command = self.recipe("dream-hpo search ")
        return command[command.index("--tracking-uri") + 1]

    def workers(self) -> set[str]:
        return set(self.nodes) - {HEAD_IP}

    def recipe(self, start: str) -> list[str]:
        """The README's command that starts with `start`, its placeholders filled in for this machine.

        HEAD_IP is 127.0.0.2 for Ray, which rewrites 127.0.0.1 to the machine's address, and
        127.0.0.1 for MLflow, whose server accepts no other loopback address by default.
        """
        [line] = [line for line in on_premises_recipe() if line.startswith(start)]
        line = line.replace("--host $HEAD_IP", "--host 127.0.0.1").replace("$HEAD_IP:5000", "127.0.0.1:5000")
        line = line.replace("$HEAD_IP", HEAD_IP).replace("6379", str(self.port))
        line = line.replace("5000", str(self.mlflow_port)).replace("/shared", str(self.shared))
        words = shlex.split(line)
        return [executable(words[0]), *words[1:]]

    def start_node(self, ip: str) -> None:
        """The recipe's `ray start` for one node, plus what several nodes on one machine need apart.

        Each node blocks (so it is ours to kill), has its own temp dir and ports, no GPUs, and a
        small object store; the workers one CPU each.
        """
        if ip == HEAD_IP:
            command = [*self.recipe("ray start --head "), f"--ray-client-server-port={free_port()}",
                       "--include-dashboard=false", f"--dashboard-port={free_port()}"]
        else:
            command = [*self.recipe("ray start --address="), f"--node-ip-address={ip}", "--num-cpus=1"]
        with open(self.root / f"{ip}.log", "ab") as log:
            self.nodes[ip] = subprocess.Popen(
                [*command, "--block", "--num-gpus=0", f"--temp-dir={self.root / ip.rsplit('.', 1)[1]}",
                 f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=100000000",
                 "--disable-usage-stats", "--log-style=record"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )

    def kill_node(self, ip: str) -> None:
        kill_tree(self.nodes.pop(ip))

    def wait_for_nodes(self, timeout: float = 120) -> None:
        """Until exactly the nodes this fixture runs are alive in the cluster."""
        command = [sys.executable, "-c", WAIT_FOR_NODES, self.address, *sorted(self.nodes)]
        try:
            waited = subprocess.run(command, env=self.env, timeout=timeout, capture_output=True, text=True)
            problem = waited.stderr[-3000:] if waited.returncode else None
        except subprocess.TimeoutExpired:
            problem = f"not all alive after {timeout:g} s"
        if problem:
            logs = {ip: (self.root / f"{ip}.log").read_text()[-2000:] for ip in self.nodes}
            raise AssertionError(f"nodes {sorted(self.nodes)}: {problem}; node logs: {logs}")

    def start_mlflow(self) -> None:
        """The recipe's `mkdir` and `mlflow server` (one worker process is enough here)."""
        subprocess.run(self.recipe("mkdir -p "), check=True)
        with open(self.root / "mlflow.log", "ab") as log:
            self.mlflow = subprocess.Popen(
                [*self.recipe("mlflow server "), "--workers", "1"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            )

    def wait_for_mlflow(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while True:
            assert self.mlflow.poll() is None, (self.root / "mlflow.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.time() < deadline, f"the MLflow server did not answer within {timeout:g} s"
            time.sleep(0.5)

    def dream_hpo(self, command: str, name: str, *extra: str) -> list[str]:
        """The recipe's `dream-hpo search` as `command`, with the tiny model in the experiment 'cluster'."""
        tiny = [f"--set={key}={json.dumps(value)}" for key, value in TINY.items() if key != "batch_size"]
        [program, _, *recipe] = self.recipe("dream-hpo search ")
        recipe[recipe.index("--name") : recipe.index("--name") + 2] = []
        return [
            program, command, *recipe, "--name", name, "--experiment", "cluster", "--gpus-per-trial", "0",
            "--batch-size", str(TINY["batch_size"]), *tiny, *extra,
        ]

    def stop(self) -> None:
        for ip in sorted(self.nodes, key=lambda ip: ip == HEAD_IP):
            kill_tree(self.nodes.pop(ip))
        if self.mlflow is not None:
            kill_tree(self.mlflow)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head + two workers + MLflow server, shared by the slow tests below; torn down by pid."""
    from data_prep import prepare
    from data_prep.synth import write_synthetic

    root = Path(tempfile.mkdtemp(prefix="dh", dir="/tmp"))
    shared = tmp_path_factory.mktemp("shared")
    token = root / "auth_token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        TF_CPP_MIN_LOG_LEVEL="2",
        RAY_USAGE_STATS_ENABLED="0",
        # What Ray writes outside a node's --temp-dir (its current-cluster file, port locks) stays ours too.
        RAY_TMPDIR=str(root),
        # Ray token authentication for every node and driver, with this cluster's own token.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        # Declare a lost node dead after about 3 s instead of about 30 s.
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    loopback = LoopbackCluster(root=root, shared=shared, env=env)
    try:
        # In the README's order: the head, its MLflow server, then each worker.
        loopback.start_node(HEAD_IP)
        loopback.start_mlflow()
        for ip in ("127.0.0.3", "127.0.0.4"):
            loopback.start_node(ip)
        write_synthetic(root / "synthetic.txt", 900, seed=5)
        prepare(root / "synthetic.txt", loopback.data, eval_size=300, split_seed=0)
        loopback.wait_for_nodes()
        loopback.wait_for_mlflow()
        yield loopback
    finally:
        loopback.stop()
        shutil.rmtree(root, ignore_errors=True)


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """Every result each trial reported, in order, from Tune's result.json files.

    Read while the driver may be appending, so only whole lines count.
    """
    results = {}
    for path in experiment.glob("*/result.json"):
        text = path.read_text()
        results[path.parent.name] = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return results


def study_runs(tracking_uri: str, study: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("cluster")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.study = '{study}'") if experiment else []
    parents = [r for r in runs if r.data.tags.get("study_parent") == "true"]
    return client, parents, [r for r in runs if r.data.tags.get("study_parent") != "true"]


def steps(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval_pearson"))


@pytest.mark.slow
def test_local_storage_is_refused_on_the_cluster_before_anything_starts(cluster, tmp_path):
    local = tmp_path / "ray_results"
    command = [arg for arg in cluster.dream_hpo("baseline", "local", "--epochs", "1") if arg != "--shared-storage"]
    command[command.index(str(cluster.storage))] = str(local)
    refused = subprocess.run(command, cwd=tmp_path, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"dream-hpo baseline: error: storage path '{local}' is local to one node, but the Ray cluster has 3 alive nodes" in refused.stderr
    assert "--storage-path s3://BUCKET/PREFIX" in refused.stderr and "--shared-storage" in refused.stderr
    assert not local.exists()
    _, parents, children = study_runs(cluster.tracking_uri, "local")
    assert parents == [] and children == []


@pytest.mark.slow
def test_search_trials_run_on_both_workers_and_log_to_the_mlflow_server(cluster, tmp_path):
    command = cluster.dream_hpo("search", "spread", "--space", str(write_space(tmp_path)), "--num-trials", "2",
                                "--max-concurrent", "2", "--scheduler", "none", "--max-epochs", "2",
                                "--no-legnet-reference", "--explain", "100")
    assert subprocess.run(command, cwd=tmp_path, env=cluster.env, timeout=600).returncode == 0

    results = trial_results(cluster.storage / "spread")
    node_ips = {trial: {r["node_ip"] for r in rows} for trial, rows in results.items()}
    # One trial on each worker, none on the head.
    assert sorted(ip for ips in node_ips.values() for ip in ips) == ["127.0.0.3", "127.0.0.4"], node_ips

    client, [parent], children = study_runs(cluster.tracking_uri, "spread")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and len({c.data.tags["ray_trial_id"] for c in children}) == 2
    stored = list((cluster.shared / "mlflow" / "artifacts").rglob("training_curve.png"))
    for child in children:
        assert child.info.status == "FINISHED" and steps(client, child) == [1, 2]
        # Logged over HTTP: the server, not the driver, wrote the artifacts into its --artifacts-destination.
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")
        assert "plots/training_curve.png" in {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert any(child.info.run_id in path.parts for path in stored)
    # The driver explained the best model and logged the folder to the parent run through the server.
    assert (tmp_path / "spread-explain" / "summary.html").is_file()
    explained = {a.path for a in client.list_artifacts(parent.info.run_id, "explain")}
    assert {"explain/motifs.tsv", "explain/summary.html", "explain/attributions.npz"} <= explained


@pytest.mark.slow
def test_trial_on_a_lost_worker_resumes_from_its_checkpoint_on_the_other(cluster, tmp_path):
    experiment = cluster.storage / "lost-node"
    driver = subprocess.Popen(cluster.dream_hpo("baseline", "lost-node", "--epochs", "4"), cwd=tmp_path, env=cluster.env)
    lost = None
    try:
        # result.json gets a row once the driver has an epoch's result, after its checkpoint is stored.
        deadline = time.time() + 300
        while not any(trial_results(experiment).values()):
            assert driver.poll() is None, "the baseline ended before its worker could be lost"
            assert time.time() < deadline, "no epoch reported within 5 minutes"
            time.sleep(0.2)
        [rows] = trial_results(experiment).values()
        lost = rows[0]["node_ip"]
        cluster.kill_node(lost)
        assert driver.wait(timeout=600) == 0

        [rows] = trial_results(experiment).values()
        # Each epoch once, the later ones on the surviving worker: resumed, not restarted.
        assert [r["epoch"] for r in rows] == [1, 2, 3, 4], rows
        [survivor] = cluster.workers()
        assert rows[0]["node_ip"] == lost and rows[-1]["node_ip"] == survivor, rows

        client, parents, runs = study_runs(cluster.tracking_uri, "lost-node")
        assert parents == [] and len(runs) == 1
        assert runs[0].info.status == "FINISHED" and steps(client, runs[0]) == [1, 2, 3, 4]
    finally:
        if driver.poll() is None:
            kill_tree(driver)
        if lost is not None:  # the next test wants two workers again
            cluster.start_node(lost)
            cluster.wait_for_nodes()


@pytest.mark.slow
def test_killed_driver_resumes_the_search_with_one_run_per_trial(cluster, tmp_path):
    command = cluster.dream_hpo("search", "driver-lost", "--space", str(write_space(tmp_path)), "--num-trials", "3",
                                "--max-concurrent", "2", "--scheduler", "none", "--max-epochs", "2",
                                "--register-as", "driver-lost-best", "--no-legnet-reference", "--explain", "0")
    experiment = cluster.storage / "driver-lost"
    driver = subprocess.Popen(command, cwd=tmp_path, env=cluster.env)
    try:
        deadline = time.time() + 300
        while True:
            assert driver.poll() is None, "the search ended before its driver could be killed"
            assert time.time() < deadline, "no epoch logged within 5 minutes"
            _, _, children = study_runs(cluster.tracking_uri, "driver-lost")
            if list(experiment.glob("experiment_state-*.json")) and any("eval_pearson" in c.data.metrics for c in children):
                break
            time.sleep(1)
    finally:
        kill_tree(driver)
    _, _, before = study_runs(cluster.tracking_uri, "driver-lost")

    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, env=cluster.env, timeout=600)
    assert resumed.returncode == 0
    client, parents, children = study_runs(cluster.tracking_uri, "driver-lost")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and len({c.data.tags["ray_trial_id"] for c in children}) == 3
    assert {c.info.run_id for c in before} <= {c.info.run_id for c in children}
    for child in children:
        assert child.info.status == "FINISHED" and steps(client, child) == [1, 2], child.data.tags["ray_trial_id"]


def write_space(directory: Path) -> Path:
    space = directory / "space.yaml"
    space.write_text(yaml.safe_dump(LEARNING_RATE))
    return space
