"""nexa: a local AI inference server (text, chat, tools, vision, images, speech, embeddings)."""

# First, before any numpy: see native.py (a CUDA build of llama.cpp crashes otherwise).
from nexa.native import preload_llama

preload_llama()

__version__ = "0.1.0"
