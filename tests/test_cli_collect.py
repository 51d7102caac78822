import json
import subprocess
import sys

import numpy as np
import pytest

from ada_curriculum.cli import main
from ada_curriculum.episode_store import MANIFEST, EpisodeStore


def test_collect_writes_store_and_summary(tmp_path):
    out = tmp_path / "demos"
    assert main(["collect", "--tasks", "nominal", "--episodes", "2", "--out", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2
    assert 0 <= summary["successes"] <= 2
    assert summary["success_rate"] == summary["successes"] / 2
    assert summary["steps"] > 0 and summary["mean_steps"] == summary["steps"] / 2
    assert summary["seconds"] > 0 and summary["env_steps_per_s"] > 0

    config = json.loads((out / "config.json").read_text())
    assert config["tasks"] == "nominal" and config["episodes"] == 2 and config["env"] == "banana-place"

    store = EpisodeStore(out)
    assert len(store) == 2 and store.env_name == "banana-place"
    assert store.env_kwargs["tasks"] == "nominal"
    entries = store.manifest["episodes"]
    assert sum(e["length"] for e in entries) == summary["steps"]
    assert sum(e["success"] for e in entries) == summary["successes"]
    for entry, episode in zip(entries, store):
        assert episode.length == entry["length"] > 0
        assert episode.actions.shape[1] > 0
        assert episode.step_types[0] == 0 and episode.step_types[-1] == 2  # FIRST ... LAST
        assert all(len(v) == episode.length + 1 for v in episode.observations.values())
        assert entry["task"] and isinstance(entry["seed"], int)


def test_collect_is_reproducible(tmp_path):
    for name in ("a", "b"):
        assert main(["collect", "--episodes", "1", "--seed", "3", "--out", str(tmp_path / name)]) == 0
    a, b = EpisodeStore(tmp_path / "a")[0], EpisodeStore(tmp_path / "b")[0]
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.task == b.task and a.seed == b.seed


def test_existing_store_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "demos"
    out.mkdir()
    (out / MANIFEST).write_text('{"format": "ada-curriculum-episodes"}')
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    assert main(["collect", "--tasks", "nominal", "--episodes", "2", "--out", str(out)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(out) in err and "episode store" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_bad_episodes_value(tmp_path, capsys):
    out = tmp_path / "demos"
    assert main(["collect", "--episodes", "abc", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "error: episodes: expected a positive int, got 'abc'\n"
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, field",
    [
        (["collect", "--out", "x", "--tasks", "hard"], "tasks"),
        (["collect", "--out", "x", "--time-limit", "0"], "time_limit"),
        (["collect"], "out"),
        (["collect", "--out", "x", "--nope"], "--nope"),
    ],
)
def test_bad_input_is_one_line(argv, field, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and field in err


def test_unknown_env_is_one_line(tmp_path, capsys):
    out = tmp_path / "demos"
    assert main(["collect", "--env", "no-such-env", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-env" in err
    assert not out.exists()


def test_console_entry_point_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ada_curriculum.cli", "collect", "--episodes", "-3", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: episodes: expected a positive int, got '-3'"]
