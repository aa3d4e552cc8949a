"""JSON round-trip for the frozen dataclasses that flow between stages.

One way to serialise: `to_json_dict` on the way out, `from_dict` on the way in, so every
stage can be run alone from the JSON of the stage before (`plan --facts facts.json`).
"""

from __future__ import annotations

import dataclasses
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


def from_dict(cls: type[T], data: Any) -> T:
    """Build `cls` from JSON data; unknown keys are ignored so newer JSON still loads."""
    return typing.cast(T, _convert(cls, data, cls.__name__))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        hints = get_type_hints(tp)
        kwargs: dict[str, object] = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing key {f.name!r}")
        return tp(**kwargs)
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


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
