"""Whether a call's values come from the conversation: how "auto" tells a call from a text answer.

A small model cannot be trusted to decide between a call and text by itself: SmolLM2-135M
gives the opening of a call 0-2% probability on every prompt, whether a tool applies or not,
so a first-token decision (ours, or llama-cpp-python's "message:" against a call) says nothing.
What does differ is how it fills the call in. Where a tool applies, the values are in the
request and the model copies them with near certainty ("Paris" after "weather in Paris?":
-0.1 nats); where none does, it invents them ("New York" after "Tell me a joke": -1.4 to -1.9).
So under "auto" the call is written first, and kept only if at least one of its string or
number values opens with a token the model was sure of; otherwise the answer is text.
"""

from __future__ import annotations

import math

from nexa.engines.base import TextDelta
from nexa.structured.jsonscan import VALUE, JsonScan

SURE = math.log(0.5)  # the log-probability a copied value's first token reaches (measured: -0.1 to -0.2)
_NUMBER = "-0123456789"


def value_starts(text: str) -> list[int]:
    """Offsets of the first character of each non-empty string value and each number in the
    JSON of a call (object keys are not values); text before the first "{" (a function's
    name) is skipped."""
    first = max(text.find("{"), 0)
    starts = []
    for event, i in JsonScan().feed(text[first:]):
        at = first + i
        if event != VALUE:
            continue
        if text[at] == '"' and text[at + 1 : at + 2] not in ('"', ""):
            starts.append(at + 1)
        elif text[at] in _NUMBER:
            starts.append(at)
    return starts


def grounded(call: TextDelta) -> bool:
    """Whether the model was sure of the first token of at least one value of `call` (the text
    it decoded, with each token's log-probability). A call without values, or without
    log-probabilities to judge by, counts as grounded."""
    starts = value_starts(call.text)
    if not starts or not call.logprobs:
        return True
    ends, at = [], 0
    for token in call.logprobs:
        at += len(token.bytes)
        ends.append(at)
    best = -math.inf
    for start in starts:
        byte = len(call.text[:start].encode())
        index = next((k for k, end in enumerate(ends) if byte < end), None)
        if index is not None:
            best = max(best, call.logprobs[index].logprob)
    return best >= SURE
