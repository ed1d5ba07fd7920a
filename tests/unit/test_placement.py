"""Slot placement rules (engines/llama/placement.py) on slots made up here; the real engine's
behaviour under them is in tests/integration/test_batching.py."""

from __future__ import annotations

from nexa.engines.llama.placement import MIN_SHARED, choose, donor, gap_move, runs
from nexa.engines.llama.scheduler import Slot

LONG = MIN_SHARED + 20


def slots(*spec: tuple[bool, int, float]) -> list[Slot]:
    """(busy, cached tokens, used_at) per slot."""
    out = []
    for seq, (busy, cached, used_at) in enumerate(spec):
        s = Slot(seq)
        s.job = object() if busy else None  # type: ignore[assignment]
        s.cache = [seq] * cached
        s.used_at = used_at
        out.append(s)
    return out


def test_runs():
    assert runs(set()) == 0 and runs({3}) == 1 and runs({0, 1, 2}) == 1 and runs({0, 2, 4, 6}) == 4


def test_a_new_request_goes_next_to_the_busy_ones_and_the_displaced_cache_is_kept():
    # Slot 0 busy; slot 1 holds a recent cache, slot 3 the oldest: the request takes slot 1 and
    # slot 1's cache is first copied over slot 3's, which LRU eviction would have given up.
    s = slots((True, LONG, 5), (False, LONG, 4), (False, LONG, 3), (False, LONG, 1))
    c = choose(s, {1: 0, 2: 0, 3: 0}, 40)
    assert c.slot.seq == 1 and c.save_to is not None and c.save_to.seq == 3


def test_an_empty_slot_next_to_the_busy_ones_needs_no_copy():
    s = slots((False, LONG, 1), (True, LONG, 5), (False, 0, 0), (False, LONG, 2))
    c = choose(s, {0: 0, 2: 0, 3: 0}, 40)
    assert c.slot.seq == 2 and c.save_to is None


def test_a_conversation_takes_its_own_cache_rather_than_evict_another():
    # Its cache is in slot 3, away from the busy slot 0; every other slot holds a cache and none
    # is empty, so going next to slot 0 would cost a cache that LRU would keep.
    s = slots((True, LONG, 5), (False, LONG, 1), (False, LONG, 2), (False, LONG + 10, 4))
    c = choose(s, {1: 0, 2: 0, 3: LONG}, LONG + 20)
    assert c.slot.seq == 3 and c.save_to is None


def test_with_an_empty_slot_spare_a_conversation_goes_next_to_the_busy_ones():
    # Slot 1's cache can go to the empty slot 4; the conversation's own cache (slot 3) is copied
    # to slot 1 when the request starts (placement.donor).
    s = slots((True, LONG, 5), (False, LONG, 3), (False, LONG, 2), (False, LONG + 10, 4), (False, 0, 0))
    c = choose(s, {1: 0, 2: 0, 3: LONG, 4: 0}, LONG + 20)
    assert c.slot.seq == 1 and c.save_to is not None and c.save_to.seq == 4


def test_a_short_shared_prefix_is_not_a_cache_worth_scattering_for():
    # A few tokens of a system prompt shared with slot 3 (over a tenth of the prompt, under MIN_SHARED).
    s = slots((True, LONG, 5), (False, 0, 0), (False, LONG, 1), (False, LONG, 4))
    assert choose(s, {1: 0, 2: 0, 3: MIN_SHARED - 1}, 45).slot.seq == 1


def test_a_gap_is_closed_only_through_an_empty_slot():
    s = slots((True, LONG, 0), (False, LONG, 3), (True, LONG, 0), (True, LONG, 0), (False, 0, 0))
    assert [x.seq for x in gap_move(s, {0, 2, 3})] == [0, 4]  # type: ignore[union-attr]
    assert gap_move(s, {2, 3}) is None  # the request in slot 0 is still reading its prompt
    s[4].cache = [4] * LONG  # slot 4 now holds a cache too: keep the gap
    assert gap_move(s, {0, 2, 3}) is None
    assert gap_move(slots((True, 0, 0), (True, 0, 0), (False, 0, 0)), {0, 1}) is None  # one run already


def test_a_request_copies_a_much_longer_start_or_its_whole_prompt():
    s = slots((False, 0, 0), (True, LONG, 1), (False, 20, 4))
    # 20 tokens, 18 of them cached in slot 2 (all but the two always decoded again): a repeat,
    # short as it is, copies its first run's cells.
    assert donor(s, s[0], {0: 0, 1: 0, 2: 18}, 20) is s[2]
    assert donor(s, s[0], {0: 0, 1: 0, 2: MIN_SHARED - 1}, 20) is None  # a shorter shared start is recomputed
    assert donor(s, s[0], {0: 0, 1: 0, 2: MIN_SHARED}, 20) is s[2]  # a system prompt's worth is copied
    assert donor(s, s[0], {0: 0, 1: MIN_SHARED + 5, 2: 10}, 80) is s[1]  # a busy slot's long prefix
    assert donor(s, s[0], {0: 18, 1: 0, 2: 18}, 20) is None  # already here
    # Nor is such a cache the stream given up for another's: slot 1's goes to the empty slot 3.
    s = slots((True, LONG, 5), (False, LONG, 3), (False, 20, 1), (False, 0, 2))
    c = choose(s, {1: 0, 2: 18, 3: 0}, 20)
    assert c.slot.seq == 1 and c.save_to is s[3]
