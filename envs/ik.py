"""Differential inverse kinematics for the arm's end-effector site.

Damped least squares on the 6-D site Jacobian, iterated on a scratch `MjData` so the live
simulation state is never touched. The gripper always points straight down; the commanded
pose is a position plus a yaw about the world z axis.
"""

from __future__ import annotations

import mujoco
import numpy as np

from envs import scene


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_yaw(quat: np.ndarray) -> float:
    """Heading of the frame's x axis in the world xy-plane."""
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def wrap_angle(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


class DifferentialIK:
    """Maps a commanded end-effector pose to arm joint targets."""

    def __init__(self, model: mujoco.MjModel, damping: float = 0.05, iterations: int = 2, max_dq: float = 0.35):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = model.site("ee").id
        self.qadr = np.array([model.joint(n).qposadr[0] for n in scene.ARM_JOINTS])
        self.dofadr = np.array([model.joint(n).dofadr[0] for n in scene.ARM_JOINTS])
        self.lo = model.jnt_range[[model.joint(n).id for n in scene.ARM_JOINTS], 0]
        self.hi = model.jnt_range[[model.joint(n).id for n in scene.ARM_JOINTS], 1]
        self.damping2 = damping**2
        self.iterations = iterations
        self.max_dq = max_dq
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._quat = np.zeros(4)
        self._err_quat = np.zeros(4)
        self._target_conj = np.zeros(4)

    def solve(self, q0: np.ndarray, pos: np.ndarray, yaw: float, iterations: int | None = None) -> np.ndarray:
        """Joint targets near `q0` that bring the site toward (pos, yaw), gripper pointing down."""
        m, d = self.model, self.data
        q = np.array(q0, dtype=np.float64)
        target_quat = yaw_quat(yaw)
        mujoco.mju_negQuat(self._target_conj, target_quat)
        for _ in range(self.iterations if iterations is None else iterations):
            d.qpos[self.qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.site)
            err = np.empty(6)
            err[:3] = pos - d.site_xpos[self.site]
            mujoco.mju_mat2Quat(self._quat, d.site_xmat[self.site])
            # Rotation taking the current frame to the target, as a world-frame rotation vector.
            mujoco.mju_mulQuat(self._err_quat, target_quat, _conj(self._quat))
            if self._err_quat[0] < 0:
                self._err_quat *= -1
            err[3:] = 2.0 * self._err_quat[1:]
            jac = np.vstack([self._jacp[:, self.dofadr], self._jacr[:, self.dofadr]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping2 * np.eye(6), err)
            scale = np.max(np.abs(dq)) / self.max_dq
            if scale > 1:
                dq /= scale
            q = np.clip(q + dq, self.lo, self.hi)
        return q

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, float]:
        """Site position and yaw at joint positions `q`."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mju_mat2Quat(self._quat, self.data.site_xmat[self.site])
        return self.data.site_xpos[self.site].copy(), quat_yaw(self._quat)


def _conj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])
