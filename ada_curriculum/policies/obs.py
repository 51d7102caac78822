"""Which observation entries a policy sees, flattened into one low-dimensional vector.

Two frames (a policy's `obs_frame`, saved with its config):
- "world": the env's entries as they are (`OBS_KEYS`), positions in the arm base's frame.
- "relative": what the scripted teleoperator acts on, and nothing that pins the scene to one
  place on the table: the banana from the hand, the plate from the banana, heights, the gripper,
  and the banana's heading from the hand's (doubled, since the grasp works either way round).
  Shifting the whole scene leaves it unchanged, and turning the scene about the vertical turns
  its horizontal vectors with the actions' (`PLANAR_PAIRS`), which is what `data.augment`
  rotates. Demos of one placement then cover every direction of approach.

Either frame with "+reward" (`world+reward`, `relative+reward`) appends the env's `trial_reward`,
what the previous trial earned (0 in the first): how a policy with memory across trials learns
the outcome of its earlier attempts (ADA and RL^2 feed the agent its reward). The reward is held
through the next trial rather than shown on one step, so every step of a trial carries it;
the hidden-plate task needs it, since the outcome of a placement is visible nowhere else.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

# Order matters: it fixes the layout of the policy's observation vector.
OBS_KEYS = ("joint_pos", "joint_vel", "gripper", "ee_pos", "ee_yaw", "banana_pos", "banana_quat", "target_pos")
OBS_SIZES = {"joint_pos": 6, "joint_vel": 6, "gripper": 1, "ee_pos": 3, "ee_yaw": 2,
             "banana_pos": 3, "banana_quat": 4, "target_pos": 3}
OBS_DIM = sum(OBS_SIZES[k] for k in OBS_KEYS)
FRAMES = ("world", "relative", "world+reward", "relative+reward")
REWARD_SUFFIX = "+reward"
# The relative frame's layout: (name, size).
RELATIVE_LAYOUT = (("banana_from_ee", 3), ("target_from_banana", 3), ("ee_z", 1), ("gripper", 1),
                   ("grasp_heading", 2))
RELATIVE_DIM = sum(n for _, n in RELATIVE_LAYOUT)
# Horizontal (x, y) index pairs a rotation about the vertical turns: in the relative frame's
# observation, and in the action (the end effector's x/y delta).
PLANAR_PAIRS = {"relative": ((0, 1), (3, 4)), "action": ((0, 1),)}
ACTION_DIM = 5
GRIPPER = 4  # the gripper command's index in the action vector (-1 open, +1 closed)


def binarize_gripper(actions):
    """Actions (..., ACTION_DIM) with the gripper command snapped to -1 or +1 (jax or numpy).

    The env's gripper is a position target: a command of 0.9 closes the jaws short of the full
    squeeze and holds the banana with less force. Demos command exactly -1 or +1, but a learned
    policy regresses to values just inside them, and those weaker grasps slip; policies trained
    on their own rollouts (RL, self-imitation) then shrink the command further. Snapping keeps
    the command the demonstrator's binary one.
    """
    import jax.numpy as jnp

    xp = jnp if not isinstance(actions, np.ndarray) else np
    snapped = xp.where(actions[..., GRIPPER] > 0, 1.0, -1.0).astype(actions.dtype)
    if xp is np:
        out = actions.copy()
        out[..., GRIPPER] = snapped
        return out
    return actions.at[..., GRIPPER].set(snapped)


def check_frame(frame: str) -> None:
    from ada_curriculum.config import ConfigError

    if frame not in FRAMES:
        raise ConfigError("obs_frame", f"expected one of {', '.join(FRAMES)}, got {frame!r}")


def geometry(frame: str) -> str:
    """The frame's geometric part: "world" or "relative" (without "+reward")."""
    check_frame(frame)
    return frame.removesuffix(REWARD_SUFFIX)


def has_reward(frame: str) -> bool:
    check_frame(frame)
    return frame.endswith(REWARD_SUFFIX)


def obs_dim(frame: str = "world") -> int:
    return (OBS_DIM if geometry(frame) == "world" else RELATIVE_DIM) + int(has_reward(frame))


def _lookup(obs: Mapping[str, np.ndarray], key: str):
    """Entry `key` of an env observation or of a store's `obs/<key>` dict; None if absent."""
    return obs[key] if key in obs else obs.get("obs/" + key)


def with_trial_reward(observations: Mapping[str, np.ndarray], rewards: np.ndarray) -> Mapping[str, np.ndarray]:
    """A stored episode's observations with `trial_reward` (see the module docstring) added if the
    store predates that entry; unchanged otherwise."""
    if _lookup(observations, "trial_reward") is not None:
        return observations
    rewards = np.asarray(rewards, np.float32).reshape(-1)
    trial = _lookup(observations, "trial_index")
    trial = np.zeros(len(rewards) + 1, np.int64) if trial is None else np.asarray(trial, np.int64).reshape(-1)
    # Reward t belongs to the trial of observation t (the step that ends a trial shows the next).
    earned = np.bincount(trial[:-1], weights=rewards, minlength=int(trial.max()) + 1)
    held = np.where(trial > 0, earned[np.maximum(trial - 1, 0)], 0.0)
    return {**observations, "trial_reward": held.astype(np.float32)}


def flatten_obs(obs: Mapping[str, np.ndarray], frame: str = "world") -> np.ndarray:
    """(..., obs_dim(frame)) float32 from a dict of (..., size) arrays (leading dims preserved).

    Accepts both the env's observation dict and a store's `obs/<key>` dict.
    """
    base = geometry(frame)

    def entry(k):
        v = np.asarray(obs[k] if k in obs else obs["obs/" + k], np.float32)  # a missing entry: KeyError
        return v.reshape(*v.shape[: v.ndim - (1 if OBS_SIZES[k] else 0)], OBS_SIZES[k])

    if has_reward(frame):
        reward = _lookup(obs, "trial_reward")
        if reward is None:
            raise ValueError(f"obs: the {frame!r} frame needs the 'trial_reward' entry (see with_trial_reward)")
        reward = np.asarray(reward, np.float32)
        return np.concatenate([flatten_obs(obs, base), reward[..., None]], axis=-1)
    if base == "world":
        return np.concatenate([entry(k) for k in OBS_KEYS], axis=-1)
    ee, banana, target, quat, ee_yaw = (entry(k) for k in ("ee_pos", "banana_pos", "target_pos", "banana_quat",
                                                          "ee_yaw"))
    # Heading from a flat banana's quaternion (w, x, y, z): yaw = 2 atan2(z, w).
    heading = 2 * np.arctan2(quat[..., 3], quat[..., 0]) - np.arctan2(ee_yaw[..., 1], ee_yaw[..., 0])
    return np.concatenate([banana - ee, target - banana, ee[..., 2:3], entry("gripper"),
                           np.cos(2 * heading)[..., None], np.sin(2 * heading)[..., None]], axis=-1).astype(np.float32)


def workspace_bounds(frame: str = "world") -> tuple[np.ndarray, np.ndarray]:
    """Per observation entry, the (low, high) the task space can produce; NaN where unknown.

    Positions on the table (banana, plate, end effector in x/y) span the full task space's
    placement box, and orientations span the headings it can produce: the banana's yaw (its
    quaternion's w and z; a banana lying flat has x = y = 0) and the gripper's (`ee_yaw` as
    cos/sin, and the wrist-yaw joint that turns it, up to the env's commanded-yaw limit). The
    normaliser takes these in, so a policy fitted on demos of one placement still sees every
    later placement inside [-1, 1]: fitted on the demos alone, a plate 4 cm off the demo's maps to
    4x its training range, and a banana turned by 27 degrees (the `near` box) to 9x, since
    nominal demos only hold the few degrees the banana turns while it is carried.
    In the relative frame the horizontal vectors get one bound for x and y alike (see below).
    """
    import envs
    from envs.banana_place import MAX_YAW

    if has_reward(frame):  # a reward is 0 or 1
        low, high = workspace_bounds(geometry(frame))
        return np.append(low, 0.0), np.append(high, 1.0)
    full = envs.FULL
    x = (min(full["banana_x"].low, full["target_x"].low), max(full["banana_x"].high, full["target_x"].high))
    y = (min(full["banana_y"].low, full["target_y"].low), max(full["banana_y"].high, full["target_y"].high))
    if frame == "relative":
        # Horizontal vectors get the same bound in x and y (a disc, not the table's box), so a
        # rotated one never leaves it: the length of the table's diagonal.
        r = float(np.hypot(x[1] - x[0], y[1] - y[0]))
        low, high = np.full(RELATIVE_DIM, np.nan), np.full(RELATIVE_DIM, np.nan)
        for i, j in PLANAR_PAIRS["relative"]:
            low[[i, j]], high[[i, j]] = -r, r
        low[-2:], high[-2:] = -1.0, 1.0  # the doubled heading's cos/sin
        return low, high
    half_yaw = np.array([full["banana_yaw"].low, full["banana_yaw"].high]) / 2
    low, high = np.full(OBS_DIM, np.nan), np.full(OBS_DIM, np.nan)
    start = dict(zip(OBS_KEYS, np.cumsum([0] + [OBS_SIZES[k] for k in OBS_KEYS[:-1]]).tolist()))
    for k in ("ee_pos", "banana_pos", "target_pos"):
        low[start[k]:start[k] + 2], high[start[k]:start[k] + 2] = (x[0], y[0]), (x[1], y[1])
    # Banana quaternion (w, x, y, z) for yaw in the space: w = cos(yaw/2), z = sin(yaw/2).
    q = start["banana_quat"]
    low[q], high[q] = np.cos(np.abs(half_yaw).max()), 1.0
    low[q + 3], high[q + 3] = np.sin(half_yaw[0]), np.sin(half_yaw[1])
    # Gripper heading, which the env keeps within +-MAX_YAW: cos/sin, and the wrist-yaw joint (the
    # arm's last joint) that realises it.
    e = start["ee_yaw"]
    low[e:e + 2], high[e:e + 2] = (np.cos(MAX_YAW), -1.0), (1.0, 1.0)
    wrist_yaw = start["joint_pos"] + 5
    low[wrist_yaw], high[wrist_yaw] = -MAX_YAW, MAX_YAW
    return low, high
