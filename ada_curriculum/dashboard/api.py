"""The dashboard's JSON API: query validation and one function per endpoint.

Every endpoint is a GET under ``/api/`` and answers a JSON object. Query values are checked
here before they reach `MetricsReader`, which passes them to SQLite as parameters only.
A run without a metrics store answers empty data (200), never an error.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote

from ada_curriculum.dashboard.runs import RequestError, Run, RunIndex

MAX_STEP = 2**62
MAX_POINTS = 100_000
DEFAULT_MAX_POINTS = 2000
# Scalar names and prefixes: what the coordinator writes (letters, digits, `_ . / : -`).
SCALAR_NAME = re.compile(r"[A-Za-z0-9_./:-]{1,200}")
VIDEO_SUFFIXES = {".mp4": "video/mp4", ".webm": "video/webm", ".gif": "image/gif", ".png": "image/png"}
# Scalars the health panel shows next to the newest health record.
HEALTH_PREFIXES = ("learner/", "actors/", "actor/", "replay/", "success/")


def _text(name: str, raw: str) -> str:
    return raw


def _integer(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,19}", raw) or not lo <= int(raw) <= hi:
            raise RequestError(400, f"{name}: expected an integer in [{lo}, {hi}], got {raw[:40]!r}")
        return int(raw)

    return parse


def _names(name: str, raw: str) -> list[str]:
    """A comma-separated list of scalar names (or prefixes)."""
    items = [s for s in raw.split(",") if s]
    bad = [s for s in items if not SCALAR_NAME.fullmatch(s)]
    if bad or not items or len(items) > 100:
        shown = bad[0][:40] if bad else raw[:40]
        raise RequestError(400, f"{name}: expected comma-separated scalar names (letters, digits, _ . / : -), "
                                f"got {shown!r}")
    return items


# Every query parameter an endpoint may take, and its parser (raises RequestError 400).
PARAMS: dict[str, Callable[[str, str], Any]] = {
    "run": _text,
    "since": _integer(-1, MAX_STEP),  # records with step > since
    "step": _integer(0, MAX_STEP),
    "last": _integer(1, 10_000),
    "max_points": _integer(2, MAX_POINTS),
    "name": _names,
    "prefix": _names,
}


class Query:
    """The query string of one request, every value checked before any endpoint runs."""

    def __init__(self, raw: str, allowed: tuple[str, ...]):
        try:
            params = parse_qs(raw, keep_blank_values=True, strict_parsing=bool(raw), max_num_fields=32)
        except ValueError:
            raise RequestError(400, "malformed query string") from None
        self._values: dict[str, Any] = {}
        for key, values in params.items():
            if key not in allowed:
                expected = ", ".join(allowed) if allowed else "none"
                raise RequestError(400, f"{key[:40]!r}: unknown query parameter (expected: {expected})")
            if len(values) > 1:
                raise RequestError(400, f"{key}: given more than once")
            self._values[key] = PARAMS[key](key, values[0])

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)


def video_entries(run: Run, paths: list[str]) -> list[dict]:
    """Evaluation video paths as entries the page can show: a URL under /videos/ when the file
    is inside the run's videos dir and exists, else no URL."""
    base = run.videos_dir.resolve()
    out = []
    for p in paths:
        path = Path(p) if Path(p).is_absolute() else run.path / p
        entry = {"name": path.name, "kind": "image" if path.suffix == ".gif" else "video", "url": None}
        try:
            rel = path.resolve().relative_to(base)
        except (ValueError, OSError):
            rel = None
        if rel is not None and path.is_file() and path.suffix in VIDEO_SUFFIXES:
            entry["url"] = f"/videos/{quote(rel.as_posix())}?run={quote(run.name)}"
        out.append(entry)
    return out


def resolve_video(run: Run, rel: str) -> Path:
    """The file `/videos/<rel>` names, refused unless it lies inside the run's videos dir."""
    if "\x00" in rel or "\\" in rel or rel.startswith("/"):
        raise RequestError(400, "video: malformed path")
    base = run.videos_dir.resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base) or target == base:
        raise RequestError(403, "video: outside the run's videos directory")
    if target.suffix not in VIDEO_SUFFIXES or not target.is_file():
        raise RequestError(404, f"video: no such video {rel[:80]!r}")
    return target


# ---- endpoints ------------------------------------------------------------------------------


def runs(index: RunIndex, q: Query) -> dict:
    out = []
    for run in index.runs():
        row = {"name": run.name, "has_metrics": False, "live": False, "finished": run.summary() is not None,
               "last_step": None, "eval_success": None, "recent_success": None, "stage": None}
        reader = run.reader()
        if reader is not None:
            with reader, reader.snapshot():
                evals = reader.evaluations(last=1)
                curriculum = reader.latest_curriculum()
                recent = reader.latest_scalars(("success/recent",)).get("success/recent")
                row.update(has_metrics=True, live=reader.is_live(), last_step=reader.last_step(),
                           eval_success=evals[-1]["success_rate"] if evals else None,
                           recent_success=recent["value"] if recent else None,
                           stage=curriculum["stage"] if curriculum else None)
        out.append(row)
    return {"mode": "single" if index.is_single() else "parent", "root": index.root.name, "runs": out}


def _with_reader(fn: Callable[[Any, Run, Query], dict],
                 empty: Callable[[Run], dict]) -> Callable[[RunIndex, Query], dict]:
    """An endpoint on one run (`run=` parameter); a run without a store answers `empty(run)`."""

    def endpoint(index: RunIndex, q: Query) -> dict:
        run = index.get(q.get("run"))
        reader = run.reader()
        if reader is None:
            return {"run": run.name, **empty(run)}
        with reader, reader.snapshot():  # one consistent state per answer
            return {"run": run.name, **fn(reader, run, q)}

    return endpoint


def _scalar_names(reader, run: Run, q: Query) -> dict:
    return {"names": reader.scalar_names()}


def _scalars(reader, run: Run, q: Query) -> dict:
    names, prefixes = q.get("name"), q.get("prefix", [])
    if prefixes and names is None:
        names = []  # only the prefixed names, not every name
    data = reader.scalars(names=names, prefixes=prefixes, since=q.get("since"),
                          max_points=q.get("max_points", DEFAULT_MAX_POINTS))
    last = max((series[-1][0] for series in data.values()), default=None)
    return {"scalars": data, "last_step": last}


def _curriculum(reader, run: Run, q: Query) -> dict:
    return {"snapshots": reader.curriculum(since=q.get("since"), with_bins=False), "latest": reader.latest_curriculum()}


def _evaluations(reader, run: Run, q: Query) -> dict:
    evals = reader.evaluations(since=q.get("since"), last=q.get("last"))
    for e in evals:
        e["videos"] = video_entries(run, e["videos"])
    return {"evaluations": evals}


def _distillation(reader, run: Run, q: Query) -> dict:
    return {"stages": reader.distillation(since=q.get("since"))}


def _health(reader, run: Run, q: Query) -> dict:
    latest = reader.health(last=1)
    opened = reader.meta().get("opened_at")
    return {"live": reader.is_live(), "finished": run.summary() is not None, "last_step": reader.last_step(),
            # Changes when a writer reopens the store (a resume may rewind the curves).
            "writer_opened_at": float(opened) if opened else None,
            "latest": latest[-1] if latest else None, "rates": reader.latest_scalars(HEALTH_PREFIXES)}


def _no_health(run: Run) -> dict:
    return {"live": False, "finished": run.summary() is not None, "last_step": None, "writer_opened_at": None,
            "latest": None, "rates": {}}


def _embedding(reader, run: Run, q: Query) -> dict:
    return {"steps": reader.embedding_steps(), "embedding": reader.embedding(q.get("step"))}


# name -> (handler, accepted query parameters)
ENDPOINTS: dict[str, tuple[Callable[[RunIndex, Query], dict], tuple[str, ...]]] = {
    "runs": (runs, ()),
    "scalars/names": (_with_reader(_scalar_names, lambda run: {"names": []}), ("run",)),
    "scalars": (_with_reader(_scalars, lambda run: {"scalars": {}, "last_step": None}),
                ("run", "name", "prefix", "since", "max_points")),
    "curriculum": (_with_reader(_curriculum, lambda run: {"snapshots": [], "latest": None}), ("run", "since")),
    "evaluations": (_with_reader(_evaluations, lambda run: {"evaluations": []}), ("run", "since", "last")),
    "distillation": (_with_reader(_distillation, lambda run: {"stages": []}), ("run", "since")),
    "health": (_with_reader(_health, _no_health), ("run",)),
    "embedding": (_with_reader(_embedding, lambda run: {"steps": [], "embedding": None}), ("run", "step")),
}


def handle(index: RunIndex, endpoint: str, raw_query: str) -> dict:
    """The JSON answer of `/api/<endpoint>?<raw_query>`; raises RequestError."""
    if endpoint not in ENDPOINTS:
        raise RequestError(404, f"no API endpoint {endpoint[:60]!r} (endpoints: {', '.join(ENDPOINTS)})")
    fn, allowed = ENDPOINTS[endpoint]
    return fn(index, Query(raw_query, allowed))


def json_safe(value: Any) -> Any:
    """Non-finite floats (not valid JSON) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
