"""Phi-1/1.5/2: attention and MLP in parallel behind one LayerNorm, partial rotary,
biases everywhere (LM head included), optional LayerNorm on q and k."""

from __future__ import annotations

from intarsia.backbones.blocks import ParallelDecoderLayer
from intarsia.backbones.decoder import CausalLM, DecoderArgs, WeightMap, llama_like_args
from intarsia.engine.registry import register


def phi_args(config, max_positions: int) -> DecoderArgs:
    return llama_like_args(config, max_positions, norm="layer", gated_mlp=False, qkv_bias=True,
                           o_bias=True, mlp_bias=True, lm_head_bias=True,
                           qk_norm="shared" if config.qk_layernorm else None, qk_norm_bias=True)


@register("PhiForCausalLM")
class PhiForCausalLM(CausalLM):
    adapt = staticmethod(phi_args)
    layer_cls = ParallelDecoderLayer
    weight_map = WeightMap(renames=(
        (r"\.self_attn\.dense\.", ".self_attn.o_proj."),
        (r"\.q_layernorm\.", ".q_norm."),
        (r"\.k_layernorm\.", ".k_norm."),
        (r"\.mlp\.fc1\.", ".mlp.up_proj."),
        (r"\.mlp\.fc2\.", ".mlp.down_proj."),
        (r"\.final_layernorm\.", ".norm."),
    ))
