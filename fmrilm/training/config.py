"""Training configurations: YAML files plus ``a.b=c`` command-line overrides, checked against dataclasses.

    config = load_config(Stage1Config, "stage1_tiny.yaml", ["training.max_steps=20", "model.preset=small"])

Every value is checked against the dataclass field's type annotation (``int``, ``float``, ``bool``,
``str``, ``Literal[...]``, ``X | None``, ``list[X]``, ``dict[str, X]``, nested dataclasses, ``Any``),
unknown keys are refused with the list of valid ones, and the dataclasses' own ``__post_init__``
checks the relations between fields. Override values are parsed as YAML (``x=3`` is an int,
``x=null`` is None, ``x=[1,2]`` a list). Floats written as ``1e-4`` (which YAML 1.1 reads as a
string) are accepted for float fields.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["apply_overrides", "config_from_dict", "config_to_dict", "load_config", "parse_overrides", "save_config"]

ConfigT = TypeVar("ConfigT")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML).

    Raises:
        ValueError: an item without ``=``, with an empty key or key part, or two items giving
            conflicting values for one key.
    """
    result: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"Override {item!r} is not of the form key=value (e.g. training.max_steps=100).")
        key, raw_value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"Override {item!r} has an empty key part; write dotted keys such as training.seed=1.")
        try:
            value = yaml.safe_load(raw_value) if raw_value.strip() else None
        except yaml.YAMLError as error:
            raise ValueError(f"Override {item!r}: the value is not valid YAML ({error}).") from error
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(
                    f"Override {item!r} conflicts with an earlier override of {'.'.join(parts[: depth + 1])}."
                )
            node = child
        node[parts[-1]] = value
    return result


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with ``overrides`` merged in, nested mappings merged key by key."""
    merged = dict(data)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = apply_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _converted(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against (and lightly converted to) ``annotation``; ValueError if it does not fit."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _converted(value, option, where)
            except ValueError as error:
                errors.append(str(error))
        if len(options) == 1:  # X | None: X's own message
            raise ValueError(errors[0].rstrip(".") + " (or null).")
        raise ValueError(f"{where}: {value!r} does not fit {_type_name(annotation)}.")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}.")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping of {annotation.__name__} settings, got {value!r}.")
        return config_from_dict(annotation, value, where=where)
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}.")
        item_type = args[0] if args else Any
        items = [_converted(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}.")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _converted(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected an integer, got {value!r}.")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}.")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise ValueError(f"{where}: expected a string, got {value!r}.")
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ValueError(f"{where}: {value!r} does not fit {_type_name(annotation)}.")


def config_from_dict(cls: type[ConfigT], data: Mapping[str, Any], *, where: str = "") -> ConfigT:
    """Build the dataclass ``cls`` from a (nested) mapping, checking every key and value.

    Raises:
        ValueError: an unknown key (the message lists the valid ones), a value of the wrong type,
            a missing required field, or whatever the dataclass's ``__post_init__`` refuses.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a mapping of settings, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"Unknown setting(s) {', '.join(prefix + str(k) for k in unknown)} for {cls.__name__}; "
            f"valid keys{' under ' + where if where else ''}: {', '.join(sorted(fields))}."
        )
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _converted(value, types_[name], f"{where}.{name}" if where else name)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{where or cls.__name__}: missing required setting(s) {', '.join(missing)}.")
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts and lists (YAML/JSON serialisable)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def load_config(
    cls: type[ConfigT], path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> ConfigT:
    """Read a YAML file (or nothing, for pure defaults), apply ``key=value`` overrides, build ``cls``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a YAML mapping, or a key or value does not fit ``cls``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Config file {path} not found; pass the path of a YAML config (see fmrilm/training/configs/)."
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path} must hold a YAML mapping of settings, got {type(loaded).__name__}.")
        data = dict(loaded)
    parsed = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    return config_from_dict(cls, apply_overrides(data, parsed))


def save_config(config: Any, path: str | Path) -> Path:
    """Write a dataclass config as YAML (readable back with :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    return path
