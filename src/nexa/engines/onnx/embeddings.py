"""Sentence embeddings from an ONNX encoder (BERT-like) with Hugging Face `tokenizers` and
onnxruntime: the layout sentence-transformers and optimum export (an .onnx graph taking
input_ids / attention_mask [/ token_type_ids] and giving per-token states, tokenizer.json,
and the pooling in 1_Pooling/config.json).

The same `embed(...)` as the GGUF embedding engine (engines/llama/embedder.py), so
/v1/embeddings serves either unchanged: the vectors are pooled as the model's own
configuration says and normalised only when the request asks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from nexa.config import default
from nexa.engines.base import Cancelled, Engine, Task
from nexa.engines.embedding_common import TokenEmbedder
from nexa.engines.onnx.runtime import cpu_session
from nexa.errors import StartupError

log = logging.getLogger("nexa.engine.onnx.embeddings")

# sentence-transformers' Pooling config keys -> our pooling names.
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": "max",
}
# Graph outputs that hold one vector per token, then ones already pooled in the graph.
_TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
_POOLED_OUTPUTS = ("sentence_embedding", "pooler_output")
# Padded tokens per onnxruntime call: big enough to keep the CPU busy, small enough that the
# attention matrices of one batch stay a few MB.
BATCH_TOKENS = 4096


def read_pooling(folder: Path) -> str | None:
    """The pooling named by sentence-transformers' modules.json -> */config.json, if any."""
    modules = folder / "modules.json"
    paths = []
    if modules.is_file():
        entries = json.loads(modules.read_text())
        paths = [m.get("path", "") for m in entries if str(m.get("type", "")).endswith("Pooling")]
    else:
        paths = [p.parent.name for p in folder.glob("*_Pooling/config.json")]
    for rel in paths:
        cfg_path = folder / rel / "config.json"
        if not cfg_path.is_file():
            continue
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("pooling_mode"):  # newer sentence-transformers write one string
            return {"lasttoken": "last", "max": "max", "cls": "cls", "mean": "mean"}.get(cfg["pooling_mode"])
        chosen = [name for key, name in _POOLING_KEYS.items() if cfg.get(key)]
        if len(chosen) != 1:
            raise StartupError(
                f"{cfg_path} asks for pooling {chosen or 'none'}; this server pools with exactly one of "
                f"mean, cls, lasttoken or max."
            )
        return chosen[0]
    return None


def _max_length(folder: Path) -> int | None:
    """The input length the model was trained for: sentence-transformers' max_seq_length, else
    the position table's size."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("config.json", "max_position_embeddings")):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


class OnnxEmbeddingEngine(TokenEmbedder, Engine):
    """TEXT_EMBEDDING models as ONNX encoders; thread-safe (calls take turns on the session).
    Reranks by cosine similarity (TokenEmbedder.rerank)."""

    tasks = frozenset({Task.EMBEDDING, Task.RERANK})

    def __init__(
        self,
        folder: Path,
        model_file: Path,
        *,
        name: str,
        n_ctx: int = default("n_ctx"),
        n_threads: int = default("n_threads"),
    ):
        from tokenizers import Tokenizer

        self.name = name
        self.path = Path(folder)
        started = time.perf_counter()
        self._session = cpu_session(model_file, n_threads)
        inputs = {i.name for i in self._session.get_inputs()}
        if any("past_key_values" in n or n.startswith("past_") for n in inputs):
            raise StartupError(
                f"{model_file.name} takes past_key_values: it is a causal language model, not a sentence encoder. "
                "Serve text generation as an onnxruntime-genai folder (genai_config.json)."
            )
        if "input_ids" not in inputs:
            raise StartupError(
                f"{model_file.name} has no input_ids input (inputs: {', '.join(sorted(inputs))}): "
                "not a text encoder this server can feed."
            )
        known = {"input_ids", "attention_mask", "token_type_ids"}
        if inputs - known:
            raise StartupError(
                f"{model_file.name} wants inputs {', '.join(sorted(inputs - known))} besides "
                f"input_ids/attention_mask/token_type_ids; this server cannot feed them."
            )
        self._inputs = inputs
        outputs = {o.name: o for o in self._session.get_outputs()}
        self._output = next((n for n in _TOKEN_OUTPUTS if n in outputs), None)
        self._pooled_in_graph = False
        if self._output is None:
            self._output = next((n for n in _POOLED_OUTPUTS if n in outputs), None)
            self._pooled_in_graph = self._output is not None
        if self._output is None:
            raise StartupError(
                f"{model_file.name} gives none of {', '.join(_TOKEN_OUTPUTS + _POOLED_OUTPUTS)} "
                f"(outputs: {', '.join(outputs)}): not a sentence encoder."
            )

        self._tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.n_vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        trained = _max_length(self.path)
        self.max_tokens = max(1, min(n_ctx, trained) if trained else n_ctx)
        # A second tokenizer that truncates as Hugging Face does: keeps [CLS] ... [SEP] around the cut.
        self._truncating = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self._truncating.no_padding()
        self._truncating.enable_truncation(self.max_tokens)
        pad = self._tokenizer.token_to_id("[PAD]")
        self._pad = 0 if pad is None else pad

        own = read_pooling(self.path)
        if self._pooled_in_graph:
            self.pooling = "in the graph"
        elif own is None:
            self.pooling = "mean"
            log.info("%s names no pooling (no 1_Pooling/config.json); using mean pooling", self.path.name)
        else:
            self.pooling = own
        shape = outputs[self._output].shape
        self.dim = int(shape[-1]) if isinstance(shape[-1], int) else self._probe_dim()
        self._lock = threading.Lock()
        log.info(
            "loaded %s in %.1fs (dim=%d, pooling=%s, max %d tokens per input, threads=%d)",
            model_file.name, time.perf_counter() - started, self.dim, self.pooling, self.max_tokens, n_threads,
        )

    # -- public ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text).ids)

    def describe(self) -> dict[str, Any]:
        return {
            "n_ctx": self.max_tokens,
            "embedding_dim": self.dim,
            "pooling": self.pooling,
            "max_input_tokens": self.max_tokens,
            "runtime": "onnxruntime",
        }

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]

    # -- internals ---------------------------------------------------------------------------

    def _truncate_text(self, text: str, full: list[int]) -> list[int]:
        return list(self._truncating.encode(text).ids)

    def _embed_tokens(self, seqs: list[list[int]], cancel: threading.Event | None) -> np.ndarray:
        out = np.empty((len(seqs), self.dim), np.float32)
        # Similar lengths batch together, so little compute goes into padding.
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        start = 0
        while start < len(order):
            end, longest = start, 0
            while end < len(order) and (end == start or max(longest, len(seqs[order[end]])) * (end - start + 1)
                                        <= BATCH_TOKENS):
                longest = max(longest, len(seqs[order[end]]))
                end += 1
            batch = order[start:end]
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            out[batch] = self._run([seqs[i] for i in batch])
            start = end
        return out

    def _run(self, seqs: list[list[int]]) -> np.ndarray:
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, tokens in enumerate(seqs):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feed = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        states = np.asarray(self._session.run([self._output], feed)[0], dtype=np.float32)
        if self._pooled_in_graph:
            return states
        return self._pool(states, mask)

    def _pool(self, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask[:, :, None].astype(np.float32)
        if self.pooling == "cls":
            return states[:, 0]
        if self.pooling == "last":
            last = mask.sum(axis=1) - 1
            return states[np.arange(len(states)), last]
        if self.pooling == "max":
            return np.where(m > 0, states, -np.inf).max(axis=1)
        return (states * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)

    def _probe_dim(self) -> int:
        feed: dict[str, np.ndarray] = {"input_ids": np.zeros((1, 1), dtype=np.int64)}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = np.ones((1, 1), dtype=np.int64)
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros((1, 1), dtype=np.int64)
        return int(np.asarray(self._session.run([self._output], feed)[0]).shape[-1])
