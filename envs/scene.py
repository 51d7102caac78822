"""The banana-placement scene, written as MJCF in code.

A 6-DoF arm (pan, shoulder, elbow; spherical wrist pitch-roll-yaw) with a parallel-jaw
gripper on two slide joints, a table, a curved banana made of capsules, a target plate (and,
in the hidden-plate variant, a second one that looks the same) and up to `MAX_DISTRACTORS`
small blocks. The number of distractors changes the model's body count, so one model is
compiled per count and cached by the environment.

Everything is in metres, kilograms and radians; the table top is the plane z = 0 and the
arm base stands on it at the origin, facing +x.
"""

from __future__ import annotations

import math

import mujoco

MAX_DISTRACTORS = 3

# Simulation and control timing: 2 ms physics, 10 Hz control.
PHYSICS_TIMESTEP = 0.002
CONTROL_SUBSTEPS = 50

# Banana: a 5-segment arc, ~19.5 cm along its length, ~3.4 cm thick, 120 g.
BANANA_ARC_RADIUS = 0.16
BANANA_ARC_ANGLE = 1.22
BANANA_RADII = (0.013, 0.016, 0.017, 0.016, 0.013)
BANANA_MASS = 0.12
BANANA_REST_Z = 0.017  # centre height of the middle segment when lying on the table

PLATE_RADIUS = 0.09
PLATE_HALF_HEIGHT = 0.004

DISTRACTOR_HALF_SIZE = 0.02

FINGER_OPEN = 0.045  # per-finger travel from the centre line; 9 cm full opening
ARM_JOINTS = ("pan", "shoulder", "elbow", "wrist_pitch", "wrist_roll", "wrist_yaw")
FINGER_JOINTS = ("finger_left", "finger_right")


def _banana_geoms() -> str:
    """Capsule chain along an arc that bows toward local +y; local x is the tangent at the middle."""
    n = len(BANANA_RADII)
    seg = BANANA_ARC_ANGLE / n
    mass = BANANA_MASS / n
    parts = []
    for i, radius in enumerate(BANANA_RADII):
        a0 = -BANANA_ARC_ANGLE / 2 + i * seg
        a1 = a0 + seg
        p0 = (BANANA_ARC_RADIUS * math.sin(a0), BANANA_ARC_RADIUS * (1 - math.cos(a0)))
        p1 = (BANANA_ARC_RADIUS * math.sin(a1), BANANA_ARC_RADIUS * (1 - math.cos(a1)))
        # Thinner segments sit lower so that every segment touches the table: a banana lying
        # on its side rests along its whole length instead of rocking on its middle.
        z = radius - BANANA_REST_Z
        parts.append(
            f'<geom name="banana_{i}" class="banana" size="{radius}" mass="{mass:.5f}" '
            f'fromto="{p0[0]:.5f} {p0[1]:.5f} {z:.4f} {p1[0]:.5f} {p1[1]:.5f} {z:.4f}"/>'
        )
    tip = BANANA_ARC_ANGLE / 2
    tx, ty = BANANA_ARC_RADIUS * math.sin(tip), BANANA_ARC_RADIUS * (1 - math.cos(tip))
    parts.append(
        f'<geom name="banana_stem" type="capsule" size="0.005" contype="0" conaffinity="0" '
        f'mass="0" rgba="0.35 0.27 0.1 1" fromto="{tx:.5f} {ty:.5f} -0.004 {tx + 0.015:.5f} {ty + 0.012:.5f} 0"/>'
    )
    return "\n        ".join(parts)


def _distractors(n: int) -> str:
    colours = ("0.2 0.4 0.8 1", "0.8 0.25 0.2 1", "0.3 0.7 0.3 1")
    return "\n    ".join(
        f'<body name="distractor_{i}" pos="{0.3 + 0.1 * i} 0.6 {DISTRACTOR_HALF_SIZE}">'
        f'<freejoint name="distractor_{i}"/>'
        f'<geom type="box" size="{DISTRACTOR_HALF_SIZE} {DISTRACTOR_HALF_SIZE} {DISTRACTOR_HALF_SIZE}" '
        f'mass="0.08" friction="0.8 0.01 0.001" rgba="{colours[i % len(colours)]}"/></body>'
        for i in range(n)
    )


def _second_plate(present: bool) -> str:
    # The hidden-plate variant's twin: the same look as the target, so nothing but the outcome
    # of an attempt tells the two apart.
    if not present:
        return ""
    return (f'<body name="other_plate" pos="0.62 0.15 {PLATE_HALF_HEIGHT}">'
            f'<geom name="other_plate" type="cylinder" size="{PLATE_RADIUS} {PLATE_HALF_HEIGHT}" '
            f'rgba="0.92 0.92 0.95 1" friction="0.9 0.005 0.0001"/></body>')


def scene_xml(n_distractors: int = 0, second_plate: bool = False) -> str:
    if not 0 <= n_distractors <= MAX_DISTRACTORS:
        raise ValueError(f"n_distractors: must be in [0, {MAX_DISTRACTORS}], got {n_distractors}")
    return f"""
<mujoco model="banana_place">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{PHYSICS_TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="640" offheight="480"/>
    <quality shadowsize="1024"/>
  </visual>
  <default>
    <geom contype="1" conaffinity="1" condim="3" friction="1 0.005 0.0001" solref="0.005 1"/>
    <default class="link">
      <joint damping="2" armature="0.05"/>
      <geom type="capsule" rgba="0.85 0.85 0.88 1" density="600"/>
    </default>
    <default class="finger">
      <geom type="box" friction="1.5 0.02 0.001" condim="6" rgba="0.2 0.2 0.22 1" density="1000"/>
    </default>
    <default class="banana">
      <geom type="capsule" friction="0.9 0.01 0.0005" condim="4" rgba="0.95 0.83 0.2 1"/>
    </default>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.42 0.3" rgb2="0.5 0.38 0.27" width="256" height="256"/>
    <material name="table" texture="grid" texrepeat="6 6"/>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.6 0.7 0.8" rgb2="0.2 0.2 0.25" width="256" height="256"/>
  </asset>
  <worldbody>
    <light pos="0.4 0 1.5" dir="0 0 -1" diffuse="0.8 0.8 0.8"/>
    <camera name="front" pos="1.35 0 0.75" xyaxes="0 1 0 -0.5 0 0.87"/>
    <camera name="top" pos="0.5 0 1.3" xyaxes="0 -1 0 1 0 0"/>
    <geom name="table" type="plane" size="1 1 0.02" material="table"/>
    <body name="target" pos="0.5 0.15 {PLATE_HALF_HEIGHT}">
      <geom name="plate" type="cylinder" size="{PLATE_RADIUS} {PLATE_HALF_HEIGHT}" rgba="0.92 0.92 0.95 1" friction="0.9 0.005 0.0001"/>
      <site name="target" size="0.01" rgba="1 0 0 0.5"/>
    </body>
    {_second_plate(second_plate)}
    <body name="base" pos="0 0 0">
      <geom type="cylinder" size="0.07 0.025" pos="0 0 0.025" rgba="0.3 0.3 0.32 1"/>
      <body name="link1" pos="0 0 0.05" gravcomp="1">
        <joint name="pan" class="link" axis="0 0 1" range="-2.5 2.5"/>
        <geom class="link" size="0.045" fromto="0 0 0 0 0 0.2"/>
        <body name="link2" pos="0 0 0.22" gravcomp="1">
          <joint name="shoulder" class="link" axis="0 1 0" range="-1.6 2.2"/>
          <geom class="link" size="0.04" fromto="0 0 0 0 0 0.4"/>
          <body name="link3" pos="0 0 0.4" gravcomp="1">
            <joint name="elbow" class="link" axis="0 1 0" range="-2.6 1.2"/>
            <geom class="link" size="0.035" fromto="0 0 0 0.4 0 0"/>
            <body name="link4" pos="0.4 0 0" gravcomp="1">
              <joint name="wrist_pitch" class="link" axis="0 1 0" range="-2.8 2.8"/>
              <geom class="link" size="0.03" fromto="0 0 0 0 0 -0.08"/>
              <body name="link5" pos="0 0 -0.08" gravcomp="1">
                <joint name="wrist_roll" class="link" axis="1 0 0" range="-1.6 1.6"/>
                <geom class="link" size="0.028" fromto="0 0 0 0 0 -0.03"/>
                <body name="hand" pos="0 0 -0.04" gravcomp="1">
                  <joint name="wrist_yaw" class="link" axis="0 0 1" range="-3.2 3.2"/>
                  <geom name="palm" type="box" size="0.02 0.06 0.012" pos="0 0 -0.012" rgba="0.3 0.3 0.32 1"/>
                  <site name="ee" pos="0 0 -0.105" size="0.006" rgba="0 1 0 0.4"/>
                  <body name="finger_left" pos="0 0 -0.024" gravcomp="1">
                    <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_OPEN}" damping="1" armature="0.01"/>
                    <geom name="finger_left" class="finger" size="0.012 0.005 0.045" pos="0 0.005 -0.045"/>
                  </body>
                  <body name="finger_right" pos="0 0 -0.024" gravcomp="1">
                    <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_OPEN}" damping="1" armature="0.01"/>
                    <geom name="finger_right" class="finger" size="0.012 0.005 0.045" pos="0 -0.005 -0.045"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
    <body name="banana" pos="0.5 -0.15 {BANANA_REST_Z}">
      <freejoint name="banana"/>
      {_banana_geoms()}
    </body>
    {_distractors(n_distractors)}
  </worldbody>
  <contact>
    <exclude body1="finger_left" body2="finger_right"/>
    <exclude body1="hand" body2="finger_left"/>
    <exclude body1="hand" body2="finger_right"/>
  </contact>
  <actuator>
    <position name="pan" joint="pan" kp="400" kv="40" ctrlrange="-2.5 2.5" forcerange="-150 150"/>
    <position name="shoulder" joint="shoulder" kp="600" kv="60" ctrlrange="-1.6 2.2" forcerange="-150 150"/>
    <position name="elbow" joint="elbow" kp="500" kv="50" ctrlrange="-2.6 1.2" forcerange="-150 150"/>
    <position name="wrist_pitch" joint="wrist_pitch" kp="200" kv="15" ctrlrange="-2.8 2.8" forcerange="-60 60"/>
    <position name="wrist_roll" joint="wrist_roll" kp="150" kv="10" ctrlrange="-1.6 1.6" forcerange="-60 60"/>
    <position name="wrist_yaw" joint="wrist_yaw" kp="100" kv="6" ctrlrange="-3.2 3.2" forcerange="-30 30"/>
    <position name="finger_left" joint="finger_left" kp="400" kv="8" ctrlrange="0 {FINGER_OPEN}" forcerange="-12 12"/>
    <position name="finger_right" joint="finger_right" kp="400" kv="8" ctrlrange="0 {FINGER_OPEN}" forcerange="-12 12"/>
  </actuator>
</mujoco>
"""


def build_model(n_distractors: int = 0, second_plate: bool = False) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(scene_xml(n_distractors, second_plate))

