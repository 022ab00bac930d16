"""Mixture-of-experts offline throughput: intarsia vs transformers on Mixtral-shaped
random bf16 weights (hidden 4096, intermediate 14336, 8 experts top-2, 32 heads /
8 KV heads, vocab 32000) at reduced depth, the same weights in both, same run.

    PYTHONPATH=. python3 benchmarks/moe.py                      # one H100/H200
    PYTHONPATH=. python3 benchmarks/moe.py --sweep              # + grouped-GEMM tile sweep
    PYTHONPATH=. python3 benchmarks/moe.py --device cpu --tiny  # the same logic, tiny, on the CPU

Prints a greedy-agreement check (intarsia vs transformers on a few prompts), the
throughput table (output tokens/s, ratio to transformers' static batching) and,
with --sweep, the time of one MoE layer's experts under several Triton tile
configurations per batch size (to tune `triton_moe.default_config`).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from common import (
    build_pair,
    describe,
    fixed_workload,
    print_table,
    run_hf_static,
    run_intarsia,
    sync,
)
from transformers import MixtralConfig

from intarsia import SamplingParams

MIXTRAL = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
               max_position_embeddings=4096, rope_theta=1e6)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=512)

SWEEP_CONFIGS = [
    {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
]


def greedy_agreement(hf, llm, vocab: int, device: torch.device, prompts: int = 4, new: int = 16) -> str:
    """How many greedy continuations match transformers' exactly, and for how many tokens
    on average (half precision makes late divergence normal; early divergence is a bug)."""
    gen = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, vocab, (24,), generator=gen).tolist() for _ in range(prompts)]
    ours = llm.generate([{"prompt_token_ids": p} for p in ids],
                        SamplingParams(temperature=0, max_tokens=new, ignore_eos=True), use_tqdm=False)
    same, prefix = 0, 0
    for p, out in zip(ids, ours, strict=True):
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([p], device=device), max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        mine = out.outputs[0].token_ids
        same += mine == theirs
        prefix += next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b), new)
    return f"{same}/{prompts} identical over {new} tokens, mean common prefix {prefix / prompts:.1f}"


def first_moe(llm):
    return next(m for m in llm.engine.runner.model.modules() if type(m).__name__ == "SparseMoE")


def routed_inputs(moe, tokens: int, device: torch.device, dtype: torch.dtype):
    """Random hidden states for `moe` and a softmax top-k routing of them."""
    x = torch.randn(tokens, moe.experts.gate_up_proj.weight.shape[-1], device=device, dtype=dtype)
    logits = torch.randn(tokens, moe.moe.num_experts, device=device)
    weights, ids = logits.softmax(-1).topk(moe.moe.top_k, dim=-1)
    return x, moe.experts.gate_up_proj.weight, moe.experts.down_proj.weight, weights, ids


def kernel_check(llm, device: torch.device, dtype: torch.dtype) -> str:
    """The Triton grouped GEMM against the torch reference on this GPU, in the model dtype
    (the CPU tests cannot check bfloat16): max |difference| / max |reference|."""
    from intarsia.kernels import moe_reference, triton_moe

    errors = []
    for tokens in (1, 64, 1024):
        inputs = routed_inputs(first_moe(llm), tokens, device, dtype)
        want = moe_reference.fused_experts(*inputs).float()
        got = triton_moe.fused_experts(*inputs).float()
        errors.append(f"{tokens} tokens {((got - want).abs().max() / want.abs().max()).item():.1e}")
    return ", ".join(errors)


def sweep(llm, device: torch.device, dtype: torch.dtype,
          token_counts: tuple[int, ...] = (1, 16, 64, 256, 1024, 4096), reps: int = 20) -> None:
    """One MoE layer's expert computation (the model's own weights and routing shape)
    per token count and tile configuration, in microseconds."""
    from intarsia.kernels import moe_reference, triton_moe

    moe = first_moe(llm)
    w_gate_up, w_down = moe.experts.gate_up_proj.weight, moe.experts.down_proj.weight
    num_experts, top_k = moe.moe.num_experts, moe.moe.top_k
    hidden = w_gate_up.shape[-1]
    print(f"\ngrouped-GEMM sweep: {num_experts} experts, top-{top_k}, hidden {hidden}, "
          f"inter {w_down.shape[-1]} (us per call; * = default_config; torch = the reference loop)")
    for i, config in enumerate(SWEEP_CONFIGS):
        print(f"  cfg{i}: {config}")
    names = ["torch"] + [f"cfg{i}" for i in range(len(SWEEP_CONFIGS))]
    print(f"{'tokens':>8}  " + "  ".join(f"{name:>8}" for name in names))
    for tokens in token_counts:
        inputs = routed_inputs(moe, tokens, device, dtype)
        default = triton_moe.default_config(tokens * top_k, num_experts)
        reference = time_call(functools.partial(moe_reference.fused_experts, *inputs), device, reps)
        cells = [f"{reference * 1e6:>8.0f}"]
        for config in SWEEP_CONFIGS:
            try:
                call = functools.partial(triton_moe.fused_experts, *inputs, "silu", config)
                micros = time_call(call, device, reps) * 1e6
                cells.append(f"{micros:>7.0f}{'*' if config == default else ' '}")
            except Exception as e:  # a tile that does not fit this GPU's shared memory
                cells.append(f"{type(e).__name__[:8]:>8}")
        print(f"{tokens:>8}  " + "  ".join(cells))


def time_call(fn, device: torch.device, reps: int) -> float:
    """Seconds per call, after one warm-up call (compilation)."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny Mixtral (checks the script on a CPU)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (Mixtral has 32)")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--hf-batch", type=int, default=64, help="transformers' static batch size")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="time grouped-GEMM tile configurations")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = TINY if args.tiny else MIXTRAL
    if args.tiny:
        args.requests, args.input_len, args.output_len, args.hf_batch = 16, 32, 16, 8
    config = MixtralConfig(**shape, num_hidden_layers=args.layers, bos_token_id=0, eos_token_id=1,
                           pad_token_id=0)
    max_len = args.input_len + args.output_len + 64
    hf, llm = build_pair(config, device, dtype, max_model_len=max_len)
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; Mixtral-shaped, {args.layers} layers, {dtype}; "
          f"weights {weight_bytes / 1e9:.2f} GB")
    if device.type == "cuda":
        print(f"grouped GEMM vs torch reference ({dtype}): {kernel_check(llm, device, dtype)}")
    if not args.skip_hf:
        print(f"greedy agreement with transformers: {greedy_agreement(hf, llm, config.vocab_size, device)}")

    workload = fixed_workload(args.requests, args.input_len, args.output_len, config.vocab_size)
    run_intarsia(llm, workload[:8])  # warm-up: Triton compilation, CUDA graphs
    results = [run_intarsia(llm, workload)]
    baseline = None
    if not args.skip_hf:
        run_hf_static(hf, workload[:2], 2)  # warm-up
        baseline = run_hf_static(hf, workload, args.hf_batch, f"transformers generate (b={args.hf_batch})")
        results.append(baseline)
    print_table(f"offline throughput, {describe(workload)}", results, baseline)
    if args.sweep and device.type == "cuda":
        sweep(llm, device, dtype)


if __name__ == "__main__":
    main()
