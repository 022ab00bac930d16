"""Falcon, in all its layouts: the new decoder architecture (grouped KV heads, attention
and MLP in parallel behind one or two norms) and the old one (multi-query or per-head
q/k/v, parallel or sequential residual), with rotary or ALiBi positions."""

from __future__ import annotations

import math

from intarsia.backbones.blocks import ParallelDecoderLayer
from intarsia.backbones.bloom import BLOOM_RENAMES
from intarsia.backbones.decoder import CausalLM, DecoderArgs, DecoderLayer, WeightMap
from intarsia.backbones.gpt_blocks import TwoNormParallelDecoderLayer, alibi_slopes, ungroup_qkv
from intarsia.backbones.rotary import RotaryEmbedding
from intarsia.engine.registry import register


def falcon_args(config, max_positions: int) -> DecoderArgs:
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    old_kv_heads = 1 if config.multi_query else heads
    kv_heads = config.num_kv_heads if config.new_decoder_architecture else old_kv_heads
    return DecoderArgs(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=config.ffn_hidden_size,
        norm="layer",
        norm_eps=config.layer_norm_epsilon,
        act=config.activation,
        gated_mlp=False,
        qkv_bias=config.bias,
        o_bias=config.bias,
        mlp_bias=config.bias,
        rope=None if config.alibi else RotaryEmbedding.from_config(config, head_dim, max_positions),
        # Falcon adds ALiBi before the 1/sqrt(head_dim) scaling, so its slopes are scaled too.
        alibi_slopes=alibi_slopes(heads) / math.sqrt(head_dim) if config.alibi else None,
        tie_word_embeddings=config.tie_word_embeddings,
    )


def falcon_layer(config) -> type:
    if config.new_decoder_architecture:
        two_norms = (config.num_ln_in_parallel_attn or 2) == 2
        return TwoNormParallelDecoderLayer if two_norms else ParallelDecoderLayer
    return ParallelDecoderLayer if config.parallel_attn else DecoderLayer


@register("FalconForCausalLM", "RWForCausalLM")
class FalconForCausalLM(CausalLM):
    adapt = staticmethod(falcon_args)
    weight_map = WeightMap(
        renames=(*BLOOM_RENAMES, (r"\.ln_attn\.", ".input_layernorm."),
                 (r"\.ln_mlp\.", ".post_attention_layernorm.")),
        transforms=((r"\.query_key_value\.", ungroup_qkv),))

    def __init__(self, config, max_positions: int) -> None:
        self.layer_cls = falcon_layer(config)  # the layout is a config choice
        super().__init__(config, max_positions)
