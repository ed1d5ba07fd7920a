"""The typed events of a streamed `response`, written from the chat service's chunks.

Text deltas open a message item (`output_item.added`, `content_part.added`) and add
`output_text.delta`s; a named tool call closes whatever item was open and opens a
`function_call` item whose argument pieces are `function_call_arguments.delta`s. Closing an
item sends its `.done` events with the whole text or arguments; the last event is
`response.completed` (or `response.incomplete` when max_output_tokens cut the answer) with
the whole response, usage included.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from nexa.errors import NexaError
from nexa.schemas.common import Usage
from nexa.schemas.responses import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    ErrorEvent,
    FunctionCallItem,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    ResponseEvent,
    Status,
    StreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from nexa.schemas.text import ChatCompletionChunk

if TYPE_CHECKING:
    from nexa.server.services.responses import Reply

log = logging.getLogger("nexa.server")


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def item_status(finish: str | None) -> Status:
    return "incomplete" if finish == "length" else "completed"


async def stream(chunks: AsyncIterator[ChatCompletionChunk], reply: Reply) -> AsyncIterator[StreamEvent]:
    out = _Writer()
    model: str | None = None
    finish: str | None = None
    usage: Usage | None = None
    try:
        async for chunk in chunks:
            if model is None:  # the first chunk names the model that answers
                model = chunk.model
                started = reply.response(model, [], None, None)
                yield ResponseEvent(type="response.created", sequence_number=out.number(), response=started)
                yield ResponseEvent(type="response.in_progress", sequence_number=out.number(), response=started)
            usage = chunk.usage or usage
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    for event in out.text(delta.content):
                        yield event
                for call in delta.tool_calls or []:
                    if call.id is not None and call.function.name is not None:
                        for event in out.call(call.id, call.function.name):
                            yield event
                    if call.function.arguments:
                        for event in out.arguments(call.function.arguments):
                            yield event
                finish = choice.finish_reason or finish
        assert model is not None, "the chat stream always sends a first chunk"
        if not out.output and out.current is None:  # an empty answer is an empty message, as when not streamed
            for event in out.text(""):
                yield event
        for event in out.close(item_status(finish)):
            yield event
        done = reply.response(model, out.output, finish, usage)
        if done.status == "incomplete":
            yield ResponseEvent(type="response.incomplete", sequence_number=out.number(), response=done)
        else:
            yield ResponseEvent(type="response.completed", sequence_number=out.number(), response=done)
    except NexaError as exc:
        yield ErrorEvent(sequence_number=out.number(), code=exc.code or exc.type, message=exc.message,
                         param=exc.param)
    except Exception:
        log.exception("stream failed")
        yield ErrorEvent(sequence_number=out.number(), code="server_error",
                         message="The server failed while streaming.", param=None)


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class _Writer:
    """The output items of one stream: the one being written, those done, and event numbers."""

    def __init__(self) -> None:
        self.output: list[OutputItem] = []
        self.current: OutputMessage | FunctionCallItem | None = None
        self.pieces: list[str] = []
        self.sequence = 0

    def number(self) -> int:
        self.sequence += 1
        return self.sequence - 1

    def text(self, delta: str) -> Iterator[StreamEvent]:
        item = self.current
        if not isinstance(item, OutputMessage):
            yield from self.close("completed")
            item = OutputMessage(id=item_id("msg"), status="in_progress", content=[])
            yield from self._open(item)
            yield ContentPartEvent(type="response.content_part.added", sequence_number=self.number(), item_id=item.id,
                                   output_index=len(self.output), content_index=0, part=OutputText(text=""))
        if delta:
            self.pieces.append(delta)
            yield TextDeltaEvent(sequence_number=self.number(), item_id=item.id, output_index=len(self.output),
                                 content_index=0, delta=delta)

    def call(self, call_id: str, name: str) -> Iterator[StreamEvent]:
        yield from self.close("completed")
        item = FunctionCallItem(id=item_id("fc"), status="in_progress", call_id=call_id, name=name, arguments="")
        yield from self._open(item)

    def arguments(self, delta: str) -> Iterator[StreamEvent]:
        assert isinstance(self.current, FunctionCallItem), "argument text always follows its call's name"
        self.pieces.append(delta)
        yield ArgumentsDeltaEvent(sequence_number=self.number(), item_id=self.current.id,
                                  output_index=len(self.output), delta=delta)

    def close(self, status: Status) -> Iterator[StreamEvent]:
        item, whole, index = self.current, "".join(self.pieces), len(self.output)
        done: OutputItem
        if isinstance(item, OutputMessage):
            part = OutputText(text=whole)
            yield TextDoneEvent(sequence_number=self.number(), item_id=item.id, output_index=index,
                                content_index=0, text=whole)
            yield ContentPartEvent(type="response.content_part.done", sequence_number=self.number(), item_id=item.id,
                                   output_index=index, content_index=0, part=part)
            done = OutputMessage(id=item.id, status=status, content=[part])
        elif isinstance(item, FunctionCallItem):
            yield ArgumentsDoneEvent(sequence_number=self.number(), item_id=item.id, output_index=index,
                                     arguments=whole)
            # Calls before the last were closed by the next one; the last is whole if the limit did not cut it.
            whole_call = status == "completed" or _is_object(whole)
            done = FunctionCallItem(id=item.id, status="completed" if whole_call else status, call_id=item.call_id,
                                    name=item.name, arguments=whole)
        else:
            return
        self.output.append(done)
        self.current, self.pieces = None, []
        yield OutputItemEvent(type="response.output_item.done", sequence_number=self.number(), output_index=index,
                              item=done)

    def _open(self, item: OutputMessage | FunctionCallItem) -> Iterator[StreamEvent]:
        self.current, self.pieces = item, []
        yield OutputItemEvent(type="response.output_item.added", sequence_number=self.number(),
                              output_index=len(self.output), item=item)
