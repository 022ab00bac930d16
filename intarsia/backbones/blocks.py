"""Decoder-layer variants shared by several families, over the blocks of `decoder.py`."""

from __future__ import annotations

import torch
from torch import nn

from intarsia.backbones.context import ForwardContext
from intarsia.backbones.decoder import DecoderArgs, SelfAttention, make_mlp, make_norm, norm_residual


class ParallelDecoderLayer(nn.Module):
    """``h + attn(norm(h)) + mlp(norm(h))``: attention and MLP read the same normed input
    (Cohere, GPT-J, Phi-1/2, Falcon-7B's single-norm layout), so there is one norm only."""

    attn_cls: type[SelfAttention] = SelfAttention

    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = make_norm(args)
        self.self_attn = self.attn_cls(args, layer_idx)
        self.mlp = make_mlp(args)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = norm_residual(self.input_layernorm, x, residual)
        return self.self_attn(positions, x, ctx) + self.mlp(x), residual
