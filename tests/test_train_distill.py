"""`train --distill.enabled`: a real run grows its model (real Reverb, MuJoCo, Orbax, SQLite;
tiny generations: U-Net widths 16x32 then 32x64), kickstarts the student, hands acting over,
checkpoints the stage and resumes it."""

import shutil

import pytest

from ada_curriculum import config as config_lib
from ada_curriculum.checkpointing import Checkpointer, CheckpointError
from ada_curriculum.cli import main
from ada_curriculum.distill import DistillConfig, kickstart_weight
from ada_curriculum.metrics_store import MetricsReader
from ada_curriculum.train import train
from test_train import rows_all, tiny

# Switch at update 8; weight 2 for 4 updates, then linearly to 0 over 8 (0 from update 20).
DISTILL = {"enabled": True, "generations": ["small", "base"], "down_dims": ["16x32", "32x64"],
           "switch_every_updates": 8, "weight": 2.0, "constant_updates": 4, "anneal_updates": 8}



def distilled(run, demos, **kw):
    # 16 steps per actor call finish 15-step episodes at once: the learner never waits for data.
    kw = {"distributed": False, "eval_every": 8, "eval_episodes": 2, "actor_steps_per_call": 16, **kw,
          "distill": {**DISTILL, **kw.get("distill", {})}}
    return tiny(run, demos, **kw)


def learner_rows(run):
    return [r for r in rows_all(run) if r.get("kind") != "eval"]


def mean_weight(first_update, n=4, switch=8):
    cfg = config_lib.from_dict(DistillConfig, DISTILL)
    return sum(kickstart_weight(cfg, u - switch) for u in range(first_update, first_update + n)) / n


def meta_of(run, step=None):
    ckpt = Checkpointer(run / "checkpoints")
    try:
        return ckpt.read_meta(step)
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def switched(demos, tmp_path_factory):
    """16 updates: generation 0 (16x32) to 8, then the 32x64 student kickstarted by it."""
    run = tmp_path_factory.mktemp("distill") / "run"
    seen = {}
    summary = train(distilled(run, demos, max_updates=16), on_start=lambda r: seen.update(run=r))
    return {"run": run, "summary": summary, "live": seen["run"]}


def test_switch_kickstarting_schedule_and_handover(switched):
    run, summary, live = switched["run"], switched["summary"], switched["live"]
    assert summary["stopped_by"] == "max_updates" and summary["updates"] == 16
    rows = {r["updates"]: r for r in learner_rows(run)}
    # Generation 0 trains alone; the student's updates 8-11 are at the full weight, 12-15 anneal.
    assert "distill/active" not in rows[8] and rows[8]["distill/generation"] == 0 and rows[8]["distill/weight"] == 0
    assert rows[12]["distill/generation"] == 1 and rows[16]["distill/generation"] == 1
    assert rows[12]["distill/weight"] == pytest.approx(mean_weight(8)) == pytest.approx(2.0)
    assert rows[16]["distill/weight"] == pytest.approx(mean_weight(12)) == pytest.approx(1.625)
    assert rows[12]["distill/distance"] > 0 and rows[16]["distill/distance"] > 0
    assert rows[12]["loss"] > rows[12]["distill/base_loss"]  # the kickstarting term is in the loss

    d = summary["distillation"]
    assert d["distill/params"] > d["distill/teacher_params"] > 0  # the student is the larger model
    history = d["history"]
    assert {k: history[0][k] for k in ("event", "generation", "updates", "trigger")} == \
        {"event": "switch", "generation": 1, "updates": 8, "trigger": "updates"}
    # Both tiny models fail every held-out episode: the student "matches" its teacher at once.
    assert history[1]["event"] == "handover" and history[1]["updates"] == 8
    assert d["distill/acting"] == "student" and d["distill/acting_preset"] == "base"
    assert (run / "distill" / "teacher-0-small").is_dir() and d["teacher_path"].endswith("teacher-0-small")

    # The actors act with the student's architecture after the handover.
    actor = live.actors[0]
    assert actor.generation == 1 and actor.policy.config.down_dims == (32, 64) and actor.version >= 12
    assert summary["actors"][0]["generation"] == 1

    # The checkpoint before the handover names the teacher as acting; the last one the student.
    first, last = meta_of(run, 8), meta_of(run, 16)
    assert first["distill"]["generation"] == 1 and first["distill"]["acting"] == "teacher"
    assert first["distill_generation"]["down_dims"] == [32, 64] and first["distill_generation"]["teacher"]
    assert last["distill"]["acting"] == "student" and last["distill"]["history"] == history

    with MetricsReader(run) as r:
        stages = r.distillation()
        names = set(r.scalar_names())
        evals = r.evaluations()
    assert {"distill/weight", "distill/distance", "distill/generation", "distill/acting_student"} <= names
    assert [s["generation"] for s in stages][:2] == [0, 0] and stages[-1]["generation"] == 1
    last_stage = stages[-1]
    assert last_stage["preset"] == "base" and last_stage["params"] == d["distill/params"]
    assert last_stage["extra"]["teacher_params"] == d["distill/teacher_params"]
    assert last_stage["extra"]["acting"] == "student" and last_stage["weight"] == pytest.approx(1.0)
    assert any(s["distance_to_teacher"] for s in stages if s["generation"] == 1)
    assert any(s["teacher_success"] == 0 and s["student_success"] == 0 for s in stages if s["generation"] == 1)
    # The run's evaluations are the trained model's: the student's from the switch on.
    assert [e["step"] for e in evals] == [4, 8, 16]


def test_resume_mid_distillation_continues_stage_and_schedule(switched, demos, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(switched["run"], run)
    teacher = run / "distill" / "teacher-0-small"
    stamp = sorted((p.name, p.stat().st_mtime_ns) for p in teacher.rglob("*"))
    saved = meta_of(run)["distill"]
    capsys.readouterr()
    seen = {}
    summary = train(distilled(run, demos, max_updates=24), on_start=lambda r: seen.update(run=r))
    out = capsys.readouterr().out
    assert "resuming distillation at generation 1 (base, teacher small" in out
    assert "kickstarting weight 1 at update 16 (switched at 8), actors act with the student" in out

    rows = {r["updates"]: r for r in learner_rows(run)}
    # The anneal goes on from where the checkpoint left it; from update 20 the teacher is out of the loss.
    assert rows[20]["distill/weight"] == pytest.approx(mean_weight(16)) == pytest.approx(0.625)
    assert rows[20]["distill/distance"] > 0
    assert "distill/active" not in rows[24] and rows[24]["distill/weight"] == 0
    now = meta_of(run)["distill"]
    assert now == saved  # same generation, same switch, same history: nothing was redone
    assert sorted((p.name, p.stat().st_mtime_ns) for p in teacher.rglob("*")) == stamp
    actor = seen["run"].actors[0]
    assert actor.generation == 1 and actor.policy.config.down_dims == (32, 64)  # from the first step
    assert summary["distillation"]["distill/generation"] == 1


def test_incompatible_distill_config_is_refused(switched, demos, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(switched["run"], run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    config = (run / "config.json").read_text()
    with pytest.raises(CheckpointError, match=r"^distill\.generations: the checkpoint was made with small,base"):
        train(distilled(run, demos, max_updates=24, distill={"generations": ["small", "large"]}))
    with pytest.raises(CheckpointError, match=r"^distill\.down_dims: the checkpoint was made with 16x32,32x64"):
        train(distilled(run, demos, max_updates=24, distill={"down_dims": ["16x32", "48x64"]}))
    with pytest.raises(CheckpointError, match=r"^distill\.enabled: the checkpoint is at generation 1"):
        train(tiny(run, demos, distributed=False, max_updates=24))
    # The command line: one line naming the field, exit 2.
    capsys.readouterr()
    argv = ["train", "--run", str(run), "--demos", demos, "--time-limit", "15", "--diffusion.down-dims", "16,32",
            "--diffusion.num-inference-steps", "2", "--eval-every", "8", "--no-dashboard", "--distill", "--distill.generations", "small,large",
            "--distill.down-dims", "16x32,32x64", "--distill.switch-every-updates", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: distill.generations: the checkpoint was made with")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert (run / "config.json").read_text() == config


@pytest.mark.parametrize("overrides, field", [
    ({"eval_every": 0}, "distill.enabled"),
    ({"distill": {"down_dims": ["16x32"]}}, "distill.down_dims"),
    ({"distill": {"down_dims": ["16x32", "20x40"]}}, "distill.down_dims"),  # not a multiple of 8 groups
    ({"diffusion": {"down_dims": [32, 64]}}, "diffusion.down_dims"),
    ({"distill": {"generations": ["small", "tiny"]}}, "distill.generations"),
    ({"distill": {"switch_every_updates": None, "switch_on_coverage": 0.5}}, "distill.switch_on_coverage"),
    ({"distill": {"handover_margin": 1.5}}, "distill.handover_margin"),
])
def test_bad_distill_settings_name_the_field(demos, tmp_path, overrides, field):
    kw = {"distributed": False, "eval_every": 8, "diffusion": {"down_dims": [16, 32], "num_inference_steps": 2},
          **overrides, "distill": {**DISTILL, **overrides.get("distill", {})}}
    with pytest.raises(ValueError) as e:
        tiny(tmp_path / "run", demos, **kw).validate()
    assert str(e.value).startswith(field + ":") and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_no_handover_while_the_student_is_worse_than_the_margin_allows(demos, tmp_path):
    # A negative margin asks the student to beat its teacher: with both at 0 success it never does.
    run = tmp_path / "run"
    seen = {}
    summary = train(distilled(run, demos, max_updates=12, distill={"handover_margin": -0.5}),
                    on_start=lambda r: seen.update(run=r))
    d = summary["distillation"]
    assert [h["event"] for h in d["history"]] == ["switch"]
    assert d["distill/acting"] == "teacher" and d["distill/generation"] == 1
    rows = {r["updates"]: r for r in learner_rows(run)}
    assert rows[12]["distill/weight"] == pytest.approx(2.0) and rows[12]["distill/acting_student"] == 0
    actor = seen["run"].actors[0]
    assert actor.generation == 0 and actor.policy.config.down_dims == (16, 32)  # still the teacher
    assert meta_of(run)["distill"]["acting"] == "teacher"
    # The student was evaluated on its own (the teacher's success came with it from generation 0).
    evals = [r for r in rows_all(run) if r.get("kind") == "eval"]
    assert evals[-1]["eval/name"] == "student" and evals[-1]["eval/generation"] == 1


def test_distillation_on_ray_through_the_same_builder(demos, tmp_path):
    ray = pytest.importorskip("ray")
    run = tmp_path / "run"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        summary = train(distilled(run, demos, distributed=True, max_updates=12))
    finally:
        ray.shutdown()
    assert summary["stopped_by"] == "max_updates"
    d = summary["distillation"]
    assert d["distill/generation"] == 1 and d["history"][0]["event"] == "switch"
    assert (run / "distill" / "teacher-0-small").is_dir()
    kickstarted = [r for r in learner_rows(run) if r.get("distill/active")]
    assert kickstarted and all(r["distill/distance"] > 0 and r["distill/weight"] > 0 for r in kickstarted)
    # The evaluation started at the switch is waited for at the end: its handover is in the last checkpoint.
    meta = meta_of(run)
    assert meta["distill"]["acting"] == "student" and meta["distill_generation"]["down_dims"] == [32, 64]


def test_eval_loads_the_generation_a_distilled_run_checkpointed(switched, tmp_path):
    from ada_curriculum.cli import EvalConfig, evaluate_run
    from ada_curriculum.pretrain import load_policy

    run = switched["run"]
    policy, variables, _, step = load_policy(run)
    assert step == 16 and tuple(policy.config.model_kwargs()["down_dims"]) == (32, 64)  # the student
    summary = evaluate_run(EvalConfig(checkpoint=str(run), episodes=1, num_envs=1, time_limit=5,
                                      out=str(tmp_path / "eval")))
    assert summary["step"] == 16 and summary["episodes"] == 1


def test_curriculum_coverage_triggers_the_switch_in_a_run(demos, tmp_path):
    # Widening as a schedule (threshold 0) over banana x/y: coverage grows within a few episodes,
    # and the switch follows the first learner result whose coverage reaches the trigger.
    run = tmp_path / "run"
    curriculum = {"strategy": "widening", "widening": {"dims": ["banana_x", "banana_y"], "window": 2,
                                                       "threshold": 0.0, "boundary_prob": 1.0}}
    summary = train(distilled(run, demos, tasks="full", curriculum=curriculum, max_updates=12,
                              distill={"switch_every_updates": None, "switch_on_coverage": 0.01}))
    switch = summary["distillation"]["history"][0]
    assert switch["event"] == "switch" and switch["trigger"] == "coverage"
    rows = {r["updates"]: r for r in learner_rows(run)}
    before = [u for u in rows if u < switch["updates"]]
    # The learner rows before the switch had coverage below the trigger, and no kickstarting.
    assert all(rows[u]["curriculum/coverage"] < 0.01 and not rows[u].get("distill/active") for u in before)
    assert summary["curriculum"]["curriculum/coverage"] >= 0.01 and summary["distillation"]["distill/generation"] == 1


def test_a_success_critic_carries_over_the_switch(demos, tmp_path):
    # The student gets a fresh denoiser of its own size and the teacher's critic; both act with
    # best-of-2 candidates, and the student's critic keeps learning after the switch.
    import jax
    import numpy as np

    from ada_curriculum.distill import init_student, load_teacher, policy_at

    critic = {"down_dims": [16, 32], "num_inference_steps": 2, "critic_hidden": 16, "num_candidates": 2}
    run = tmp_path / "run"
    summary = train(distilled(run, demos, max_updates=12, diffusion=critic))
    assert summary["stopped_by"] == "max_updates" and summary["distillation"]["distill/generation"] == 1
    after = [r for r in learner_rows(run) if r["updates"] > 8]
    assert after and all(np.isfinite(r["critic_bce"]) and r["distill/distance"] >= 0 for r in after)

    cfg = config_lib.from_dict(DistillConfig, DISTILL)
    run_cfg = distilled(run, demos, diffusion=critic)
    teacher_policy, student_policy = (policy_at(cfg, "diffusion", run_cfg.diffusion, g) for g in (0, 1))
    teacher, _ = load_teacher(run / "distill" / "teacher-0-small", teacher_policy)
    assert set(teacher["params"]) == {"denoiser", "critic"}
    student = init_student(student_policy, teacher, jax.random.PRNGKey(1))
    leaves = lambda tree: [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(leaves(student["params"]["critic"]),
                                                     leaves(teacher["params"]["critic"])))
    size = lambda p: sum(x.size for x in leaves(p))  # noqa: E731
    assert size(student["params"]["denoiser"]) > 2 * size(teacher["params"]["denoiser"])  # a fresh, larger one

    # The checkpointed student holds its own critic, which learned past the teacher's.
    from ada_curriculum.pretrain import load_policy

    policy, variables, _, _ = load_policy(run)
    assert policy.has_critic and policy.config.down_dims == (32, 64)
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(variables["params"]["critic"]),
                                                         leaves(teacher["params"]["critic"])))

