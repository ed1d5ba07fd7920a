"""What the HTTP process and a model worker say to each other over their socket.

Messages are pickled tuples (multiprocessing's Connection frames them). Parent to worker:
  ("call", id, method, args, kwargs, gather)
                                       run engine.method(*args, **kwargs) in a thread of its own;
                                       with `gather`, a stream's text items come as one, before
                                       its end (a caller that reads the whole answer anyway)
  ("cancel", id)                       set the cancel event the call was given
  ("release", ref)                     drop an object the worker kept for the parent
  ("close",)                           close the engine and exit
Worker to parent:
  ("ready", EngineFacts) | ("failed", message)   once, after loading
  ("ok", id, value) | ("err", id, RemoteError)   a call's result
  ("stream", id), then ("item", id, x)*, then ("end", id) or ("err", id, RemoteError)
                                                 a call that returned an iterator; a TextDelta
                                                 without logprobs (a streamed token) travels as
                                                 ("text", id, str), a tenth of the unpickling

Values that cannot travel (an image prompt holding native pointers, a decoded recording of
hundreds of MB) stay in the worker and travel as a `Ref`; a Ref given back as an argument
becomes the object again, once.
"""

from __future__ import annotations

import importlib
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A message's length before its bytes, as multiprocessing's Connection frames it (both ends
# write and read small messages themselves: Worker.send, RemoteEngine._pull).
FRAME_SIZE = struct.Struct("!i")

# A decoded hour of audio is 230 MB of float32: sent there and back it would cost more than the
# work. Arrays above this size stay in the worker.
KEEP_ARRAYS_OVER_BYTES = 1 << 20


@dataclass(frozen=True)
class CancelToken:
    """Stands in for the threading.Event a call was given; the worker makes its own."""


@dataclass(frozen=True)
class Ref:
    """An object kept in the worker."""

    id: int
    kind: str


@dataclass
class EngineFacts:
    """What the parent needs to answer for the engine without asking the worker."""

    kind: str  # the engine class, "module:Class"
    attributes: dict[str, Any]  # plain public attributes: name, tasks, n_ctx, weights...
    methods: set[str]  # public methods to call in the worker
    local: dict[str, str] = field(default_factory=dict)  # method -> "module:Class" whose code runs in the parent


@dataclass
class RemoteError:
    """An exception raised in the worker, rebuilt in the parent with its type and attributes."""

    kind: str  # "module:QualName"
    args: tuple[Any, ...]
    attributes: dict[str, Any]
    text: str

    @classmethod
    def of(cls, exc: BaseException) -> RemoteError:
        kind = f"{type(exc).__module__}:{type(exc).__qualname__}"
        attributes = {k: v for k, v in vars(exc).items() if _travels(v)}
        args = tuple(a for a in exc.args if _travels(a))
        return cls(kind, args, attributes, f"{type(exc).__name__}: {exc}")

    def rebuild(self) -> BaseException:
        """The same exception type when it can be imported here (so a 400 stays a 400)."""
        module, _, name = self.kind.partition(":")
        try:
            kind = getattr(importlib.import_module(module), name)
            if isinstance(kind, type) and issubclass(kind, BaseException):
                exc = kind.__new__(kind)
                exc.args = self.args
                exc.__dict__.update(self.attributes)
                return exc
        except Exception:  # an exception type the parent cannot import: keep its text
            pass
        return RuntimeError(self.text)


def _travels(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def stays_in_worker(value: Any) -> bool:
    """Whether a result must be kept in the worker rather than sent."""
    if isinstance(value, np.ndarray):
        return value.nbytes > KEEP_ARRAYS_OVER_BYTES
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return False
    return not _travels(value)
