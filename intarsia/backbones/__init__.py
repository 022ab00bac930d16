"""Decoder families, each a small declaration over the shared blocks.

Importing this package registers every family with `intarsia.engine.registry`.
"""

from intarsia.backbones import cohere, gemma, granite, llama, llava, mixtral, pooling, qwen2_vl  # noqa: F401
