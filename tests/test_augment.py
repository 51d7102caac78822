"""The relative observation frame and the rotation augmentation it allows (data/augment.py)."""

import json

import numpy as np
import pytest

import envs
from ada_curriculum import config as config_lib
from ada_curriculum.cli import main
from ada_curriculum.data import augment
from ada_curriculum.policies import normalizer
from ada_curriculum.policies.obs import OBS_DIM, RELATIVE_DIM, flatten_obs, workspace_bounds
from ada_curriculum.pretrain import PretrainConfig, load_policy


def real_observation(seed=3):
    env = envs.make("banana-place", tasks="full", seed=seed)
    try:
        ts = env.reset(seed=seed)
        for _ in range(5):  # the arm moves off home, so nothing sits at a special value
            ts = env.step(np.array([0.5, -0.3, -0.2, 0.2, -1.0]))
        return {k: np.array(v) for k, v in ts.observation.items()}
    finally:
        env.close()


def turned(obs, angle):
    """The same scene turned about the vertical through the origin: positions and headings."""
    c, s = np.cos(angle), np.sin(angle)
    out = dict(obs)
    for key in ("ee_pos", "banana_pos", "target_pos"):
        x, y, z = obs[key]
        out[key] = np.array([c * x - s * y, s * x + c * y, z], np.float32)
    w, z = obs["banana_quat"][0], obs["banana_quat"][3]
    yaw = 2 * np.arctan2(z, w) + angle
    out["banana_quat"] = np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)], np.float32)
    ee_yaw = np.arctan2(obs["ee_yaw"][1], obs["ee_yaw"][0]) + angle
    out["ee_yaw"] = np.array([np.cos(ee_yaw), np.sin(ee_yaw)], np.float32)
    return out


def test_the_relative_frame_does_not_see_where_the_scene_sits():
    obs = real_observation()
    rel = flatten_obs(obs, "relative")
    assert rel.shape == (RELATIVE_DIM,) and flatten_obs(obs).shape == (OBS_DIM,)
    np.testing.assert_allclose(rel[:3], obs["banana_pos"] - obs["ee_pos"], atol=1e-6)
    np.testing.assert_allclose(rel[3:6], obs["target_pos"] - obs["banana_pos"], atol=1e-6)
    shifted = dict(obs)
    for key in ("ee_pos", "banana_pos", "target_pos"):
        shifted[key] = obs[key] + np.array([0.07, -0.05, 0.0], np.float32)
    np.testing.assert_allclose(flatten_obs(shifted, "relative"), rel, atol=1e-6)
    assert not np.allclose(flatten_obs(shifted), flatten_obs(obs))  # the world frame does see it
    # A banana turned half a circle is the same grasp.
    flipped = turned(obs, 0.0)
    w, z = obs["banana_quat"][0], obs["banana_quat"][3]
    flipped["banana_quat"] = np.array([-z, 0, 0, w], np.float32)  # yaw + pi
    np.testing.assert_allclose(flatten_obs(flipped, "relative"), rel, atol=1e-5)


@pytest.mark.parametrize("angle", [0.4, -2.0, np.pi])
def test_rotating_a_batch_is_turning_the_scene(angle):
    obs = real_observation()
    batch = {"obs": flatten_obs(obs, "relative")[None, None],
             "action": np.array([[[0.5, -0.3, -0.2, 0.2, 1.0]]], np.float32), "weight": np.ones(1, np.float32)}
    out = augment.rotate(batch, np.array([angle]))
    np.testing.assert_allclose(out["obs"][0, 0], flatten_obs(turned(obs, angle), "relative"), atol=1e-5)
    c, s = np.cos(angle), np.sin(angle)
    np.testing.assert_allclose(out["action"][0, 0], [c * 0.5 + s * 0.3, s * 0.5 - c * 0.3, -0.2, 0.2, 1.0], atol=1e-6)
    assert out["weight"] is batch["weight"] and np.all(batch["obs"] == flatten_obs(obs, "relative"))  # input kept
    back = augment.rotate(out, np.array([-angle]))
    np.testing.assert_allclose(back["obs"], batch["obs"], atol=1e-6)


def test_turned_windows_stay_inside_the_normaliser():
    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.05, 0.05, (300, RELATIVE_DIM)).astype(np.float32)
    obs[:, 0] += 0.3  # demos of one placement: every approach in one direction
    action = rng.uniform(-1.0, 1.0, (300, 5)).astype(np.float32)
    action[:, 0] = rng.uniform(0.5, 1.0, 300)
    stats = augment.rotation_symmetric(normalizer.fit(obs, action, obs_bounds=workspace_bounds("relative")))
    batch = augment.random_rotation({"obs": obs[:, None], "action": action[:, None]}, rng)
    for key in ("obs", "action"):
        y = normalizer.normalize(stats[key], batch[key])
        assert np.all(np.abs(y) <= 1.0 + 1e-5), key
    # Turning the actions does not change what happens along z, in yaw or at the gripper.
    np.testing.assert_array_equal(batch["action"][..., 2:], action[:, None, 2:])


def test_sequence_batches_turn_previous_actions_too():
    rng = np.random.default_rng(1)
    batch = {"obs": rng.normal(size=(2, 4, RELATIVE_DIM)).astype(np.float32),
             "prev_action": rng.normal(size=(2, 4, 5)).astype(np.float32),
             "action": rng.normal(size=(2, 4, 3, 5)).astype(np.float32), "mask": np.ones((2, 4), bool)}
    out = augment.rotate(batch, np.array([np.pi / 2, 0.0]))
    np.testing.assert_allclose(out["prev_action"][0, :, :2], np.stack([-batch["prev_action"][0, :, 1],
                                                                       batch["prev_action"][0, :, 0]], -1), atol=1e-6)
    np.testing.assert_allclose(out["action"][0, ..., 0], -batch["action"][0, ..., 1], atol=1e-6)
    np.testing.assert_allclose(out["action"][1], batch["action"][1], atol=1e-6)  # angle 0


def test_rotation_is_refused_in_the_world_frame(tmp_path, capsys):
    with pytest.raises(config_lib.ConfigError, match="^augment: rotate needs the relative observation frame"):
        config_lib.from_dict(PretrainConfig, {"demos": "d", "out": "o", "augment": "rotate"}).validate()
    out = tmp_path / "run"
    assert main(["pretrain", "--demos", str(tmp_path), "--out", str(out), "--augment", "rotate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: augment: rotate needs") and err.count("\n") == 1 and not out.exists()
    assert main(["pretrain", "--demos", str(tmp_path), "--out", str(out), "--diffusion.obs-frame", "polar"]) == 2
    assert "obs_frame" in capsys.readouterr().err and not out.exists()


def test_a_relative_rotated_beachhead_trains_acts_and_fine_tunes(demos, tmp_path):
    from ada_curriculum.checkpointing import CheckpointError
    from ada_curriculum.train import TrainConfig, init_frame_settings, train

    bc = tmp_path / "bc"
    frame = ["--diffusion.obs-frame", "relative", "--diffusion.down-dims", "16,32",
             "--diffusion.num-inference-steps", "2"]
    assert main(["pretrain", "--demos", demos, "--out", str(bc), "--updates", "4", "--batch-size", "8",
                 "--log-every", "2", "--optim.warmup-steps", "2", "--augment", "rotate", *frame]) == 0
    policy, variables, cfg, _ = load_policy(bc)
    assert policy.obs_frame == "relative" and policy.obs_dim == RELATIVE_DIM and cfg.augment == "rotate"
    lo, hi = (np.asarray(variables["normalizer"]["action"][k]) for k in ("low", "high"))
    assert lo[0] == pytest.approx(-hi[1]) and hi[0] == pytest.approx(hi[1])  # a disc in x/y
    assert main(["eval", "--checkpoint", str(bc), "--tasks", "full", "--episodes", "2", "--num-envs", "2",
                 "--time-limit", "10", "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["episodes"] == 2

    run = tmp_path / "rl"
    settings = {
        "run": str(run), "init": str(bc), "demos": demos, "time_limit": 15, "num_actors": 1, "envs_per_actor": 2,
        "actor_steps_per_call": 8, "batch_size": 16, "updates_per_call": 4, "max_updates": 8, "max_minutes": 5.0,
        "replay": {"min_size_to_sample": 8, "samples_per_insert": 64.0}, "distributed": False, "augment": "rotate",
        "diffusion": {"obs_frame": "relative", "down_dims": [16, 32], "num_inference_steps": 2},
        "optim": {"warmup_steps": 2}, "dashboard": False, "embedding_every": 0,
    }
    # Fine-tuning in another frame than the beachhead's is refused, naming the field.
    world = {**settings, "run": str(tmp_path / "rl-world"), "augment": "none",
             "diffusion": {"down_dims": [16, 32], "num_inference_steps": 2}}
    with pytest.raises(CheckpointError, match="^diffusion.obs_frame: the --init run sees observations in the "
                                              "'relative' frame; pass --diffusion.obs-frame relative$"):
        train(config_lib.from_dict(TrainConfig, world))
    assert not list((tmp_path / "rl-world").glob("checkpoints/*[0-9]"))  # no checkpoint written

    summary = train(config_lib.from_dict(TrainConfig, settings))
    assert summary["updates"] >= 8 and summary["replay"]["online"]["size"] > 0
    tuned, _, tuned_cfg, _ = load_policy(run)
    assert tuned.obs_dim == RELATIVE_DIM and tuned_cfg.augment == "rotate"
    assert init_frame_settings(bc) == {"diffusion": {"obs_frame": "relative"}, "augment": "rotate"}
