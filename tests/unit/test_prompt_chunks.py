"""How a prompt is cut into decodes (engines/llama/scheduler.py's module notes say why)."""

import pytest

from nexa.engines.llama.engine import use_flash_attn
from nexa.engines.llama.scheduler import CHUNK, FA_TILE, PAD_FROM, TAIL, kept, next_chunk, redecode


def plan(n: int) -> list[int]:
    parts = []
    while n:
        parts.append(next_chunk(n))
        n -= parts[-1]
    return parts


@pytest.mark.parametrize("n", [66, 67, 200, 257, 258, 259, 300, 321, 322, 323, 513, 950, 1000, 4096])
def test_a_long_prompt_ends_with_the_rows_a_cached_one_decodes_again(n):
    parts = plan(n)
    assert sum(parts) == n
    assert parts[-1] == TAIL == redecode(n)  # the same shape in the first run and a repeat
    # every row before them on flash attention's tiled path, in decodes no bigger than CHUNK
    assert all(FA_TILE <= p <= CHUNK for p in parts[:-1]), parts


def test_a_short_prompt_is_one_decode_and_near_the_tile_the_rest_goes_first():
    assert plan(1) == [1] and plan(2) == [2] and plan(63) == [63]
    assert plan(64) == [62, 2] and plan(65) == [63, 2]  # only these put prompt rows under a tile
    assert plan(300) == [234, 64, 2]  # not 256 then 42 rows on the slow path


@pytest.mark.parametrize(
    ("n", "common", "keep"),
    [
        (1000, 1000, 998),  # a repeat decodes its last TAIL rows again
        (1000, 990, 990),  # a few rows: row by row
        (1000, 950, 1000 - TAIL - FA_TILE),  # PAD_FROM to a tile's worth: one tile, started early
        (1000, 1000 - TAIL - PAD_FROM, 1000 - TAIL - FA_TILE),
        (1000, 1000 - TAIL - PAD_FROM + 1, 1000 - TAIL - PAD_FROM + 1),
        (1000, 900, 900),  # a tile's worth or more
        (60, 20, 20),  # a prompt under a tile and its tail is row by row even when cold
        (66, 20, 0),
        (1, 1, 0),
        (100, 0, 0),
    ],
)
def test_a_cached_prompt_keeps_what_leaves_its_rows_on_a_cold_runs_paths(n, common, keep):
    assert kept(n, common, flash_attn=True) == keep
    # plain attention gives a row the same bits however its prompt was cut: nothing decoded again
    assert kept(n, common, flash_attn=False) == max(0, min(common, n - redecode(n)))


@pytest.mark.parametrize(
    ("setting", "gpu_layers", "n_ctx", "on"),
    [
        ("auto", 0, 2048, False),  # the CPU: tokens decode faster without it
        ("auto", 0, 8192, False),
        ("auto", 0, 8193, True),  # a long context: its compute buffer stays small
        ("auto", 1, 2048, True),  # layers on a GPU
        ("on", 0, 2048, True),
        ("off", 31, 32768, False),
    ],
)
def test_flash_attention_where_it_pays(setting, gpu_layers, n_ctx, on):
    assert use_flash_attn(setting, gpu_layers, n_ctx) is on
