"""Typed requests from JSON: what serde's ``Deserialize`` does in Rust.

A handler's request type is the annotation of its request parameter (or a
class attribute ``Request``). Supported: dataclasses (fields with defaults
are optional, unknown fields are ignored, as serde does), ``str``, ``int``,
``float``, ``bool``, ``list[X]``, ``dict[str, X]``, ``Optional[X]`` and
other unions, ``Any`` / no annotation (the parsed JSON as it is), and any
class with a ``from_json(value)`` classmethod. A body that does not fit is
a permanent error naming the field: it will not fit on a retry either.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any


class DecodeError(ValueError):
    """The JSON value does not fit the type; the message says where."""


def type_name(tp: Any) -> str:
    """A short, readable name for error messages (``list[Line]``)."""
    origin = typing.get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    args = ", ".join(type_name(a) for a in typing.get_args(tp))
    name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
    return f"{name}[{args}]"


def decode(tp: Any, value: Any, path: str = "") -> Any:
    """``value`` (parsed JSON) as an instance of ``tp``; raises
    :class:`DecodeError` with the path of the first field that does not
    fit."""
    where = f" at {path}" if path else ""
    if tp is None:
        tp = type(None)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is not None:
            raise DecodeError(f"expected null{where}, got {_kind(value)}")
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union or (sys.version_info >= (3, 10) and _is_union_type(tp)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return decode(arg, value, path)
            except DecodeError as e:
                errors.append(str(e))
        raise DecodeError("; ".join(errors) or f"no type of {type_name(tp)} fits{where}")
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise DecodeError(f"expected a list{where}, got {_kind(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [decode(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise DecodeError(f"expected an object{where}, got {_kind(value)}")
        _, item = typing.get_args(tp) or (str, Any)
        return {k: decode(item, v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if origin is not None:
        # Other generics (tuple, Literal, ...): accept the JSON as it is.
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise DecodeError(f"expected a boolean{where}, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(f"expected an integer{where}, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError(f"expected a number{where}, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise DecodeError(f"expected a string{where}, got {_kind(value)}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise DecodeError(f"expected an object{where}, got {_kind(value)}")
        return value
    if tp is list:
        if not isinstance(value, list):
            raise DecodeError(f"expected a list{where}, got {_kind(value)}")
        return value
    from_json = getattr(tp, "from_json", None)
    if callable(from_json):
        try:
            return from_json(value)
        except DecodeError:
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise DecodeError(f"{e}{where}") from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value, path)
    raise DecodeError(f"cannot decode into {type_name(tp)}{where}")


_HINTS: dict = {}


def _hints(tp: type) -> dict:
    """A dataclass's resolved field types, resolved once per class."""
    hints = _HINTS.get(tp)
    if hints is None:
        hints = _HINTS[tp] = typing.get_type_hints(tp)
    return hints


def warm(tp: Any, seen: Any = None) -> None:
    """Resolves the field types of ``tp`` and of every dataclass it holds,
    ahead of the first call (inside a component: at build time, into the
    snapshot). Unresolvable hints are left for the call to report."""
    seen = set() if seen is None else seen
    if _hashable(tp):
        if tp in seen:
            return
        seen.add(tp)
    for arg in typing.get_args(tp):
        warm(arg, seen)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        try:
            hints = _hints(tp)
        except Exception:  # noqa: BLE001 - reported by decode on the first call
            return
        for h in hints.values():
            warm(h, seen)


def _hashable(tp: Any) -> bool:
    try:
        hash(tp)
    except TypeError:
        return False
    return True


def _dataclass(tp: type, value: Any, path: str) -> Any:
    where = f" at {path}" if path else ""
    if not isinstance(value, dict):
        raise DecodeError(f"expected an object{where}, got {_kind(value)}")
    hints = _hints(tp)
    kwargs = {}
    for f in dataclasses.fields(tp):
        if not f.init:
            continue
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in value:
            kwargs[f.name] = decode(hints.get(f.name, Any), value[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise DecodeError(f"missing field `{sub}`")
    return tp(**kwargs)


def _is_union_type(tp: Any) -> bool:
    import types

    return isinstance(tp, types.UnionType)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"number `{value}`"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:39] + "…"
        return f"string {shown!r}"
    if isinstance(value, list):
        return "a list"
    return "an object"
