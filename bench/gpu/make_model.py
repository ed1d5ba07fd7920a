#!/usr/bin/env python3
"""Write a random-weight GGUF (F16) of a real SmolLM2 shape, with the real SmolLM2 tokenizer,
chat template and metadata copied from another GGUF.

Why: the real SmolLM2-135M-Instruct Q4_1 file (98 MB) cannot travel to the device machine
(64 MiB per call), and no llama.cpp quant type makes it fit (its 576-wide rows rule out the
K-quants; Q4_0 is still ~76 MB). So the device writes a model of the same shape with random
weights (same tensors, same compute), and llama-quantize turns it into the real file's types.

  make_model.py --meta SRC.gguf --out OUT.gguf --shape meta    # metadata only, no tensors
  make_model.py --meta SRC.gguf --out OUT.gguf --shape 135m    # SmolLM2-135M shape, F16
  make_model.py --meta SRC.gguf --out OUT.gguf --shape 1.7b    # SmolLM2-1.7B shape, F16

Rows of the (tied) embedding for control tokens (<|im_end|>, <|endoftext|>...) are zero, so
with random weights greedy decoding never picks an end-of-generation token: both servers then
generate exactly max_tokens, and the comparison needs no ignore_eos (which nexa lacks).
Needs numpy and gguf-py (PYTHONPATH=<llama.cpp>/gguf-py).
"""
import argparse
import sys
import time

import gguf
import numpy as np

SHAPES = {
    # SmolLM2-135M-Instruct (the real file's llama.* keys) and SmolLM2-1.7B-Instruct (its config.json:
    # hidden 2048, intermediate 8192, 24 layers, 32 heads, 32 KV heads, rope_theta 130000, tied embeddings).
    "135m": dict(n_embd=576, n_ff=1536, n_layer=30, n_head=9, n_head_kv=3, rope_base=100000.0, size="135M"),
    "1.7b": dict(n_embd=2048, n_ff=8192, n_layer=24, n_head=32, n_head_kv=32, rope_base=130000.0, size="1.7B"),
}


def copy_kv(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> None:
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                val = field.contents()
            else:
                val = np.concatenate([field.parts[i] for i in field.data]) if field.data else np.array([])
                val = val.tolist()
            writer.add_key_value(key, val, vtype, sub_type=sub)
        else:
            writer.add_key_value(key, field.contents(), vtype)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", required=True, choices=["meta", *SHAPES])
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    t0 = time.time()
    reader = gguf.GGUFReader(a.meta)
    arch = reader.fields["general.architecture"].contents()
    assert arch == "llama", arch
    writer = gguf.GGUFWriter(a.out, arch)
    copy_kv(reader, writer)
    if a.shape == "meta":
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        print(f"wrote {a.out} (metadata only) in {time.time() - t0:.1f}s")
        return 0

    s = SHAPES[a.shape]
    n_embd, n_ff, n_layer, n_head, n_head_kv = s["n_embd"], s["n_ff"], s["n_layer"], s["n_head"], s["n_head_kv"]
    head_dim = n_embd // n_head
    token_types = np.asarray(reader.fields["tokenizer.ggml.token_type"].contents())
    n_vocab = len(token_types)
    V = gguf.GGUFValueType
    for key, val, vt in [
        ("llama.block_count", n_layer, V.UINT32),
        ("llama.embedding_length", n_embd, V.UINT32),
        ("llama.feed_forward_length", n_ff, V.UINT32),
        ("llama.attention.head_count", n_head, V.UINT32),
        ("llama.attention.head_count_kv", n_head_kv, V.UINT32),
        ("llama.rope.freq_base", s["rope_base"], V.FLOAT32),
        ("llama.rope.dimension_count", head_dim, V.UINT32),
        ("llama.vocab_size", n_vocab, V.UINT32),
        ("general.file_type", int(gguf.LlamaFileType.MOSTLY_F16), V.UINT32),
        ("general.name", f"SmolLM2 {s['size']} shape, RANDOM weights (benchmark only)", V.STRING),
        ("general.size_label", s["size"], V.STRING),
    ]:
        writer.remove_key(key)
        writer.add_key_value(key, val, vt)

    rng = np.random.default_rng(a.seed)
    pool = (rng.standard_normal(48_000_000, dtype=np.float32) * 0.02).astype(np.float16)

    def rand(rows: int, cols: int) -> np.ndarray:
        n = rows * cols
        if n <= pool.size:
            off = int(rng.integers(0, pool.size - n + 1))
            return pool[off:off + n].reshape(rows, cols)
        return np.resize(pool[int(rng.integers(0, pool.size)):], n).reshape(rows, cols)

    emb = rand(n_vocab, n_embd).copy()
    control = np.nonzero(token_types == int(gguf.TokenType.CONTROL))[0]
    emb[control] = 0  # tied output: a control token's logit is 0, below the best of 49k random ones
    writer.add_tensor("token_embd.weight", emb)
    ones = np.ones(n_embd, dtype=np.float32)
    kv = n_head_kv * head_dim
    for i in range(n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones)
        writer.add_tensor(p + "attn_q.weight", rand(n_embd, n_embd))
        writer.add_tensor(p + "attn_k.weight", rand(kv, n_embd))
        writer.add_tensor(p + "attn_v.weight", rand(kv, n_embd))
        writer.add_tensor(p + "attn_output.weight", rand(n_embd, n_embd))
        writer.add_tensor(p + "ffn_norm.weight", ones)
        writer.add_tensor(p + "ffn_gate.weight", rand(n_ff, n_embd))
        writer.add_tensor(p + "ffn_up.weight", rand(n_ff, n_embd))
        writer.add_tensor(p + "ffn_down.weight", rand(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", ones)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    n_params = n_vocab * n_embd + n_layer * (2 * n_embd * n_embd + 2 * kv * n_embd + 3 * n_ff * n_embd)
    print(f"wrote {a.out}: shape {a.shape}, {n_params / 1e6:.0f}M params, {len(control)} control-token rows zeroed,"
          f" in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
