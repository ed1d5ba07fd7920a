"""`nexa serve-ray`: the same FastAPI app in N Ray Serve replicas, routed by model and prompt prefix.

Two deployments make one Ray Serve application:
- `Replica` (N of them, --threads CPUs each): create_app(settings, manager) as `nexa server` builds
  it, with every model of the command line known and none loaded. A replica loads the models its
  requests name through Ray Serve's model multiplexing (`serve.multiplexed`), at most --max-models
  at once (default: all of them); Ray evicts the least recently used past that, and routes each
  request to a replica that already holds its model, so the cluster holds more models than one
  replica does.
- `Router` (the ingress, no CPU of its own): Ray's HTTP proxy routes by model only with a
  `serve_multiplexed_model_id` header, which OpenAI clients never send. The router reads the
  body's `model` instead and hands the request to a replica through a deployment handle with
  that multiplexed model id, and PrefixRouter (ray_routing.py) keeps prompts that start alike on
  one replica. Responses come back chunk by chunk, so streams (SSE) stream.

A replica that dies is replaced by Ray Serve; the requests it was serving end with a 503 envelope
(or, mid-stream, an error event), the others go on. The single-machine server never imports this.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from nexa.config import Settings
from nexa.errors import NexaError
from nexa.models.servable import match
from nexa.server.errors import envelope
from nexa.server.ray_routing import request_keys
from nexa.server.sse import error_events

log = logging.getLogger("nexa.ray")

APP_NAME = "nexa"
REPLICA_HEADER = "x-nexa-replica"  # which replica answered: for logs, tests and the curious
PREFIX_ROUTER = "nexa.server.ray_routing.PrefixRouter"  # imported where requests are routed, by Ray
REPLICA_DIED = "The replica serving this request stopped (Ray Serve is replacing it); retry the request."


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS, else a local Ray started on the spot
    replicas: int = 1
    max_replicas: int | None = None  # set: autoscale between `replicas` and this
    prefix_routing: bool = True


# -- one HTTP request through an ASGI app, as a stream of plain values --------------------------
def request_parts(request: Request) -> dict[str, Any]:
    """The picklable part of a request's ASGI scope, for the replica to rebuild it."""
    keys = ("method", "scheme", "path", "raw_path", "query_string", "root_path", "headers", "client", "server")
    return {k: request.scope[k] for k in keys if k in request.scope}


async def asgi_call(app: Callable[..., Awaitable[None]], parts: dict[str, Any], body: bytes) -> AsyncIterator[Any]:
    """Run one request through `app`: yields the response's (status, headers), then its body chunks.
    Closing the generator early (the client went away) tells the app so, as a disconnect."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", **parts}
    messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    gone = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(scope, receive, messages.put)
        except Exception:  # the app has answered 500 already where it could
            log.exception("%s %s failed", parts.get("method"), parts.get("path"))
        finally:
            messages.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield message["status"], [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]]
            elif message.get("body"):
                yield message["body"]
    finally:
        gone.set()
        if not task.done():
            task.cancel()


class Loaded:
    """A model Ray's multiplexing counts as loaded here. Ray calls __del__ (in a thread) when it
    evicts the model; the garbage collector calls it again later, which then does nothing."""

    def __init__(self, replica: Replica, model_id: str) -> None:
        self.replica, self.model_id = replica, model_id
        self.loop = asyncio.get_running_loop()
        self.unloaded = False

    def __del__(self) -> None:
        if self.unloaded:
            return
        self.unloaded = True
        log.info("%s: evicted by Ray Serve (least recently used); unloading", self.model_id)
        try:
            done = asyncio.run_coroutine_threadsafe(self.replica.manager.unload_model(self.model_id), self.loop)
            done.result(timeout=120)  # its memory back before Ray loads the next model
        except Exception as exc:  # the replica is shutting down: its pool closes everything
            log.debug("%s: unload skipped (%s)", self.model_id, exc)


@serve.deployment(name="nexa-replica")
class Replica:
    def __init__(self, settings_json: str, models_per_replica: int) -> None:
        from nexa.models.manager import ModelManager
        from nexa.server.app import create_app

        settings = Settings.model_validate_json(settings_json)
        logging.getLogger("nexa").setLevel(settings.log_level.upper())
        self.manager = ModelManager.unloaded(settings)
        self.app = create_app(settings, self.manager)
        self.name = ray.get_runtime_context().get_actor_name() or "replica"

        # A function, not a method, so that the limit can come from the command line.
        async def load_for_replica(model_id: str) -> Loaded:
            await self.manager.load_model(model_id)
            return Loaded(self, model_id)

        self.load = serve.multiplexed(max_num_models_per_replica=models_per_replica)(load_for_replica)

    def model_ids(self) -> list[str]:
        return list(self.manager.known)

    async def handle(self, parts: dict[str, Any], body: bytes, prefix: str = "") -> AsyncIterator[Any]:
        """One HTTP request: its model loaded here first (Ray's multiplexing), then the app's answer.
        `prefix` is for PrefixRouter, which has already used it."""
        app: Callable[..., Awaitable[None]] = self.app
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            try:
                await self.load(model_id)
            except NexaError as exc:
                app = JSONResponse(envelope(exc.message, exc.type, exc.param, exc.code), exc.status)
        first = True
        async for item in asgi_call(app, parts, body):
            if first:  # (status, headers)
                status, headers = item
                item, first = (status, [*headers, (REPLICA_HEADER, self.name)]), False
            yield item

    def __del__(self) -> None:
        self.manager.close()


@serve.deployment(name="nexa-router", ray_actor_options={"num_cpus": 0})
class Router:
    def __init__(self, replicas: DeploymentHandle) -> None:
        self.replicas = replicas
        self.ids: list[str] | None = None  # the models the replicas serve, asked once

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        name, prefix = request_keys(request.headers.get("content-type", ""), body)
        if self.ids is None:
            self.ids = await self.replicas.model_ids.remote()
        # A name no replica knows goes without a model id: the replica's own routing answers it
        # (the default model, or a 404 with --strict-model).
        model = (match(name, self.ids) or "") if name else ""
        handle = self.replicas.options(stream=True, multiplexed_model_id=model)
        stream = cast(DeploymentResponseGenerator, handle.handle.remote(request_parts(request), body, prefix=prefix))
        try:
            status, headers = await stream.__anext__()
        except RayActorError as exc:
            log.warning("%s %s: its replica died: %s", request.method, request.url.path, exc)
            return JSONResponse(envelope(REPLICA_DIED, "server_error", None, "replica_died"), 503,
                                headers={"Retry-After": "1"})
        except Exception as exc:  # the replica failed outside the app (the app answers its own errors)
            log.error("%s %s failed on its replica: %s", request.method, request.url.path, exc)
            return JSONResponse(envelope(f"Internal error: {type(exc).__name__}", "server_error"), 500)
        events = any(k.lower() == "content-type" and v.startswith("text/event-stream") for k, v in headers)

        async def rest() -> AsyncIterator[bytes]:
            finished = False
            try:
                async for chunk in stream:
                    yield chunk
                finished = True
            except RayActorError as exc:
                finished = True
                log.warning("%s %s: its replica died mid-answer: %s", request.method, request.url.path, exc)
                if events:  # an SSE client reads the reason; others see the body cut short
                    yield error_events(REPLICA_DIED, "server_error", "replica_died")
            finally:
                if not finished:  # the client went away: stop the replica's work too
                    stream.cancel()

        response = StreamingResponse(rest(), status_code=status)
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return response


# -- deploying -------------------------------------------------------------------------------------
def application(settings: Settings, options: RayOptions) -> Any:
    """The Ray Serve application: the router in front of the replicas."""
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.max_replicas is not None:
        scaling = {"num_replicas": "auto", "autoscaling_config": {
            "min_replicas": options.replicas, "max_replicas": options.max_replicas,
        }}
    if options.prefix_routing:
        scaling["request_router_config"] = {"request_router_class": PREFIX_ROUTER}
    per_replica = settings.max_models or 1 + len(settings.models)
    # Each replica asks Ray for the CPUs its engines use, so Ray places them where cores are free.
    replicas = Replica.options(  # type: ignore[attr-defined]  # serve.deployment made it a Deployment
        ray_actor_options={"num_cpus": settings.n_threads}, **scaling
    ).bind(settings.to_env(), per_replica)
    return Router.bind(replicas)  # type: ignore[attr-defined]


def app_builder(args: dict[str, str]) -> Any:
    """The same application from `nexa serve-ray`'s arguments, for Ray's own deployment tools:
    `serve run nexa.server.ray_app:app_builder argv="MODEL --threads 2 --replicas 2"`, or a Serve
    config file (KubeRay's RayService) with `import_path` and `args: {argv: ...}`. Ray's HTTP options
    come from Ray's config there, not from --host/--port."""
    from nexa.cli import build_parser, settings_from_args

    parsed = build_parser().parse_args(["serve-ray", *shlex.split(args.get("argv", ""))])
    options = RayOptions(None, parsed.replicas, parsed.max_replicas, parsed.prefix_routing)
    return application(settings_from_args(parsed), options)


def deploy(settings: Settings, options: RayOptions) -> str:
    """Deploy nexa on the Ray this process is connected to (ray.init first); returns its URL."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    log.info("deploying %d replica(s)%s", options.replicas,
             f" (up to {options.max_replicas})" if options.max_replicas else "")
    serve.run(application(settings, options), name=APP_NAME, route_prefix="/")
    url = f"http://{settings.host}:{settings.port}"
    log.info("nexa is serving on Ray Serve at %s", url)
    return url


def run(settings: Settings, options: RayOptions) -> None:
    """`nexa serve-ray`: deploy, serve until Ctrl-C, then delete the application."""
    ray.init(address=options.address, logging_level=logging.WARNING)
    deploy(settings, options)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("deleting the nexa application")
        serve.delete(APP_NAME)
