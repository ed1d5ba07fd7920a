"""The llama.cpp engines (llama-cpp-python) for GGUF models. The loader (engines/loader.py)
names the engine classes by module path, so nothing is re-exported here.

- engine.py: LlamaEngine, text and chat models (and embeddings of a chat model);
- scheduler.py: continuous batching, every active request decoded in one batch per step;
- batch.py: TokenBatch, the llama_batch the scheduler and the embedder fill;
- sampler.py: ConstrainedSampler, a sampler chain held to a GBNF grammar;
- vision.py: VisionEngine, a language model plus its projector (mmproj) through mtmd;
- embedder.py: LlamaEmbedder and EmbeddingEngine, pooled text embeddings;
- cpu_buffers.py: which CPU weight buffers llama.cpp may use (repacked, never AMX).
"""
