"""Diffusion policy (after Chi et al., "Diffusion Policy"): a conditional 1D U-Net denoises a
whole action horizon given the last `n_obs_steps` observations; the policy executes
`n_action_steps` of it starting at the current step.

Training is ε-prediction under a squared-cosine DDPM schedule; sampling is DDIM. Reduced-
quality sampling (fewer DDIM steps, hotter noise) is the source of sub-optimal attempts; see
`DiffusionPolicy.degradation_params`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from ada_curriculum.config import ConfigError
from ada_curriculum.policies import normalizer as norm
from ada_curriculum.policies.base import Batch, Policy, Variables
from ada_curriculum.policies.critic import ChunkCritic, critic_loss, critic_score, select_best
from ada_curriculum.policies.diffusion_models import ConditionalUnet1D
from ada_curriculum.policies.noise_schedule import add_noise, chain_log_prob, ddim_chain, ddim_sample, make_schedule
from ada_curriculum.policies.obs import ACTION_DIM, GRIPPER, OBS_DIM, binarize_gripper, check_frame

# Every preset has three levels (two halvings: 16 -> 8 -> 4), so any horizon divisible by 4
# works with all of them.
PRESETS = types.MappingProxyType({
    name: types.MappingProxyType({"down_dims": dims, "kernel_size": 5, "n_groups": 8, "step_embed_dim": embed})
    for name, dims, embed in (("small", (32, 64, 128), 64),
                              ("base", (64, 128, 256), 128),
                              ("large", (128, 256, 512), 256))
})

_EPS = 1e-8
_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def consensus_gripper(chunks: jax.Array, n: int, binary: bool = True) -> jax.Array:
    """Candidates (B * n, k, A), n consecutive per row, with every candidate's gripper command
    replaced by its row's majority at each step (a tie goes to open; `binary` False: the mean).

    Why: in the actors' episodes the gripper command is almost a function of the task phase, so
    a success critic learns it as a sign of the phase (closed while carrying, opening at the plate
    just before success) and, asked to choose, picks the candidates whose gripper departs from
    the phase: early in RL they closed on nothing and let go mid-carry, and acting with the
    critic succeeded 0.03-0.06 against the denoiser's 0.13-0.15. With one gripper sequence
    for all, the choice is among motions only.
    """
    grouped = chunks.reshape(-1, n, *chunks.shape[1:])
    mean = grouped[..., GRIPPER].mean(axis=1, keepdims=True)
    mean = jnp.where(mean > 0, 1.0, -1.0).astype(chunks.dtype) if binary else mean
    grip = jnp.broadcast_to(mean, grouped[..., GRIPPER].shape)
    return grouped.at[..., GRIPPER].set(grip).reshape(chunks.shape)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion policy settings; frozen (hashable) so a policy holding it can be jit-static."""

    preset: Literal["small", "base", "large"] = dataclasses.field(
        default="small", metadata={"help": "U-Net size"})
    down_dims: tuple[int, ...] = dataclasses.field(
        default=(), metadata={"help": "U-Net widths per level, overriding the preset's (empty: preset)"})
    n_obs_steps: int = dataclasses.field(default=2, metadata={"help": "observations conditioned on"})
    horizon: int = dataclasses.field(default=16, metadata={"help": "action steps denoised together"})
    n_action_steps: int = dataclasses.field(default=8, metadata={"help": "action steps executed per prediction"})
    obs_frame: Literal["world", "relative", "world+reward", "relative+reward"] = dataclasses.field(
        default="world", metadata={
            "help": "observation frame: world (positions on the table) or relative (the scene seen from the hand); "
                    "+reward appends what the previous trial earned, for memory across trials (see policies.obs)"})
    num_train_timesteps: int = 100
    num_inference_steps: int = dataclasses.field(default=10, metadata={"help": "DDIM steps at full quality"})
    binary_gripper: bool = dataclasses.field(default=True, metadata={
        "help": "snap the predicted gripper command to open/closed (see policies.obs.binarize_gripper)"})
    # 1 since session 14: the BC beachhead scores 0.237 on the full distribution with it against
    # 0.140 deterministic, and RL arms 0.34-0.35 against 0.20-0.22 (bench/RESULTS.md). Saved
    # configs hold their eta, so runs made with 0 keep it.
    eta: float = dataclasses.field(default=1.0, metadata={
        "help": "DDIM stochasticity: 0 deterministic, 1 DDPM-like (more forgiving of an imperfect model)"})
    min_step_std: float = dataclasses.field(default=0.0, metadata={
        "help": "floor on each DDIM step's noise std in the normalised action space (DPPO's exploration floor, "
                "which also keeps every step's likelihood well conditioned for a policy gradient; 0: none)"})
    degraded_min_steps: int = dataclasses.field(
        default=2, metadata={"help": "DDIM steps at degradation level 1"})
    degraded_max_temperature: float = dataclasses.field(
        default=2.5, metadata={"help": "sampling temperature at degradation level 1"})
    critic_hidden: int = dataclasses.field(default=0, metadata={
        "help": "width of a success critic over (observations, executed chunk), trained by RL on the "
                "actors' episodes (0: no critic; see policies.critic)"})
    critic_layers: int = dataclasses.field(default=3, metadata={"help": "hidden layers of the success critic"})
    critic_ensemble: int = dataclasses.field(default=1, metadata={
        "help": "independently initialised critic networks; their spread measures where the critic is unsure"})
    critic_pessimism: float = dataclasses.field(default=0.0, metadata={
        "help": "acting ranks candidates by the ensemble's mean logit minus this times its spread "
                "(needs critic_ensemble > 1; 0: the mean)"})
    candidate_gripper: Literal["own", "consensus"] = dataclasses.field(default="own", metadata={
        "help": "with several candidates, each keeps its own gripper commands (own), or every candidate gets "
                "the candidates' majority at each step (consensus), so the critic chooses motion only"})
    num_candidates: int = dataclasses.field(default=1, metadata={
        "help": "chunks sampled per replan; the critic's best is executed (value-guided acting, needs "
                "critic_hidden > 0; 1: plain sampling)"})

    def __post_init__(self):
        # A list from JSON would make the config unhashable (and so unusable as a jit static).
        object.__setattr__(self, "down_dims", tuple(self.down_dims))

    def model_kwargs(self) -> dict:
        """Keyword arguments of the U-Net: the preset, with `down_dims` overridden if set."""
        kwargs = dict(PRESETS[self.preset])
        if self.down_dims:
            kwargs["down_dims"] = tuple(self.down_dims)
        return kwargs

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError("preset", f"must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        model = self.model_kwargs()
        dims, groups = model["down_dims"], model["n_groups"]
        if any(d < 1 or d % groups for d in dims):
            raise ConfigError("down_dims", f"every width must be a positive multiple of {groups}, got {dims}")
        if self.n_obs_steps < 1:
            raise ConfigError("n_obs_steps", f"must be >= 1, got {self.n_obs_steps}")
        halvings = len(dims) - 1
        if self.horizon < 1 or self.horizon % 2**halvings:
            raise ConfigError("horizon", f"must be divisible by {2**halvings} (the U-Net halves it "
                                         f"{halvings} times), got {self.horizon}")
        if not 1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1:
            raise ConfigError("n_action_steps", f"must be <= horizon - n_obs_steps + 1 "
                                                f"(= {self.horizon - self.n_obs_steps + 1}) and >= 1, "
                                                f"got {self.n_action_steps}")
        if self.num_train_timesteps < 1:
            raise ConfigError("num_train_timesteps", f"must be >= 1, got {self.num_train_timesteps}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError("num_inference_steps", f"must be in 1..num_train_timesteps "
                                                     f"(= {self.num_train_timesteps}), got {self.num_inference_steps}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError("eta", f"must be in [0, 1], got {self.eta}")
        if not (math.isfinite(self.min_step_std) and 0.0 <= self.min_step_std <= 1.0):
            raise ConfigError("min_step_std", f"must be in [0, 1], got {self.min_step_std!r}")
        if not 1 <= self.degraded_min_steps <= self.num_inference_steps:
            raise ConfigError("degraded_min_steps", f"must be in 1..num_inference_steps "
                                                    f"(= {self.num_inference_steps}), got {self.degraded_min_steps}")
        if not self.degraded_max_temperature >= 1.0:
            raise ConfigError("degraded_max_temperature", f"must be >= 1, got {self.degraded_max_temperature}")
        if self.critic_hidden < 0 or self.critic_layers < 1:
            raise ConfigError("critic_hidden", f"must be >= 0 with critic_layers >= 1, got "
                                               f"{self.critic_hidden}/{self.critic_layers}")
        if self.critic_ensemble < 1:
            raise ConfigError("critic_ensemble", f"must be >= 1, got {self.critic_ensemble}")
        if not (math.isfinite(self.critic_pessimism) and self.critic_pessimism >= 0.0):
            raise ConfigError("critic_pessimism", f"must be a number >= 0, got {self.critic_pessimism!r}")
        if self.critic_pessimism > 0.0 and self.critic_ensemble < 2:
            raise ConfigError("critic_pessimism", "needs an ensemble to measure the critic's spread: set "
                                                  "critic_ensemble >= 2")
        check_frame(self.obs_frame)
        if self.num_candidates < 1:
            raise ConfigError("num_candidates", f"must be >= 1, got {self.num_candidates}")
        if self.candidate_gripper not in ("own", "consensus"):
            raise ConfigError("candidate_gripper", f"must be own or consensus, got {self.candidate_gripper!r}")
        if self.num_candidates > 1 and not self.critic_hidden:
            raise ConfigError("num_candidates", "choosing among candidates needs a critic: set critic_hidden > 0")

    def denoiser_settings(self) -> "DiffusionConfig":
        """This config with only what shapes the denoiser's weights: the critic and the sampling
        settings (DDIM steps, eta, degradation, gripper snapping, candidates) at their defaults.
        Two configs with equal denoiser settings can share a denoiser, e.g. a fine-tuning run
        that samples with another eta than its BC run."""
        return self.without_critic()._with_defaults(
            "num_inference_steps", "eta", "min_step_std", "degraded_min_steps", "degraded_max_temperature",
            "binary_gripper")

    def without_critic(self) -> "DiffusionConfig":
        """The same denoiser with no critic: what a pretrained (BC) run holds."""
        return self._with_defaults("critic_hidden", "critic_layers", "critic_ensemble", "critic_pessimism",
                                   "candidate_gripper", "num_candidates")

    def _with_defaults(self, *names: str) -> "DiffusionConfig":
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: defaults[k] for k in names})


@dataclasses.dataclass(frozen=True)
class DiffusionPolicy(Policy):
    """Frozen and hashable, so it can be closed over or passed as a static jit argument."""

    kind = "diffusion"
    config: DiffusionConfig = DiffusionConfig()
    obs_dim: int = OBS_DIM
    action_dim: int = ACTION_DIM

    def __post_init__(self):
        self.config.validate()
        if self.obs_dim < 1 or self.action_dim < 1:
            raise ValueError(f"obs_dim/action_dim: must be >= 1, got {self.obs_dim}/{self.action_dim}")

    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    @property
    def n_action_steps(self) -> int:
        return self.config.n_action_steps

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @functools.cached_property
    def model(self) -> ConditionalUnet1D:
        return ConditionalUnet1D(**self.config.model_kwargs())

    @property
    def has_critic(self) -> bool:
        return self.config.critic_hidden > 0

    @functools.cached_property
    def critic(self) -> ChunkCritic:
        return ChunkCritic(hidden=self.config.critic_hidden, layers=self.config.critic_layers,
                           ensemble=self.config.critic_ensemble)

    def _denoiser(self, variables: Variables) -> dict:
        """The U-Net's params: all of them, or their "denoiser" part when a critic sits beside."""
        return variables["params"]["denoiser"] if self.has_critic else variables["params"]

    def with_critic(self, variables: Variables, rng: jax.Array) -> Variables:
        """Variables of this (critic-equipped) policy from a critic-less policy's variables (e.g.
        a BC run): the same denoiser, and a freshly initialised critic."""
        if not self.has_critic:
            raise ValueError("critic_hidden: this policy has no critic")
        return {**variables, "params": {"denoiser": variables["params"], "critic": self._init_critic(rng)}}

    def _init_critic(self, rng: jax.Array) -> dict:
        obs = jnp.zeros((1, self.n_obs_steps, self.obs_dim), jnp.float32)
        chunk = jnp.zeros((1, self.n_action_steps, self.action_dim), jnp.float32)
        return self.critic.init(rng, obs, chunk)["params"]

    def executed_chunk(self, action: jax.Array) -> jax.Array:
        """The part of a window's action horizon (B, horizon, A) the actor executes from the
        window's current step: what the critic rates."""
        start = self.n_obs_steps - 1
        return action[:, start:start + self.n_action_steps]

    def schedule(self) -> dict:
        return make_schedule(self.config.num_train_timesteps)

    # -- variables ---------------------------------------------------------------------------

    def init(self, rng: jax.Array, normalizer: dict) -> Variables:
        for key, dim in (("obs", self.obs_dim), ("action", self.action_dim)):
            for side in ("low", "high"):
                if tuple(jnp.shape(normalizer[key][side])) != (dim,):
                    raise ValueError(f"normalizer: {key}.{side} must have shape ({dim},), "
                                     f"got {tuple(jnp.shape(normalizer[key][side]))}")
        params = self._init_params(rng)
        if self.has_critic:
            params = {"denoiser": params, "critic": self._init_critic(jax.random.fold_in(rng, 1))}
        return {"params": params, "normalizer": normalizer}

    def _init_params(self, rng: jax.Array) -> dict:
        """Flax's default initialisation (lecun-normal kernels, zero biases, unit norm scales),
        drawn from one random stream.

        `model.init` draws each parameter separately and XLA compiles an RNG kernel per
        parameter shape, which costs 10-20 s on a CPU; one draw sliced up costs ~1 s.
        """
        example = (jnp.zeros((1, self.horizon, self.action_dim), jnp.float32), jnp.zeros((1,), jnp.int32),
                   jnp.zeros((1, self.n_obs_steps * self.obs_dim), jnp.float32))
        abstract = jax.eval_shape(self.model.init, rng, *example)["params"]
        leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
        names = [path[-1].key for path, _ in leaves]
        unknown = sorted({n for n in names if n not in ("kernel", "bias", "scale")})
        if unknown:  # a module gained a parameter whose initialiser this does not know
            raise NotImplementedError(f"no initialiser for parameter(s) named {unknown}")
        sizes = [math.prod(leaf.shape) for (_, leaf), n in zip(leaves, names) if n == "kernel"]
        # Truncated at 2 std and rescaled to unit variance, as flax's truncated_normal does.
        flat = jax.random.truncated_normal(rng, -2.0, 2.0, (sum(sizes),), jnp.float32) / _TRUNCATED_STD
        kernels = iter(jnp.split(flat, np.cumsum(sizes)[:-1]))
        params = []
        for (_, leaf), name in zip(leaves, names):
            if name == "kernel":  # fan_in = every axis but the output one (conv taps x channels)
                params.append(next(kernels).reshape(leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1])))
            else:
                params.append((jnp.ones if name == "scale" else jnp.zeros)(leaf.shape, leaf.dtype))
        return jax.tree_util.tree_unflatten(treedef, params)

    def _global_cond(self, variables: Variables, obs: jax.Array) -> jax.Array:
        expected = (self.n_obs_steps, self.obs_dim)
        if obs.ndim != 3 or obs.shape[1:] != expected:
            raise ValueError(f"obs: expected shape (B, {expected[0]}, {expected[1]}), got {obs.shape}")
        obs = norm.normalize(variables["normalizer"]["obs"], obs.astype(jnp.float32))
        return obs.reshape(obs.shape[0], -1)

    def noise_prediction(self, variables: Variables, noisy_action: jax.Array, t: jax.Array,
                         obs: jax.Array) -> jax.Array:
        """Predicted ε for normalised noisy actions (B, horizon, A) at timesteps t (B,) or
        scalar, given raw observations (B, n_obs_steps, obs_dim)."""
        cond = self._global_cond(variables, obs)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (noisy_action.shape[0],))
        return self.model.apply({"params": self._denoiser(variables)}, noisy_action, t, cond)

    def embed(self, variables: Variables, obs: jax.Array, t: int = 0) -> jax.Array:
        """The policy's learned features of raw observation histories (B, n_obs_steps, obs_dim):
        every residual block's FiLM scale and shift at diffusion step `t`, concatenated (B, F).

        The observations reach the U-Net only through these, so they are what the policy makes
        of a situation (the normalised observations themselves are not learned). The noisy
        action input does not affect them; zeros stand in for it.
        """
        cond = self._global_cond(variables, obs)
        b = cond.shape[0]
        sample = jnp.zeros((b, self.horizon, self.action_dim), jnp.float32)
        _, state = self.model.apply({"params": self._denoiser(variables)}, sample, jnp.full((b,), t, jnp.int32), cond,
                                    mutable=["intermediates"])
        return jnp.concatenate([f.reshape(b, -1) for f in jax.tree_util.tree_leaves(state["intermediates"])],
                               axis=-1)

    # -- training ----------------------------------------------------------------------------

    def loss(self, variables: Variables, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
        action = jnp.asarray(batch["action"], jnp.float32)
        if action.ndim != 3 or action.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"action: expected shape (B, {self.horizon}, {self.action_dim}), got {action.shape}")
        cond = self._global_cond(variables, jnp.asarray(batch["obs"]))
        x0 = norm.normalize(variables["normalizer"]["action"], action)
        b = x0.shape[0]

        t_key, noise_key = jax.random.split(rng)
        t = jax.random.randint(t_key, (b,), 0, self.config.num_train_timesteps)
        noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
        noisy = add_noise(self.schedule(), x0, noise, t)
        pred = self.model.apply({"params": self._denoiser(variables)}, noisy, t, cond)

        per_example = jnp.mean(jnp.square(pred - noise), axis=(1, 2))
        weight = batch.get("weight")
        weight = jnp.ones((b,), jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32)
        if weight.shape != (b,):  # a (B, 1) weight would silently broadcast to (B, B)
            raise ValueError(f"weight: expected shape ({b},), got {weight.shape}")
        loss = jnp.sum(weight * per_example) / jnp.maximum(jnp.sum(weight), _EPS)
        # "mse" is unweighted, so it stays comparable across weighting schemes.
        metrics = {"mse": jnp.mean(per_example)}
        if self.has_critic and "critic_label" in batch:
            # The critic's gradient reaches only its own params, the denoiser's only the U-Net.
            mask = batch.get("critic_mask")
            bce, critic_metrics = critic_loss(
                self.critic, variables["params"]["critic"], variables["normalizer"], batch["obs"],
                self.executed_chunk(action), batch["critic_label"], jnp.ones((b,)) if mask is None else mask)
            loss, metrics = loss + bce, {**metrics, **critic_metrics}
        return loss, {"loss": loss, **metrics}

    # -- sampling ----------------------------------------------------------------------------

    def sample_horizon(self, variables: Variables, batch: Batch, rng: jax.Array,
                       num_inference_steps: int | None = None, temperature: float | jax.Array = 1.0,
                       eta: float | jax.Array | None = None) -> jax.Array:
        """Raw actions for the whole horizon (B, horizon, A).

        `num_inference_steps` (Python int, default config) is static under jit; `temperature`
        and `eta` (default config) may be traced.
        """
        steps = self._steps(num_inference_steps)
        denoise, b = self._denoise_fn(variables, batch["obs"])
        x0 = ddim_sample(denoise, self.schedule(), (b, self.horizon, self.action_dim), rng,
                         steps, temperature=temperature, eta=self.config.eta if eta is None else eta,
                         min_std=self.config.min_step_std)
        return norm.unnormalize(variables["normalizer"]["action"], x0)

    def _denoise_fn(self, variables: Variables, obs):
        """(ε-prediction `denoise(x_t, t)` conditioned on raw observation histories, batch size)."""
        cond = self._global_cond(variables, jnp.asarray(obs))
        params = self._denoiser(variables)
        return (lambda x, t: self.model.apply({"params": params}, x, t, cond)), cond.shape[0]

    def _steps(self, num_inference_steps: int | None) -> int:
        steps = self.config.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps: must be in 1..{self.config.num_train_timesteps}, got {steps}")
        return steps

    def sample_chain(self, variables: Variables, batch: Batch, rng: jax.Array,
                     num_inference_steps: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One chunk per row as `predict_action` plans it with one candidate, with the denoising
        chain behind it: (chunk (B, n_action_steps, A) raw, chain (B, S + 1, horizon, A) in the
        normalised action space, per-step log-likelihoods (B, S)). Acting for a policy gradient
        through the denoising steps (DPPO): the chain is the action whose likelihood is trained."""
        steps = self._steps(num_inference_steps)
        denoise, b = self._denoise_fn(variables, batch["obs"])
        x0, chain, logp = ddim_chain(denoise, self.schedule(), (b, self.horizon, self.action_dim), rng,
                                     steps, eta=self.config.eta, min_std=self.config.min_step_std)
        chunk = self.executed_chunk(norm.unnormalize(variables["normalizer"]["action"], x0))
        return (binarize_gripper(chunk) if self.config.binary_gripper else chunk), chain, logp

    def chain_log_prob(self, variables: Variables, obs: jax.Array, chain: jax.Array,
                       first_step: int = 0) -> jax.Array:
        """Per-step log-likelihoods (B, S - first_step) of stored chains (B, S + 1, horizon, A)
        given raw observation histories, under these variables (S: the chain's DDIM steps)."""
        denoise, _ = self._denoise_fn(variables, obs)
        return chain_log_prob(denoise, self.schedule(), chain, chain.shape[1] - 1, eta=self.config.eta,
                              min_std=self.config.min_step_std, first_step=first_step)

    def predict_action(self, variables: Variables, batch: Batch, rng: jax.Array,
                       num_inference_steps: int | None = None, temperature: float | jax.Array = 1.0,
                       eta: float | jax.Array | None = None, num_candidates: int | None = None) -> jax.Array:
        """Raw actions to execute (B, n_action_steps, A), the first one at obs[:, -1].

        With `num_candidates` N > 1 (static; default the config's) each row samples N chunks and
        returns the one the critic rates most likely to succeed.
        """
        n = self.config.num_candidates if num_candidates is None else int(num_candidates)
        if n > 1 and not self.has_critic:
            raise ValueError("num_candidates: choosing among candidates needs a critic (critic_hidden > 0)")
        obs = jnp.asarray(batch["obs"])
        if n > 1:
            obs = jnp.repeat(obs, n, axis=0)  # row b's candidates are rows b*n .. b*n+n-1
        actions = self.sample_horizon(variables, {"obs": obs}, rng, num_inference_steps, temperature, eta)
        chunk = self.executed_chunk(actions)
        chunk = binarize_gripper(chunk) if self.config.binary_gripper else chunk
        if n == 1:
            return chunk
        if self.config.candidate_gripper == "consensus":
            chunk = consensus_gripper(chunk, n, self.config.binary_gripper)
        scores = critic_score(self.critic, variables["params"]["critic"], variables["normalizer"], obs, chunk,
                              self.config.critic_pessimism)
        return select_best(chunk, scores, obs.shape[0] // n)

    def degradation_params(self, level: float) -> tuple[int, float]:
        """(DDIM steps, temperature) for a degradation level in [0, 1].

        Level 0 is full quality; level 1 uses `degraded_min_steps` and `degraded_max_temperature`.
        Steps fall geometrically (each equal increase in level multiplies the stride by the same
        factor) and temperature rises linearly, so both are monotone in the level.
        """
        level = float(level)
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"level: must be in [0, 1], got {level}")
        c = self.config
        log_steps = (1.0 - level) * math.log(c.num_inference_steps) + level * math.log(c.degraded_min_steps)
        steps = min(max(math.floor(math.exp(log_steps) + 0.5), c.degraded_min_steps), c.num_inference_steps)
        temperature = 1.0 + level * (c.degraded_max_temperature - 1.0)
        return steps, temperature

    def predict_degraded(self, variables: Variables, batch: Batch, rng: jax.Array, level: float) -> jax.Array:
        """`predict_action` at a reduced quality; `level` is a Python float (static under jit)."""
        steps, temperature = self.degradation_params(level)
        return self.predict_action(variables, batch, rng, num_inference_steps=steps, temperature=temperature)
