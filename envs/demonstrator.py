"""A scripted demonstrator: the stand-in for a human teleoperator.

It reads only the observation (privileged banana and target poses included) and drives the
end effector through approach, grasp, lift, carry, place and retreat. Human-like variety
comes from per-episode style (speed, heights, grasp offset, a carry via-point, hesitation)
and from smooth correlated noise on the motion. It watches its own grasp and retries when
the banana slips or is missed, as a person would.

With `play=True` it performs several interactions in a row (seed 000's "play"): it puts the
banana down at one or two intermediate spots before the final placement on the target.

With `plate_offsets` (the hidden-plate env's `plate_offsets`: two look-alike plates around
`target_pos`, one rewarded) it explores: it tries plate `first_plate` in the first trial, then
keeps a plate that paid and switches from one that did not, reading the outcome from the
observation's `trial_reward` (what the previous trial earned) when a new trial starts. It is
never told which plate pays. The first guess is a fixed habit by default, not a coin flip:
either is optimal, but a policy that regresses its actions (the transformer) would average a
coin flip into the gap between plates.
"""

from __future__ import annotations

import numpy as np

from envs import banana_place as bp
from envs import ik, scene

GRASP_Z = scene.BANANA_REST_Z - 0.002
PLACE_Z = 2 * scene.PLATE_HALF_HEIGHT + scene.BANANA_REST_Z + 0.012


class ScriptedDemonstrator:
    def __init__(self, seed: int | None = 0, play: bool = False, noise: float = 1.0,
                 plate_offsets: tuple | None = None, first_plate: int | None = 0):
        self._rng = np.random.default_rng(seed)
        self.play = play
        self.noise = noise
        self.plate_offsets = None if plate_offsets is None else np.asarray(plate_offsets, np.float64)
        self.first_plate = first_plate  # None: drawn per episode
        self.reset()

    def reset(self, seed: int | None = None):
        """Start a new episode (its first trial with a freshly drawn style)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.plate = None
        if self.plate_offsets is not None:
            n = len(self.plate_offsets)
            self.plate = int(self._rng.integers(n)) if self.first_plate is None else int(self.first_plate) % n
        self._trial = None
        self._new_trial()

    def _new_trial(self):
        r = self._rng
        self.speed = r.uniform(0.55, 1.0)
        self.approach_height = r.uniform(0.08, 0.14)
        self.carry_height = r.uniform(0.12, 0.2)
        self.grasp_offset = r.uniform(-0.015, 0.015)  # along the banana, from its middle
        self.via_offset = r.uniform(-0.06, 0.06)
        self.close_steps = int(r.integers(3, 6))
        self.release_steps = int(r.integers(2, 4))
        self.hesitate = int(r.integers(0, 3))
        self._ou = np.zeros(4)
        n_spots = int(r.integers(1, 3)) if self.play else 0
        self._spots = n_spots
        self._next("approach")
        self._retries = 0
        self._grasp_yaw = None

    # A phase returns (goal position, goal yaw, gripper command, whether the goal is reached).
    def act(self, obs: dict) -> np.ndarray:
        trial = int(obs["trial_index"])
        if self._trial is not None and trial != self._trial:
            if self.plate is not None and float(obs.get("trial_reward", 0.0)) <= 0.0:
                self.plate = (self.plate + 1) % len(self.plate_offsets)  # that plate did not pay
            self._new_trial()
        self._trial = trial

        ee = np.asarray(obs["ee_pos"], np.float64)
        ee_yaw = float(np.arctan2(obs["ee_yaw"][1], obs["ee_yaw"][0]))
        banana = np.asarray(obs["banana_pos"], np.float64)
        banana_yaw = ik.quat_yaw(np.asarray(obs["banana_quat"], np.float64))
        target = np.asarray(obs["target_pos"], np.float64)
        if self.plate is not None:
            target = target + np.array([*self.plate_offsets[self.plate], 0.0])
        gripper = float(obs["gripper"][0])
        axis = np.array([np.cos(banana_yaw), np.sin(banana_yaw), 0.0])
        grasp_point = banana + self.grasp_offset * axis

        if self._grasp_yaw is None or self._phase in ("approach",):
            # Fingers close across the banana: align the hand's x with the banana; either way round.
            yaw = ik.wrap_angle(banana_yaw)
            alt = ik.wrap_angle(banana_yaw + np.pi)
            self._grasp_yaw = yaw if abs(yaw) <= abs(alt) else alt
        grip = -1.0
        yaw_goal = self._grasp_yaw
        phase = self._phase
        self._count += 1

        if phase == "approach":
            goal = np.array([grasp_point[0], grasp_point[1], GRASP_Z + self.approach_height])
            if _near(ee, goal, 0.012, 0.02) and abs(ik.wrap_angle(ee_yaw - yaw_goal)) < 0.06:
                self._next("descend")
        elif phase == "descend":
            goal = np.array([grasp_point[0], grasp_point[1], GRASP_Z])
            if _near(ee, goal, 0.008, 0.006):
                self._next("close")
        elif phase == "close":
            goal = np.array([grasp_point[0], grasp_point[1], GRASP_Z])
            grip = 1.0
            if self._count >= self.close_steps:
                self._next("lift")
        elif phase == "lift":
            goal = np.array([ee[0], ee[1], self.carry_height])
            grip = 1.0
            if ee[2] > 0.06 and banana[2] < 0.03:
                self._retry()
            elif ee[2] > self.carry_height - 0.02:
                self._next("carry")
        elif phase in ("carry", "lower"):
            grip = 1.0
            spot = self._spot_target(target)
            # Aim the hand so the banana (not the hand) ends over the spot.
            hand_goal = ee[:2] + (spot[:2] - banana[:2])
            if phase == "carry":
                remaining = np.linalg.norm(spot[:2] - banana[:2])
                lateral = np.array([-(spot[1] - banana[1]), spot[0] - banana[0]]) / max(remaining, 1e-6)
                bow = self.via_offset * min(1.0, remaining / 0.2)
                goal = np.array([*(hand_goal + bow * lateral), self.carry_height])
                if banana[2] < 0.03:
                    self._retry()
                elif remaining < 0.012:
                    self._next("lower")
            else:
                goal = np.array([*hand_goal, PLACE_Z + (ee[2] - banana[2]) - 0.0])
                # Release at the placing height, or when the descent stalls (the banana already
                # rests on something, say a distractor under it).
                self._heights.append(ee[2])
                stalled = len(self._heights) > 5 and self._heights[-6] - ee[2] < 0.002
                if banana[2] < 0.025 and ee[2] > 0.1:
                    self._retry()
                elif ee[2] < goal[2] + 0.006 or stalled:
                    self._next("release")
        elif phase == "release":
            goal = ee.copy()
            if self._count >= self.release_steps and gripper > 0.6:
                self._next("retreat")
        else:  # retreat, then hold still
            goal = np.array([ee[0], ee[1], 0.16]) if phase == "retreat" else ee.copy()
            if phase == "retreat" and ee[2] > 0.12:
                if self._spots > 0:
                    self._spots -= 1
                    self._next("approach")
                else:
                    self._next("done")
            if phase == "done":
                return np.array([0, 0, 0, 0, -1.0], np.float32)

        return self._command(goal, yaw_goal, grip, ee, ee_yaw)

    def _spot_target(self, target):
        if self._spots == 0:
            return target
        # An intermediate placement: mid-table, clear of the plate.
        if not hasattr(self, "_spot") or self._spot_for != self._spots:
            for _ in range(100):
                xy = self._rng.uniform((0.4, -0.25), (0.6, 0.25))
                if np.hypot(*(xy - target[:2])) > scene.PLATE_RADIUS + 0.12:
                    break
            self._spot, self._spot_for = np.array([*xy, 0.0]), self._spots
        return self._spot

    def _command(self, goal, yaw_goal, grip, ee, ee_yaw) -> np.ndarray:
        if self._phase in ("close", "release") or self._count <= self.hesitate and self._phase == "approach":
            move = np.zeros(3)
        else:
            move = (goal - ee) / bp.MAX_DELTA_POS
            # Slow down near the goal; the style's speed caps the rest.
            norm = np.linalg.norm(move)
            cap = self.speed * (0.5 if self._phase in ("descend", "lower") else 1.0)
            if norm > cap:
                move *= cap / norm
        dyaw = np.clip(ik.wrap_angle(yaw_goal - ee_yaw) / bp.MAX_DELTA_YAW, -0.8, 0.8)
        if self._phase in ("approach", "carry"):
            # Smooth, correlated wobble: a hand is never perfectly straight.
            self._ou = 0.8 * self._ou + 0.2 * self._rng.normal(0, 0.25 * self.noise, 4)
            move = move + self._ou[:3]
            dyaw += 0.3 * self._ou[3]
        return np.clip(np.array([*move, dyaw, grip]), -1.0, 1.0).astype(np.float32)

    def _next(self, phase):
        self._phase = phase
        self._count = 0
        self._heights = []

    def _retry(self):
        self._retries += 1
        self._next("approach")


def _near(a, b, tol_xy, tol_z) -> bool:
    return bool(np.hypot(a[0] - b[0], a[1] - b[1]) < tol_xy and abs(a[2] - b[2]) < tol_z)
