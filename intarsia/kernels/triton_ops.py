"""Triton element-wise kernels: RMSNorm (plain and fused with the residual add),
rotary embedding and the gated activations. Same signatures as
`intarsia.kernels.reference`; arithmetic is float32, results in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _rows(x: torch.Tensor) -> torch.Tensor:
    """2-D view [rows, last_dim] with unit stride on the last dim (copies only if needed)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _row_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


@triton.jit
def tanh(x):
    """tanh through exp, saturating cleanly for large |x| (no libdevice needed)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


# ----------------------------------------------------------------------------- RMSNorm


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr,
    stride_x, stride_r, stride_o, stride_s,
    n_cols, eps, offset,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        # Round the sum to the output dtype first, as the torch reference does.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_s + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, 0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    tl.store(out_ptr + row * stride_o + cols, (xf * inv_rms * w).to(out_ptr.dtype.element_ty),
             mask=mask)


def _launch_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                     eps: float, offset: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    x2 = _rows(x)
    hidden = x2.shape[1]
    if residual is None:
        r2 = summed = None
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        r2 = _rows(residual)
        summed = torch.empty(x.shape, dtype=torch.result_type(x, residual), device=x.device)
        out = torch.empty_like(summed)
    o2, s2 = out.view(-1, hidden), (summed if summed is not None else out).view(-1, hidden)
    block = triton.next_power_of_2(hidden)
    if x2.shape[0] > 0:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2 if r2 is not None else x2, weight.contiguous(), o2, s2,
            x2.stride(0), (r2 if r2 is not None else x2).stride(0), o2.stride(0), s2.stride(0),
            hidden, eps, offset,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=_row_warps(block),
        )
    return out, summed


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> torch.Tensor:
    """RMSNorm computed in float32; `offset=1.0` gives Gemma's ``(1 + w)`` scale."""
    return _launch_rms_norm(x, None, weight, eps, offset)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual), x + residual)`` in one pass over memory."""
    out, summed = _launch_rms_norm(x, residual, weight, eps, offset)
    assert summed is not None
    return out, summed


# ----------------------------------------------------------------------------- rotary


@triton.jit
def _cos_sin(pos_ptr, cache_ptr, token, stride_cache, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """The cos and sin halves [1, BLOCK_HALF] of `token`'s row of the cos|sin table."""
    row = cache_ptr + tl.load(pos_ptr + token).to(tl.int64) * stride_cache
    j = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(row + j, mask=j < HALF, other=0.0).to(tl.float32)
    sin = tl.load(row + HALF + j, mask=j < HALF, other=0.0).to(tl.float32)
    return cos, sin


@triton.jit
def _rotate_heads(src, dst, src_stride_h, src_stride_d, dst_stride_h, dst_stride_d, num_heads,
                  cos, sin, IS_NEOX: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_HALF: tl.constexpr):
    """The rotated pairs of one token's `num_heads` heads, read at `src` and stored at
    `dst` (the same place to rotate in place)."""
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < num_heads) & (j < HALF)
    if IS_NEOX:  # halves: (j, j + HALF)
        first, second = j, j + HALF
    else:  # GPT-J interleaved pairs: (2j, 2j + 1)
        first, second = 2 * j, 2 * j + 1
    x1 = tl.load(src + h * src_stride_h + first * src_stride_d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + h * src_stride_h + second * src_stride_d, mask=mask, other=0.0).to(tl.float32)
    out = dst + h * dst_stride_h
    tl.store(out + first * dst_stride_d, (x1 * cos - x2 * sin).to(dst.dtype.element_ty), mask=mask)
    tl.store(out + second * dst_stride_d, (x2 * cos + x1 * sin).to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    pos_ptr, q_ptr, k_ptr, cache_ptr,
    stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd, stride_cache,
    num_q_heads, num_k_heads,
    IS_NEOX: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(pos_ptr, cache_ptr, token, stride_cache, HALF, BLOCK_HALF)
    q = q_ptr + token * stride_qt
    _rotate_heads(q, q, stride_qh, stride_qd, stride_qh, stride_qd, num_q_heads, cos, sin,
                  IS_NEOX, HALF, BLOCK_HQ, BLOCK_HALF)
    k = k_ptr + token * stride_kt
    _rotate_heads(k, k, stride_kh, stride_kd, stride_kh, stride_kd, num_k_heads, cos, sin,
                  IS_NEOX, HALF, BLOCK_HK, BLOCK_HALF)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first ``rotary_dim`` features of q/k ([tokens, heads, head_dim]) in place.

    Strided views (q/k slices of a fused qkv output) are rotated where they lie.
    `cos_sin_cache` is [max_positions, rotary_dim]: cos in the first half, sin in
    the second (scaled rotary variants differ only in how that cache was built).
    """
    num_tokens = q.shape[0]
    half = cos_sin_cache.shape[-1] // 2
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    if num_tokens > 0:
        _rotary_kernel[(num_tokens,)](
            positions.contiguous(), q, k, cache,
            *q.stride(), *k.stride(), cache.stride(0),
            q.shape[1], k.shape[1],
            IS_NEOX=is_neox, HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
            BLOCK_HQ=triton.next_power_of_2(q.shape[1]),
            BLOCK_HK=triton.next_power_of_2(k.shape[1]),
        )
    return q, k


@triton.jit
def _rotary_write_kv_kernel(
    pos_ptr, q_ptr, k_ptr, v_ptr, cache_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd, stride_cache,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    num_q_heads,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    IS_NEOX: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(pos_ptr, cache_ptr, token, stride_cache, HALF, BLOCK_HALF)
    q = q_ptr + token * stride_qt
    _rotate_heads(q, q, stride_qh, stride_qd, stride_qh, stride_qd, num_q_heads, cos, sin,
                  IS_NEOX, HALF, BLOCK_HQ, BLOCK_HALF)
    slot = tl.load(slot_ptr + token)
    if slot >= 0:
        page, offset = slot // PAGE, slot % PAGE
        key = k_ptr + token * stride_kt
        k_dst = k_cache_ptr + page * stride_kcb + offset * stride_kcs
        _rotate_heads(key, k_dst, stride_kh, stride_kd, stride_kch, stride_kcd, NUM_KV_HEADS, cos, sin,
                      IS_NEOX, HALF, BLOCK_HK, BLOCK_HALF)
        # The key features past the rotated ones (partial rotary) and the values, as they are.
        h = tl.arange(0, BLOCK_HK)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        mask = (h < NUM_KV_HEADS) & (d < HEAD_DIM)
        tail = mask & (d >= 2 * HALF)
        k_tail = tl.load(key + h * stride_kh + d * stride_kd, mask=tail)
        tl.store(k_dst + h * stride_kch + d * stride_kcd, k_tail.to(k_cache_ptr.dtype.element_ty), mask=tail)
        v = tl.load(v_ptr + token * stride_vt + h * stride_vh + d * stride_vd, mask=mask)
        v_dst = v_cache_ptr + page * stride_vcb + offset * stride_vcs
        tl.store(v_dst + h * stride_vch + d * stride_vcd, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


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
    """`rotary_embedding` then `write_kv_cache` in one kernel: q rotated in place (and
    returned); the rotated keys and the values go to their cache slots, k is left as it is."""
    num_tokens, num_kv_heads, head_dim = k.shape
    half = cos_sin_cache.shape[-1] // 2
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    if num_tokens > 0:
        _rotary_write_kv_kernel[(num_tokens,)](
            positions.contiguous(), q, k, v, cache, k_cache, v_cache, slot_mapping,
            *q.stride(), *k.stride(), *v.stride(), cache.stride(0),
            *k_cache.stride(), *v_cache.stride(), q.shape[1],
            NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, PAGE=k_cache.shape[1],
            IS_NEOX=is_neox, HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
            BLOCK_HQ=triton.next_power_of_2(q.shape[1]), BLOCK_HK=triton.next_power_of_2(num_kv_heads),
            BLOCK_D=triton.next_power_of_2(head_dim),
        )
    return q


# ----------------------------------------------------------------------------- activations


@triton.jit
def _activation_kernel(
    x_ptr, out_ptr, stride_x, stride_o, d,
    ACT: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr,
):
    """act(x[:, :d]), times x[:, d:2d] when GATED."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if ACT == "silu":
        act = gate * tl.sigmoid(gate)
    elif ACT == "quick_gelu":
        act = gate * tl.sigmoid(1.702 * gate)
    elif ACT == "gelu":
        act = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    else:  # "gelu_tanh"
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        act = 0.5 * gate * (1.0 + tanh(inner))
    if GATED:
        act *= tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, act.to(out_ptr.dtype.element_ty), mask=mask)


def _activation(x: torch.Tensor, act: str, gated: bool) -> torch.Tensor:
    x2 = _rows(x)
    d = x2.shape[1] // 2 if gated else x2.shape[1]
    out = torch.empty(*x.shape[:-1], d, dtype=x.dtype, device=x.device)
    block = min(triton.next_power_of_2(d), 1024)
    if x2.shape[0] > 0 and d > 0:
        o2 = out.view(-1, d)
        _activation_kernel[(x2.shape[0], triton.cdiv(d, block))](
            x2, o2, x2.stride(0), o2.stride(0), d, ACT=act, GATED=gated, BLOCK=block,
            num_warps=_row_warps(block),
        )
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for a fused gate/up projection of width 2d."""
    return _activation(x, "silu", gated=True)


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(x[..., :d]) * x[..., d:]``; `approximate` is "none" or "tanh"."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _activation(x, "gelu" if approximate == "none" else "gelu_tanh", gated=True)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)`` (CLIP's and Qwen2-VL's vision MLPs)."""
    return _activation(x, "quick_gelu", gated=False)
