"""Whisper on ONNX Runtime: the folders `optimum-cli export onnx --model openai/whisper-*` writes
(encoder_model.onnx, decoder_model.onnx, and decoder_with_past_model.onnx or
decoder_model_merged.onnx for the key/value cache; config.json, generation_config.json,
tokenizer.json), served behind the same /v1/audio endpoints as faster-whisper.

onnxruntime and numpy only: the log-mel features are faster-whisper's numpy FeatureExtractor,
the tokens Hugging Face `tokenizers`, and the decoding is Whisper's own loop written out here,
as faster-whisper runs it: 30-second windows, each conditioned on the text before it, greedy
decoding with timestamp tokens (which make the segments), the temperature fallback when a
window's text looks like a failure, and the skip of windows that hold no speech. What differs:
no beam search (beam_size is ignored; greedy is what faster-whisper's batched path and most
clients use), and word timestamps are spread over their segment by length, because optimum's
graphs do not return the cross-attention weights that align words with the audio.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from nexa.config import default
from nexa.engines.base import Task, Turns
from nexa.engines.onnx.runtime import cpu_session
from nexa.engines.whisper import (
    FALLBACK_TEMPERATURES,
    Segment,
    SpeechOptions,
    SpeechToTextEngine,
    TranscriptInfo,
    Word,
)
from nexa.errors import StartupError
from nexa.schemas.audio import LANGUAGES

log = logging.getLogger("nexa.engine.onnx.whisper")

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame (10 ms)
WINDOW_FRAMES = 3000  # 30 s: what the encoder takes
TIME_PRECISION = 0.02  # seconds per timestamp token
# faster-whisper's defaults for when a window's decoding failed (retry hotter) or held no speech.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
PROMPT_RESET_TEMPERATURE = 0.5  # past this, the previous text stops conditioning the next window
_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


class OnnxWhisperEngine(SpeechToTextEngine):
    def __init__(
        self,
        folder: Path,
        graphs: Path,
        *,
        name: str,
        n_threads: int = default("n_threads"),
        max_queue: int = default("max_queue"),
    ):
        from faster_whisper.feature_extractor import FeatureExtractor
        from tokenizers import Tokenizer

        started = time.perf_counter()
        self.name, self.folder = name, folder
        config = _json(folder / "config.json")
        generation = _json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
        pre = _json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
        self.sampling_rate = int(pre.get("sampling_rate", SAMPLE_RATE))
        self._features = FeatureExtractor(
            feature_size=int(config.get("num_mel_bins", 80)), sampling_rate=self.sampling_rate,
            hop_length=int(pre.get("hop_length", HOP)), n_fft=int(pre.get("n_fft", 400)),
        )
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._ids = self._special_tokens()
        self._timestamp_begin = self._ids["<|notimestamps|>"] + 1
        self._vocab = int(config.get("vocab_size", 0)) or None
        self._max_length = int(config.get("max_target_positions", 448))
        self._max_initial = int(generation.get("max_initial_timestamp_index", 50))
        self._suppress = [t for t in generation.get("suppress_tokens", config.get("suppress_tokens")) or [] if t >= 0]
        # A window's text never starts with a bare space or the end (Whisper's own default).
        blank = self._tokenizer.encode(" ", add_special_tokens=False).ids
        self._begin_suppress = list(generation.get("begin_suppress_tokens", config.get("begin_suppress_tokens"))
                                    or [*blank, self._ids["<|endoftext|>"]])
        self._languages = self._language_tokens(generation)
        multilingual = generation.get("is_multilingual", len(self._languages) > 1 and (self._vocab or 0) >= 51865)
        self.multilingual = bool(multilingual) and not (name.endswith(".en") or folder.name.endswith(".en"))
        if not self.multilingual:
            self.tasks = frozenset({Task.TRANSCRIBE})  # type: ignore[misc]  # what /v1/models lists

        def session(file: str) -> Any:
            return cpu_session(graphs / file, n_threads)

        self._encoder = session("encoder_model.onnx")
        # The cache: decoder_model.onnx for the prompt then decoder_with_past_model.onnx for one
        # token at a time, else the merged graph that does both; a lone decoder_model.onnx works
        # too, re-reading the whole sequence at every token.
        with_past = (graphs / "decoder_model.onnx").is_file() and (graphs / "decoder_with_past_model.onnx").is_file()
        self._merged = not with_past and (graphs / "decoder_model_merged.onnx").is_file()
        self._decoder = session("decoder_model_merged.onnx" if self._merged else "decoder_model.onnx")
        self._with_past = session("decoder_with_past_model.onnx") if with_past else None
        self._float = _ORT_FLOATS.get(self._encoder.get_inputs()[0].type, np.float32)
        self.graphs = "merged" if self._merged else "with_past" if self._with_past is not None else "no_cache"
        self._turns = Turns(max_queue)
        log.info(
            "ONNX whisper %s (%s decoder), %s, loaded in %.1fs", name, self.graphs,
            "multilingual" if self.multilingual else "English-only", time.perf_counter() - started,
        )

    def _special_tokens(self) -> dict[str, int]:
        names = ("<|endoftext|>", "<|startoftranscript|>", "<|startofprev|>", "<|notimestamps|>",
                 "<|translate|>", "<|transcribe|>")
        found = {n: self._tokenizer.token_to_id(n) for n in names}
        missing = [n for n, i in found.items() if i is None]
        if missing:
            raise StartupError(f"{self.folder}/tokenizer.json lacks Whisper's special tokens {missing}")
        ids = {n: int(i) for n, i in found.items() if i is not None}
        no_speech = self._tokenizer.token_to_id("<|nospeech|>") or self._tokenizer.token_to_id("<|nocaptions|>")
        ids["no_speech"] = no_speech if no_speech is not None else -1
        return ids

    def _language_tokens(self, generation: dict[str, Any]) -> dict[str, int]:
        if generation.get("lang_to_id"):
            return {k.strip("<|>"): int(v) for k, v in generation["lang_to_id"].items()}
        found = {code: self._tokenizer.token_to_id(f"<|{code}|>") for code in LANGUAGES}
        return {code: i for code, i in found.items() if i is not None}

    def close(self) -> None:
        with self._turns.lock:  # not while a transcription is using the sessions
            self._encoder = self._decoder = self._with_past = None

    def describe(self) -> dict[str, Any]:
        return {"multilingual": self.multilingual, "device": "cpu", "runtime": "onnxruntime", "decoder": self.graphs}

    # -- transcription ---------------------------------------------------------------------

    def transcribe(
        self, audio: np.ndarray, opts: SpeechOptions, cancel: threading.Event | None = None
    ) -> Generator[TranscriptInfo | Segment, None, None]:
        self.check(opts)
        duration = audio.shape[0] / self.sampling_rate
        started = time.perf_counter()
        with self._turns():
            speech_map = None
            if opts.vad_filter:
                # faster-whisper's Silero VAD (an ONNX model it ships): transcribe only the speech,
                # then put the times back where they were in the upload.
                from faster_whisper.vad import SpeechTimestampsMap, get_speech_timestamps

                chunks = get_speech_timestamps(audio, sampling_rate=self.sampling_rate)
                speech_map = SpeechTimestampsMap(chunks, self.sampling_rate)
                audio = np.concatenate([audio[c["start"] : c["end"]] for c in chunks] or [audio[:0]])
            features = self._features(audio)
            language, probability = "en", 1.0
            if self.multilingual:
                if opts.language:
                    language = opts.language
                else:
                    language, probability = self._detect_language(features)
            yield TranscriptInfo(opts.task, language, probability, duration, False)
            end = 0.0
            for seg in self._segments(features, language, opts, cancel):
                if speech_map is not None:
                    _restore_times(seg, speech_map)
                end = seg.end
                yield seg
            took = time.perf_counter() - started
            if cancel is not None and cancel.is_set():
                log.info("%s stopped early, at %.1fs of %.1fs audio", opts.task, end, duration)
            else:
                log.debug("%s %.1fs of audio in %.2fs (RTF %.3f)", opts.task, duration, took,
                          took / max(duration, 1e-9))

    def _segments(
        self, features: np.ndarray, language: str, opts: SpeechOptions, cancel: threading.Event | None
    ) -> Generator[Segment, None, None]:
        """faster-whisper's generate_segments, sequential windows, greedy."""
        content_frames = features.shape[-1] - 1
        sot = [self._ids["<|startoftranscript|>"]]
        if self.multilingual:
            sot += [self._languages[language], self._ids[f"<|{opts.task}|>"]]
        tokens_so_far: list[int] = []
        if opts.prompt:
            tokens_so_far = self._tokenizer.encode(" " + opts.prompt.strip(), add_special_tokens=False).ids
        prompt_from = 0
        seek, next_id = 0, 0
        rng = np.random.default_rng(0)  # the fallback's sampling: the same upload gives the same text
        while seek < content_frames:
            if cancel is not None and cancel.is_set():
                return
            offset = seek * HOP / self.sampling_rate
            size = min(WINDOW_FRAMES, content_frames - seek)
            window = _pad_or_trim(features[:, seek : seek + size])
            encoded = self._encoder.run(None, {"input_features": window[None].astype(self._float)})[0]
            previous = tokens_so_far[prompt_from:][-(self._max_length // 2 - 1) :]
            prompt = ([self._ids["<|startofprev|>"], *previous] if previous else []) + sot
            tokens, logprob, temperature, no_speech = self._with_fallback(encoded, prompt, len(prompt) - len(sot),
                                                                          opts.temperature, rng)
            avg_logprob = logprob / (len(tokens) + 1)
            if no_speech > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
                seek += size  # silence (or noise): nothing to say for this window
                continue
            window_seek = seek
            pieces, seek = self._split(tokens, seek, size)
            seek = seek if seek > window_seek else window_seek + size  # always move on
            window_end = offset + size * HOP / self.sampling_rate
            for piece in pieces:
                text = self._text(piece)
                start, end = self._time(piece[0], offset, offset), self._time(piece[-1], offset, window_end)
                end = min(end, window_end)  # never past the audio
                if not text.strip() or end <= start:
                    continue
                seg = Segment(
                    id=next_id, seek=window_seek, start=round(start, 3), end=round(end, 3), text=text,
                    tokens=piece, temperature=temperature, avg_logprob=avg_logprob,
                    compression_ratio=compression_ratio(self._text(tokens)), no_speech_prob=no_speech,
                )
                if opts.word_timestamps:
                    seg.words = self._words(piece, seg.start, seg.end)
                if cancel is not None and cancel.is_set():
                    return
                next_id += 1
                yield seg
            tokens_so_far += tokens
            if temperature >= PROMPT_RESET_TEMPERATURE:
                prompt_from = len(tokens_so_far)

    def _split(self, tokens: list[int], seek: int, size: int) -> tuple[list[list[int]], int]:
        """Cut a window's tokens into segments at pairs of timestamps; where to look next."""
        tb = self._timestamp_begin
        single_ending = len(tokens) >= 2 and tokens[-2] < tb <= tokens[-1]
        cuts = [i for i in range(1, len(tokens)) if tokens[i] >= tb and tokens[i - 1] >= tb]
        if not cuts:
            return ([tokens] if tokens else []), seek + size
        if single_ending:
            cuts.append(len(tokens))
        pieces, last = [], 0
        for cut in cuts:
            pieces.append(tokens[last:cut])
            last = cut
        if single_ending:
            return pieces, seek + size
        # The last segment did not end in this window: start the next window at its start.
        return pieces, seek + (tokens[last - 1] - tb) * 2

    def _time(self, token: int, offset: float, otherwise: float) -> float:
        """A timestamp token's time in the upload; `otherwise` for a text token."""
        if token < self._timestamp_begin:
            return otherwise
        return offset + (token - self._timestamp_begin) * TIME_PRECISION

    def _text(self, tokens: list[int]) -> str:
        return self._tokenizer.decode([t for t in tokens if t < self._ids["<|endoftext|>"]])

    def _words(self, tokens: list[int], start: float, end: float) -> list[Word]:
        """Words with times spread over the segment by their length (no alignment heads in ONNX)."""
        words: list[list[int]] = []
        for t in (t for t in tokens if t < self._ids["<|endoftext|>"]):
            piece = self._tokenizer.decode([t])
            if not words or piece.startswith(" "):
                words.append([t])
            else:
                words[-1].append(t)
        texts = [self._tokenizer.decode(w) for w in words]
        total = sum(len(t.strip()) for t in texts) or 1
        out, at = [], start
        for text in texts:
            length = (end - start) * len(text.strip()) / total
            out.append(Word(text, round(at, 3), round(at + length, 3), 1.0))
            at += length
        return out

    # -- decoding --------------------------------------------------------------------------

    def _with_fallback(
        self, encoded: np.ndarray, prompt: list[int], sot_index: int, temperature: float, rng: np.random.Generator
    ) -> tuple[list[int], float, float, float]:
        """(tokens, summed log-probability, temperature used, no-speech probability); retried hotter
        while the text repeats itself or is improbable, as faster-whisper does."""
        ladder = FALLBACK_TEMPERATURES if temperature == 0 else (temperature,)
        result: tuple[list[int], float, float, float] | None = None
        for t in ladder:
            tokens, logprob, no_speech = self._decode_window(encoded, prompt, sot_index, t, rng)
            result = (tokens, logprob, t, no_speech)
            avg = logprob / (len(tokens) + 1)
            failed = compression_ratio(self._text(tokens)) > COMPRESSION_RATIO_THRESHOLD or avg < LOG_PROB_THRESHOLD
            if not failed or no_speech > NO_SPEECH_THRESHOLD:
                break
        assert result is not None
        return result

    def _decode_window(
        self, encoded: np.ndarray, prompt: list[int], sot_index: int, temperature: float, rng: np.random.Generator
    ) -> tuple[list[int], float, float]:
        eot = self._ids["<|endoftext|>"]
        budget = min(self._max_length // 2, self._max_length - len(prompt))
        logits, cache = self._step(prompt, encoded, None)
        no_speech = 0.0
        if self._ids["no_speech"] >= 0:
            no_speech = float(_softmax(logits[0, sot_index].astype(np.float64))[self._ids["no_speech"]])
        tokens: list[int] = []
        total = 0.0
        for _ in range(budget):
            scores = logits[0, -1].astype(np.float64)
            self._apply_rules(scores, tokens)
            logprobs = _log_softmax(scores)
            if temperature > 0:
                token = int(rng.choice(len(scores), p=_softmax(scores / temperature)))
            else:
                token = int(np.argmax(scores))
            total += float(logprobs[token])
            if token == eot:
                break
            tokens.append(token)
            logits, cache = self._step(prompt + tokens, encoded, cache)
        return tokens, total, no_speech

    def _apply_rules(self, scores: np.ndarray, sampled: list[int]) -> None:
        """Whisper's logit rules for timestamped decoding (openai/whisper ApplyTimestampRules)."""
        tb, eot = self._timestamp_begin, self._ids["<|endoftext|>"]
        if self._vocab is not None:
            scores[self._vocab :] = -np.inf  # padding rows some exports add to the vocabulary
        scores[self._suppress] = -np.inf
        scores[self._ids["<|notimestamps|>"]] = -np.inf
        if not sampled:
            scores[self._begin_suppress] = -np.inf
            scores[:tb] = -np.inf  # a window starts with a timestamp...
            scores[tb + self._max_initial + 1 :] = -np.inf  # ...near its beginning
        else:
            last_ts = sampled[-1] >= tb
            penultimate_ts = len(sampled) < 2 or sampled[-2] >= tb
            if last_ts:
                if penultimate_ts:
                    scores[tb:] = -np.inf  # a segment just closed: text (or the end) comes next
                else:
                    scores[:eot] = -np.inf  # a text ended: its closing timestamp (or the end)
            stamps = [t for t in sampled if t >= tb]
            if stamps:  # time never goes back
                floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
                scores[tb:floor] = -np.inf
        logprobs = _log_softmax(scores)
        stamp = np.logaddexp.reduce(logprobs[tb:])
        if stamp > logprobs[:tb].max():
            scores[:tb] = -np.inf  # a timestamp is likelier than any text token

    def _step(
        self, tokens: list[int], encoded: np.ndarray, cache: dict[str, np.ndarray] | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits for the next token; the cache (optimum's past_key_values.*) when the graphs keep one."""
        if self._with_past is not None and cache is not None:
            session, feed = self._with_past, {"input_ids": np.array([tokens[-1:]], dtype=np.int64), **cache}
        elif self._merged:
            first = cache is None
            feed = {"input_ids": np.array([tokens if first else tokens[-1:]], dtype=np.int64),
                    "encoder_hidden_states": encoded, "use_cache_branch": np.array([not first])}
            feed |= cache if cache is not None else self._empty_cache()
            session = self._decoder
        else:  # first step, or no cache: the whole sequence
            session = self._decoder
            feed = {"input_ids": np.array([tokens], dtype=np.int64), "encoder_hidden_states": encoded}
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(None, {k: v for k, v in feed.items() if k in self._inputs(session)})
        new = dict(cache or {})
        for n, value in zip(names[1:], outputs[1:], strict=True):
            if n.startswith("present."):
                # The merged graph's cached branch passes the encoder keys through unchanged (or empty).
                if self._merged and ".encoder." in n and cache is not None:
                    continue
                new["past_key_values." + n.removeprefix("present.")] = value
        return outputs[0], new

    def _inputs(self, session: Any) -> set[str]:
        return {i.name for i in session.get_inputs()}

    def _empty_cache(self) -> dict[str, np.ndarray]:
        """Zero-length caches for the merged graph's first call (its no-cache branch ignores them)."""
        out = {}
        for i in self._decoder.get_inputs():
            if i.name.startswith("past_key_values."):
                heads, head_dim = i.shape[1], i.shape[3]
                out[i.name] = np.zeros((1, heads, 0, head_dim), dtype=_ORT_FLOATS.get(i.type, np.float32))
        return out

    def _detect_language(self, features: np.ndarray) -> tuple[str, float]:
        window = _pad_or_trim(features[:, :WINDOW_FRAMES])
        encoded = self._encoder.run(None, {"input_features": window[None].astype(self._float)})[0]
        logits, _ = self._step([self._ids["<|startoftranscript|>"]], encoded, None)
        codes = list(self._languages)
        probs = _softmax(logits[0, -1, [self._languages[c] for c in codes]].astype(np.float64))
        best = int(np.argmax(probs))
        return codes[best], float(probs[best])


def _restore_times(seg: Segment, speech_map: Any) -> None:
    seg.start = speech_map.get_original_time(seg.start)
    seg.end = speech_map.get_original_time(seg.end, is_end=True)
    for w in seg.words:
        w.start, w.end = speech_map.get_original_time(w.start), speech_map.get_original_time(w.end, is_end=True)


def _pad_or_trim(features: np.ndarray) -> np.ndarray:
    if features.shape[-1] >= WINDOW_FRAMES:
        return features[:, :WINDOW_FRAMES]
    return np.pad(features, ((0, 0), (0, WINDOW_FRAMES - features.shape[-1])))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x)
    return x - top - np.log(np.sum(np.exp(x - top)))


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StartupError(f"{path} cannot be read as JSON ({exc}): an ONNX Whisper folder needs it.") from exc
    return data if isinstance(data, dict) else {}
