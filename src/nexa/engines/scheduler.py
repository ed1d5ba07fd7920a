"""Continuous batching for one llama.cpp model: every active request decoded in one batch per step.

A slot is a llama.cpp sequence id with its own KV stream of the full context. Each step packs
one row for every request that is generating plus chunks of new prompts (up to `n_batch` rows)
into one `llama_decode`, then samples each request at its own row with its own llama.cpp
sampler chain (seed, penalties, grammar). A finished request leaves its tokens in its slot: the
next request whose prompt starts the same way (the next turn of a chat, a shared system prompt)
takes that slot and decodes only what is new.

Why one stream per slot rather than one unified cache: with a unified cache the cells of
concurrent requests interleave and attention sums them in a different order, so a greedy request
answered differently alone and in company (1 in 8 in our runs). With a stream per slot and flash
attention a request's arithmetic is the same whatever runs beside it (24 of 24, 16 of 16 with
reused slots). The price is KV memory for `parallel` full contexts, which sizes the default.

The scheduler thread is the only one that touches the context. Requests come in through
`submit` and their results go out through a queue per request, so a slow client never holds
up the batch; a cancelled request leaves at the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from nexa.engines.base import Finish, SamplingParams, TextDelta, TokenLogprob
from nexa.engines.batch import TokenBatch
from nexa.engines.stops import StopMatcher
from nexa.errors import Overloaded

log = logging.getLogger("nexa.engine.scheduler")

_END = object()  # a cancelled request's last item


class Slot:
    def __init__(self, seq: int):
        self.seq = seq
        self.cache: list[int] = []  # what this sequence's KV stream holds, by position (-1: image)
        self.images: dict[int, tuple[str, int]] = {}  # start position -> (digest, positions)
        self.job: Job | None = None
        self.used_at = 0.0

    def forget_from(self, pos: int) -> None:
        del self.cache[pos:]
        for start, (_, n_pos) in list(self.images.items()):
            if start + n_pos > pos:
                del self.images[start]


class Feeder(Protocol):
    """What the scheduler needs from its engine (LlamaEngine, VisionEngine)."""

    n_ctx: int

    def new_sampler(self, params: SamplingParams) -> Any: ...
    def is_eog(self, token: int) -> bool: ...
    def piece(self, token: int) -> bytes: ...
    def logprob_at(self, ctx: Any, row: int, token: int, top_n: int) -> TokenLogprob: ...
    def reusable(self, slot: Slot, prompt: Any) -> tuple[int, int]: ...
    def feed_special(self, scheduler: Scheduler, slot: Slot, prompt: Any, keep: int) -> None: ...


@dataclass
class Job:
    prompt: Any  # token ids, or a prompt only the engine can feed (text with images)
    params: SamplingParams
    cancel: threading.Event
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    slot: Slot | None = None
    fed: int = 0  # prompt tokens in the KV stream (token prompts)
    n_prompt: int = 0
    cached: int = 0
    budget: int = 0
    produced: int = 0
    next_token: int | None = None  # sampled, not yet decoded
    row: int = -1  # this step's logits row
    sampler: Any = None
    matcher: StopMatcher | None = None
    pending: list[TokenLogprob] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    prompt_done: float = 0.0

    def results(self) -> Iterator[TextDelta | Finish]:
        while True:
            item = self.out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finish):
                return


@dataclass
class Stats:
    """Totals since start, for /metrics."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=4096))  # (time, generated, prompt) per step


class Scheduler:
    def __init__(self, engine: Feeder, ctx: Any, *, parallel: int, n_batch: int, max_waiting: int):
        import llama_cpp

        self._lc = llama_cpp
        self.engine = engine
        self.ctx = ctx  # a llama_cpp._internals.LlamaContext with n_seq_max >= parallel
        self._mem = llama_cpp.llama_get_memory(ctx.ctx)
        self.slots = [Slot(i) for i in range(parallel)]
        self.n_batch = n_batch
        self.max_waiting = max_waiting
        self.batch = TokenBatch(n_batch)
        self.stats = Stats()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="nexa-scheduler", daemon=True)
        self._thread.start()

    # -- called from request threads -----------------------------------------------------------

    def submit(self, prompt: Any, params: SamplingParams, cancel: threading.Event) -> Job:
        """Queue a request; raises Overloaded when the queue is full."""
        job = Job(prompt, params, cancel)
        with self._cond:
            free = sum(1 for s in self.slots if s.job is None)
            if len(self._waiting) >= free + self.max_waiting:
                raise Overloaded(
                    f"The server is busy: {len(self._active)} requests are running and "
                    f"{len(self._waiting)} are waiting (--parallel {len(self.slots)}, --max-queue "
                    f"{self.max_waiting}). Retry in a moment."
                )
            self._waiting.append(job)
            self._cond.notify()
        return job

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def throughput(self, window_s: float = 10.0) -> tuple[float, float]:
        """(generated, prompt) tokens per second over the last `window_s` seconds."""
        cut = time.perf_counter() - window_s
        steps = [(g, p) for t, g, p in list(self.stats.recent) if t >= cut]
        return sum(g for g, _ in steps) / window_s, sum(p for _, p in steps) / window_s

    def kv_used(self) -> int:
        return sum(len(s.cache) for s in self.slots)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._waiting and not self._active:
                    self._cond.wait()
                if self._closing:
                    for job in [*self._waiting, *self._active]:
                        job.out.put(RuntimeError("the server is shutting down"))
                    return
                try:
                    admitted = self._admit()
                except Exception as exc:  # never leave a request waiting on a dead thread
                    log.exception("admitting requests failed")
                    admitted = []
                    while self._waiting:
                        self._waiting.popleft().out.put(exc)
            for job in admitted:
                self._guard(job, self._start)
            try:
                self._drop_cancelled()
                if self._active:
                    self._step()
            except Exception as exc:  # a failed decode fails the requests in it, not the server
                log.exception("decode step failed")
                for job in list(self._active):
                    self._retire(job, exc)

    def _guard(self, job: Job, fn: Any) -> None:
        try:
            fn(job)
        except Exception as exc:
            self._retire(job, exc)

    def _admit(self) -> list[Job]:
        """Give waiting requests free slots, each the one whose cache covers most of its prompt."""
        admitted = []
        while self._waiting:
            job = self._waiting[0]
            if job.cancel.is_set():
                self._waiting.popleft().out.put(_END)
                continue
            free = [s for s in self.slots if s.job is None]
            if not free:
                break
            self._waiting.popleft()
            slot = max(free, key=lambda s: (self.engine.reusable(s, job.prompt)[0], -s.used_at))
            slot.job, job.slot = job, slot
            self._active.append(job)
            admitted.append(job)
        return admitted

    def _start(self, job: Job) -> None:
        slot = job.slot
        assert slot is not None
        job.started = time.perf_counter()
        keep, job.cached = self.engine.reusable(slot, job.prompt)
        if not self._lc.llama_memory_seq_rm(self._mem, slot.seq, keep, -1):
            self._lc.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            keep = job.cached = 0
        slot.forget_from(keep)
        job.n_prompt = len(job.prompt)
        job.budget = self.engine.n_ctx - job.n_prompt
        if job.params.max_tokens is not None:
            job.budget = min(job.budget, job.params.max_tokens)
        job.matcher = StopMatcher(job.params.stop)
        job.sampler = self.engine.new_sampler(job.params)
        if isinstance(job.prompt, list):
            job.fed = keep  # the rest is decoded in chunks by _step, beside everyone else
            return
        # A prompt with images is fed here, alone: its image embeddings go in by mtmd's helper.
        self.engine.feed_special(self, slot, job.prompt, keep)
        job.fed = job.n_prompt
        job.prompt_done = time.perf_counter()
        self._sample(job, -1)

    def decode_tokens(self, slot: Slot, tokens: list[int], logits_last: bool) -> None:
        """Decode tokens of one sequence on their own (prompt text around images)."""
        for i in range(0, len(tokens), self.n_batch):
            part = tokens[i : i + self.n_batch]
            last = logits_last and i + len(part) == len(tokens)
            self.batch.clear()
            self.batch.add(part, len(slot.cache), slot.seq, "last" if last else "none")
            self._decode()
            slot.cache.extend(part)

    def _decode(self) -> None:
        rc = self._lc.llama_decode(self.ctx.ctx, self.batch.struct)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} on a batch of {self.batch.n} tokens")

    def _step(self) -> None:
        # What each request puts in this step: its sampled token if generating, else as much of
        # its prompt as the rows left over allow, oldest request first.
        room = self.n_batch - sum(1 for j in self._active if j.next_token is not None)
        parts: dict[int, list[int]] = {}
        for job in self._active:
            if job.next_token is not None:
                parts[id(job)] = [job.next_token]
            elif job.fed < job.n_prompt and room > 0:
                parts[id(job)] = job.prompt[job.fed : job.fed + room]
                room -= len(parts[id(job)])
        # Rows go in sequence order: llama.cpp splits a batch over per-sequence KV streams, and
        # rows out of order made a step of 8 decoding requests take 1.8x as long.
        batch = self.batch
        batch.clear()
        rows: list[tuple[Job, list[int]]] = []
        for job in sorted(self._active, key=lambda j: j.slot.seq if j.slot else 0):
            job.row = -1
            part = parts.get(id(job))
            if not part:
                continue
            slot = job.slot
            assert slot is not None
            generating = job.next_token is not None
            done = generating or job.fed + len(part) == job.n_prompt
            row = batch.add(part, len(slot.cache), slot.seq, "last" if done else "none")
            job.row = row if done else -1
            if not generating:
                job.fed += len(part)
            rows.append((job, part))
        if not rows:
            return
        self._decode()
        now = time.perf_counter()
        generated = 0
        for job, tokens in rows:
            assert job.slot is not None
            job.slot.cache.extend(tokens)
            generated += job.next_token is not None
        self.stats.recent.append((now, generated, batch.n - generated))
        for job in list(self._active):
            if job.row >= 0:
                if job.next_token is None:
                    job.prompt_done = now
                self._guard(job, lambda j: self._sample(j, j.row))

    def _sample(self, job: Job, row: int) -> None:
        engine, params = self.engine, job.params
        token = job.sampler.sample(self.ctx, row)
        matcher = job.matcher
        assert matcher is not None
        if engine.is_eog(token):
            return self._finish(job, "stop")
        if params.logprobs is not None:
            job.pending.append(engine.logprob_at(self.ctx.ctx, row, token, params.logprobs))
        job.produced += 1
        text = matcher.feed(engine.piece(token))
        if text or matcher.stopped:
            job.out.put(TextDelta(text, job.pending))
            job.pending = []
        if matcher.stopped:
            return self._finish(job, "stop")
        if job.produced >= job.budget:
            return self._finish(job, "length")
        job.next_token = token

    def _finish(self, job: Job, reason: str) -> None:
        assert job.matcher is not None
        if not job.matcher.stopped:
            tail = job.matcher.flush()
            if tail or job.pending:
                job.out.put(TextDelta(tail, job.pending))
        now = time.perf_counter()
        finish = Finish(
            reason=reason,
            prompt_tokens=job.n_prompt,
            completion_tokens=job.produced,
            cached_tokens=job.cached,
            prompt_seconds=job.prompt_done - job.started,
            generation_seconds=now - job.prompt_done,
        )
        s = self.stats
        s.requests += 1
        s.prompt_tokens += job.n_prompt
        s.cached_tokens += job.cached
        s.generated_tokens += job.produced
        s.prompt_seconds += finish.prompt_seconds
        s.generation_seconds += finish.generation_seconds
        self._retire(job, finish)

    def _retire(self, job: Job, last: Any) -> None:
        """Take a request out of its slot; the slot keeps its cache for the next request."""
        if job in self._active:
            self._active.remove(job)
        if job.slot is not None:
            if job.fed < job.n_prompt and not isinstance(job.prompt, list):
                job.slot.forget_from(0)  # an image prompt that failed half-way: trust nothing
                self._lc.llama_memory_seq_rm(self._mem, job.slot.seq, -1, -1)
            job.slot.job = None
            job.slot.used_at = time.perf_counter()
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        job.out.put(last)

    def _drop_cancelled(self) -> None:
        for job in list(self._active):
            if job.cancel.is_set():
                self._retire(job, _END)
        with self._cond:
            for job in [j for j in self._waiting if j.cancel.is_set()]:
                self._waiting.remove(job)
                job.out.put(_END)
