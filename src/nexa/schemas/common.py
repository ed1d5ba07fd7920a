"""Pieces shared by every endpoint's schemas."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict


class RequestModel(BaseModel):
    """Requests ignore fields they do not know (clients of both APIs send extras)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    # OpenAI's `created` is whole seconds; the original sent a float, which strict clients reject.
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
