"""GBNF text: literals, character classes, exact number ranges and regular expressions.

The pieces nexa.structured.schema assembles into a grammar for a JSON schema. Everything here
describes the *JSON text* a model writes: a character that JSON must escape inside a string
(a quote, a backslash, a control character) appears as its escape.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from nexa.errors import InvalidRequest

try:  # the parser behind `re`: it gives the exact structure of a pattern
    import re._constants as _sre  # type: ignore[import-not-found]
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]


# -- literals and classes -----------------------------------------------------------------------------


def literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def json_literal(value: Any) -> str:
    """A GBNF literal of one JSON value, written the way json.dumps writes it."""
    return literal(json.dumps(value, ensure_ascii=False))


def _class_char(cp: int) -> str:
    ch = chr(cp)
    if ch.isalnum() and cp < 0x80:
        return ch
    if cp <= 0xFF:
        return f"\\x{cp:02X}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


def _class_ranges(ranges: list[tuple[int, int]]) -> str:
    return "".join(_class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}" for a, b in ranges)


# -- number ranges -------------------------------------------------------------------------
# An alternative is a list of pieces: a literal ("-", ".", "7") or a digit class ("[0-9]").
# Kept apart from GBNF so that tests can turn the same alternatives into a Python regex.


def _same_length(lo: str, hi: str) -> list[list[str]]:
    """Digit strings of one length between lo and hi (inclusive), as alternatives."""
    n = len(lo)
    if n == 0:
        return [[]]
    if lo == hi:
        return [list(lo)]
    if lo[0] == hi[0]:
        return [[lo[0], *alt] for alt in _same_length(lo[1:], hi[1:])]
    alts: list[list[str]] = []
    first, last = int(lo[0]), int(hi[0])
    if lo[1:] != "0" * (n - 1):
        alts += [[lo[0], *alt] for alt in _same_length(lo[1:], "9" * (n - 1))]
        first += 1
    tail: list[list[str]] = []
    if hi[1:] != "9" * (n - 1):
        tail = [[hi[0], *alt] for alt in _same_length("0" * (n - 1), hi[1:])]
        last -= 1
    if first <= last:
        head = str(first) if first == last else f"[{first}-{last}]"
        alts.append([head] + ["[0-9]"] * (n - 1))
    return alts + tail


def _digits_between(lo: int, hi: int, width: int = 1) -> list[list[str]]:
    """Non-negative integers lo..hi without leading zeros, each at least `width` digits long
    (zero-padded on the left up to it: used for the digits of a fixed-point decimal)."""
    alts: list[list[str]] = []
    for n in range(max(width, len(str(lo))), max(width, len(str(hi))) + 1):
        a = max(lo, 10 ** (n - 1) if n > width else 0)
        b = min(hi, 10**n - 1)
        if a <= b:
            alts += _same_length(str(a).zfill(n), str(b).zfill(n))
    return alts


def integer_alternatives(lo: int, hi: int) -> list[list[str]]:
    """Every integer in lo..hi, written as JSON writes it."""
    alts: list[list[str]] = []
    if hi >= 0:
        alts += _digits_between(max(lo, 0), hi)
    if lo < 0:
        alts += [["-", *alt] for alt in _digits_between(max(1, -hi), -lo)]
    return alts


def decimal_alternatives(lo: Fraction, hi: Fraction, places: int) -> list[list[str]]:
    """Numbers in lo..hi written with exactly `places` digits after the point."""
    scale = 10**places
    m_lo, m_hi = math.ceil(lo * scale), math.floor(hi * scale)
    out: list[list[str]] = []

    def point(alt: list[str]) -> list[str]:
        return alt[: len(alt) - places] + ["."] + alt[len(alt) - places :]

    if m_hi >= 0:
        out += [point(a) for a in _digits_between(max(m_lo, 0), m_hi, places + 1)]
    if m_lo < 0:
        out += [["-", *point(a)] for a in _digits_between(max(1, -m_hi), -m_lo, places + 1)]
    return out


def render_alternatives(alts: list[list[str]]) -> str:
    def piece_run(alt: list[str]) -> str:
        parts: list[str] = []
        i = 0
        while i < len(alt):
            p = alt[i]
            if p.startswith("["):
                j = i
                while j < len(alt) and alt[j] == p:
                    j += 1
                parts.append(p if j - i == 1 else f"{p}{{{j - i}}}")
                i = j
            else:
                j = i
                while j < len(alt) and not alt[j].startswith("["):
                    j += 1
                parts.append(literal("".join(alt[i:j])))
                i = j
        return " ".join(parts)

    return " | ".join(piece_run(a) for a in alts)


def repeat(item: str, lo: int, hi: int) -> str:
    if hi == 0:
        return '""'
    if lo == hi:
        return item if lo == 1 else f"{item}{{{lo}}}"
    return f"{item}{{{lo},{hi}}}"


def separated(item: str, lo: int, hi: int) -> str:
    """lo..hi items separated by commas (nothing when hi is 0)."""
    if hi == 0:
        return '""'
    more = f'("," ws {item})'
    tail = "" if hi == 1 else " " + repeat(more, max(lo - 1, 0), hi - 1)
    body = f"{item}{tail}"
    return body if lo >= 1 else f"({body})?"


# -- patterns ------------------------------------------------------------------------------

_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20)]
_CATEGORIES = {
    _sre.CATEGORY_DIGIT: (_DIGIT, False),
    _sre.CATEGORY_NOT_DIGIT: (_DIGIT, True),
    _sre.CATEGORY_WORD: (_WORD, False),
    _sre.CATEGORY_NOT_WORD: (_WORD, True),
    _sre.CATEGORY_SPACE: (_SPACE, False),
    _sre.CATEGORY_NOT_SPACE: (_SPACE, True),
}
# JSON's escapes for the control characters a pattern may name.
_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


class Pattern:
    """A regular expression as GBNF over the *JSON text* of a string that fully matches it.

    A full match also satisfies JSON Schema's (unanchored) pattern search, so anchors only
    matter at the edges. `*`, `+` and `{n,}` get a finite bound (`cap` extra repeats).
    """

    def __init__(self, pattern: str, error: Callable[[str], InvalidRequest]):
        self.fail = error
        try:
            parsed = _sre_parse.parse(pattern)
        except re.error as exc:
            raise error(f"not a valid regular expression ({exc}).") from exc
        self.seq = self._strip_anchors(list(parsed))

    def _strip_anchors(self, seq: list[Any]) -> list[Any]:
        edges = (_sre.AT_BEGINNING, _sre.AT_BEGINNING_STRING, _sre.AT_END, _sre.AT_END_STRING)
        while seq and seq[0][0] is _sre.AT and seq[0][1] in edges[:2]:
            seq = seq[1:]
        while seq and seq[-1][0] is _sre.AT and seq[-1][1] in edges[2:]:
            seq = seq[:-1]
        if len(seq) == 1 and seq[0][0] is _sre.BRANCH:  # ^a|^b$
            branches = [self._strip_anchors(list(b)) for b in seq[0][1][1]]
            return [(_sre.BRANCH, (None, branches))]
        return seq

    def check_size(self, max_repeat: int, max_nesting: int, unbounded: int) -> None:
        """Refuse quantifiers nested past `max_nesting`, or whose counts multiply past
        `max_repeat` (an unbounded one counts as `unbounded`): llama.cpp either cannot parse
        such a grammar or tracks every way to split a match among them, token by token."""

        def walk(seq: list[Any], depth: int, product: int) -> None:
            for op, av in seq:
                if op is _sre.BRANCH:
                    for b in av[1]:
                        walk(list(b), depth, product)
                elif op is _sre.SUBPATTERN:
                    walk(list(av[3]), depth, product)
                elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)):
                    mn, mx, item = av
                    count = unbounded if mx is _sre.MAXREPEAT else mx
                    if mn > max_repeat or (mx is not _sre.MAXREPEAT and mx > max_repeat):
                        raise self.fail(f"a repeat count above {max_repeat} is past this server's limit.")
                    if depth + 1 > max_nesting or product * max(count, 1) > max_repeat and depth > 0:
                        raise self.fail(
                            f"repeats nested more than {max_nesting} deep, or whose counts multiply past "
                            f"{max_repeat}, are past this server's limit."
                        )
                    walk(list(item), depth + 1, product * max(count, 1))

        walk(self.seq, 0, 1)

    def width(self, cap: int) -> tuple[int, int]:
        return self._width(self.seq, cap)

    def _width(self, seq: list[Any], cap: int) -> tuple[int, int]:
        lo = hi = 0
        for op, av in seq:
            if op is _sre.BRANCH:
                ws = [self._width(list(b), cap) for b in av[1]]
                a, b = min(w[0] for w in ws), max(w[1] for w in ws)
            elif op is _sre.SUBPATTERN:
                a, b = self._width(list(av[3]), cap)
            elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)):
                mn, mx, item = av
                ia, ib = self._width(list(item), cap)
                mx = mn + cap if mx is _sre.MAXREPEAT else mx
                a, b = ia * mn, ib * mx
            elif op is _sre.AT:
                a = b = 0
            else:
                a = b = 1
            lo, hi = lo + a, hi + b
        return lo, hi

    def gbnf(self, cap: int) -> str:
        return self._seq(self.seq, cap)

    def _seq(self, seq: list[Any], cap: int) -> str:
        parts = [self._node(op, av, cap) for op, av in seq]
        return " ".join(p for p in parts if p) or '""'

    def _node(self, op: Any, av: Any, cap: int) -> str:
        if op is _sre.LITERAL:
            return self._chars([(av, av)], False)
        if op is _sre.NOT_LITERAL:
            return self._chars([(av, av)], True)
        if op is _sre.ANY:
            return self._chars([(0x0A, 0x0A)], True)
        if op is _sre.IN:
            return self._in(av)
        if op is _sre.BRANCH:
            alts = [self._seq(list(b), cap) for b in av[1]]
            return "(" + " | ".join(alts) + ")"
        if op is _sre.SUBPATTERN:
            p = av[3]  # inline flags (?i:...) only widen what matches: a match as written still matches
            return "(" + self._seq(list(p), cap) + ")"
        if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)):
            mn, mx, item = av
            mx = mn + cap if mx is _sre.MAXREPEAT else mx
            if mx == 0:
                return ""
            inner = "(" + self._seq(list(item), cap) + ")"
            return repeat(inner, mn, mx)
        if op is _sre.AT:
            raise self.fail("anchors (^, $, \\b) are only supported at the start and end.")
        raise self.fail(f"the construct {str(op).lower()} (look-around, back-reference...) cannot be enforced.")

    def _in(self, items: list[Any]) -> str:
        negate = False
        ranges: list[tuple[int, int]] = []
        negated_categories = []
        for op, av in items:
            if op is _sre.NEGATE:
                negate = True
            elif op is _sre.LITERAL:
                ranges.append((av, av))
            elif op is _sre.RANGE:
                ranges.append(av)
            elif op is _sre.CATEGORY and av in _CATEGORIES:
                cat, neg = _CATEGORIES[av]
                if neg:
                    negated_categories.append(cat)
                else:
                    ranges += cat
            else:
                raise self.fail(f"the class item {str(op).lower()} cannot be enforced.")
        if negated_categories:
            if negate or ranges or len(negated_categories) > 1:
                raise self.fail("classes that mix \\D, \\W or \\S with other items cannot be enforced.")
            return self._chars(negated_categories[0], True)
        return self._chars(ranges, negate)

    def _chars(self, ranges: list[tuple[int, int]], negate: bool) -> str:
        """Characters from `ranges` (or outside them), as their JSON-escaped text."""
        if negate:
            # Everything else that may stand raw in a JSON string (no quote, backslash, control).
            return f'[^{_class_ranges(sorted(ranges))}"\\\\\\x00-\\x1F]'
        alts: list[str] = []
        plain: list[tuple[int, int]] = []
        for a, b in sorted(ranges):
            for cp in range(a, min(b, 0x1F) + 1):  # control characters: JSON escapes
                if cp in _ESCAPES:
                    alts.append(literal(_ESCAPES[cp]))
            a = max(a, 0x20)
            for special in (0x22, 0x5C):  # quote and backslash: escaped
                if a <= special <= b:
                    alts.append(literal("\\" + chr(special)))
            start = a
            for special in (0x22, 0x5C):
                if start <= special <= b:
                    if start < special:
                        plain.append((start, special - 1))
                    start = special + 1
            if start <= b:
                plain.append((start, b))
        if plain:
            if len(plain) == 1 and plain[0][0] == plain[0][1]:
                alts.insert(0, literal(chr(plain[0][0])))
            else:
                alts.insert(0, f"[{_class_ranges(plain)}]")
        if not alts:
            raise self.fail("a character class matches only characters that JSON cannot hold raw.")
        return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"
