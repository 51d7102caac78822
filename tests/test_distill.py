"""Small-to-large distillation: schedule, stage state, kickstarting objective, resume.

Tiny models only: the "generations" here are custom U-Net widths (16,32) and (32,64) with an
8-step horizon, and the transformer's tiny and small presets.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ada_curriculum import config as config_lib
from ada_curriculum.agent.objectives import SuccessWeightedBC
from ada_curriculum.checkpointing import Checkpointer, CheckpointError
from ada_curriculum.config import ConfigError
from ada_curriculum.distill import (
    DistillConfig, Kickstarting, check_generations, distance_to_teacher, init_student, kickstart_weight,
    load_teacher, save_teacher, stage, teacher_dir, with_teacher,
)
from ada_curriculum.learning import OptimConfig, create_train_state, make_optimizer, make_train_step
from ada_curriculum.policies import make_policy
from ada_curriculum.policies import normalizer as normalizer_lib
from ada_curriculum.policies.diffusion import DiffusionConfig
from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM

SMALL = DiffusionConfig(down_dims=(16, 32), horizon=8, n_action_steps=4, num_inference_steps=2)
LARGE = dataclasses.replace(SMALL, down_dims=(32, 64))
OPTIM = OptimConfig(learning_rate=3e-3, warmup_steps=1, decay_steps=1000, weight_decay=0.0)


def cfg(**kw) -> DistillConfig:
    base = dict(enabled=True, switch_every_updates=100, weight=2.0, constant_updates=10, anneal_updates=20)
    out = DistillConfig(**{**base, **kw})
    out.validate()
    return out


# -- schedule -------------------------------------------------------------------------------


def test_weight_is_constant_then_anneals_linearly_to_zero():
    c = cfg()
    got = [kickstart_weight(c, u) for u in (0, 9, 10, 15, 20, 25, 30, 31, 10_000)]
    assert got == pytest.approx([2.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.0, 0.0, 0.0])
    # Monotone non-increasing over the whole range.
    series = [kickstart_weight(c, u) for u in range(40)]
    assert all(a >= b for a, b in zip(series, series[1:]))


def test_hard_stop_drops_to_zero_at_once():
    c = cfg(schedule="hard_stop")
    assert [kickstart_weight(c, u) for u in (0, 9, 10, 11, 500)] == [2.0, 2.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="^updates_since_switch:"):
        kickstart_weight(c, -1)


@pytest.mark.parametrize("overrides, field", [
    ({"generations": ("small",)}, "generations"),
    ({"generations": ("small", "huge")}, "generations"),
    ({"generations": ("small", "base", "small")}, "generations"),
    ({"switch_every_updates": 0}, "switch_every_updates"),
    ({"switch_on_coverage": 1.5}, "switch_on_coverage"),
    ({"switch_on_coverage": 0.6}, "switch_on_coverage"),  # 2 switches x 0.6 > coverage 1
    ({"switch_every_updates": None}, "switch_every_updates"),  # enabled without any trigger
    ({"weight": -1.0}, "weight"),
    ({"weight": float("nan")}, "weight"),
    ({"constant_updates": -1}, "constant_updates"),
    ({"handover_margin": 2.0}, "handover_margin"),
    ({"schedule": "cosine"}, "schedule"),
    ({"target": "logits"}, "target"),
    ({"denoise_steps": 0}, "denoise_steps"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as e:
        DistillConfig(**{**config_lib.to_dict(cfg()), **overrides}).validate()
    assert e.value.field == field and str(e.value).startswith(field + ":") and "\n" not in str(e.value)


def test_config_round_trips_through_options_and_json():
    c = config_lib.parse_args(DistillConfig, ["--enabled", "--generations", "small,large",
                                              "--switch-on-coverage", "0.5", "--schedule", "hard_stop"])
    assert c.generations == ("small", "large") and c.switch_on_coverage == 0.5
    assert config_lib.from_dict(DistillConfig, json.loads(json.dumps(config_lib.to_dict(c)))) == c
    with pytest.raises(ConfigError, match="^weight:"):
        config_lib.from_dict(DistillConfig, {"weight": "x"})
    # The policy side: presets of the family, no size override, the run starts at generation 0.
    check_generations(DistillConfig(generations=("small", "base")), "diffusion", DiffusionConfig())
    with pytest.raises(ConfigError, match="^distill.generations:.*'tiny' is not a diffusion preset"):
        check_generations(DistillConfig(generations=("tiny", "base")), "diffusion", DiffusionConfig(preset="small"))
    with pytest.raises(ConfigError, match="^diffusion.down_dims:"):
        check_generations(DistillConfig(), "diffusion", SMALL)
    with pytest.raises(ConfigError, match="^diffusion.preset:"):
        check_generations(DistillConfig(), "diffusion", DiffusionConfig(preset="base"))


# -- stage ----------------------------------------------------------------------------------


def test_switches_on_update_count_only_after_the_handover():
    c = cfg(switch_every_updates=100)
    s = stage.init(c)
    assert stage.weight(s, c, 0) == 0.0 and stage.teacher_preset(s) is None  # generation 0: no teacher
    s = stage.on_eval(s, c, student_success=0.6, updates=80)
    s, switched = stage.on_progress(s, c, updates=99)
    assert not switched and s["generation"] == 0
    s, switched = stage.on_progress(s, c, updates=100)
    assert switched and s["generation"] == 1 and s["switch_updates"] == 100
    assert (stage.student_preset(s), stage.teacher_preset(s), stage.acting_preset(s)) == ("base", "small", "small")
    assert s["teacher_success"] == 0.6 and s["student_success"] is None  # the old student is the teacher
    assert stage.weight(s, c, 100) == 2.0 and stage.weight(s, c, 120) == pytest.approx(1.0)
    # Still acting with the teacher: no further switch however many updates pass.
    s, switched = stage.on_progress(s, c, updates=500)
    assert not switched and s["generation"] == 1
    s = stage.on_eval(s, c, student_success=0.58, updates=500)
    assert s["acting"] == "student"
    s, switched = stage.on_progress(s, c, updates=600)
    assert switched and stage.student_preset(s) == "large" and s["teacher_success"] == 0.58
    s = stage.on_eval(s, c, student_success=0.9)
    s, switched = stage.on_progress(s, c, updates=10_000)
    assert not switched and s["generation"] == 2  # the last generation stays
    with pytest.raises(ValueError, match="^updates:"):
        stage.on_progress(s, c, updates=5)  # before the current generation began


def test_switches_on_curriculum_coverage():
    c = cfg(switch_every_updates=None, switch_on_coverage=0.4)
    s = stage.init(c)
    s, switched = stage.on_progress(s, c, updates=10, coverage=0.39)
    assert not switched
    s, switched = stage.on_progress(s, c, updates=11, coverage=0.4)
    assert switched and s["generation"] == 1 and s["history"][-1]["trigger"] == "coverage"
    s = stage.on_eval(s, c, teacher_success=0.5, student_success=0.5)
    s, switched = stage.on_progress(s, c, updates=20, coverage=0.79)  # generation 2 needs 2 x 0.4
    assert not switched
    s, switched = stage.on_progress(s, c, updates=21, coverage=0.8)
    assert switched and s["generation"] == 2
    off = DistillConfig(switch_on_coverage=0.1)  # disabled: never switches
    assert stage.on_progress(stage.init(off), off, updates=10**6, coverage=1.0)[1] is False


def test_handover_when_the_student_matches_the_teacher():
    c = cfg(handover_margin=0.05)
    s, _ = stage.on_progress(stage.init(c), c, updates=100)  # teacher's success never measured
    assert stage.needs_teacher_eval(s)
    s = stage.on_eval(s, c, student_success=1.0)
    assert s["acting"] == "teacher"  # nothing to compare with yet
    s = stage.on_eval(s, c, teacher_success=0.8, student_success=0.7)
    assert s["acting"] == "teacher" and not stage.needs_teacher_eval(s)
    s = stage.on_eval(s, c, student_success=0.75)  # = 0.8 - margin
    assert s["acting"] == "student" and stage.acting_preset(s) == "base"
    assert s["history"][-1] == {"event": "handover", "generation": 1, "updates": None,
                                "teacher_success": 0.8, "student_success": 0.75}
    m = stage.metrics(s, c, 110)
    assert m["distill/acting_preset"] == "base" and m["distill/acting_student"] == 1.0
    assert m["distill/teacher_success"] == 0.8 and m["distill/student_success"] == 0.75
    assert m["distill/weight"] == 2.0 and m["distill/generation"] == 1 and m["distill/updates_since_switch"] == 10
    with pytest.raises(ValueError, match="^student_success:"):
        stage.on_eval(s, c, student_success=1.5)
    # The teacher leaves the picture once acting is handed over and the weight has annealed.
    assert stage.teacher_needed(s, c, 129) and not stage.teacher_needed(s, c, 130)


def test_state_round_trips_through_json_and_restore_refuses_another_chain():
    c = cfg()
    s = stage.on_eval(stage.init(c), c, student_success=np.float64(0.25))
    s, _ = stage.on_progress(s, c, updates=np.int64(100))
    s = stage.on_eval(s, c, student_success=0.2, updates=150)
    text = json.dumps(s)
    assert json.loads(text) == s and json.dumps(json.loads(text)) == text
    back = stage.restore(json.loads(text), c)
    assert back == s and stage.metrics(back, c, 150) == stage.metrics(s, c, 150)
    with pytest.raises(CheckpointError) as e:
        stage.restore(json.loads(text), cfg(generations=("small", "large")))
    msg = str(e.value)
    assert msg.startswith("distill.generations:") and "small,base,large" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="^distill.enabled:"):
        stage.restore(s, dataclasses.replace(c, enabled=False))
    with pytest.raises(CheckpointError, match="^distill.acting:"):
        stage.restore({**s, "acting": "nobody"}, c)
    assert stage.store_record(s, c, 150)["preset"] == "base"


# -- the kickstarting objective ---------------------------------------------------------------


def _normalizer(seed=0):
    rng = np.random.default_rng(seed)

    def side(n):
        lo = rng.uniform(-2, -0.5, n).astype(np.float32)
        return {"low": lo, "high": lo + rng.uniform(1, 3, n).astype(np.float32)}

    return {"obs": side(OBS_DIM), "action": side(ACTION_DIM)}


def _window_batch(rng, n=16, horizon=8):
    return {"obs": rng.normal(size=(n, 2, OBS_DIM)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(n, horizon, ACTION_DIM)).astype(np.float32),
            "is_demo": (np.arange(n) % 2).astype(np.float32), "success": np.ones(n, np.float32),
            "weight": np.ones(n, np.float32)}  # replay's per-window fields


def _zero_objective(policy, variables, batch, rng):
    return jnp.zeros((), jnp.float32), {}


@pytest.fixture(scope="module")
def diffusion():
    small, large = make_policy("diffusion", SMALL), make_policy("diffusion", LARGE)
    teacher = small.init(jax.random.PRNGKey(0), _normalizer())
    return small, large, teacher


def test_init_student_copies_the_teachers_normaliser(diffusion):
    small, large, teacher = diffusion
    student = init_student(large, teacher, jax.random.PRNGKey(1))
    for a, b in zip(jax.tree_util.tree_leaves(student["normalizer"]), jax.tree_util.tree_leaves(teacher["normalizer"])):
        np.testing.assert_array_equal(a, b)
        assert a is not b
    assert large.param_count(student) > small.param_count(teacher)


@pytest.mark.parametrize("target", ["noise", "action"])
def test_distance_is_zero_for_the_teacher_itself_and_positive_otherwise(diffusion, target):
    small, large, teacher = diffusion
    batch, rng = _window_batch(np.random.default_rng(0)), jax.random.PRNGKey(3)
    dist = jax.jit(functools.partial(distance_to_teacher, target=target), static_argnums=(0, 2))
    assert float(dist(small, teacher, small, teacher, batch, rng)) == pytest.approx(0.0, abs=1e-10)
    other = small.init(jax.random.PRNGKey(9), teacher["normalizer"])
    assert float(dist(small, other, small, teacher, batch, rng)) > 1e-3
    student = init_student(large, teacher, jax.random.PRNGKey(1))
    assert float(dist(large, student, small, teacher, batch, rng)) > 1e-3


def test_kickstarting_loss_adds_weight_times_distance(diffusion):
    small, _, teacher = diffusion
    objective = Kickstarting(SuccessWeightedBC(), small)
    batch, rng = _window_batch(np.random.default_rng(1)), jax.random.PRNGKey(4)
    run = jax.jit(functools.partial(objective, small))
    base = SuccessWeightedBC()(small, teacher, batch, jax.random.split(rng)[0])[0]
    # Student == teacher (same preset, same variables): the kickstarting term vanishes.
    loss, m = run(teacher, with_teacher(batch, teacher, 1.0), rng)
    assert float(m["distill/distance"]) == pytest.approx(0.0, abs=1e-10)
    assert float(loss) == pytest.approx(float(base), rel=1e-6)
    assert float(m["distill/base_loss"]) == pytest.approx(float(loss), rel=1e-7)
    other = small.init(jax.random.PRNGKey(9), teacher["normalizer"])
    loss, m = run(other, with_teacher(batch, teacher, 0.5), rng)
    d = float(m["distill/distance"])
    assert d > 1e-3 and float(m["distill/weight"]) == 0.5 and float(m["distill/active"]) == 1.0
    assert float(loss) == pytest.approx(float(m["distill/base_loss"]) + 0.5 * d, rel=1e-6)
    loss0, m0 = run(other, with_teacher(batch, teacher, 0.0), rng)  # weight 0: the teacher is not run
    assert float(m0["distill/distance"]) == 0.0 and float(m0["distill/active"]) == 0.0
    assert float(loss0) == float(m0["distill/base_loss"]) == float(m["distill/base_loss"])


def test_gradient_reaches_the_student_and_not_the_teacher(diffusion):
    small, _, teacher = diffusion
    student = small.init(jax.random.PRNGKey(1), teacher["normalizer"])
    batch, rng = _window_batch(np.random.default_rng(2)), jax.random.PRNGKey(5)

    @jax.jit
    def grads(student_params, teacher_variables):
        objective = Kickstarting(_zero_objective, small, target="action")  # the distillation term alone
        return objective(small, {"params": student_params, "normalizer": student["normalizer"]},
                         with_teacher(batch, teacher_variables, 1.0), rng)[0]

    g_student, g_teacher = jax.grad(grads, argnums=(0, 1))(student["params"], teacher)
    assert float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(g_student)))) > 0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(g_teacher))


@pytest.fixture(scope="module")
def distill_step(diffusion):
    """A jitted train step of the large student with the kickstarting term alone, counting traces."""
    small, large, _ = diffusion
    traces = []

    def base(policy, variables, batch, rng):
        traces.append(1)  # runs only while tracing
        return _zero_objective(policy, variables, batch, rng)

    opt = make_optimizer(OPTIM)
    objective = Kickstarting(base, small)
    step = jax.jit(make_train_step(functools.partial(objective, large), opt, OPTIM))
    dist = jax.jit(lambda s, t, b, r: distance_to_teacher(large, s, small, t, b, r))
    return step, dist, opt, traces


def test_student_moves_towards_the_teacher(diffusion, distill_step):
    _, large, teacher = diffusion
    step, dist, opt, traces = distill_step
    state = create_train_state(init_student(large, teacher, jax.random.PRNGKey(1)), opt, jax.random.PRNGKey(2))
    rng = np.random.default_rng(0)
    held_out, eval_rng = _window_batch(np.random.default_rng(123), n=32), jax.random.PRNGKey(77)
    before = float(dist(state.variables, teacher, held_out, eval_rng))
    for i in range(50):
        # A new weight every update: traced, so no recompilation.
        state, m = step(state, with_teacher(_window_batch(rng), teacher, 1.0 - i / 100))
    after = float(dist(state.variables, teacher, held_out, eval_rng))
    assert after < 0.6 * before, (before, after)
    assert int(state.step) == 50 and int(state.skip_count) == 0
    assert len(traces) == 1


def test_resume_mid_distillation_gives_the_same_weight_and_next_loss(diffusion, distill_step, tmp_path):
    small, large, teacher = diffusion
    step, _, opt, _ = distill_step
    c = cfg(constant_updates=3, anneal_updates=10)
    # Generation 0 ran 40 updates; then the switch: snapshot the teacher, start the student.
    s, switched = stage.on_progress(stage.init(c), c, updates=100)
    assert switched
    # A switch redone after a crash overwrites the earlier snapshot: the loss below uses the second.
    stale = small.init(jax.random.PRNGKey(9), teacher["normalizer"])
    save_teacher(teacher_dir(tmp_path, s), stale, {"preset": "small", "generation": 0, "updates": 90})
    save_teacher(teacher_dir(tmp_path, s), teacher, {"preset": "small", "generation": 0, "updates": 100})
    state = create_train_state(init_student(large, teacher, jax.random.PRNGKey(1)), opt, jax.random.PRNGKey(2))
    rng = np.random.default_rng(5)
    for _ in range(6):
        updates = s["switch_updates"] + int(state.step)
        state, _ = step(state, with_teacher(_window_batch(rng), teacher, stage.weight(s, c, updates)))
    updates = s["switch_updates"] + int(state.step)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        ckpt.save(updates, state, {"distill": s, "counters": {"updates": updates}})
    finally:
        ckpt.close()

    # A new process: the student's template, the stage from the meta, the teacher from its snapshot.
    template = create_train_state(large.init(jax.random.PRNGKey(0), normalizer_lib.identity(OBS_DIM, ACTION_DIM)),
                                  opt, jax.random.PRNGKey(0))
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        restored, meta, at = ckpt.restore(template)
    finally:
        ckpt.close()
    s2 = stage.restore(meta["distill"], c)
    teacher2, teacher_meta = load_teacher(teacher_dir(tmp_path, s2), small)
    assert at == updates == meta["counters"]["updates"] and s2 == s and teacher_meta["updates"] == 100
    w = stage.weight(s, c, updates)
    assert 0 < w < c.weight and stage.weight(s2, c, at) == w  # mid-anneal
    batch = _window_batch(np.random.default_rng(9))
    _, m1 = step(state, with_teacher(batch, teacher, w))
    _, m2 = step(restored, with_teacher(batch, teacher2, stage.weight(s2, c, at)))
    assert float(m1["loss"]) == float(m2["loss"]) > 0
    assert float(m1["distill/distance"]) == float(m2["distill/distance"])
    with pytest.raises(CheckpointError, match="^distill.teacher:"):
        load_teacher(teacher_dir(tmp_path, s2), large)  # a snapshot of another size


# -- the transformer ------------------------------------------------------------------------


def _sequence_batch(rng, n=4, t=6, k=8):
    mask = np.ones((n, t), bool)
    mask[0, 4:] = False
    return {"obs": rng.normal(size=(n, t, OBS_DIM)).astype(np.float32),
            "prev_action": rng.uniform(-1, 1, (n, t, ACTION_DIM)).astype(np.float32),
            "trial_index": np.zeros((n, t), np.int32), "mask": mask,
            "action": rng.uniform(-1, 1, (n, t, k, ACTION_DIM)).astype(np.float32),
            "action_mask": np.ones((n, t, k), bool)}


def test_transformer_distance_to_its_action_outputs():
    tiny, small = make_policy("transformer", preset="tiny"), make_policy("transformer", preset="small")
    teacher = tiny.init(jax.random.PRNGKey(0), _normalizer())
    student = init_student(small, teacher, jax.random.PRNGKey(1))
    batch, rng = _sequence_batch(np.random.default_rng(0)), jax.random.PRNGKey(2)
    objective = Kickstarting(lambda p, v, b, r: p.loss(v, b, r), tiny)
    _, m = jax.jit(functools.partial(objective, tiny))(teacher, with_teacher(batch, teacher, 1.0), rng)
    assert float(m["distill/distance"]) == pytest.approx(0.0, abs=1e-10)

    def loss(params, teacher_variables):
        return objective(small, {"params": params, "normalizer": student["normalizer"]},
                         with_teacher(batch, teacher_variables, 1.0), rng)

    (value, m), (g_student, g_teacher) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        student["params"], teacher)
    assert float(m["distill/distance"]) > 1e-3
    assert float(value) == pytest.approx(float(m["distill/base_loss"]) + float(m["distill/distance"]),
                                         rel=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(g_student))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(g_teacher))
