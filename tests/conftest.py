import ctypes.util
import os

import pytest

# MuJoCo picks its GL backend once, at import; tests render offscreen through OSMesa.
if "MUJOCO_GL" not in os.environ and ctypes.util.find_library("OSMesa"):
    os.environ["MUJOCO_GL"] = "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


@pytest.fixture(scope="session")
def demos(tmp_path_factory):
    """Three scripted demos of the nominal task, shared by the training tests (read only)."""
    from ada_curriculum.cli import main

    out = tmp_path_factory.mktemp("demos") / "store"
    assert main(["collect", "--tasks", "nominal", "--episodes", "3", "--out", str(out)]) == 0
    return str(out)
