"""Replay buffer against a real Reverb server on localhost (small tables, short episodes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ada_curriculum.config import ConfigError
from ada_curriculum.replay import ReplayClient, ReplayConfig, ReplayFullError, ReplayServer, window_spec

OBS_DIM, ACTION_DIM, TASK_DIM = 3, 2, 2
DEMO, ONLINE = ReplayServer.DEMO, ReplayServer.ONLINE
# Rate limiting out of the way unless a test is about it.
LOOSE = ReplayConfig(demo_table_size=1000, online_table_size=1000, samples_per_insert=1.0,
                     min_size_to_sample=1, error_buffer=10_000.0)


@pytest.fixture
def make_replay(tmp_path):
    """make_replay(config, window, n_obs_steps, **server_kwargs) -> (server, client); all stopped after."""
    made = []

    def make(config=LOOSE, window=4, n_obs_steps=2, **kwargs):
        # Without a checkpoint_dir Reverb leaves a temp dir behind per server.
        kwargs.setdefault("checkpoint_dir", str(tmp_path / f"server{len(made)}"))
        server = ReplayServer(config, OBS_DIM, ACTION_DIM, TASK_DIM, window, **kwargs)
        made.append(server)
        client = ReplayClient(server.address, window, n_obs_steps)
        made.append(client)
        return server, client

    yield make
    for obj in reversed(made):
        obj.close() if isinstance(obj, ReplayClient) else obj.stop()


def episode(T, version=0, weight=1.0, trial_base=0):
    """Step t has obs [10t, 10t+1, 10t+2] and action [100+t, -t]; obs row T must go unused."""
    obs = 10.0 * np.arange(T + 1)[:, None] + np.arange(OBS_DIM)
    obs[T] = -999.0
    action = np.stack([100.0 + np.arange(T), -np.arange(T, dtype=float)], axis=1)
    return dict(obs=obs, action=action, weight=weight, success=weight > 0, version=version,
                task=np.array([0.5, -0.25]), trial_index=trial_base + np.arange(T))


def padded_window(ep, t, window, n_obs_steps):
    """Diffusion Policy padding: the window of real step t starts at t - (n_obs_steps - 1),
    with out-of-episode steps clamped to the first / last step."""
    T = len(ep["action"])
    idx = np.clip(t - (n_obs_steps - 1) + np.arange(window), 0, T - 1)
    return ep["obs"][idx], ep["action"][idx]


@pytest.mark.parametrize("window,n_obs_steps", [(4, 2), (7, 3)])
def test_windows_are_padded_episode_slices(make_replay, window, n_obs_steps):
    server, client = make_replay(window=window, n_obs_steps=n_obs_steps)
    T = 5
    ep = episode(T, version=-1, trial_base=10)
    assert client.add_episode(DEMO, **ep) == T
    assert server.info()[DEMO]["size"] == T

    batch = client.sample(DEMO, 200)
    spec = window_spec(OBS_DIM, ACTION_DIM, TASK_DIM, window)
    assert {k: (v.shape[1:], v.dtype) for k, v in batch.items()} == spec
    seen = set()
    for i in range(200):
        t = int(batch["trial"][i]) - 10  # trial_index identifies the window's real step
        assert 0 <= t < T
        seen.add(t)
        want_obs, want_action = padded_window(ep, t, window, n_obs_steps)
        np.testing.assert_array_equal(batch["obs"][i], want_obs)
        np.testing.assert_array_equal(batch["action"][i], want_action)
        # The window's last observation slot is its real step's observation.
        np.testing.assert_array_equal(batch["obs"][i, n_obs_steps - 1], ep["obs"][t])
        assert (batch["version"][i], batch["weight"][i], batch["success"][i]) == (-1, 1.0, 1.0)
        np.testing.assert_array_equal(batch["task"][i], ep["task"])
    assert seen == set(range(T))
    assert not np.any(batch["obs"] == -999.0)  # obs row T is never stored

    # Spelled out: the first step repeats before the start, the last one after the end.
    first = batch["obs"][batch["trial"] == 10][0, :, 0]
    last = batch["action"][batch["trial"] == 14][0, :, 0]
    assert list(first[:n_obs_steps]) == [0.0] * n_obs_steps
    assert list(last[n_obs_steps - 1:]) == [104.0] * (window - n_obs_steps + 1)


def test_windows_match_offline_diffusion_windows(make_replay):
    from ada_curriculum.data.windows import DiffusionWindows, EpisodeArrays

    n_obs_steps, horizon, T = 2, 4, 5
    _, client = make_replay(window=horizon, n_obs_steps=n_obs_steps)
    ep = episode(T)
    client.add_episode(DEMO, **ep)
    replay = client.sample(DEMO, 100)
    replay_windows = {(o[:n_obs_steps].tobytes(), a.tobytes()) for o, a in zip(replay["obs"], replay["action"])}
    offline = DiffusionWindows([EpisodeArrays(ep["obs"].astype(np.float32), ep["action"].astype(np.float32),
                                              np.zeros(T + 1, np.int32))], n_obs_steps, horizon)
    b = offline.sample(np.random.default_rng(0), 100)
    offline_windows = {(o.tobytes(), a.tobytes()) for o, a in zip(b["obs"], b["action"])}
    assert len(offline_windows) == T and offline_windows == replay_windows


def test_demo_table_never_evicts_online_table_is_fifo(make_replay):
    config = dataclasses.replace(LOOSE, demo_table_size=12, online_table_size=8)
    server, client = make_replay(config)
    client.add_episode(DEMO, **episode(5))
    client.add_episode(DEMO, **episode(5))
    with pytest.raises(ReplayFullError, match="demo table holds 10 of 12"):
        client.add_episode(DEMO, **episode(5))
    assert client.add_episode(DEMO, **episode(2)) == 2  # exactly full is fine
    demo = server.info()[DEMO]
    assert demo["size"] == demo["num_inserts"] == 12

    for version in range(3):
        client.add_episode(ONLINE, **episode(5, version=version))
    online = server.info()[ONLINE]
    assert (online["size"], online["max_size"], online["num_inserts"]) == (8, 8, 15)
    batch = client.sample(ONLINE, 100)
    # The 8 newest windows: all of episode 2 and the last 3 of episode 1.
    kept = {(v, int(tr)) for v, tr in zip(batch["version"], batch["trial"])}
    assert kept == {(2, t) for t in range(5)} | {(1, t) for t in (2, 3, 4)}


def test_online_rate_limiter_blocks_until_enough_inserts(make_replay):
    # Sampling needs 8 windows; then at most inserts * 1 - (8 - 3) samples.
    config = dataclasses.replace(LOOSE, samples_per_insert=1.0, min_size_to_sample=8, error_buffer=3.0)
    server, client = make_replay(config)
    client.add_episode(ONLINE, **episode(5))
    with pytest.raises(TimeoutError):
        client.sample(ONLINE, 1, timeout_ms=300)  # 5 < min_size_to_sample
    client.add_episode(ONLINE, **episode(5))
    assert len(client.sample(ONLINE, 5, timeout_ms=5000)["obs"]) == 5  # 10 inserts allow 5 samples
    with pytest.raises(TimeoutError):
        client.sample(ONLINE, 1, timeout_ms=300)  # the 6th waits for another insert
    client.add_episode(ONLINE, **episode(1))
    assert len(client.sample(ONLINE, 1, timeout_ms=5000)["obs"]) == 1
    online = server.info()[ONLINE]
    assert (online["num_inserts"], online["num_samples"]) == (11, 6)
    # The demo table only waits for its first window.
    with pytest.raises(TimeoutError):
        client.sample(DEMO, 1, timeout_ms=200)
    client.add_episode(DEMO, **episode(1))
    assert len(client.sample(DEMO, 50, timeout_ms=5000)["obs"]) == 50


def test_mixed_batches_composition(make_replay):
    _, client = make_replay()
    client.add_episode(DEMO, **episode(5, version=-1, weight=1.0))
    client.add_episode(ONLINE, **episode(5, version=7, weight=0.0))

    batches = client.mixed_batches(8, 0.25)
    for _ in range(3):
        b = next(batches)
        assert b["obs"].shape == (8, 4, OBS_DIM) and b["is_demo"].dtype == bool
        assert list(b["is_demo"]) == [True] * 2 + [False] * 6
        np.testing.assert_array_equal(b["version"], np.where(b["is_demo"], -1, 7))
        np.testing.assert_array_equal(b["weight"], np.where(b["is_demo"], 1.0, 0.0))
    for fraction, version in ((1.0, -1), (0.0, 7)):
        b = next(client.mixed_batches(6, fraction))
        assert len(b["obs"]) == 6 and np.all(b["version"] == version)
        assert np.all(b["is_demo"] == (fraction == 1.0))
    with pytest.raises(ValueError, match="^demo_fraction"):
        client.mixed_batches(8, 1.5)


def test_dataset_batches(make_replay):
    _, client = make_replay(window=6, n_obs_steps=2)
    client.add_episode(ONLINE, **episode(9))
    spec = window_spec(OBS_DIM, ACTION_DIM, TASK_DIM, 6)
    batches = client.dataset(ONLINE, batch_size=16)
    for _ in range(3):
        b = next(batches)
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == {k: ((16, *s), d) for k, (s, d) in spec.items()}


def test_checkpoint_restores_tables(make_replay, tmp_path):
    config = dataclasses.replace(LOOSE, online_table_size=8)
    server, client = make_replay(config, checkpoint_dir=str(tmp_path))
    demo_ep = episode(5, version=-1, trial_base=10)
    client.add_episode(DEMO, **demo_ep)
    for version in range(2):
        client.add_episode(ONLINE, **episode(5, version=version))
    before = server.info()
    path = client.checkpoint()
    assert path.startswith(str(tmp_path))
    server.stop()

    server, client = make_replay(config, checkpoint_dir=str(tmp_path))
    after = server.info()
    for table in (DEMO, ONLINE):
        assert {k: after[table][k] for k in ("size", "max_size", "num_inserts")} == \
               {k: before[table][k] for k in ("size", "max_size", "num_inserts")}
    assert (after[DEMO]["size"], after[ONLINE]["size"]) == (5, 8)
    batch = client.sample(DEMO, 50)
    for obs, action, trial in zip(batch["obs"], batch["action"], batch["trial"]):
        want_obs, want_action = padded_window(demo_ep, int(trial) - 10, 4, 2)
        np.testing.assert_array_equal(obs, want_obs)
        np.testing.assert_array_equal(action, want_action)
    assert set(client.sample(ONLINE, 50)["version"]) == {0, 1}
    server.stop()

    # A checkpoint keeps its own table options, so a disagreeing config is refused.
    with pytest.raises(ConfigError, match="^online_table_size"):
        make_replay(dataclasses.replace(config, online_table_size=16), checkpoint_dir=str(tmp_path))


def test_weight_sampler_draws_windows_in_proportion_to_weight(make_replay):
    """online_sampler="weight": failed episodes' windows (weight 0) are never drawn once a
    positive weight is there, and windows of weights 1 and 3 come out about 1:3."""
    server, client = make_replay(dataclasses.replace(LOOSE, online_sampler="weight"))
    client.add_episode(ONLINE, **episode(6, version=0, weight=0.0))
    client.add_episode(ONLINE, **episode(6, version=1, weight=1.0))
    client.add_episode(ONLINE, **episode(6, version=2, weight=3.0))
    versions = np.concatenate([client.sample(ONLINE, 200)["version"] for _ in range(4)])
    assert 0 not in set(versions.tolist())
    share = np.mean(versions == 2)
    assert 0.68 < share < 0.82, share  # 0.75 expected; 800 draws give a standard error of 0.015

    # The same episodes in a uniform table: failures are drawn as often as anything else.
    _, uniform = make_replay()
    for v, w in enumerate((0.0, 1.0, 3.0)):
        uniform.add_episode(ONLINE, **episode(6, version=v, weight=w))
    assert 0.2 < np.mean(uniform.sample(ONLINE, 600)["version"] == 0) < 0.47


def test_weight_sampler_on_sequence_windows_skips_failed_trials_only_windows(tmp_path):
    """Sequence layout: a window's priority is its share of weighted chunk entries, so windows
    that hold only a failed trial's actions are not drawn while others are."""
    config = dataclasses.replace(LOOSE, online_sampler="weight")
    server = ReplayServer(config, OBS_DIM, ACTION_DIM, TASK_DIM, 3, layout="sequence", chunk=2,
                          checkpoint_dir=str(tmp_path))
    client = ReplayClient(server.address, 3, 1)
    try:
        T = 8
        ep = episode(T)
        trial = np.array([0, 0, 0, 0, 1, 1, 1, 1])
        # Trial 0 failed, trial 1 succeeded: windows ending at steps 2 and 3 hold only trial 0's actions.
        client.add_episode(ONLINE, ep["obs"], ep["action"], weight=1.0, success=True, version=0, task=ep["task"],
                           trial_index=trial, action_weight=np.where(trial == 1, 1.0, 0.0))
        got = client.sample(ONLINE, 300)
    finally:
        client.close()
        server.stop()
    last_trial = got["trial"]
    assert set(last_trial.tolist()) == {1}  # every drawn window reaches into the successful trial
    assert got["action_weight"].sum(axis=(1, 2)).min() > 0


def test_restore_refuses_a_changed_online_sampler(make_replay, tmp_path):
    server, client = make_replay(checkpoint_dir=str(tmp_path))
    client.add_episode(ONLINE, **episode(5))
    client.checkpoint()
    server.stop()
    with pytest.raises(ConfigError, match="^online_sampler"):
        make_replay(dataclasses.replace(LOOSE, online_sampler="weight"), checkpoint_dir=str(tmp_path))


@pytest.mark.parametrize("field,value", [
    ("demo_table_size", 0), ("online_table_size", -5), ("min_size_to_sample", 0),
    ("min_size_to_sample", 2000), ("samples_per_insert", 0.0), ("error_buffer", 4.0),
    ("online_sampler", "priority"),
])
def test_config_validation_names_the_field(field, value):
    config = dataclasses.replace(LOOSE, **{"samples_per_insert": 8.0, field: value})
    with pytest.raises(ValueError, match=f"^{field}"):
        config.validate()
    with pytest.raises(ValueError, match=f"^{field}"):
        ReplayServer(config, OBS_DIM, ACTION_DIM, TASK_DIM, 4)  # fails before starting a server


def test_add_episode_rejects_bad_shapes(make_replay):
    _, client = make_replay()
    ep = episode(5)
    with pytest.raises(ValueError, match="^obs"):
        client.add_episode(DEMO, **{**ep, "obs": ep["obs"][:3]})
    with pytest.raises(ValueError, match="^task"):
        client.add_episode(DEMO, **{**ep, "task": np.zeros(3)})
    with pytest.raises(ValueError, match="^table"):
        client.add_episode("nope", **ep)
    with pytest.raises(ValueError, match="^window"):
        ReplayClient(client.address, 5, 2)


def test_chain_layout_holds_decisions_beside_demo_windows(make_replay, tmp_path):
    """DPPO's layout: demo windows as ever, and one online item per planned chunk with its chain."""
    cfg = LOOSE
    server = ReplayServer(cfg, OBS_DIM, ACTION_DIM, TASK_DIM, 4, layout="chain", n_obs_steps=2, chain_steps=3,
                          checkpoint_dir=str(tmp_path / "chain"))
    client = ReplayClient(server.address, 4, 2)
    try:
        assert client.layout == "chain"
        client.add_episode(DEMO, **episode(6, version=-1))
        n = 5
        obs = np.arange(n)[:, None, None] + np.zeros((n, 2, OBS_DIM))
        chain = np.arange(n)[:, None, None, None] + np.zeros((n, 4, 4, ACTION_DIM))
        logp = -np.arange(n)[:, None] - np.arange(3)[None] / 10
        assert client.add_decisions(ONLINE, obs, chain, logp, advantage=np.arange(n) - 2.0, success=True,
                                    version=7, task=np.array([0.5, -0.25])) == n
        batch = next(client.chain_batches(8, demo_fraction=0.25))
        assert batch["obs"].shape == (2, 4, OBS_DIM) and batch["action"].shape == (2, 4, ACTION_DIM)
        assert batch["ppo/obs"].shape == (6, 2, OBS_DIM) and batch["ppo/chain"].shape == (6, 4, 4, ACTION_DIM)
        # Each decision's fields stay together: the row index shows in obs, chain, logp and advantage.
        i = batch["ppo/obs"][:, 0, 0].astype(int)
        np.testing.assert_array_equal(batch["ppo/chain"][:, 2, 1, 0], i)
        np.testing.assert_allclose(batch["ppo/logp"], -i[:, None] - np.arange(3)[None] / 10, rtol=1e-6)
        np.testing.assert_array_equal(batch["ppo/advantage"], i - 2.0)
        assert set(batch["ppo/version"]) == {7} and set(batch["ppo/success"]) == {1.0}
        with pytest.raises(ValueError, match="^table: 'online' holds decisions"):
            client.add_episode(ONLINE, **episode(3))
        with pytest.raises(ValueError, match="^chain: expected shape"):
            client.add_decisions(ONLINE, obs, chain[:, :3], logp, 0.0, True, 7, np.zeros(2))
        with pytest.raises(ValueError, match="^table: 'demo' holds windows"):
            client.add_decisions(DEMO, obs, chain, logp, 0.0, True, 7, np.zeros(2))
        with pytest.raises(ValueError, match="^n_obs_steps/chain_steps"):
            ReplayServer(cfg, OBS_DIM, ACTION_DIM, TASK_DIM, 4, layout="chain")
    finally:
        client.close()
        server.stop()
