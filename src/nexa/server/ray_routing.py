"""How nexa's Ray Serve router picks a replica: by the request's model, then by its prompt's start.

`request_keys` reads what routing needs from a request body: the `model` it names (Ray Serve's
multiplexed model id) and a key of its prompt's first characters. `PrefixRouter` is a Ray Serve
request router (ray.serve.request_router) that sends requests with the same key to the same
replica (rendezvous hashing over the replicas that hold the model), so the next turn of a
conversation, or another chat with the same long system prompt, lands on the replica whose
llama.cpp slots already hold that prefix (engines/llama/scheduler.py reuses it) and skips its
prompt processing. A busy preferred replica spills over: the other replicas are the next rank.
Requests without a key (short prompts, other endpoints) are routed as Ray's default router does:
the less loaded of two random replicas.

Ray's own PrefixCacheAffinityRouter (ray.serve.llm) needs ray[llm] and reads vLLM's request
objects; a key of characters, hashed here, needs neither.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

PREFIX_CHARS = 512  # about 128 tokens: a system prompt, or a conversation's first turn
MIN_PREFIX_CHARS = 256  # shorter prompts cost little to process again: balance load instead


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list (images are not part of the key)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_start(body: dict[str, Any]) -> str:
    """The start of what the model will read, in the order it reads it: system text, then messages
    (chat, /v1/messages), or the prompt (completions), or the input (/v1/responses)."""
    parts = [_text(body.get("instructions")), _text(body.get("system"))]
    messages = body.get("messages")
    if isinstance(messages, list):
        parts += [f"{m.get('role')}:{_text(m.get('content'))}" for m in messages if isinstance(m, dict)]
    for field in ("prompt", "input"):
        parts.append(_text(body.get(field)))
    return "\n".join(p for p in parts if p)


def request_keys(content_type: str, body: bytes) -> tuple[str, str]:
    """(model, prefix key) of a JSON body; empty strings where there is none."""
    if "json" not in content_type:
        return "", ""  # uploads (speech, images): routed by Ray's default, their model by the replica
    try:
        data = json.loads(body)
    except ValueError:
        return "", ""  # the replica answers the malformed body
    if not isinstance(data, dict):
        return "", ""
    model = data.get("model") if isinstance(data.get("model"), str) else ""
    start = prompt_start(data)
    key = "" if len(start) < MIN_PREFIX_CHARS else hashlib.sha1(start[:PREFIX_CHARS].encode()).hexdigest()
    return model or "", key


def _score(key: str, replica: RunningReplica) -> bytes:
    return hashlib.sha1(f"{key}/{replica.replica_id.unique_id}".encode()).digest()


class PrefixRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    """Requests with a prefix key go to the replica that key hashes to (among those holding the model)."""

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            ids = self.apply_multiplex_routing(pending_request=pending_request)
        else:
            ids = self.apply_locality_routing(pending_request=pending_request)
        replicas = [r for r in candidate_replicas if r.replica_id in ids]
        if not replicas:
            return []
        key = pending_request.kwargs.get("prefix", "") if pending_request is not None else ""
        if key:
            # Rendezvous hashing: a replica that comes or goes moves only the keys it wins.
            ranked = sorted(replicas, key=lambda r: _score(key, r), reverse=True)
            return [ranked[:1], ranked[1:]] if len(ranked) > 1 else [ranked]
        return [random.sample(replicas, min(2, len(replicas)))]
