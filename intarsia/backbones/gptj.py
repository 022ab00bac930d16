"""GPT-J: attention and MLP in parallel behind one LayerNorm, GPT-J-style (interleaved)
rotary on the first `rotary_dim` features of each head, biased LM head."""

from __future__ import annotations

from transformers import PretrainedConfig

from intarsia.backbones.blocks import ParallelDecoderLayer
from intarsia.backbones.decoder import CausalLM, DecoderArgs, WeightMap
from intarsia.backbones.rotary import RotaryEmbedding
from intarsia.engine.registry import register


def gptj_args(config, max_positions: int) -> DecoderArgs:
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    # GPT-J's config predates rope_parameters: its rotary base is fixed at 10000.
    rope_config = PretrainedConfig(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    rope = RotaryEmbedding.from_config(rope_config, head_dim, max_positions, is_neox=False,
                                       rotary_dim=config.rotary_dim or head_dim)
    return DecoderArgs(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        intermediate_size=config.n_inner or 4 * config.hidden_size,
        norm="layer",
        norm_eps=config.layer_norm_epsilon,
        act=config.activation_function,
        gated_mlp=False,
        mlp_bias=True,
        lm_head_bias=True,
        rope=rope,
        tie_word_embeddings=config.tie_word_embeddings,
    )


@register("GPTJForCausalLM")
class GPTJForCausalLM(CausalLM):
    adapt = staticmethod(gptj_args)
    layer_cls = ParallelDecoderLayer
    weight_map = WeightMap(renames=(
        (r"^transformer\.", "model."),
        (r"\.wte\.", ".embed_tokens."),
        (r"\.h\.(\d+)\.", r".layers.\1."),
        (r"\.ln_1\.", ".input_layernorm."),
        (r"\.attn\.", ".self_attn."),
        (r"\.out_proj\.", ".o_proj."),
        (r"\.mlp\.fc_in\.", ".mlp.up_proj."),
        (r"\.mlp\.fc_out\.", ".mlp.down_proj."),
        (r"\.ln_f\.", ".norm."),
    ))
