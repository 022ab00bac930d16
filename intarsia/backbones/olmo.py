"""AI2 OLMo (1): Llama with a LayerNorm that has no weight and no bias, and q/k/v
optionally clamped to ``[-clip_qkv, clip_qkv]``."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, llama_like_args
from intarsia.engine.registry import register


def olmo_args(config, max_positions: int) -> DecoderArgs:
    # transformers' OlmoLayerNorm hard-codes its epsilon; the config has none.
    return llama_like_args(config, max_positions, norm="layer", norm_affine=False, norm_eps=1e-5,
                           clip_qkv=config.clip_qkv)


@register("OlmoForCausalLM", "OLMoForCausalLM")
class OlmoForCausalLM(CausalLM):
    adapt = staticmethod(olmo_args)
