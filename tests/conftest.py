import contextlib
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


def train_cli_error(tmp_path, capsys, argv) -> str:
    """`ada-curriculum train` with bad options: exits 2 with one line on stderr and creates no
    run directory; returns that line."""
    from ada_curriculum.cli import main

    assert main(["train", "--run", str(tmp_path / "run"), "--demos", str(tmp_path / "none"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()
    return err


@contextlib.contextmanager
def jax_compile_cache(path: str):
    """A persistent XLA cache at `path` while inside (in process and for subprocesses): every
    short run jits the same tiny policy, and compiling it again is most of such a run's time."""
    import jax

    env = {"JAX_COMPILATION_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                 "jax_persistent_cache_min_compile_time_secs")}
    os.environ.update(env)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        yield path
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def compile_cache_dir(request, tmp_path_factory) -> str:
    """Where `jax_compile_cache` keeps compiled tiny runs: pytest's cache dir (kept across
    sessions; `make clean` removes it)."""
    cache = getattr(request.config, "cache", None)  # None under `-p no:cacheprovider`
    return str(cache.mkdir("jax-compile-cache") if cache else tmp_path_factory.mktemp("jax-cache"))


@pytest.fixture(scope="session", autouse=True)
def compile_cache(compile_cache_dir):
    """One persistent XLA cache for the whole session: in process, in CLI subprocesses and in
    the Ray workers a test starts (they inherit the environment). Most tests jit the same tiny
    policies, and compiling them again is most of a short run's time."""
    with jax_compile_cache(compile_cache_dir) as path:
        yield path


# real_run's distillation: generation 0 (U-Net 16x32) for 4 updates, then a 32x64 student
# kickstarted at weight 1 for 4 updates and annealed to 0 over 4 more; both fail every held-out
# episode, so the first evaluation after the switch (teacher and student) hands acting over.
REAL_RUN_DISTILL = {"enabled": True, "generations": ["small", "base"], "down_dims": ["16x32", "32x64"],
                    "switch_every_updates": 4, "weight": 1.0, "constant_updates": 4, "anneal_updates": 4}


@pytest.fixture
def make_actor():
    """make_actor(policy, variables, version=1, **actor_kwargs) -> (actor, replay client, variable
    source): one actor (one env unless told) on the nominal task, writing to a real Reverb server,
    with `variables` published as `version`; everything is closed after the test."""
    closers = []

    def make(policy, variables, version=1, **kwargs):
        from ada_curriculum import replay as replay_lib
        from ada_curriculum.agent.actor import Actor
        from ada_curriculum.agent.task_source import TaskSource
        from ada_curriculum.agent.variable_source import VariableSource
        from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM

        server = replay_lib.ReplayServer(replay_lib.ReplayConfig(min_size_to_sample=1), obs_dim=OBS_DIM,
                                         action_dim=ACTION_DIM, task_dim=9, window=policy.config.horizon)
        closers.append(server.stop)
        source = VariableSource()
        source.publish(variables, version)
        client = replay_lib.ReplayClient(server.address, window=policy.config.horizon,
                                         n_obs_steps=policy.n_obs_steps)
        closers.append(client.close)
        kwargs.setdefault("num_envs", 1)
        actor = Actor(0, policy, client, source, TaskSource("nominal", seed=0), **kwargs)
        closers.append(actor.close)
        return actor, client, source

    yield make
    for close in reversed(closers):
        close()


@pytest.fixture(scope="session")
def real_run(demos, tmp_path_factory, compile_cache_dir):
    """A short real in-process `train` run (widening curriculum, held-out evaluation with a video,
    policy embeddings, a distillation switch and handover, its own dashboard) whose metrics store
    the store and browser tests read.
    Read only: copy the directory to change it. Returns {"run", "summary", "served"}, where
    `served` is what train's own dashboard answered on /api/health during the run."""
    import json
    import urllib.request

    from test_train import tiny

    from ada_curriculum.train import train

    run = tmp_path_factory.mktemp("real") / "run"
    served = {}

    def on_start(r):
        with urllib.request.urlopen(r.dashboard.url + "api/health", timeout=10) as response:
            served.update(url=r.dashboard.url, status=response.status, body=json.loads(response.read()))

    # Threshold 0 makes widening a schedule (a tiny fresh policy never succeeds), so the
    # curriculum moves within a few episodes; 16 steps per actor call finish episodes of 15
    # steps in the first call, so the learner never waits for data.
    curriculum = {"strategy": "widening", "widening": {"dims": ["banana_x", "banana_y"], "window": 2,
                                                       "threshold": 0.0, "boundary_prob": 1.0}}
    with jax_compile_cache(compile_cache_dir):
        summary = train(tiny(run, demos, distributed=False, tasks="full", curriculum=curriculum,
                             actor_steps_per_call=16, max_updates=12, checkpoint_every=8, eval_every=8,
                             eval_episodes=2, eval_videos=1, embedding_every=8, dashboard=True, dashboard_port=0,
                             metrics={"snapshot_interval": 0.0}, distill=REAL_RUN_DISTILL), on_start=on_start)
    return {"run": run, "summary": summary, "served": served}
