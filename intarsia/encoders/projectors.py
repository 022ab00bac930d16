"""Projectors from an encoder's feature space into the language model's embeddings."""

from __future__ import annotations

import torch
from torch import nn

from intarsia.backbones.layers import Linear, activation


class MLPProjector(nn.Module):
    """``linear_2(act(linear_1(x)))``: LLaVA's family, Qwen2-VL's patch merger."""

    def __init__(self, in_dim: int, out_dim: int, act: str, bias: bool = True,
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.linear_1 = Linear(in_dim, hidden_dim, bias)
        self.act = activation(act)
        self.linear_2 = Linear(hidden_dim, out_dim, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LinearProjector(nn.Module):
    """One linear map: PaliGemma, Qwen2-Audio."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = Linear(in_dim, out_dim, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
