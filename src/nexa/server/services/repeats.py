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

from nexa.structured.jsonscan import VALUE, JsonScan


@dataclass
class Repeat:
    key: str  # the argument whose array repeats an item
    cut: int  # where the array's last distinct item ends, in the text fed so far


class ArrayWatch:
    """Reads a call's arguments (`{...}`, or a function's name then `, "arguments": {...}`) a
    piece at a time, as valid JSON written by a grammar."""

    def __init__(self) -> None:
        self._scan = JsonScan()
        self._key = ""  # the argument whose array is open
        self._item: int | None = None  # where the current item of that array started
        self._previous: tuple[str, int] | None = None  # (the item before, where it ended)

    @property
    def text(self) -> str:
        return self._scan.text

    @property
    def in_array(self) -> bool:
        """Whether a top-level argument's array is open: its items may yet be cut."""
        return self._scan.stack[:2] == ["{", "["]

    def feed(self, piece: str) -> Repeat | None:
        scan = self._scan
        for event, i in scan.feed(piece):
            if event == VALUE and scan.stack == ["{"] and scan.text[i] == "[":  # an argument's array opens
                self._key, self._item, self._previous = scan.key, None, None
            elif len(scan.stack) != 2 or not self.in_array:
                continue
            elif event == VALUE:
                self._item = i
            elif scan.text[i] == ",":
                found = self._end_item(i)
                if found is not None:
                    return found
            else:
                self._end_item(i)  # a repeat closed by "]" is kept: the array ends there anyway
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
