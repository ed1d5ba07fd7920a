"""The requests of bench/soak.py: the ordinary workload, and the attacks of issue 16 with the
statuses a hardened server answers them with."""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
SENTENCES = ["The cat sleeps on the warm windowsill.", "Rivers bend because banks erode unevenly.",
             "A small robot measures the rain.", "Our new server answers quickly."]  # fmt: skip
SMALL_IMAGE = {"width": 128, "height": 128, "sample_steps": 1, "cfg_scale": 1.0}
AUDIO = REPO / "tests" / "audio"


# -- what one request is and what counts as its right answer -----------------------------------


@dataclass
class Call:
    name: str
    kind: str
    method: str
    path: str
    expect: frozenset[int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    hang_up_after: int | None = None  # stream events, or seconds for a plain request
    declared: int = 0  # a body of this many bytes is announced (Content-Length), none is sent
    check: Callable[[httpx.Response], str | None] | None = None


def no_cors(r: httpx.Response) -> str | None:
    return "a foreign origin was allowed" if "access-control-allow-origin" in r.headers else None


def silent_flac(seconds: int, rate: int = 8000) -> bytes:
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        for _ in range(seconds // 60):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, rate * 60), dtype=np.int16), format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def chat_json(content: str, **extra: Any) -> dict[str, Any]:
    return {"json": {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}}


def schema_json(schema: dict[str, Any]) -> dict[str, Any]:
    return chat_json(
        "A value.", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )


def raw_json(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": "application/json"}}


BAD, TOO_LARGE = frozenset({400}), frozenset({413})


def attacks(kinds: list[str], key: str | None, work: Path) -> list[Call]:
    """The issue's attacks, each with the statuses a hardened server answers."""
    nested: dict[str, Any] = {"type": "string"}
    for _ in range(400):
        nested = {"type": "array", "items": nested}
    out: list[Call] = []
    if "chat" in kinds:
        chat, completions = "/v1/chat/completions", "/v1/completions"
        preflight = {"origin": "http://evil.example", "access-control-request-method": "POST"}
        out += [
            Call("huge prompt (3 MiB)", "chat", "POST", completions, BAD, {"json": {"prompt": "x" * 3 * 2**20}}),
            Call("33 MiB body announced", "chat", "POST", completions, TOO_LARGE, declared=33 * 2**20),
            Call("5000 messages", "chat", "POST", chat, BAD,
                 {"json": {"messages": [{"role": "user", "content": "hi"}] * 5000, "max_tokens": 4}}),
            Call("<|im_end|> flood (0.76 MiB)", "chat", "POST", chat, BAD, chat_json("<|im_end|>" * 80000)),
            Call("<|im_end|> x3000 (under the character bound)", "chat", "POST", chat, BAD,
                 chat_json("<|im_end|>" * 3000)),
            Call("schema exclusiveMinimum 1e22", "chat", "POST", chat, BAD,
                 schema_json({"type": "number", "exclusiveMinimum": 1e22})),
            Call("schema enum of 100000", "chat", "POST", chat, BAD,
                 schema_json({"enum": [f"v{i}" for i in range(100_000)]})),
            Call("schema nested 400 levels", "chat", "POST", chat, BAD, schema_json(nested)),
            Call("schema minLength 100000", "chat", "POST", chat, BAD,
                 schema_json({"type": "string", "minLength": 100_000})),
            Call("malformed JSON", "chat", "POST", chat, frozenset({400, 422}), raw_json(b'{"messages": [')),
            Call("Host: evil.example", "chat", "GET", "/v1/models", frozenset({403}),
                 {"headers": {"host": "evil.example"}}),
            Call("preflight from evil.example", "chat", "OPTIONS", chat, BAD, {"headers": preflight}, check=no_cors),
        ]  # fmt: skip
        if key:
            no_key = {**chat_json("hi"), "headers": {"authorization": ""}}
            out.append(Call("no API key", "chat", "POST", chat, frozenset({401}), no_key))
    if "embeddings" in kinds:
        huge = {"json": {"input": ["word " * 600_000], "truncate": False}}
        out.append(Call("embedding input of 3 MiB, truncate off", "embeddings", "POST", "/v1/embeddings", BAD, huge))
    if "audio" in kinds:
        upload = "/v1/audio/transcriptions"
        out += [
            Call("4 hours of silent FLAC", "audio", "POST", upload, TOO_LARGE,
                 {"files": {"file": ("long.flac", silent_flac(4 * 3600))}}),
            Call("upload over --max-upload-mb", "audio", "POST", upload, TOO_LARGE,
                 {"files": {"file": ("big.wav", bytes(26 * 2**20))}}),
            Call("not audio", "audio", "POST", upload, BAD, {"files": {"file": ("a.wav", b"not audio " * 1000)}}),
        ]  # fmt: skip
    if "images" in kinds:
        allowed = work / "allowed"
        os.mkfifo(allowed / "fifo")
        (allowed / "folder").mkdir()

        def from_path(path: str) -> dict[str, Any]:
            return {"json": {"prompt": "x", "image_path": path, **SMALL_IMAGE}}

        out += [
            Call("image prompt of 40 KiB", "images", "POST", "/v1/txt2img", BAD,
                 {"json": {"prompt": "a cat " * 7000, **SMALL_IMAGE}}),
            Call("image 100000 px wide", "images", "POST", "/v1/txt2img", BAD,
                 {"json": {"prompt": "x", **SMALL_IMAGE, "width": 100_000}}),
            Call("NUL in image_path", "images", "POST", "/v1/img2img", BAD, from_path(str(allowed / "a\x00.png"))),
            Call("FIFO as image_path", "images", "POST", "/v1/img2img", BAD, from_path(str(allowed / "fifo"))),
            Call("directory as image_path", "images", "POST", "/v1/img2img", BAD, from_path(str(allowed / "folder"))),
        ]  # fmt: skip
    for call in out:  # encoded once: a 3 MiB body encoded per request would stall the clients' loop
        if "json" in call.kwargs:
            headers = {"content-type": "application/json", **call.kwargs.get("headers", {})}
            call.kwargs.update(content=json.dumps(call.kwargs.pop("json")).encode(), headers=headers)
    return out


def workload(kinds: list[str], rng: random.Random, models: dict[str, str]) -> Call:
    """One ordinary request: what most clients send most of the time."""
    return named(_ordinary(rng.choice(kinds), rng), models.get)


def named(call: Call, model: Callable[[str], str | None]) -> Call:
    """The request names its kind's model, where one is given (a server serving several)."""
    if name := model(call.kind):
        if "json" in call.kwargs:
            call.kwargs["json"]["model"] = name
        else:
            call.kwargs["data"] = {**call.kwargs.get("data", {}), "model": name}
    return call


def _ordinary(kind: str, rng: random.Random) -> Call:
    ok = frozenset({200})
    if kind == "chat":
        body = {"messages": [{"role": "user", "content": rng.choice(SENTENCES) + " Tell me more."}],
                "max_tokens": rng.randint(8, 48), "temperature": 0.7, "stream": rng.random() < 0.6}  # fmt: skip
        hang_up = rng.randint(1, 6) if body["stream"] and rng.random() < 0.25 else None
        return Call("chat stream" if body["stream"] else "chat", kind, "POST", "/v1/chat/completions", ok,
                    {"json": body}, stream=bool(body["stream"]), hang_up_after=hang_up)  # fmt: skip
    hang_up = rng.choice([0.05, 0.3, 1.0]) if rng.random() < 0.1 else None
    if kind == "embeddings":
        texts = rng.sample(SENTENCES, rng.randint(1, len(SENTENCES)))
        return Call("embeddings", kind, "POST", "/v1/embeddings", ok, {"json": {"input": texts}}, hang_up_after=hang_up)
    if kind == "audio":
        clip = AUDIO / f"s{rng.randint(1, 6)}.wav"
        return Call("transcription", kind, "POST", "/v1/audio/transcriptions", ok,
                    {"files": {"file": (clip.name, clip.read_bytes())}}, hang_up_after=hang_up)  # fmt: skip
    body = {"prompt": "a lighthouse at dusk", "seed": rng.randint(0, 9), "response_format": "b64_json", **SMALL_IMAGE}
    return Call("image", kind, "POST", "/v1/txt2img", ok, {"json": body}, hang_up_after=hang_up)
