"""Validate a ClusterEncryptionPolicy the way the API server's admission would, without an API server.

``aks-kms-operator plan -f policy.yaml`` must refuse a file the cluster would refuse, with the same
message (naming the field and the fix), before it reads anything. The rules are the CRD's own: the
structural schema rendered from ``v1alpha1`` (types, enums, limits, required fields, unknown fields)
and its CEL rules, evaluated by the small interpreter below. It covers the subset of CEL the CRD
uses (field selection, comparisons, ``&&``/``||``/``!``, ``matches``, ``oldSelf``) and raises
``CelUnsupported`` for anything else, so a rule added later with other CEL fails the unit test that
evaluates every rule of the CRD, instead of being silently skipped here.

Defaults are applied before the CEL rules, as the API server does.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import v1alpha1 as api
from .crd import render


@dataclass(frozen=True)
class Problem:
    """One reason the API server would refuse the object: the field path and the message (with the fix)."""

    field: str
    message: str

    def __str__(self) -> str:
        return self.message if self.message.startswith(self.field) else f"{self.field}: {self.message}"


class CelUnsupported(ValueError):
    """A CEL expression outside the subset this module evaluates."""


# ------------------------------------------------------------------------------ a tiny CEL subset

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>r?'(?:[^'\\]|\\.)*')
    | (?P<num>\d+(?:\.\d+)?)
    | (?P<op>==|!=|>=|<=|&&|\|\||[<>!().,])
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""", re.VERBOSE)

_ABSENT = object()


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise CelUnsupported(f"cannot read CEL at {expr[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Cel:
    """Recursive descent over the token list; evaluates while it parses (the rules are tiny)."""

    def __init__(self, expr: str, scope: Mapping[str, Any]) -> None:
        self.toks = _tokens(expr)
        self.i = 0
        self.scope = scope

    def peek(self) -> str:
        return self.toks[self.i][1] if self.i < len(self.toks) else ""

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise CelUnsupported("unexpected end of CEL expression")
        tok = self.toks[self.i]
        if want is not None and tok[1] != want:
            raise CelUnsupported(f"expected {want!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def run(self) -> bool:
        value = self.or_()
        if self.i != len(self.toks):
            raise CelUnsupported(f"unexpected {self.peek()!r}")
        return bool(value)

    # CEL evaluates && and || commutatively (an error on one side is absorbed by the other); these
    # rules never error, so plain short-circuiting gives the same answers.
    def or_(self) -> Any:
        value = self.and_()
        while self.peek() == "||":
            self.take()
            right = self.and_()
            value = bool(value) or bool(right)
        return value

    def and_(self) -> Any:
        value = self.rel()
        while self.peek() == "&&":
            self.take()
            right = self.rel()
            value = bool(value) and bool(right)
        return value

    def rel(self) -> Any:
        left = self.unary()
        op = self.peek()
        if op in ("==", "!=", ">=", "<=", ">", "<"):
            self.take()
            right = self.unary()
            return {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b,
                    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}[op](left, right)
        return left

    def unary(self) -> Any:
        if self.peek() == "!":
            self.take()
            return not self.unary()
        return self.postfix()

    def postfix(self) -> Any:
        value = self.primary()
        while self.peek() == ".":
            self.take()
            _, name = self.take()
            if self.peek() == "(":
                self.take("(")
                arg = self.or_()
                self.take(")")
                if name != "matches":
                    raise CelUnsupported(f"CEL function {name}() is not supported here")
                value = re.search(str(arg), str(value)) is not None  # CEL matches: RE2, unanchored
            else:
                if not isinstance(value, Mapping):
                    raise CelUnsupported(f"cannot select {name} from {type(value).__name__}")
                value = value.get(name, _ABSENT)
                if value is _ABSENT:
                    raise CelUnsupported(f"no field {name}")
        return value

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            raw = text.startswith("r")
            body = text[2:-1] if raw else text[1:-1]
            return body if raw else re.sub(r"\\(.)", r"\1", body)
        if kind == "num":
            return float(text) if "." in text else int(text)
        if text == "(":
            value = self.or_()
            self.take(")")
            return value
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text in self.scope:
                return self.scope[text]
        raise CelUnsupported(f"unknown CEL name {text!r}")


def cel(expr: str, self_value: Any, old_value: Any = _ABSENT) -> bool:
    """Evaluate one CRD rule. ``old_value`` absent: a transition rule (``oldSelf``) cannot apply."""
    scope: dict[str, Any] = {"self": self_value}
    if old_value is not _ABSENT:
        scope["oldSelf"] = old_value
    return _Cel(expr, scope).run()


# ----------------------------------------------------------------------------- schema validation


def spec_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema of spec, exactly as rendered into manifests/crd."""
    return render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Structural defaulting: absent properties with a default get it, recursively."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for name, prop in (schema.get("properties") or {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = apply_defaults(prop, out[name])
    return out


_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "boolean": (bool,), "integer": (int,),
                                       "number": (int, float), "object": (dict,), "array": (list,)}
_SHOWN = {"string": "a string", "boolean": "true or false", "integer": "an integer", "number": "a number",
          "object": "an object", "array": "a list"}


def _type_ok(kind: str, value: Any) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES.get(kind, (object,)))


def _close(name: str, known: list[str]) -> str:
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return f" (did you mean {lowered[name.lower()]}?)"
    return f" (known fields: {', '.join(known)})"


def _walk(schema: Mapping[str, Any], value: Any, path: str, old: Any, out: list[Problem]) -> None:
    kind = schema.get("type", "")
    if not _type_ok(kind, value):
        out.append(Problem(path, f"{path} must be {_SHOWN.get(kind, kind)}, got {value!r}"))
        return
    if kind == "object":
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                out.append(Problem(f"{path}.{name}", f"{path}.{name} is required"))
        for name, item in value.items():
            sub = props.get(name)
            if sub is None:
                out.append(Problem(f"{path}.{name}", f"{path}.{name} is not a field of the "
                                                     f"ClusterEncryptionPolicy API{_close(name, list(props))}"))
                continue
            old_item = old.get(name, _ABSENT) if isinstance(old, Mapping) else _ABSENT
            _walk(sub, item, f"{path}.{name}", old_item, out)
    elif kind == "array":
        if schema.get("maxItems") is not None and len(value) > schema["maxItems"]:
            out.append(Problem(path, f"{path} may have at most {schema['maxItems']} item(s)"))
        for i, item in enumerate(value):
            _walk(schema.get("items") or {}, item, f"{path}[{i}]", _ABSENT, out)
    else:
        if "enum" in schema and value not in schema["enum"]:
            out.append(Problem(path, f"{path} must be one of {', '.join(map(str, schema['enum']))}, got {value!r}"))
        if kind == "string":
            if schema.get("maxLength") is not None and len(value) > schema["maxLength"]:
                out.append(Problem(path, f"{path} may be at most {schema['maxLength']} characters long"))
            if schema.get("minLength") is not None and len(value) < schema["minLength"]:
                out.append(Problem(path, f"{path} must be at least {schema['minLength']} characters long"))
        if kind in ("integer", "number"):
            if schema.get("minimum") is not None and value < schema["minimum"]:
                out.append(Problem(path, f"{path} must be at least {schema['minimum']}"))
            if schema.get("maximum") is not None and value > schema["maximum"]:
                out.append(Problem(path, f"{path} must be at most {schema['maximum']}"))
    if any(p.field.startswith(path) for p in out):
        return  # like the API server: CEL rules run only on values that passed the structural checks
    for rule in schema.get("x-kubernetes-validations") or []:
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is _ABSENT:
            continue  # a transition rule: only on update, against the stored object
        if not cel(rule["rule"], value, old if uses_old else _ABSENT):
            where = path + (rule.get("fieldPath") or "")
            out.append(Problem(where, rule["message"]))


def validate_spec(spec: Any, *, old_spec: Mapping[str, Any] | None = None) -> list[Problem]:
    """Problems with ``spec`` (the object's ``spec`` as read from YAML). ``old_spec``: the stored spec
    of the same policy, for the transition rules (spec.cluster is immutable)."""
    schema = spec_schema()
    out: list[Problem] = []
    if not isinstance(spec, dict):
        return [Problem("spec", "spec is required: the encryption the cluster should have (spec.cluster, spec.kms)")]
    value = apply_defaults(schema, spec)
    old = apply_defaults(schema, dict(old_spec)) if old_spec is not None else _ABSENT
    _walk(schema, value, "spec", old, out)
    return out


def validate_policy(obj: Any, *, old_spec: Mapping[str, Any] | None = None) -> list[Problem]:
    """Problems with a whole ClusterEncryptionPolicy object (apiVersion, kind, metadata.name, spec)."""
    if not isinstance(obj, dict):
        return [Problem("(document)", "(document): expected a ClusterEncryptionPolicy object, got "
                                      f"{type(obj).__name__}")]
    out: list[Problem] = []
    if obj.get("apiVersion") != api.API_VERSION:
        out.append(Problem("apiVersion", f"apiVersion must be {api.API_VERSION}, got {obj.get('apiVersion')!r}"))
    if obj.get("kind") != api.KIND:
        out.append(Problem("kind", f"kind must be {api.KIND}, got {obj.get('kind')!r}"))
    name = (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
    if not name or not isinstance(name, str):
        out.append(Problem("metadata.name", "metadata.name is required: name the policy (usually default)"))
    elif not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name) or len(name) > 253:
        out.append(Problem("metadata.name", f"metadata.name {name!r} must be a lowercase DNS subdomain name "
                                            "(letters, digits, '-' and '.')"))
    return out + validate_spec(obj.get("spec"), old_spec=old_spec)
