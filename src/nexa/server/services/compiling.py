"""Grammar compilation off the event loop, with a deadline.

Compiling a JSON schema into a grammar is CPU work proportional to the schema: on the event
loop, one pathological schema stalled every other request and /health (issue 16). It runs in a
worker thread instead; past the deadline the request is a 400. A thread cannot be stopped, so
the compiler's own size limits (nexa.structured.builder.Limits) are what make it always end
quickly: the deadline only keeps a request from waiting on a compilation it would not use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from nexa.errors import InvalidRequest
from nexa.server.threads import in_thread

T = TypeVar("T")
DEADLINE_S = 5.0


async def compile_in_thread(fn: Callable[..., T], *args: Any, param: str, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` (plan_chat, response_format_grammar) in a worker thread, or a 400
    naming `param` when it runs past DEADLINE_S."""
    try:
        return await asyncio.wait_for(in_thread(lambda: fn(*args, **kwargs)), DEADLINE_S)
    except TimeoutError:
        raise InvalidRequest(
            f"The grammar for {param} took longer than {DEADLINE_S:g} s to build; send a smaller schema.",
            param=param,
        ) from None
