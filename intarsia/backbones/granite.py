"""IBM Granite 3: Llama with muP-style multipliers on the embedding, the attention
scores, each residual branch and the logits."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, llama_like_args
from intarsia.engine.registry import register


def granite_args(config, max_positions: int) -> DecoderArgs:
    return llama_like_args(config, max_positions, embed_scale=config.embedding_multiplier,
                           attn_scale=config.attention_multiplier,
                           residual_scale=config.residual_multiplier,
                           logit_scale=1.0 / config.logits_scaling)


@register("GraniteForCausalLM")
class GraniteForCausalLM(CausalLM):
    adapt = staticmethod(granite_args)
