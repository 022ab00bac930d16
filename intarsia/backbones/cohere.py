"""Cohere Command-R: one bias-free LayerNorm feeding attention and MLP in parallel,
GPT-J-style interleaved rotary, logits scaled by `logit_scale`, optional QK-norm with a
weight per head."""

from __future__ import annotations

from intarsia.backbones.blocks import ParallelDecoderLayer
from intarsia.backbones.decoder import CausalLM, DecoderArgs, head_dim_of, llama_like_args
from intarsia.backbones.rotary import RotaryEmbedding
from intarsia.engine.registry import register


def cohere_args(config, max_positions: int) -> DecoderArgs:
    rope = RotaryEmbedding.from_config(config, head_dim_of(config), max_positions, is_neox=False)
    return llama_like_args(config, max_positions, norm="layer", norm_bias=False, rope=rope,
                           logit_scale=config.logit_scale,
                           qk_norm="per_head" if getattr(config, "use_qk_norm", False) else None)


@register("CohereForCausalLM")
class CohereForCausalLM(CausalLM):
    adapt = staticmethod(cohere_args)
    layer_cls = ParallelDecoderLayer
