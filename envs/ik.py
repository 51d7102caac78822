"""Differential inverse kinematics for the arm's end-effector site.

Damped least squares on the 6-D site Jacobian, iterated on a scratch `MjData` so the live
simulation state is never touched. The gripper always points straight down; the commanded
pose is a position plus a yaw about the world z axis.
"""

from __future__ import annotations

import math

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

    def __init__(self, model: mujoco.MjModel, damping: float = 0.05, iterations: int = 2,
                 max_dq: float = 0.35, tolerance: float = 1e-3):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = model.site("ee").id
        joints = [model.joint(n) for n in scene.ARM_JOINTS]
        self.qadr = np.array([j.qposadr[0] for j in joints])
        self.dofadr = np.array([j.dofadr[0] for j in joints])
        # The arm's dofs come first and are contiguous, so Jacobian columns are a cheap slice.
        assert np.array_equal(self.dofadr, np.arange(6)) and np.array_equal(self.qadr, np.arange(6))
        self.lo = model.jnt_range[[j.id for j in joints], 0]
        self.hi = model.jnt_range[[j.id for j in joints], 1]
        self.damping2 = damping**2 * np.eye(6)
        self.iterations = iterations
        self.max_dq = max_dq
        self.tolerance = tolerance
        self._jac = np.zeros((6, model.nv))
        self._quat = np.zeros(4)
        self._quat_conj = np.zeros(4)
        self._err_quat = np.zeros(4)
        self._err = np.zeros(6)
        self._gram = np.zeros((6, 6))
        self._rhs = np.zeros(6)
        self._target_quat = np.zeros(4)

    def solve(self, q0: np.ndarray, pos: np.ndarray, yaw: float, iterations: int | None = None) -> np.ndarray:
        """Joint targets near `q0` that bring the site toward (pos, yaw), gripper pointing down."""
        # Called every control step: written to keep Python overhead well below the physics cost.
        m, d, err, jac = self.model, self.data, self._err, self._jac
        q = np.array(q0, dtype=np.float64)
        target_quat = self._target_quat
        target_quat[0], target_quat[3] = math.cos(yaw / 2), math.sin(yaw / 2)
        for _ in range(self.iterations if iterations is None else iterations):
            d.qpos[:6] = q
            mujoco.mj_kinematics(m, d)
            np.subtract(pos, d.site_xpos[self.site], out=err[:3])
            mujoco.mju_mat2Quat(self._quat, d.site_xmat[self.site])
            # Rotation taking the current frame to the target, as a world-frame rotation vector.
            mujoco.mju_negQuat(self._quat_conj, self._quat)
            mujoco.mju_mulQuat(self._err_quat, target_quat, self._quat_conj)
            np.multiply(self._err_quat[1:], 2.0 if self._err_quat[0] >= 0 else -2.0, out=err[3:])
            if np.abs(err).max() < self.tolerance:
                break
            mujoco.mj_comPos(m, d)
            mujoco.mj_jacSite(m, d, jac[:3], jac[3:], self.site)
            arm_jac = jac[:, :6]
            # dq = J^T (J J^T + lambda^2 I)^-1 err, with MuJoCo's in-place Cholesky (no LAPACK call).
            np.add(arm_jac @ arm_jac.T, self.damping2, out=self._gram)
            mujoco.mju_cholFactor(self._gram, 0.0)
            mujoco.mju_cholSolve(self._rhs, self._gram, err)
            dq = arm_jac.T @ self._rhs
            peak = np.abs(dq).max()
            if peak > self.max_dq:
                dq *= self.max_dq / peak
            q += dq
            np.minimum(np.maximum(q, self.lo, out=q), self.hi, out=q)
        return q

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, float]:
        """Site position and yaw at joint positions `q`."""
        self.data.qpos[:6] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mju_mat2Quat(self._quat, self.data.site_xmat[self.site])
        return self.data.site_xpos[self.site].copy(), quat_yaw(self._quat)


