"""train_step: dynamic clipping, NaN skipping, EMA; Orbax checkpoints; training windows."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ada_curriculum.checkpointing import Checkpointer, CheckpointError, check_compatible
from ada_curriculum.data.windows import DiffusionWindows, EpisodeArrays, SequenceWindows
from ada_curriculum.learning import OptimConfig, create_train_state, make_optimizer, make_train_step
from ada_curriculum.policies import normalizer
from ada_curriculum.policies.base import Policy


@dataclasses.dataclass(frozen=True)
class _LinearConfig:
    n_obs_steps: int = 1


class LinearPolicy(Policy):
    """A two-module linear regressor: enough structure to test the update machinery."""

    kind = "linear"
    obs_dim, action_dim, n_obs_steps, n_action_steps = 3, 2, 1, 1
    config = _LinearConfig()

    def init(self, rng, normalizer_stats):
        k1, k2 = jax.random.split(rng)
        return {"params": {"encoder": {"w": jax.random.normal(k1, (3, 4)) * 0.1},
                           "head": {"w": jax.random.normal(k2, (4, 2)) * 0.1}},
                "normalizer": normalizer_stats}

    def loss(self, variables, batch, rng):
        p = variables["params"]
        pred = batch["x"] @ p["encoder"]["w"] @ p["head"]["w"]
        per_example = jnp.mean((pred - batch["y"]) ** 2, axis=-1)
        w = batch.get("weight", jnp.ones(per_example.shape))
        loss = jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1e-8)
        return loss, {"loss": loss}

    def predict_action(self, variables, batch, rng, **sampling):
        p = variables["params"]
        return (batch["x"] @ p["encoder"]["w"] @ p["head"]["w"])[:, None]


def make_batch(rng, scale=1.0, n=32):
    x = rng.normal(size=(n, 3)).astype(np.float32) * scale
    return {"x": x, "y": (x @ np.array([[1, 0], [0, 1], [1, 1]], np.float32))}


def setup(cfg=OptimConfig(learning_rate=1e-2, warmup_steps=1, decay_steps=1000)):
    policy = LinearPolicy()
    opt = make_optimizer(cfg)
    variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(3, 2))
    state = create_train_state(variables, opt, jax.random.PRNGKey(1))
    return policy, state, jax.jit(make_train_step(policy, opt, cfg))


def test_training_reduces_loss_and_tracks_ema():
    _, state, step = setup()
    rng = np.random.default_rng(0)
    first = None
    for i in range(300):
        state, m = step(state, make_batch(rng))
        first = first if first is not None else float(m["loss"])
    assert float(m["loss"]) < 0.05 * first
    assert int(state.step) == 300 and int(state.skip_count) == 0
    # EMA lags the live params but follows them.
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), state.params, state.ema_params)
    assert 0 < max(jax.tree_util.tree_leaves(diff)) < 1.0
    assert set(k for k in m if k.startswith("grad_norm/")) == {"grad_norm/encoder", "grad_norm/head"}


def test_ema_without_warmup_averages_at_the_configured_decay_from_the_first_update():
    # Fine-tuning: the EMA starts at the pretrained weights and must stay close to them, rather
    # than jumping to the first updates' raw params as the warm-up does.
    decay = 0.9
    for warmup, expected in ((False, decay), (True, 1.0 - 2.0 ** -0.75)):
        cfg = OptimConfig(learning_rate=1e-2, warmup_steps=1, decay_steps=1000, ema_decay=decay, ema_warmup=warmup)
        _, state, step = setup(cfg)
        before = state.ema_params
        state, m = step(state, make_batch(np.random.default_rng(0)))
        assert float(m["ema_decay"]) == pytest.approx(expected)
        want = jax.tree_util.tree_map(lambda e, p: expected * e + (1 - expected) * p, before, state.params)
        for got, ref in zip(jax.tree_util.tree_leaves(state.ema_params), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_gradient_spike_is_clipped_back_to_k_times_the_running_norm():
    cfg = OptimConfig(learning_rate=1e-2, warmup_steps=1, decay_steps=1000, clip_factor=4.0, max_grad_norm=1e6)
    _, state, step = setup(cfg)
    rng = np.random.default_rng(0)
    for _ in range(20):
        state, m = step(state, make_batch(rng))
    assert int(state.clip_count) == 0
    running = float(state.grad_norm_avg)
    params_before = state.params
    state, m = step(state, make_batch(rng, scale=1000.0))  # a spike: norm jumps by ~10^6
    assert float(m["clipped"]) == 1.0 and int(state.clip_count) == 1
    assert float(m["grad_norm"]) > 100 * running
    assert float(m["grad_norm_limit"]) == pytest.approx(4.0 * running, rel=1e-5)
    # The applied update is bounded: params move about as much as a normal step, not 10^6 times more.
    moved = max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: float(jnp.abs(a - b).max()), state.params, params_before)))
    assert moved < 0.1
    # The running norm absorbs at most the clipped value.
    assert float(state.grad_norm_avg) <= running * 1.5


def test_nan_batch_is_skipped_and_counted():
    _, state, step = setup()
    rng = np.random.default_rng(0)
    for _ in range(5):
        state, _ = step(state, make_batch(rng))
    before = jax.device_get(state)
    bad = make_batch(rng)
    bad["x"][3, 1] = np.nan
    state, m = step(state, bad)
    assert float(m["skipped"]) == 1.0 and int(state.skip_count) == 1
    assert int(state.step) == int(before.step)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(before.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(state.opt_state), jax.tree_util.tree_leaves(before.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state, m = step(state, make_batch(rng))  # and training goes on
    assert float(m["skipped"]) == 0.0 and np.isfinite(float(m["loss"]))


def test_checkpoint_round_trip_and_fallback(tmp_path):
    _, state, step = setup()
    rng = np.random.default_rng(0)
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=5)
    for s in (1, 2):
        state, _ = step(state, make_batch(rng))
        ckpt.save(s, state, {"counters": {"updates": s}, "config": {"policy": "linear"}})
    assert ckpt.save(2, state, {}) is False  # an existing step is not overwritten
    restored, meta, s = ckpt.restore(state)
    assert s == 2 and meta["counters"]["updates"] == 2
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpt.close()

    # Corrupt the newest step: every array file in it is truncated.
    for f in (tmp_path / "ckpt" / "2").rglob("*"):
        if f.is_file() and "state" in f.parts:
            f.write_bytes(f.read_bytes()[: max(0, f.stat().st_size // 3)])
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=5)
    restored, meta, s = ckpt.restore(state)
    assert s == 1 and meta["counters"]["updates"] == 1
    ckpt.close()

    shutil.rmtree(tmp_path / "ckpt" / "1")
    shutil.rmtree(tmp_path / "ckpt" / "2")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpointer(tmp_path / "ckpt").restore(state)


def test_incompatible_config_names_the_field():
    saved = {"policy": "diffusion", "diffusion": {"preset": "small", "horizon": 16}}
    check_compatible(saved, dict(saved), ["policy", "diffusion"])
    with pytest.raises(CheckpointError, match=r"^diffusion\.horizon: the checkpoint was made with 16"):
        check_compatible(saved, {"policy": "diffusion", "diffusion": {"preset": "small", "horizon": 32}},
                         ["policy", "diffusion"])


def _episodes():
    eps = []
    for n, base in ((5, 0), (3, 100)):
        obs = (base + np.arange(n + 1, dtype=np.float32))[:, None].repeat(2, 1)
        action = (base + np.arange(n, dtype=np.float32))[:, None].repeat(2, 1) + 0.5
        trial = np.array([0] * 3 + [1] * (n - 2), np.int32)[: n + 1]
        eps.append(EpisodeArrays(obs=obs, action=action, trial_index=trial, weight=1.0 + base))
    return eps


def test_diffusion_windows_pad_at_episode_edges():
    w = DiffusionWindows(_episodes(), n_obs_steps=2, horizon=4)
    assert len(w) == 8
    b = w.sample(np.random.default_rng(0), 256)
    assert b["obs"].shape == (256, 2, 2) and b["action"].shape == (256, 4, 2)
    for obs, act, weight in zip(b["obs"][:, :, 0], b["action"][:, :, 0], b["weight"]):
        base = 0 if obs[1] < 100 else 100
        t = int(obs[1] - base)
        n = 5 if base == 0 else 3
        assert obs[0] == base + max(t - 1, 0)  # the first obs repeats at the episode start
        expected = [base + min(max(i, 0), n - 1) + 0.5 for i in range(t - 1, t + 3)]
        np.testing.assert_array_equal(act, expected)  # the last action repeats past the end
        assert weight == 1.0 + base


def test_sequence_windows_mask_context_and_chunks():
    w = SequenceWindows(_episodes(), max_len=4, n_action_steps=2)
    b = w.sample(np.random.default_rng(1), 256)
    assert b["obs"].shape == (256, 4, 2) and b["action"].shape == (256, 4, 2, 2)
    for i in range(256):
        valid = b["mask"][i]
        m = int(valid.sum())
        assert valid[:m].all() and not valid[m:].any()
        steps = b["obs"][i, :m, 0]
        assert np.all(np.diff(steps) == 1)  # consecutive steps of one episode
        base = 0 if steps[0] < 100 else 100
        n = 5 if base == 0 else 3
        for j in range(m):
            t = int(steps[j] - base)
            prev = b["prev_action"][i, j, 0]
            assert prev == (0.0 if t == 0 else base + t - 1 + 0.5)
            trial = [0] * 3 + [1] * (n - 2)  # as in _episodes()
            for c in range(2):
                # Inside the episode and the same trial: a chunk stops at a trial boundary.
                assert b["action_mask"][i, j, c] == (t + c < n and trial[t + c] == trial[t])
                if t + c < n:
                    assert b["action"][i, j, c, 0] == base + t + c + 0.5
        assert not b["obs"][i, m:].any()
