"""Continuous batching for one llama.cpp model: every active request decoded in one batch per step.

Over 400 lines because one class owns the context and every step on it: split, the rules
below that keep answers the same would be spread over several files.

A slot is a llama.cpp sequence id with its own KV stream of the full context. Each step decodes
one row for every request that is generating in one `llama_decode`, samples each request at its
own row with its own llama.cpp sampler chain (seed, penalties, grammar), then feeds new prompts
in chunks. A finished request leaves its tokens in its slot: the next request whose prompt
starts the same way (the next turn of a chat, a shared system prompt) takes that slot, or copies
it, and decodes only what is new. Which slot a request takes, and when a running one moves so that
a step decodes in one piece: placement.py.

Same tokens alone or in company. llama.cpp's CPU kernels give a row the same bits whatever else
is in the batch only if the row takes the same path every time, so:
- one KV stream per slot (`kv_unified=false`): with a unified cache the cells of concurrent
  requests interleave and attention sums them in another order (1 greedy answer in 8 changed);
- prompt rows never share a decode with other sequences: llama.cpp would split the batch into
  ubatches of equal rows per sequence, and a chunk's rows would take other paths;
- a cached prompt still decodes its last two tokens, and a prompt's last two rows are always a
  decode of their own: a repeated request decodes them in a batch of the same shape as its first
  run did, and answers the same.
On the CPU attention is plain (`--flash-attn auto`, llama/engine.py:use_flash_attn), which gives
a row the same bits however its prompt was cut into decodes (checked logit for logit). With
flash attention (layers on a GPU, long contexts, `--flash-attn on`) the CPU kernel has a tiled
path for 64+ query rows and a row-by-row one below, which round differently, and it passes over
masked cells rather than adding zeros. So the rows before the last two go in chunks of 64+ rows,
whose bits do not depend on where a chunk starts: the row-by-row path costs 3 to 8 times as much
per row at 200 to 2k cells (a 32-row last chunk was a tenth of a 950-token prompt's time). A
prompt that finds all but a few rows cached decodes them row by row, cheaper than a tile but not
to a cold run's bits; from PAD_FROM rows on, a tile is the cheaper of the two, and it starts on
cached rows to be whole (`kept`).
The price of a stream per slot is KV memory for `parallel` full contexts, which sizes the default.

The scheduler thread is the only one that touches the context. Requests come in through
`submit` and their results go out through a queue per request, so a slow client never holds
up the batch; a cancelled request leaves at the next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from nexa.channel import END, Channel, Stream
from nexa.engines.base import EngineStats, Finish, SamplingParams, TextDelta, TokenLogprob
from nexa.engines.llama import placement
from nexa.engines.llama.batch import TokenBatch
from nexa.engines.stops import StopMatcher
from nexa.errors import Overloaded

log = logging.getLogger("nexa.engine.scheduler")

FA_TILE = 64  # llama.cpp's CPU flash attention tiles 64+ query rows (GGML_FA_TILE_Q)
TAIL = 2  # rows of a prompt's last decode: the rows a cached prompt decodes again (redecode)
CHUNK = 256  # prompt rows per decode: as fast per token as 512 here, and half the stall for others
PAD_FROM = 32  # rows before the tail from which one tile costs less than decoding them row by row


def next_chunk(left: int) -> int:
    """Rows of the next prompt decode when `left` remain: the last TAIL rows on their own, the
    rows before them in chunks of FA_TILE to CHUNK rows (see the module notes)."""
    if left < FA_TILE:
        return left  # every row takes the row-by-row path in one decode
    head = left - TAIL
    if head <= CHUNK:
        return head
    return min(CHUNK, head - FA_TILE)  # leaves at least FA_TILE rows for the next chunk


def redecode(n: int) -> int:
    """Prompt tokens decoded again even when all are cached: a logits row for the first
    token, and one more because llama.cpp rounds a one-row batch differently."""
    return min(n, TAIL)


def kept(n: int, common: int, flash_attn: bool) -> int:
    """Rows to keep of the `common` first ones of an n-token prompt that a slot holds: all but
    the last TAIL, or with flash attention fewer where the rows between need a tile (see the
    module notes)."""
    keep = max(0, min(common, n - redecode(n)))
    if flash_attn and PAD_FROM <= n - TAIL - keep < FA_TILE <= n - TAIL:
        keep = n - TAIL - FA_TILE  # cached rows decoded again, to the bits they already have
    return keep


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
    out: Channel = field(default_factory=Channel)
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
    started: float = 0.0
    prompt_done: float = 0.0

    def results(self) -> Stream[TextDelta | Finish]:
        """Read blocking, or awaited on the server's loop straight from this scheduler's thread."""
        return Stream(self.out)


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

    def snapshot(self) -> EngineStats:
        s = self.stats
        gen_rate, prompt_rate = self.throughput()
        return EngineStats(
            running=self.running,
            waiting=self.waiting,
            slots=len(self.slots),
            requests=s.requests,
            prompt_tokens=s.prompt_tokens,
            cached_tokens=s.cached_tokens,
            generated_tokens=s.generated_tokens,
            prompt_seconds=s.prompt_seconds,
            generation_seconds=s.generation_seconds,
            generation_tokens_per_second=gen_rate,
            prompt_tokens_per_second=prompt_rate,
            kv_cache_tokens=self.kv_used(),
            kv_cache_capacity_tokens=len(self.slots) * self.engine.n_ctx,
        )

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            admitted: list[Job] = []
            # Between the steps of running requests the lock is taken only when a request waits
            # or the scheduler closes (read without it: whatever comes meanwhile is seen at the
            # next step); taking it every step cost as much as the rest of a token's bookkeeping.
            if self._waiting or self._closing or not self._active:
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
        """Give waiting requests free slots (see placement.py)."""
        admitted = []
        while self._waiting:
            job = self._waiting[0]
            if job.cancel.is_set():
                self._waiting.popleft().out.put(END)
                continue
            free = [s for s in self.slots if s.job is None]
            if not free:
                break
            self._waiting.popleft()
            choice = placement.choose(self.slots, {s.seq: self.engine.reusable(s, job.prompt)[0] for s in free},
                                      len(job.prompt))
            slot = choice.slot
            if choice.save_to is not None:
                self._copy(slot, choice.save_to)  # a cache LRU eviction would keep
            slot.job, job.slot = job, slot
            self._active.append(job)
            admitted.append(job)
        return admitted

    def _start(self, job: Job) -> None:
        slot = job.slot
        assert slot is not None
        job.started = time.perf_counter()
        keep, job.cached = self.engine.reusable(slot, job.prompt)
        keeps = {s.seq: keep if s is slot else self.engine.reusable(s, job.prompt)[0] for s in self.slots}
        donor = placement.donor(self.slots, slot, keeps, len(job.prompt))
        if donor is not None:
            self._copy(donor, slot)
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
            job.fed = keep  # the rest is decoded in chunks by _step, after each step's generating rows
            return
        # A prompt with images is fed here, alone: its image embeddings go in by mtmd's helper.
        self.engine.feed_special(self, slot, job.prompt, keep)
        job.fed = job.n_prompt
        job.prompt_done = time.perf_counter()
        self._sample(job, -1)

    def _copy(self, src: Slot, dst: Slot) -> None:
        # llama.cpp copies between streams whole, in order, at the start of the next decode
        # (before that decode writes anything): src's cells up to its current length arrive.
        self._lc.llama_memory_seq_cp(self._mem, src.seq, dst.seq, -1, -1)
        dst.cache, dst.images, dst.used_at = list(src.cache), dict(src.images), src.used_at

    def decode_tokens(self, slot: Slot, tokens: list[int], logits_last: bool) -> None:
        """Decode tokens of one sequence on their own (prompt text around images)."""
        i = 0
        while i < len(tokens):
            part = tokens[i : i + next_chunk(len(tokens) - i)]
            i += len(part)
            self._decode_chunk(slot, part, logits_last and i == len(tokens))

    def _decode_chunk(self, slot: Slot, part: list[int], logits_last: bool) -> None:
        """One prompt chunk of one sequence, alone in its decode (see the module notes)."""
        self.batch.clear()
        self.batch.add(part, len(slot.cache), slot.seq, "last" if logits_last else "none")
        self._decode()
        slot.cache.extend(part)

    def _decode(self) -> None:
        rc = self._lc.llama_decode(self.ctx.ctx, self.batch.struct)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} on a batch of {self.batch.n} tokens")

    def _compact(self) -> None:
        """Close a gap between busy slots by moving one generating request (see placement.py)."""
        if len(self._active) < 2:  # one busy slot is one run: nothing to close (the common case, per token)
            return
        move = placement.gap_move(self.slots, {j.slot.seq for j in self._active if j.next_token is not None and j.slot})
        if move is not None:
            self._move(*move)

    def _move(self, src: Slot, dst: Slot) -> None:
        """Move the request in `src` to the free slot `dst`, its cache with it."""
        job = src.job
        assert job is not None
        self._copy(src, dst)
        self._lc.llama_memory_seq_rm(self._mem, src.seq, -1, -1)
        src.forget_from(0)
        src.used_at = 0.0  # nothing left to keep
        dst.job, job.slot, src.job = job, dst, None

    def _step(self) -> None:
        self._compact()
        batch = self.batch
        active = self._active
        if len(active) == 1:  # the common case, once per token: no sort
            generating = [active[0]] if active[0].next_token is not None else []
        else:
            generating = sorted((j for j in active if j.next_token is not None), key=lambda j: j.slot.seq)  # type: ignore[union-attr]
        if generating:
            # One row per generating request, in sequence order: llama.cpp splits a batch over
            # per-sequence streams in order, and rows out of order cost a step 1.8x the time.
            batch.clear()
            for job in generating:
                assert job.slot is not None and job.next_token is not None
                job.row = batch.add([job.next_token], len(job.slot.cache), job.slot.seq)
            self._decode()
            # Bookkeeping after every token is out: the server handles a token meanwhile.
            for job in generating:
                job.slot.cache.append(job.next_token)  # type: ignore[union-attr,arg-type]
                try:
                    self._sample(job, job.row)
                except Exception as exc:
                    self._retire(job, exc)
            self.stats.recent.append((time.perf_counter(), len(generating), 0))
        # Then new prompts, oldest first, a chunk per decode, up to n_batch rows this step.
        budget = self.n_batch
        for job in [j for j in self._active if j.next_token is None and j.fed < j.n_prompt]:
            if budget <= 0:
                break
            slot = job.slot
            assert slot is not None
            part = job.prompt[job.fed : job.fed + next_chunk(job.n_prompt - job.fed)]
            done = job.fed + len(part) == job.n_prompt
            self._decode_chunk(slot, part, done)
            self.stats.recent.append((time.perf_counter(), 0, len(part)))
            job.fed += len(part)
            budget -= len(part)
            if done:
                job.prompt_done = time.perf_counter()
                self._guard(job, lambda j: self._sample(j, -1))

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
            stop_sequence=job.matcher.matched,
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
        if last is not END:
            job.out.put(END)

    def _drop_cancelled(self) -> None:
        for job in list(self._active):
            if job.cancel.is_set():
                self._retire(job, END)
        if not self._waiting:  # read without the lock: a request queued meanwhile is seen next step
            return
        with self._cond:
            for job in [j for j in self._waiting if j.cancel.is_set()]:
                self._waiting.remove(job)
                job.out.put(END)
