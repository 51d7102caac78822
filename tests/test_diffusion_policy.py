"""Diffusion policy: config checks, noise schedule, shapes per preset, sampling determinism,
overfitting a tiny data set and the degradation knob. CPU-only and small."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ada_curriculum.config import ConfigError, from_dict
from ada_curriculum.policies import normalizer
from ada_curriculum.policies.diffusion import PRESETS, DiffusionConfig, DiffusionPolicy
from ada_curriculum.policies.noise_schedule import add_noise, ddim_sample, ddim_timesteps, make_schedule
from ada_curriculum.policies.obs import ACTION_DIM, GRIPPER, OBS_DIM, binarize_gripper

# A 2-level U-Net (16 -> 8) keeps compile and training time low; stochastic sampling (eta = 1)
# is much more accurate than deterministic DDIM for a briefly trained model.
TINY = DiffusionConfig(down_dims=(16, 32), eta=1.0)
N_TRAIN_STEPS = 450
LR = 5e-3


# -- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, field", [
    ({"horizon": 18}, "horizon"),
    ({"down_dims": (16, 32), "horizon": 15}, "horizon"),
    ({"n_action_steps": 16}, "n_action_steps"),
    ({"preset": "huge"}, "preset"),
    ({"down_dims": (12, 24)}, "down_dims"),
    ({"num_inference_steps": 101}, "num_inference_steps"),
    ({"eta": 1.5}, "eta"),
    ({"degraded_min_steps": 11}, "degraded_min_steps"),
    ({"degraded_max_temperature": 0.5}, "degraded_max_temperature"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        DiffusionConfig(**overrides).validate()
    with pytest.raises(ConfigError, match=rf"^{field}: "):  # the CLI/JSON path reports the same
        from_dict(DiffusionConfig, overrides)
    with pytest.raises(ValueError, match=rf"^{field}: "):
        DiffusionPolicy(DiffusionConfig(**overrides))


def test_config_limits_are_inclusive():
    DiffusionConfig(horizon=16, n_obs_steps=2, n_action_steps=15, num_inference_steps=100).validate()
    for preset in PRESETS:
        DiffusionConfig(preset=preset, horizon=4, n_action_steps=3).validate()
    hash(DiffusionConfig())  # static under jit
    assert hash(DiffusionPolicy(TINY)) == hash(DiffusionPolicy(dataclasses.replace(TINY)))


# -- noise schedule --------------------------------------------------------------------------

def test_schedule_is_a_decreasing_cosine():
    s = make_schedule(100)
    ab = np.asarray(s["alphas_cumprod"])
    assert ab.shape == (100,) and np.all(ab > 0) and np.all(ab <= 1)
    assert np.all(np.diff(ab) < 0)
    assert ab[0] > 0.999 and ab[-1] < 1e-3
    np.testing.assert_allclose(np.cumprod(1 - np.asarray(s["betas"])), ab, rtol=1e-4)


def test_add_noise_interpolates_between_data_and_noise():
    s = make_schedule(100)
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 5), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    near = add_noise(s, x0, noise, jnp.zeros(4, jnp.int32))
    assert float(jnp.abs(near - x0).max()) < 0.15
    far = add_noise(s, x0, noise, jnp.full(4, 99))
    np.testing.assert_allclose(far, noise, atol=1e-3)
    mixed = add_noise(s, x0, noise, jnp.array([0, 30, 60, 99]))  # per-example timesteps
    np.testing.assert_allclose(mixed[1], add_noise(s, x0[1:2], noise[1:2], 30)[0], atol=1e-6)


def test_ddim_timesteps_cover_every_step_count():
    for n in range(1, 101):
        ts = ddim_timesteps(100, n)
        assert len(ts) == n and ts[-1] == 0 and ts[0] <= 99 and np.all(np.diff(ts) < 0), n
    assert list(ddim_timesteps(100, 2)) == [50, 0]
    with pytest.raises(ValueError, match="^num_inference_steps"):
        ddim_timesteps(100, 0)


@pytest.mark.parametrize("steps", [2, 3, 10])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_recovers_the_data_with_an_exact_denoiser(steps, eta):
    s = make_schedule(100)
    ab = s["alphas_cumprod"]
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (3, 16, 5), minval=-0.9, maxval=0.9)

    def exact(x, t):  # the ε that produced x from x0
        a = ab[t][:, None, None]
        return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)

    out = ddim_sample(exact, s, x0.shape, jax.random.PRNGKey(1), steps, temperature=2.0, eta=eta)
    np.testing.assert_allclose(out, x0, atol=1e-4)


# -- shapes per preset -----------------------------------------------------------------------

def raw_batch(rng, b, cfg, obs_dim=OBS_DIM, action_dim=ACTION_DIM):
    k1, k2 = jax.random.split(rng)
    return {"obs": jax.random.normal(k1, (b, cfg.n_obs_steps, obs_dim)),
            "action": jax.random.normal(k2, (b, cfg.horizon, action_dim)),
            "weight": jnp.ones(b)}


def test_presets_shapes_and_sizes():
    counts = {}
    for preset in ("small", "base", "large"):
        policy = DiffusionPolicy(DiffusionConfig(preset=preset))
        assert policy.kind == "diffusion" and policy.n_action_steps == 8 and policy.n_obs_steps == 2
        variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM, ACTION_DIM))
        counts[preset] = policy.param_count(variables)
        batch = raw_batch(jax.random.PRNGKey(1), 3, policy.config)
        if preset == "large":
            break
        # Shapes by abstract evaluation (no compile); the tiny model below runs them for real.
        loss, metrics = jax.eval_shape(policy.loss, variables, batch, jax.random.PRNGKey(2))
        assert loss.shape == () and set(metrics) == {"loss", "mse"}
        assert all(m.shape == () for m in metrics.values())
        action = jax.eval_shape(policy.predict_action, variables, {"obs": batch["obs"]}, jax.random.PRNGKey(3))
        assert action.shape == (3, 8, ACTION_DIM)
    assert counts["small"] < counts["base"] < counts["large"]

    # One real forward pass of the largest model.
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 16, ACTION_DIM))
    eps = jax.jit(policy.noise_prediction)(variables, x, jnp.array([0, 99]), batch["obs"][:2])
    assert eps.shape == x.shape and bool(jnp.all(jnp.isfinite(eps)))


def test_tiny_policy_init_and_loss_weighting():
    policy = DiffusionPolicy(TINY, obs_dim=3, action_dim=2)
    stats = normalizer.identity(3, 2)
    variables = policy.init(jax.random.PRNGKey(0), stats)
    again, other = (policy.init(jax.random.PRNGKey(s), stats)["params"] for s in (0, 1))
    leaves = jax.tree_util.tree_leaves
    assert all(np.array_equal(x, y) for x, y in zip(leaves(variables["params"]), leaves(again)))
    kernels = [(x, y) for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(again)[0], leaves(other))
               if path[-1].key == "kernel"]
    assert kernels and all(not np.array_equal(x, y) for x, y in kernels)
    with pytest.raises(ValueError, match="^normalizer"):
        policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM, ACTION_DIM))

    loss = jax.jit(policy.loss)
    batch = raw_batch(jax.random.PRNGKey(1), 4, policy.config, 3, 2)
    rng = jax.random.PRNGKey(2)
    unit, metrics = loss(variables, batch, rng)
    # Per-example losses, read off with one-hot weights (t and noise depend only on rng and B).
    per_example = np.array([float(loss(variables, dict(batch, weight=jnp.eye(4)[i]), rng)[0]) for i in range(4)])
    assert float(unit) == pytest.approx(per_example.mean(), rel=1e-5)
    assert float(metrics["mse"]) == pytest.approx(per_example.mean(), rel=1e-5)
    w = np.array([1.0, 2.0, 0.5, 0.0], np.float32)
    weighted, metrics = loss(variables, dict(batch, weight=jnp.asarray(w)), rng)
    assert float(weighted) == pytest.approx((w * per_example).sum() / w.sum(), rel=1e-5)
    assert float(metrics["mse"]) == pytest.approx(per_example.mean(), rel=1e-5)  # unweighted
    scaled, _ = loss(variables, dict(batch, weight=jnp.asarray(3 * w)), rng)
    assert float(scaled) == pytest.approx(float(weighted), rel=1e-5)
    zero, _ = loss(variables, dict(batch, weight=jnp.zeros(4)), rng)
    assert float(zero) == 0.0
    with pytest.raises(ValueError, match="^action"):
        loss(variables, dict(batch, action=batch["action"][:, :8]), rng)
    with pytest.raises(ValueError, match="^weight"):
        loss(variables, dict(batch, weight=jnp.ones((4, 1))), rng)


# -- a briefly trained tiny model ------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """TINY trained on three (observation history -> smooth action trajectory) pairs."""
    rs = np.random.default_rng(0)
    k, cfg = 3, TINY
    obs = rs.uniform(-1, 1, (k, cfg.n_obs_steps, OBS_DIM)).astype(np.float32)
    s = np.linspace(0, 1, cfg.horizon)[None, :, None]
    phase, amp = rs.uniform(0, 2 * np.pi, (k, 1, ACTION_DIM)), rs.uniform(0.3, 1.0, (k, 1, ACTION_DIM))
    scale = np.array([0.05, 0.05, 0.05, 0.5, 1.0])  # raw units differ per dim, like the real actions
    action = (scale * (amp * np.sin(2 * np.pi * s + phase) + 0.2)).astype(np.float32)
    stats = normalizer.fit(obs.reshape(-1, OBS_DIM), action.reshape(-1, ACTION_DIM))

    policy = DiffusionPolicy(cfg)
    variables = policy.init(jax.random.PRNGKey(0), stats)
    batch = {"obs": jnp.asarray(np.repeat(obs, 8, 0)), "action": jnp.asarray(np.repeat(action, 8, 0))}
    opt = optax.adam(optax.cosine_decay_schedule(LR, N_TRAIN_STEPS, alpha=0.03))

    @jax.jit
    def step(params, opt_state, rng):
        def loss_fn(p):
            return policy.loss({"params": p, "normalizer": stats}, batch, rng)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state, losses = variables["params"], opt.init(variables["params"]), []
    for i, rng in enumerate(jax.random.split(jax.random.PRNGKey(1), N_TRAIN_STEPS)):
        params, opt_state, loss = step(params, opt_state, rng)
        losses.append(float(loss))

    variables_out, compiled = {"params": params, "normalizer": stats}, {}

    def sample(steps, obs_in, rng, temperature=1.0, eta=cfg.eta):
        """Raw (B, horizon, A); one compile per step count, temperature and eta traced."""
        if steps not in compiled:
            compiled[steps] = jax.jit(lambda v, b, r, temp, e: policy.sample_horizon(
                v, b, r, num_inference_steps=steps, temperature=temp, eta=e))
        return compiled[steps](variables_out, {"obs": obs_in}, rng, temperature, eta)

    return dict(policy=policy, variables=variables_out, obs=obs, action=action, stats=stats,
                losses=np.array(losses), sample=sample)


def normalised_error(trained, raw, target=None):
    """Mean |raw - target| per example in normalised units (the targets span [-1, 1] per dim)."""
    stats = trained["stats"]["action"]
    target = trained["action"] if target is None else target
    diff = normalizer.normalize(stats, raw) - normalizer.normalize(stats, target)
    return np.abs(np.asarray(diff)).mean(axis=(-2, -1))


def test_overfits_a_tiny_dataset(trained):
    losses = trained["losses"]
    assert losses[:10].mean() > 10 * losses[-50:].mean(), (losses[:10].mean(), losses[-50:].mean())

    draws = 6
    obs = np.tile(trained["obs"], (draws, 1, 1))
    out = np.asarray(trained["sample"](10, obs, jax.random.PRNGKey(7))).reshape(draws, *trained["action"].shape)
    err = normalised_error(trained, out)  # (draws, k)
    assert err.mean() < 0.08 and err.max() < 0.2, err
    # Each sample is nearest to its own observation's target: the conditioning is used.
    dist = np.abs(out[:, :, None] - trained["action"][None, None]).mean(axis=(-2, -1))
    assert np.all(dist.argmin(-1) == np.arange(len(trained["obs"]))[None])


def test_predict_action_is_the_executed_slice_and_seeded(trained):
    policy, variables = trained["policy"], trained["variables"]
    obs = jnp.asarray(trained["obs"])
    predict = jax.jit(lambda v, b, r: policy.predict_action(v, b, r))
    a1 = predict(variables, {"obs": obs}, jax.random.PRNGKey(3))
    a2 = predict(variables, {"obs": obs}, jax.random.PRNGKey(3))
    a3 = predict(variables, {"obs": obs}, jax.random.PRNGKey(4))
    assert a1.shape == (3, TINY.n_action_steps, ACTION_DIM)
    np.testing.assert_array_equal(a1, a2)
    assert float(jnp.abs(a1 - a3).max()) > 1e-6
    horizon = trained["sample"](TINY.num_inference_steps, obs, jax.random.PRNGKey(3))
    start = TINY.n_obs_steps - 1
    executed = horizon[:, start:start + TINY.n_action_steps]
    # Arm deltas as sampled; the gripper command snapped to open/closed by its sign.
    np.testing.assert_allclose(a1[..., :GRIPPER], executed[..., :GRIPPER], atol=1e-6)
    np.testing.assert_array_equal(a1[..., GRIPPER], np.where(executed[..., GRIPPER] > 0, 1.0, -1.0))
    raw = DiffusionPolicy(dataclasses.replace(policy.config, binary_gripper=False))
    np.testing.assert_allclose(raw.predict_action(variables, {"obs": obs}, jax.random.PRNGKey(3)), executed, atol=1e-6)


def test_degradation_params_are_monotone():
    policy = DiffusionPolicy(DiffusionConfig())
    assert policy.degradation_params(0.0) == (10, 1.0)
    assert policy.degradation_params(1.0) == (2, 2.5)
    params = [policy.degradation_params(x) for x in np.linspace(0, 1, 21)]
    steps, temps = zip(*params)
    assert all(isinstance(s, int) for s in steps)
    assert all(a >= b for a, b in zip(steps, steps[1:])) and all(a < b for a, b in zip(temps, temps[1:]))
    for level in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="^level"):
            policy.degradation_params(level)
    # Any step count works, including ones that do not divide num_train_timesteps.
    wide = DiffusionPolicy(DiffusionConfig(num_inference_steps=100, degraded_min_steps=1))
    assert {wide.degradation_params(x)[0] for x in np.linspace(0, 1, 101)} >= {1, 100}


def test_degradation_increases_deviation(trained):
    policy, variables = trained["policy"], trained["variables"]
    draws = 8
    obs = np.tile(trained["obs"], (draws, 1, 1))
    rngs = jax.random.split(jax.random.PRNGKey(11), 4)

    shape = (draws, *trained["action"].shape)
    reference = np.asarray(trained["sample"](10, obs, rngs[1])).reshape(shape).mean(0)  # full quality

    def deviation(steps, temperature, eta=TINY.eta):
        out = np.asarray(trained["sample"](steps, obs, rngs[0], temperature, eta)).reshape(shape)
        return normalised_error(trained, out, reference).mean()

    by_level = [deviation(*policy.degradation_params(level)) for level in (0.0, 0.5, 1.0)]
    assert by_level[0] < by_level[1] < by_level[2], by_level
    assert by_level[2] > 2 * by_level[0], by_level
    assert deviation(10, 2.5) > deviation(10, 1.0)  # temperature alone
    assert deviation(2, 1.0) > deviation(10, 1.0)  # stride alone
    # Deterministic DDIM: temperature still degrades (through the initial noise only).
    assert deviation(10, 2.5, eta=0.0) > deviation(10, 1.0, eta=0.0)

    # predict_degraded is the executed slice of the same sampler (gripper snapped, as acting does).
    degraded = jax.jit(lambda v, b, r: policy.predict_degraded(v, b, r, 1.0))(variables, {"obs": obs}, rngs[2])
    steps, temperature = policy.degradation_params(1.0)
    start = TINY.n_obs_steps - 1
    np.testing.assert_allclose(
        degraded,
        binarize_gripper(np.asarray(trained["sample"](steps, obs, rngs[2], temperature)))[:, start:start + TINY.n_action_steps],
        atol=1e-5)


def test_normaliser_covers_the_task_space_not_only_the_demos():
    # Demos of one placement: the plate never moves. Fitted on them alone, a plate at the edge
    # of the table would normalise far outside [-1, 1]; with the workspace bounds it stays inside.
    import envs
    from ada_curriculum.policies.obs import OBS_KEYS, OBS_SIZES, workspace_bounds

    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.1, 0.1, (200, OBS_DIM))
    offset = {k: sum(OBS_SIZES[j] for j in OBS_KEYS[:i]) for i, k in enumerate(OBS_KEYS)}
    tx, ty = offset["target_pos"], offset["target_pos"] + 1
    obs[:, tx], obs[:, ty] = envs.NOMINAL.target_x, envs.NOMINAL.target_y
    action = rng.uniform(-1, 1, (200, ACTION_DIM))
    far = obs[:1].copy()
    far[0, tx], far[0, ty] = envs.FULL["target_x"].high, envs.FULL["target_y"].low

    narrow = normalizer.fit(obs, action)
    assert abs(float(normalizer.normalize(narrow["obs"], far)[0, ty])) > 10
    wide = normalizer.fit(obs, action, obs_bounds=workspace_bounds())
    assert np.all(np.abs(np.asarray(normalizer.normalize(wide["obs"], far))[0, [tx, ty]]) <= 1.0 + 1e-6)
    # Entries without known bounds (joints but the wrist's yaw) keep the demos' range.
    np.testing.assert_allclose(wide["obs"]["low"][:5], narrow["obs"]["low"][:5])
    np.testing.assert_allclose(wide["action"]["low"], narrow["action"]["low"])


def test_normaliser_covers_headings_the_task_space_produces():
    # Nominal demos hold a banana at yaw 0 (quaternion z within a few hundredths) and a gripper
    # that barely turns. A banana and gripper turned to any heading of the full space stay
    # inside [-1, 1] with the workspace bounds; fitted on the demos alone, the near box's 27
    # degrees already lands several times outside.
    import envs
    from ada_curriculum.policies.obs import OBS_KEYS, OBS_SIZES, workspace_bounds

    rng = np.random.default_rng(0)
    offset = {k: sum(OBS_SIZES[j] for j in OBS_KEYS[:i]) for i, k in enumerate(OBS_KEYS)}
    q, e, wrist = offset["banana_quat"], offset["ee_yaw"], offset["joint_pos"] + 5
    obs = rng.uniform(-0.02, 0.02, (200, OBS_DIM))
    obs[:, q] = 1.0
    obs[:, e] = 1.0
    action = rng.uniform(-1, 1, (200, ACTION_DIM))
    narrow = normalizer.fit(obs, action)
    wide = normalizer.fit(obs, action, obs_bounds=workspace_bounds())
    near_yaw = envs.near_space()["banana_yaw"].high
    for yaw in (near_yaw, -near_yaw, envs.FULL["banana_yaw"].low, envs.FULL["banana_yaw"].high, 2.0):
        turned = obs[:1].copy()
        turned[0, q:q + 4] = np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)
        grip = float(np.clip(yaw, -2.4, 2.4))  # the env's commanded-yaw limit
        turned[0, e:e + 2] = np.cos(grip), np.sin(grip)
        turned[0, wrist] = grip
        got = np.asarray(normalizer.normalize(wide["obs"], turned))[0, [q, q + 3, e, e + 1, wrist]]
        assert np.all(np.abs(got) <= 1.0 + 1e-6), (yaw, got)
    turned = obs[:1].copy()
    turned[0, q + 3] = np.sin(near_yaw / 2)
    assert abs(float(normalizer.normalize(narrow["obs"], turned)[0, q + 3])) > 5


def test_binarize_gripper_snaps_only_the_gripper_command():
    a = np.array([[0.3, -0.2, 0.1, 0.05, 0.9], [0.0, 0.0, 0.0, 0.0, -0.2], [0.1, 0.1, 0.1, 0.1, 0.0]], np.float32)
    for out in (binarize_gripper(a), np.asarray(binarize_gripper(jnp.asarray(a)))):
        np.testing.assert_array_equal(out[:, :GRIPPER], a[:, :GRIPPER])
        np.testing.assert_array_equal(out[:, GRIPPER], [1.0, -1.0, -1.0])  # 0 is not a close command
    assert a[0, GRIPPER] == np.float32(0.9)  # the input is left as it was


def test_sample_chain_plans_as_predict_action_and_its_likelihood_recomputes(trained):
    """The chain behind a chunk (DPPO's action): the same chunk `predict_action` plans from the
    same key, and each step's log-likelihood, recomputed from the stored chain, is what sampling
    reported; other weights give other likelihoods."""
    variables, obs = trained["variables"], jnp.asarray(trained["obs"])
    policy = DiffusionPolicy(dataclasses.replace(TINY, min_step_std=0.1))
    key = jax.random.PRNGKey(5)
    chunk, chain, logp = jax.jit(policy.sample_chain)(variables, {"obs": obs}, key)
    S = TINY.num_inference_steps
    assert chain.shape == (3, S + 1, TINY.horizon, ACTION_DIM) and logp.shape == (3, S)
    np.testing.assert_allclose(chunk, policy.predict_action(variables, {"obs": obs}, key), atol=1e-6)
    executed = normalizer.unnormalize(trained["stats"]["action"], chain[:, -1])[:, TINY.n_obs_steps - 1:][:, :8]
    np.testing.assert_allclose(chunk[..., :GRIPPER], executed[..., :GRIPPER], atol=1e-5)

    again = jax.jit(policy.chain_log_prob)(variables, obs, chain)
    np.testing.assert_allclose(again, logp, rtol=1e-4, atol=1e-2)
    last = policy.chain_log_prob(variables, obs, chain, first_step=S - 3)
    np.testing.assert_allclose(last, logp[:, -3:], rtol=1e-4, atol=1e-2)
    nudged = jax.tree_util.tree_map(lambda x: x * 1.05, variables["params"])
    moved = policy.chain_log_prob({**variables, "params": nudged}, obs, chain)
    assert float(jnp.abs(moved - logp).max()) > 1.0
    # The floor makes every step stochastic, the last included; deterministic DDIM has no likelihood.
    assert np.all(np.isfinite(logp)) and np.all(np.asarray(logp) != 0)
    plain = DiffusionPolicy(dataclasses.replace(TINY, eta=0.0))
    assert float(jnp.abs(plain.sample_chain(variables, {"obs": obs}, key)[2]).max()) == 0.0
