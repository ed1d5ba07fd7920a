"""Rules for the scalar schemas: integers and numbers in exact ranges, strings, formats, patterns.

Each function reads the keywords of one schema (already known to be of its type) and adds its
rule to a GrammarBuilder; a keyword it cannot enforce is a 400 naming where it stands.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from nexa.errors import InvalidRequest
from nexa.structured.builder import LIMITS, GrammarBuilder
from nexa.structured.gbnf import Pattern, decimal_alternatives, integer_alternatives, render_alternatives

FORMATS = ("date", "time", "date-time", "uuid", "email", "ipv4")

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


def count(s: dict[str, Any], key: str, ptr: str, param: str, max_repeat: int = LIMITS.max_repeat) -> int | None:
    """A size keyword (minLength, maxItems...), checked to be a non-negative integer; a
    minimum is also held to `max_repeat` (a maximum above it only shortens what is written)."""
    v = s.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v != int(v) or not math.isfinite(v):
        raise schema_error(param, f"{ptr}/{key}", f"{key} must be a non-negative integer.")
    if key.startswith("min") and v > max_repeat:
        raise schema_error(param, f"{ptr}/{key}", f"{key} above {max_repeat} is past this server's limit.")
    return int(v)


# -- numbers -------------------------------------------------------------------------------


def _bounds(s: dict[str, Any], ptr: str, param: str) -> tuple[Fraction | None, bool, Fraction | None, bool]:
    def num(key: str) -> Fraction | None:
        v = s.get(key)
        if v is None or isinstance(v, bool) and key.startswith("exclusive"):
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise schema_error(param, f"{ptr}/{key}", f"{key} must be a finite number.")
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
            raise schema_error(
                param, f"{ptr}/multipleOf", "the keyword 'multipleOf' cannot be enforced by this server."
            )
    return lo, lo_x, hi, hi_x


def integer_rule(b: GrammarBuilder, s: dict[str, Any], ptr: str, param: str) -> str:
    lo, lo_x, hi, hi_x = _bounds(s, ptr, param)
    if lo is None and hi is None:
        return b.integer()
    cap = 10**b.limits.max_int_digits - 1
    ilo = -cap if lo is None else (math.floor(lo) + 1 if lo_x else math.ceil(lo))
    ihi = cap if hi is None else (math.ceil(hi) - 1 if hi_x else math.floor(hi))
    if lo is None:
        ilo = min(ilo, ihi)
    if hi is None:
        ihi = max(ihi, ilo)
    if ilo > ihi:
        raise schema_error(param, ptr, "no integer lies between its minimum and maximum.")
    return b.rule("integer", render_alternatives(integer_alternatives(ilo, ihi)))


def number_rule(b: GrammarBuilder, s: dict[str, Any], ptr: str, param: str) -> str:
    lo, lo_x, hi, hi_x = _bounds(s, ptr, param)
    if lo is None and hi is None:
        return b.number()
    cap = Fraction(10**b.limits.max_int_digits - 1)
    # The grammar writes at most max_int_digits digits before the point: a bound past that is
    # either no bound at all (dropped) or a range the grammar cannot reach (a 400); near 1e22
    # floats are 2**21 apart, and the search for the first value past the bound never ended.
    if (lo is not None and lo > cap) or (hi is not None and hi < -cap):
        raise schema_error(
            param,
            ptr,
            f"its bounds lie past the {b.limits.max_int_digits}-digit numbers this server writes (its limit).",
        )
    if lo is not None and lo < -cap:
        lo, lo_x = None, False
    if hi is not None and hi > cap:
        hi, hi_x = None, False
    flo = -cap if lo is None else lo
    fhi = cap if hi is None else hi
    if lo is None:
        flo = min(flo, fhi)
    if hi is None:
        fhi = max(fhi, flo)
    alts: list[list[str]] = []
    # Whole numbers and up to two decimals; more decimals only for a range too narrow for those.
    for places in range(b.limits.max_fraction_digits + 1):
        if places > 2 and alts:
            break
        a, c = _exact(flo, lo_x, places, up=True), _exact(fhi, hi_x, places, up=False)
        if a <= c:
            alts += decimal_alternatives(a, c, places) if places else integer_alternatives(int(a), int(c))
    if not alts:
        raise schema_error(param, ptr, "no number with at most 6 decimals lies between its minimum and maximum.")
    return b.rule("number", render_alternatives(alts))


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


# -- strings -------------------------------------------------------------------------------


def string_rule(b: GrammarBuilder, s: dict[str, Any], ptr: str, param: str) -> str:
    lo = count(s, "minLength", ptr, param) or 0
    hi = count(s, "maxLength", ptr, param)
    if hi is not None and hi < lo:
        raise schema_error(param, ptr, "maxLength is smaller than minLength.")
    fmt = s.get("format")
    if fmt is not None:
        if fmt not in _FORMAT_RULES:
            raise schema_error(
                param, f"{ptr}/format", f"the format {fmt!r} cannot be enforced (supported: {', '.join(FORMATS)})."
            )
        if "pattern" in s or "minLength" in s or "maxLength" in s:
            raise schema_error(param, ptr, "format combined with pattern/minLength/maxLength cannot be enforced.")
        if fmt == "ipv4":
            b.named("octet", render_alternatives(integer_alternatives(0, 255)))
        return b.rule(fmt, _FORMAT_RULES[fmt])
    if "pattern" in s:
        return _pattern(b, s["pattern"], lo, hi, f"{ptr}/pattern", param)
    # Shorter than a large maxLength is still valid; the bound keeps the grammar small.
    hi = max(lo, b.limits.max_string) if hi is None else min(hi, max(lo, b.limits.max_string))
    return b.string(lo, hi)


def _pattern(b: GrammarBuilder, pattern: Any, lo: int, hi: int | None, ptr: str, param: str) -> str:
    if not isinstance(pattern, str):
        raise schema_error(param, ptr, "pattern must be a string.")
    conv = Pattern(pattern, lambda what: schema_error(param, ptr, f"pattern {pattern!r}: {what}"))
    conv.check_size(b.limits.max_repeat, b.limits.max_pattern_nesting, b.limits.max_pattern_repeat)
    cap = b.limits.max_pattern_repeat
    if hi is not None:
        # The largest repeat bound that keeps every match within maxLength.
        if conv.width(0)[1] > hi:
            raise conv.fail(f"its matches can be longer than maxLength {hi}.")
        low, high = 0, min(max(hi, 0), b.limits.max_repeat)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if conv.width(mid)[1] <= hi else (low, mid - 1)
        cap = min(low, b.limits.max_repeat)  # fewer repeats are still within maxLength
    if conv.width(cap)[0] < lo:
        raise conv.fail(f"its matches can be shorter than minLength {lo}.")
    return b.rule("pattern", f'"\\"" {conv.gbnf(cap)} "\\""')
