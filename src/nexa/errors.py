"""Errors a client or operator can cause, each mapped to one HTTP status.

Engines and the model store raise these; one handler in the server turns them into
OpenAI's envelope, so no engine ever builds an HTTP response.
"""

from __future__ import annotations


class NexaError(Exception):
    """Base error: `status` is the HTTP status, `type`/`code`/`param` go into the envelope."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(NexaError):
    """A value the client sent is wrong (400)."""

    status = 400
    type = "invalid_request_error"


class UnsupportedTask(InvalidRequest):
    """The loaded model cannot do what the endpoint asks (400, never a 500)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, code="unsupported_task")


class ContextLengthExceeded(InvalidRequest):
    def __init__(self, message: str, *, param: str | None = "messages"):
        super().__init__(message, param=param, code="context_length_exceeded")


class NotFound(NexaError):
    status = 404
    type = "not_found_error"


class Forbidden(NexaError):
    """The operator has not allowed this (403): the message names the flag that would."""

    status = 403
    type = "permission_error"


class Conflict(NexaError):
    """The request clashes with the model's state (409), e.g. deleting a loaded model."""

    status = 409
    type = "invalid_request_error"


class DownloadFailed(NexaError):
    """A hub or index did not deliver the model (502): the message says which and why."""

    status = 502

    def __init__(self, message: str):
        super().__init__(message, param="model_path", code="download_failed")


class PayloadTooLarge(NexaError):
    status = 413
    type = "invalid_request_error"


class ClientGone(NexaError):
    """The client disconnected before the answer was ready: the work stopped, nobody reads this
    (499, nginx's "client closed request", so the access log says what happened)."""

    status = 499
    type = "client_closed_request"


class Overloaded(NexaError):
    """Too many requests are waiting (503 with Retry-After)."""

    status = 503
    type = "server_overloaded"


class ModelCrashed(NexaError):
    """The worker process running the model died during the request (a native crash, out of
    memory, killed); the next request starts it again."""

    def __init__(self, message: str):
        super().__init__(message, code="model_crashed")


class StartupError(Exception):
    """A mistake the operator can fix at start-up: printed as one line, exit status 2.

    The message must say what went wrong and what to do about it.
    """
