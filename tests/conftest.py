import ctypes.util
import os

# MuJoCo picks its GL backend once, at import; tests render offscreen through OSMesa.
if "MUJOCO_GL" not in os.environ and ctypes.util.find_library("OSMesa"):
    os.environ["MUJOCO_GL"] = "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
