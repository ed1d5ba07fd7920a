"""Turns: one call on a model at a time, a bounded number waiting, Overloaded past that."""

from __future__ import annotations

import threading

import pytest

from nexa.engines.base import Turns
from nexa.errors import Overloaded


def _hold(turns: Turns, entered: threading.Event, release: threading.Event) -> None:
    with turns():
        entered.set()
        release.wait(10)


def test_one_runs_max_waiting_wait_the_next_is_refused() -> None:
    turns = Turns(max_waiting=1)
    entered, release = threading.Event(), threading.Event()
    first = threading.Thread(target=_hold, args=(turns, entered, release))
    first.start()
    assert entered.wait(10)
    second_entered = threading.Event()
    second = threading.Thread(target=_hold, args=(turns, second_entered, release))
    second.start()
    while turns._admitted < 2:  # the second caller is counted before it blocks on the lock
        threading.Event().wait(0.01)
    assert not second_entered.is_set()  # it waits for its turn
    with pytest.raises(Overloaded, match="--max-queue 1"):
        with turns():
            pass
    release.set()
    first.join(10)
    second.join(10)
    assert second_entered.is_set() and turns._admitted == 0
    with turns():  # free again
        assert turns.lock.locked()


def test_a_failed_call_gives_its_turn_back() -> None:
    turns = Turns(max_waiting=0)
    with pytest.raises(RuntimeError):
        with turns():
            raise RuntimeError("engine error")
    with turns():
        pass
