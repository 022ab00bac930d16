"""Decoder families, each a small declaration over the shared blocks.

Importing this package registers every family with `intarsia.engine.registry`.
"""

from intarsia.backbones import (  # noqa: F401
    bloom,
    cohere,
    dbrx,
    deepseek,
    falcon,
    gemma,
    gpt2,
    gpt_neox,
    gptj,
    granite,
    llama,
    llava,
    llava_video,
    mixtral,
    mpt,
    nemotron,
    olmo,
    opt,
    paligemma,
    persimmon,
    phi,
    phi3,
    phi3v,
    pooling,
    qwen2_audio,
    qwen2_vl,
    stablelm,
    starcoder2,
)
