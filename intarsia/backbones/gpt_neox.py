"""GPT-NeoX (Pythia, ...): partial neox rotary, per-head interleaved fused q/k/v,
attention and MLP in parallel behind their own LayerNorms or sequential."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, DecoderLayer, WeightMap, head_dim_of
from intarsia.backbones.gpt_blocks import TwoNormParallelDecoderLayer, ungroup_qkv
from intarsia.backbones.rotary import RotaryEmbedding
from intarsia.engine.registry import register


def gpt_neox_args(config, max_positions: int) -> DecoderArgs:
    head_dim = head_dim_of(config)
    return DecoderArgs(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_attention_heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        norm="layer",
        norm_eps=config.layer_norm_eps,
        act=config.hidden_act,
        gated_mlp=False,
        qkv_bias=config.attention_bias,
        o_bias=config.attention_bias,
        mlp_bias=True,
        rope=RotaryEmbedding.from_config(config, head_dim, max_positions),
        tie_word_embeddings=config.tie_word_embeddings,
    )


@register("GPTNeoXForCausalLM")
class GPTNeoXForCausalLM(CausalLM):
    adapt = staticmethod(gpt_neox_args)
    weight_map = WeightMap(
        renames=(
            (r"^gpt_neox\.", "model."),
            (r"^embed_out\.", "lm_head."),
            (r"\.embed_in\.", ".embed_tokens."),
            (r"\.attention\.query_key_value\.", ".self_attn.qkv_proj."),
            (r"\.attention\.dense\.", ".self_attn.o_proj."),
            (r"\.mlp\.dense_h_to_4h\.", ".mlp.up_proj."),
            (r"\.mlp\.dense_4h_to_h\.", ".mlp.down_proj."),
            (r"\.final_layer_norm\.", ".norm."),
        ),
        ignore=(*WeightMap.ignore, r"\.attention\.(masked_)?bias$"),
        transforms=((r"\.query_key_value\.", ungroup_qkv),))

    def __init__(self, config, max_positions: int) -> None:
        self.layer_cls = TwoNormParallelDecoderLayer if config.use_parallel_residual else DecoderLayer
        super().__init__(config, max_positions)
