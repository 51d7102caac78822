"""Typed dataclass configs: command-line options, validation and JSON files.

A config is a (possibly nested) dataclass. Every leaf field becomes one option:
``time_limit`` -> ``--time-limit``; field ``lr`` of a nested dataclass field
``optim`` -> ``--optim.lr``; a bool ``play`` -> ``--play/--no-play``; a tuple
takes one comma-separated token (``--hidden 256,256``). Supported leaf types:
int, float, str, bool, ``Literal[...]``, Enum subclasses, ``tuple[X, ...]``,
fixed tuples, and ``Optional[...]`` of these (``none`` on the command line).

Field metadata may carry ``help``, ``metavar``, ``min`` and ``max``. A dataclass may define
``validate(self)`` raising ``ConfigError(field_name, reason)``; errors from a
nested dataclass are reported under the full dotted name.

Every problem raises ConfigError with a one-line message naming the field, e.g.
``episodes: expected a positive int, got 'abc'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import tempfile
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


class ConfigError(ValueError):
    """A bad config value; ``str()`` is a single line naming the field."""

    def __init__(self, field: str | None, reason: str):
        self.field = field
        self.reason = reason
        text = f"{field}: {reason}" if field else reason
        super().__init__(" ".join(text.split()))

    def under(self, prefix: str) -> ConfigError:
        """The same error re-homed below ``prefix`` (a parent field)."""
        return ConfigError(f"{prefix}.{self.field}" if self.field else prefix, self.reason)


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError instead of printing usage and exiting,
    so callers can report bad input as a single line."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(None, f"{message} (see {self.prog} --help)")


@dataclasses.dataclass(frozen=True)
class _Leaf:
    path: str  # dotted field path, e.g. "optim.lr"
    type: Any
    field: dataclasses.Field

    @property
    def option(self) -> str:
        return "--" + self.path.replace("_", "-")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaves(cls: type, prefix: str = "") -> Iterator[_Leaf]:
    hints = _hints(cls)
    for f in _init_fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
        else:
            _describe(_unwrap_optional(tp)[0], f.metadata)  # fail early on unsupported types
            yield _Leaf(prefix + f.name, tp, f)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
        raise TypeError(f"unsupported union type {tp!r}")
    return tp, False


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


# ---- conversion -----------------------------------------------------------------------


def _noun(tp: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a valid value looks like, for error messages and help."""
    if tp is bool:
        return "true or false"
    if tp in (int, float):
        noun = _noun(tp)
        lo, hi = meta.get("min"), meta.get("max")
        if hi is None and lo == 1 and tp is int:
            return "a positive int"
        if hi is None and lo == 0:
            return f"a non-negative {noun}"
        bounds = []
        if lo is not None:
            bounds.append(f">= {lo}")
        if hi is not None:
            bounds.append(f"<= {hi}")
        article = "an" if tp is int else "a"
        return f"{article} {noun}" + (" " + " and ".join(bounds) if bounds else "")
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {_noun(args[0])}s"
        return f"{len(args)} comma-separated values ({', '.join(_noun(a) for a in args)})"
    raise TypeError(f"unsupported config field type {tp!r}")


def _convert_plain(tp: Any, value: Any) -> Any:
    """Convert ``value`` (a CLI string or a JSON value) to ``tp``; ValueError if impossible."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip(), 10)
        raise ValueError
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and not isinstance(choice, str) and value == str(choice):
                return choice
        raise ValueError
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value == member.value or (isinstance(value, str) and value in (str(member.value), member.name)):
                return member
        raise ValueError
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            items: Sequence[Any] = [s.strip() for s in value.split(",")] if value.strip() else []
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            raise ValueError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert_plain(args[0], v) for v in items)
        if len(items) != len(args):
            raise ValueError
        return tuple(_convert_plain(a, v) for a, v in zip(args, items))
    raise TypeError(f"unsupported config field type {tp!r}")


def _convert(path: str, tp: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise ConfigError(path, f"expected {_describe(inner, meta)}, got None")
    try:
        out = _convert_plain(inner, value)
    except (TypeError, ValueError):
        raise ConfigError(path, f"expected {_describe(inner, meta)}, got {value!r}") from None
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise ConfigError(path, f"expected {_describe(inner, meta)}, got {value!r}")
    return out


# ---- dicts and files ------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config instance (enums by value, tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build and validate a ``cls`` instance; missing keys take defaults, unknown keys
    are rejected by name."""
    return _from_dict(cls, data, "")


def _from_dict(cls: type[T], data: Any, prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or None, f"expected a mapping, got {type(data).__name__}")
    fields = _init_fields(cls)
    names = {f.name for f in fields}
    unknown = [prefix + str(k) for k in data if k not in names]
    if unknown:
        raise ConfigError(None, "unknown key(s): " + ", ".join(unknown))
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        path, tp = prefix + f.name, hints[f.name]
        if _is_dataclass_type(tp):
            if f.name in data or not _has_default(f):
                kwargs[f.name] = _from_dict(tp, data.get(f.name, {}), path + ".")
        elif f.name in data:
            kwargs[f.name] = _convert(path, tp, data[f.name], f.metadata)
        elif not _has_default(f):
            raise ConfigError(path, f"a value is required (--{path.replace('_', '-')})")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise (e.under(prefix.rstrip(".")) if prefix else e) from None
        except ValueError as e:
            # Plain ValueErrors from component configs start with their field name.
            raise ConfigError(None, prefix + " ".join(str(e).split())) from None
    return obj


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``cfg`` as JSON, atomically (a reader never sees a half-written file)."""
    path = Path(path)
    text = json.dumps(to_dict(cfg), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except OSError as e:
        raise ConfigError(None, f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(None, f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return from_dict(cls, data)


# ---- command line ---------------------------------------------------------------------


def _metavar(tp: Any) -> str:
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is Literal:
        return "{" + ",".join(str(c) for c in typing.get_args(inner)) + "}"
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return "{" + ",".join(str(m.value) for m in inner) + "}"
    if typing.get_origin(inner) is tuple:
        return "A,B,..."
    return _noun(inner).upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per leaf field of ``cls``. Options absent from the command line
    are absent from the namespace, so ``from_namespace`` sees only real overrides."""
    defaults = _defaults(cls)
    for leaf in _leaves(cls):
        help_text = leaf.field.metadata.get("help", "")
        value = _lookup(defaults, leaf.path)
        suffix = "(required)" if value is dataclasses.MISSING else f"(default: {_show(value)})"
        help_text = f"{help_text} {suffix}".strip().replace("%", "%%")
        if _unwrap_optional(leaf.type)[0] is bool:
            parser.add_argument(
                leaf.option, dest=leaf.path, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )
        else:
            parser.add_argument(
                leaf.option, dest=leaf.path, default=argparse.SUPPRESS,
                metavar=leaf.field.metadata.get("metavar", _metavar(leaf.type)), help=help_text,
            )


def from_namespace(cls: type[T], namespace: argparse.Namespace, base: T | None = None) -> T:
    """The config given by ``base`` (or the defaults) plus the options set in ``namespace``."""
    overrides = {leaf.path: getattr(namespace, leaf.path) for leaf in _leaves(cls) if hasattr(namespace, leaf.path)}
    return apply_overrides(cls, overrides, base)


def apply_overrides(cls: type[T], overrides: Mapping[str, Any], base: T | None = None) -> T:
    """``base`` (or the defaults) with dotted-path overrides such as ``{"optim.lr": "3e-4"}``."""
    data = to_dict(base) if base is not None else _defaults(cls, keep_missing=False)
    known = {leaf.path for leaf in _leaves(cls)}
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise ConfigError(None, "unknown key(s): " + ", ".join(unknown))
    for path, value in overrides.items():
        node = data
        *parents, name = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = value
    return from_dict(cls, data)


def parse_args(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None) -> T:
    """Parse ``argv`` into a ``cls`` instance (a stand-alone parser with ``--help``)."""
    doc = (cls.__doc__ or "").strip()
    if doc.startswith(cls.__name__ + "("):  # the signature dataclass puts in place of a docstring
        doc = ""
    parser = ArgumentParser(prog=prog, description=doc or None)
    add_arguments(parser, cls)
    return from_namespace(cls, parser.parse_args(argv))


def _defaults(cls: type, keep_missing: bool = True) -> dict[str, Any]:
    """Nested dict of default values; required fields map to MISSING (or are left out)."""
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in _init_fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            out[f.name] = to_dict(_default(f)) if _has_default(f) else _defaults(tp, keep_missing)
        elif _has_default(f):
            out[f.name] = _default(f)
        elif keep_missing:
            out[f.name] = dataclasses.MISSING
    return out


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    for name in path.split("."):
        data = data[name]
    return data


def _show(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    return "none" if value is None else str(value)
