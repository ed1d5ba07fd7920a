"""Arrays that repeat themselves, found while a call's arguments are written.

A small model that has written an item of an array tends to write it again until the
grammar's bound: BFCL's road trip got "Santa Barbara" 16 times, a coordinate pair 16 numbers.
No grammar can say "not the item before", so calls.py watches the arguments as they come: when
an item of an array that is the value of one of the top-level arguments equals the item before
it, the array is cut after that earlier item and closed, and the call goes on under the grammar
of the rest of its object (schema.rest_of_object).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Repeat:
    key: str  # the argument whose array repeats an item
    cut: int  # where the array's last distinct item ends, in the text fed so far


class ArrayWatch:
    """Reads a call's arguments (`{...}`, or a function's name then `, "arguments": {...}`) a
    piece at a time, as valid JSON written by a grammar."""

    def __init__(self) -> None:
        self.text = ""
        self._stack: list[str] = []
        self._string: int | None = None  # where the string being read opened
        self._escaped = False
        self._key_next = False
        self._key = ""
        self._item: int | None = None  # where the current top-level array item started
        self._previous: tuple[str, int] | None = None  # (the item before, where it ended)

    @property
    def in_array(self) -> bool:
        """Whether a top-level argument's array is open: its items may yet be cut."""
        return self._stack[:2] == ["{", "["]

    def feed(self, piece: str) -> Repeat | None:
        start = len(self.text)
        self.text += piece
        for i in range(start, len(self.text)):
            found = self._char(i, self.text[i])
            if found is not None:
                return found
        return None

    def _char(self, i: int, c: str) -> Repeat | None:
        if self._string is not None:
            if self._escaped:
                self._escaped = False
            elif c == "\\":
                self._escaped = True
            elif c == '"':
                if self._key_next and len(self._stack) == 1:
                    self._key = self.text[self._string + 1 : i]
                self._string = None
            return None
        if c == '"':
            self._string = i
            if self.in_array and len(self._stack) == 2 and self._item is None:
                self._item = i
        elif c in "{[":
            if self.in_array and len(self._stack) == 2 and self._item is None:
                self._item = i
            if c == "[" and self._stack == ["{"]:
                self._item, self._previous = None, None
            self._stack.append(c)
            self._key_next = c == "{"
        elif c in "}]":
            if len(self._stack) == 2 and self.in_array:
                self._end_item(i)
            if self._stack:
                self._stack.pop()
            self._key_next = False
        elif c == ",":
            if len(self._stack) == 2 and self.in_array:
                return self._end_item(i)
            self._key_next = bool(self._stack) and self._stack[-1] == "{"
        elif c == ":":
            self._key_next = False
        elif not c.isspace() and self.in_array and len(self._stack) == 2 and self._item is None:
            self._item = i  # a number, true, false or null
        return None

    def _end_item(self, end: int) -> Repeat | None:
        if self._item is None:
            return None
        item = self.text[self._item : end].strip()
        self._item = None
        if self._previous is not None and self._previous[0] == item:
            return Repeat(self._key, self._previous[1])
        self._previous = (item, len(self.text[:end].rstrip()))
        return None
