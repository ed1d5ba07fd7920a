"""JSON read a piece at a time as a grammar writes it: where each value starts and where each
member or item ends. The readers of a call's arguments as they come (services/grounding.py,
services/repeats.py) share it, so that strings, escapes and keys are told apart in one place.
It assumes valid JSON, which the grammar guarantees, and checks nothing."""

from __future__ import annotations

from collections.abc import Iterator

VALUE = "value"  # a value starts: its first character (a string's opening quote)
END = "end"  # a member or item ends: its "," or the closing bracket, with `stack` still open


class JsonScan:
    def __init__(self) -> None:
        self.text = ""
        self.stack: list[str] = []  # the open containers, "{" or "["
        self.key = ""  # the last object key read
        self._string: int | None = None  # where the string being read opened
        self._is_key = False
        self._escaped = False
        self._expect = True  # a value may start here (in an object, a key comes first)

    def feed(self, piece: str) -> Iterator[tuple[str, int]]:
        """(VALUE or END, offset in `text`) for each event in `piece`, in order."""
        start = len(self.text)
        self.text += piece
        for i in range(start, len(self.text)):
            c = self.text[i]
            if self._string is not None:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    if self._is_key:
                        self.key = self.text[self._string + 1 : i]
                    self._string = None
            elif c == '"':
                self._string, self._is_key = i, not self._expect
                if self._expect:
                    self._expect = False
                    yield VALUE, i
            elif c in "{[":
                if self._expect:
                    yield VALUE, i
                self.stack.append(c)
                self._expect = c == "["
            elif c in "}]":
                yield END, i
                if self.stack:
                    self.stack.pop()
                self._expect = False
            elif c == ",":
                yield END, i
                self._expect = bool(self.stack) and self.stack[-1] == "["
            elif c == ":":
                self._expect = True
            elif self._expect and not c.isspace():  # a number, true, false or null
                self._expect = False
                yield VALUE, i
