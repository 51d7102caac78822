import json
import os

import dm_env
import numpy as np
import pytest

from ada_curriculum.episode_store import (
    MANIFEST,
    Episode,
    EpisodeRecorder,
    EpisodeStore,
    EpisodeStoreError,
    EpisodeWriter,
)


def random_episode(rng: np.random.Generator, length: int, seed: int = 0) -> Episode:
    step_types = np.full(length + 1, dm_env.StepType.MID, np.uint8)
    step_types[0], step_types[-1] = dm_env.StepType.FIRST, dm_env.StepType.LAST
    return Episode(
        observations={
            "joints": rng.normal(size=(length + 1, 7)).astype(np.float32),
            "image": rng.integers(0, 255, size=(length + 1, 4, 4, 3), dtype=np.uint8),
            "trial_index": np.zeros(length + 1, np.int32),
        },
        actions=rng.uniform(-1, 1, size=(length, 5)).astype(np.float32),
        rewards=rng.uniform(size=length).astype(np.float32),
        discounts=np.ones(length, np.float32),
        step_types=step_types,
        task={"banana_x": float(rng.uniform()), "n_distractors": np.int64(2), "span": np.array([0.1, 0.2])},
        seed=seed,
        success=bool(seed % 2),
    )


def write_store(root, lengths, env_kwargs=None):
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, t, seed=i) for i, t in enumerate(lengths)]
    with EpisodeWriter(root, "banana-place", env_kwargs or {"tasks": "nominal"}) as writer:
        for ep in episodes:
            writer.add(ep)
    return episodes


def assert_one_line_naming(error: pytest.ExceptionInfo, *names: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message


def test_round_trip(tmp_path):
    episodes = write_store(tmp_path, [5, 1, 12])
    store = EpisodeStore(tmp_path)
    assert len(store) == 3
    assert store.env_name == "banana-place" and store.env_kwargs == {"tasks": "nominal"}
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest == store.manifest
    assert manifest["format"] == "ada-curriculum-episodes" and manifest["version"] == 1
    assert [e["file"] for e in manifest["episodes"]] == [f"episode_{i:06d}.npz" for i in range(3)]

    for original, entry, loaded in zip(episodes, manifest["episodes"], store):
        assert entry["length"] == original.length == loaded.length
        assert entry["return"] == pytest.approx(original.episode_return)
        assert entry["task"] == {"banana_x": original.task["banana_x"], "n_distractors": 2, "span": [0.1, 0.2]}
        assert loaded.observations.keys() == original.observations.keys()
        for key, value in original.observations.items():
            np.testing.assert_array_equal(loaded.observations[key], value)
            assert loaded.observations[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded.actions, original.actions)
        np.testing.assert_array_equal(loaded.rewards, original.rewards)
        np.testing.assert_array_equal(loaded.step_types, original.step_types)
        assert loaded.step_types.dtype == np.uint8
        assert (loaded.seed, loaded.success, loaded.trials) == (original.seed, original.success, 1)
    np.testing.assert_array_equal(store[-1].actions, episodes[-1].actions)
    with pytest.raises(IndexError):
        store[3]


def test_npz_files_need_no_pickle(tmp_path):
    write_store(tmp_path, [3])
    with np.load(tmp_path / "episode_000000.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == [
            "action", "discount", "obs/image", "obs/joints", "obs/trial_index", "reward", "step_type",
        ]


def test_refuses_existing_store_unless_append(tmp_path):
    write_store(tmp_path, [2, 3])
    before = (tmp_path / MANIFEST).read_bytes()
    with pytest.raises(EpisodeStoreError) as error:
        EpisodeWriter(tmp_path, "banana-place", {})
    assert_one_line_naming(error, str(tmp_path / MANIFEST), "already exists")
    assert (tmp_path / MANIFEST).read_bytes() == before

    with pytest.raises(EpisodeStoreError) as error:
        EpisodeWriter(tmp_path, "other-env", append=True)
    assert_one_line_naming(error, "env")

    with EpisodeWriter(tmp_path, "banana-place", append=True) as writer:
        assert writer.add(random_episode(np.random.default_rng(1), 4)) == 2
    store = EpisodeStore(tmp_path)
    assert [store[i].length for i in range(len(store))] == [2, 3, 4]
    assert store.env_kwargs == {"tasks": "nominal"}


def test_manifest_is_rewritten_after_every_add(tmp_path):
    rng = np.random.default_rng(0)
    writer = EpisodeWriter(tmp_path, "banana-place", {})
    assert len(EpisodeStore(tmp_path)) == 0  # an empty store exists from the start
    writer.add(random_episode(rng, 3))
    writer.add(random_episode(rng, 4))
    # No close(): a crash now would keep both episodes.
    assert [e.length for e in EpisodeStore(tmp_path)] == [3, 4]
    assert set(os.listdir(tmp_path)) == {MANIFEST, "episode_000000.npz", "episode_000001.npz"}
    writer.close()


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    writer = EpisodeWriter(tmp_path, "banana-place", {})
    writer.add(random_episode(rng, 3))
    before = (tmp_path / MANIFEST).read_bytes()
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if os.path.basename(dst) == MANIFEST:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="disk gone"):
        writer.add(random_episode(rng, 4))
    monkeypatch.undo()
    # The old manifest is intact, no temp file is left, and the unlisted npz is ignored.
    assert (tmp_path / MANIFEST).read_bytes() == before
    assert set(os.listdir(tmp_path)) == {MANIFEST, "episode_000000.npz", "episode_000001.npz"}
    assert len(EpisodeStore(tmp_path)) == 1
    # The writer still agrees with the disk: the next episode takes the free slot.
    assert writer.add(random_episode(rng, 5)) == 1
    assert [e.length for e in EpisodeStore(tmp_path)] == [3, 5]


@pytest.mark.parametrize(
    "text, names",
    [
        ("{not json", ["garbled"]),
        ("[]", ["garbled"]),
        (json.dumps({"format": "something-else", "version": 1}), ["format"]),
        (json.dumps({"format": "ada-curriculum-episodes", "version": 2}), ["version"]),
    ],
)
def test_bad_manifest(tmp_path, text, names):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(EpisodeStoreError) as error:
        EpisodeStore(tmp_path)
    assert_one_line_naming(error, str(tmp_path / MANIFEST), *names)


def test_missing_manifest(tmp_path):
    with pytest.raises(EpisodeStoreError) as error:
        EpisodeStore(tmp_path)
    assert_one_line_naming(error, str(tmp_path / MANIFEST), "missing")


def test_bad_manifest_entry_names_field(tmp_path):
    write_store(tmp_path, [2])
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["episodes"][0]["length"] = "two"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EpisodeStoreError) as error:
        EpisodeStore(tmp_path)
    assert_one_line_naming(error, "episodes[0].length")

    manifest["episodes"][0]["length"] = 2
    manifest["episodes"][0]["file"] = "../elsewhere.npz"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EpisodeStoreError) as error:
        EpisodeStore(tmp_path)
    assert_one_line_naming(error, "episodes[0].file")


def test_missing_and_truncated_npz(tmp_path):
    write_store(tmp_path, [4, 6])
    store = EpisodeStore(tmp_path)  # the manifest alone is fine; files are read lazily

    path = tmp_path / "episode_000001.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EpisodeStoreError) as error:
        store[1]
    assert_one_line_naming(error, str(path), "truncated")
    store[0]  # the other episode is unaffected

    path.unlink()
    with pytest.raises(EpisodeStoreError) as error:
        store[1]
    assert_one_line_naming(error, str(path), "missing")


def test_length_mismatch_names_file_and_field(tmp_path):
    write_store(tmp_path, [4])
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["episodes"][0]["length"] = 5
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EpisodeStoreError) as error:
        EpisodeStore(tmp_path)[0]
    assert_one_line_naming(error, "episode_000000.npz", "action", "5")


def test_concat_boundaries(tmp_path):
    episodes = write_store(tmp_path, [3, 1, 5])
    arrays, bounds = EpisodeStore(tmp_path).concat(["obs/joints", "next_obs/joints", "action", "reward"])
    np.testing.assert_array_equal(bounds, [0, 3, 4, 9])
    assert arrays["action"].shape == (9, 5) and arrays["obs/joints"].shape == (9, 7)
    for i, ep in enumerate(episodes):
        rows = slice(bounds[i], bounds[i + 1])
        np.testing.assert_array_equal(arrays["action"][rows], ep.actions)
        np.testing.assert_array_equal(arrays["reward"][rows], ep.rewards)
        np.testing.assert_array_equal(arrays["obs/joints"][rows], ep.observations["joints"][:-1])
        np.testing.assert_array_equal(arrays["next_obs/joints"][rows], ep.observations["joints"][1:])

    default, _ = EpisodeStore(tmp_path).concat()
    assert sorted(default) == [
        "action", "discount", "obs/image", "obs/joints", "obs/trial_index", "reward", "step_type",
    ]
    with pytest.raises(ValueError, match="obs/nope"):
        EpisodeStore(tmp_path).concat(["obs/nope"])


def test_writer_rejects_inconsistent_episode(tmp_path):
    ep = random_episode(np.random.default_rng(0), 4)
    ep.rewards = ep.rewards[:-1]
    with EpisodeWriter(tmp_path, "banana-place", {}) as writer:
        with pytest.raises(ValueError, match="reward"):
            writer.add(ep)
    assert len(EpisodeStore(tmp_path)) == 0


def test_recorder_builds_episode_from_timesteps():
    rec = EpisodeRecorder()
    obs = {"pos": np.zeros(3, np.float32), "flag": np.array(0)}
    rec.start(dm_env.restart(obs))
    for t in range(1, 4):
        obs["pos"][:] = t  # envs may reuse buffers: the recorder must copy
        ts = dm_env.transition(reward=float(t), observation=obs) if t < 3 else dm_env.termination(1.0, obs)
        rec.step(np.full(5, t / 10), ts)
    ep = rec.finish(task={"a": 1}, seed=7, success=True)

    assert ep.length == 3
    np.testing.assert_array_equal(ep.observations["pos"][:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(ep.rewards, [1, 2, 1])
    np.testing.assert_array_equal(ep.discounts, [1, 1, 0])
    np.testing.assert_array_equal(ep.step_types, [0, 1, 1, 2])
    assert ep.actions.shape == (3, 5) and ep.actions.dtype == np.float32
    assert (ep.task, ep.seed, ep.success) == ({"a": 1}, 7, True)
    ep.to_arrays()  # consistent by construction

    with pytest.raises(RuntimeError):
        rec.step(np.zeros(5), dm_env.transition(0.0, obs))  # finished: needs start() again
