"""Whether two schemas can share a value: oneOf is only enforceable when its branches cannot.

A union grammar ensures a value matches "at least one" branch; oneOf asks for exactly one, so
nexa.structured.schema accepts a oneOf only when `excludes` proves each pair of branches apart
(by type, by const/enum values, or by a required property one has and the other forbids).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Resolve = Callable[[str], Any]  # a local $ref -> the schema it points at


def excludes(a: Any, c: Any, resolve: Resolve) -> bool:
    """True when no value our grammar writes for `a` can validate against `c`."""
    ka, kc = _kinds(a, resolve), _kinds(c, resolve)
    if ka is not None and kc is not None:
        # A number we write may be whole (3), and a whole number is also a "number".
        ka = ka | ({"integer"} if "number" in ka else set())
        kc = kc | ({"integer"} if "number" in kc else set())
        if not ka & kc:
            return True
    sa, sc = _deref(a, resolve), _deref(c, resolve)
    if not (isinstance(sa, dict) and isinstance(sc, dict)):
        return False
    va, vc = values_of(sa), values_of(sc)
    if va is not None and vc is not None:
        return not any(json_equal(x, y) for x in va for y in vc)
    pa, pc = sa.get("properties"), sc.get("properties")
    if not (isinstance(pa, dict) and isinstance(pc, dict)):
        return False
    req_a, req_c = set(sa.get("required") or []), set(sc.get("required") or [])
    if req_c - set(pa) - req_a:
        return True  # c requires a key that a's grammar never writes
    if sc.get("additionalProperties") is False and req_a - set(pc):
        return True  # a always writes a key that c forbids
    return any(excludes(pa[k], pc[k], resolve) for k in req_a & set(pa) & set(pc))


def _deref(schema: Any, resolve: Resolve) -> Any:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        schema = resolve(schema["$ref"])
        seen += 1
    if isinstance(schema, dict) and isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
        return _deref(schema["allOf"][0], resolve)
    return schema


def _kinds(schema: Any, resolve: Resolve) -> set[str] | None:
    """JSON types of the values our grammar writes for `schema` (None: not known)."""
    s = _deref(schema, resolve)
    if not isinstance(s, dict):
        return None
    values = values_of(s)
    if values is not None:
        return {json_type(v) for v in values}
    if "anyOf" in s or "oneOf" in s:
        kinds: set[str] = set()
        for sub in s.get("anyOf") or s.get("oneOf") or []:
            k = _kinds(sub, resolve)
            if k is None:
                return None
            kinds |= k
        return kinds
    t = s.get("type")
    if t is None:
        return None
    return set(t) if isinstance(t, list) else {t}


# -- JSON values ---------------------------------------------------------------------------


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def has_type(v: Any, types: list[str]) -> bool:
    t = json_type(v)
    return t in types or (t == "integer" and "number" in types)


def json_equal(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and json_type(a) == json_type(b)


def values_of(s: dict[str, Any]) -> list[Any] | None:
    """The values a const/enum schema allows (None when it has neither)."""
    if "const" in s:
        return [s["const"]]
    if isinstance(s.get("enum"), list):
        return s["enum"]
    return None
