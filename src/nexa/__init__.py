"""nexa: a local AI inference server (text, chat, tools, vision, images, speech, embeddings)."""

__version__ = "0.1.0"
