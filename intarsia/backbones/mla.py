"""Multi-head latent attention (DeepSeek-V2, MiniCPM3).

Keys and values come from one low-rank latent per token: ``kv_a_proj_with_mqa``
gives the latent (``kv_lora_rank``) plus a rotary key part shared by all heads
(``qk_rope_head_dim``); ``kv_b_proj`` expands the normed latent to each head's
non-rotary key (``qk_nope_head_dim``) and value (``v_head_dim``). Queries may be
low-rank too (``q_lora_rank``).

Cache layout: the paged cache stores the expanded per-head keys (nope + rope)
and values, both zero-padded to ``max(qk_head_dim, v_head_dim)``, as ordinary
multi-head attention with ``num_kv_heads = num_heads``. The zero padding leaves
q·k and the value rows unchanged, so the shared paged-attention kernels (Triton
and torch) serve MLA with no geometry of their own. Caching the latent instead
would hold ``kv_lora_rank + qk_rope_head_dim`` numbers per token rather than
``2 * heads * head_dim`` (about 40x less for DeepSeek-V2) but needs an attention
kernel for a 576-wide single-head MQA (absorbed weights); that is future work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from intarsia.backbones.context import ForwardContext
from intarsia.backbones.decoder import DecoderArgs, DecoderLayer, llama_like_args
from intarsia.backbones.layers import Linear, PagedAttention, RMSNorm
from intarsia.backbones.rotary import RotaryEmbedding

# transformers' MLA keeps the default epsilon for the two latent norms.
_LATENT_NORM_EPS = 1e-6


@dataclass(frozen=True)
class MLAArgs:
    q_lora_rank: int | None  # None: a full-rank q_proj
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def cache_head_dim(self) -> int:
        return max(self.qk_head_dim, self.v_head_dim)


class LatentAttention(nn.Module):
    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__()
        self.mla = mla = args.extra["mla"]
        heads, hidden = args.num_heads, args.hidden_size
        self.num_heads = heads
        if mla.q_lora_rank is None:
            self.q_proj = Linear(hidden, heads * mla.qk_head_dim)
        else:
            self.q_a_proj = Linear(hidden, mla.q_lora_rank, args.qkv_bias)
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, _LATENT_NORM_EPS)
            self.q_b_proj = Linear(mla.q_lora_rank, heads * mla.qk_head_dim)
        self.kv_a_proj_with_mqa = Linear(hidden, mla.kv_lora_rank + mla.qk_rope_head_dim, args.qkv_bias)
        self.kv_a_layernorm = RMSNorm(mla.kv_lora_rank, _LATENT_NORM_EPS)
        self.kv_b_proj = Linear(mla.kv_lora_rank, heads * (mla.qk_nope_head_dim + mla.v_head_dim))
        self.o_proj = Linear(heads * mla.v_head_dim, hidden, args.o_bias)
        self.rope = args.rope
        self.attn = PagedAttention(layer_idx, heads, heads, mla.cache_head_dim, args.attn_scale,
                                   args.layer_window(layer_idx))

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        if self.mla.q_lora_rank is None:
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        mla, heads, tokens = self.mla, self.num_heads, x.shape[0]
        nope, rope = mla.qk_nope_head_dim, mla.qk_rope_head_dim
        q = self.project_q(x).view(tokens, heads, mla.qk_head_dim)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([mla.kv_lora_rank, rope], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent)).view(tokens, heads, nope + mla.v_head_dim)
        k_nope, v = kv.split([nope, mla.v_head_dim], dim=-1)
        q_rope, k_rope = self.rope(positions, q[..., nope:].reshape(tokens, heads * rope), k_rope)
        q = torch.cat((q[..., :nope], q_rope.view(tokens, heads, rope)), dim=-1)
        k = torch.cat((k_nope, k_rope.view(tokens, 1, rope).expand(tokens, heads, rope)), dim=-1)
        width = mla.cache_head_dim
        q, k, v = (F.pad(t, (0, width - t.shape[-1])) if t.shape[-1] < width else t for t in (q, k, v))
        out = self.attn(q, k, v, ctx).view(tokens, heads, width)[..., :mla.v_head_dim]
        return self.o_proj(out.reshape(tokens, heads * mla.v_head_dim))


class LatentAttentionDecoderLayer(DecoderLayer):
    attn_cls = LatentAttention


def yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def mla_args(config, max_positions: int, is_neox: bool, **overrides) -> DecoderArgs:
    """DecoderArgs of an MLA decoder from the config fields DeepSeek-V2 and MiniCPM3 share."""
    mla = MLAArgs(q_lora_rank=config.q_lora_rank, kv_lora_rank=config.kv_lora_rank,
                  qk_nope_head_dim=config.qk_nope_head_dim, qk_rope_head_dim=config.qk_rope_head_dim,
                  v_head_dim=config.v_head_dim)
    scale = mla.qk_head_dim**-0.5
    params = config.rope_parameters or {}
    if params.get("rope_type", "default") != "default" and params.get("mscale_all_dim"):
        # yarn's length-dependent temperature, applied to the softmax as transformers does.
        scale *= yarn_mscale(params["factor"], params["mscale_all_dim"]) ** 2
    rope = RotaryEmbedding.from_config(config, mla.qk_rope_head_dim, max_positions, is_neox=is_neox)
    values = dict(num_kv_heads=config.num_attention_heads, head_dim=mla.cache_head_dim, rope=rope,
                  attn_scale=scale, extra={"mla": mla})
    return llama_like_args(config, max_positions, **{**values, **overrides})
