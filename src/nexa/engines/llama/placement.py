"""Which slot a request takes, and when a running request moves to another: the scheduler's
rules for keeping a step's decode in one piece without giving up caches.

llama.cpp decodes the KV streams of a step together only when their sequence ids are
consecutive; otherwise it splits the step into one decode per run of ids. Here 4 requests in
slots 0, 2, 4, 6 took 28.5 ms a step against 18-19.5 ms in four consecutive slots: one
request's speed. So busy slots are kept consecutive, by the choice of a slot for a new request
and by moving a running request into an empty slot when others leave a gap. A stream's cache
is copied to another stream in one piece (a few ms for a small model), far less than a split
step costs over a whole answer, and the copy is the same bits.

Pure functions over the slots (scheduler.Slot: seq, cache, job, used_at); the scheduler makes
the copies they ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nexa.engines.llama.scheduler import Slot

SIMILAR = 0.1  # a slot is chosen for its cache when it holds this share of the prompt (as llama-server)...
# ...and at least this many tokens; fewer are not worth keeping or copying. A copy costs about
# what one or two tokens of prompt take to decode on a CPU, so the system prompt that every
# request of an application repeats is worth it: requests sharing a 22-token start decoded their
# prompt in ~98 ms with 8 here, ~135 ms with 32 (SmolLM2 on 2 cores, as llama-server's ~100 ms).
MIN_SHARED = 8


def runs(ids: set[int]) -> int:
    """How many runs of consecutive numbers `ids` makes: {0, 1, 3} is two."""
    return sum(1 for i in ids if i - 1 not in ids)


@dataclass
class Choice:
    slot: Slot
    save_to: Slot | None = None  # copy the slot's cache here before the request overwrites it


def choose(slots: list[Slot], keep: dict[int, int], n_prompt: int) -> Choice:
    """A free slot for a request whose prompt has `n_prompt` tokens, `keep[seq]` of them
    cached in free slot `seq`. The rules, in order:
    1. Lose no cache that least-recently-used eviction would keep. A request whose cache is in
       a free slot (MIN_SHARED tokens and a tenth of its prompt) evicts nothing by taking it; a
       new request evicts an empty stream or the least recently used cache. Any other slot is
       as good when what it holds can first be copied over that stream.
    2. Keep the busy ids in the fewest runs.
    3. The longest cached start of the prompt, then the least recently used."""
    free = [s for s in slots if s.job is None]
    busy = {s.seq for s in slots if s.job is not None}

    def worth(s: Slot) -> int:
        return keep[s.seq] if keep[s.seq] >= max(MIN_SHARED, SIMILAR * n_prompt) else 0

    own = max(free, key=lambda s: (worth(s), -s.used_at))
    # Nothing worth keeping, unless it is this very prompt (a short repeat copies it, see donor).
    spare = [s for s in free if len(s.cache) < MIN_SHARED and not _all_cached(keep[s.seq], n_prompt)]
    if not worth(own) and not spare:
        spare = [min(free, key=lambda s: s.used_at)]

    def save_to(s: Slot) -> Slot | None:
        return min((z for z in spare if z is not s), key=lambda z: z.used_at, default=None)

    def loses(s: Slot) -> bool:
        lost = len(s.cache) - keep[s.seq]
        return not ((s is own and worth(s) > 0) or s in spare or lost < MIN_SHARED or save_to(s) is not None)

    slot = min(free, key=lambda s: (loses(s), runs(busy | {s.seq}), -worth(s), s.used_at))
    if slot in spare or len(slot.cache) - keep[slot.seq] < MIN_SHARED:
        return Choice(slot)
    return Choice(slot, save_to(slot))


def donor(slots: list[Slot], slot: Slot, keep: dict[int, int], n_prompt: int) -> Slot | None:
    """Another slot whose cache the request in `slot` should copy, `keep[seq]` being what each
    slot holds of its prompt: one with MIN_SHARED more tokens of it (a shared system prompt, a
    chat whose cache is not next to the busy slots), or with the whole prompt (all but the two
    tokens always decoded again). A repeated request, however short, must meet the cells its
    first run left: recomputed from another start, the same tokens may round otherwise and a
    greedy answer change."""
    others = [s for s in slots if s is not slot]
    if not others:
        return None
    best = max(others, key=lambda s: keep[s.seq])
    longest = keep[best.seq]
    whole = longest > keep[slot.seq] and _all_cached(longest, n_prompt)
    return best if longest >= keep[slot.seq] + MIN_SHARED or whole else None


def _all_cached(keep: int, n_prompt: int) -> bool:
    """Whether `keep` is all of a prompt a cache can give: all but the last two tokens, which
    are always decoded again (scheduler.redecode)."""
    return 0 < n_prompt - 2 <= keep


def gap_move(slots: list[Slot], movable: set[int]) -> tuple[Slot, Slot] | None:
    """(from, to): a request (its slot's id in `movable`) to move into a free slot so that the
    busy ids make fewer runs, or None. Only into a slot with nothing worth keeping: a slot just
    left holds the cache of a conversation that may come back."""
    busy = {s.seq for s in slots if s.job is not None}
    now = runs(busy)
    if now < 2:
        return None
    moves = [
        (runs(busy - {src.seq} | {dst.seq}), src.seq, dst.seq, src, dst)
        for src in slots
        if src.seq in movable
        for dst in slots
        if dst.job is None and len(dst.cache) < MIN_SHARED
    ]
    best = min(moves, key=lambda m: m[:3], default=None)
    return (best[3], best[4]) if best is not None and best[0] < now else None
