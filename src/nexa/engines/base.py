"""Engine base class, task names and the plain result types engines yield.

Engines know nothing of HTTP: they take plain parameters and yield plain results; the
routers (the "spec" layer) wrap them into OpenAI/Nexa responses and SSE frames.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from nexa.errors import ContextLengthExceeded, InvalidRequest, Overloaded, UnsupportedTask

# More characters than any token of a real vocabulary covers on average over a prompt (English
# averages about 4): a text longer than the context times this cannot fit, so it is refused
# before tokenizing it, which for hundreds of MiB takes minutes.
CHARS_PER_TOKEN = 16


class Cancelled(Exception):
    """The client went away and the engine stopped its work early."""


class Turns:
    """One call on a model at a time, with at most `max_waiting` callers waiting for their turn.

    Image and speech engines run one request at a time; without a cap every request that
    arrives meanwhile would wait (a thread and its upload held) for as long as the queue takes.
    Past the cap a caller gets Overloaded (503 with Retry-After) at once, as text requests do
    past --max-queue."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.lock = threading.Lock()  # held by the caller whose turn it is (close() takes it too)
        self._guard = threading.Lock()
        self._admitted = 0  # the caller holding the lock plus those waiting for it

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._guard:
            if self._admitted > self.max_waiting:
                raise Overloaded(
                    f"{self._admitted - 1} requests are already waiting for this model (--max-queue "
                    f"{self.max_waiting}); retry shortly."
                )
            self._admitted += 1
        try:
            with self.lock:
                yield
        finally:
            with self._guard:
                self._admitted -= 1


class Task(str, Enum):
    COMPLETION = "completion"
    CHAT = "chat"
    TOOLS = "tools"
    VISION = "vision"
    EMBEDDING = "embedding"
    RERANK = "rerank"
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"
    SPEECH = "speech"  # text to speech


class Engine:
    """A loaded model. Subclasses declare what they can do in `tasks`."""

    tasks: ClassVar[frozenset[Task]] = frozenset()
    name: str = "model"
    # Where the model runs, for /health and the start-up log: llama.cpp engines say how many
    # layers went to the GPU and on which devices, Whisper its device; None: not said.
    offload: dict[str, Any] | None = None

    def supports(self, task: Task) -> bool:
        return task in self.tasks

    def require(self, task: Task, endpoint: str) -> None:
        """Refuse a task the model lacks with a 400 that names both."""
        if task not in self.tasks:
            can = ", ".join(sorted(t.value for t in self.tasks)) or "nothing"
            raise UnsupportedTask(
                f"The loaded model '{self.name}' cannot serve {endpoint} (it supports: {can}). "
                f"Start the server with a model of the right type."
            )

    def describe(self) -> dict[str, Any]:
        """Extra facts for /v1/models (context size, type...)."""
        return {}

    def stats(self) -> EngineStats | None:
        """Live figures for /metrics; None: the engine keeps none (only the scheduler does)."""
        return None

    def close(self) -> None:
        """Free the model's memory."""


@dataclass(frozen=True)
class EngineStats:
    """A scheduler's state now and its totals since start (what /metrics reports)."""

    running: int  # requests decoding now
    waiting: int  # requests waiting for a slot
    slots: int
    requests: int  # finished requests
    prompt_tokens: int
    cached_tokens: int  # prompt tokens reused from the KV cache
    generated_tokens: int
    prompt_seconds: float
    generation_seconds: float
    generation_tokens_per_second: float  # over the last 10 s
    prompt_tokens_per_second: float
    kv_cache_tokens: int  # KV cells in use, cached prompts included
    kv_cache_capacity_tokens: int


@dataclass
class SamplingParams:
    max_tokens: int | None = 128  # None: until the context is full
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: off; N >= 0: the chosen token plus N alternatives
    grammar: str | None = None  # GBNF that constrains the output


@dataclass
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob]


def token_logprob(logits: np.ndarray, token: int, top_n: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    """`token`'s log-probability and the `top_n` likeliest, from a step's raw logits (the model's
    distribution, before temperature and top-k/top-p); `piece` gives a token's bytes."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    shifted = logits - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    top: list[TopLogprob] = []
    if top_n > 0:
        ids = np.argpartition(-logprobs, top_n)[:top_n]
        for i in ids[np.argsort(-logprobs[ids])]:
            text = piece(int(i))
            top.append(TopLogprob(text.decode("utf-8", "replace"), float(logprobs[i]), list(text)))
    text = piece(token)
    return TokenLogprob(text.decode("utf-8", "replace"), float(logprobs[token]), list(text), top)


@dataclass
class TextDelta:
    """New output text, with the logprobs of the tokens that produced it."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Finish:
    """The last item of a generation."""

    reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    stop_sequence: str | None = None  # the stop string that ended a "stop" (None: an end-of-generation token)


class TextEngine(Engine):
    """Text generation: completions and chat through one `generate` method."""

    n_ctx: int = 0
    n_vocab: int = 0  # 0: unknown, token ids are not range-checked

    def render_chat(self, messages: list[dict[str, Any]]) -> tuple[str, list[str], bool]:
        """The prompt the model sees for a conversation: (text, extra stop strings, has_special).
        Special tokens' text that the messages hold comes out marked (engines/specials.py)."""
        raise NotImplementedError

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        raise NotImplementedError

    def token_ids(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """/tokenize (llama-server's options): `add_special` adds the model's BOS and the like,
        `parse_special` reads special tokens spelled out in the text as themselves."""
        raise UnsupportedTask(f"The loaded model '{self.name}' does not expose its tokenizer (/tokenize).")

    def token_text(self, token: int) -> bytes:
        """A token's bytes, a special token spelled out (/tokenize's pieces, /detokenize)."""
        raise UnsupportedTask(f"The loaded model '{self.name}' does not expose its tokenizer (/detokenize).")

    def tokenize_chat(self, text: str, has_bos: bool) -> list[int]:
        """Tokens of a rendered chat: the template's special tokens parsed (what the messages
        spelled stays text), a BOS added unless it has one. This default suits an engine
        without special tokens of its own."""
        return self.tokenize(text, special=True) if has_bos else self.tokenize(text)

    def check_prompt_chars(self, chars: int, param: str) -> None:
        """Refuse, before tokenizing, a text far too long for the context to hold."""
        if self.n_ctx and chars > self.n_ctx * CHARS_PER_TOKEN:
            raise ContextLengthExceeded(
                f"The prompt is {chars} characters, far more than the model's context of {self.n_ctx} tokens "
                f"can hold. Shorten the prompt or restart the server with a larger --nctx.",
                param=param,
            )

    def check_prompt(self, prompt: list[int], param: str) -> None:
        """Refuse, with a 400, a prompt the model cannot take: never truncate it silently."""
        if len(prompt) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"The prompt is {len(prompt)} tokens, but the model's context is {self.n_ctx} tokens "
                f"(and at least one must be left for the answer). Shorten the prompt or restart "
                f"the server with a larger --nctx.",
                param=param,
            )
        if not prompt:
            raise InvalidRequest("The prompt is empty: send some text.", param=param)
        if self.n_vocab and any(not 0 <= t < self.n_vocab for t in prompt):
            raise InvalidRequest(f"The prompt holds token ids outside 0..{self.n_vocab - 1}.", param=param)

    def generate(
        self, prompt: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[TextDelta | Finish]:
        """Yield TextDelta items, then exactly one Finish (unless cancelled)."""
        raise NotImplementedError
