"""The run's metrics store: an embedded SQLite database at ``RUN/metrics.sqlite``.

One writer (the coordinator, `MetricsWriter`) and any number of readers (the dashboard,
`MetricsReader`, opened read-only). The database is in WAL mode, so readers never block the
writer and always see the last committed batch. Scalars are also written as TensorBoard event
files under ``RUN/tensorboard/`` (optional; written without importing TensorFlow).

Schema (version 1). ``step`` is the learner update count of every record; ``wall_time`` is
Unix seconds; JSON columns hold UTF-8 JSON text.

``meta(key TEXT PRIMARY KEY, value TEXT)``
    ``schema_version``, ``created_at``, ``opened_at`` (last writer open) and ``closed_at``
    (last clean close; older than ``opened_at`` while a writer is live or after a crash).
``scalars(step INTEGER, wall_time REAL, name TEXT, value REAL)``, index on (name, step)
    Curves. Names the dashboard knows (others are listed and plotted on request):
    ``loss``, ``loss/*``: losses; ``grad_norm``, ``grad_norm/<module>``: gradient norms;
    ``clipped`` (> 0 at an update window with a clip event) and ``clip_count``;
    ``success/recent`` (training episodes), ``eval/success_rate``;
    ``learner/updates_per_s``, ``actors/env_steps_per_s``, ``actor/<i>/env_steps_per_s``;
    ``replay/<table>/size``, ``replay/<table>/max_size``, ``replay/<table>/inserts_per_s``,
    ``replay/<table>/samples_per_s``; ``actors/restarts``.
    Non-finite values are stored as NULL. ``scalar_names(name TEXT PRIMARY KEY)`` lists every
    name once (so readers need not scan ``scalars``).
``curriculum(id, step, wall_time, stage INTEGER, bounds JSON, bins JSON)``
    One snapshot of the task distribution. ``bounds``: ``{dim: {"lo", "hi", "full_lo",
    "full_hi"}}``. ``bins``: ``{grid: {"x": dim, "y": dim, "x_edges": [...], "y_edges": [...],
    "successes": [[...]], "counts": [[...]]}}`` with rows indexed by y bin, columns by x bin
    (see `success_grid`); conventional grids are ``banana`` and ``target``.
``distillation(id, step, wall_time, generation INTEGER, preset TEXT, params INTEGER,
teacher_success REAL, student_success REAL, distance_to_teacher REAL, weight REAL, extra JSON)``
    One record per distillation stage update.
``evaluations(id, step, wall_time, version INTEGER, tasks TEXT, episodes INTEGER,
successes INTEGER, success_rate REAL, ci_lo REAL, ci_hi REAL, per_bin JSON,
success_per_trial JSON, videos JSON, extra JSON)``
    One held-out evaluation (the dict of `evaluate.summarize` / `Evaluator.run`). ``per_bin``:
    ``{"x<i>_y<j>": {"episodes", "successes", "success_rate"}}``; ``success_per_trial``: success
    rate per trial index; ``videos``: paths relative to the run dir when inside it.
``health(id, step, wall_time, actors_alive INTEGER, actors_total INTEGER,
actor_restarts INTEGER, last_checkpoint_step INTEGER, last_checkpoint_time REAL,
actors JSON, replay JSON, extra JSON)``
    System health snapshots; ``actors`` is a list of per-actor dicts, ``replay`` the replay
    tables' info (``{table: {"size", "max_size", ...}}``).
``embeddings(id, step, wall_time, method TEXT, explained JSON)`` and
``embedding_points(embedding_id INTEGER, x REAL, y REAL, label TEXT)``
    2-D projections of policy embeddings with a task-region label per point (the labelled
    latent-space plot of seed 000); see `pca_2d`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import numbers
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

FILENAME = "metrics.sqlite"
TENSORBOARD_DIR = "tensorboard"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scalars (
    step INTEGER NOT NULL, wall_time REAL NOT NULL, name TEXT NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS scalars_by_name ON scalars (name, step);
CREATE TABLE IF NOT EXISTS scalar_names (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS curriculum (
    id INTEGER PRIMARY KEY, step INTEGER NOT NULL, wall_time REAL NOT NULL, stage INTEGER,
    bounds TEXT NOT NULL, bins TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS distillation (
    id INTEGER PRIMARY KEY, step INTEGER NOT NULL, wall_time REAL NOT NULL, generation INTEGER NOT NULL,
    preset TEXT, params INTEGER, teacher_success REAL, student_success REAL, distance_to_teacher REAL,
    weight REAL, extra TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY, step INTEGER NOT NULL, wall_time REAL NOT NULL, version INTEGER, tasks TEXT,
    episodes INTEGER, successes INTEGER, success_rate REAL, ci_lo REAL, ci_hi REAL, per_bin TEXT NOT NULL,
    success_per_trial TEXT NOT NULL, videos TEXT NOT NULL, extra TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY, step INTEGER NOT NULL, wall_time REAL NOT NULL, actors_alive INTEGER,
    actors_total INTEGER, actor_restarts INTEGER, last_checkpoint_step INTEGER, last_checkpoint_time REAL,
    actors TEXT NOT NULL, replay TEXT NOT NULL, extra TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY, step INTEGER NOT NULL, wall_time REAL NOT NULL, method TEXT, explained TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS embedding_points (
    embedding_id INTEGER NOT NULL REFERENCES embeddings (id), x REAL NOT NULL, y REAL NOT NULL, label TEXT);
CREATE INDEX IF NOT EXISTS embedding_points_by_id ON embedding_points (embedding_id);
"""

# Tables holding per-step records (`discard_after` trims them all).
_STEP_TABLES = ("scalars", "curriculum", "distillation", "evaluations", "health", "embeddings")
_COLUMNS = {
    "curriculum": ("step", "wall_time", "stage", "bounds", "bins"),
    "distillation": ("step", "wall_time", "generation", "preset", "params", "teacher_success", "student_success",
                     "distance_to_teacher", "weight", "extra"),
    "evaluations": ("step", "wall_time", "version", "tasks", "episodes", "successes", "success_rate", "ci_lo",
                    "ci_hi", "per_bin", "success_per_trial", "videos", "extra"),
    "health": ("step", "wall_time", "actors_alive", "actors_total", "actor_restarts", "last_checkpoint_step",
               "last_checkpoint_time", "actors", "replay", "extra"),
}


@dataclasses.dataclass
class MetricsConfig:
    """How the coordinator writes metrics."""

    tensorboard: bool = dataclasses.field(default=True, metadata={"help": "also write TensorBoard event files"})
    commit_interval: float = dataclasses.field(
        default=1.0, metadata={"min": 0.0, "help": "seconds between batched commits of scalars"})
    max_pending: int = dataclasses.field(default=2000, metadata={"min": 1, "help": "scalar rows that force a commit"})
    snapshot_interval: float = dataclasses.field(default=10.0, metadata={
        "min": 0.0, "help": "seconds between health and curriculum snapshots (one is also written at each "
                            "checkpoint and when the curriculum stage changes)"})


def _number(value: Any) -> Optional[float]:
    """A finite float, or None for non-finite numbers; raises TypeError for non-numbers."""
    if getattr(value, "shape", None) == ():  # 0-d NumPy / JAX arrays
        value = value.item()
    if not isinstance(value, (numbers.Real, np.bool_)):
        raise TypeError(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(float(value)) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(_plain(value), allow_nan=False)


def _optional_float(value: Any) -> Optional[float]:
    return None if value is None else _number(value)


def _optional_int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


# ---- records built from raw results -------------------------------------------------------


def success_grid(points: Sequence[Mapping[str, float]], successes: Sequence[bool], x: str, y: str,
                 x_range: tuple[float, float], y_range: tuple[float, float], bins: int = 3) -> dict:
    """Success counts of tasks binned on two dimensions, in the `curriculum.bins` format.

    points: task dicts (e.g. `TaskParams.to_dict()`); values outside a range go to the edge bin.
    """
    x_edges, y_edges = np.linspace(*x_range, bins + 1), np.linspace(*y_range, bins + 1)
    counts, wins = np.zeros((bins, bins), int), np.zeros((bins, bins), int)
    for task, ok in zip(points, successes):
        i = int(np.clip(np.searchsorted(x_edges, task[x], side="right") - 1, 0, bins - 1))
        j = int(np.clip(np.searchsorted(y_edges, task[y], side="right") - 1, 0, bins - 1))
        counts[j, i] += 1
        wins[j, i] += bool(ok)
    return {"x": x, "y": y, "x_edges": x_edges.tolist(), "y_edges": y_edges.tolist(),
            "successes": wins.tolist(), "counts": counts.tolist()}


@dataclasses.dataclass(frozen=True)
class Projection:
    """A 2-D projection of embeddings: `coords` (N, 2), one label per point."""

    coords: np.ndarray
    labels: list[str]
    explained: list[float]  # fraction of the variance along each of the two axes
    method: str = "pca"


def pca_2d(embeddings: np.ndarray, labels: Sequence[Any]) -> Projection:
    """Project (N, D) embeddings on their two principal axes (centred SVD).

    Signs are fixed (the largest loading of each axis is positive) so successive snapshots of
    a slowly changing embedding do not flip. D < 2 or N < 2 pads the missing axes with zeros.
    """
    z = np.asarray(embeddings, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"embeddings: expected an (N, D) array, got shape {z.shape}")
    if len(labels) != len(z):
        raise ValueError(f"labels: expected {len(z)} labels, got {len(labels)}")
    if not np.isfinite(z).all():
        raise ValueError("embeddings: expected finite values")
    coords, explained = np.zeros((len(z), 2)), [0.0, 0.0]
    if len(z) >= 2 and z.shape[1] >= 1:
        centred = z - z.mean(axis=0)
        u, s, vt = np.linalg.svd(centred, full_matrices=False)
        k = min(2, len(s))
        signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
        signs[signs == 0] = 1.0
        coords[:, :k] = u[:, :k] * s[:k] * signs
        total = float((s ** 2).sum())
        if total > 0:
            explained[:k] = [float(v) for v in s[:k] ** 2 / total]
    return Projection(coords=coords, labels=[str(label) for label in labels], explained=explained)


# ---- writing ----------------------------------------------------------------------------------


class _TensorBoard:
    """Scalar curves as a TensorBoard event file. TensorBoard's record framing and protos only:
    its `EventFileWriter` imports TensorFlow (seconds) just to open a file."""

    def __init__(self, logdir: Path):
        import socket

        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        logdir.mkdir(parents=True, exist_ok=True)
        # A new file per writer: TensorBoard reads every events file of the directory in order.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{id(self)}"
        self._writer = RecordWriter(open(logdir / name, "wb"))
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write(self, event) -> None:
        self._writer.write(event.SerializeToString())

    def scalar(self, name: str, value: float, step: int, wall_time: float) -> None:
        summary = self._summary(value=[self._summary.Value(tag=name, simple_value=value)])
        self._write(self._event(wall_time=wall_time, step=step, summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    """The only writer of a run's metrics store (the coordinator). Not thread-safe.

    Reopening an existing store appends to it. Scalars are committed in batches (every
    `commit_interval` seconds or `max_pending` rows, and on `flush` / `close`); the rarer
    records (curriculum, distillation, evaluation, health, embedding) commit at once.
    """

    def __init__(self, run_dir: str | os.PathLike, config: MetricsConfig | None = None):
        self.config = config or MetricsConfig()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / FILENAME
        # One thread at a time, but not necessarily the one that opened it.
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable up to the last checkpoint
        with self._db:
            self._db.executescript(_SCHEMA)
            version = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is not None and int(version[0]) != SCHEMA_VERSION:
                raise ValueError(f"{self.path}: schema version {version[0]}, expected {SCHEMA_VERSION}")
            now = repr(time.time())
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (now,))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (now,))
        self._names = {r[0] for r in self._db.execute("SELECT name FROM scalar_names")}
        self._pending = 0
        self._last_commit = time.monotonic()
        self._tb = _TensorBoard(self.run_dir / TENSORBOARD_DIR) if self.config.tensorboard else None

    # -- scalars ------------------------------------------------------------------------------
    def scalar(self, name: str, value: Any, step: int, wall_time: float | None = None) -> None:
        self.scalars({name: value}, step, wall_time)

    def scalars(self, values: Mapping[str, Any], step: int, wall_time: float | None = None,
                prefix: str = "") -> int:
        """Record every numeric entry of `values` (bools as 0/1) as `prefix + name` at `step`;
        other entries (strings, lists, None) are ignored, so a learner's metrics dict can be
        passed as it is. Returns the number of rows written."""
        wall_time = time.time() if wall_time is None else float(wall_time)
        rows = []
        for name, raw in values.items():
            try:
                value = _number(raw)
            except TypeError:
                continue
            rows.append((int(step), wall_time, prefix + str(name), value))
        self._db.executemany("INSERT INTO scalars VALUES (?, ?, ?, ?)", rows)
        new = {row[2] for row in rows} - self._names
        if new:
            self._db.executemany("INSERT OR IGNORE INTO scalar_names VALUES (?)", [(n,) for n in sorted(new)])
            self._names |= new
        if self._tb is not None:
            for step_, t, name, value in rows:
                if value is not None:
                    self._tb.scalar(name, value, step_, t)
        self._pending += len(rows)
        if self._pending >= self.config.max_pending or \
                time.monotonic() - self._last_commit >= self.config.commit_interval:
            self.flush()
        return len(rows)

    # -- structured records -------------------------------------------------------------------
    def curriculum(self, step: int, bounds: Mapping[str, Sequence[float]], full: Mapping[str, Sequence[float]],
                   stage: int | None = None, bins: Mapping[str, Mapping] | None = None,
                   wall_time: float | None = None) -> None:
        """A snapshot of the task distribution: current (lo, hi) per dimension against its full
        (lo, hi) (e.g. ``{n: (space[n].low, space[n].high) for n in space.names}``), the stage,
        and success grids (``{"banana": success_grid(...), "target": ...}``)."""
        missing = sorted(set(bounds) - set(full))
        if missing:
            raise ValueError(f"full: no full range for dimension {missing[0]!r}")
        dims = {name: {"lo": float(lo), "hi": float(hi), "full_lo": float(full[name][0]),
                       "full_hi": float(full[name][1])} for name, (lo, hi) in bounds.items()}
        self._insert("curriculum", (int(step), self._time(wall_time), _optional_int(stage), _json(dims),
                                    _json(bins or {})))

    def distillation(self, step: int, generation: int, preset: str | None = None, params: int | None = None,
                     teacher_success: float | None = None, student_success: float | None = None,
                     distance_to_teacher: float | None = None, weight: float | None = None,
                     extra: Mapping | None = None, wall_time: float | None = None) -> None:
        """A distillation stage record: the student generation, its size (preset, parameter
        count), teacher and student success, distance to the teacher and the distillation
        loss weight."""
        self._insert("distillation", (
            int(step), self._time(wall_time), int(generation), preset, _optional_int(params),
            _optional_float(teacher_success), _optional_float(student_success),
            _optional_float(distance_to_teacher), _optional_float(weight), _json(extra or {})))

    def evaluation(self, step: int, result: Mapping[str, Any], wall_time: float | None = None) -> None:
        """A held-out evaluation, as returned by `Evaluator.run` / `evaluate.summarize`; also
        recorded as the scalars ``eval/success_rate``, ``eval/ci_lo``, ``eval/ci_hi``."""
        known = {"version", "tasks", "episodes", "successes", "success_rate", "ci95", "per_bin",
                 "success_per_trial", "videos"}
        ci = result.get("ci95") or (None, None)
        wall_time = self._time(wall_time)
        self._insert("evaluations", (
            int(step), wall_time, _optional_int(result.get("version")), result.get("tasks"),
            _optional_int(result.get("episodes")), _optional_int(result.get("successes")),
            _optional_float(result.get("success_rate")), _optional_float(ci[0]), _optional_float(ci[1]),
            _json(result.get("per_bin") or {}), _json(result.get("success_per_trial") or []),
            _json([self._run_relative(p) for p in result.get("videos") or []]),
            _json({k: v for k, v in result.items() if k not in known})), flush=False)
        self.scalars({"eval/success_rate": result.get("success_rate"), "eval/ci_lo": ci[0], "eval/ci_hi": ci[1]},
                     step, wall_time)
        self.flush()

    def health(self, step: int, actors_alive: int, actors_total: int, actor_restarts: int,
               last_checkpoint_step: int | None = None, last_checkpoint_time: float | None = None,
               actors: Sequence[Mapping] | None = None, replay: Mapping | None = None,
               extra: Mapping | None = None, wall_time: float | None = None) -> None:
        """A system health snapshot: actors alive of total, restarts so far, the last checkpoint
        (update and Unix time), per-actor stats and the replay tables' info."""
        self._insert("health", (
            int(step), self._time(wall_time), int(actors_alive), int(actors_total), int(actor_restarts),
            _optional_int(last_checkpoint_step), _optional_float(last_checkpoint_time), _json(list(actors or [])),
            _json(replay or {}), _json(extra or {})))

    def embedding(self, step: int, projection: Projection, wall_time: float | None = None) -> None:
        """A labelled 2-D projection of policy embeddings (see `pca_2d`)."""
        coords = np.asarray(projection.coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(projection.labels):
            raise ValueError(f"projection: expected (N, 2) coords and N labels, got {coords.shape} "
                             f"and {len(projection.labels)}")
        cur = self._db.execute("INSERT INTO embeddings (step, wall_time, method, explained) VALUES (?, ?, ?, ?)",
                               (int(step), self._time(wall_time), projection.method, _json(projection.explained)))
        self._db.executemany("INSERT INTO embedding_points VALUES (?, ?, ?, ?)",
                             [(cur.lastrowid, float(x), float(y), str(label))
                              for (x, y), label in zip(coords, projection.labels)])
        self.flush()

    # -- housekeeping -------------------------------------------------------------------------
    def discard_after(self, step: int) -> None:
        """Delete every record past `step`: call on resume with the restored update so the
        curves continue from the checkpoint instead of doubling back over lost updates."""
        for table in _STEP_TABLES:
            if table == "embeddings":
                self._db.execute("DELETE FROM embedding_points WHERE embedding_id IN "
                                 "(SELECT id FROM embeddings WHERE step > ?)", (int(step),))
            self._db.execute(f"DELETE FROM {table} WHERE step > ?", (int(step),))
        self.flush()

    def flush(self) -> None:
        self._db.commit()
        if self._tb is not None:
            self._tb.flush()
        self._pending = 0
        self._last_commit = time.monotonic()

    def close(self) -> None:
        if self._db is None:
            return
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('closed_at', ?)", (repr(time.time()),))
        self.flush()
        self._db.close()
        self._db = None
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _insert(self, table: str, row: tuple, flush: bool = True) -> None:
        columns = _COLUMNS[table]
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        self._db.execute(sql, row)
        if flush:
            self.flush()

    @staticmethod
    def _time(wall_time: float | None) -> float:
        return time.time() if wall_time is None else float(wall_time)

    def _run_relative(self, path: Any) -> str:
        """A path inside the run dir as relative to it (the dashboard serves only those)."""
        p = Path(str(path))
        try:
            return p.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path)


# ---- reading ----------------------------------------------------------------------------------


def _loads(text: Optional[str], default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


def _finite(value: Optional[float]) -> Optional[float]:
    return value if value is None or math.isfinite(value) else None


def _in_snapshot(method):
    """Run a reader method that makes several queries on one consistent state."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.snapshot():
            return method(self, *args, **kwargs)

    return wrapper


class MetricsReader:
    """Read-only queries on a run's store; every method returns plain JSON-ready data.

    Opens ``file:...?mode=ro``, so it can neither write nor create the file (a missing file
    raises FileNotFoundError). Tables that did not exist when it opened read as empty: open a
    reader per query round (cheap) rather than keeping one for long.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics store")
        self.path = path
        # Autocommit: `snapshot` opens read transactions explicitly.
        self._db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10.0,
                                   check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._depth = 0
        self._tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "MetricsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the enclosed queries on one consistent state of the store (a read transaction:
        the writer's later commits stay invisible until it ends)."""
        if self._depth == 0:
            self._db.execute("BEGIN")
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")

    def _rows(self, table: str, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if table not in self._tables:
            return []
        return self._db.execute(sql, tuple(params)).fetchall()

    # -- meta and scalars ---------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self._rows("meta", "SELECT key, value FROM meta")}

    def is_live(self) -> bool:
        """True while a writer has the store open (or died without closing it)."""
        meta = self.meta()
        return "opened_at" in meta and float(meta.get("closed_at", "0")) < float(meta["opened_at"])

    @_in_snapshot
    def last_step(self) -> Optional[int]:
        steps = [r[0] for table in _STEP_TABLES if table != "scalars"
                 for r in self._rows(table, f"SELECT MAX(step) FROM {table}") if r[0] is not None]
        steps += [v["step"] for v in self.latest_scalars().values()]
        return max(steps) if steps else None

    def scalar_names(self) -> list[str]:
        return [r[0] for r in self._rows("scalar_names", "SELECT name FROM scalar_names ORDER BY name")]

    @_in_snapshot
    def scalars(self, names: Sequence[str] | None = None, prefixes: Sequence[str] = (), since: int | None = None,
                max_points: int | None = None) -> dict[str, list[list]]:
        """``{name: [[step, wall_time, value], ...]}`` by step, for the given names and/or names
        starting with one of `prefixes` (all names if neither), with step > `since`. Longer series
        are thinned evenly to `max_points` (the last point always kept)."""
        wanted = set(names or ())
        if prefixes:
            wanted |= {n for n in self.scalar_names() if any(n.startswith(p) for p in prefixes)}
        elif names is None:
            wanted = set(self.scalar_names())
        out: dict[str, list[list]] = {}
        for name in sorted(wanted):
            rows = self._rows("scalars", "SELECT step, wall_time, value FROM scalars WHERE name = ? AND step > ? "
                              "ORDER BY step, rowid", (name, -1 if since is None else since))
            series = [[r[0], r[1], _finite(r[2])] for r in rows]
            if max_points is not None and len(series) > max_points:
                keep = np.unique(np.linspace(0, len(series) - 1, max_points).round().astype(int))
                series = [series[i] for i in keep]
            if series:
                out[name] = series
        return out

    @_in_snapshot
    def latest_scalars(self, prefixes: Sequence[str] = ()) -> dict[str, dict]:
        """The newest value of every scalar (or of those starting with one of `prefixes`)."""
        out = {}
        for name in self.scalar_names():
            if prefixes and not any(name.startswith(p) for p in prefixes):
                continue
            rows = self._rows("scalars", "SELECT step, wall_time, value FROM scalars WHERE name = ? "
                              "ORDER BY step DESC, rowid DESC LIMIT 1", (name,))
            if rows:  # a name whose rows `discard_after` removed has none
                out[name] = {"step": rows[0][0], "wall_time": rows[0][1], "value": _finite(rows[0][2])}
        return out

    # -- structured records -------------------------------------------------------------------
    def curriculum(self, since: int | None = None, with_bins: bool = True) -> list[dict]:
        rows = self._rows("curriculum", "SELECT * FROM curriculum WHERE step > ? ORDER BY step, id",
                          (-1 if since is None else since,))
        return [{"step": r["step"], "wall_time": r["wall_time"], "stage": r["stage"],
                 "bounds": _loads(r["bounds"], {}), **({"bins": _loads(r["bins"], {})} if with_bins else {})}
                for r in rows]

    def latest_curriculum(self) -> Optional[dict]:
        rows = self._rows("curriculum", "SELECT * FROM curriculum ORDER BY step DESC, id DESC LIMIT 1")
        return {"step": rows[0]["step"], "wall_time": rows[0]["wall_time"], "stage": rows[0]["stage"],
                "bounds": _loads(rows[0]["bounds"], {}), "bins": _loads(rows[0]["bins"], {})} if rows else None

    def distillation(self, since: int | None = None) -> list[dict]:
        rows = self._rows("distillation", "SELECT * FROM distillation WHERE step > ? ORDER BY step, id",
                          (-1 if since is None else since,))
        return [{"step": r["step"], "wall_time": r["wall_time"], "generation": r["generation"], "preset": r["preset"],
                 "params": r["params"], "teacher_success": r["teacher_success"],
                 "student_success": r["student_success"], "distance_to_teacher": r["distance_to_teacher"],
                 "weight": r["weight"], "extra": _loads(r["extra"], {})} for r in rows]

    def evaluations(self, since: int | None = None, last: int | None = None) -> list[dict]:
        """Evaluations by step (step > `since`; only the newest `last` if given)."""
        rows = self._rows("evaluations", "SELECT * FROM (SELECT * FROM evaluations WHERE step > ? "
                          "ORDER BY step DESC, id DESC LIMIT ?) ORDER BY step, id",
                          (-1 if since is None else since, -1 if last is None else last))
        return [{"step": r["step"], "wall_time": r["wall_time"], "version": r["version"], "tasks": r["tasks"],
                 "episodes": r["episodes"], "successes": r["successes"], "success_rate": r["success_rate"],
                 "ci95": [r["ci_lo"], r["ci_hi"]], "per_bin": _loads(r["per_bin"], {}),
                 "success_per_trial": _loads(r["success_per_trial"], []), "videos": _loads(r["videos"], []),
                 "extra": _loads(r["extra"], {})} for r in rows]

    def health(self, since: int | None = None, last: int | None = None) -> list[dict]:
        rows = self._rows("health", "SELECT * FROM (SELECT * FROM health WHERE step > ? "
                          "ORDER BY step DESC, id DESC LIMIT ?) ORDER BY step, id",
                          (-1 if since is None else since, -1 if last is None else last))
        return [{"step": r["step"], "wall_time": r["wall_time"], "actors_alive": r["actors_alive"],
                 "actors_total": r["actors_total"], "actor_restarts": r["actor_restarts"],
                 "last_checkpoint_step": r["last_checkpoint_step"],
                 "last_checkpoint_time": r["last_checkpoint_time"], "actors": _loads(r["actors"], []),
                 "replay": _loads(r["replay"], {}), "extra": _loads(r["extra"], {})} for r in rows]

    def embedding_steps(self) -> list[int]:
        return [r[0] for r in self._rows("embeddings", "SELECT DISTINCT step FROM embeddings ORDER BY step")]

    @_in_snapshot
    def embedding(self, step: int | None = None) -> Optional[dict]:
        """The newest projection (at `step` if given, else overall), with its points."""
        if step is None:
            head = self._rows("embeddings", "SELECT * FROM embeddings ORDER BY step DESC, id DESC LIMIT 1")
        else:
            head = self._rows("embeddings", "SELECT * FROM embeddings WHERE step = ? ORDER BY id DESC LIMIT 1",
                              (step,))
        if not head:
            return None
        points = self._rows("embedding_points", "SELECT x, y, label FROM embedding_points WHERE embedding_id = ? "
                            "ORDER BY rowid", (head[0]["id"],))
        return {"step": head[0]["step"], "wall_time": head[0]["wall_time"], "method": head[0]["method"],
                "explained": _loads(head[0]["explained"], []),
                "points": [{"x": p["x"], "y": p["y"], "label": p["label"]} for p in points]}
