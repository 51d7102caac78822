"""The actor: a batch of envs stepped by the latest policy weights it has.

It asks the task source for tasks, writes every finished episode to the online replay table
(tagged with task, success, trial and the policy version that acted), reports results back in
batches, and pulls newer weights from the variable source without blocking.

Multi-trial episodes (`banana-place-multi`, `train --trials k`): each trial's success is read
from the step that ends it (`info["trial_ended"]`, or the last step) and goes into the result
(`trial_successes`) and the replay write. A transformer's episode is written whole, as sequence
windows whose per-action weight is its trial's success (failed trials stay as context); for a
diffusion policy, which has no memory across trials, each trial is written as an episode of its
own, weighted by its success.

With `chains=True` (the DPPO learner, replay's chain layout) the actor writes decisions instead
of windows: every planned chunk's observation history, denoising chain and likelihoods, with the
episode's advantage, success minus the actor's baseline for the task (agent/baseline.py).
"""

from __future__ import annotations

import time

import numpy as np

import envs
from ada_curriculum.agent import remote
from ada_curriculum.agent.baseline import SuccessBaseline
from ada_curriculum.policies.runner import PolicyRunner


def trial_action_weights(trial, trial_success) -> np.ndarray:
    """Each action's loss weight: 1.0 if the trial it belongs to (`trial` per action) succeeded,
    else 0.0. A trial with no reported outcome (not finished) counts as failed."""
    trial = np.asarray(trial, np.int64)
    ok = np.zeros(int(trial.max()) + 1 if len(trial) else 0, np.float32)
    ok[: len(trial_success)] = np.asarray(trial_success, np.float32)[: len(ok)]
    return ok[trial]


def trial_spans(trial) -> list[tuple[int, int, int]]:
    """(trial index, first action, end) of each trial's run of actions, in order."""
    trial = np.asarray(trial)
    cuts = [0, *(np.flatnonzero(np.diff(trial)) + 1).tolist(), len(trial)]
    return [(int(trial[a]), a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


class Actor:
    def __init__(self, actor_id: int, policy, replay, variable_source, task_source, env_name: str = "banana-place",
                 num_envs: int = 2, seed: int = 0, variable_update_period: int = 20, env_kwargs: dict | None = None,
                 sampling: dict | None = None, align_chunks: bool = True, weighting: str = "success",
                 critic_warmup: int = 0, chains: bool = False):
        self.actor_id = actor_id
        self.policy, self.replay = policy, replay
        self.variable_source, self.task_source = variable_source, task_source
        self.variable_update_period = variable_update_period
        self.align_chunks = align_chunks
        if weighting not in ("success", "advantage"):
            raise ValueError(f"weighting: expected 'success' or 'advantage', got {weighting!r}")
        # "advantage": an online episode's weight is max(success - baseline(task), 0).
        self.chains = chains
        self._baseline = SuccessBaseline() if weighting == "advantage" or chains else None
        self.envs = [envs.make(env_name, tasks="full", seed=seed * 1000 + j, **(env_kwargs or {}))
                     for j in range(num_envs)]
        self.version, variables, published_policy, self.generation = self._wait_for_variables()
        # The published policy, when given: a distillation run may be past its first generation.
        self.policy = published_policy or policy
        self._sampling = dict(sampling or {})
        # Until the weights come from `critic_warmup` updates, act on plain samples (one candidate).
        self.critic_warmup = critic_warmup
        self._runner_args = dict(num_envs=num_envs, seed=seed, chains=chains)
        self.runner = PolicyRunner(self.policy, variables, **self._runner_args, **self._acting_sampling())
        self._poll = remote.Poll(variable_source, "get_with_policy", self.version)
        self._timesteps = [None] * num_envs
        self._episodes = [None] * num_envs
        self.env_steps = 0
        self.episodes = 0
        self.successes = 0
        self.unstable = 0
        for j in range(num_envs):
            self._start(j)

    def _wait_for_variables(self, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = remote.call(self.variable_source, "get_with_policy", -1)
            if got is not None:
                return got
            time.sleep(0.05)
        raise TimeoutError("actor: no policy variables published within the timeout")

    def _start(self, j: int):
        (task, seed), = remote.call(self.task_source, "sample", 1)
        ts = self.envs[j].reset(task=envs.TaskParams.from_dict(task), seed=seed)
        self._timesteps[j] = ts
        # obs/trial rows are added as each action is taken (row t is what action t saw).
        self._episodes[j] = {"obs": [], "action": [], "trial": [], "trial_success": [], "version": self.version,
                             "decisions": []}
        self.runner.reset(j)

    def _maybe_update_variables(self):
        if self._poll.ready():
            got = self._poll.result()
            if got is not None:
                self.version, variables, policy, self.generation = got
                if policy is not None and policy != self.policy:
                    # Another model (distillation handover): a new runner; episodes in flight
                    # go on with it from their current observation.
                    self.policy = policy
                    self.runner = PolicyRunner(policy, variables, **self._runner_args, **self._acting_sampling())
                else:
                    self.runner.set_variables(variables)
                    if self.runner.sampling != self._acting_sampling():  # the critic's warm-up is over
                        self.runner.set_sampling(**self._acting_sampling())
            self._poll = remote.Poll(self.variable_source, "get_with_policy", self.version)

    def _acting_sampling(self) -> dict:
        if self.version < self.critic_warmup:
            return {**self._sampling, "num_candidates": 1}
        return dict(self._sampling)

    def run(self, num_steps: int) -> dict:
        """`num_steps * num_envs` env steps in all; returns counters and the finished episodes' results.

        With `align_chunks` every env replans at the same step (`PolicyRunner.act_aligned`): an env
        that starts an episode or trial mid-chunk waits, unstepped, for the others' chunks to run
        out, so one policy call serves the whole batch. Without it, an env replans whenever its own
        chunk runs out, and desynchronised envs cost a full-batch call each.
        """
        results = []
        steps_before = self.env_steps
        budget = num_steps * len(self.envs)
        i = 0
        while self.env_steps - steps_before < budget:
            if i % self.variable_update_period == 0:
                self._maybe_update_variables()
            i += 1
            observations = [ts.observation for ts in self._timesteps]
            if self.align_chunks:
                actions, stepped = self.runner.act_aligned(
                    observations, max_steps=budget - (self.env_steps - steps_before))
            else:
                actions, stepped = self.runner.act(observations), [True] * len(self.envs)
            for j, env in enumerate(self.envs):
                if not stepped[j]:
                    continue  # held until the common replan
                ep = self._episodes[j]
                obs, trial = self.runner.observed(j)  # flattened once, by the runner
                ep["obs"].append(obs)
                ep["trial"].append(trial)
                ep["action"].append(actions[j])
                if self.chains:
                    decision = self.runner.take_decision(j)
                    if decision is not None:
                        ep["decisions"].append(decision)
                ts = env.step(actions[j])
                self._timesteps[j] = ts
                self.env_steps += 1
                if ts.info.get("trial_ended") or ts.last():
                    ep["trial_success"].append(bool(ts.info["success"]))
                if ts.last():
                    results.append(self._finish(j, ts))
                    self._start(j)
        if results:
            remote.call(self.task_source, "report", results)
        # Per-call counts: a restarted actor starts from zero, so the coordinator sums deltas.
        return {"actor": self.actor_id, "env_steps": self.env_steps - steps_before, "episodes": len(results),
                "successes": sum(r["success"] for r in results), "version": self.version,
                "generation": self.generation, "results": results}

    def _finish(self, j: int, ts) -> dict:
        env, ep = self.envs[j], self._episodes[j]
        success = bool(ts.info["success"])
        task = env.task
        n = len(ep["action"])
        obs, action = np.stack(ep["obs"]), np.stack(ep["action"])
        trial, trial_success = np.asarray(ep["trial"], np.int32), list(ep["trial_success"])
        vector = task.vector().astype(np.float32)
        if self.chains:
            if ep["decisions"]:
                d = ep["decisions"]
                remote.call(self.replay, "add_decisions", "online", np.stack([x["obs"] for x in d]),
                            np.stack([x["chain"] for x in d]), np.stack([x["logp"] for x in d]),
                            self._baseline.advantage(task, success), success=success, version=ep["version"],
                            task=vector)
        elif self.policy.kind == "transformer":
            # The whole episode, failed trials as context: each action weighs its trial's success.
            remote.call(self.replay, "add_episode", "online", obs, action, weight=1.0, success=success,
                        version=ep["version"], task=vector, trial_index=trial,
                        action_weight=trial_action_weights(trial, trial_success))
        elif len(trial_success) <= 1:
            remote.call(self.replay, "add_episode", "online", obs, action, weight=self._weight(task, success),
                        success=success, version=ep["version"], task=vector, trial_index=trial)
        else:
            # No memory across trials: each trial is an episode of its own for the diffusion windows.
            for i, a, b in trial_spans(trial):
                ok = i < len(trial_success) and trial_success[i]
                remote.call(self.replay, "add_episode", "online", obs[a:b], action[a:b],
                            weight=self._weight(task, ok), success=ok, version=ep["version"], task=vector,
                            trial_index=trial[a:b])
        self.episodes += 1
        self.successes += int(success)
        self.unstable += int(ts.info["physics_unstable"])
        return {"task": task.to_dict(), "success": success, "steps": n, "version": ep["version"],
                "actor": self.actor_id, "unstable": bool(ts.info["physics_unstable"]),
                "trial_successes": trial_success}

    def _weight(self, task, success: bool) -> float:
        """An online episode's (or trial's) training weight."""
        return float(success) if self._baseline is None else self._baseline.weight(task, success)

    def close(self):
        for env in self.envs:
            env.close()
