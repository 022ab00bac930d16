"""Blocks of the GPT-lineage families (GPT-2, OPT, Bloom, Falcon, GPT-NeoX, MPT, ...):
ALiBi slopes, learned absolute positions, a LayerNorm over the embeddings, the parallel
layer whose MLP has its own norm, the post-norm layer, and the fused q/k/v layouts of
their checkpoints."""

from __future__ import annotations

import math

import torch
from torch import nn

from intarsia.backbones.blocks import ParallelDecoderLayer
from intarsia.backbones.context import ForwardContext
from intarsia.backbones.decoder import DecoderArgs, DecoderLayer, DecoderModel, make_norm, norm_residual


def alibi_slopes(num_heads: int, max_bias: float = 8.0) -> torch.Tensor:
    """ALiBi's per-head slopes: ``2^(-max_bias * i / n)`` for the largest power of two
    ``n <= num_heads``, then the odd terms of the ``2n`` series for the remaining heads
    (Bloom's and MPT's formulas give the same list)."""
    closest = 2 ** math.floor(math.log2(num_heads))

    def series(n: int) -> list[float]:
        return [2.0 ** (-max_bias * i / n) for i in range(1, n + 1)]

    slopes = series(closest) + series(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def ungroup_qkv(args: DecoderArgs, fused: torch.Tensor) -> torch.Tensor:
    """A fused q/k/v checkpoint tensor whose rows are grouped per KV head -- each group
    holds its queries, then its key, then its value: ``[kv_heads, q_per_kv + 2, head_dim]``
    -- reordered to ``[all q | all k | all v]``. One query per group is the per-head
    interleaving of Bloom, GPT-NeoX and Persimmon; one group is multi-query's plain layout."""
    rest = fused.shape[1:]
    groups = fused.reshape(args.num_kv_heads, -1, args.head_dim, *rest)
    q, k, v = groups[:, :-2], groups[:, -2], groups[:, -1]
    return torch.cat([t.reshape(-1, *rest) for t in (q, k, v)])


def transpose(args: DecoderArgs, weight: torch.Tensor) -> torch.Tensor:
    """GPT-2's Conv1D stores ``[in, out]``; a Linear wants ``[out, in]``."""
    return weight.t()


class TwoNormParallelDecoderLayer(ParallelDecoderLayer):
    """``h + attn(norm1(h)) + mlp(norm2(h))``: parallel attention and MLP, each behind its
    own norm (GPT-NeoX, Falcon's new decoder architecture)."""

    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__(args, layer_idx)
        self.post_attention_layernorm = make_norm(args)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        normed, residual = norm_residual(self.input_layernorm, x, residual)
        mlp_out = self.mlp(self.post_attention_layernorm(residual))
        return self.self_attn(positions, normed, ctx) + mlp_out, residual


class PostNormDecoderLayer(DecoderLayer):
    """``h = norm1(x + attn(x)); out = norm2(h + mlp(h))`` (OPT-350m): the output is
    already normed, so no residual is carried to the next layer."""

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                ctx: ForwardContext) -> tuple[torch.Tensor, None]:
        if residual is not None:
            x = x + residual
        h, _ = self.input_layernorm(self.self_attn(positions, x, ctx), x)
        out, _ = self.post_attention_layernorm(self.mlp(h), h)
        return out, None


class LearnedPositionsModel(DecoderModel):
    """A decoder whose inputs are token plus learned absolute position embeddings (GPT-2,
    GPTBigCode, OPT); the table has `args.extra["learned_positions"]` rows and position p
    reads row ``p + position_offset``."""

    position_offset = 0

    def __init__(self, args: DecoderArgs, layer_cls: type[nn.Module] = DecoderLayer) -> None:
        super().__init__(args, layer_cls)
        rows = args.extra["learned_positions"] + self.position_offset
        self.embed_positions = nn.Embedding(rows, args.hidden_size)
        self.embed_positions.weight.requires_grad_(False)

    def add_positions(self, positions: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return inputs_embeds + self.embed_positions(positions + self.position_offset)

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        return super().forward(positions, self.add_positions(positions, inputs_embeds), ctx)


class EmbeddingNormModel(DecoderModel):
    """A decoder that normalises the token embeddings before the first layer (Bloom)."""

    def __init__(self, args: DecoderArgs, layer_cls: type[nn.Module] = DecoderLayer) -> None:
        super().__init__(args, layer_cls)
        self.embed_norm = make_norm(args)

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        return super().forward(positions, self.embed_norm(inputs_embeds), ctx)


def learned_positions(config_positions: int, max_positions: int) -> dict:
    """`DecoderArgs.extra` for a learned position table of `config_positions` rows,
    rejecting a `max_model_len` the table cannot cover."""
    if max_positions > config_positions:
        raise ValueError(f"max_model_len={max_positions} exceeds the model's {config_positions} "
                         "learned positions; lower max_model_len")
    return {"learned_positions": config_positions}
