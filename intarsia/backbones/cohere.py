"""Cohere Command-R: one bias-free LayerNorm feeding attention and MLP in parallel,
GPT-J-style interleaved rotary, logits scaled by `logit_scale`, optional per-head QK-norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from intarsia.backbones.blocks import ParallelDecoderLayer
from intarsia.backbones.decoder import CausalLM, DecoderArgs, SelfAttention, head_dim_of, llama_like_args
from intarsia.backbones.rotary import RotaryEmbedding
from intarsia.engine.registry import register


class PerHeadLayerNorm(nn.Module):
    """Bias-free LayerNorm of each head's features, with its own weight per head."""

    def __init__(self, num_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [tokens, heads * head_dim] -> same shape."""
        heads = x.reshape(x.shape[0], *self.weight.shape).float()
        normed = F.layer_norm(heads, heads.shape[-1:], eps=self.eps) * self.weight.float()
        return normed.flatten(1).to(x.dtype)


class CohereAttention(SelfAttention):
    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__(args, layer_idx)
        self.use_qk_norm = args.extra["use_qk_norm"]
        if self.use_qk_norm:
            self.q_norm = PerHeadLayerNorm(args.num_heads, args.head_dim, args.norm_eps)
            self.k_norm = PerHeadLayerNorm(args.num_kv_heads, args.head_dim, args.norm_eps)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = super().project_qkv(x)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v


class CohereDecoderLayer(ParallelDecoderLayer):
    attn_cls = CohereAttention


def cohere_args(config, max_positions: int) -> DecoderArgs:
    rope = RotaryEmbedding.from_config(config, head_dim_of(config), max_positions, is_neox=False)
    return llama_like_args(config, max_positions, norm="layer", norm_bias=False, rope=rope,
                           logit_scale=config.logit_scale,
                           tie_word_embeddings=getattr(config, "tie_word_embeddings", True),
                           extra={"use_qk_norm": bool(getattr(config, "use_qk_norm", False))})


@register("CohereForCausalLM")
class CohereForCausalLM(CausalLM):
    adapt = staticmethod(cohere_args)
    layer_cls = CohereDecoderLayer
