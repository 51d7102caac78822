"""The SQLite metrics store: every table through the real file, resume, read-only readers,
concurrent reads, TensorBoard event files, and the PCA projection."""

import math
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ada_curriculum.metrics_store import (FILENAME, TENSORBOARD_DIR, MetricsConfig, MetricsReader, MetricsWriter,
                                          pca_2d, success_grid)

NO_TB = MetricsConfig(tensorboard=False)


def test_scalars_round_trip(tmp_path):
    with MetricsWriter(tmp_path, NO_TB) as w:
        for step in (10, 20, 30):
            n = w.scalars({"loss": 1.0 / step, "grad_norm/encoder": np.float32(step), "clipped": step == 20,
                           "clip_count": np.int64(step // 20), "nan": float("nan"), "kind": "learner",
                           "list": [1, 2], "none": None}, step, wall_time=1000.0 + step)
            assert n == 5  # strings, lists and None are not scalars
        w.scalar("eval/success_rate", 0.5, 30)
    assert (tmp_path / FILENAME).is_file()

    with MetricsReader(tmp_path) as r:
        assert r.scalar_names() == ["clip_count", "clipped", "eval/success_rate", "grad_norm/encoder", "loss", "nan"]
        data = r.scalars()
        assert data["loss"] == [[10, 1010.0, 0.1], [20, 1020.0, 0.05], [30, 1030.0, 1 / 30]]
        assert [p[2] for p in data["clipped"]] == [0.0, 1.0, 0.0]
        assert [p[2] for p in data["nan"]] == [None, None, None]  # non-finite -> NULL
        assert list(r.scalars(names=["loss"], since=15)) == ["loss"]
        assert [p[0] for p in r.scalars(names=["loss"], since=15)["loss"]] == [20, 30]
        assert sorted(r.scalars(prefixes=["grad_norm/", "clip"])) == ["clip_count", "clipped", "grad_norm/encoder"]
        assert r.scalars(names=["missing"]) == {}
        latest = r.latest_scalars()
        assert latest["loss"]["step"] == 30 and latest["loss"]["value"] == pytest.approx(1 / 30)
        assert set(r.latest_scalars(["eval/"])) == {"eval/success_rate"}
        assert r.last_step() == 30


def test_scalars_are_thinned_to_max_points_keeping_the_last(tmp_path):
    with MetricsWriter(tmp_path, NO_TB) as w:
        for step in range(1000):
            w.scalar("loss", step, step)
    with MetricsReader(tmp_path) as r:
        series = r.scalars(names=["loss"], max_points=50)["loss"]
    assert len(series) == 50 and series[0][0] == 0 and series[-1][0] == 999
    assert [p[0] for p in series] == sorted(p[0] for p in series)


def test_structured_records_round_trip(tmp_path):
    full = {"banana_x": (0.38, 0.62), "banana_y": (-0.28, 0.28)}
    grid = success_grid([{"banana_x": 0.39, "banana_y": 0.27}, {"banana_x": 0.61, "banana_y": -0.27},
                         {"banana_x": 0.61, "banana_y": -0.2}, {"banana_x": 9.0, "banana_y": -9.0}],
                        [True, False, True, True], "banana_x", "banana_y", full["banana_x"], full["banana_y"])
    video = tmp_path / "videos" / "version_0000100" / "episode_000_success.mp4"
    with MetricsWriter(tmp_path, NO_TB) as w:
        w.curriculum(50, {"banana_x": (0.45, 0.55), "banana_y": (-0.2, -0.1)}, full, stage=1, bins={"banana": grid},
                     wall_time=5.0)
        w.curriculum(100, {"banana_x": (0.40, 0.60), "banana_y": (-0.25, 0.0)}, full, stage=2)
        w.distillation(100, generation=1, preset="base", params=6_500_000, teacher_success=0.9,
                       student_success=np.float32(0.5), distance_to_teacher=0.25, weight=0.3, extra={"kl": 0.1})
        w.evaluation(100, {"version": 98, "tasks": "full", "episodes": 4, "successes": 3, "success_rate": 0.75,
                           "ci95": [0.3, 0.95], "mean_steps": 61.5, "unstable": 0,
                           "per_bin": {"x0_y2": {"episodes": 4, "successes": 3, "success_rate": 0.75}},
                           "success_per_trial": [0.5, 0.75], "videos": [str(video), "/elsewhere/clip.mp4"]})
        w.health(100, actors_alive=1, actors_total=2, actor_restarts=3, last_checkpoint_step=100,
                 last_checkpoint_time=12.5, actors=[{"episodes": 7, "dead": True}, {"episodes": 9}],
                 replay={"online": {"size": 10, "max_size": 100}}, extra={"learner_stalls": 0})
        w.embedding(100, pca_2d(np.eye(4), ["left", "left", "right", "right"]))

    with MetricsReader(tmp_path) as r:
        snaps = r.curriculum()
        assert [s["step"] for s in snaps] == [50, 100] and snaps[0]["wall_time"] == 5.0
        assert snaps[0]["bounds"]["banana_x"] == {"lo": 0.45, "hi": 0.55, "full_lo": 0.38, "full_hi": 0.62}
        # Rows are y bins; a task outside the range counts in the edge bin.
        assert snaps[0]["bins"]["banana"]["counts"] == [[0, 0, 3], [0, 0, 0], [1, 0, 0]]
        assert snaps[0]["bins"]["banana"]["successes"] == [[0, 0, 2], [0, 0, 0], [1, 0, 0]]
        assert "bins" not in r.curriculum(since=50, with_bins=False)[0]
        assert r.latest_curriculum()["stage"] == 2

        (d,) = r.distillation()
        assert d["generation"] == 1 and d["preset"] == "base" and d["params"] == 6_500_000
        assert d["student_success"] == pytest.approx(0.5) and d["extra"] == {"kl": 0.1}

        (e,) = r.evaluations()
        assert e["step"] == 100 and e["version"] == 98 and e["success_rate"] == 0.75 and e["ci95"] == [0.3, 0.95]
        assert e["per_bin"]["x0_y2"]["successes"] == 3 and e["success_per_trial"] == [0.5, 0.75]
        # Inside the run dir: relative (the run dir may move); outside: as given.
        assert e["videos"] == ["videos/version_0000100/episode_000_success.mp4", "/elsewhere/clip.mp4"]
        assert e["extra"] == {"mean_steps": 61.5, "unstable": 0}
        assert r.latest_scalars(["eval/"])["eval/success_rate"]["value"] == 0.75

        (h,) = r.health()
        assert (h["actors_alive"], h["actors_total"], h["actor_restarts"]) == (1, 2, 3)
        assert h["last_checkpoint_step"] == 100 and h["actors"][0]["dead"] is True
        assert h["replay"]["online"]["max_size"] == 100 and h["extra"] == {"learner_stalls": 0}

        emb = r.embedding()
        assert emb["step"] == 100 and emb["method"] == "pca" and len(emb["points"]) == 4
        assert [p["label"] for p in emb["points"]] == ["left", "left", "right", "right"]
        assert r.embedding_steps() == [100] and r.embedding(step=7) is None
        assert r.last_step() == 100


def test_curriculum_needs_the_full_range_of_every_dimension(tmp_path):
    with MetricsWriter(tmp_path, NO_TB) as w, pytest.raises(ValueError, match="mass_scale"):
        w.curriculum(1, {"mass_scale": (1.0, 1.2)}, {"banana_x": (0.38, 0.62)})


def test_reopen_appends_and_discard_after_rewinds(tmp_path):
    with MetricsWriter(tmp_path, NO_TB) as w:
        for step in (10, 20, 30):
            w.scalar("loss", step, step)
            w.health(step, 2, 2, 0)
        w.embedding(30, pca_2d(np.random.default_rng(0).normal(size=(5, 3)), list("abcde")))
    with MetricsReader(tmp_path) as r:
        assert not r.is_live()
        created = r.meta()["created_at"]

    # A resume from the checkpoint at update 20: the records past it are dropped, new ones append.
    w = MetricsWriter(tmp_path, NO_TB)
    with MetricsReader(tmp_path) as r:
        assert r.is_live() and r.meta()["created_at"] == created
    w.discard_after(20)
    w.scalar("loss", 25, 25)
    w.flush()
    with MetricsReader(tmp_path) as r:
        assert [p[0] for p in r.scalars()["loss"]] == [10, 20, 25]
        assert [h["step"] for h in r.health()] == [10, 20]
        assert r.embedding() is None and r.embedding_steps() == []
        assert r._db.execute("SELECT COUNT(*) FROM embedding_points").fetchone()[0] == 0
    w.close()
    with MetricsReader(tmp_path) as r:
        assert not r.is_live() and r.last_step() == 25


def test_scalars_commit_in_batches(tmp_path):
    w = MetricsWriter(tmp_path, MetricsConfig(tensorboard=False, commit_interval=3600, max_pending=5))
    w.scalar("loss", 1.0, 1)
    with MetricsReader(tmp_path) as r:
        assert r.scalars() == {}  # not committed yet
    w.scalars({f"m{i}": i for i in range(4)}, 2)  # 5 pending rows: commit
    with MetricsReader(tmp_path) as r:
        assert len(r.scalar_names()) == 5
    w.scalar("loss", 0.5, 3)
    w.flush()
    with MetricsReader(tmp_path) as r:
        assert len(r.scalars()["loss"]) == 2
    w.close()


def test_reader_cannot_write_or_create(tmp_path):
    with pytest.raises(FileNotFoundError):
        MetricsReader(tmp_path)
    assert not (tmp_path / FILENAME).exists()
    MetricsWriter(tmp_path, NO_TB).close()
    with MetricsReader(tmp_path / FILENAME) as r:
        for sql in ("INSERT INTO meta VALUES ('x', 'y')", "DELETE FROM scalars", "CREATE TABLE t (x)"):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                r._db.execute(sql)
        assert r.scalars() == {} and r.evaluations() == [] and r.embedding() is None and r.last_step() is None


def test_an_empty_file_reads_as_empty(tmp_path):
    (tmp_path / FILENAME).touch()  # e.g. a writer that has connected but not yet created the schema
    with MetricsReader(tmp_path) as r:
        assert r.scalar_names() == [] and r.scalars() == {} and r.latest_curriculum() is None
        assert r.health() == [] and r.distillation() == [] and r.meta() == {} and not r.is_live()


def test_reads_while_writing_never_block_or_see_partial_batches(tmp_path):
    writer = MetricsWriter(tmp_path, MetricsConfig(tensorboard=False, commit_interval=0.0))
    done, errors = threading.Event(), []

    def write():
        try:
            for step in range(1, 400):
                # One batch per step: both names or neither must be visible.
                writer.scalars({"a": step, "b": -step}, step)
                writer.health(step, 2, 2, 0)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen = []
    while not done.is_set() or not seen:
        with MetricsReader(tmp_path) as r:
            t0 = time.monotonic()
            data = r.scalars()
            assert time.monotonic() - t0 < 5.0
            a, b = data.get("a", []), data.get("b", [])
            assert len(a) == len(b) and [p[0] for p in a] == [p[0] for p in b]
            seen.append(len(a))
    thread.join()
    writer.close()
    assert not errors, errors
    assert seen == sorted(seen)  # readers only ever see more
    with MetricsReader(tmp_path) as r:
        assert len(r.scalars()["a"]) == 399 and len(r.health()) == 399


def _read_events(path):
    """TFRecord framing: u64 length, u32 crc, payload, u32 crc."""
    from tensorboard.compat.proto import event_pb2

    data, events, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        events.append(event_pb2.Event.FromString(data[pos + 12: pos + 12 + length]))
        pos += 12 + length + 4
    return events


def test_tensorboard_event_files(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.scalars({"loss": 0.5, "kind": "x", "bad": float("inf")}, 10)
        w.scalars({"loss": 0.25}, 20)
    files = list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = _read_events(files[0])
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [(10, "loss", 0.5), (20, "loss", 0.25)]  # non-finite values are skipped

    with MetricsWriter(tmp_path) as w:  # a resumed run adds a second file
        w.scalar("loss", 0.1, 30)
    assert len(list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2


def test_tensorboard_writing_does_not_import_tensorflow(tmp_path):
    code = ("import sys\nfrom ada_curriculum.metrics_store import MetricsWriter\n"
            f"with MetricsWriter({str(tmp_path)!r}) as w:\n    w.scalar('loss', 1.0, 1)\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))


def test_pca_2d_projects_labelled_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32)) * 5
    labels = [f"region {k}" for k in range(3) for _ in range(40)]
    z = np.concatenate([c + 0.3 * rng.normal(size=(40, 32)) for c in centres])
    proj = pca_2d(z, labels)
    assert proj.coords.shape == (120, 2) and proj.labels == labels and proj.method == "pca"
    assert proj.explained[0] >= proj.explained[1] > 0 and sum(proj.explained) > 0.9
    np.testing.assert_allclose(proj.coords.mean(axis=0), 0.0, atol=1e-9)
    # Clusters stay apart in 2-D: every point is nearest its own cluster's centre.
    means = np.stack([proj.coords[k * 40:(k + 1) * 40].mean(axis=0) for k in range(3)])
    nearest = np.linalg.norm(proj.coords[:, None] - means[None], axis=-1).argmin(axis=1)
    assert (nearest == np.repeat(np.arange(3), 40)).all()
    # Signs are fixed: the same data (even shifted) projects the same way.
    np.testing.assert_allclose(pca_2d(z + 3.0, labels).coords, proj.coords, atol=1e-8)


def test_pca_2d_edge_cases():
    assert pca_2d(np.ones((1, 5)), ["a"]).coords.tolist() == [[0.0, 0.0]]
    one_d = pca_2d(np.arange(4.0)[:, None], [1, 2, 3, 4])
    assert one_d.coords.shape == (4, 2) and (one_d.coords[:, 1] == 0).all() and one_d.labels == ["1", "2", "3", "4"]
    assert one_d.explained == [1.0, 0.0]
    with pytest.raises(ValueError, match="labels"):
        pca_2d(np.zeros((3, 2)), ["a"])
    with pytest.raises(ValueError, match="embeddings"):
        pca_2d(np.zeros(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="finite"):
        pca_2d(np.array([[0.0, math.nan], [1.0, 2.0]]), ["a", "b"])
