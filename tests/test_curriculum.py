"""The curriculum scheduler: pure numpy, no Ray, no MuJoCo stepping.

Outcomes come from simple rules on the task (e.g. "succeeds when mass_scale <= 1.2") so each
test knows what the curriculum should do with them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading

import numpy as np
import pytest

import envs
from ada_curriculum import curriculum as cur
from ada_curriculum.agent.task_source import TaskSource
from ada_curriculum.config import from_dict
from ada_curriculum.curriculum import band, plr
from ada_curriculum.curriculum.bins import BinGrid
from ada_curriculum.curriculum.config import (
    BandConfig, BinConfig, CurriculumConfig, PLRConfig, WideningConfig,
)
from envs.task_space import FIELD_NAMES, FULL, NOMINAL, nominal_space

STRATEGIES = ("none", "widening", "band", "plr")


def results(tasks, success=True, version=0):
    """Results as actors send them; `success` is a bool or a rule on the task."""
    return [{"task": t.to_dict(), "success": bool(success(t) if callable(success) else success), "steps": 10,
             "version": version} for t in tasks]


def run(state, rounds, success, batch=32):
    for _ in range(rounds):
        state, tasks = cur.sample(state, batch)
        state = cur.update(state, results(tasks, success))
    return state


def grid_of(state) -> BinGrid:
    cfg = from_dict(CurriculumConfig, state["config"])
    return BinGrid.make(cur.sampling_space(state) if cfg.strategy != "widening" else FULL, cfg.bins.dims,
                        cfg.bins.per_dim)


def contains(outer: envs.TaskSpace, inner: envs.TaskSpace) -> bool:
    return bool(np.all(outer.low <= inner.low) and np.all(outer.high >= inner.high))


# -- PLR: the published formula ----------------------------------------------------------------

def plr_by_the_paper(scores, seen, last, clock, beta, rho):
    """P = (1 - rho) P_S + rho P_C over seen levels, written out term by term."""
    idx = [i for i in range(len(scores)) if seen[i]]
    rank = {}
    for i in idx:  # rank 1 = highest score; equal scores ranked by index
        higher = sum(1 for j in idx if scores[j] > scores[i])
        tied_before = sum(1 for j in idx if j < i and scores[j] == scores[i])
        rank[i] = 1 + higher + tied_before
    h = {i: (1.0 / rank[i]) ** (1.0 / beta) for i in idx}
    stale = {i: clock - last[i] for i in idx}
    out = np.zeros(len(scores))
    for i in idx:
        p_s = h[i] / sum(h.values())
        p_c = stale[i] / sum(stale.values())
        out[i] = (1 - rho) * p_s + rho * p_c
    return out


@pytest.mark.parametrize("beta,rho", [(0.1, 0.1), (1.0, 0.3), (0.5, 0.0), (2.0, 1.0)])
def test_plr_replay_weights_match_the_published_formula(beta, rho):
    rng = np.random.default_rng(7)
    n = 40
    scores = rng.random(n)
    scores[[3, 9, 21]] = scores[5]  # ties
    seen = rng.random(n) < 0.7
    clock = 500
    last = rng.integers(0, clock, n)
    got = plr.replay_weights(scores, seen, last, clock, beta, rho)
    want = plr_by_the_paper(scores, seen, last, clock, beta, rho)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert got[~seen].sum() == 0 and got.sum() == pytest.approx(1.0)


def test_plr_rank_prioritisation_sharpens_with_a_lower_temperature():
    scores = np.array([0.1, 0.25, 0.2, 0.05])
    seen, last = np.ones(4, bool), np.zeros(4)
    sharp = plr.replay_weights(scores, seen, last, 10, 0.1, 0.0)
    flat = plr.replay_weights(scores, seen, last, 10, 10.0, 0.0)
    assert np.argmax(sharp) == 1 and sharp[1] > 0.99  # (1/2)^10 ~ 1e-3 for rank 2
    assert flat.max() - flat.min() < 0.1
    # Staleness alone: proportional to episodes since the last draw.
    np.testing.assert_allclose(plr.replay_weights(scores, seen, np.array([10, 8, 5, 7]), 10, 0.1, 1.0),
                               np.array([0, 2, 5, 3]) / 10)


def test_plr_score_is_the_bernoulli_value_error_so_mid_success_ranks_first():
    n = np.array([10, 10, 10, 0])
    s = np.array([10, 5, 0, 0])
    sc = plr.scores(n, s)
    assert sc[1] > sc[0] and sc[1] > sc[2]  # p = 0.5 beats solved and hopeless
    assert sc[3] == pytest.approx(0.25)  # unseen: p = 1/2 under the Laplace prior


def played_plr_state(seen_share=0.6, seed=0):
    """A plr state whose bins have results: success rate per bin varies, some bins unseen."""
    cfg = CurriculumConfig(strategy="plr")
    state = cur.init(FULL, seed, cfg)
    grid = grid_of(state)
    rng = np.random.default_rng(seed)
    batch = []
    for i in np.flatnonzero(state["bins"]["feasible"]):
        if rng.random() < seen_share:
            p = rng.random()
            for t in grid.subspace(int(i)).sample(rng, 6):
                batch.append({"task": t.to_dict(), "success": bool(rng.random() < p), "version": 0})
    state = cur.update(state, batch)
    state, _ = cur.sample(state, 50)  # staleness differs between bins
    return state, grid


def test_plr_draws_follow_the_reported_weights():
    state, grid = played_plr_state()
    w = cur.bin_weights(state)
    feasible = np.asarray(state["bins"]["feasible"])
    seen = feasible & (np.asarray(state["bins"]["episodes"]) > 0)
    assert 0 < seen.sum() < feasible.sum() and w[~feasible].sum() == 0
    # Proportionate schedule: unseen bins get (1 - share seen) of the mass, uniformly.
    assert w[feasible & ~seen].sum() == pytest.approx(1 - seen.sum() / feasible.sum())
    counts = np.zeros(grid.size)
    for k in range(2000):  # the same state, 2000 different RNG states: 2000 draws of the next task
        s = dict(state, rng=np.random.default_rng(1000 + k).bit_generator.state)
        _, (task,) = cur.sample(s, 1)
        counts[grid.index(task)] += 1
    assert 0.5 * np.abs(counts / counts.sum() - w).sum() < 0.08  # total variation


def test_plr_tries_unseen_bins_before_replaying_and_tracks_staleness():
    state = cur.init(FULL, 0, CurriculumConfig(strategy="plr"))
    assert cur.bin_weights(state)[np.asarray(state["bins"]["feasible"])].std() == 0  # nothing seen: uniform
    state, tasks = cur.sample(state, 5)
    assert state["sampled"] == 5 and max(state["plr"]["last_sampled"]) == 5


# -- widening --------------------------------------------------------------------------------

def widening_cfg(**kw):
    return CurriculumConfig(strategy="widening", widening=WideningConfig(**{"window": 5, **kw}))


def test_widening_starts_at_the_nominal_task():
    state = cur.init(FULL, 0, widening_cfg())
    box = cur.sampling_space(state)
    assert box.low.tolist() == box.high.tolist() == NOMINAL.vector().tolist()
    _, tasks = cur.sample(state, 10)
    assert all(t == NOMINAL for t in tasks)


def test_widening_with_success_grows_monotonically_to_the_full_space():
    state = cur.init(FULL, 0, widening_cfg())
    max_stage = cur.metrics(state)["curriculum/max_stage"]
    boxes, rounds = [cur.sampling_space(state)], 0
    while not cur.coverage_complete(state):
        rounds += 1
        assert rounds < 200, "widening never reached the full space"
        state, tasks = cur.sample(state, 32)
        box = cur.sampling_space(state)
        assert all(box.contains(t) and FULL.contains(t) for t in tasks)  # samples inside the bounds
        state = cur.update(state, results(tasks, True))
        boxes.append(cur.sampling_space(state))
        assert contains(boxes[-1], boxes[-2])  # monotone: the new box holds the old one
        assert contains(FULL, boxes[-1])
    assert boxes[-1].low.tolist() == FULL.low.tolist() and boxes[-1].high.tolist() == FULL.high.tolist()
    assert state["widening"]["stage"] == max_stage > 0
    assert len({b.fingerprint() for b in boxes}) > 5  # it went through stages, not one jump
    assert cur.metrics(state)["curriculum/coverage"] == 1.0


def test_widening_moves_one_boundary_per_decision_from_the_nominal_start():
    # At the nominal task every result lies on all 18 boundaries, so each window of results
    # completes them all at once: one boundary moves per window, not all of them together.
    cfg = widening_cfg(window=5)
    state = cur.init(FULL, 0, cfg)
    stages, widened = [], []
    for _ in range(4):
        state, tasks = cur.sample(state, 5)
        before = cur.sampling_space(state)
        state = cur.update(state, results(tasks, True))
        after = cur.sampling_space(state)
        stages.append(state["widening"]["stage"])
        widened.append([n for n in FIELD_NAMES if (after[n].low, after[n].high) != (before[n].low, before[n].high)])
    assert stages == [1, 2, 3, 4]
    assert all(len(w) == 1 for w in widened) and len({w[0] for w in widened}) == 4  # a new dimension each time
    # The other boundaries' windows restarted with the decision: 4 more results move nothing.
    state, tasks = cur.sample(state, 4)
    assert cur.update(state, results(tasks, True))["widening"]["stage"] == 4


def test_widening_moves_the_boundary_with_the_best_window():
    from ada_curriculum.curriculum import widening
    cfg = WideningConfig(dims=("banana_x", "mass_scale"), window=4, threshold=0.5)
    w = widening.init(FULL, cfg)
    w["buffers"]["banana_x/hi"] = [1, 0, 1]  # 0.75 once the next success lands
    w["buffers"]["mass_scale/lo"] = [1, 1, 1]  # 1.0
    w["buffers"]["banana_x/lo"] = [1]
    assert widening.record(w, FULL, cfg, NOMINAL, True) == 1
    assert w["lo"]["mass_scale"] < NOMINAL.mass_scale and w["hi"]["banana_x"] == NOMINAL.banana_x
    assert w["buffers"]["banana_x/hi"] == [] and w["buffers"]["banana_x/lo"] == [1, 1]  # decided / still filling


def test_widening_without_success_stays_at_the_nominal_task():
    state = run(cur.init(FULL, 0, widening_cfg()), 30, False)
    assert state["episodes"] == 30 * 32
    assert state["widening"]["stage"] == 0
    assert cur.sampling_space(state).low.tolist() == NOMINAL.vector().tolist()
    assert not cur.done(state, 1.0, 0.5)


def test_widening_stops_where_the_policy_fails_and_goes_on_elsewhere():
    # Success iff mass_scale <= 1.2: mass_scale's upper boundary stops one step past 1.2 (its
    # probe there always fails); every other boundary reaches the full space.
    state = cur.init(FULL, 0, widening_cfg(step=0.25))
    state = run(state, 150, lambda t: t.mass_scale <= 1.2)
    box = cur.sampling_space(state)
    assert box["mass_scale"].high == pytest.approx(1.3) and box["mass_scale"].low == pytest.approx(0.6)
    for name in FIELD_NAMES:
        if name != "mass_scale":
            assert (box[name].low, box[name].high) == (FULL[name].low, FULL[name].high), name
    assert not cur.coverage_complete(state)


def test_widened_box_keeps_sampling_the_solved_region():
    state = run(cur.init(FULL, 0, widening_cfg()), 8, True)
    old = cur.sampling_space(state)
    while cur.sampling_space(state).fingerprint() == old.fingerprint():
        state = run(state, 1, True)
    new = cur.sampling_space(state)
    state, tasks = cur.sample(state, 400)
    for name in ("banana_x", "banana_y", "target_x", "mass_scale"):
        inside = np.mean([old[name].low <= getattr(t, name) <= old[name].high for t in tasks])
        width_ratio = (old[name].high - old[name].low) / (new[name].high - new[name].low)
        assert inside >= 0.5 * width_ratio > 0, name  # the old range keeps (about) its uniform share


def periodic_cfg(**kw):
    return widening_cfg(dims=("banana_yaw",), periodic=("banana_yaw",), **kw)


def test_periodic_widening_starts_at_every_copy_of_the_nominal_heading():
    state = cur.init(FULL, 0, periodic_cfg())
    state, tasks = cur.sample(state, 60)
    yaws = {round(t.banana_yaw, 9) for t in tasks}
    assert yaws == {round(-np.pi, 9), 0.0, round(np.pi, 9)}  # heading 0 and its half-turn copies
    # A copy's result counts for the nominal boundaries: five successes at heading pi widen.
    turned = [dataclasses.replace(NOMINAL, banana_yaw=float(np.pi))] * 5
    assert cur.update(state, results(turned, True))["widening"]["stage"] == 1
    # Plain widening has no such copies: the same results lie off its boundaries.
    plain = cur.init(FULL, 0, widening_cfg(dims=("banana_yaw",)))
    assert cur.update(plain, results(turned, True))["widening"]["stage"] == 0


def test_periodic_widening_spans_one_period_and_then_samples_the_whole_range():
    state = cur.init(FULL, 0, periodic_cfg(step=0.1))
    metrics = cur.metrics(state)
    assert metrics["curriculum/max_stage"] == 10  # two boundaries, each half a period in steps of 0.1 period
    folded = lambda t: abs(np.angle(np.exp(2j * t.banana_yaw))) / 2  # heading across the gripper, [0, pi/2]
    reached = []
    while not cur.coverage_complete(state):
        state, tasks = cur.sample(state, 32)
        box = cur.sampling_space(state)["banana_yaw"]
        assert all(FULL.contains(t) for t in tasks)
        # Every draw is a copy of a heading in the box: across the gripper no wider than the box.
        assert max(folded(t) for t in tasks) <= max(-box.low, box.high) + 1e-9
        reached.append(max(folded(t) for t in tasks))
        state = cur.update(state, results(tasks, True))
        assert len(reached) < 100
    box = cur.sampling_space(state)["banana_yaw"]
    assert (box.low, box.high) == pytest.approx((-np.pi / 2, np.pi / 2))
    assert cur.metrics(state)["curriculum/coverage"] == 1.0 and state["widening"]["stage"] == 10
    assert reached[0] == pytest.approx(0.0, abs=1e-9) and reached[-1] > 1.4
    _, tasks = cur.sample(state, 3000)
    counts, _ = np.histogram([t.banana_yaw for t in tasks], bins=6, range=(-np.pi, np.pi))
    assert counts.min() > 0.8 * 500  # the whole heading range, about uniformly


def test_a_state_saved_before_periodic_existed_resumes_and_periodic_is_structural():
    state = run(cur.init(FULL, 0, widening_cfg(dims=("banana_yaw",))), 3, True)
    old = json.loads(json.dumps(state))
    del old["config"]["widening"]["periodic"]
    assert cur.restore(old, FULL, widening_cfg(dims=("banana_yaw",)))["widening"] == state["widening"]
    with pytest.raises(ValueError, match=r"^widening.periodic: the state was made with \[\]"):
        cur.restore(old, FULL, periodic_cfg())


# -- band ------------------------------------------------------------------------------------

def test_band_prefers_bins_of_middling_success():
    cfg = CurriculumConfig(strategy="band")
    state = cur.init(FULL, 0, cfg)
    grid = grid_of(state)
    feasible = np.flatnonzero(state["bins"]["feasible"])
    rng = np.random.default_rng(0)
    mid = set(rng.choice(feasible, 5, replace=False).tolist())
    batch = []
    for i in feasible:  # every bin judged: 10 episodes each, mid bins half solved, others all or nothing
        outcome = [k % 2 == 0 for k in range(10)] if i in mid else [bool(i % 2)] * 10
        for t, ok in zip(grid.subspace(int(i)).sample(rng, 10), outcome):
            batch.append({"task": t.to_dict(), "success": ok, "version": 0})
    state = cur.update(state, batch)
    state, tasks = cur.sample(state, 2000)
    counts = np.bincount([grid.index(t) for t in tasks], minlength=grid.size)
    per_mid = counts[list(mid)].mean()
    per_other = counts[[i for i in feasible if i not in mid]].mean()
    assert per_mid > 8 * per_other  # weights 1 vs out_weight 0.05
    assert counts[list(mid)].sum() > 0.5 * len(tasks)  # uniform would give 5 / len(feasible)
    assert counts[[i for i in range(grid.size) if i not in set(feasible)]].sum() == 0


def test_band_explores_unjudged_bins():
    state = cur.init(FULL, 0, CurriculumConfig(strategy="band"))
    feasible = np.asarray(state["bins"]["feasible"])
    w = cur.bin_weights(state)
    np.testing.assert_allclose(w[feasible], 1 / feasible.sum())
    # One in-band bin judged, the rest unjudged: they share exactly the explore mass.
    stats = copy.deepcopy(state["bins"])
    first = int(np.flatnonzero(feasible)[0])
    stats["recent"][first] = [1, 0, 1, 0, 1]
    w = band.weights(stats, BandConfig())
    assert w[first] == pytest.approx(0.8) and w[feasible].sum() == pytest.approx(1.0)


# -- state: purity, round trips, resume checks -------------------------------------------------

CONFIGS = {
    "none": CurriculumConfig(),
    "widening": widening_cfg(),
    "band": CurriculumConfig(strategy="band"),
    "plr": CurriculumConfig(strategy="plr"),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_save_load_round_trip_reproduces_samples(strategy):
    cfg = CONFIGS[strategy]
    state = run(cur.init(FULL, 3, cfg), 6, lambda t: t.banana_y < 0)
    loaded = cur.restore(json.loads(json.dumps(state)), FULL, cfg)
    assert loaded == state
    a_state, a = cur.sample(state, 40)
    b_state, b = cur.sample(loaded, 40)
    assert a == b
    batch = results(a, lambda t: t.target_x > 0.5)
    a_state, b_state = cur.update(a_state, batch), cur.update(json.loads(json.dumps(b_state)), batch)
    assert cur.sample(a_state, 40)[1] == cur.sample(b_state, 40)[1]
    assert cur.sample_episodes(cur.init(FULL, 4, cfg), 5)[1] != cur.sample_episodes(cur.init(FULL, 3, cfg), 5)[1]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_functions_do_not_mutate_their_state(strategy):
    state = run(cur.init(FULL, 0, CONFIGS[strategy]), 2, True)
    frozen = copy.deepcopy(state)
    s1, t1 = cur.sample(state, 8)
    s2, t2 = cur.sample(state, 8)
    cur.update(state, results(t1, True, version=5), learner_version=9)
    cur.metrics(state)
    assert state == frozen and t1 == t2 and s1 == s2 and s1["rng"] != state["rng"]


def test_restore_refuses_another_task_space_in_one_line():
    state = cur.init(FULL, 0, CurriculumConfig(strategy="plr"))
    with pytest.raises(ValueError, match=r"^space_hash: ") as e:
        cur.restore(state, FULL.with_bounds(banana_x=(0.4, 0.6)))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^space_hash: "):
        cur.restore(state, nominal_space())
    tampered = json.loads(json.dumps(state))
    tampered["space"]["banana_x"] = [0.4, 0.6]
    with pytest.raises(ValueError, match=r"^space: "):
        cur.restore(tampered, FULL)


def test_restore_checks_config_and_layout():
    state = cur.init(FULL, 0, CurriculumConfig(strategy="band"))
    with pytest.raises(ValueError, match=r"^bins.per_dim: the state was made with 3"):
        cur.restore(state, FULL, CurriculumConfig(strategy="band", bins=BinConfig(per_dim=4)))
    with pytest.raises(ValueError, match=r"^strategy: "):
        cur.restore(state, FULL, CurriculumConfig(strategy="plr"))
    # Thresholds may change on resume; the new config is adopted.
    again = cur.restore(state, FULL, CurriculumConfig(strategy="band", band=BandConfig(low=0.2)))
    assert again["config"]["band"]["low"] == 0.2
    broken = json.loads(json.dumps(state))
    broken["bins"]["episodes"] = broken["bins"]["episodes"][:-1]
    with pytest.raises(ValueError, match=r"^bins.episodes: "):
        cur.restore(broken, FULL)
    with pytest.raises(ValueError, match=r"^format: "):
        cur.restore({"tasks": "full"}, FULL)


# -- results: staleness and validation ---------------------------------------------------------

def test_stale_results_are_dropped_and_counted():
    cfg = CurriculumConfig(strategy="plr", max_staleness=2)
    state = cur.init(FULL, 0, cfg)
    state, tasks = cur.sample(state, 4)
    batch = [dict(r, version=v) for r, v in zip(results(tasks, True), (10, 8, 7, 3))]
    new = cur.update(state, batch, learner_version=10)
    assert (new["episodes"], new["dropped_stale"], new["latest_version"]) == (2, 2, 10)
    assert sum(new["bins"]["episodes"]) == 2  # dropped results teach the curriculum nothing
    # Without the learner's version, the newest result's version is the clock.
    new = cur.update(state, [dict(r, version=v) for r, v in zip(results(tasks[:2], True), (5, 1))])
    assert (new["episodes"], new["dropped_stale"], new["latest_version"]) == (1, 1, 5)
    # No limit: everything is kept; a result without a version is never stale.
    unlimited = cur.update(cur.init(FULL, 0), batch, learner_version=100)
    assert unlimited["episodes"] == 4 and unlimited["dropped_stale"] == 0
    no_version = [{k: v for k, v in r.items() if k != "version"} for r in batch]
    assert cur.update(state, no_version, learner_version=100)["episodes"] == 4


def test_bad_results_name_the_field_and_change_nothing():
    state = cur.init(FULL, 0, CurriculumConfig(strategy="band"))
    _, tasks = cur.sample(state, 2)
    good, = results(tasks[:1], True)
    bad_task = dict(good, task={**good["task"], "banana_x": "left"})
    for batch, field in (([good, {"task": good["task"], "version": 0}], r"results\[1\].success"),
                         ([bad_task], r"results\[0\].task.banana_x"),
                         ([dict(good, version="v3")], r"results\[0\].version")):
        frozen = copy.deepcopy(state)
        with pytest.raises(ValueError, match=rf"^{field}: "):
            cur.update(state, batch)
        assert state == frozen


# -- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,field", [
    (CurriculumConfig(strategy="adr"), "strategy"),
    (CurriculumConfig(max_staleness=-1), "max_staleness"),
    (CurriculumConfig(plr=PLRConfig(temperature=0.0)), "plr.temperature"),
    (CurriculumConfig(plr=PLRConfig(staleness_coef=1.5)), "plr.staleness_coef"),
    (CurriculumConfig(plr=PLRConfig(replay_schedule="sometimes")), "plr.replay_schedule"),
    (CurriculumConfig(band=BandConfig(low=0.9, high=0.1)), "band.high"),
    (CurriculumConfig(band=BandConfig(min_episodes=50)), "band.min_episodes"),
    (CurriculumConfig(bins=BinConfig(dims=("banana_z",))), "bins.dims"),
    (CurriculumConfig(bins=BinConfig(per_dim=20)), "bins.per_dim"),
    (CurriculumConfig(widening=WideningConfig(step=0.0)), "widening.step"),
    (CurriculumConfig(widening=WideningConfig(threshold=1.2)), "widening.threshold"),
    (CurriculumConfig(widening=WideningConfig(window=0)), "widening.window"),
    (CurriculumConfig(widening=WideningConfig(dims=("banana_x",), periodic=("banana_yaw",))), "widening.periodic"),
    (CurriculumConfig(widening=WideningConfig(periodic=("banana_x",))), "widening.periodic"),
])
def test_bad_config_names_the_field(cfg, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        cfg.validate()
    with pytest.raises(ValueError, match=rf"^{field}: "):
        cur.init(FULL, 0, cfg)


def test_config_from_json_names_nested_fields():
    with pytest.raises(ValueError, match=r"^plr.temperature: "):
        from_dict(CurriculumConfig, {"strategy": "plr", "plr": {"temperature": -1}})
    cfg = from_dict(CurriculumConfig, {"strategy": "widening", "widening": {"dims": ["banana_x", "banana_y"]}})
    assert cfg.widening.dims == ("banana_x", "banana_y")


# -- stop condition and metrics --------------------------------------------------------------

def test_done_needs_the_whole_space_and_the_target():
    state = run(cur.init(FULL, 0, widening_cfg(dims=("banana_x",))), 3, True)
    assert not cur.coverage_complete(state) and not cur.done(state, 1.0, 0.9)
    state = run(state, 40, True)
    assert cur.coverage_complete(state)
    assert cur.done(state, 0.95, 0.9) and not cur.done(state, 0.85, 0.9)
    with pytest.raises(ValueError, match=r"^target: "):
        cur.done(state, 0.5, 1.5)

    bstate = cur.init(FULL, 0, CurriculumConfig(strategy="band"))
    assert not cur.done(bstate, 1.0, 0.5)
    bstate = run(bstate, 40, True)  # all bins judged solved: band falls back to all of them
    assert cur.coverage_complete(bstate) and cur.done(bstate, 1.0, 0.5)


def test_metrics_report_bounds_stage_and_a_banana_heatmap():
    state = run(cur.init(FULL, 0, widening_cfg()), 20, lambda t: t.banana_x < 0.55)
    m = cur.metrics(state)
    json.dumps(m)
    p = "curriculum/"
    assert m[p + "strategy"] == "widening" and 0 < m[p + "stage"] < m[p + "max_stage"]
    assert m[p + "episodes"] == state["episodes"] == 20 * 32
    for name in FIELD_NAMES:
        assert FULL[name].low == m[f"{p}range/{name}/lo"] <= m[f"{p}bounds/{name}/lo"]
        assert m[f"{p}bounds/{name}/lo"] <= m[f"{p}bounds/{name}/hi"] <= m[f"{p}range/{name}/hi"] == FULL[name].high
    assert m[p + "heatmap/dims"] == ["banana_x", "banana_y"]
    heat = np.array(m[p + "heatmap/episodes"])
    assert heat.shape == (3, 3) and heat.sum() == m[p + "episodes"]
    assert len(m[p + "heatmap/edges"][0]) == 4 and m[p + "heatmap/edges"][0][0] == FULL["banana_x"].low
    # Success per banana-x column follows the rule (x < 0.55 succeeds): the right column fails more.
    success = np.array(m[p + "heatmap/success"], dtype=float)
    cols = [np.nanmean(success[i]) for i in range(3)]
    assert cols[0] >= cols[2] or np.isnan(cols[0])
    assert m[p + "widening/banana_x/hi/n"] >= 0


# -- TaskSource: what actors call --------------------------------------------------------------

def test_task_source_without_a_curriculum_draws_the_old_stream():
    src = TaskSource("nominal", seed=5)
    rng = np.random.default_rng(5)
    want = []
    for _ in range(3):
        task = nominal_space().sample(rng)
        want.append((task.to_dict(), int(rng.integers(2**31 - 1))))
    assert src.sample(3) == want
    assert src.state()["rng"] == rng.bit_generator.state


def test_task_source_delegates_to_the_curriculum_and_round_trips():
    cfg = widening_cfg()
    src = TaskSource("full", seed=1, curriculum=cfg)
    rng_before = src.state()["rng"]
    pairs = src.sample(16)
    assert src.state()["rng"] != rng_before
    assert src.report([{"task": t, "success": True, "steps": 5, "version": 0} for t, _ in pairs], 0) == 16
    state = src.state()
    assert {"tasks", "rng", "episodes", "successes", "dropped_stale", "latest_version"} <= set(state)
    assert state["episodes"] == src.episodes == 16 and state["strategy"] == "widening"
    other = TaskSource("full", seed=99, curriculum=cfg)
    other.restore(json.loads(json.dumps(state)))
    assert other.sample(10) == src.sample(10)
    assert src.metrics()["task_source/episodes"] == 16 and "curriculum/stage" in src.metrics()
    with pytest.raises(ValueError, match=r"^space_hash: "):
        TaskSource("full", curriculum=cfg).restore({**state, "tasks": "full", "space_hash": "0" * 16})
    with pytest.raises(ValueError, match=r"^tasks: "):
        TaskSource("nominal").restore(state)


def test_task_source_staleness_argument_and_legacy_checkpoints():
    src = TaskSource("full", seed=0, max_staleness=1)
    pairs = src.sample(3)
    kept = src.report([{"task": t, "success": True, "steps": 1, "version": v} for (t, _), v in zip(pairs, (4, 3, 2))],
                      learner_version=4)
    assert kept == 2 and src.dropped_stale == 1 and src.latest_version == 4
    # A checkpoint written before the curriculum: only the fixed distribution's keys.
    legacy = {"tasks": "nominal", "rng": np.random.default_rng(11).bit_generator.state, "episodes": 7,
              "successes": 6, "dropped_stale": 0, "latest_version": 3}
    old = TaskSource("nominal")
    old.restore(legacy)
    assert old.episodes == 7 and old.sample(2) == TaskSource("nominal", seed=11).sample(2)
    with pytest.raises(ValueError, match=r"^tasks: "):
        TaskSource("nominal", curriculum=CurriculumConfig(strategy="plr"))


def test_task_source_keeps_every_report_from_concurrent_callers():
    # A Ray actor with max_concurrency > 1 runs calls on threads: none may lose another's update.
    src = TaskSource("full", seed=0, curriculum=CurriculumConfig(strategy="plr"))
    pairs = src.sample(8)

    def actor():
        for _ in range(25):
            src.sample(1)
            src.report([{"task": t, "success": True, "steps": 1, "version": 0} for t, _ in pairs])

    threads = [threading.Thread(target=actor) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert src.episodes == 4 * 25 * 8 and src.state()["sampled"] == 8 + 4 * 25
