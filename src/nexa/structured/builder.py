"""GrammarBuilder: collects the GBNF rules of a grammar, and the free-form JSON pieces.

Several schemas (the arguments of each tool, a response format) can share one builder, so
one grammar can offer a choice between them (see nexa.structured.grammars).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nexa.structured.gbnf import repeat, separated


@dataclass(frozen=True)
class Limits:
    """Bounds the grammar puts where the schema gives none (see nexa.structured.schema), and
    the size of a schema this server compiles at all (a 400 naming the limit past them).

    The size limits keep compiling and sampling short whatever a request sends, and sit far
    above real tool schemas: the 458 functions of BFCL's live sets (../shared/data) have at
    most 353 JSON values per request, 10 levels of nesting and 16 enum values; the schemas
    of tests/schemas at most 31 values and 9 levels. OpenAI's structured outputs allow 10
    levels and 1,000 enum values in all.
    - max_schema_nodes: JSON values (objects, lists, scalars) in one schema.
    - max_schema_depth: nesting of the schema's JSON; a deeper one overflowed the stack.
    - max_enum_values: enum and const values in one grammar; llama.cpp checks each token
      against every open alternative (5,000 values: 3.5 s for 20 tokens; 1,000: 0.7 s).
    - max_repeat: one repetition (minLength, minItems, minProperties, a pattern's {n}):
      llama.cpp's own ceiling, past which it cannot parse the grammar.
    - max_pattern_nesting: quantifiers nested in a pattern, and the product of their counts
      at most max_repeat: `((a*)*)*` took llama.cpp 500 s for 20 tokens.
    """

    max_string: int = 200  # characters in a string without maxLength
    max_items: int = 16  # items in an array without maxItems
    max_properties: int = 16  # members of an open object (a map, or free-form JSON)
    max_depth: int = 3  # nesting of free-form JSON values
    max_recursion: int = 3  # times one $ref may re-enter itself
    max_int_digits: int = 15  # digits of an unbounded integer (stays exact as a float)
    max_fraction_digits: int = 6  # digits after the point of a number
    max_pattern_repeat: int = 16  # repeats of `*`, `+` or `{n,}` in a pattern without maxLength
    max_key: int = 32  # characters in a key of an open object
    max_schema_nodes: int = 5000
    max_schema_depth: int = 64
    max_enum_values: int = 1000
    max_repeat: int = 2000
    max_pattern_nesting: int = 2


LIMITS = Limits()

WS = '" "?'  # at most one space between tokens: a model cannot spin on whitespace

# One character inside a JSON string: anything but a quote, a backslash or a control character,
# or a short escape. (No \u escapes: they would let a model write lone surrogates.)
CHAR = r'[^"\\\x00-\x1F] | "\\" ["\\/bfnrt]'


class GrammarBuilder:
    """Collects GBNF rules; each method adds what it needs and returns the name of its rule."""

    def __init__(self, limits: Limits = LIMITS):
        self.limits = limits
        self.rules: dict[str, str] = {"ws": WS, "char": CHAR}
        self._by_body: dict[str, str] = {}
        self._counter = 0
        self.enum_values = 0  # across every schema of this grammar (see Limits.max_enum_values)

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
