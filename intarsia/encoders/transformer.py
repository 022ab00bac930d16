"""The pre-norm bidirectional transformer layer every encoder tower is built from
(CLIP, SigLIP, Qwen2-VL's ViT, Whisper): no KV cache, torch SDPA attention over
packed variable-length sequences, optional per-token (2-D) rotary embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from intarsia.backbones.layers import LayerNorm, Linear, PlainMLP, fused_linear
from intarsia.kernels import rotary_embedding

# Not cuDNN: it plans each new shape (batch = images in the step) for up to a second.
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# Per-token 2-D rotary of a vision tower: (token index [tokens], cos|sin table [tokens, head_dim]).
Rotary = tuple[torch.Tensor, torch.Tensor]


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int],
                     scale: float) -> torch.Tensor:
    """Bidirectional attention within each of the packed sequences.

    q, k, v: [tokens, heads, head_dim] with `sum(lengths)` tokens; sequences of equal
    length (the common case: same-size images, video frames) run as one batch.
    """
    if len(set(lengths)) == 1:
        n, (_, heads, head_dim) = len(lengths), q.shape
        q, k, v = (t.view(n, lengths[0], heads, head_dim).transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel(_SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return out.transpose(1, 2).reshape(-1, heads, head_dim)
    outs = [packed_attention(qs, ks, vs, [len(qs)], scale)
            for qs, ks, vs in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True)]
    return torch.cat(outs)


class EncoderAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv_proj = fused_linear(dim, {"q": dim, "k": dim, "v": dim}, bias)
        self.out_proj = Linear(dim, dim, bias)

    def forward(self, x: torch.Tensor, lengths: list[int], rotary: Rotary | None = None) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).view(x.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        if rotary is not None:  # neox-style halves, in float32 (the shared rotary kernel)
            q, k = rotary_embedding(rotary[0], q, k, rotary[1], is_neox=True)
        out = packed_attention(q, k, v, lengths, self.scale)
        return self.out_proj(out.reshape(x.shape[0], -1))


class EncoderLayer(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` over packed tokens [tokens, dim]."""

    def __init__(self, dim: int, num_heads: int, intermediate: int, act: str, eps: float) -> None:
        super().__init__()
        self.layer_norm1 = LayerNorm(dim, eps)
        self.self_attn = EncoderAttention(dim, num_heads)
        self.layer_norm2 = LayerNorm(dim, eps)
        self.mlp = PlainMLP(dim, intermediate, act, bias=True)

    def forward(self, x: torch.Tensor, lengths: list[int], rotary: Rotary | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), lengths, rotary)
        return x + self.mlp(self.layer_norm2(x))


# Checkpoint names of the encoder layer's parts in the towers' native layouts.
ENCODER_LAYER_RENAMES = (
    (r"\.mlp\.fc1\.", ".mlp.up_proj."),
    (r"\.mlp\.fc2\.", ".mlp.down_proj."),
)
