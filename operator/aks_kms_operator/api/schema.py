"""A tiny declarative schema: one Python description of the CRD, two uses.

The ClusterEncryptionPolicy spec is described once, as frozen dataclasses whose fields carry a
``Field`` in their metadata (JSON name, description, limits, CEL rules). From that one description
we derive both

* the OpenAPI v3 structural schema of the CRD (``openapi_schema``), and
* the parser that turns the stored object into typed Python values (``parse``),

so the CRD YAML under ``manifests/`` and the operator can never disagree about a field's name,
type or default. ``tests/unit/test_crd_drift.py`` fails if the committed YAML is stale.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    """A CEL rule (``x-kubernetes-validations``) with the message users see when it fails."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def to_openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Field:
    """Schema facts about one dataclass field; see ``spec_field``."""

    json: str
    description: str
    required: bool = False
    enum: tuple[str, ...] = ()
    max_length: int | None = None
    min_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_items: int | None = None
    fmt: str | None = None
    list_map_keys: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


def spec_field(
    json: str,
    description: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    **facts: Any,
) -> Any:
    """Declare a dataclass field together with its schema facts."""
    meta = {"schema": Field(json=json, description=description, **facts)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def object_rules(*rules: Rule) -> Any:
    """Class decorator attaching object-level CEL rules (cross-field checks) to a dataclass."""

    def wrap(cls: type[T]) -> type[T]:
        cls.__cel_rules__ = rules  # type: ignore[attr-defined]
        return cls

    return wrap


def _schema_of(tp: Any, defaults: bool) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _schema_of(inner[0], defaults)
    if origin in (list, tuple):
        return {"type": "array", "items": _schema_of(get_args(tp)[0], defaults)}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if dataclasses.is_dataclass(tp):
        return openapi_schema(tp, defaults=defaults)
    raise TypeError(f"no schema for {tp!r}")


def openapi_schema(cls: type, *, defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a schema dataclass, recursively.

    ``defaults=False`` leaves out ``default`` values: right for status, which only the operator
    writes, where server-side defaulting would only add noise.
    """
    hints = get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        meta: Field = f.metadata["schema"]
        prop = _schema_of(hints[f.name], defaults)
        prop["description"] = meta.description
        if not defaults:
            pass
        elif f.default is not dataclasses.MISSING and not dataclasses.is_dataclass(f.default):
            default = f.default
            if isinstance(default, tuple):
                default = list(default)
            prop["default"] = default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            made = f.default_factory()  # type: ignore[misc]
            # Nested objects default to their fully defaulted form: the API server validates a
            # default against the CEL rules as it stands, without applying nested defaults first.
            prop["default"] = dump(made)
        for key, value in (
            ("enum", list(meta.enum) or None),
            ("maxLength", meta.max_length),
            ("minLength", meta.min_length),
            ("minimum", meta.minimum),
            ("maximum", meta.maximum),
            ("maxItems", meta.max_items),
            ("format", meta.fmt),
        ):
            if value is not None:
                target = prop["items"] if key == "enum" and prop.get("type") == "array" else prop
                target[key] = value
        if meta.list_map_keys:
            prop["x-kubernetes-list-type"] = "map"
            prop["x-kubernetes-list-map-keys"] = list(meta.list_map_keys)
        if meta.rules:
            prop["x-kubernetes-validations"] = [r.to_openapi() for r in meta.rules]
        if meta.required:
            required.append(meta.json)
        props[meta.json] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    rules = getattr(cls, "__cel_rules__", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_openapi() for r in rules]
    return schema


def parse(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Build a schema dataclass from its JSON form; absent fields take their defaults.

    Admission has already validated the object, so this only maps names and types. Unknown keys
    are ignored (the API server prunes them anyway).
    """
    data = data or {}
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        meta: Field = f.metadata["schema"]
        if meta.json not in data or data[meta.json] is None:
            continue
        kwargs[f.name] = _value(hints[f.name], data[meta.json])
    return cls(**kwargs)


def _value(tp: Any, raw: Any) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
        origin = get_origin(tp)
    if origin in (list, tuple):
        item = get_args(tp)[0]
        return tuple(_value(item, x) for x in raw)
    if dataclasses.is_dataclass(tp):
        return parse(tp, raw)  # type: ignore[arg-type]
    if tp is float:
        return float(raw)
    return raw


def dump(obj: Any) -> Any:
    """The JSON form of a schema dataclass (inverse of ``parse``)."""
    if dataclasses.is_dataclass(obj):
        return {
            f.metadata["schema"].json: dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)
        }
    if isinstance(obj, tuple | list):
        return [dump(x) for x in obj]
    return obj
