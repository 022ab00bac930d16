"""Offline throughput and decode latency: intarsia vs transformers, same weights, same run.

    python benchmarks/throughput.py --preset cpu-small     # CI-sized, on the CPU
    python benchmarks/throughput.py --preset llama3-8b     # on one H100/H200

Prints the hardware ceilings (copy bandwidth, matmul rate), batch-1 decode
ms/token with its roofline (weight bytes / copy bandwidth), output tokens/s
for each workload with the ratio to transformers' static batching, and on CUDA
the decode-attention kernel sweep (benchmarks/gpu_kernels.py) against the copy
bandwidth.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import (
    build_pair,
    copy_bandwidth,
    describe,
    fixed_workload,
    matmul_rate,
    print_table,
    run_hf_generate_batch,
    run_hf_static,
    run_intarsia,
    sharegpt_like_workload,
    sync,
)
from transformers import LlamaConfig

from intarsia import SamplingParams

PRESETS = {
    # A small Llama-shaped model that runs in seconds on 2 CPU cores.
    "cpu-small": dict(
        config=dict(vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048),
        dtype=torch.float32, device="cpu", hf_batch=64, decode=(32, 32),
        workloads=[("fixed", 64, 64, 48), ("sharegpt", 64, 96, 64)]),
    # Llama-3.1-8B's shape in bf16.
    "llama3-8b": dict(
        config=dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                    rope_theta=500000.0),
        dtype=torch.bfloat16, device="cuda", hf_batch=64, decode=(128, 256),
        workloads=[("fixed", 256, 256, 128), ("sharegpt", 1000, 200, 180)]),
}


def decode_ms_per_token(generate_one, prompt_len: int, new_tokens: int, device) -> float:
    """(time for prompt + N tokens - time for prompt + 1 token) / (N - 1)."""
    def timed(n: int) -> float:
        sync(device)
        start = time.perf_counter()
        generate_one(prompt_len, n)
        sync(device)
        return time.perf_counter() - start

    timed(4)  # warm-up
    return (timed(new_tokens) - timed(1)) / (new_tokens - 1) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--hf-max-requests", type=int, default=256,
                        help="cap on requests given to transformers per workload (its time is long)")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--decode-only", action="store_true", help="only the batch-1 decode latency")
    parser.add_argument("--workload", choices=["fixed", "sharegpt"],
                        help="only this throughput workload (no decode latency, no kernel sweep)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    device = torch.device(preset["device"])
    dtype = preset["dtype"]
    config = LlamaConfig(**preset["config"], bos_token_id=0, eos_token_id=1, pad_token_id=0)
    hf, llm = build_pair(config, device, dtype, max_model_len=preset["config"]["max_position_embeddings"])
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    bandwidth, flops = copy_bandwidth(device), matmul_rate(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; weights {weight_bytes / 1e9:.2f} GB; copy bandwidth {bandwidth / 1e12:.2f} TB/s; "
          f"matmul {flops / 1e12:.1f} TFLOP/s ({dtype})")

    prompt_len, new_tokens = preset["decode"]
    vocab = config.vocab_size

    def intarsia_one(p: int, n: int) -> None:
        llm.generate({"prompt_token_ids": list(range(3, 3 + p))},
                     SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), use_tqdm=False)

    def hf_one(p: int, n: int) -> None:
        with torch.no_grad():
            hf.generate(torch.arange(3, 3 + p, device=device)[None], max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, pad_token_id=0)

    roofline_ms = weight_bytes / bandwidth * 1000
    if not args.workload:
        ours = decode_ms_per_token(intarsia_one, prompt_len, new_tokens, device)
        print(f"\nbatch-1 decode ({prompt_len}-token prompt, {new_tokens} new): "
              f"roofline {roofline_ms:.2f} ms/token")
        print(f"  intarsia      {ours:8.2f} ms/token ({roofline_ms / ours:.0%} of roofline)")
        if not args.skip_hf:
            theirs = decode_ms_per_token(hf_one, prompt_len, new_tokens, device)
            print(f"  transformers  {theirs:8.2f} ms/token ({theirs / ours:.1f}x intarsia's time)")

    if args.decode_only:
        return
    for kind, n, input_len, output_len in preset["workloads"]:
        if args.workload and kind != args.workload:
            continue
        if kind == "fixed":
            workload = fixed_workload(n, input_len, output_len, vocab)
        else:
            workload = sharegpt_like_workload(n, vocab, mean_in=input_len, mean_out=output_len)
        run_intarsia(llm, workload[:64])  # warm-up: Triton compiles its kernel variants
        results = [run_intarsia(llm, workload)]
        baseline = None
        if not args.skip_hf:
            subset = workload[:args.hf_max_requests]
            label = "" if len(subset) == len(workload) else f", first {len(subset)}"
            baseline = run_hf_static(hf, subset, preset["hf_batch"],
                                     f"transformers generate (b={preset['hf_batch']}{label})")
            results.append(baseline)
            if kind == "fixed":  # generate_batch has no per-request lengths
                batch_result = run_hf_generate_batch(hf, subset)
                results += [batch_result] if batch_result else []
        print_table(f"offline throughput, {kind}: {describe(workload)}", results, baseline)

    if device.type == "cuda" and not args.workload:  # the kernel sweep, against this run's copy bandwidth
        from gpu_kernels import time_decode

        print("\ndecode attention (32 q / 8 KV heads, head dim 128, bf16):")
        for batch in (1, 16, 64):
            for context in (1024, 4096, 16384):
                time_decode(batch, context, bandwidth / 1e9)


if __name__ == "__main__":
    main()
