"""Persimmon (Fuyu's language model): per-head interleaved fused q/k/v, optional
LayerNorm on q and k, partial rotary, squared-ReLU MLP."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, WeightMap, llama_like_args
from intarsia.backbones.gpt_blocks import ungroup_qkv
from intarsia.engine.registry import register


def persimmon_args(config, max_positions: int) -> DecoderArgs:
    return llama_like_args(config, max_positions, norm="layer", gated_mlp=False, qkv_bias=True,
                           o_bias=True, mlp_bias=True,
                           qk_norm="shared" if config.qk_layernorm else None, qk_norm_bias=True)


@register("PersimmonForCausalLM")
class PersimmonForCausalLM(CausalLM):
    adapt = staticmethod(persimmon_args)
    weight_map = WeightMap(
        renames=(
            (r"\.self_attn\.query_key_value\.", ".self_attn.qkv_proj."),
            (r"\.self_attn\.dense\.", ".self_attn.o_proj."),
            (r"\.q_layernorm\.", ".q_norm."),
            (r"\.k_layernorm\.", ".k_norm."),
            (r"\.mlp\.dense_h_to_4h\.", ".mlp.up_proj."),
            (r"\.mlp\.dense_4h_to_h\.", ".mlp.down_proj."),
            (r"\.final_layernorm\.", ".norm."),
        ),
        transforms=((r"\.query_key_value\.", ungroup_qkv),))
