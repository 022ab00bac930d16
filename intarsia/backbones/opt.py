"""OPT: learned positions offset by 2, pre- or post-LN layers, and (OPT-350m) token
embeddings narrower than the hidden size behind project_in/project_out."""

from __future__ import annotations

import torch
from torch import nn

from intarsia.backbones.context import ForwardContext
from intarsia.backbones.decoder import CausalLM, DecoderArgs, DecoderLayer, WeightMap, norm_residual
from intarsia.backbones.gpt_blocks import LearnedPositionsModel, PostNormDecoderLayer, learned_positions
from intarsia.backbones.layers import Linear
from intarsia.engine.registry import register


def opt_args(config, max_positions: int) -> DecoderArgs:
    heads = config.num_attention_heads
    embed_dim = config.word_embed_proj_dim
    return DecoderArgs(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=config.hidden_size // heads,
        intermediate_size=config.ffn_dim,
        norm="layer",
        norm_eps=1e-5,  # OPT uses nn.LayerNorm's default
        norm_affine=config.layer_norm_elementwise_affine,
        act=config.activation_function,
        gated_mlp=False,
        qkv_bias=config.enable_bias,
        o_bias=config.enable_bias,
        mlp_bias=config.enable_bias,
        embed_dim=embed_dim if embed_dim != config.hidden_size else None,
        tie_word_embeddings=config.tie_word_embeddings,
        extra={**learned_positions(config.max_position_embeddings, max_positions),
               "final_norm": config.do_layer_norm_before and not config._remove_final_layer_norm},
    )


class OPTModel(LearnedPositionsModel):
    position_offset = 2  # rows 0 and 1 of OPT's table are reserved

    def __init__(self, args: DecoderArgs, layer_cls: type[nn.Module] = DecoderLayer) -> None:
        super().__init__(args, layer_cls)
        self.project_in = self.project_out = None
        if args.embed_dim is not None:
            self.project_in = Linear(args.embed_dim, args.hidden_size)
            self.project_out = Linear(args.hidden_size, args.embed_dim)
        if not args.extra["final_norm"]:
            self.norm = None

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        x = inputs_embeds if self.project_in is None else self.project_in(inputs_embeds)
        x, residual = self.add_positions(positions, x), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, ctx)
        if self.norm is not None:
            x, _ = norm_residual(self.norm, x, residual)
        elif residual is not None:
            x = x + residual
        return x if self.project_out is None else self.project_out(x)


@register("OPTForCausalLM")
class OPTForCausalLM(CausalLM):
    adapt = staticmethod(opt_args)
    model_cls = OPTModel
    weight_map = WeightMap(renames=(
        (r"^(model\.)?decoder\.", "model."),  # OPTModel checkpoints lack the "model." prefix
        (r"(\.layers\.\d+)\.final_layer_norm\.", r"\1.post_attention_layernorm."),
        (r"^model\.final_layer_norm\.", "model.norm."),
        (r"\.self_attn_layer_norm\.", ".input_layernorm."),
        (r"\.self_attn\.out_proj\.", ".self_attn.o_proj."),
        (r"\.fc1\.", ".mlp.up_proj."),
        (r"\.fc2\.", ".mlp.down_proj."),
    ))

    def __init__(self, config, max_positions: int) -> None:
        self.layer_cls = DecoderLayer if config.do_layer_norm_before else PostNormDecoderLayer
        super().__init__(config, max_positions)
