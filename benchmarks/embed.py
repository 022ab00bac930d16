"""Embeddings per second: intarsia vs transformers on the same weights and prompts.

    PYTHONPATH=. python3 benchmarks/embed.py            # device mode: e5-mistral-7b shape, bf16
    PYTHONPATH=. python3 benchmarks/embed.py --tiny     # CPU mode: a tiny Mistral, float32

Both engines hold one set of random weights (transformers' `MistralModel`, copied
into intarsia's with `load_weights` by `common.build_pair`) and embed the same random-token prompts with
last-token pooling and L2 normalisation (e5-mistral's recipe). transformers runs the
usual batched forward with padding, prompts sorted by length first as
sentence-transformers does (left padding, so the last column is every prompt's last
token); intarsia gets all prompts at once. Both are timed after a warm-up run.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F
from common import build_pair, sync
from transformers import AutoModel, MistralConfig

from intarsia import LLM

SHAPES = {
    # intfloat/e5-mistral-7b-instruct
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
               sliding_window=None),
    "tiny": dict(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                 sliding_window=None),
}


def random_prompts(count: int, min_len: int, max_len: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(min_len, max_len))]
            for _ in range(count)]


@torch.inference_mode()
def hf_embed(model: torch.nn.Module, prompts: list[list[int]], batch_size: int,
             device: torch.device) -> torch.Tensor:
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out = torch.empty(len(prompts), model.config.hidden_size, device=device)
    for start in range(0, len(order), batch_size):
        batch = [prompts[i] for i in order[start:start + batch_size]]
        width = max(map(len, batch))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
        out[order[start:start + batch_size]] = F.normalize(hidden.float(), dim=-1)
    return out


def intarsia_embed(llm: LLM, prompts: list[list[int]]) -> torch.Tensor:
    outputs = llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    return torch.stack([o.outputs.data for o in outputs])


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny float32 model on the CPU")
    parser.add_argument("--num-prompts", type=int)
    parser.add_argument("--min-len", type=int, default=32)
    parser.add_argument("--max-len", type=int)
    parser.add_argument("--hf-batch-size", type=int)
    args = parser.parse_args()
    if args.tiny:
        device, dtype, shape = torch.device("cpu"), torch.float32, "tiny"
        defaults = dict(num_prompts=64, max_len=256, hf_batch_size=16)
    else:
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, "7b"
        defaults = dict(num_prompts=1024, max_len=512, hf_batch_size=32)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    config = MistralConfig(**SHAPES[shape], bos_token_id=0, eos_token_id=1, pad_token_id=0)
    # Leave room for transformers' padded activations next to intarsia's KV cache.
    hf, llm = build_pair(config, device, dtype, model_cls=AutoModel, enable_prefix_caching=False,
                         gpu_memory_utilization=0.6)
    prompts = random_prompts(args.num_prompts, args.min_len, args.max_len, config.vocab_size, seed=1)
    warmup = random_prompts(min(32, args.num_prompts), args.min_len, args.max_len, config.vocab_size, 2)
    num_tokens = sum(map(len, prompts))

    hf_embed(hf, warmup, args.hf_batch_size, device)
    hf_time, hf_out = timed(lambda: hf_embed(hf, prompts, args.hf_batch_size, device), device)
    intarsia_embed(llm, warmup)
    ours_time, ours_out = timed(lambda: intarsia_embed(llm, prompts), device)
    cosine = F.cosine_similarity(ours_out.to(device), hf_out, dim=-1)

    rows = [(f"transformers (padded batches of {args.hf_batch_size})", hf_time), ("intarsia", ours_time)]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nembed benchmark: {shape} Mistral ({dtype}) on {where}, {args.num_prompts} prompts of "
          f"{args.min_len}-{args.max_len} tokens ({num_tokens} tokens)")
    print(f"{'engine':<36} {'seconds':>8} {'emb/s':>9} {'tok/s':>10} {'vs HF':>6}")
    for label, seconds in rows:
        print(f"{label:<36} {seconds:8.2f} {args.num_prompts / seconds:9.1f} "
              f"{num_tokens / seconds:10.0f} {hf_time / seconds:5.2f}x")
    print(f"cosine(intarsia, transformers): min {cosine.min():.5f}, mean {cosine.mean():.5f}")


if __name__ == "__main__":
    main()
