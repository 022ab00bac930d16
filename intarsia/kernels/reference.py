"""Plain torch implementations of every kernel: the CPU path and the test oracle.

Each function here has a Triton twin with the same signature; `intarsia.kernels`
picks one by device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from intarsia.kernels.metadata import AttentionMetadata


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b`` (`F.linear`); on CUDA a single row takes the Triton GEMV."""
    return F.linear(x, weight, bias)


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store `key`/`value` ([tokens, kv_heads, head_dim]) at their cache slots."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[keep]
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[keep]


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    kv_len: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    prefix_len: int = 0,
) -> torch.Tensor:
    """Masked attention for `n` sequences padded to common lengths.

    q: [n, ql, H, D]; k, v: [n, L, Hkv, D]; q_pos: [n, ql] absolute positions;
    kv_len: [n] valid keys; positions below `prefix_len` see each other both ways.
    Returns [n, ql, H, D].
    """
    n, ql, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    kv_pos = torch.arange(k.shape[1], device=q.device)
    rel = kv_pos[None, None, :] - q_pos[:, :, None]  # [n, ql, L]: key minus query position
    allowed = (rel <= 0) & (kv_pos[None, None, :] < kv_len[:, None, None])
    if sliding_window is not None:
        allowed &= rel > -sliding_window
    if prefix_len:
        allowed |= (kv_pos[None, None, :] < prefix_len) & (q_pos[:, :, None] < prefix_len)
    if softcap is None and alibi_slopes is None:
        # Plain masked softmax: torch's fused kernel, several times faster on the CPU.
        qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=allowed[:, None], scale=scale,
                                             enable_gqa=group > 1)
        return out.transpose(1, 2).to(q.dtype)
    qg = q.float().view(n, ql, num_kv_heads, group, head_dim)
    scores = torch.einsum("nqhgd,nlhd->nhgql", qg, k.float()) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        slopes = alibi_slopes.float().view(1, num_kv_heads, group, 1, 1)
        scores = scores + slopes * rel[:, None, None].float()
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("nhgql,nlhd->nqhgd", probs, v.float())
    return out.reshape(n, ql, num_heads, head_dim).to(q.dtype)


def _gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """Contiguous [n, length, Hkv, D] copy of the cached tokens of `n` sequences."""
    block_size = cache.shape[1]
    blocks = block_table[:, : math.ceil(length / block_size)].long()
    slots = (blocks[:, :, None] * block_size + torch.arange(block_size, device=cache.device)).flatten(1)
    slots = slots[:, :length]
    # index_select over flat slots is several times faster than advanced indexing on the CPU.
    flat = cache.view(-1, *cache.shape[2:]).index_select(0, slots.flatten())
    return flat.view(blocks.shape[0], length, *cache.shape[2:])


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of the new query rows over each sequence's paged context.

    q: [num_tokens, num_heads, head_dim] -> same shape. Handles decode rows and
    prefill chunks over a cached prefix in one call. With `meta.prefix_lens`, the
    tokens of each sequence's prefix attend to each other bidirectionally (one-token
    queries are never inside a prefix they do not end, so decode rows stay causal).
    """
    out = torch.empty_like(q)
    starts, seq_lens = meta.query_start_loc_cpu, meta.seq_lens_cpu
    options = (scale, sliding_window, softcap, alibi_slopes)
    decodes = [i for i in range(meta.num_seqs) if starts[i + 1] - starts[i] == 1]
    if decodes:  # all one-token queries in one padded batch
        idx = torch.tensor(decodes, device=q.device)
        rows = torch.tensor([starts[i] for i in decodes], device=q.device)
        lens = meta.seq_lens[idx].long()
        length = max(seq_lens[i] for i in decodes)
        k = _gather_kv(k_cache, meta.block_tables[idx], length)
        v = _gather_kv(v_cache, meta.block_tables[idx], length)
        out[rows] = _attend(q[rows, None], k, v, (lens - 1)[:, None], lens, *options)[:, 0]
    for i in range(meta.num_seqs):
        start, end = starts[i], starts[i + 1]
        if end - start <= 1:
            continue
        length = seq_lens[i]
        table = meta.block_tables[i : i + 1]
        q_pos = torch.arange(length - (end - start), length, device=q.device)[None]
        kv_len = torch.tensor([length], device=q.device)
        k, v = _gather_kv(k_cache, table, length), _gather_kv(v_cache, table, length)
        prefix_len = min(meta.prefix_lens_cpu[i], length) if meta.prefix_lens_cpu is not None else 0
        out[start:end] = _attend(q[None, start:end], k, v, q_pos, kv_len, *options, prefix_len)[0]
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm computed in float32; `offset=1.0` gives Gemma's ``(1 + w)`` scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * (weight.float() + offset)).to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual), x + residual)``."""
    summed = x + residual
    return rms_norm(summed, weight, eps, offset), summed


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    if is_neox:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first ``rotary_dim`` features of q/k ([tokens, heads, head_dim]).

    `cos_sin_cache` is [max_positions, rotary_dim]: cos in the first half, sin in
    the second. `is_neox` rotates halves; otherwise (GPT-J) interleaved pairs.
    """
    rotary_dim = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache[positions].float()[:, None].chunk(2, dim=-1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        rotated = _rotate(x[..., :rotary_dim].float(), cos, sin, is_neox).to(x.dtype)
        return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)

    return apply(q), apply(k)


def rotary_and_write_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """`rotary_embedding`, then the rotated keys and the values to their cache slots
    (`write_kv_cache`); returns the rotated q."""
    q, k = rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
    write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    return q


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for a fused gate/up projection of width 2d."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(x[..., :d]) * x[..., d:]``; `approximate` is "none" or "tanh"."""
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate=approximate) * up


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)`` (CLIP's and Qwen2-VL's vision MLPs)."""
    return x * torch.sigmoid(1.702 * x)
