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
from typing import Any

from nexa.errors import InvalidRequest
from nexa.structured.builder import LIMITS, GrammarBuilder, Limits
from nexa.structured.disjoint import excludes, has_type, json_equal
from nexa.structured.gbnf import json_literal
from nexa.structured.scalars import count, integer_rule, number_rule, schema_error, string_rule

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


def schema_rule(b: GrammarBuilder, schema: Any, param: str) -> str:
    """Add the rules for one JSON schema to `b`; raises InvalidRequest (400) naming `param`."""
    check_size(schema, param, b.limits)
    rule = SchemaCompiler(b, schema, param).compile()
    if rule is None:
        raise schema_error(param, "#", "no value can satisfy it within the server's size limits.")
    return rule


def schema_grammar(schema: Any, param: str, limits: Limits = LIMITS) -> str:
    """The whole grammar for one JSON value that satisfies `schema`."""
    b = GrammarBuilder(limits)
    return b.render(schema_rule(b, schema, param))


def rest_of_object(schema: Any, key: str, param: str, limits: Limits = LIMITS) -> str | None:
    """The grammar of what follows member `key` in an object of `schema`: the members declared
    after it, then the closing brace (None where `schema` declares no `key`). calls.py continues
    a call with it where it cuts an array that repeats itself."""
    if not isinstance(schema, dict):
        return None
    b = GrammarBuilder(limits)
    rule = SchemaCompiler(b, schema, param)._object(schema, "#", after=key)
    return None if rule is None else b.render(rule)


def check_size(schema: Any, param: str, limits: Limits) -> None:
    """Refuse a schema past Limits' size bounds before any work (iterative: no recursion)."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_schema_nodes:
            raise schema_error(param, "#", f"more than {limits.max_schema_nodes} JSON values; this server's limit.")
        if depth > limits.max_schema_depth:
            raise schema_error(param, "#", f"nested deeper than {limits.max_schema_depth} levels; this server's limit.")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]


class SchemaCompiler:
    """Walks one schema (following its local $refs) and adds a rule for each part of it."""

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
        constraints = _enum_of_items({k: v for k, v in schema.items() if k not in ANNOTATIONS})
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

    def _resolve_any(self, ref: str) -> Any:
        return self.resolve(ref, "#")

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
                    if i != j and not excludes(a, c, self._resolve_any):
                        raise self.error(
                            f"{ptr}/oneOf",
                            f"branches {i} and {j} may both match one value, which oneOf forbids; use anyOf, "
                            f"or make them differ by type or by a required const property.",
                        )
        alts = [r for r in (self.visit(s, f"{ptr}/{key}/{i}") for i, s in enumerate(subs)) if r is not None]
        if not alts:
            return None
        return alts[0] if len(alts) == 1 else self.b.rule(key, " | ".join(alts))

    def _enum(self, schema: dict[str, Any], ptr: str) -> str | None:
        self._only(schema, {"const", "enum", "type"}, ptr, "const/enum")
        if "const" in schema:
            values = [schema["const"]]
        else:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.error(ptr, "enum must be a non-empty list.")
            if "const" in schema:
                values = [v for v in values if json_equal(v, schema["const"])]
        self.b.enum_values += len(values)
        if self.b.enum_values > self.limits.max_enum_values:
            raise self.error(ptr, f"more than {self.limits.max_enum_values} enum values in all; this server's limit.")
        if "type" in schema:
            types = self._types(schema, ptr)
            bad = [v for v in values if not has_type(v, types)]
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
            return integer_rule(self.b, s, ptr, self.param)
        if t == "number":
            return number_rule(self.b, s, ptr, self.param)
        if t == "string":
            return string_rule(self.b, s, ptr, self.param)
        if t == "array":
            return self._array(s, ptr)
        return self._object(s, ptr)

    def _array(self, s: dict[str, Any], ptr: str) -> str | None:
        lo = count(s, "minItems", ptr, self.param) or 0
        hi = count(s, "maxItems", ptr, self.param)
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

    def _object(self, s: dict[str, Any], ptr: str, after: str | None = None) -> str | None:
        """The rule for objects of `s`; with `after`, for the rest of one once its member `after`
        is written (None where `s` declares no such member)."""
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise self.error(ptr, "properties must be an object.")
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.error(f"{ptr}/required", "required must be a list of property names.")
        extra = s.get("additionalProperties", True)
        if not isinstance(extra, bool | dict):
            raise self.error(f"{ptr}/additionalProperties", "additionalProperties must be a boolean or a schema.")
        min_p = count(s, "minProperties", ptr, self.param) or 0
        max_p = count(s, "maxProperties", ptr, self.param)

        if not props and not required:
            if after is not None:
                return None
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
        if after is None:
            return self.b.rule("object", f'"{{" ws {self._sequence(entries, 0, False)} ws "}}"')
        i = next((i for i, (key, _, _) in enumerate(entries) if key == after), None)
        return None if i is None else self.b.rule("rest", f'{self._sequence(entries, i + 1, True)} ws "}}"')

    def _sequence(self, entries: list[tuple[str, str, bool]], start: int, after: bool) -> str:
        """Members from `start` in the declared order, optional ones optional, commas only between
        members (`after`: one was written before `start`)."""
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

        return rest(start, after)


def _enum_of_items(schema: dict[str, Any]) -> dict[str, Any]:
    """An enum of plain values beside `"type": "array"` read as the enum of the array's items.
    Taken literally no array can satisfy it, and the intent is plain: 11 of BFCL's 458
    user-written functions have `{"type": "array", "items": {"type": "string"}, "enum": [...]}`.
    llama-cpp-python's converter accepts such schemas too."""
    values = schema.get("enum")
    if schema.get("type") != "array" or not isinstance(values, list) or any(isinstance(v, list) for v in values):
        return schema
    items = schema.get("items")
    items = dict(items) if isinstance(items, dict) else {}
    return {**{k: v for k, v in schema.items() if k != "enum"}, "items": {**items, "enum": values}}


def _escape_ptr(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
