"""Mixture-of-experts kernels.

1. The torch reference `moe_reference.fused_experts` against a float64 per-token
   oracle, in this process.
2. The Triton grouped GEMM (`triton_moe`) against the reference on the CPU under
   the Triton interpreter, in a fresh subprocess per group (`TRITON_INTERPRET=1`
   only takes effect before triton is imported; see tests/test_kernels.py).

Inputs are random every run; the seed is printed and `INTARSIA_TEST_SEED` replays it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_kernels import assert_close, seed_everything

from intarsia.kernels import moe_reference as ref

REPO = Path(__file__).resolve().parents[1]


def make_experts(num_tokens: int, num_experts: int, top_k: int, hidden: int, inter: int,
                 dtype: torch.dtype = torch.float32, skip_expert: int | None = None):
    """Random hidden states, expert weights and a softmax top-k routing (optionally
    never choosing `skip_expert`, so one expert gets no tokens)."""
    x = torch.randn(num_tokens, hidden).to(dtype)
    w_gate_up = (torch.randn(num_experts, 2 * inter, hidden) / hidden**0.5).to(dtype)
    w_down = (torch.randn(num_experts, hidden, inter) / inter**0.5).to(dtype)
    logits = torch.randn(num_tokens, num_experts)
    if skip_expert is not None:
        logits[:, skip_expert] = float("-inf")
    weights, ids = logits.softmax(-1).topk(top_k, dim=-1)
    return x, w_gate_up, w_down, weights, ids


def per_token_oracle(x, w_gate_up, w_down, weights, ids, activation="silu") -> torch.Tensor:
    """Float64, one token and one chosen expert at a time."""
    act = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[activation]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for slot in range(ids.shape[1]):
            e = int(ids[t, slot])
            gate, up = (w_gate_up[e].double() @ x[t].double()).chunk(2)
            out[t] += float(weights[t, slot]) * (w_down[e].double() @ (act(gate) * up))
    return out.to(x.dtype)


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_reference_matches_per_token_oracle(activation):
    seed_everything()
    for shape in [(1, 4, 1, 16, 8), (13, 8, 2, 32, 24), (20, 6, 3, 24, 40)]:
        inputs = make_experts(*shape, dtype=torch.float64, skip_expert=0)
        assert_close(ref.fused_experts(*inputs, activation), per_token_oracle(*inputs, activation),
                     f"reference experts {shape} {activation}")


def test_dispatch_on_cpu_is_the_reference():
    import intarsia.kernels as kernels

    seed_everything()
    inputs = make_experts(5, 4, 2, 16, 8)
    assert torch.equal(kernels.fused_experts(*inputs), ref.fused_experts(*inputs))


def test_reference_rejects_mismatched_weights():
    x, w_gate_up, w_down, weights, ids = make_experts(3, 4, 2, 16, 8)
    with pytest.raises(ValueError, match="do not fit"):
        ref.fused_experts(x, w_gate_up, w_down[:, :, :4], weights, ids)
    with pytest.raises(ValueError, match="unsupported expert activation"):
        ref.fused_experts(x, w_gate_up, w_down, weights, ids, "tanh")


# ----------------------------------------------------------------------------- Triton groups
# Run in a subprocess under the interpreter (see the module docstring).


def check_alignment() -> None:
    from intarsia.kernels import triton_moe as tm

    for num_tokens, num_experts, top_k, block_m in [(1, 4, 2, 4), (37, 8, 2, 16), (50, 5, 3, 8)]:
        _, _, _, _, ids = make_experts(num_tokens, num_experts, top_k, 4, 4, skip_expert=1)
        sorted_pairs, block_expert, num_padded = tm.align_by_expert(ids, num_experts, block_m)
        num_pairs = ids.numel()
        used = int(num_padded)
        assert used % block_m == 0 and used <= sorted_pairs.numel()
        assert sorted(p for p in sorted_pairs[:used].tolist() if p < num_pairs) == list(range(num_pairs))
        assert (sorted_pairs[used:] == num_pairs).all()
        flat = ids.flatten()
        for block in range(used // block_m):
            rows = sorted_pairs[block * block_m:(block + 1) * block_m]
            real = rows[rows < num_pairs].long()
            assert real.numel() > 0, "a tile of padding only"
            assert (flat[real] == block_expert[block]).all(), "a tile mixes experts"


def group_grouped_gemm() -> None:
    from intarsia.kernels import triton_moe as tm

    check_alignment()
    small_tiles = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4,
                   "num_stages": 1}
    cases = [  # (tokens, experts, top_k, hidden, inter): a decode row, uneven loads, k=3
        (1, 4, 2, 32, 48), (19, 8, 2, 64, 40), (40, 6, 3, 48, 24)]
    # No bfloat16: the interpreter's tl.dot mishandles it (a plain 16x16 bf16 dot is off by 1e10).
    for dtype in (torch.float32, torch.float16):
        for shape in cases:
            inputs = make_experts(*shape, dtype=dtype, skip_expert=2)
            want = ref.fused_experts(*inputs)
            what = f"triton experts {shape} {dtype}"
            assert_close(tm.fused_experts(*inputs, config=small_tiles), want, what)
        assert_close(tm.fused_experts(*inputs), want, f"{what} default tiles")
    for activation in ("gelu", "gelu_tanh"):
        inputs = make_experts(9, 4, 2, 32, 32)
        assert_close(tm.fused_experts(*inputs, activation, config=small_tiles),
                     ref.fused_experts(*inputs, activation), f"triton experts {activation}")
    # Hidden states as a strided view; no tokens at all.
    x, w_gate_up, w_down, weights, ids = make_experts(7, 4, 2, 32, 16)
    wide = torch.randn(7, 64)
    wide[:, ::2] = x
    assert_close(tm.fused_experts(wide[:, ::2], w_gate_up, w_down, weights, ids, config=small_tiles),
                 ref.fused_experts(x, w_gate_up, w_down, weights, ids), "strided hidden states")
    empty = tm.fused_experts(x[:0], w_gate_up, w_down, weights[:0], ids[:0])
    assert empty.shape == (0, 32)


GROUPS: dict[str, Callable[[], None]] = {"grouped_gemm": group_grouped_gemm}


@pytest.mark.parametrize("group", list(GROUPS))
def test_triton_interpreted(group):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"),
                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, group], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"group {group} failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    seed_everything()
    GROUPS[sys.argv[1]]()
    print(f"{sys.argv[1]}: ok")
