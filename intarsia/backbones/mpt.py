"""MPT: ALiBi, no biases (by default), bias-free LayerNorm, optional q/k/v clipping."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, WeightMap
from intarsia.backbones.gpt_blocks import alibi_slopes
from intarsia.engine.registry import register


def mpt_args(config, max_positions: int) -> DecoderArgs:
    attn = config.attn_config
    if not attn.alibi or attn.qk_ln:
        raise ValueError("MPT without ALiBi or with qk_ln is not supported (transformers has neither)")
    heads = config.n_heads
    bias = not config.no_bias
    return DecoderArgs(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_layers=config.n_layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=config.d_model // heads,
        intermediate_size=config.expansion_ratio * config.d_model,
        norm="layer",
        norm_eps=config.layer_norm_epsilon,
        norm_bias=bias,
        act="gelu",
        gated_mlp=False,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        attn_scale=attn.softmax_scale,
        alibi_slopes=alibi_slopes(heads, attn.alibi_bias_max),
        clip_qkv=attn.clip_qkv,
        tie_word_embeddings=config.tie_word_embeddings,
    )


@register("MPTForCausalLM", "MptForCausalLM")
class MPTForCausalLM(CausalLM):
    adapt = staticmethod(mpt_args)
    weight_map = WeightMap(renames=(
        (r"^transformer\.", "model."),
        (r"\.wte\.", ".embed_tokens."),
        (r"\.blocks\.(\d+)\.", r".layers.\1."),
        (r"\.norm_1\.", ".input_layernorm."),
        (r"\.norm_2\.", ".post_attention_layernorm."),
        (r"\.attn\.Wqkv\.", ".self_attn.qkv_proj."),
        (r"\.attn\.out_proj\.", ".self_attn.o_proj."),
        (r"\.ffn\.", ".mlp."),
        (r"\.norm_f\.", ".norm."),
    ))
