"""The distillation stage: which generation trains, which model acts, as a pure JSON state.

    state = init(cfg)
    state, switched = on_progress(state, cfg, updates, coverage)   # after learner updates
    state = on_eval(state, cfg, teacher_success, student_success)  # after a held-out evaluation
    weight(state, cfg, updates); metrics(state, cfg, updates)
    state = restore(saved, cfg)                                    # from a checkpoint's meta

Generation g trains the preset `generations[g]` (the student). From generation 1 on, its
teacher is a frozen snapshot of generation g-1 taken at the switch, and the actors keep acting
with the teacher until the student's evaluated success reaches the teacher's minus
`handover_margin` (the handover); a student that acts worse than its teacher would feed replay
worse data than the run already had. The next switch waits for the handover, so every teacher
is the model the actors were using.

No function mutates its argument; the state holds only JSON values (ints, floats, strings,
None, lists), so `json.loads(json.dumps(state)) == state`. `updates` are the learner's update
counts (versions) over the whole run, not per generation.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections.abc import Mapping

from ada_curriculum.checkpointing import CheckpointError
from ada_curriculum.distill.schedule import DistillConfig, kickstart_ends, kickstart_weight

FORMAT = "ada-curriculum-distill"
VERSION = 1
P = "distill/"
_ACTING = ("student", "teacher")


def _int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{field}: expected an int >= 0, got {value!r}")
    return int(value)


def _rate(field: str, value) -> float | None:
    """A success rate in [0, 1] as a plain float (numpy floats would not survive json exactly as typed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{field}: expected a success rate in [0, 1] or None, got {value!r}")
    return float(value)


def init(cfg: DistillConfig) -> dict:
    """Generation 0: the first preset trains and acts alone (there is no teacher yet)."""
    cfg.validate()
    return {
        "format": FORMAT, "version": VERSION, "generations": list(cfg.generations),
        "generation": 0, "switch_updates": 0, "acting": "student",
        "teacher_success": None, "student_success": None, "history": [],
    }


def restore(state: Mapping, cfg: DistillConfig) -> dict:
    """A checked private copy of a saved state, to continue under `cfg`.

    Raises CheckpointError naming the first bad field, e.g. a state made with another
    generations list (its student is a different model from the one this run would build).
    """
    def bad(field: str, reason: str) -> CheckpointError:
        return CheckpointError(f"distill.{field}: {reason}")

    if not isinstance(state, Mapping):
        raise bad("state", f"expected a mapping, got {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise bad("format", f"expected {FORMAT!r}, got {state.get('format')!r}")
    if state.get("version") != VERSION:
        raise bad("version", f"this code reads distillation state version {VERSION}, got {state.get('version')!r}")
    for key in ("generations", "generation", "switch_updates", "acting", "teacher_success", "student_success",
                "history"):
        if key not in state:
            raise bad(key, "missing from the distillation state")
    try:
        new = json.loads(json.dumps(state))
    except (TypeError, ValueError) as e:
        raise bad("state", f"not JSON-serialisable ({e})") from None
    if new["generations"] != list(cfg.generations):
        raise bad("generations", f"the checkpoint was made with {','.join(map(str, new['generations']))}, this run "
                                 f"asks for {','.join(cfg.generations)}; use a new run directory or the same setting")
    g = new["generation"]
    if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(cfg.generations):
        raise bad("generation", f"expected an int in 0..{len(cfg.generations) - 1}, got {g!r}")
    if g > 0 and not cfg.enabled:
        raise bad("enabled", f"the checkpoint is at generation {g} ({cfg.generations[g]}); this run has "
                             "distillation off")
    if new["acting"] not in _ACTING or (g == 0 and new["acting"] != "student"):
        raise bad("acting", f"expected 'student' or (from generation 1) 'teacher', got {new['acting']!r}")
    for key in ("switch_updates",):
        try:
            _int(key, new[key])
        except ValueError as e:
            raise bad(key, str(e).split(": ", 1)[1]) from None
    for key in ("teacher_success", "student_success"):
        try:
            _rate(key, new[key])
        except ValueError as e:
            raise bad(key, str(e).split(": ", 1)[1]) from None
    if not isinstance(new["history"], list):
        raise bad("history", "expected a list")
    return new


def _since(state: Mapping, updates) -> int:
    updates = _int("updates", updates)
    if updates < state["switch_updates"]:
        raise ValueError(f"updates: {updates} is before the current generation started (update "
                         f"{state['switch_updates']}); pass the run's total update count")
    return updates - state["switch_updates"]


def student_preset(state: Mapping) -> str:
    """The preset being trained."""
    return state["generations"][state["generation"]]


def teacher_preset(state: Mapping) -> str | None:
    """The frozen teacher's preset (None in generation 0)."""
    g = state["generation"]
    return state["generations"][g - 1] if g > 0 else None


def acting_preset(state: Mapping) -> str:
    """The preset the actors (and the published acting weights) use."""
    return student_preset(state) if state["acting"] == "student" else teacher_preset(state)


def weight(state: Mapping, cfg: DistillConfig, updates: int) -> float:
    """The kickstarting weight at `updates` (0 in generation 0, where there is no teacher)."""
    since = _since(state, updates)
    if state["generation"] == 0 or not cfg.enabled:
        return 0.0
    return kickstart_weight(cfg, since)


def teacher_needed(state: Mapping, cfg: DistillConfig, updates: int) -> bool:
    """Whether the teacher is still used: in the loss (weight not yet 0 for good) or for acting.

    Once False it stays False for this generation, so the learner can drop the teacher and go
    back to the plain objective (one recompile) instead of running a zero-weight term.
    """
    if state["generation"] == 0 or not cfg.enabled:
        return False
    return state["acting"] == "teacher" or _since(state, updates) < kickstart_ends(cfg)


def on_progress(state: Mapping, cfg: DistillConfig, updates: int, coverage: float | None = None) -> tuple[dict, bool]:
    """(state, switched): start the next generation when a trigger fires.

    Triggers (either): `switch_every_updates` updates since the last switch; curriculum
    `coverage` (`curriculum/coverage`, in [0, 1]) >= (generation + 1) x `switch_on_coverage`.
    No switch in the last generation, or while the actors still act with the teacher. On a
    switch the current student becomes the teacher (its last evaluated success comes along as
    the teacher's) and the caller must snapshot its weights and start the new student.
    """
    since = _since(state, updates)
    if coverage is not None and (isinstance(coverage, bool) or not isinstance(coverage, numbers.Real)
                                 or not math.isfinite(coverage)):
        raise ValueError(f"coverage: expected a number in [0, 1] or None, got {coverage!r}")
    g = state["generation"]
    if not cfg.enabled or g + 1 >= len(state["generations"]) or state["acting"] != "student":
        return copy.deepcopy(dict(state)), False
    by_updates = cfg.switch_every_updates is not None and since >= cfg.switch_every_updates
    by_coverage = (cfg.switch_on_coverage is not None and coverage is not None
                   and float(coverage) >= (g + 1) * cfg.switch_on_coverage - 1e-9)
    if not (by_updates or by_coverage):
        return copy.deepcopy(dict(state)), False
    new = copy.deepcopy(dict(state))
    new.update(generation=g + 1, switch_updates=int(updates), acting="teacher",
               teacher_success=state["student_success"], student_success=None)
    new["history"].append({"event": "switch", "generation": g + 1, "updates": int(updates),
                           "trigger": "updates" if by_updates else "coverage",
                           "coverage": None if coverage is None else float(coverage)})
    return new, True


def on_eval(state: Mapping, cfg: DistillConfig, teacher_success: float | None = None,
            student_success: float | None = None, updates: int | None = None) -> dict:
    """Record evaluated success rates (None keeps the stored one) and hand over to the student
    once its success >= the teacher's - `handover_margin`; from then on the actors use it.

    The teacher is frozen, so it needs evaluating once per generation (its success is carried
    over from when it was the student, if that was measured); the student, after every eval.
    """
    new = copy.deepcopy(dict(state))
    t = _rate("teacher_success", teacher_success)
    s = _rate("student_success", student_success)
    if t is not None:
        if state["generation"] == 0:
            raise ValueError("teacher_success: generation 0 has no teacher")
        new["teacher_success"] = t
    if s is not None:
        new["student_success"] = s
    ready = (new["acting"] == "teacher" and new["teacher_success"] is not None
             and new["student_success"] is not None
             and new["student_success"] >= new["teacher_success"] - cfg.handover_margin - 1e-12)
    if ready:
        new["acting"] = "student"
        new["history"].append({"event": "handover", "generation": new["generation"],
                               "updates": None if updates is None else _int("updates", updates),
                               "teacher_success": new["teacher_success"], "student_success": new["student_success"]})
    return new


def needs_teacher_eval(state: Mapping) -> bool:
    """True while the handover waits for a measurement of the (frozen) teacher's success."""
    return state["acting"] == "teacher" and state["teacher_success"] is None


def metrics(state: Mapping, cfg: DistillConfig, updates: int) -> dict:
    """Flat JSON metrics under ``distill/`` (strings and None are skipped by the metrics store's scalars)."""
    return {
        P + "generation": state["generation"],
        P + "student_preset": student_preset(state),
        P + "teacher_preset": teacher_preset(state),
        P + "acting": state["acting"],
        P + "acting_preset": acting_preset(state),
        P + "acting_student": 1.0 if state["acting"] == "student" else 0.0,
        P + "weight": weight(state, cfg, updates),
        P + "updates_since_switch": _since(state, updates),
        P + "teacher_success": state["teacher_success"],
        P + "student_success": state["student_success"],
    }


def store_record(state: Mapping, cfg: DistillConfig, updates: int, distance_to_teacher: float | None = None,
                 params: int | None = None, teacher_params: int | None = None) -> dict:
    """Keyword arguments for `MetricsStore.distillation(**record)` (the dashboard's stage table)."""
    return {"step": _int("updates", updates), "generation": state["generation"], "preset": student_preset(state),
            "params": params, "teacher_success": state["teacher_success"],
            "student_success": state["student_success"], "distance_to_teacher": distance_to_teacher,
            "weight": weight(state, cfg, updates),
            "extra": {"teacher_preset": teacher_preset(state), "teacher_params": teacher_params,
                      "acting": state["acting"], "acting_preset": acting_preset(state),
                      "switch_updates": state["switch_updates"]}}
