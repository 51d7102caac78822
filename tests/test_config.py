from __future__ import annotations

import dataclasses
import enum
import json
from typing import Literal, Optional

import pytest

from ada_curriculum.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_args,
    save_config,
    to_dict,
)


class Schedule(enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


@dataclasses.dataclass
class Optim:
    lr: float = dataclasses.field(default=1e-3, metadata={"min": 0.0})
    schedule: Schedule = Schedule.CONSTANT
    hidden: tuple[int, ...] = (256, 256)

    def validate(self) -> None:
        if self.lr > 1.0:
            raise ConfigError("lr", f"must be <= 1, got {self.lr}")


@dataclasses.dataclass
class Train:
    out: str
    tasks: Literal["nominal", "full"] = "nominal"
    episodes: int = dataclasses.field(default=10, metadata={"min": 1})
    play: bool = False
    time_limit: Optional[int] = None
    span: tuple[float, float] = (0.0, 1.0)
    optim: Optim = dataclasses.field(default_factory=Optim)


def one_line_error(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_args(Train, argv)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_overrides():
    cfg = parse_args(Train, ["--out", "d"])
    assert cfg == Train(out="d")

    cfg = parse_args(
        Train,
        ["--out", "d", "--tasks", "full", "--episodes", "3", "--time-limit", "40", "--span", "0.5,2"],
    )
    assert (cfg.tasks, cfg.episodes, cfg.time_limit, cfg.span) == ("full", 3, 40, (0.5, 2.0))
    assert isinstance(cfg.episodes, int) and isinstance(cfg.span[1], float)
    assert parse_args(Train, ["--out", "d", "--time-limit", "none"]).time_limit is None


def test_nested_fields():
    argv = ["--out", "d", "--optim.lr", "3e-4", "--optim.schedule", "cosine", "--optim.hidden", "64,32,16"]
    cfg = parse_args(Train, argv)
    assert cfg.optim == Optim(lr=3e-4, schedule=Schedule.COSINE, hidden=(64, 32, 16))
    assert cfg.episodes == 10  # untouched siblings keep their defaults


def test_bool_flags():
    assert parse_args(Train, ["--out", "d", "--play"]).play is True
    assert parse_args(Train, ["--out", "d", "--play", "--no-play"]).play is False
    assert parse_args(Train, ["--out", "d"]).play is False


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--episodes", "abc"], "episodes: expected a positive int, got 'abc'"),
        (["--episodes", "0"], "episodes: expected a positive int, got '0'"),
        (["--tasks", "hard"], "tasks: expected one of 'nominal', 'full', got 'hard'"),
        (["--optim.lr", "-1"], "optim.lr: expected a non-negative float, got '-1'"),
        (["--optim.schedule", "linear"], "optim.schedule: expected one of 'constant', 'cosine'"),
        (["--span", "1,2,3"], "span: expected 2 comma-separated values"),
    ],
)
def test_bad_value_names_field(argv, expected):
    assert one_line_error(["--out", "d", *argv]).startswith(expected)


def test_validate_error_is_named_with_full_path():
    assert one_line_error(["--out", "d", "--optim.lr", "5"]) == "optim.lr: must be <= 1, got 5.0"


def test_missing_required_and_unknown_option():
    assert "out" in one_line_error([])
    assert "--bogus" in one_line_error(["--out", "d", "--bogus", "1"])


def test_dict_round_trip_and_unknown_keys():
    cfg = Train(out="d", tasks="full", optim=Optim(schedule=Schedule.COSINE, hidden=(8,)))
    data = to_dict(cfg)
    assert data["optim"] == {"lr": 1e-3, "schedule": "cosine", "hidden": [8]}
    json.dumps(data)  # JSON-ready
    assert from_dict(Train, data) == cfg

    with pytest.raises(ConfigError, match=r"unknown key\(s\): colour"):
        from_dict(Train, {**data, "colour": "red"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\): optim.momentum"):
        from_dict(Train, {**data, "optim": {"momentum": 0.9}})
    with pytest.raises(ConfigError, match="^episodes: expected a positive int, got True$"):
        from_dict(Train, {"out": "d", "episodes": True})


def test_apply_overrides_on_base():
    base = Train(out="d", episodes=5)
    cfg = apply_overrides(Train, {"optim.lr": "0.5", "play": True}, base)
    assert (cfg.episodes, cfg.optim.lr, cfg.play) == (5, 0.5, True)
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(Train, {"optim.beta": 1}, base)


def test_save_and_load(tmp_path):
    cfg = Train(out="d", time_limit=7, span=(0.1, 0.2), optim=Optim(schedule=Schedule.COSINE))
    path = tmp_path / "config.json"
    save_config(cfg, path)
    assert json.loads(path.read_text())["time_limit"] == 7
    assert load_config(Train, path) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp files left

    path.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(Train, path)
