"""Which runs a dashboard serves: one run directory, or every run in a parent folder.

Decided on every request, so runs that start after the dashboard appear in its list. A
directory is run-like when it holds a metrics store, a `config.json` or a `summary.json`; the
root is a single run when it is run-like itself or has no run-like child.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Optional

from ada_curriculum.metrics_store import FILENAME, MetricsReader

RUN_MARKERS = (FILENAME, "config.json", "summary.json")
# Names of child run directories as they appear in URLs: no separators, no leading dot.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")


class RequestError(Exception):
    """A request the dashboard refuses; answered as ``{"error": message}`` with HTTP `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    path: Path

    @property
    def videos_dir(self) -> Path:
        return self.path / "videos"

    def reader(self) -> Optional[MetricsReader]:
        """A reader on the run's store, or None while the run has none (an empty run)."""
        try:
            return MetricsReader(self.path / FILENAME)
        except FileNotFoundError:
            return None

    def summary(self) -> Optional[dict]:
        """The `summary.json` a finished run leaves, if readable."""
        try:
            data = json.loads((self.path / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def _run_like(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


class RunIndex:
    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")

    def _children(self) -> list[Path]:
        try:
            entries = sorted(self.root.iterdir())
        except OSError:
            return []
        return [p for p in entries if RUN_NAME.fullmatch(p.name) and p.is_dir() and _run_like(p)]

    def is_single(self) -> bool:
        return _run_like(self.root) or not self._children()

    def runs(self) -> list[Run]:
        if self.is_single():
            return [Run(self.root.name, self.root)]
        return [Run(p.name, p) for p in self._children()]

    def get(self, name: Optional[str]) -> Run:
        """The run called `name` (optional when serving a single run)."""
        single = self.is_single()
        if name is None or (single and name == self.root.name):
            if not single:
                raise RequestError(400, "run: required when serving a folder of runs (see /api/runs)")
            return Run(self.root.name, self.root)
        if not RUN_NAME.fullmatch(name):
            raise RequestError(400, f"run: not a run name: {name[:80]!r}")
        if single:
            raise RequestError(404, f"run: no run {name!r} here (this dashboard serves {self.root.name!r})")
        path = self.root / name
        if not path.is_dir():
            raise RequestError(404, f"run: no run {name!r} in {self.root.name}")
        return Run(name, path)
