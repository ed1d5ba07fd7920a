"""Special tokens stay the chat template's own: the text of messages and tools is never parsed
into them.

A rendered chat is one string, and a tokenizer that parses special tokens in it cannot tell the
template's `<|im_start|>` from one a user typed into a message (a forged system turn). So every
string a client sends (message content, names, tool definitions and arguments) has each
special token's text replaced by a marker before the template sees it: a string of letters and
digits with a nonce drawn when the model loads, which no template filter (trim, tojson) alters
and no client can guess. In the rendered text every special token's text is then the
template's own, and a marker stands where a client wrote one: `pieces` splits the text at the
former and puts the latter back as plain text, to be tokenized without parsing specials.

An ordinary conversation holds no marker: its text, and so its tokens, are what they were
without any of this.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any


class SpecialTokens:
    """`texts`: special token text -> id, for the tokens a tokenizer parses only when asked to."""

    def __init__(self, texts: dict[str, int]):
        self.ids = {t: i for t, i in texts.items() if t}
        self._texts = list(self.ids)
        self._by_id = {i: t for t, i in self.ids.items()}
        self._index = {t: n for n, t in enumerate(self._texts)}
        nonce = secrets.token_hex(8)
        self._marker = re.compile(f"N{nonce}T([0-9]+)E")
        self._template = f"N{nonce}T{{}}E"
        # Longest text first at each position, as tokenizers match them.
        self._finder = re.compile(_trie_pattern(self._texts)) if self._texts else None

    def escape(self, value: Any) -> Any:
        """`value` (a string, or lists and dicts of them, keys included) with each special token's
        text marked."""
        if isinstance(value, str):
            if self._finder is None or not self._finder.search(value):
                return value
            return self._finder.sub(lambda m: self._template.format(self._index[m.group()]), value)
        if isinstance(value, dict):
            return {self.escape(k): self.escape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.escape(v) for v in value]
        return value

    def text(self, token: int) -> str:
        return self._by_id[token]

    def starts(self, text: str) -> list[int]:
        """Where special tokens' text begins in `text`."""
        return [m.start() for m in self._finder.finditer(text)] if self._finder is not None else []

    def marked(self, text: str) -> bool:
        return self._marker.search(text) is not None

    def pieces(self, text: str) -> Iterator[str | int]:
        """`text` split at its special tokens (their ids) into plain text, markers put back as the
        special tokens' text (to be tokenized as such)."""
        assert self._finder is not None  # a marked text implies special tokens
        start = 0
        for m in self._finder.finditer(text):
            if m.start() > start:
                yield self._unmark(text[start : m.start()])
            yield self.ids[m.group()]
            start = m.end()
        if start < len(text):
            yield self._unmark(text[start:])

    def _unmark(self, text: str) -> str:
        return self._marker.sub(lambda m: self._texts[int(m.group(1))], text)


def _trie_pattern(words: list[str]) -> str:
    """One regex for many literal words, shaped as their trie: each character is tried once per
    position however many words there are (vocabularies carry thousands of reserved tokens)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here: a longer one is tried first (greedy), this one after
            return f"(?:{body})?"
        return body

    return build(trie)
