"""JSON schema -> GBNF, so that a llama.cpp model can only write JSON that validates.

Why our own converter rather than llama-cpp-python's `json_schema_to_gbnf`: that one lets raw
control characters into strings (invalid JSON), ignores minimum/maximum, allows February 31st,
puts no bound on string lengths, array sizes or number digits (a small model can then ramble
until max_tokens and leave cut-off JSON), skips keywords it does not know and asserts instead of
raising. Here every value the grammar allows is bounded, so generation always ends, and a
validation keyword that cannot be enforced is a 400 that names it, never a silent pass.

Where a schema leaves a size open (a string without maxLength, an array without maxItems, an
open object, recursion through $ref) the grammar picks a bound from `Limits`: the output is
then a valid instance that is merely shorter than the schema would allow.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nexa.engines.gbnf import (
    Pattern,
    decimal_alternatives,
    integer_alternatives,
    json_literal,
    render_alternatives,
    repeat,
    separated,
)
from nexa.errors import InvalidRequest


@dataclass(frozen=True)
class Limits:
    """Bounds the grammar puts where the schema gives none (see the module docstring)."""

    max_string: int = 200  # characters in a string without maxLength
    max_items: int = 16  # items in an array without maxItems
    max_properties: int = 16  # members of an open object (a map, or free-form JSON)
    max_depth: int = 3  # nesting of free-form JSON values
    max_recursion: int = 3  # times one $ref may re-enter itself
    max_int_digits: int = 15  # digits of an unbounded integer (stays exact as a float)
    max_fraction_digits: int = 6  # digits after the point of a number
    max_pattern_repeat: int = 16  # repeats of `*`, `+` or `{n,}` in a pattern without maxLength
    max_key: int = 32  # characters in a key of an open object


LIMITS = Limits()

# Keywords that say nothing about validity: accepted and ignored. (`discriminator` is OpenAPI's
# hint, checked through oneOf itself; `nullable` is OpenAPI's too, and validators ignore it.)
ANNOTATIONS = frozenset(
    "title description default examples example $comment deprecated readOnly writeOnly $schema $id $anchor "
    "$defs definitions contentMediaType contentEncoding contentSchema discriminator nullable".split()
)
# JSON Schema validation keywords this converter cannot enforce in general: a 400 names them.
UNSUPPORTED = frozenset(
    "not if then else patternProperties propertyNames dependentRequired dependentSchemas dependencies "
    "contains minContains maxContains unevaluatedProperties unevaluatedItems $dynamicRef $recursiveRef".split()
)
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
FORMATS = ("date", "time", "date-time", "uuid", "email", "ipv4")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

WS = '" "?'  # at most one space between tokens: a model cannot spin on whitespace

# One character inside a JSON string: anything but a quote, a backslash or a control character,
# or a short escape. (No \u escapes: they would let a model write lone surrogates.)
CHAR = r'[^"\\\x00-\x1F] | "\\" ["\\/bfnrt]'

_DATE = (
    '[1-9] [0-9]{3} "-" ( ("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
    ' | ("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30")'
    ' | "02" "-" ("0" [1-9] | "1" [0-9] | "2" [0-8]) )'
)
_TIME = (
    '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})?'
    ' ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])'
)
_FORMAT_RULES = {
    "date": f'"\\"" {_DATE} "\\""',
    "time": f'"\\"" {_TIME} "\\""',
    "date-time": f'"\\"" {_DATE} "T" {_TIME} "\\""',
    "uuid": '"\\"" [0-9a-f]{8} "-" [0-9a-f]{4} "-" [1-5] [0-9a-f]{3} "-" [89ab] [0-9a-f]{3} "-" [0-9a-f]{12} "\\""',
    "email": '"\\"" [a-zA-Z0-9._+-]{1,32} "@" [a-zA-Z0-9]{1,32} ("." [a-zA-Z0-9]{1,32}){0,2} "." [a-zA-Z]{2,8} "\\""',
    "ipv4": '"\\"" octet "." octet "." octet "." octet "\\""',
}


def schema_error(param: str, ptr: str, what: str) -> InvalidRequest:
    where = f"{param} at {ptr}" if ptr != "#" else param
    return InvalidRequest(f"Invalid or unsupported JSON schema in {where}: {what}", param=param)


# -- the grammar ---------------------------------------------------------------------------


class GrammarBuilder:
    """Collects GBNF rules; `schema()` adds the rules of one JSON schema and returns its name.

    Several schemas (the arguments of each tool, a response format) can share one builder,
    so one grammar can offer a choice between them.
    """

    def __init__(self, limits: Limits = LIMITS):
        self.limits = limits
        self.rules: dict[str, str] = {"ws": WS, "char": CHAR}
        self._by_body: dict[str, str] = {}
        self._counter = 0

    def rule(self, hint: str, body: str) -> str:
        """Add a rule (or reuse an identical one) and return its name."""
        if body in self._by_body:
            return self._by_body[body]
        self._counter += 1
        name = f"{re.sub(r'[^a-zA-Z0-9]+', '-', hint).strip('-').lower()[:24] or 'r'}-{self._counter}"
        self.rules[name] = body
        self._by_body[body] = name
        return name

    def named(self, name: str, body: str) -> str:
        """A rule with a fixed name (used for shared pieces such as `octet`)."""
        self.rules.setdefault(name, body)
        return name

    def render(self, root_body: str) -> str:
        lines = [f"root ::= {root_body}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    # free-form pieces

    def string(self, min_len: int = 0, max_len: int | None = None) -> str:
        max_len = self.limits.max_string if max_len is None else max_len
        return self.rule("string", f'"\\"" {repeat("char", min_len, max_len)} "\\""')

    def number(self) -> str:
        d, f = self.limits.max_int_digits, self.limits.max_fraction_digits
        return self.rule("number", f'"-"? ("0" | [1-9] [0-9]{{0,{d - 1}}}) ("." [0-9]{{1,{f}}})?')

    def integer(self) -> str:
        d = self.limits.max_int_digits
        return self.rule("integer", f'"-"? ("0" | [1-9] [0-9]{{0,{d - 1}}})')

    def any_value(self, depth: int | None = None) -> str:
        """Free-form JSON nested at most `depth` levels."""
        depth = self.limits.max_depth if depth is None else depth
        scalars = f'{self.string()} | {self.number()} | "true" | "false" | "null"'
        if depth <= 0:
            return self.rule("value", scalars)
        inner = self.any_value(depth - 1)
        return self.rule("value", f"{self.any_object(depth, inner)} | {self.any_array(inner)} | {scalars}")

    def any_object(self, depth: int | None = None, value: str | None = None) -> str:
        depth = self.limits.max_depth if depth is None else depth
        value = value or self.any_value(depth - 1)
        key = self.string(1, self.limits.max_key)
        return self.object_of(key, value, 0, self.limits.max_properties)

    def any_array(self, item: str) -> str:
        return self.array_of(item, 0, self.limits.max_items)

    def object_of(self, key: str, value: str, lo: int, hi: int) -> str:
        kv = self.rule("member", f'{key} ws ":" ws {value}')
        return self.rule("object", f'"{{" ws {separated(kv, lo, hi)} ws "}}"')

    def array_of(self, item: str, lo: int, hi: int) -> str:
        return self.rule("array", f'"[" ws {separated(item, lo, hi)} ws "]"')

    # schemas

    def schema(self, schema: Any, param: str) -> str:
        """Add the rules for one JSON schema; raises InvalidRequest (400) naming `param`."""
        rule = _SchemaCompiler(self, schema, param).compile()
        if rule is None:
            raise schema_error(param, "#", "no value can satisfy it within the server's size limits.")
        return rule


def schema_grammar(schema: Any, param: str, limits: Limits = LIMITS) -> str:
    """The whole grammar for one JSON value that satisfies `schema`."""
    b = GrammarBuilder(limits)
    return b.render(b.schema(schema, param))


def json_object_grammar(limits: Limits = LIMITS) -> str:
    """Any JSON object (OpenAI's `json_object` mode), bounded like the rest."""
    b = GrammarBuilder(limits)
    return b.render(b.any_object())


class _SchemaCompiler:
    def __init__(self, builder: GrammarBuilder, root: Any, param: str):
        self.b = builder
        self.limits = builder.limits
        self.root = root
        self.param = param
        self._refs: dict[tuple[str, tuple[tuple[str, int], ...]], str | None] = {}
        self._stack: list[str] = []

    def error(self, ptr: str, what: str) -> InvalidRequest:
        return schema_error(self.param, ptr, what)

    def compile(self) -> str | None:
        return self.visit(self.root, "#")

    # --- dispatch

    def visit(self, schema: Any, ptr: str) -> str | None:
        """The rule for values of `schema`, or None when none fits within the limits."""
        if schema is True:
            return self.b.any_value()
        if schema is False:
            return None
        if not isinstance(schema, dict):
            raise self.error(ptr, f"a schema must be an object or a boolean, got {json.dumps(schema)[:60]}.")
        for key in schema:
            if key in UNSUPPORTED:
                raise self.error(ptr, f"the keyword '{key}' cannot be enforced by this server; remove it.")
        constraints = {k: v for k, v in schema.items() if k not in ANNOTATIONS}
        if not constraints:
            return self.b.any_value()
        if "$ref" in constraints:
            return self._ref(constraints, ptr)
        if "allOf" in constraints:
            return self._all_of(constraints, ptr)
        if "anyOf" in constraints or "oneOf" in constraints:
            return self._union(constraints, ptr)
        if "const" in constraints or "enum" in constraints:
            return self._enum(constraints, ptr)
        types = self._types(constraints, ptr)
        alts = [r for r in (self._typed(t, constraints, ptr) for t in types) if r is not None]
        if not alts:
            return None
        return alts[0] if len(alts) == 1 else self.b.rule("union", " | ".join(alts))

    def _only(self, schema: dict[str, Any], allowed: set[str], ptr: str, why: str) -> None:
        extra = sorted(set(schema) - allowed)
        if extra:
            raise self.error(ptr, f"'{extra[0]}' next to {why} cannot be enforced; move it into the subschemas.")

    # --- composition

    def _ref(self, schema: dict[str, Any], ptr: str) -> str | None:
        self._only(schema, {"$ref"}, ptr, "$ref")
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.error(
                ptr, f"$ref {ref!r} is not local: only references inside the schema (#/...) are followed, never URLs."
            )
        target = self.resolve(ref, ptr)
        depth = self._stack.count(ref)
        if depth >= self.limits.max_recursion:
            return None  # recursion bottoms out here: the caller drops this branch
        key = (ref, tuple(sorted((r, self._stack.count(r)) for r in set(self._stack))))
        if key in self._refs:
            return self._refs[key]
        self._stack.append(ref)
        try:
            rule = self.visit(target, ref)
        finally:
            self._stack.pop()
        self._refs[key] = rule
        return rule

    def resolve(self, ref: str, ptr: str) -> Any:
        node = self.root
        if ref in ("#", "#/"):
            return node
        if not ref.startswith("#/"):
            raise self.error(ptr, f"$ref {ref!r}: only JSON pointers (#/$defs/Name) are supported.")
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise self.error(ptr, f"$ref {ref!r} points at nothing in the schema.")
        return node

    def _all_of(self, schema: dict[str, Any], ptr: str) -> str | None:
        subs = schema["allOf"]
        if not isinstance(subs, list) or not subs:
            raise self.error(ptr, "allOf must be a non-empty list of schemas.")
        if len(subs) > 1:
            raise self.error(ptr, "allOf with more than one schema cannot be enforced; merge them into one schema.")
        self._only(schema, {"allOf"}, ptr, "allOf")
        return self.visit(subs[0], f"{ptr}/allOf/0")

    def _union(self, schema: dict[str, Any], ptr: str) -> str | None:
        key = "anyOf" if "anyOf" in schema else "oneOf"
        self._only(schema, {key}, ptr, key)
        subs = schema[key]
        if not isinstance(subs, list) or not subs:
            raise self.error(ptr, f"{key} must be a non-empty list of schemas.")
        if key == "oneOf":
            # A value must match exactly one branch; a union grammar only ensures "at least one",
            # so the branches must exclude each other.
            for i, a in enumerate(subs):
                for j, c in enumerate(subs):
                    if i != j and not self._excludes(a, c):
                        raise self.error(
                            f"{ptr}/oneOf",
                            f"branches {i} and {j} may both match one value, which oneOf forbids; use anyOf, "
                            f"or make them differ by type or by a required const property.",
                        )
        alts = [r for r in (self.visit(s, f"{ptr}/{key}/{i}") for i, s in enumerate(subs)) if r is not None]
        if not alts:
            return None
        return alts[0] if len(alts) == 1 else self.b.rule(key, " | ".join(alts))

    def _deref(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            schema = self.resolve(schema["$ref"], "#")
            seen += 1
        if isinstance(schema, dict) and isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
            return self._deref(schema["allOf"][0])
        return schema

    def _kinds(self, schema: Any) -> set[str] | None:
        """JSON types of the values our grammar writes for `schema` (None: not known)."""
        s = self._deref(schema)
        if not isinstance(s, dict):
            return None
        values = _values(s)
        if values is not None:
            return {_json_type(v) for v in values}
        if "anyOf" in s or "oneOf" in s:
            kinds: set[str] = set()
            for sub in s.get("anyOf") or s.get("oneOf") or []:
                k = self._kinds(sub)
                if k is None:
                    return None
                kinds |= k
            return kinds
        t = s.get("type")
        if t is None:
            return None
        return set(t) if isinstance(t, list) else {t}

    def _excludes(self, a: Any, c: Any) -> bool:
        """True when no value our grammar writes for `a` can validate against `c`."""
        ka, kc = self._kinds(a), self._kinds(c)
        if ka is not None and kc is not None:
            # A number we write may be whole (3), and a whole number is also a "number".
            ka = ka | ({"integer"} if "number" in ka else set())
            kc = kc | ({"integer"} if "number" in kc else set())
            if not ka & kc:
                return True
        sa, sc = self._deref(a), self._deref(c)
        if not (isinstance(sa, dict) and isinstance(sc, dict)):
            return False
        va, vc = _values(sa), _values(sc)
        if va is not None and vc is not None:
            return not any(_json_equal(x, y) for x in va for y in vc)
        pa, pc = sa.get("properties"), sc.get("properties")
        if not (isinstance(pa, dict) and isinstance(pc, dict)):
            return False
        req_a, req_c = set(sa.get("required") or []), set(sc.get("required") or [])
        if req_c - set(pa) - req_a:
            return True  # c requires a key that a's grammar never writes
        if sc.get("additionalProperties") is False and req_a - set(pc):
            return True  # a always writes a key that c forbids
        return any(self._excludes(pa[k], pc[k]) for k in req_a & set(pa) & set(pc))

    def _enum(self, schema: dict[str, Any], ptr: str) -> str | None:
        self._only(schema, {"const", "enum", "type"}, ptr, "const/enum")
        if "const" in schema:
            values = [schema["const"]]
        else:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.error(ptr, "enum must be a non-empty list.")
            if "const" in schema:
                values = [v for v in values if _json_equal(v, schema["const"])]
        if "type" in schema:
            types = self._types(schema, ptr)
            bad = [v for v in values if not _has_type(v, types)]
            if bad:
                raise self.error(ptr, f"the value {json.dumps(bad[0])} is not of type {schema['type']!r}.")
        return self.b.rule("enum", " | ".join(json_literal(v) for v in values))

    # --- types

    def _types(self, schema: dict[str, Any], ptr: str) -> list[str]:
        t = schema.get("type")
        if t is None:
            inferred = [
                kind
                for kind, keys in (
                    ("object", ("properties", "required", "additionalProperties", "minProperties", "maxProperties")),
                    ("array", ("items", "prefixItems", "minItems", "maxItems", "uniqueItems")),
                    ("string", ("minLength", "maxLength", "pattern", "format")),
                    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")),
                )
                if any(k in schema for k in keys)
            ]
            return inferred or list(TYPES)
        types = t if isinstance(t, list) else [t]
        for x in types:
            if x not in TYPES:
                raise self.error(ptr, f"unknown type {x!r} (one of: {', '.join(TYPES)}).")
        if not types:
            raise self.error(ptr, "type must not be an empty list.")
        return list(dict.fromkeys(types))

    def _typed(self, t: str, s: dict[str, Any], ptr: str) -> str | None:
        if t == "null":
            return self.b.rule("null", '"null"')
        if t == "boolean":
            return self.b.rule("boolean", '"true" | "false"')
        if t == "integer":
            return self._integer(s, ptr)
        if t == "number":
            return self._number(s, ptr)
        if t == "string":
            return self._string(s, ptr)
        if t == "array":
            return self._array(s, ptr)
        return self._object(s, ptr)

    def _count(self, s: dict[str, Any], key: str, ptr: str) -> int | None:
        v = s.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v != int(v):
            raise self.error(f"{ptr}/{key}", f"{key} must be a non-negative integer.")
        return int(v)

    def _bounds(self, s: dict[str, Any], ptr: str) -> tuple[Fraction | None, bool, Fraction | None, bool]:
        def num(key: str) -> Fraction | None:
            v = s.get(key)
            if v is None or isinstance(v, bool) and key.startswith("exclusive"):
                return None
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise self.error(f"{ptr}/{key}", f"{key} must be a finite number.")
            return Fraction(v)

        lo, hi = num("minimum"), num("maximum")
        lo_x, hi_x = False, False
        # Draft 6+: exclusiveMinimum is a number; draft 4: a boolean that modifies minimum.
        if s.get("exclusiveMinimum") is True:
            lo_x = lo is not None
        elif (x := num("exclusiveMinimum")) is not None and (lo is None or x >= lo):
            lo, lo_x = x, True
        if s.get("exclusiveMaximum") is True:
            hi_x = hi is not None
        elif (x := num("exclusiveMaximum")) is not None and (hi is None or x <= hi):
            hi, hi_x = x, True
        if "multipleOf" in s:
            m = s["multipleOf"]
            if not (s.get("type") == "integer" and m == 1):
                raise self.error(f"{ptr}/multipleOf", "the keyword 'multipleOf' cannot be enforced by this server.")
        return lo, lo_x, hi, hi_x

    def _integer(self, s: dict[str, Any], ptr: str) -> str | None:
        lo, lo_x, hi, hi_x = self._bounds(s, ptr)
        if lo is None and hi is None:
            return self.b.integer()
        cap = 10**self.limits.max_int_digits - 1
        ilo = -cap if lo is None else (math.floor(lo) + 1 if lo_x else math.ceil(lo))
        ihi = cap if hi is None else (math.ceil(hi) - 1 if hi_x else math.floor(hi))
        if lo is None:
            ilo = min(ilo, ihi)
        if hi is None:
            ihi = max(ihi, ilo)
        if ilo > ihi:
            raise self.error(ptr, "no integer lies between its minimum and maximum.")
        return self.b.rule("integer", render_alternatives(integer_alternatives(ilo, ihi)))

    def _number(self, s: dict[str, Any], ptr: str) -> str | None:
        lo, lo_x, hi, hi_x = self._bounds(s, ptr)
        if lo is None and hi is None:
            return self.b.number()
        cap = Fraction(10**self.limits.max_int_digits - 1)
        flo = -cap if lo is None else lo
        fhi = cap if hi is None else hi
        if lo is None:
            flo = min(flo, fhi)
        if hi is None:
            fhi = max(fhi, flo)
        alts: list[list[str]] = []
        # Whole numbers and up to two decimals; more decimals only for a range too narrow for those.
        for places in range(self.limits.max_fraction_digits + 1):
            if places > 2 and alts:
                break
            a, c = self._exact(flo, lo_x, places, up=True), self._exact(fhi, hi_x, places, up=False)
            if a <= c:
                alts += decimal_alternatives(a, c, places) if places else integer_alternatives(int(a), int(c))
        if not alts:
            raise self.error(ptr, "no number with at most 6 decimals lies between its minimum and maximum.")
        return self.b.rule("number", render_alternatives(alts))

    @staticmethod
    def _exact(bound: Fraction, exclusive: bool, places: int, up: bool) -> Fraction:
        """The first value on the grid of `places` decimals inside the bound (from below when
        `up`), checked against the bound as a float, since that is how validators compare."""
        scale = 10**places
        m = math.ceil(bound * scale) if up else math.floor(bound * scale)
        step = 1 if up else -1

        def inside(m: int) -> bool:
            v, f = float(Fraction(m, scale)), float(bound)
            if up:
                return v > f if exclusive else v >= f
            return v < f if exclusive else v <= f

        while not inside(m):
            m += step
        return Fraction(m, scale)

    def _string(self, s: dict[str, Any], ptr: str) -> str | None:
        lo = self._count(s, "minLength", ptr) or 0
        hi = self._count(s, "maxLength", ptr)
        if hi is not None and hi < lo:
            raise self.error(ptr, "maxLength is smaller than minLength.")
        fmt = s.get("format")
        if fmt is not None:
            if fmt not in _FORMAT_RULES:
                raise self.error(
                    f"{ptr}/format", f"the format {fmt!r} cannot be enforced (supported: {', '.join(FORMATS)})."
                )
            if "pattern" in s or "minLength" in s or "maxLength" in s:
                raise self.error(ptr, "format combined with pattern/minLength/maxLength cannot be enforced.")
            if fmt == "ipv4":
                self.b.named("octet", render_alternatives(integer_alternatives(0, 255)))
            return self.b.rule(fmt, _FORMAT_RULES[fmt])
        if "pattern" in s:
            return self._pattern(s["pattern"], lo, hi, f"{ptr}/pattern")
        # Shorter than a large maxLength is still valid; the bound keeps the grammar small.
        hi = max(lo, self.limits.max_string) if hi is None else min(hi, max(lo, self.limits.max_string))
        return self.b.string(lo, hi)

    def _pattern(self, pattern: Any, lo: int, hi: int | None, ptr: str) -> str:
        if not isinstance(pattern, str):
            raise self.error(ptr, "pattern must be a string.")
        conv = Pattern(pattern, lambda what: self.error(ptr, f"pattern {pattern!r}: {what}"))
        cap = self.limits.max_pattern_repeat
        if hi is not None:
            # The largest repeat bound that keeps every match within maxLength.
            if conv.width(0)[1] > hi:
                raise conv.fail(f"its matches can be longer than maxLength {hi}.")
            low, high = 0, max(hi, 0)
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if conv.width(mid)[1] <= hi else (low, mid - 1)
            cap = low
        if conv.width(cap)[0] < lo:
            raise conv.fail(f"its matches can be shorter than minLength {lo}.")
        return self.b.rule("pattern", f'"\\"" {conv.gbnf(cap)} "\\""')

    def _array(self, s: dict[str, Any], ptr: str) -> str | None:
        lo = self._count(s, "minItems", ptr) or 0
        hi = self._count(s, "maxItems", ptr)
        if hi is not None and hi < lo:
            raise self.error(ptr, "maxItems is smaller than minItems.")
        if s.get("uniqueItems") is True and (hi is None or hi > 1):
            raise self.error(f"{ptr}/uniqueItems", "uniqueItems cannot be enforced; remove it or set maxItems to 1.")
        items = s.get("items", True)
        prefix = s.get("prefixItems")
        if isinstance(items, list):  # draft 7 tuple form
            prefix, items = items, s.get("additionalItems", True)
        if prefix is not None:
            if not isinstance(prefix, list):
                raise self.error(ptr, "prefixItems must be a list of schemas.")
            n = len(prefix)
            if lo > n or (hi is not None and hi < n):
                raise self.error(ptr, "minItems/maxItems that differ from the tuple's length cannot be enforced.")
            rules = [self.visit(p, f"{ptr}/prefixItems/{i}") for i, p in enumerate(prefix)]
            if any(r is None for r in rules):
                return None
            body = ' "," ws '.join(r for r in rules if r)
            return self.b.rule("tuple", f'"[" ws {body or chr(34) * 2} ws "]"')
        item = self.visit(items, f"{ptr}/items")
        if item is None:
            return None if lo > 0 else self.b.rule("array", '"[" ws "]"')
        if hi is None:
            hi = max(lo, self.limits.max_items)
        hi = min(hi, max(lo, self.limits.max_items))  # fewer than maxItems is still valid
        return self.b.array_of(item, lo, hi)

    def _object(self, s: dict[str, Any], ptr: str) -> str | None:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise self.error(ptr, "properties must be an object.")
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.error(f"{ptr}/required", "required must be a list of property names.")
        extra = s.get("additionalProperties", True)
        if not isinstance(extra, bool | dict):
            raise self.error(f"{ptr}/additionalProperties", "additionalProperties must be a boolean or a schema.")
        min_p = self._count(s, "minProperties", ptr) or 0
        max_p = self._count(s, "maxProperties", ptr)

        if not props and not required:
            if extra is False:
                if min_p:
                    raise self.error(ptr, "minProperties cannot be met when no property is allowed.")
                return self.b.rule("object", '"{" ws "}"')
            value = self.b.any_value(self.limits.max_depth - 1) if extra is True else self.visit(extra, ptr)
            if value is None:
                return None if min_p else self.b.rule("object", '"{" ws "}"')
            hi = min(max_p if max_p is not None else self.limits.max_properties, max(min_p, self.limits.max_properties))
            if hi < min_p:
                raise self.error(ptr, "maxProperties is smaller than minProperties.")
            key = self.b.string(1, self.limits.max_key)
            # Duplicate keys would still validate: every value satisfies the same schema.
            return self.b.object_of(key, value, min_p, hi)

        entries: list[tuple[str, str, bool]] = []  # (key, value rule, required)
        for key, sub in props.items():
            rule = self.visit(sub, f"{ptr}/properties/{_escape_ptr(key)}")
            if rule is None:
                if key in required:
                    return None
                continue
            entries.append((key, rule, key in required))
        for key in required:
            if key not in props:
                if extra is False:
                    raise self.error(ptr, f"'{key}' is required but additionalProperties is false.")
                rule = self.b.any_value(self.limits.max_depth - 1) if extra is True else self.visit(extra, ptr)
                if rule is None:
                    return None
                entries.append((key, rule, True))
        n_req = sum(1 for e in entries if e[2])
        if min_p > n_req:
            raise self.error(ptr, "minProperties above the number of required properties cannot be enforced.")
        if max_p is not None and max_p < len(entries):
            raise self.error(ptr, "maxProperties below the number of properties cannot be enforced.")
        return self._sequence(entries)

    def _sequence(self, entries: list[tuple[str, str, bool]]) -> str:
        """Members in the declared order, optional ones optional, commas only between members."""
        kvs = [self.b.rule(f"kv-{key}", f'{json_literal(key)} ws ":" ws {rule}') for key, rule, _ in entries]
        memo: dict[tuple[int, bool], str] = {}

        def rest(i: int, after: bool) -> str:
            # GBNF for members i.. when `after` says a member was already written.
            if i == len(entries):
                return '""'
            if (i, after) in memo:
                return memo[(i, after)]
            sep = '"," ws ' if after else ""
            take = f"{sep}{kvs[i]} {rest(i + 1, True)}"
            body = take if entries[i][2] else f"{take} | {rest(i + 1, after)}"
            memo[(i, after)] = name = self.b.rule("members", body)
            return name

        return self.b.rule("object", f'"{{" ws {rest(0, False)} ws "}}"')


def _escape_ptr(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _json_type(v: Any) -> str:
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


def _has_type(v: Any, types: list[str]) -> bool:
    t = _json_type(v)
    return t in types or (t == "integer" and "number" in types)


def _json_equal(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and _json_type(a) == _json_type(b)


def _values(s: dict[str, Any]) -> list[Any] | None:
    if "const" in s:
        return [s["const"]]
    if isinstance(s.get("enum"), list):
        return s["enum"]
    return None
