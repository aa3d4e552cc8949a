"""JSON round-trip for the frozen dataclasses that flow between stages.

One way to serialise: `to_json_dict` on the way out, `from_dict` on the way in, so every
stage can be run alone from the JSON of the stage before (`plan --facts facts.json`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, NotRequired, Required, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


def to_json_dict(obj: Any) -> Any:
    """Dataclasses become dicts, tuples lists; everything else must already be JSON-able."""
    # free-form JSON: a document of any shape comes out (callers index into the one they made),
    # and any dataclass or JSON value goes in, so both ends stay Any.
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_dict(v) for v in obj]
    return obj


class SchemaError(ValueError):
    """A document that does not match its dataclass: `where` is the field (selected.ctx, or
    Plan.selected.ctx), `problem` what is wrong with it."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where, self.problem = where, problem


def from_dict(cls: type[T], data: Any, *, strict: bool = False, where: str | None = None) -> T:
    """Build `cls` from JSON data; unknown keys are ignored so newer JSON still loads.

    strict: every scalar must have its declared type (a bool is not an int, an int is a float,
    numbers are finite), dicts and unions are checked too; a mismatch is a SchemaError naming the
    field (dotted from `where`, default the class name; "" for bare field names). Without strict,
    scalars pass as they are (the documents edgedeploy wrote itself)."""
    root = cls.__name__ if where is None else where
    return typing.cast(T, _convert_strict(cls, data, root) if strict else _convert(cls, data, root))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected an object, got {type(value).__name__}")
        hints = get_type_hints(tp)
        kwargs: dict[str, object] = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(where, f"missing key {f.name!r}")
        return tp(**kwargs)
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        if not isinstance(value, list):
            raise SchemaError(where, f"expected a list, got {type(value).__name__}")
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _got(value: object) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:35] + '…'}"


def _convert_strict(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _convert_strict(args[0], value, where)
        for a in args:  # e.g. int | list[int]: the first that takes the value
            try:
                return _convert_strict(a, value, where)
            except SchemaError:
                continue
        raise SchemaError(where, f"expected {' or '.join(_name(a) for a in args)}, got {_got(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected an object, got {_got(value)}")
        hints = _HINTS.get(tp)
        if hints is None:
            hints = _HINTS[tp] = get_type_hints(tp)
        kwargs: dict[str, object] = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert_strict(hints[f.name], value[f.name], _join(where, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(_join(where, f.name), "missing")
        return tp(**kwargs)
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        if not isinstance(value, list):
            raise SchemaError(where, f"expected a list, got {_got(value)}")
        items = [_convert_strict(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        _, val_tp = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected an object, got {_got(value)}")
        return {str(k): _convert_strict(val_tp, v, f"{where}[{str(k)!r}]") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(where, f"expected a number, got {_got(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            number = math.inf
        if not math.isfinite(number):
            raise SchemaError(where, f"expected a finite number, got {_got(value)}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(where, f"expected an integer, got {_got(value)}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise SchemaError(where, f"expected {_name(tp)}, got {_got(value)}")
        return value
    return value


def _name(tp: Any) -> str:
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(tp, "a list" if get_origin(tp) is list else str(tp))


def typed_dict_from(cls: type[T], doc: Mapping[str, object]) -> T | None:
    """JSON read from a device or a file, as the TypedDict `cls`: the keys it declares whose values
    have the declared type, in the document's order (other keys and wrong-typed values dropped);
    None when a required key is missing or wrong."""
    # __required_keys__ misses Required[...] under `from __future__ import annotations` before
    # Python 3.12's fix: read the qualifiers from the hints instead.
    hints, total = get_type_hints(cls, include_extras=True), getattr(cls, "__total__", True)
    required = {k for k, tp in hints.items() if get_origin(tp) is Required or (total and get_origin(tp) is not NotRequired)}
    types_ = {k: get_args(tp)[0] if get_origin(tp) in (Required, NotRequired) else tp for k, tp in hints.items()}
    kept = {k: v for k, v in doc.items() if k in types_ and _is(types_[k], v)}
    return typing.cast(T, kept) if required <= kept.keys() else None


def _is(tp: object, value: object) -> bool:
    """Whether a JSON value has type `tp` (the few kinds the TypedDicts here use)."""
    origin = get_origin(tp)
    if tp is object or tp is Any:
        return True
    if origin is Union or origin is types.UnionType:
        return any(_is(a, value) for a in get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_is(get_args(tp)[0], v) for v in value)
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        return isinstance(value, dict) and all(_is(key_tp, k) and _is(val_tp, v) for k, v in value.items())
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # JSON has one number type: 2 is a float too
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    raise TypeError(f"typed_dict_from does not check {tp!r}")
