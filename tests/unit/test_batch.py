"""TokenBatch: the rows a llama_batch hands llama.cpp, filled one token (a generating request)
or many (a prompt chunk) at a time."""

from __future__ import annotations

import numpy as np

from nexa.engines.llama.batch import TokenBatch


def rows(b: TokenBatch) -> list[tuple[int, int, int, int]]:
    n = b.struct.n_tokens
    return [(int(b._tok[i]), int(b._pos[i]), int(b._seq[i]), int(b._out[i])) for i in range(n)]


def test_single_rows_and_chunks_fill_the_same_fields() -> None:
    b = TokenBatch(8)
    assert b.add([5], 100, 3) == 0  # logits for its one row ("last")
    assert b.add([6], 7, 1, "none") == 1
    assert b.add([7], 9, 2, "all") == 2
    assert b.add([1, 2, 3], 10, 4) == 5
    assert b.add([8, 9], 0, 5, "all") == 7
    assert rows(b) == [
        (5, 100, 3, 1), (6, 7, 1, 0), (7, 9, 2, 1),
        (1, 10, 4, 0), (2, 11, 4, 0), (3, 12, 4, 1),
        (8, 0, 5, 1), (9, 1, 5, 1),
    ]  # fmt: skip
    # every row has one sequence id, and its pointer points at that id
    assert all(b.struct.n_seq_id[i] == 1 and b.struct.seq_id[i][0] == b._seq[i] for i in range(8))
    assert np.array_equal(np.ctypeslib.as_array(b.struct.token, shape=(8,)), b._tok)


def test_a_full_batch_refuses_more_rows_and_clear_empties_it() -> None:
    b = TokenBatch(2)
    b.add([1, 2], 0, 0)
    try:
        b.add([3], 2, 0)
    except ValueError as exc:
        assert "do not fit" in str(exc)
    else:
        raise AssertionError("a third row went into a batch of two")
    b.clear()
    assert b.add([3], 2, 0) == 0 and b.struct.n_tokens == 1
