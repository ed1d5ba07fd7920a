"""An answer that may hold several calls, or text, decoded in stages.

One grammar for the whole answer (`call ("\\n"? call){0,3}`) let a small model repeat its call
until the grammar's bound: with OpenAI's default `parallel_tool_calls`, SmolLM2 answered every
case with 2 to 4 copies of one call. And under "auto" the first token chose between "<" and
any word of prose, which prose always won. So the answer is decoded in steps, each under a
grammar of its own (nexa.structured.grammars), over the prompt plus what is written so far
(the engine reuses the cached prefix):

1. under "auto", a constrained decision: the call's opening or, where the prompt is our own,
   the word that opens a text answer (as llama-cpp-python's chatml-function-calling does); a
   template that knows tools decides between its call opening and the first character of text.
   A call chosen there is kept only if the model took one of its values from the conversation
   (grounding.py) and the conversation does not already hold it with the same arguments, else
   the answer is text;
2. for text, the text answer; for calls, one call (its fixed opening and closing written, its
   arguments decoded), then "another call or the end", as long as parallel calls are allowed
   and MAX_CALLS is not reached; a call identical to one already made (same function, same
   arguments) ends the answer and is not sent.

The stages come out as one stream of TextDelta items and one Finish (its usage the sum of
the stages'), so tools.response and tools.stream read them as a single generation. Only the
first call is streamed as it is written (under "auto", once it is judged grounded): a later
one is held until it is known not to repeat.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from functools import partial

from fastapi import Request

from nexa.engines.base import Finish, SamplingParams, TextDelta, TextEngine, TokenLogprob
from nexa.server.services.generation import generate
from nexa.server.services.grounding import grounded
from nexa.server.services.repeats import ArrayWatch
from nexa.server.threads import in_thread
from nexa.structured.gbnf import literal
from nexa.structured.grammars import CALL_OPEN, MAX_CALLS, MESSAGE
from nexa.structured.parser import CallParser
from nexa.structured.plan import Plan
from nexa.structured.schema import rest_of_object

DECISION_TOKENS = 16  # either opening, even spelt a character a token (the grammar ends it)
NEXT = "\n"  # between two calls
TOP_ALTERNATIVES = 20  # log-probabilities read per token to find the end of the turn among them


@dataclass
class _Totals:
    prompt_tokens: int  # the prompt's size, for when no stage has ended yet (its Finish says it)
    first: Finish | None = None
    completion_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0

    def add(self, finish: Finish) -> None:
        self.first = self.first or finish
        self.completion_tokens += finish.completion_tokens
        self.prompt_seconds += finish.prompt_seconds
        self.generation_seconds += finish.generation_seconds

    def finish(self, reason: str) -> Finish:
        prompt, cached = (self.first.prompt_tokens, self.first.cached_tokens) if self.first else (self.prompt_tokens, 0)
        return Finish(reason, prompt, self.completion_tokens, cached, self.prompt_seconds, self.generation_seconds)


class _Stages:
    def __init__(self, request: Request, engine: TextEngine, prompt: list[int], params: SamplingParams) -> None:
        self.request, self.engine, self.prompt, self.params = request, engine, prompt, params
        self.totals = _Totals(len(prompt))
        self.last_reason = "stop"  # the Finish reason of the latest stage
        # How the end of a turn shows among the top log-probabilities: a control token (its text
        # is empty: the engines render pieces without specials) or one of the template's stops.
        self.end_tokens = {"", *params.stop}

    def left(self) -> int | None:
        most = self.params.max_tokens
        return None if most is None else most - self.totals.completion_tokens

    async def run(
        self, written: str, grammar: str | None, most: int | None = None, params: SamplingParams | None = None
    ) -> AsyncGenerator[TextDelta]:
        """One stage: the prompt plus `written` continued under `grammar`; its Finish goes to the totals."""
        prompt = self.prompt
        if written:
            more = partial(self.engine.token_ids, written, add_special=False, parse_special=False)
            prompt = prompt + await in_thread(more)
        left = self.left()
        budget = left if most is None else most if left is None else min(left, most)
        params = replace(params or self.params, grammar=grammar, max_tokens=budget, stop=list(self.params.stop))
        items = await generate(self.request, self.engine, prompt, params)
        tokens, ended = 0, False
        try:
            async for item in items:
                if isinstance(item, Finish):
                    self.totals.add(item)
                    self.last_reason, ended = item.reason, True
                else:
                    tokens += len(item.logprobs) or 1
                    yield item
        finally:  # a stage left early (a cut, or the client went away) stops its engine at once
            await items.aclose()  # type: ignore[attr-defined]
            if not ended:
                self.totals.completion_tokens += tokens

    async def collect(
        self, written: str, grammar: str | None, most: int | None = None, params: SamplingParams | None = None
    ) -> TextDelta:
        return await _joined(self.run(written, grammar, most, params))

    async def arguments(
        self, written: str, plan: Plan, params: SamplingParams | None = None
    ) -> AsyncGenerator[TextDelta]:
        """The rest of a call after `written` (its head), as it may be sent. An array among its
        arguments that starts repeating its items is cut there and closed (repeats.py), and the
        call goes on under the grammar of the rest of its object; so text inside such an array
        is held until the array is closed."""
        call = plan.call
        assert call is not None
        watch, grammar, held = ArrayWatch(), call.rest, []
        while True:
            repeat, rest = None, None
            async with aclosing(self.run(written + watch.text, grammar, params=params)) as items:
                async for item in items:
                    held.append(item)
                    repeat = watch.feed(item.text)
                    rest = None if repeat is None else _rest_after(plan, watch.text, repeat.key)
                    if rest is not None:
                        break
                    if not watch.in_array:
                        for piece in held:
                            yield piece
                        held = []
            if repeat is None or rest is None:
                for piece in held:
                    yield piece
                return
            kept = watch.text[: repeat.cut] + "]"
            unsent = kept[len(watch.text) - sum(len(piece.text) for piece in held) :]
            held = [TextDelta(unsent, _within(held, len(unsent[:-1].encode())))]
            watch, grammar = ArrayWatch(), rest
            watch.feed(kept)


async def _joined(items: AsyncIterator[TextDelta]) -> TextDelta:
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    async for item in items:
        text.append(item.text)
        logprobs += item.logprobs
    return TextDelta("".join(text), logprobs)


def _within(pieces: list[TextDelta], size: int) -> list[TokenLogprob]:
    """The log-probabilities of the tokens that spell the first `size` bytes of `pieces`."""
    out: list[TokenLogprob] = []
    for token in (t for piece in pieces for t in piece.logprobs):
        size -= len(token.bytes)
        if size < 0:
            break
        out.append(token)
    return out


def _rest_after(plan: Plan, text: str, key: str) -> str | None:
    """The grammar of a call's arguments after its member `key` (`text`: the call so far, after its head)."""
    assert plan.call is not None
    name = plan.call.name or json.loads(text[: text.index(",")])
    (tool,) = [t for t in plan.tools if t.name == name]
    return rest_of_object(tool.parameters, key, "tools")


def decision_grammar(plan: Plan) -> str:
    text_opening = r"[^<\x09-\x0D ]" if plan.native else literal(MESSAGE)
    return f"root ::= {literal(CALL_OPEN)} | {text_opening}\n"


async def staged(
    request: Request, engine: TextEngine, prompt: list[int], params: SamplingParams, plan: Plan
) -> AsyncIterator[TextDelta | Finish]:
    """The answer's items; its first is awaited before this returns, so that a request the
    engine cannot queue fails (503) before any response starts, as with `generate`."""
    items = _staged(request, engine, prompt, params, plan)
    first = await anext(items)

    async def all_items() -> AsyncIterator[TextDelta | Finish]:
        async with aclosing(items):
            yield first
            async for item in items:
                yield item

    return all_items()


async def _staged(
    request: Request, engine: TextEngine, prompt: list[int], params: SamplingParams, plan: Plan
) -> AsyncGenerator[TextDelta | Finish]:
    call = plan.call
    assert call is not None
    stages = _Stages(request, engine, prompt, params)
    written = call.head
    if plan.choice == "auto":
        decided = await stages.collect("", decision_grammar(plan), DECISION_TOKENS)
        if stages.last_reason != "stop":
            yield stages.totals.finish(stages.last_reason)
            return
        first = TextDelta("")
        if decided.text.startswith(CALL_OPEN):
            # The call is held until it is known to be grounded (see grounding.py).
            sure = replace(params, logprobs=params.logprobs or 0)
            first = await _joined(stages.arguments(written, plan, sure))
            if stages.last_reason != "stop":  # cut by max_tokens: what was written, as without "auto"
                yield TextDelta(written + first.text, first.logprobs)
                yield stages.totals.finish(stages.last_reason)
                return
        if not first.text or not grounded(first) or _calls(written + first.text + call.tail)[0] in plan.made:
            async for item in stages.run("" if plan.native else MESSAGE + "\n", plan.text_answer):
                yield item
            yield stages.totals.finish(stages.last_reason)
            return
        written += first.text + call.tail
        yield TextDelta(written, first.logprobs)
    else:
        # The first call is streamed as it is written: its fixed opening with the first piece the
        # engine decodes (so that a request it cannot queue is refused before the response starts).
        head = written
        async for item in stages.arguments(written, plan):
            written += item.text
            yield TextDelta(head + item.text, item.logprobs) if head else item
            head = ""
        if stages.last_reason != "stop":
            yield stages.totals.finish(stages.last_reason)
            return
        written += call.tail
        yield TextDelta(call.tail, [])
    made = _calls(written)
    while plan.parallel and len(made) < MAX_CALLS and stages.left() != 0:
        if not await _another_call(stages, written):
            break
        more = await _joined(stages.arguments(written + NEXT + call.head, plan))
        text = call.head + more.text + call.tail
        if stages.last_reason != "stop" or (new := _calls(text))[0] in made:
            break  # ran out of tokens inside the call, or repeated a call
        made += new
        written += NEXT + text
        yield TextDelta(NEXT + text, more.logprobs)
    # A later call cut by max_tokens is dropped whole: the calls already sent are complete.
    yield stages.totals.finish("stop")


async def _another_call(stages: _Stages, written: str) -> bool:
    """Whether the model, after `written`, would rather open another call than end its answer.

    Token by token, greedy decoding after a call always took the newline (SmolLM2: -0.18 nats,
    against -2 for the end of its turn), and the grammar then forced a second call whose "<" the
    model itself gave -4. So the two ways on are compared whole: the end-of-turn token against
    the newline and the call's "<" together, each read from the model's own log-probabilities.
    """
    probe = replace(stages.params, logprobs=TOP_ALTERNATIVES)
    seen = await stages.collect(written, f"root ::= {literal(NEXT + CALL_OPEN[0])}\n", 4, probe)
    if stages.last_reason != "stop" or not seen.logprobs:
        return False
    more = 0.0
    for step in seen.logprobs:  # the tokens that spell the newline and "<"
        more += step.logprob
        if "<" in step.token:
            break
    ends = [t.logprob for t in seen.logprobs[0].top if t.token in stages.end_tokens]
    end = max(ends, default=min((t.logprob for t in seen.logprobs[0].top), default=0.0) - 1.0)
    if stages.params.temperature <= 0:
        return more > end
    # Sampled: each way with its probability (the seed, if any, keeps it reproducible).
    return random.Random(stages.params.seed).random() < 1 / (1 + math.exp(end - more))


def _calls(text: str) -> list[tuple[str, str]]:
    """The complete calls in `text`, as (name, arguments in a canonical form)."""
    parser = CallParser(calls_only=True)
    parser.feed(text.lstrip())
    return [(c.name, json.dumps(json.loads(c.arguments), sort_keys=True)) for c in parser.complete_calls]
