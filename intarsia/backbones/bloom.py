"""BLOOM: ALiBi instead of position embeddings, a LayerNorm over the token embeddings,
per-head interleaved fused q/k/v, biased LayerNorm and GELU MLP."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, WeightMap
from intarsia.backbones.gpt_blocks import EmbeddingNormModel, alibi_slopes, ungroup_qkv
from intarsia.engine.registry import register

# Shared with Falcon, whose checkpoints descend from BLOOM's.
BLOOM_RENAMES = (
    (r"^(transformer\.)?(?!lm_head)", "model."),  # BloomModel checkpoints have no prefix
    (r"\.word_embeddings\.", ".embed_tokens."),
    (r"\.word_embeddings_layernorm\.", ".embed_norm."),
    (r"\.h\.(\d+)\.", r".layers.\1."),
    (r"\.self_attention\.query_key_value\.", ".self_attn.qkv_proj."),
    (r"\.self_attention\.dense\.", ".self_attn.o_proj."),
    (r"\.mlp\.dense_h_to_4h\.", ".mlp.up_proj."),
    (r"\.mlp\.dense_4h_to_h\.", ".mlp.down_proj."),
    (r"\.ln_f\.", ".norm."),
)


def bloom_args(config, max_positions: int) -> DecoderArgs:
    if config.apply_residual_connection_post_layernorm:
        raise ValueError("BLOOM with apply_residual_connection_post_layernorm=True is not supported")
    heads = config.n_head
    return DecoderArgs(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.n_layer,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=config.hidden_size // heads,
        intermediate_size=4 * config.hidden_size,
        norm="layer",
        norm_eps=config.layer_norm_epsilon,
        act="gelu_pytorch_tanh",  # BloomGelu is the tanh approximation
        gated_mlp=False,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        alibi_slopes=alibi_slopes(heads),
        tie_word_embeddings=config.tie_word_embeddings,
    )


@register("BloomForCausalLM")
class BloomForCausalLM(CausalLM):
    adapt = staticmethod(bloom_args)
    model_cls = EmbeddingNormModel
    weight_map = WeightMap(renames=BLOOM_RENAMES, transforms=((r"\.query_key_value\.", ungroup_qkv),))
