"""`train` feeds the dashboard: the metrics store of a short real run (real Reverb, MuJoCo,
SQLite; tiny models), what a resume drops, and how `train` starts its dashboard."""

import shutil
import socket
import time

import pytest

import envs
from ada_curriculum import config as config_lib
from ada_curriculum.agent.task_source import TaskSource
from ada_curriculum.config import ConfigError
from ada_curriculum.curriculum.metrics import success_grids
from ada_curriculum.metrics_store import MetricsReader
from ada_curriculum.train import TrainConfig, _start_dashboard, train
from conftest import REAL_RUN_DISTILL
from test_train import tiny

CURVES = ("loss", "grad_norm", "clipped", "clip_count", "learner/updates_per_s", "actors/env_steps_per_s",
          "actor/0/env_steps_per_s", "success/recent", "actors/restarts", "curriculum/stage", "curriculum/coverage",
          "eval/success_rate", *(f"replay/{t}/{k}" for t in ("demo", "online")
                                 for k in ("size", "max_size", "inserts_per_s", "samples_per_s")))



def steps_of(reader, name):
    return [p[0] for p in reader.scalars([name])[name]]


def test_a_real_run_writes_every_kind_of_record(real_run):
    run, summary, served = real_run["run"], real_run["summary"], real_run["served"]
    assert summary["stopped_by"] == "max_updates" and summary["updates"] == 12
    # train served its own dashboard over the live store while it ran.
    assert served["status"] == 200 and served["body"]["live"] is True

    with MetricsReader(run) as r:
        assert not r.is_live()  # closed cleanly
        assert set(CURVES) <= set(r.scalar_names())
        latest = {k: v["value"] for k, v in r.latest_scalars().items()}
        # One row per learner result, at its update; the rates are measured, not placeholders.
        assert steps_of(r, "loss") == [4, 8, 12]
        assert latest["learner/updates_per_s"] > 0 and latest["replay/online/samples_per_s"] > 0
        assert max(p[2] for p in r.scalars(["actors/env_steps_per_s"])["actors/env_steps_per_s"]) > 0
        assert latest["replay/online/size"] == summary["replay"]["online"]["size"]
        assert latest["clip_count"] == 0 and latest["actors/restarts"] == 0

        health = r.health()[-1]
        assert (health["step"], health["actors_alive"], health["actors_total"]) == (12, 1, 1)
        assert health["last_checkpoint_step"] == 12 and health["last_checkpoint_time"] is not None
        assert health["replay"]["online"]["size"] == summary["replay"]["online"]["size"]
        assert health["actors"][0]["episodes"] == summary["episodes"]

        snapshots = r.curriculum()
        assert len(snapshots) >= 3 and snapshots[-1]["step"] == 12
        latest_c = snapshots[-1]
        assert latest_c["stage"] == summary["curriculum"]["curriculum/stage"] >= 1
        assert set(latest_c["bounds"]) == set(envs.FULL.names)
        b = latest_c["bounds"]
        assert (b["banana_x"]["full_lo"], b["banana_x"]["full_hi"]) == (envs.FULL["banana_x"].low,
                                                                        envs.FULL["banana_x"].high)
        # Widened from the nominal task, not yet to the whole range.
        assert any(b[d]["lo"] < b[d]["hi"] for d in ("banana_x", "banana_y"))
        assert all(b[d]["full_lo"] <= b[d]["lo"] <= b[d]["hi"] <= b[d]["full_hi"]
                   and b[d]["hi"] - b[d]["lo"] < b[d]["full_hi"] - b[d]["full_lo"] for d in ("banana_x", "banana_y"))
        grids = latest_c["bins"]
        assert set(grids) == {"banana", "target"}
        for grid in grids.values():
            assert len(grid["counts"]) == 3 and len(grid["counts"][0]) == 3
            total = sum(map(sum, grid["episodes"]))
            assert total == summary["curriculum"]["curriculum/episodes"] > 0
            assert all(s <= n for row_s, row_n in zip(grid["successes"], grid["counts"]) for s, n in zip(row_s, row_n))

        # Evaluations are recorded at the version of the weights they ran: the first one starts
        # with the first learner result (update 4), the next 8 updates later; a video inside the run.
        evals = r.evaluations()
        assert [e["step"] for e in evals] == [4, 12]
        last = evals[-1]
        assert last["episodes"] == 2 and last["success_per_trial"] and last["per_bin"]
        assert len(last["videos"]) == 1 and last["videos"][0].startswith("videos/")
        assert (run / last["videos"][0]).is_file()

        # Policy embeddings at the first learner result and each 8 updates (the end's weights are
        # update 12's, already taken): 4 probes per banana region.
        assert r.embedding_steps() == [4, 12]
        emb = r.embedding()
        labels = [p["label"] for p in emb["points"]]
        assert len(labels) == 36 and len(set(labels)) == 9 and labels.count("banana far left") == 4
        assert emb["method"] == "pca" and 0 < sum(emb["explained"]) <= 1 + 1e-9

        # Distillation: generation 0 to update 4, then the larger student, kickstarted, evaluated
        # beside its teacher (same held-out episodes) and handed acting at once (both fail all).
        stages = r.distillation()
        assert stages[0]["generation"] == 0 and stages[-1]["generation"] == 1 and stages[-1]["step"] == 12
        assert stages[-1]["preset"] == "base" and stages[-1]["params"] > stages[-1]["extra"]["teacher_params"]
        assert stages[-1]["extra"]["acting"] == "student"
        assert all(s["distance_to_teacher"] > 0 for s in stages if s["step"] in (8, 12) and s["generation"] == 1)
        assert any(s["teacher_success"] == 0.0 and s["student_success"] == 0.0 for s in stages)
        weights = {p[0]: p[2] for p in r.scalars(["distill/weight"])["distill/weight"]}
        assert weights == {4: 0.0, 8: 1.0, 12: pytest.approx(0.625)}
        assert {p[0] for p in r.scalars(["distill/distance"])["distill/distance"]} == {8, 12}
    d = summary["distillation"]
    assert [h["event"] for h in d["history"]] == ["switch", "handover"] and d["distill/generation"] == 1

    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "loss" in (run / "metrics.jsonl").read_text()  # the JSON lines log is still written


def test_a_resume_drops_rows_after_the_restored_checkpoint(real_run, demos, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_run["run"], run)
    # Lose the newest checkpoint (12): the resume restarts from 8, so the rows the first run wrote
    # for updates 9-12 describe updates that are redone and must go.
    shutil.rmtree(run / "checkpoints" / "12")
    with MetricsReader(run) as r:
        assert r.last_step() == 12 and 12 in r.embedding_steps()
        created = r.meta()["created_at"]

    seen = {}
    seen_at = time.time()

    def on_start(_):
        with MetricsReader(run) as r:
            seen.update(last_step=r.last_step(), loss=steps_of(r, "loss"), embeddings=r.embedding_steps(),
                        evals=[e["step"] for e in r.evaluations()])

    curriculum = {"strategy": "widening", "widening": {"dims": ["banana_x", "banana_y"], "window": 2,
                                                       "threshold": 0.0, "boundary_prob": 1.0}}
    summary = train(tiny(run, demos, distributed=False, tasks="full", curriculum=curriculum, actor_steps_per_call=16,
                         max_updates=12, checkpoint_every=8, eval_every=8, eval_episodes=2,
                         distill=REAL_RUN_DISTILL), on_start=on_start)
    assert summary["updates"] == 12
    assert seen == {"last_step": 8, "loss": [4, 8], "embeddings": [4], "evals": [4]}
    with MetricsReader(run) as r:
        assert steps_of(r, "loss") == [4, 8, 12]  # continued from the checkpoint, no update twice
        assert r.meta()["created_at"] == created  # the same store, appended to
        assert r.health()[-1]["last_checkpoint_step"] == 12
        assert r.health()[-1]["wall_time"] > seen_at


def test_train_dashboard_port_fallback_and_bad_settings(tmp_path):
    cfg = lambda **kw: config_lib.from_dict(TrainConfig, {"run": str(tmp_path), "demo_fraction": 0.0, **kw})  # noqa: E731
    assert _start_dashboard(cfg(dashboard=False)) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = _start_dashboard(cfg(dashboard_port=port))
        try:
            assert server.server_address[1] not in (0, port)  # another run has the port: any free one
        finally:
            server.close()
    with pytest.raises(ConfigError, match="^dashboard_host: cannot bind"):
        _start_dashboard(cfg(dashboard_host="no-such-host.invalid"))
    with pytest.raises(ConfigError, match="^dashboard_port: "):
        cfg(dashboard_port=70000)
    with pytest.raises(ConfigError, match="^dashboard_host: "):
        cfg(dashboard_host=" ").validate()
    with pytest.raises(ConfigError, match="^metrics.snapshot_interval: "):
        cfg(metrics={"snapshot_interval": -1})


def test_success_grids_put_banana_and_target_bins_in_the_store_layout():
    src = TaskSource("full")
    task = dict(envs.NOMINAL.to_dict(), banana_x=0.4, banana_y=-0.2, target_x=0.6, target_y=0.2)
    src.report([{"task": task, "success": True, "version": 0}, {"task": task, "success": False, "version": 0}])
    grids = success_grids(src.metrics())
    banana, target = grids["banana"], grids["target"]
    # Rows by y bin, columns by x bin: banana (x bin 0, y bin 0), target (x bin 2, y bin 2).
    assert banana["counts"][0][0] == 2 and banana["successes"][0][0] == 1 and sum(map(sum, banana["counts"])) == 2
    assert target["counts"][2][2] == 2 and target["episodes"][2][2] == 2
    assert banana["x_edges"][0] == envs.FULL["banana_x"].low and len(banana["y_edges"]) == 4

