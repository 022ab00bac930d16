"""Decoder families, each a small declaration over the shared blocks.

Importing this package registers every family with `intarsia.engine.registry`.
"""

from intarsia.backbones import (  # noqa: F401
    cohere,
    dbrx,
    gemma,
    granite,
    llama,
    llava,
    mixtral,
    nemotron,
    olmo,
    phi3,
    pooling,
    qwen2_vl,
    starcoder2,
)
