"""Fault tolerance of `ada-curriculum train`: crashed actors, killed and stopped runs, a corrupted
checkpoint, a starved learner, unstable physics. Real Ray, Reverb, MuJoCo and Orbax; tiny models."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ada_curriculum import config as config_lib
from ada_curriculum.agent.task_source import TaskSource
from ada_curriculum.checkpointing import Checkpointer
from ada_curriculum.cli import main
from ada_curriculum.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ada_curriculum.cli", "train"]



def settings(run, demos, **kw) -> dict:
    """A tiny run: small U-Net, 2 DDIM steps, small batches; each actor call ends its envs' episodes
    (15 steps), so the learner's first call already finds online windows."""
    base = {
        "run": str(run), "demos": demos, "time_limit": 15, "num_actors": 1, "envs_per_actor": 2,
        "actor_steps_per_call": 16, "variable_update_period": 2, "batch_size": 16, "updates_per_call": 4,
        "publish_every": 2, "max_updates": 12, "max_minutes": 3.0, "checkpoint_every": 4, "stall_timeout": 3.0,
        "replay": {"min_size_to_sample": 8, "samples_per_insert": 64.0},
        "diffusion": {"down_dims": [16, 32], "num_inference_steps": 2},
        "optim": {"warmup_steps": 2}, "dashboard": False, "embedding_every": 0,
    }
    for key, value in kw.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return base


def tiny(run, demos, **kw) -> TrainConfig:
    return config_lib.from_dict(TrainConfig, settings(run, demos, **kw))


def cli_args(values: dict, prefix: str = "") -> list[str]:
    """The `ada-curriculum train` options for a settings dict."""
    out = []
    for key, value in values.items():
        flag = "--" + prefix + key.replace("_", "-")
        if isinstance(value, dict):
            out += cli_args(value, prefix + key + ".")
        elif isinstance(value, bool):
            out.append(flag if value else "--no-" + prefix + key.replace("_", "-"))
        elif isinstance(value, list):
            out += [flag, ",".join(map(str, value))]
        elif value is not None:
            out += [flag, str(value)]
    return out


def start_cli(values: dict, log_path: Path) -> subprocess.Popen:
    log_file = log_path.open("w")
    return subprocess.Popen(CLI + cli_args(values), cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)


def finished_steps(ckpt_dir: Path) -> list[int]:
    """Steps whose save completed: Orbax renames a step's temp dir to the bare step number when done.
    (Read off the directory: a Checkpointer here would clean the live run's temp dirs.)"""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir()
                  if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file())


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"train exited with {proc.returncode} before {what}:\n{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def read_meta(ckpt_dir: Path, step: int | None = None) -> dict:
    ckpt = Checkpointer(ckpt_dir)
    try:
        return ckpt.read_meta(step)
    finally:
        ckpt.close()


def in_thread(fn, timeout: float):
    """fn() on a daemon thread: a hang fails the test instead of hanging the session."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still running after {timeout:.0f} s (hung)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- unstable physics -------------------------------------------------------------------------------

def test_unstable_physics_ends_the_episode_not_the_actor(demos, tmp_path):
    import jax

    from ada_curriculum.agent.builder import Builder
    from ada_curriculum.policies import make_policy, normalizer

    cfg = tiny(tmp_path / "run", demos, distributed=False)
    policy = make_policy("diffusion", cfg.diffusion)
    builder = Builder(cfg, policy)
    server = builder.make_replay_server(str(tmp_path / "replay"))
    variables = builder.make_variable_source()
    variables.publish(policy.init(jax.random.PRNGKey(0), normalizer.identity(policy.obs_dim, policy.action_dim)), 0)
    actor = builder.make_actor(0, server.address, variables, builder.make_task_source())
    try:
        p = actor.envs[0].physics
        p.data.qvel[p.banana_dofadr:p.banana_dofadr + 6] = 1e30  # a state no solver survives
        out = actor.run(1)
        assert out["episodes"] == 1 and out["results"][0]["unstable"] and not out["results"][0]["success"]
        assert actor.unstable == 1
        assert server.info()["online"]["num_inserts"] == 1  # the cut-short episode is kept, as a failure
        out = actor.run(20)  # both envs keep going: env 0 on a fresh episode
        assert out["env_steps"] == 40 and out["episodes"] >= 2
        assert not any(r["unstable"] for r in out["results"])
        assert server.info()["online"]["num_inserts"] == 1 + sum(r["steps"] for r in out["results"])
        for ts in actor._timesteps:
            assert all(np.all(np.isfinite(v)) for v in ts.observation.values())
    finally:
        actor.close()
        server.stop()


# -- a corrupted checkpoint -------------------------------------------------------------------------

def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(demos, tmp_path, caplog, capsys):
    run = tmp_path / "run"
    ckpt_dir = run / "checkpoints"
    train(tiny(run, demos, distributed=False, max_updates=8))
    assert finished_steps(ckpt_dir) == [4, 8]
    older = read_meta(ckpt_dir, 4)["counters"]
    for f in (ckpt_dir / "8").rglob("*"):  # a disk that lost the tail of every file
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    capsys.readouterr()

    with caplog.at_level(logging.WARNING):
        summary = train(tiny(run, demos, distributed=False, max_updates=12))
    out = capsys.readouterr().out
    assert f"resuming {run} from update 4 ({older['env_steps']} env steps, {older['episodes']} episodes)" in out
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("step 8 unreadable" in w for w in warnings), warnings
    assert any("fell back to step 4" in w for w in warnings), warnings
    assert summary["updates"] == 12 and summary["episodes"] > older["episodes"]
    # The resumed run wrote its own step 8 in place of the unreadable one.
    assert read_meta(ckpt_dir, 8)["counters"]["env_steps"] > older["env_steps"]
    assert read_meta(ckpt_dir)["counters"]["updates"] == 12


# -- a starved learner ------------------------------------------------------------------------------

def test_learner_stall_is_reported_and_the_run_still_ends_on_budget(demos, tmp_path, caplog):
    # No demos in batches and an online table that cannot fill in time: replay never yields a
    # batch. On Ray, where the learner waits on replay while the actors act (in process, the loop
    # keeps acting until the online table can be sampled; see the next test).
    ray = pytest.importorskip("ray")
    # 30 s: the actors' first acting call compiles the policy, which took over 6 s on a loaded
    # 2-core machine (a fresh-clone CI run saw no env step within a 0.1-minute budget).
    cfg = tiny(tmp_path / "run", demos, distributed=True, demo_fraction=0.0, stall_timeout=1.0,
               max_updates=1000, max_minutes=0.5, replay={"min_size_to_sample": 50_000})

    def learner_up(run):
        # The budget's clock starts after this: the learner and actors are built before it runs.
        ray.get([run.learner.version.remote(), *(a.ping.remote() for a in run.actors)])

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        with caplog.at_level(logging.WARNING):
            summary = in_thread(lambda: train(cfg, on_start=learner_up), timeout=240)
    finally:
        ray.shutdown()
    assert summary["stopped_by"] == "max_minutes"
    assert summary["learner_stalls"] >= 1 and summary["updates"] == 0
    assert summary["env_steps"] > 0 and summary["replay"]["online"]["size"] > 0  # acting went on
    assert any("no replay batch within 1 s" in r.getMessage() for r in caplog.records)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["updates_done"] == 0 for r in rows)


def test_in_process_learning_waits_for_the_online_table_without_stalling(demos, tmp_path):
    # Episodes of 15 steps, 4 steps per acting call: the first calls finish no episode, so the
    # online table is empty. In process the learner must not wait out the stall timeout (which
    # only this thread's acting could end): the loop acts until the table can be sampled.
    cfg = tiny(tmp_path / "run", demos, distributed=False, actor_steps_per_call=4, stall_timeout=600.0,
               max_updates=8, max_minutes=4.0, replay={"min_size_to_sample": 40})
    summary = in_thread(lambda: train(cfg), timeout=240)
    assert summary["stopped_by"] == "max_updates" and summary["learner_stalls"] == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["updates_done"] > 0 and rows[0]["episodes"] >= 3  # learning began once 40 windows were in


# -- a killed or stopped training process -----------------------------------------------------------

def test_sigkill_mid_run_then_resume_continues_counters_and_task_source(demos, tmp_path, capsys):
    run = tmp_path / "run"
    ckpt_dir = run / "checkpoints"
    log_path = tmp_path / "killed.log"
    proc = start_cli(settings(run, demos, distributed=False, max_updates=100_000, max_minutes=10.0), log_path)
    try:
        wait_for(lambda: finished_steps(ckpt_dir), 300, "the first checkpoint", proc, log_path)
        os.kill(proc.pid, signal.SIGKILL)  # no handler, no final checkpoint, no summary
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and not (run / "summary.json").exists()
    step = finished_steps(ckpt_dir)[-1]
    saved = read_meta(ckpt_dir, step)
    before, task_before = saved["counters"], saved["task_source"]
    assert before["updates"] == step and before["episodes"] > 0 and task_before["episodes"] == before["episodes"]

    target = before["updates"] + 8
    assert main(["train", *cli_args(settings(run, demos, distributed=False, max_updates=target))]) == 0
    out = capsys.readouterr().out
    assert f"resuming {run} from update {step} ({before['env_steps']} env steps, {before['episodes']} episodes)" in out
    assert f"budget: stops at the first of {target} updates, 3 minutes" in out

    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "max_updates" and summary["updates"] >= target
    assert summary["env_steps"] > before["env_steps"] and summary["episodes"] > before["episodes"]
    # The task source went on from its checkpointed state: its episode count kept growing from
    # the checkpointed one (a fresh source would hold only the new episodes), and its RNG is
    # neither a fresh one's nor the checkpointed one.
    task_after = read_meta(ckpt_dir)["task_source"]
    assert task_after["episodes"] == summary["episodes"] > task_before["episodes"]
    fresh = TaskSource("nominal", seed=0).state()["rng"]
    assert task_before["rng"] != fresh and task_after["rng"] not in (fresh, task_before["rng"])


def test_sigterm_ends_with_a_final_checkpoint_and_a_clean_exit(demos, tmp_path):
    run = tmp_path / "run"
    log_path = tmp_path / "train.log"
    # Checkpoints only at the end: the one found afterwards is the final one.
    proc = start_cli(settings(run, demos, distributed=False, max_updates=100_000, max_minutes=10.0,
                              checkpoint_every=100_000), log_path)
    try:
        metrics = run / "metrics.jsonl"
        wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 2, 300,
                 "the loop to be running", proc, log_path)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log_path.read_text()[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["updates"] > 0
    assert "stopped by SIGTERM" in log_path.read_text()
    assert finished_steps(run / "checkpoints") == [summary["updates"]]
    meta = read_meta(run / "checkpoints")
    for key in ("updates", "env_steps", "episodes"):
        assert meta["counters"][key] == summary[key]


# -- a crashed actor --------------------------------------------------------------------------------

def test_killed_actor_is_restarted_with_fresh_weights_and_training_continues(demos, tmp_path):
    ray = pytest.importorskip("ray")
    events: dict = {}

    def crash_actor_0(run):
        # Once actor 0 has delivered episodes and the learner has published newer weights,
        # SIGKILL actor 0's worker process, as a segfault or the OOM killer would. Actor 1 is
        # frozen (SIGSTOP) until actor 0 is back: meanwhile no data reaches the learner but the
        # restarted actor's, so the update budget cannot run out first, whatever the machine's load.
        try:
            wait_for(lambda: run.actor_stats[0]["episodes"] > 0 and ray.get(run.variables.version.remote()) > 0,
                     400, "actor 0's first episodes")
            pids = [ray.get(a.__ray_call__.remote(lambda actor: os.getpid())) for a in run.actors]
            os.kill(pids[1], signal.SIGSTOP)
            try:
                events["version_at_kill"] = ray.get(run.variables.version.remote())
                events["updates_at_kill"] = run.counters["updates"]
                os.kill(pids[0], signal.SIGKILL)
                events["killed"] = True
                wait_for(lambda: run.actor_stats[0]["failures"] and run.actor_stats[0]["episodes_since_failure"],
                         400, "episodes from the restarted actor 0")
                events["version_when_back"] = run.actor_stats[0]["version"]
                events["updates_when_back"] = run.counters["updates"]
            finally:
                os.kill(pids[1], signal.SIGCONT)
        except BaseException as e:  # noqa: BLE001 - reported by the test body
            events["error"] = e

    # Online windows are sampled about twice each (12 per batch): the learner goes at the pace
    # of acting, about one update per 24 env steps.
    cfg = tiny(tmp_path / "run", demos, distributed=True, num_actors=2, actor_max_restarts=2,
               max_updates=160, max_minutes=8.0, checkpoint_every=1000, stall_timeout=60.0,
               demo_fraction=0.25, publish_every=4,
               replay={"samples_per_insert": 0.5, "error_buffer": 64.0, "min_size_to_sample": 16})
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        summary = train(cfg, on_start=lambda run: threading.Thread(target=crash_actor_0, args=(run,),
                                                                   daemon=True).start())
    finally:
        ray.shutdown()

    assert "error" not in events, events["error"]
    assert events.get("killed"), "actor 0 was never killed"
    assert summary["stopped_by"] == "max_updates" and summary["updates"] >= 160
    assert summary["actor_restarts"] == 1  # one crash, counted once
    actor0, actor1 = summary["actors"]
    assert actor0["failures"] == 1 and not actor0.get("dead") and actor1["failures"] == 0
    # The restarted actor delivered episodes before the budget ran out, acting with the weights
    # current at its restart, and kept pulling newer ones.
    assert actor0["episodes_since_failure"] > 0 and events["updates_when_back"] < 160
    assert events["version_when_back"] >= events["version_at_kill"] > 0
    assert actor0["version"] > events["version_at_kill"]
    assert actor1["episodes"] > 0
