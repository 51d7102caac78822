"""TransformerPolicy: shapes, causality, padding, trial conditioning, training and sampling."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ada_curriculum.config import ConfigError
from ada_curriculum.policies import normalizer
from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM, binarize_gripper
from ada_curriculum.policies.transformer import PRESETS, TransformerConfig, TransformerPolicy

K = 4  # chunk length (small keeps the tests fast)
B, T = 2, 12  # the common batch shape: one shape means one compilation, shared across tests
TRAIN_B, TRAIN_T = 8, 24  # the one training-batch shape, so the train step compiles once


def make_policy(preset="small", **kw):
    kw = {"max_len": 32, "n_action_steps": K, **kw}
    return TransformerPolicy(TransformerConfig(preset=preset, **kw))


def make_batch(seed, B=B, T=T, lengths=None, k=K, trial_split=None):
    """Random sequence batch in [-1, 1]; rows valid up to `lengths`, trial 1 from `trial_split`."""
    rs = np.random.RandomState(seed)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    mask = np.arange(T)[None] < lengths[:, None]
    trial = np.zeros((B, T), np.int32) if trial_split is None else (np.arange(T) >= trial_split).astype(np.int32)[None].repeat(B, 0)
    return {
        "obs": rs.uniform(-1, 1, (B, T, OBS_DIM)).astype(np.float32),
        "prev_action": rs.uniform(-1, 1, (B, T, ACTION_DIM)).astype(np.float32),
        "trial_index": trial,
        "mask": mask,
        "action": rs.uniform(-1, 1, (B, T, k, ACTION_DIM)).astype(np.float32),
        "action_mask": mask[:, :, None] & (np.arange(T)[None, :, None] + np.arange(k) < lengths[:, None, None]),
    }


def identity_stats():
    return normalizer.identity(OBS_DIM, ACTION_DIM)


@dataclasses.dataclass(frozen=True)
class Small:
    policy: TransformerPolicy
    variables: dict
    outputs: callable  # jitted action_outputs
    loss: callable  # jitted loss
    predict: callable  # jitted predict_action (policy captured by closure)
    optimizer: optax.GradientTransformation
    train_step: callable  # jitted (variables, opt_state, batch, rng) -> (variables, opt_state, loss)


@pytest.fixture(scope="module")
def small():
    # XLA compiles dominate the run time on CPU, so the small model is built and jitted once.
    policy = make_policy()
    optimizer = optax.adam(3e-3)

    def train_step(variables, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(
            lambda p: policy.loss({**variables, "params": p}, batch, rng)[0])(variables["params"])
        updates, opt_state = optimizer.update(grads, opt_state, variables["params"])
        return {**variables, "params": optax.apply_updates(variables["params"], updates)}, opt_state, loss

    return Small(policy, policy.init(jax.random.PRNGKey(0), identity_stats()), jax.jit(policy.action_outputs),
                 jax.jit(policy.loss), jax.jit(lambda v, b, r, temperature=0.0: policy.predict_action(
                     v, b, r, temperature=temperature)), optimizer, jax.jit(train_step))


def fit(small, batches, steps):
    """Adam from `small.variables`, cycling through `batches`; returns the trained variables."""
    variables, opt_state = small.variables, small.optimizer.init(small.variables["params"])
    for i in range(steps):
        variables, opt_state, _ = small.train_step(variables, opt_state, batches[i % len(batches)],
                                                   jax.random.PRNGKey(i))
    return variables


# --- shapes, config -------------------------------------------------------------------------

def test_shapes_and_param_counts_per_preset(small):
    counts = {}
    batch = make_batch(0, lengths=[T, 9])
    for preset in ("small", "base", "large"):
        if preset == "small":  # reuse the fixture's compiled functions
            policy, variables, outputs, loss_fn, predict = small.policy, small.variables, small.outputs, small.loss, small.predict
        else:
            policy = make_policy(preset)
            variables = policy.init(jax.random.PRNGKey(0), identity_stats())
            outputs, loss_fn, predict = policy.action_outputs, policy.loss, policy.predict_action
        assert set(variables) == {"params", "normalizer"}
        counts[preset] = policy.param_count(variables)
        out = outputs(variables, batch)
        assert out.shape == (B, T, K, ACTION_DIM) and bool(jnp.all(jnp.isfinite(out)))
        if preset == "large":  # init + one forward only: it is slow on CPU
            continue
        loss, metrics = loss_fn(variables, batch, jax.random.PRNGKey(1))
        assert loss.shape == () and set(metrics) == {"loss", "mse"} and np.isfinite(float(loss))
        act = predict(variables, batch, jax.random.PRNGKey(2))
        assert act.shape == (B, K, ACTION_DIM)
    assert counts["small"] < counts["base"] < counts["large"]
    assert PRESETS["small"].d_model < PRESETS["base"].d_model < PRESETS["large"].d_model


@pytest.mark.parametrize("field, value", [
    ("preset", "huge"), ("max_len", 0), ("n_obs_steps", 2), ("n_action_steps", 0),
    ("max_trials", 0), ("dropout", 1.0), ("dropout", -0.1),
])
def test_config_validate_names_the_field(field, value):
    cfg = dataclasses.replace(TransformerConfig(), **{field: value})
    with pytest.raises(ValueError, match=f"^{field}"):
        cfg.validate()
    with pytest.raises(ConfigError):
        TransformerPolicy(cfg)


def test_policy_is_hashable_and_checks_normalizer(small):
    assert make_policy() == small.policy and hash(make_policy()) == hash(small.policy)  # static-arg safe
    with pytest.raises(ValueError, match="^normalizer"):
        small.policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM + 1, ACTION_DIM))


def test_window_longer_than_max_len_is_rejected(small):
    with pytest.raises(ValueError, match="max_len"):
        small.outputs(small.variables, make_batch(0, B=1, T=small.policy.config.max_len + 1))


# --- causality and padding ------------------------------------------------------------------

def test_causal_future_steps_do_not_change_past_outputs(small):
    t = 5
    batch, other = make_batch(0), make_batch(1)
    changed = dict(batch)
    for key in ("obs", "prev_action"):
        changed[key] = batch[key].copy()
        changed[key][:, t + 1:] = other[key][:, t + 1:]
    changed["trial_index"] = batch["trial_index"].copy()
    changed["trial_index"][:, t + 1:] = 3
    base, out = small.outputs(small.variables, batch), small.outputs(small.variables, changed)
    np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
    assert float(jnp.max(jnp.abs(out[:, t + 1:] - base[:, t + 1:]))) > 1e-3  # the future did change


def test_padding_content_does_not_leak(small):
    batch = make_batch(0, lengths=[5, T])
    garbage = dict(batch)
    pad = ~batch["mask"]
    for key in ("obs", "prev_action"):
        garbage[key] = batch[key].copy()
        garbage[key][pad] = np.nan  # even NaN in padding must not reach valid steps
    garbage["trial_index"] = np.where(pad, 7, batch["trial_index"]).astype(np.int32)
    garbage["action"] = np.where(pad[:, :, None, None], np.inf, batch["action"]).astype(np.float32)
    out, ref = small.outputs(small.variables, garbage), small.outputs(small.variables, batch)
    np.testing.assert_allclose(out[0, :5], ref[0, :5], atol=1e-5)
    np.testing.assert_allclose(out[1], ref[1], atol=1e-5)

    # Training: NaN/inf in padded inputs and targets changes neither the loss nor the update.
    batch = make_batch(0, B=TRAIN_B, T=TRAIN_T, lengths=[TRAIN_T, 9] * (TRAIN_B // 2))
    pad = ~batch["mask"]
    garbage = {**batch, "obs": np.where(pad[..., None], np.nan, batch["obs"]).astype(np.float32),
               "action": np.where(pad[..., None, None], np.inf, batch["action"]).astype(np.float32)}
    opt_state, rng = small.optimizer.init(small.variables["params"]), jax.random.PRNGKey(0)
    v_clean, _, loss_clean = small.train_step(small.variables, opt_state, batch, rng)
    v_garbage, _, loss_garbage = small.train_step(small.variables, opt_state, garbage, rng)
    np.testing.assert_allclose(loss_garbage, loss_clean, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(v_garbage["params"]), jax.tree_util.tree_leaves(v_clean["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6)


# --- loss -----------------------------------------------------------------------------------

def test_loss_weights_and_masks(small):
    rng = jax.random.PRNGKey(0)
    batch = make_batch(0, lengths=[T, 6])

    def loss(b, w=(1.0, 1.0)):  # always pass a weight: one pytree structure, one compile
        return small.loss(small.variables, {**b, "weight": np.asarray(w, np.float32)}, rng)

    first_only = {**batch, "mask": batch["mask"] & np.array([[True], [False]])}
    # Weight 0 drops an example from "loss" (same as masking it out) but not from "mse".
    loss_w, metrics_w = loss(batch, (1.0, 0.0))
    np.testing.assert_allclose(loss_w, loss(first_only)[0], rtol=1e-5)
    np.testing.assert_allclose(metrics_w["mse"], loss(batch)[1]["mse"], rtol=1e-5)
    assert abs(float(loss_w) - float(loss(batch)[0])) > 1e-4
    # A uniform weight scale does not change a weighted mean; no weight means weight 1.
    np.testing.assert_allclose(loss(batch, (3.0, 3.0))[0], loss(batch)[0], rtol=1e-5)
    np.testing.assert_allclose(small.loss(small.variables, batch, rng)[0], loss(batch)[0], rtol=1e-5)
    # Masked chunk entries do not count: changing their targets leaves the loss unchanged.
    perturbed = {**batch, "action": np.where(batch["action_mask"][..., None], batch["action"], 5.0).astype(np.float32)}
    np.testing.assert_allclose(loss(perturbed)[0], loss(batch)[0], rtol=1e-5)


def test_dropout_uses_rng_in_loss_only(small):
    policy = make_policy(dropout=0.3)  # same parameter shapes as `small`
    batch = make_batch(0)
    loss = jax.jit(policy.loss)
    l1 = loss(small.variables, batch, jax.random.PRNGKey(1))[0]
    l2 = loss(small.variables, batch, jax.random.PRNGKey(2))[0]
    assert abs(float(l1) - float(l2)) > 1e-6
    np.testing.assert_array_equal(loss(small.variables, batch, jax.random.PRNGKey(1))[0], l1)
    # Acting is deterministic, so dropout does not change it.
    np.testing.assert_allclose(policy.action_outputs(small.variables, batch),
                               small.outputs(small.variables, batch), atol=1e-5)


# --- trial boundaries -----------------------------------------------------------------------

def test_trial_index_and_trial_start_change_outputs(small):
    batch = make_batch(0)
    ref = small.outputs(small.variables, batch)
    # Same obs, another trial index everywhere: the trial embedding differs.
    other = {**batch, "trial_index": np.ones_like(batch["trial_index"])}
    assert float(jnp.max(jnp.abs(small.outputs(small.variables, other)[:, 0] - ref[:, 0]))) > 1e-4
    # A boundary at step 4 changes step 4 (start marker) and nothing before it.
    out = small.outputs(small.variables, make_batch(0, trial_split=4))
    np.testing.assert_allclose(out[:, :4], ref[:, :4], atol=1e-5)
    assert float(jnp.max(jnp.abs(out[:, 4] - ref[:, 4]))) > 1e-4


def icl_batch(seed, n, steps=24):
    """Three trials of random length; each shows a value v_j in obs[..., 0] throughout, and the
    target in trial j >= 1 is v_{j-1}, the value shown in the *previous* trial.

    Step 0 always shows v_0, which trial 2 must ignore, so a fixed-position shortcut fails: the
    model has to find the previous trial's steps through trial_index / the trial-start marker.
    """
    rs = np.random.RandomState(seed)
    values = rs.uniform(-1, 1, (n, 3)).astype(np.float32)
    cuts = np.sort(np.stack([rs.choice(np.arange(5, steps - 4), 2, replace=False) for _ in range(n)]), 1)
    trial = (np.arange(steps)[None, :, None] >= cuts[:, None, :]).sum(-1).astype(np.int32)  # (n, steps)
    obs = np.zeros((n, steps, OBS_DIM), np.float32)
    obs[..., 0] = np.take_along_axis(values, trial, 1)
    target = np.take_along_axis(values, np.maximum(trial - 1, 0), 1)
    return {
        "obs": obs, "prev_action": np.zeros((n, steps, ACTION_DIM), np.float32), "trial_index": trial,
        "mask": np.ones((n, steps), bool),
        "action": np.broadcast_to(target[:, :, None, None], (n, steps, K, ACTION_DIM)).copy(),
        "action_mask": np.broadcast_to((trial >= 1)[:, :, None], (n, steps, K)).copy(),  # trial 0: no target
    }


def test_learns_from_previous_trial_in_context(small):
    trained = fit(small, [icl_batch(s, TRAIN_B) for s in range(32)], steps=250)
    tests = [icl_batch(1000 + i, TRAIN_B) for i in range(8)]
    target = np.concatenate([t["action"][t["trial_index"] >= 1] for t in tests])
    baseline = float(np.var(target))  # best constant guess without the previous trial (~1/3)

    def scored_mse(erase_trials=False):
        pred = []
        for t in tests:
            batch = {**t, "trial_index": np.zeros_like(t["trial_index"])} if erase_trials else t
            pred.append(np.asarray(small.outputs(trained, batch))[t["trial_index"] >= 1])
        return float(np.mean((np.concatenate(pred) - target) ** 2))

    mse = scored_mse()
    assert mse < 0.05 * baseline, (mse, baseline)
    # Erase the trial structure (same obs): without it the model cannot tell which steps form the
    # previous trial, so its error goes back towards the baseline.
    erased = scored_mse(erase_trials=True)
    assert erased > 0.3 * baseline, (erased, baseline)


# --- training and sampling ------------------------------------------------------------------

def test_overfits_tiny_dataset(small):
    batch = make_batch(0, B=TRAIN_B, T=TRAIN_T, lengths=[TRAIN_T] * (TRAIN_B - 2) + [10, 3])
    rng = jax.random.PRNGKey(0)
    before = float(small.loss(small.variables, batch, rng)[1]["mse"])
    trained = fit(small, [batch], steps=200)
    after = float(small.loss(trained, batch, rng)[1]["mse"])
    assert after < 0.01 * before and after < 5e-3, (before, after)


def test_predict_action_reads_last_valid_step_and_unnormalises(small):
    rs = np.random.RandomState(3)
    lo = rs.uniform(-2, 0, ACTION_DIM).astype(np.float32)
    hi = lo + rs.uniform(0.5, 3, ACTION_DIM).astype(np.float32)
    stats = {**small.variables["normalizer"], "action": {"low": lo, "high": hi}}
    variables = {**small.variables, "normalizer": stats}
    for lengths in ([3, T], [1, 7]):
        batch = make_batch(0, lengths=lengths)
        obs_only = {k: v for k, v in batch.items() if k not in ("action", "action_mask")}
        act = np.asarray(small.predict(variables, obs_only, jax.random.PRNGKey(0)))
        outs = np.asarray(small.outputs(variables, obs_only))
        last = np.asarray(lengths) - 1
        expected = normalizer.unnormalize(stats["action"], np.clip(outs[np.arange(B), last], -1, 1))
        np.testing.assert_allclose(act, binarize_gripper(expected), rtol=1e-5, atol=1e-5)  # gripper: open/closed
        # ... and not the chunk at the last (padded) position.
        assert np.abs(act[0] - normalizer.unnormalize(stats["action"], np.clip(outs[0, -1], -1, 1))).max() > 1e-4


def test_sampling_is_seeded(small):
    batch = make_batch(0, lengths=[T, 5])
    a1 = small.predict(small.variables, batch, jax.random.PRNGKey(7), temperature=0.5)
    a2 = small.predict(small.variables, batch, jax.random.PRNGKey(7), temperature=0.5)
    a3 = small.predict(small.variables, batch, jax.random.PRNGKey(8), temperature=0.5)
    np.testing.assert_array_equal(a1, a2)
    assert float(jnp.max(jnp.abs(a1 - a3))) > 1e-3
    # Temperature 0 ignores the rng.
    d1 = small.predict(small.variables, batch, jax.random.PRNGKey(7), temperature=0.0)
    np.testing.assert_array_equal(d1, small.predict(small.variables, batch, jax.random.PRNGKey(8), temperature=0.0))
    assert float(jnp.max(jnp.abs(a1 - d1))) > 1e-3
