"""Vision benchmark: image-encoding time and time to first token of a 1-image chat, for our
`nexa server` and for llama-cpp-python's own server (`--chat_format llava-1-5`), same files.

Two parts, in one run:
1. Image -> embeddings, in this process, each library's own way: ours decodes with Pillow and
   hands mtmd RGB pixels (VisionEngine.embed_image); llama-cpp-python's Llava15ChatHandler
   hands mtmd the encoded bytes (stb_image decodes them). Both then preprocess and run the same
   projector through mtmd. Median over --reps distinct images.
2. Each server in turn (never both at once: they would fight for the cores) gets the same
   streaming chat requests: a fresh system line and a fresh 640x480 JPEG each time (no KV or
   image reuse on either side), greedy, a small token budget. Printed: median time to first
   token with the image, the same without the image (text only), and their difference, which
   is what one image costs a request end to end (fetch from the body, decode, encode, decode
   its embeddings into the context).

The model defaults to the store's SmolLM2-135M-Instruct and the projector to the random-weight
llava projector of tests/projector.py (written into the test cache on first use).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_vision.py [--model M.gguf --projector P.gguf] [--reps 5]

A script, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support and the projector builder
sys.path.insert(0, str(REPO / "bench"))

from bench_text import (  # noqa: E402
    HOST,
    Server,
    chat_body,
    default_model,
    free_port,
    nexa_command,
    start,
    stop,
    venv_bin,
)

from support.sse import delta_text, iter_chunks  # noqa: E402

log = logging.getLogger("bench_vision")

SYSTEM = "You are a helpful assistant that describes pictures. This is session {i}."
QUESTION = "Describe this picture in detail."


def photo(i: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A distinct photo-sized JPEG per request: smooth gradients plus noise, like a real photo."""
    from PIL import Image

    rng = np.random.default_rng(abs(i))
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (1 + i % 3)) % 256, (y * (2 + i % 5)) % 256, ((x + y) * (1 + i % 7)) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- part 1: image -> embeddings, in process -----------------------------------------------------


def encode_ours(model: Path, projector: Path, threads: int, reps: int) -> dict[str, float]:
    from nexa.engines.llama.vision import VisionEngine
    from nexa.server.image_input import decode_image

    engine = VisionEngine(model, projector=projector, name="bench", n_ctx=2048, n_threads=threads)
    decode_s, encode_s = [], []
    try:
        engine.embed_image(decode_image(photo(999), "warm-up"))
        for i in range(reps):
            data = photo(1000 + i)
            t0 = time.perf_counter()
            image = decode_image(data, "bench")
            t1 = time.perf_counter()
            engine.embed_image(image)
            t2 = time.perf_counter()
            decode_s.append(t1 - t0)
            encode_s.append(t2 - t1)
    finally:
        engine.close()
    return {"decode": med(decode_s), "encode": med(encode_s), "total": med([a + b for a, b in zip(decode_s, encode_s)])}


def encode_theirs(model: Path, projector: Path, threads: int, reps: int) -> dict[str, float]:
    """What Llava15ChatHandler.__call__ does before its prompt is evaluated, image part only."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp.llama_chat_format import Llava15ChatHandler

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=2048, n_threads=threads, verbose=False)
    handler = Llava15ChatHandler(clip_model_path=str(projector), verbose=False)
    handler._init_mtmd_context(llm)
    ctx = handler.mtmd_ctx
    marker = mtmd.mtmd_default_marker()
    times = []

    def once(data: bytes) -> None:
        bitmap = handler._create_bitmap_from_bytes(data)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = mtmd.mtmd_input_text()
            text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise RuntimeError("mtmd_tokenize failed")
            for k in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, k)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
                        raise RuntimeError("mtmd_encode_chunk failed")
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    try:
        once(photo(999))
        for i in range(reps):
            data = photo(1000 + i)
            t0 = time.perf_counter()
            once(data)
            times.append(time.perf_counter() - t0)
    finally:
        llm.close()
    return {"total": med(times)}


# -- part 2: the servers --------------------------------------------------------------------------


def body(i: int, image: bool, max_tokens: int, stream: bool) -> dict:
    content: list[dict] = [{"type": "text", "text": QUESTION}]
    if image:
        content.append({"type": "image_url", "image_url": {"url": data_uri(photo(i))}})
    messages = [{"role": "system", "content": SYSTEM.format(i=i)}, {"role": "user", "content": content}]
    return chat_body(messages, max_tokens, stream)


def ttft(client: httpx.Client, server: Server, payload: dict) -> float:
    url = f"http://{HOST}:{server.port}/v1/chat/completions"
    sent = time.perf_counter()
    with client.stream("POST", url, json=payload) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"{server.name} answered {resp.status_code}: {resp.text[:500]}")
        for chunk in iter_chunks(resp.iter_lines()):
            if delta_text(chunk):
                return time.perf_counter() - sent
    raise RuntimeError(f"{server.name} streamed no text")


def run_server(server: Server, workdir: Path, args: argparse.Namespace, offset: int) -> dict[str, object]:
    out: dict[str, object] = {}
    try:
        out["load_s"] = start(server, workdir, args.start_timeout)
        with httpx.Client(timeout=httpx.Timeout(args.request_timeout, connect=10)) as client:
            url = f"http://{HOST}:{server.port}/v1/chat/completions"
            r = client.post(url, json=body(offset - 1, True, args.max_tokens, False))  # warm-up
            r.raise_for_status()
            out["prompt_tokens"] = r.json().get("usage", {}).get("prompt_tokens")
            with_image, text_only = [], []
            for i in range(args.reps):
                n = offset + i
                with_image.append(ttft(client, server, body(n, True, args.max_tokens, True)))
                text_only.append(ttft(client, server, body(n + 500, False, args.max_tokens, True)))
                log.info(
                    "%s #%d: ttft %.1f ms with the image, %.1f ms without",
                    server.name,
                    i,
                    with_image[-1] * 1000,
                    text_only[-1] * 1000,
                )
            out["with_image"], out["text_only"] = med(with_image), med(text_only)
    finally:
        stop(server)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="language model GGUF (default: the store's SmolLM2-135M-Instruct)")
    p.add_argument("--projector", type=Path, help="projector GGUF (default: tests/projector.py's, for SmolLM2)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--our-threads", type=int, help="--threads for our server (default: its own, all cores)")
    p.add_argument(
        "--their-threads", type=int, help="--n_threads and --n_threads_batch for llama_cpp.server (default: its own)"
    )
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    args = p.parse_args()
    if not (1 <= args.reps <= 100 and 1 <= args.max_tokens <= 1024):
        p.error("--reps must be 1..100 and --max-tokens 1..1024")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    model = (args.model or default_model()).resolve()
    if args.projector:
        projector = args.projector.resolve()
    else:
        from projector import ensure_projector

        projector = ensure_projector()
    cores = len(os.sched_getaffinity(0))
    cpu_count = os.cpu_count() or 1
    our_threads = args.our_threads or cores
    their_threads = args.their_threads or max(cpu_count // 2, 1)  # llama_cpp.server's default n_threads
    load_before = os.getloadavg()[0]

    log.info("image -> embeddings, in process (%d images each)", args.reps)
    enc_ours = encode_ours(model, projector, our_threads, args.reps)
    enc_theirs = encode_theirs(model, projector, their_threads, args.reps)

    bin_dir = venv_bin()
    port = free_port()
    ours_cmd = [*nexa_command(), "server", "-lp", str(model), "--projector", str(projector), "--host", HOST,
                "--port", str(port)]
    if args.our_threads:
        ours_cmd += ["--threads", str(args.our_threads)]
    ours = Server("nexa server", ours_cmd, "/health", f"{our_threads} threads", port)
    port2 = free_port()
    theirs_cmd = [
        str(bin_dir / "python"), "-m", "llama_cpp.server", "--model", str(model), "--clip_model_path", str(projector),
        "--chat_format", "llava-1-5", "--host", HOST, "--port", str(port2),
    ]  # fmt: skip
    if args.their_threads:
        # Like our --threads: generation and prompt evaluation both.
        theirs_cmd += ["--n_threads", str(args.their_threads), "--n_threads_batch", str(args.their_threads)]
    theirs = Server(
        "llama_cpp.server",
        theirs_cmd,
        "/v1/models",
        f"n_threads {their_threads} (the projector too), n_threads_batch {args.their_threads or cpu_count}",
        port2,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_vision_") as tmp:
        try:
            for k, server in enumerate((ours, theirs)):
                results[server.name] = run_server(server, Path(tmp), args, offset=10_000 * (k + 1))
        finally:
            stop(ours)
            stop(theirs)
    load_after = os.getloadavg()[0]

    print()
    print(f"model: {model.name}; projector: {projector.name}")
    busy = max(load_before, load_after) > cores / 2
    noisy = "  (NOISY: other processes were competing for the cores)" if busy else ""
    print(f"cores usable: {cores}; load average {load_before:.1f} before, {load_after:.1f} after{noisy}")
    print(
        f"{args.reps} requests per server (median), fresh 640x480 JPEG + fresh system line each, "
        f"max_tokens={args.max_tokens}, temperature 0"
    )
    print()
    print("image -> embeddings, in process (median):")
    print(
        f"  ours   ({our_threads} threads): {enc_ours['total'] * 1000:7.1f} ms "
        f"(Pillow decode {enc_ours['decode'] * 1000:.1f} ms + mtmd {enc_ours['encode'] * 1000:.1f} ms)"
    )
    print(f"  theirs ({their_threads} threads): {enc_theirs['total'] * 1000:7.1f} ms (stb_image decode + mtmd)")
    print()
    header = (
        f"{'server':<18} {'threads':<46} {'TTFT image ms':>14} {'TTFT text ms':>13} "
        f"{'image cost ms':>14} {'prompt tok':>11}"
    )
    print(header)
    print("-" * len(header))
    for server in (ours, theirs):
        r = results[server.name]
        w, t = float(r["with_image"]), float(r["text_only"])  # type: ignore[arg-type]
        print(
            f"{server.name:<18} {server.threads_note:<46} {w * 1000:>14.1f} {t * 1000:>13.1f} "
            f"{(w - t) * 1000:>14.1f} {str(r['prompt_tokens']):>11}"
        )
    ratio = float(results[ours.name]["with_image"]) / float(results[theirs.name]["with_image"])  # type: ignore[arg-type]
    verdict = "meets" if ratio <= 1.0 else "MISSES"
    print()
    print(f"TTFT with one image, ours/theirs: {ratio:.2f}x ({verdict} the target: no worse than theirs)")
    print(
        "prompt tok: the warm-up request's usage.prompt_tokens (the two servers use different chat "
        "formats: ours the GGUF's ChatML template, theirs llava-1-5)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
