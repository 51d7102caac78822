"""The success critic and value-guided acting: the chosen chunk is the critic's best candidate,
the critic learns from episode success without touching the denoiser, configs that cannot work
are refused, and a real `train --init BC_RUN` run carries a critic through resume and eval."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ada_curriculum.learning import OptimConfig, create_train_state, make_optimizer, make_train_step
from ada_curriculum.policies import normalizer
from ada_curriculum.policies.critic import critic_head_logits, critic_logits
from ada_curriculum.policies.diffusion import DiffusionConfig, DiffusionPolicy, consensus_gripper
from ada_curriculum.policies.obs import binarize_gripper

POLICY = DiffusionPolicy(DiffusionConfig(down_dims=(16, 32), critic_hidden=32, num_candidates=5, eta=1.0))
ENSEMBLE = DiffusionPolicy(DiffusionConfig(down_dims=(16, 32), critic_hidden=32, num_candidates=5, eta=1.0,
                                           critic_ensemble=4, critic_pessimism=2.0))


def _variables(policy=POLICY, seed=0):
    return policy.init(jax.random.PRNGKey(seed), normalizer.identity(policy.obs_dim, policy.action_dim))


def _learned(variables, seed=3, policy=POLICY):
    """The variables with a critic that rates candidates differently: a random output layer in
    place of the zero one a fresh critic starts with."""
    critic = dict(variables["params"]["critic"])
    last = f"Dense_{policy.config.critic_layers}"
    kernel = critic[last]["kernel"]
    critic[last] = {**critic[last], "kernel": jax.random.normal(jax.random.PRNGKey(seed), kernel.shape)}
    return {**variables, "params": {**variables["params"], "critic": critic}}


def _candidates(variables, obs, rng, n):
    """The N candidates per row that `predict_action` draws with `rng`, and the critic's logits."""
    rep = jnp.repeat(obs, n, axis=0)
    cands = binarize_gripper(POLICY.executed_chunk(POLICY.sample_horizon(variables, {"obs": rep}, rng)))
    logits = np.asarray(critic_logits(POLICY.critic, variables["params"]["critic"], variables["normalizer"],
                                      rep, cands)).reshape(obs.shape[0], n)
    return np.asarray(cands).reshape(obs.shape[0], n, *cands.shape[1:]), logits


def test_predict_action_executes_the_critics_best_of_n_candidates():
    variables = _learned(_variables())
    obs = jax.random.uniform(jax.random.PRNGKey(1), (3, POLICY.n_obs_steps, POLICY.obs_dim), minval=-1, maxval=1)
    rng = jax.random.PRNGKey(2)
    chosen = np.asarray(POLICY.predict_action(variables, {"obs": obs}, rng))

    # The same draw by hand: 5 candidates per row, rated by the critic.
    cands, logits = _candidates(variables, obs, rng, 5)
    assert chosen.shape == (3, POLICY.n_action_steps, POLICY.action_dim)
    for row in range(3):
        assert np.ptp(logits[row]) > 0  # the candidates differ, so the choice is a real one
        assert np.allclose(chosen[row], cands[row, np.argmax(logits[row])])
    # One candidate is plain sampling from the denoiser.
    plain = POLICY.predict_action(variables, {"obs": obs}, rng, num_candidates=1)
    assert plain.shape == chosen.shape


def test_a_fresh_critic_rates_every_candidate_alike_so_acting_executes_a_plain_sample():
    # A random head would prefer arbitrary chunks before it has seen a single label (on the
    # nominal task that cut the BC start's success from 0.39 to 0.10-0.18); a zero head chooses none.
    variables = _variables()
    obs = jax.random.uniform(jax.random.PRNGKey(1), (3, POLICY.n_obs_steps, POLICY.obs_dim), minval=-1, maxval=1)
    rng = jax.random.PRNGKey(2)
    chosen = np.asarray(POLICY.predict_action(variables, {"obs": obs}, rng))
    cands, logits = _candidates(variables, obs, rng, 5)
    assert np.all(logits == 0)
    assert np.ptp(cands, axis=1).max() > 0  # the candidates differ: the first is a choice, not the only one
    np.testing.assert_allclose(chosen, cands[:, 0])


@pytest.mark.parametrize("policy", [POLICY, ENSEMBLE], ids=["one", "ensemble"])
def test_critic_learns_success_from_its_own_windows_and_leaves_the_denoiser_alone(policy):
    POLICY = policy  # noqa: N806 (the body reads as for the single critic)
    variables = _variables(policy)
    rng = np.random.default_rng(0)
    b = 64

    def batch():
        action = rng.uniform(-1, 1, (b, POLICY.horizon, POLICY.action_dim)).astype(np.float32)
        # "Success" is decided by the executed chunk: its first action's first component.
        label = (POLICY.executed_chunk(action)[:, 0, 0] > 0).astype(np.float32)
        return {"obs": rng.uniform(-1, 1, (b, POLICY.n_obs_steps, POLICY.obs_dim)).astype(np.float32),
                "action": action, "weight": np.ones(b, np.float32), "critic_label": label,
                "critic_mask": np.ones(b, np.float32)}

    # Each part's loss reaches only its own params.
    first = batch()
    grads = jax.grad(lambda p: POLICY.loss({**variables, "params": p}, {**first, "weight": np.zeros(b)},
                                           jax.random.PRNGKey(0))[0])(variables["params"])
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["denoiser"]))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads["critic"]))
    grads = jax.grad(lambda p: POLICY.loss({**variables, "params": p}, {**first, "critic_mask": np.zeros(b)},
                                           jax.random.PRNGKey(0))[0])(variables["params"])
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["critic"]))

    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=1, critic_learning_rate=3e-3)
    optimizer = make_optimizer(cfg, critic=True)
    step = jax.jit(make_train_step(POLICY, optimizer, cfg))
    state = create_train_state(variables, optimizer, jax.random.PRNGKey(0))
    _, before = step(state, first)
    for _ in range(150):
        state, metrics = step(state, batch())
    assert float(before["critic_accuracy"]) < 0.75
    assert float(metrics["critic_accuracy"]) > 0.9 and float(metrics["critic_bce"]) < 0.3
    if policy.config.critic_ensemble > 1:
        # Every network learned (each alone is accurate), and they learned differently.
        b = batch()
        heads = np.asarray(critic_head_logits(policy.critic, state.params["critic"], variables["normalizer"],
                                              b["obs"], policy.executed_chunk(b["action"])))
        assert heads.shape == (4, 64) and float(metrics["critic_spread"]) > 0
        assert all(((h > 0) == (b["critic_label"] > 0.5)).mean() > 0.85 for h in heads)


def test_consensus_gripper_gives_every_candidate_its_rows_majority_and_keeps_the_motion():
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, (2 * 4, 3, 5)).astype(np.float32)
    # Row 0: 3 of 4 candidates close at step 0; a 2-2 tie at step 1; all open at step 2.
    grip = np.array([[[1, 1, -1], [1, -1, -1], [1, 1, -1], [-1, -1, -1]],
                     [[-1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, 1, 1]]], np.float32)
    chunks[..., 4] = grip.reshape(8, 3)
    out = np.asarray(consensus_gripper(jnp.asarray(chunks), 4))
    np.testing.assert_array_equal(out[..., :4], chunks[..., :4])
    np.testing.assert_array_equal(out[:4, :, 4], np.tile([1, -1, -1], (4, 1)))
    np.testing.assert_array_equal(out[4:, :, 4], np.tile([-1, 1, 1], (4, 1)))


def test_with_a_consensus_gripper_the_critic_chooses_the_motion_only():
    policy = DiffusionPolicy(dataclasses.replace(POLICY.config, candidate_gripper="consensus"))
    variables = _learned(_variables(policy), policy=policy)
    obs = jax.random.uniform(jax.random.PRNGKey(1), (6, policy.n_obs_steps, policy.obs_dim), minval=-1, maxval=1)
    rng = jax.random.PRNGKey(2)
    chosen = np.asarray(policy.predict_action(variables, {"obs": obs}, rng))
    rep = jnp.repeat(obs, 5, axis=0)
    cands = consensus_gripper(binarize_gripper(policy.executed_chunk(policy.sample_horizon(variables, {"obs": rep}, rng))), 5)
    logits = np.asarray(critic_logits(policy.critic, variables["params"]["critic"], variables["normalizer"], rep,
                                      cands)).reshape(6, 5)
    cands = np.asarray(cands).reshape(6, 5, *cands.shape[1:])
    np.testing.assert_allclose(chosen, cands[np.arange(6), logits.argmax(1)])
    assert np.all(np.ptp(cands[..., 4], axis=1) == 0)  # one gripper sequence per row, whichever is chosen


def test_an_ensemble_critic_acts_on_its_lower_bound_and_starts_as_plain_sampling():
    obs = jax.random.uniform(jax.random.PRNGKey(1), (8, ENSEMBLE.n_obs_steps, ENSEMBLE.obs_dim), minval=-1, maxval=1)
    rng = jax.random.PRNGKey(2)
    fresh = _variables(ENSEMBLE)
    rep = jnp.repeat(obs, 5, axis=0)
    cands = binarize_gripper(ENSEMBLE.executed_chunk(ENSEMBLE.sample_horizon(fresh, {"obs": rep}, rng)))
    # Fresh: every network's head is zero, so the first candidate (a plain sample) is executed.
    assert np.all(np.asarray(critic_head_logits(ENSEMBLE.critic, fresh["params"]["critic"], fresh["normalizer"],
                                                rep, cands)) == 0)
    np.testing.assert_allclose(ENSEMBLE.predict_action(fresh, {"obs": obs}, rng),
                               np.asarray(cands).reshape(8, 5, *cands.shape[1:])[:, 0])

    # Learned (random heads, one per network): the executed chunk maximises mean - 2 * spread.
    critic = dict(fresh["params"]["critic"])
    heads = dict(critic["heads"])
    last = f"Dense_{ENSEMBLE.config.critic_layers}"
    heads[last] = {**heads[last], "kernel": jax.random.normal(jax.random.PRNGKey(3), heads[last]["kernel"].shape)}
    variables = {**fresh, "params": {**fresh["params"], "critic": {**critic, "heads": heads}}}
    chosen = np.asarray(ENSEMBLE.predict_action(variables, {"obs": obs}, rng))
    logits = np.asarray(critic_head_logits(ENSEMBLE.critic, variables["params"]["critic"], variables["normalizer"],
                                           rep, cands)).reshape(4, 8, 5)
    lower, mean = logits.mean(0) - 2.0 * logits.std(0), logits.mean(0)
    cands = np.asarray(cands).reshape(8, 5, *cands.shape[1:])
    np.testing.assert_allclose(chosen, cands[np.arange(8), lower.argmax(1)])
    assert (lower.argmax(1) != mean.argmax(1)).any()  # the spread changed some choice: pessimism is live


def test_an_ensemble_disagrees_where_it_has_seen_no_data():
    """What pessimism relies on: trained on chunks in one region, the networks agree more there
    than on chunks that leave it along directions the label never depended on (where a single
    critic's argmax finds its extrapolation errors)."""
    policy, variables = ENSEMBLE, _variables(ENSEMBLE)
    rng = np.random.default_rng(0)
    b = 64

    def chunks(outlying=0.0):
        action = rng.uniform(-0.5, 0.5, (b, policy.horizon, policy.action_dim)).astype(np.float32)
        if outlying:
            action[..., 1:] = rng.choice([-outlying, outlying], action[..., 1:].shape)
        return action

    obs = lambda: rng.uniform(-1, 1, (b, policy.n_obs_steps, policy.obs_dim)).astype(np.float32)  # noqa: E731
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=1, critic_learning_rate=3e-3)
    optimizer = make_optimizer(cfg, critic=True)
    step = jax.jit(make_train_step(policy, optimizer, cfg))
    state = create_train_state(variables, optimizer, jax.random.PRNGKey(0))
    for _ in range(150):
        action = chunks()
        label = (policy.executed_chunk(action)[:, 0, 0] > 0).astype(np.float32)  # only component 0 matters
        state, _ = step(state, {"obs": obs(), "action": action, "weight": np.ones(b, np.float32),
                                "critic_label": label, "critic_mask": np.ones(b, np.float32)})

    def spread(action):
        heads = critic_head_logits(policy.critic, state.params["critic"], variables["normalizer"], obs(),
                                   policy.executed_chunk(action))
        return float(np.asarray(heads).std(0).mean())

    assert spread(chunks(outlying=3.0)) > 1.5 * spread(chunks())


@pytest.mark.parametrize("argv, message", [
    (["--diffusion.num-candidates", "4"], "error: diffusion.num_candidates: choosing among candidates needs a critic"),
    (["--diffusion.critic-hidden", "32", "--replay.online-sampler", "weight"],
     "error: replay.online_sampler: the success critic must see failed episodes"),
    (["--diffusion.critic-hidden", "32", "--diffusion.candidate-gripper", "first"],
     "error: diffusion.candidate_gripper"),
    (["--diffusion.critic-hidden", "32", "--diffusion.critic-pessimism", "1"],
     "error: diffusion.critic_pessimism: needs an ensemble"),
])
def test_critic_configs_that_cannot_work_are_one_line_errors(tmp_path, capsys, argv, message):
    from conftest import train_cli_error

    assert train_cli_error(tmp_path, capsys, argv).startswith(message)


def test_pretrain_refuses_a_critic(demos, tmp_path, capsys):
    from ada_curriculum.cli import main

    assert main(["pretrain", "--policy", "diffusion", "--demos", demos, "--out", str(tmp_path / "bc"),
                 "--diffusion.critic-hidden", "32", "--updates", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: diffusion.critic_hidden: the success critic learns")
    assert not (tmp_path / "bc").exists()


@pytest.fixture(scope="module")
def bc_run(demos, tmp_path_factory):
    from ada_curriculum.cli import main

    out = tmp_path_factory.mktemp("bc") / "run"
    assert main(["pretrain", "--policy", "diffusion", "--demos", demos, "--out", str(out),
                 "--diffusion.down-dims", "16,32", "--diffusion.num-inference-steps", "2", "--updates", "2",
                 "--batch-size", "4", "--log-every", "1"]) == 0
    return str(out)


def test_train_from_a_bc_run_grows_a_critic_that_resumes_and_evaluates(demos, bc_run, tmp_path, capsys):
    from ada_curriculum.checkpointing import Checkpointer
    from ada_curriculum.cli import main
    from ada_curriculum.pretrain import load_policy
    from ada_curriculum.train import TrainConfig, _initial_state, train
    from test_train import tiny

    critic = {"down_dims": [16, 32], "num_inference_steps": 2, "critic_hidden": 32, "num_candidates": 3}
    cfg = tiny(tmp_path / "run", demos, distributed=False, init=bc_run, diffusion=critic, eval_every=8,
               eval_episodes=2, max_updates=12)
    assert isinstance(cfg, TrainConfig)

    # The BC run's denoiser, and a fresh critic beside it.
    _, bc_variables, _, _ = load_policy(bc_run)
    from ada_curriculum.policies import make_policy

    policy = make_policy("diffusion", cfg.diffusion)
    state = _initial_state(cfg, policy, make_optimizer(cfg.optim, critic=True))
    assert set(state.params) == {"denoiser", "critic"}
    for a, b in zip(jax.tree_util.tree_leaves(state.params["denoiser"]), jax.tree_util.tree_leaves(bc_variables["params"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    summary = train(cfg)
    assert summary["stopped_by"] == "max_updates" and summary["episodes"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    learner = [r for r in rows if "critic_bce" in r]
    assert learner and all(np.isfinite(r["critic_bce"]) for r in learner)

    # Resume: the two-part optimiser state restores and training continues.
    resumed = train(tiny(tmp_path / "run", demos, distributed=False, init=bc_run, diffusion=critic, max_updates=20))
    assert resumed["updates"] >= 20
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.latest_step() >= 20
    ckpt.close()

    # eval acts with the critic (the run's 3 candidates) or the denoiser alone.
    out = tmp_path / "eval1"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2", "--num-envs", "2",
                 "--num-candidates", "1", "--time-limit", "10", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampling"] == {"num_candidates": 1} and summary["num_candidates"] == 1
    capsys.readouterr()
    assert main(["eval", "--checkpoint", bc_run, "--episodes", "2", "--num-candidates", "4",
                 "--out", str(tmp_path / "eval-bc")]) == 2
    assert capsys.readouterr().err.startswith("error: num_candidates: choosing among candidates needs a success critic")
    assert not (tmp_path / "eval-bc").exists()


def test_actors_act_on_plain_samples_until_the_critic_warmup_is_over(make_actor):
    """`Actor(critic_warmup=N)`: while its weights come from fewer than N updates the actor samples
    one candidate; from the first weights of N updates on, it executes the critic's best of the
    policy's candidates, and the chunk it then executes is exactly that choice (real MuJoCo env,
    real Reverb)."""
    from ada_curriculum.policies import make_policy
    from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM, flatten_obs

    policy = make_policy("diffusion", down_dims=(16, 32), num_inference_steps=2, critic_hidden=32,
                         num_candidates=4, eta=1.0)
    variables = _learned(policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM, ACTION_DIM)), policy=policy)
    actor, _, source = make_actor(policy, variables, version=3, env_kwargs={"time_limit": 50}, critic_warmup=5,
                                  variable_update_period=1)
    assert actor.runner.sampling == {"num_candidates": 1}
    actor.run(policy.n_action_steps)  # one whole chunk at version 3: still plain samples
    assert actor.runner.sampling == {"num_candidates": 1}
    source.publish(variables, 5)
    obs = actor._timesteps[0].observation
    history = np.stack(list(actor.runner._obs[0]) + [flatten_obs(obs, policy.obs_frame)])[-policy.n_obs_steps:]
    _, key = jax.random.split(actor.runner._rng)  # the key the runner's next replan uses
    actor._maybe_update_variables()  # in process, the poll in flight is the one from before the publish
    runner = actor.runner  # the runner stays (histories kept); only its sampling changes
    actor.run(1)
    assert actor.version == 5 and actor.runner is runner and actor.runner.sampling == {}
    chosen = policy.predict_action(variables, {"obs": history[None]}, key)  # best of 4 by the critic
    plain = policy.predict_action(variables, {"obs": history[None]}, key, num_candidates=1)
    np.testing.assert_allclose(actor._episodes[0]["action"][-1], np.asarray(chosen)[0, 0], atol=1e-5)
    assert not np.allclose(np.asarray(chosen), np.asarray(plain))


def test_a_critic_warmup_without_candidates_to_choose_among_is_a_one_line_error(tmp_path, capsys):
    from conftest import train_cli_error

    assert train_cli_error(tmp_path, capsys, ["--critic-warmup-updates", "100"]).startswith(
        "error: critic_warmup_updates: gates choosing among candidates")


def test_the_critic_warmup_reaches_the_actors(tmp_path):
    from ada_curriculum import config as config_lib
    from ada_curriculum.agent.builder import Builder
    from ada_curriculum.policies import make_policy
    from ada_curriculum.train import TrainConfig

    cfg = config_lib.from_dict(TrainConfig, {"run": str(tmp_path), "demo_fraction": 0.0, "critic_warmup_updates": 300,
                                             "diffusion": {"critic_hidden": 32, "num_candidates": 4}})
    cfg.validate()
    assert Builder(cfg, make_policy("diffusion", cfg.diffusion)).actor_args(0, None, None, None)["critic_warmup"] == 300


def test_a_fine_tuning_run_may_sample_differently_from_its_bc_run(demos, bc_run, tmp_path):
    """DDIM steps, eta and the candidates' gripper are sampling settings: `train --init` takes
    the BC run's denoiser whatever they are, and refuses a denoiser of another shape."""
    from ada_curriculum.checkpointing import CheckpointError
    from ada_curriculum.policies import make_policy
    from ada_curriculum.pretrain import load_policy
    from ada_curriculum.train import _initial_state
    from test_train import tiny

    sampling = {"down_dims": [16, 32], "num_inference_steps": 4, "eta": 1.0, "critic_hidden": 32,
                "num_candidates": 3, "candidate_gripper": "consensus"}
    cfg = tiny(tmp_path / "run", demos, distributed=False, init=bc_run, diffusion=sampling)
    policy = make_policy("diffusion", cfg.diffusion)
    state = _initial_state(cfg, policy, make_optimizer(cfg.optim, critic=True))
    _, bc_variables, _, _ = load_policy(bc_run)
    for a, b in zip(jax.tree_util.tree_leaves(state.params["denoiser"]), jax.tree_util.tree_leaves(bc_variables["params"])):
        np.testing.assert_array_equal(a, b)
    other = tiny(tmp_path / "other", demos, distributed=False, init=bc_run, diffusion={**sampling, "down_dims": [16, 48]})
    with pytest.raises(CheckpointError, match="policy config differs"):
        _initial_state(other, make_policy("diffusion", other.diffusion), make_optimizer(other.optim, critic=True))
