"""How much of a box of tasks the scene can actually hold.

`TaskSpace.sample` rejects tasks whose banana and plate are closer than `min_separation` and
gives up after 1000 tries. A curriculum cuts the space into smaller boxes (bins, a boundary
slice of the widening box), some of which hold no valid task or almost none; those must not be
sampled. The check is a deterministic grid estimate, so it is the same on every resume.
"""

from __future__ import annotations

import numpy as np

from envs.task_space import TaskSpace

POSITION_DIMS = ("banana_x", "banana_y", "target_x", "target_y")
# Below this share of valid tasks a box is not sampled: rejection sampling would need more
# than the 1000 tries `TaskSpace.sample` allows (0.98^1000 ~ 2e-9).
MIN_FEASIBLE = 0.02


def feasible_fraction(space: TaskSpace, points: int = 8) -> float:
    """Share of the box's banana/target positions that satisfy the separation constraint.

    Evaluated on a cell-centred grid of `points` per non-degenerate position dimension.
    """
    axes = []
    for name in POSITION_DIMS:
        d = space[name]
        if d.high > d.low:
            axes.append(d.low + (np.arange(points) + 0.5) / points * (d.high - d.low))
        else:
            axes.append(np.array([d.low]))
    bx, by, tx, ty = np.meshgrid(*axes, indexing="ij", sparse=True)
    ok = np.hypot(bx - tx, by - ty) >= space.min_separation - 1e-9
    return float(np.mean(ok))


def samplable(space: TaskSpace) -> bool:
    return feasible_fraction(space) >= MIN_FEASIBLE
