"""The run on real multi-node Ray: placement by custom resources, and a Jobs submission with auth.

Ray here is kept to this machine's loopback and to private temp dirs:

- `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` puts Ray in its single-machine mode, where every node
  and every address is 127.0.0.1. (On Linux Ray otherwise swaps 127.0.0.1 for the interface
  address, even in `ray start --node-ip-address=127.0.0.1` and `ray.init(address="127.0.0.1:...")`.)
- `RAY_TMPDIR` gives each test its own session dirs and `ray_current_cluster` file, so
  `--ray-address auto` finds our cluster and never another one on the machine; every port is
  chosen free rather than left at Ray's defaults (8265, 10001, 52365, ...).
- We never run `ray stop`: it stops every Ray process on the machine, not only ours. Each test
  ends exactly the processes it started.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ada_curriculum import config as config_lib
from ada_curriculum.train import TrainConfig, train

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a few Ray nodes and TF-importing workers: minutes on two cores

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, ada-curriculum
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_home(monkeypatch):
    """A short private RAY_TMPDIR (Unix socket paths must stay under ~107 bytes) and loopback mode."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name, value in LOOPBACK_ONLY.items():
        monkeypatch.setenv(name, value)  # for the node processes we start
    # ray is imported already and read the variable at import time.
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def tiny(run, demos, **kw) -> TrainConfig:
    base = {
        "run": str(run), "demos": demos, "time_limit": 15, "num_actors": 1, "envs_per_actor": 1,
        "actor_steps_per_call": 8, "variable_update_period": 2, "batch_size": 16, "updates_per_call": 4,
        "publish_every": 2, "max_updates": 8, "max_minutes": 6.0, "checkpoint_every": 8, "stall_timeout": 30.0,
        "replay": {"min_size_to_sample": 8, "samples_per_insert": 64.0},
        "diffusion": {"down_dims": [16, 32], "num_inference_steps": 2},
        "optim": {"warmup_steps": 2}, "dashboard": False, "embedding_every": 0,
    }
    base.update(kw)
    return config_lib.from_dict(TrainConfig, base)


def node_ports() -> dict:
    # Explicit agent ports: the raylet then need not wait for the agents to report theirs,
    # a wait that times out (and kills the raylet) when agents import slowly on a busy machine.
    return {"node_ip_address": "127.0.0.1", "metrics_agent_port": free_port(),
            "runtime_env_agent_port": free_port(), "dashboard_agent_listen_port": free_port()}


# -- placement ----------------------------------------------------------------------------------

def test_actors_and_learner_run_on_the_nodes_with_their_resources(demos, tmp_path, ray_home):
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    # The head keeps the dashboard (the state API goes through it) and drops what the test does
    # not use: autoscaler monitor, log monitor, Ray client server (two cores are busy enough).
    cluster = Cluster(initialize_head=True, head_node_args={
        **node_ports(), "num_cpus": 1, "gcs_server_port": free_port(), "no_monitor": True,
        "include_log_monitor": False, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port()})
    try:
        actor_node = cluster.add_node(**node_ports(), num_cpus=2, resources={"actor": 2})
        learner_node = cluster.add_node(**node_ports(), num_cpus=1, resources={"learner": 1})
        cluster.wait_for_nodes()

        # Connected here first, train() leaves the connection open when it returns, so results
        # of calls made during the run can still be fetched afterwards.
        ray.init(address=cluster.address, log_to_driver=False)
        learner_node_ref = []
        summary = train(tiny(tmp_path / "run", demos, ray_address=cluster.address, distributed=True,
                             num_actors=2, actor_resources="actor:1", learner_resources="learner:1"),
                        on_start=lambda run: learner_node_ref.append(run.learner.node_id.remote()))
        assert summary["stopped_by"] == "max_updates" and summary["updates"] >= 8
        assert summary["env_steps"] > 0 and summary["replay"]["online"]["size"] > 0
        assert (tmp_path / "run" / "summary.json").exists()
        assert ray.get(learner_node_ref[0], timeout=60) == learner_node.node_id  # as the learner saw it

        # train() has killed its Ray actors by now; the state API still lists dead actors, with
        # the node each one ran on.
        placed: dict[str, list[str]] = {}
        for actor in list_actors(address=cluster.address, detail=True, limit=1000):
            placed.setdefault(actor.class_name, []).append(actor.node_id)
        assert sorted(placed["ActorWorker"]) == [actor_node.node_id] * 2, placed
        assert placed["LearnerWorker"] == [learner_node.node_id], placed
        for name in ("ReplayServerWorker", "VariableSource", "TaskSource"):
            assert len(placed[name]) == 1, placed  # the rest of the run was there too, exactly once
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


# -- Jobs API with token authentication ---------------------------------------------------------

def http(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:  # not listening yet
        return 0, str(e.reason)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def end_head(proc: subprocess.Popen) -> None:
    """Stop the `ray start --block` head we started, and every process it started."""
    tree = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # --block: the head stops its own processes
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for pid in [proc.pid, *tree]:  # whatever did not stop, or left the process group
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait(timeout=10)


def test_train_job_submitted_with_the_auth_token(demos, tmp_path, ray_home):
    # The cluster's token, made as Ray documents it for clusters not started by ray.init():
    # `ray get-auth-token --generate` writes ~/.ray/auth_token; a private HOME keeps it
    # away from the user's own token. Every process below is pointed at it with
    # RAY_AUTH_TOKEN_PATH, and RAY_AUTH_MODE=token switches authentication on.
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    home = ray_home / "home"
    home.mkdir()
    generated = subprocess.run([BIN / "ray", "get-auth-token", "--generate"], env={**base, "HOME": str(home)},
                               capture_output=True, text=True, timeout=60)
    token_file = home / ".ray" / "auth_token"
    assert generated.returncode == 0 and token_file.exists(), generated.stderr
    env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job runs `ada-curriculum`
           "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}

    dashboard, agent = free_port(), free_port()
    head_log = ray_home / "ray-start.log"
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
         f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-grpc-port={free_port()}", f"--dashboard-agent-listen-port={agent}",
         f"--runtime-env-agent-port={free_port()}", f"--temp-dir={ray_home / 'ray'}",
         f"--ray-client-server-port={free_port()}",  # always started; off Ray's default 10001
         "--include-log-monitor=false", "--no-monitor",  # not needed here: fewer processes to start
         "--num-cpus=2", '--resources={"actor": 1, "learner": 1}'],
        env=env, stdout=head_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The token as any client finds it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).
        shown = subprocess.run([BIN / "ray", "get-auth-token"], env=env, capture_output=True, text=True, timeout=60)
        token = shown.stdout.strip()
        assert shown.returncode == 0 and token == token_file.read_text().strip(), shown.stderr

        # Up: the Jobs API, and the head's agent that runs submitted jobs (the Jobs API waits only
        # 10 s for it before answering "No available agent to submit job").
        jobs_url = f"http://127.0.0.1:{dashboard}/api/jobs/"
        agent_url = f"http://127.0.0.1:{agent}/api/local_raylet_healthz"
        deadline = time.monotonic() + 180
        while http(jobs_url, token)[0] != 200 or http(agent_url, token)[0] != 200:
            assert head.poll() is None, f"ray start failed:\n{head_log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the head did not come up within 180 s"
            time.sleep(1)
        # Authentication is on: no token is refused, a wrong token too.
        assert http(jobs_url)[0] == 401
        assert http(jobs_url, "not-the-token")[0] == 403

        run = tmp_path / "run"
        for attempt in range(2):
            submit = subprocess.run(
                [REPO / "launch" / "submit.sh", "--run", str(run), "--demos", demos, "--num-actors", "1",
                 "--envs-per-actor", "1", "--time-limit", "15", "--batch-size", "16", "--max-updates", "8",
                 "--updates-per-call", "4", "--checkpoint-every", "8", "--max-minutes", "6",
                 "--replay.min-size-to-sample", "8", "--replay.samples-per-insert", "64",
                 "--diffusion.down-dims", "16,32", "--diffusion.num-inference-steps", "2"],
                env={**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}", "RAY": str(BIN / "ray")},
                cwd=tmp_path, capture_output=True, text=True, timeout=420)
            # Refused before any job was made (the agent registers just after it serves): once more.
            if attempt == 0 and "No available agent to submit job" in submit.stdout + submit.stderr:
                time.sleep(5)
                continue
            break
        assert submit.returncode == 0, f"{submit.stdout[-6000:]}\n{submit.stderr[-3000:]}"

        status, body = http(jobs_url, token)
        jobs = json.loads(body)
        assert status == 200 and [j["status"] for j in jobs] == ["SUCCEEDED"], jobs
        assert jobs[0]["entrypoint"].startswith("ada-curriculum train --ray-address auto --actor-resources actor:1")
        summary = json.loads((run / "summary.json").read_text())
        assert summary["stopped_by"] == "max_updates" and summary["updates"] >= 8
        assert summary["env_steps"] > 0
    finally:
        end_head(head)
