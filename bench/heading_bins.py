"""Success by the banana's heading folded to [0, pi/2] (the parallel grasp is the same turned by
pi, and mirrored), from `eval` outputs. The beachhead's hard dimension is this one (RESULTS,
session 13); `eval`'s own `per_dimension` bins the raw heading, which mixes easy and hard.

    .venv/bin/python bench/heading_bins.py runs/X/eval-full runs/Y/eval-full ...

One line per evaluation (overall success, then success and episode count per bin); the last
line is one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

EDGES = (0.0, 0.3, 0.6, 0.9, 1.2, math.pi / 2)


def folded_heading(yaw: float) -> float:
    return abs(((yaw + math.pi / 2) % math.pi) - math.pi / 2)


def heading_bins(eval_dir: Path) -> dict:
    rows = [json.loads(line) for line in (eval_dir / "episodes.jsonl").read_text().splitlines()]
    heading = np.array([folded_heading(r["task"]["banana_yaw"]) for r in rows])
    success = np.array([r["success"] for r in rows], bool)
    bins = {}
    for i, (lo, hi) in enumerate(zip(EDGES[:-1], EDGES[1:])):
        m = (heading >= lo) & ((heading < hi) if i < len(EDGES) - 2 else (heading <= hi))
        bins[f"{lo:.1f}-{hi:.2f}"] = {"success": round(float(success[m].mean()), 3) if m.any() else None,
                                      "episodes": int(m.sum())}
    return {"success": round(float(success.mean()), 4), "episodes": len(rows), "bins": bins}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("evals", nargs="+", help="eval output directories (holding episodes.jsonl)")
    out = {d: heading_bins(Path(d)) for d in p.parse_args().evals}
    for d, r in out.items():
        print(f"{r['success']:.3f}  " + "  ".join(f"{k}: {b['success']} ({b['episodes']})" for k, b in r["bins"].items())
              + f"  {d}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
