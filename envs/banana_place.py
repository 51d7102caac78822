"""Banana pick-and-place behind `dm_env`.

One control step (10 Hz) turns an end-effector delta action into arm joint targets with
differential IK and advances the physics by `CONTROL_SUBSTEPS` steps of 2 ms. The reward is
sparse: 1 when the banana is released and rests still on the target plate, else 0.

With `trials > 1` an episode holds k trials of the same task: when a trial ends the scene is
reset to the same task (new arm-noise draw) and the episode goes on, with the trial index in
the observation. Reward for a trial arrives on the step that ends it, and every observation of
the next trial carries it as `trial_reward` (0 throughout the first trial), so a policy with
memory sees what its earlier attempts earned, as ADA's agents see their rewards.

`hidden_plate=True` (the `banana-place-hidden` env) poses a task that only memory solves: two
plates that look the same sit `HIDDEN_PLATE_OFFSET` either side of the task's target along x,
and one of them, drawn per episode and kept across its trials, is the rewarded one. The
observation's `target_pos` is the pair's centre, so nothing but an attempt's outcome tells the
plates apart. Placing the banana on either plate ends the trial; only the rewarded one pays.
The best strategy is to try a plate, keep it if it paid and switch if it did not: about half
the first trials succeed, and every later one can.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Union

import dm_env
import mujoco
import numpy as np
from dm_env import specs

from envs import ik, scene
from envs.task_space import FULL, TaskError, TaskParams, TaskSpace, near_space, nominal_space

# Action scaling: a unit action moves the commanded pose this far in one control step.
MAX_DELTA_POS = 0.04
MAX_DELTA_YAW = 0.3
# The commanded end-effector position is kept in this box (x, y, z).
WORKSPACE_LOW = np.array([0.2, -0.5, 0.0])
WORKSPACE_HIGH = np.array([0.8, 0.5, 0.45])
MAX_YAW = 2.4

HOME_POS = np.array([0.42, 0.0, 0.25])

# Success: banana centre within this distance of the plate centre, low, slow, released.
SUCCESS_RADIUS = 0.07
SUCCESS_MAX_Z = 0.05
SUCCESS_MAX_SPEED = 0.05
SUCCESS_STILL_STEPS = 3

# The hidden-plate variant: plate centres at the target -/+ this along x, and the least distance
# from the banana's start to either (so the banana never starts on a plate).
HIDDEN_PLATE_OFFSET = 0.12
HIDDEN_PLATE_CLEARANCE = scene.PLATE_RADIUS + 0.05

TaskSource = Union[str, TaskSpace, TaskParams]


class TimeStep(dm_env.TimeStep):
    """A `dm_env.TimeStep` that also carries an `info` dict (not part of the specs)."""

    # No __slots__: instances get a __dict__ for `info` while staying a 4-field namedtuple.
    def __new__(cls, step_type, reward, discount, observation, info=None):
        self = super().__new__(cls, step_type, reward, discount, observation)
        self.info = {} if info is None else info
        return self


@dataclasses.dataclass
class _Physics:
    """A compiled model for one distractor count, with its nominal values for task scaling."""

    model: mujoco.MjModel
    data: mujoco.MjData
    solver: ik.DifferentialIK
    arm_qadr: np.ndarray
    arm_dofadr: np.ndarray
    finger_qadr: np.ndarray
    finger_dofadr: np.ndarray
    banana_qadr: int
    banana_dofadr: int
    banana_body: int
    banana_geoms: np.ndarray
    finger_geoms: np.ndarray
    friction_geoms: np.ndarray
    nominal_friction: np.ndarray
    nominal_mass: float
    nominal_inertia: np.ndarray
    target_body: int
    distractor_qadr: list
    ee_site: int
    home_q: np.ndarray
    other_plate_body: int | None = None
    scaled_mass: float = 1.0


def _make_physics(n_distractors: int, second_plate: bool = False) -> _Physics:
    m = scene.build_model(n_distractors, second_plate)
    # Instability must surface as a truncated trial, not as MuJoCo silently resetting the state.
    m.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_AUTORESET
    d = mujoco.MjData(m)
    solver = ik.DifferentialIK(m, iterations=50)
    home_q = solver.solve(np.array([0.0, 0.3, 0.6, -0.9, 0.0, 0.0]), HOME_POS, 0.0)
    solver.iterations = 1  # warm-started from the last target every step, one step suffices
    banana_geoms = np.array([m.geom(f"banana_{i}").id for i in range(len(scene.BANANA_RADII))])
    friction_geoms = np.concatenate([banana_geoms, [m.geom("table").id, m.geom("plate").id]])
    b = m.body("banana").id
    return _Physics(
        model=m, data=d, solver=solver,
        arm_qadr=np.array([m.joint(n).qposadr[0] for n in scene.ARM_JOINTS]),
        arm_dofadr=np.array([m.joint(n).dofadr[0] for n in scene.ARM_JOINTS]),
        finger_qadr=np.array([m.joint(n).qposadr[0] for n in scene.FINGER_JOINTS]),
        finger_dofadr=np.array([m.joint(n).dofadr[0] for n in scene.FINGER_JOINTS]),
        banana_qadr=m.joint("banana").qposadr[0], banana_dofadr=m.joint("banana").dofadr[0],
        banana_body=b, banana_geoms=banana_geoms,
        finger_geoms=np.array([m.geom("finger_left").id, m.geom("finger_right").id]),
        friction_geoms=friction_geoms, nominal_friction=m.geom_friction[friction_geoms, 0].copy(),
        nominal_mass=float(m.body_mass[b]), nominal_inertia=m.body_inertia[b].copy(),
        target_body=m.body("target").id,
        distractor_qadr=[m.joint(f"distractor_{i}").qposadr[0] for i in range(n_distractors)],
        ee_site=m.site("ee").id, home_q=home_q,
        other_plate_body=m.body("other_plate").id if second_plate else None,
    )


def resolve_tasks(tasks: TaskSource) -> Union[TaskSpace, TaskParams]:
    if isinstance(tasks, (TaskSpace, TaskParams)):
        if isinstance(tasks, TaskParams):
            FULL.validate(tasks)
        return tasks
    if tasks == "nominal":
        return nominal_space()
    if tasks == "full":
        return FULL
    if tasks == "near":
        return near_space()
    raise TaskError(f"tasks: expected 'nominal', 'near', 'full', a TaskSpace or TaskParams, got {tasks!r}")


class BananaPlace(dm_env.Environment):
    """Pick up the banana and place it on the target plate.

    Args:
      tasks: 'nominal', 'full', a `TaskSpace` to sample from, or one fixed `TaskParams`.
      seed: seeds the per-episode seeds drawn when `reset()` gets none.
      time_limit: control steps per trial before truncation.
      trials: trials of the same task per episode (k); 1 for the plain task.
      image: add an RGB camera image to the observation (needs offscreen GL, e.g. OSMesa).
      hidden_plate: two look-alike plates, one rewarded per episode (see the module docstring).
    """

    def __init__(self, tasks: TaskSource = "nominal", seed: int | None = 0, time_limit: int = 150,
                 trials: int = 1, image: bool = False, image_size: tuple[int, int] = (96, 96),
                 camera: str = "front", hidden_plate: bool = False):
        if int(time_limit) < 1:
            raise TaskError(f"time_limit: must be >= 1, got {time_limit}")
        if int(trials) < 1:
            raise TaskError(f"trials: must be >= 1, got {trials}")
        self._tasks = resolve_tasks(tasks)
        self._rng = np.random.default_rng(seed)
        self.time_limit = int(time_limit)
        self.trials = int(trials)
        self.image = bool(image)
        self.image_size = tuple(image_size)
        self.camera = camera
        self.hidden_plate = bool(hidden_plate)
        self.rewarded_plate: int | None = None
        self._physics: dict[int, _Physics] = {}
        self._renderer = None
        self._p: _Physics | None = None
        self.task: TaskParams | None = None
        self.episode_seed: int | None = None
        self._needs_reset = True

    # -- dm_env API ---------------------------------------------------------------------------

    def reset(self, task: TaskParams | None = None, seed: int | None = None) -> TimeStep:
        """Start an episode; `task` and `seed` (both optional) make it exactly reproducible."""
        self.episode_seed = int(self._rng.integers(2**31 - 1)) if seed is None else int(seed)
        # Separate streams: the episode is a function of (task, seed), whether the task was
        # given or drawn from the space.
        task_seed, episode_seed = np.random.SeedSequence(self.episode_seed).spawn(2)
        self._episode_rng = np.random.default_rng(episode_seed)
        if task is None:
            task_rng = np.random.default_rng(task_seed)
            task = self._tasks if isinstance(self._tasks, TaskParams) else self._tasks.sample(task_rng)
            # A drawn task whose banana would start on a hidden-variant plate is drawn again.
            for _ in range(1000):
                if isinstance(self._tasks, TaskParams) or self._plates_clear(task):
                    break
                task = self._tasks.sample(task_rng)
        self.task = FULL.validate(task)
        self._plates = self.plate_centres(self.task)  # fixed for the episode; read every step
        if not self._plates_clear(self.task):
            raise TaskError(f"target_x/target_y: with hidden_plate the banana must start at least "
                            f"{HIDDEN_PLATE_CLEARANCE:.2f} m from both plates (target -/+ {HIDDEN_PLATE_OFFSET} m in x)")
        if self.hidden_plate:
            self.rewarded_plate = int(self._episode_rng.integers(2))
        self._trial = 0
        self._trial_reward = 0.0
        self._new_physics_for_task()
        self._reset_trial(place_distractors=True)
        self._needs_reset = False
        return TimeStep(dm_env.StepType.FIRST, None, None, self._observation(), self._info())

    def step(self, action) -> TimeStep:
        if self._needs_reset:
            return self.reset()
        p = self._p
        m, d = p.model, p.data
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (5,):
            raise ValueError(f"action: expected shape (5,), got {a.shape}")
        if not np.isfinite(a).all():
            a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
        a = np.minimum(np.maximum(a, -1.0), 1.0)
        # np.minimum/np.maximum and plain min/max: np.clip costs ~10x more per call here.
        self._cmd_pos = np.minimum(np.maximum(self._cmd_pos + MAX_DELTA_POS * a[:3], WORKSPACE_LOW), WORKSPACE_HIGH)
        self._cmd_yaw = min(max(self._cmd_yaw + MAX_DELTA_YAW * float(a[3]), -MAX_YAW), MAX_YAW)
        self._arm_target = p.solver.solve(self._arm_target, self._cmd_pos, self._cmd_yaw)
        d.ctrl[:6] = self._arm_target
        d.ctrl[6:8] = scene.FINGER_OPEN * (1.0 - a[4]) / 2.0
        bad_before = d.warning[mujoco.mjtWarning.mjWARN_BADQACC].number
        mujoco.mj_step(m, d, nstep=scene.CONTROL_SUBSTEPS)
        self._t += 1

        # A sum is non-finite iff some element is (or the state has blown up past float range).
        unstable = (d.warning[mujoco.mjtWarning.mjWARN_BADQACC].number > bad_before
                    or not math.isfinite(d.qpos.sum() + d.qvel.sum()))
        success = wrong_plate = False
        if not unstable:
            plate = self._plate_under_banana()
            # Consecutive resting steps on one plate.
            self._still = 0 if plate is None else self._still + 1 if plate == self._resting_plate else 1
            self._resting_plate = plate
            settled = self._still >= SUCCESS_STILL_STEPS
            rewarded = plate == (self.rewarded_plate if self.hidden_plate else 0)
            success, wrong_plate = settled and rewarded, settled and not rewarded
        timeout = self._t >= self.time_limit
        reward = 1.0 if success else 0.0
        trial_over = success or wrong_plate or unstable or timeout
        info = {"success": success, "physics_unstable": bool(unstable),
                "time_limit": bool(timeout and not success and not unstable and not wrong_plate),
                "trial": self._trial}
        if self.hidden_plate:
            info["wrong_plate"] = bool(wrong_plate)
        if unstable:
            # The state is garbage; return the last good observation instead of NaNs.
            obs = self._last_obs
        else:
            obs = self._observation()

        if trial_over and self._trial + 1 < self.trials:
            self._trial += 1
            self._trial_reward = reward
            self._reset_trial(place_distractors=False)
            info["trial_ended"] = True
            return TimeStep(dm_env.StepType.MID, reward, 1.0, self._observation(), info)
        if trial_over:
            self._needs_reset = True
            if success or wrong_plate:  # settled on a plate: terminal, whichever plate it was
                return TimeStep(dm_env.StepType.LAST, reward, 0.0, obs, info)
            return TimeStep(dm_env.StepType.LAST, reward, 1.0, obs, info)  # truncation
        return TimeStep(dm_env.StepType.MID, reward, 1.0, obs, info)

    def observation_spec(self):
        f = np.float32
        obs = {
            "joint_pos": specs.Array((6,), f, "joint_pos"),
            "joint_vel": specs.Array((6,), f, "joint_vel"),
            "gripper": specs.Array((1,), f, "gripper"),
            "ee_pos": specs.Array((3,), f, "ee_pos"),
            "ee_yaw": specs.Array((2,), f, "ee_yaw"),
            "banana_pos": specs.Array((3,), f, "banana_pos"),
            "banana_quat": specs.Array((4,), f, "banana_quat"),
            "target_pos": specs.Array((3,), f, "target_pos"),
            "trial_index": specs.Array((), np.int32, "trial_index"),
            "trial_reward": specs.Array((), np.float32, "trial_reward"),
        }
        if self.image:
            h, w = self.image_size
            obs["image"] = specs.Array((h, w, 3), np.uint8, "image")
        return obs

    def action_spec(self):
        return specs.BoundedArray((5,), np.float32, -1.0, 1.0, "ee_delta_xyz_yaw_gripper")

    def reward_spec(self):
        return specs.Array((), np.float64, "reward")

    def discount_spec(self):
        return specs.BoundedArray((), np.float64, 0.0, 1.0, "discount")

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- rendering ----------------------------------------------------------------------------

    def render(self, camera: str | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
        """RGB frame (H, W, 3) uint8 from an offscreen renderer."""
        h, w = size or self.image_size
        if self._renderer is None or (self._renderer.height, self._renderer.width) != (h, w) \
                or self._renderer_model is not self._p.model:
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = mujoco.Renderer(self._p.model, height=h, width=w)
            self._renderer_model = self._p.model
        self._renderer.update_scene(self._p.data, camera=camera or self.camera)
        return self._renderer.render()

    # -- internals ----------------------------------------------------------------------------

    @property
    def physics(self) -> _Physics:
        return self._p

    @property
    def plate_offsets(self) -> tuple[tuple[float, float], ...] | None:
        """The hidden-plate variant's plate centres relative to `target_pos` (x, y); else None."""
        if not self.hidden_plate:
            return None
        return ((-HIDDEN_PLATE_OFFSET, 0.0), (HIDDEN_PLATE_OFFSET, 0.0))

    def plate_centres(self, task: TaskParams | None = None) -> list[np.ndarray]:
        """(x, y) of every plate: the target's, or the hidden variant's two."""
        task = task or self.task
        centre = np.array([task.target_x, task.target_y])
        if not self.hidden_plate:
            return [centre]
        return [centre + offset for offset in self.plate_offsets]

    def _plates_clear(self, task: TaskParams) -> bool:
        if not self.hidden_plate:
            return True
        banana = np.array([task.banana_x, task.banana_y])
        return all(np.hypot(*(banana - c)) >= HIDDEN_PLATE_CLEARANCE for c in self.plate_centres(task))

    def _new_physics_for_task(self):
        task = self.task
        if task.n_distractors not in self._physics:
            self._physics[task.n_distractors] = _make_physics(task.n_distractors, self.hidden_plate)
        p = self._p = self._physics[task.n_distractors]
        m = p.model
        m.geom_friction[p.friction_geoms, 0] = p.nominal_friction * task.friction_scale
        m.body_mass[p.banana_body] = p.nominal_mass * task.mass_scale
        m.body_inertia[p.banana_body] = p.nominal_inertia * task.mass_scale
        plates = self.plate_centres(task)
        m.body_pos[p.target_body, :2] = plates[0]
        if p.other_plate_body is not None:
            m.body_pos[p.other_plate_body, :2] = plates[1]
        if p.scaled_mass != task.mass_scale:
            # Derived constants (e.g. inverse weights used by the solver) depend on the masses;
            # stale ones make a heavier banana blow up under the implicit integrator.
            mujoco.mj_setConst(m, p.data)
            p.scaled_mass = task.mass_scale

    def _reset_trial(self, place_distractors: bool):
        p, task, rng = self._p, self.task, self._episode_rng
        m, d = p.model, p.data
        distractors = [d.qpos[a:a + 7].copy() for a in p.distractor_qadr]
        mujoco.mj_resetData(m, d)
        q = p.home_q + rng.normal(0.0, task.arm_noise, size=6) if task.arm_noise > 0 else p.home_q.copy()
        q = np.clip(q, p.solver.lo, p.solver.hi)
        d.qpos[p.arm_qadr] = q
        d.qpos[p.finger_qadr] = scene.FINGER_OPEN
        d.ctrl[:6] = q
        d.ctrl[6:8] = scene.FINGER_OPEN
        b = p.banana_qadr
        d.qpos[b:b + 3] = (task.banana_x, task.banana_y, scene.BANANA_REST_Z + 0.001)
        d.qpos[b + 3:b + 7] = ik.yaw_quat(task.banana_yaw)
        if place_distractors:
            distractors = self._sample_distractors(rng, len(p.distractor_qadr))
        for adr, pose in zip(p.distractor_qadr, distractors):
            d.qpos[adr:adr + 7] = pose
        # Let contacts settle with the arm holding still before the first observation.
        mujoco.mj_step(m, d, nstep=scene.CONTROL_SUBSTEPS // 2)
        self._arm_target = q
        self._cmd_pos, self._cmd_yaw = p.solver.forward(d.qpos[p.arm_qadr])
        self._cmd_yaw = float(np.clip(self._cmd_yaw, -MAX_YAW, MAX_YAW))
        self._t = 0
        self._still = 0
        self._resting_plate = None

    def _sample_distractors(self, rng, n):
        task = self.task
        plates = self._plates
        placed = []
        for _ in range(n):
            for _ in range(200):
                xy = rng.uniform((0.3, -0.35), (0.7, 0.35))
                if (np.hypot(*(xy - (task.banana_x, task.banana_y))) > 0.15
                        and all(np.hypot(*(xy - c)) > scene.PLATE_RADIUS + 0.05 for c in plates)
                        and all(np.hypot(*(xy - o[:2])) > 0.08 for o in placed)):
                    break
            yaw = rng.uniform(-np.pi, np.pi)
            placed.append(np.concatenate([xy, [scene.DISTRACTOR_HALF_SIZE + 0.001], ik.yaw_quat(yaw)]))
        return placed

    def _plate_under_banana(self) -> int | None:
        """Index (into `plate_centres`) of the plate the banana rests on, released; else None."""
        p, d = self._p, self._p.data
        pos = d.xpos[p.banana_body]
        if pos[2] > SUCCESS_MAX_Z or np.linalg.norm(d.qvel[p.banana_dofadr:p.banana_dofadr + 3]) > SUCCESS_MAX_SPEED:
            return None
        for i, (x, y) in enumerate(self._plates):
            if np.hypot(pos[0] - x, pos[1] - y) <= SUCCESS_RADIUS:
                return None if self._fingers_touch_banana() else i
        return None

    def _fingers_touch_banana(self) -> bool:
        d, p = self._p.data, self._p
        if d.ncon == 0:
            return False
        g1, g2 = d.contact.geom1[: d.ncon], d.contact.geom2[: d.ncon]
        f1, f2 = np.isin(g1, p.finger_geoms), np.isin(g2, p.finger_geoms)
        b1, b2 = np.isin(g1, p.banana_geoms), np.isin(g2, p.banana_geoms)
        return bool(np.any((f1 & b2) | (f2 & b1)))

    def _observation(self) -> dict:
        p, d = self._p, self._p.data
        ee_quat = np.empty(4)
        mujoco.mju_mat2Quat(ee_quat, d.site_xmat[p.ee_site])
        yaw = ik.quat_yaw(ee_quat)
        b = p.banana_qadr
        f = p.finger_qadr
        obs = {
            "joint_pos": d.qpos[:6].astype(np.float32),  # arm joints come first (asserted in IK)
            "joint_vel": d.qvel[:6].astype(np.float32),
            "gripper": np.array([(d.qpos[f[0]] + d.qpos[f[1]]) / (2 * scene.FINGER_OPEN)], np.float32),
            "ee_pos": d.site_xpos[p.ee_site].astype(np.float32),
            "ee_yaw": np.array([np.cos(yaw), np.sin(yaw)], np.float32),
            "banana_pos": d.qpos[b:b + 3].astype(np.float32),
            "banana_quat": d.qpos[b + 3:b + 7].astype(np.float32),
            "target_pos": np.array([self.task.target_x, self.task.target_y, 2 * scene.PLATE_HALF_HEIGHT], np.float32),
            "trial_index": np.array(self._trial, np.int32),
            "trial_reward": np.array(self._trial_reward, np.float32),
        }
        if self.image:
            obs["image"] = self.render()
        self._last_obs = obs
        return obs

    def _info(self) -> dict:
        return {"success": False, "physics_unstable": False, "time_limit": False, "trial": self._trial}
