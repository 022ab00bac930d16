"""GPT-2 and GPTBigCode (StarCoder 1, SantaCoder): learned absolute positions, pre-LN
layers with biased LayerNorm and a plain GELU MLP; GPTBigCode adds multi-query attention."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, DecoderLayer, SelfAttention, WeightMap
from intarsia.backbones.gpt_blocks import LearnedPositionsModel, learned_positions, transpose, ungroup_qkv
from intarsia.engine.registry import register

GPT2_RENAMES = (
    (r"^(transformer\.)?(?!lm_head)", "model."),  # GPT2Model checkpoints have no prefix
    (r"\.wte\.", ".embed_tokens."),
    (r"\.wpe\.", ".embed_positions."),
    (r"\.h\.(\d+)\.", r".layers.\1."),
    (r"\.ln_1\.", ".input_layernorm."),
    (r"\.ln_2\.", ".post_attention_layernorm."),
    (r"\.ln_f\.", ".norm."),
    (r"\.attn\.c_attn\.", ".self_attn.qkv_proj."),
    (r"\.attn\.c_proj\.", ".self_attn.o_proj."),
    (r"\.mlp\.c_fc\.", ".mlp.up_proj."),
    (r"\.mlp\.c_proj\.", ".mlp.down_proj."),
)


def gpt2_args(config, max_positions: int) -> DecoderArgs:
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    return DecoderArgs(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=1 if getattr(config, "multi_query", False) else heads,
        head_dim=head_dim,
        intermediate_size=config.n_inner or 4 * config.hidden_size,
        norm="layer",
        norm_eps=config.layer_norm_epsilon,
        act=config.activation_function,
        gated_mlp=False,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        attn_scale=None if config.scale_attn_weights else 1.0,
        tie_word_embeddings=config.tie_word_embeddings,
        extra={**learned_positions(config.max_position_embeddings, max_positions),
               "scale_by_inverse_layer_idx": getattr(config, "scale_attn_by_inverse_layer_idx", False)},
    )


class GPT2Attention(SelfAttention):
    """Optionally scales layer i's scores by a further 1 / (i + 1) (`scale_attn_by_inverse_layer_idx`)."""

    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__(args, layer_idx)
        if args.extra["scale_by_inverse_layer_idx"]:
            self.attn.scale /= layer_idx + 1


class GPT2DecoderLayer(DecoderLayer):
    attn_cls = GPT2Attention


@register("GPT2LMHeadModel")
class GPT2LMHeadModel(CausalLM):
    """GPT-2: Conv1D weights, stored transposed, and one fused q/k/v projection."""

    adapt = staticmethod(gpt2_args)
    model_cls = LearnedPositionsModel
    layer_cls = GPT2DecoderLayer
    weight_map = WeightMap(renames=GPT2_RENAMES,
                           transforms=((r"\.c_(attn|proj|fc)\.weight$", transpose),))


@register("GPTBigCodeForCausalLM")
class GPTBigCodeForCausalLM(CausalLM):
    """GPT-2 with nn.Linear weights and optional multi-query attention (one K/V head)."""

    adapt = staticmethod(gpt2_args)
    model_cls = LearnedPositionsModel
    weight_map = WeightMap(renames=GPT2_RENAMES, transforms=((r"\.c_attn\.", ungroup_qkv),))
