"""Periodic evaluation on held-out tasks with the weights the learner has published."""

from __future__ import annotations

from pathlib import Path

from ada_curriculum import evaluate
from ada_curriculum.agent import remote

# Held-out episodes use seeds far from the actors' (actors seed envs from the run seed * 100 + i).
HELD_OUT_SEED = 1_000_003


class Evaluator:
    def __init__(self, policy, variable_source, env_name: str = "banana-place", tasks: str = "nominal",
                 episodes: int = 20, num_envs: int = 4, env_kwargs: dict | None = None, video_dir: str | None = None,
                 videos: int = 0):
        self.policy, self.variable_source = policy, variable_source
        self.env_name, self.env_kwargs = env_name, dict(env_kwargs or {})
        self.plan = evaluate.episode_plan(tasks, episodes, seed=HELD_OUT_SEED)
        self.tasks, self.num_envs = tasks, num_envs
        self.video_dir, self.videos = video_dir, videos

    def run(self, name: str = "acting") -> dict:
        """Evaluate the newest weights published under `name` ("acting", or "student" during
        distillation) with the policy they belong to; the summary is tagged with their version
        and generation."""
        got = remote.call(self.variable_source, "get_with_policy", -1, name)
        if got is None:
            return {"version": -1, "episodes": 0, "name": name}
        version, variables, policy, generation = got
        policy = policy or self.policy
        # The same held-out episodes for every model, so teacher and student compare directly.
        video_dir = None
        if self.video_dir and self.videos:
            video_dir = Path(self.video_dir) / (f"version_{version:07d}" if name == "acting" else
                                                f"version_{version:07d}_{name}")
        results = evaluate.rollout(policy, variables, self.plan, env_name=self.env_name,
                                   num_envs=self.num_envs, seed=HELD_OUT_SEED, env_kwargs=self.env_kwargs,
                                   video_episodes=self.videos if video_dir else 0, video_dir=video_dir)
        return {"version": version, "generation": generation, "name": name, "tasks": self.tasks,
                **evaluate.summarize(results),
                "videos": sorted(str(p) for p in video_dir.glob("*")) if video_dir else []}

    def run_each(self, names) -> dict:
        """{name: `run(name)`}: one call evaluates teacher and student while both matter."""
        return {name: self.run(name) for name in names}
