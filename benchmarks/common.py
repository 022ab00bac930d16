"""Shared pieces of the benchmark scripts: hardware ceilings, shared random models,
workloads and the transformers baselines. Each script runs intarsia and
transformers on the same weights, prompts and device in one process."""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PretrainedConfig

from intarsia import LLM, SamplingParams
from intarsia.tiny_models import train_tokenizer


@dataclass
class Request:
    prompt_ids: list[int]
    output_len: int


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus written."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * reps / (time.perf_counter() - start)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """Dense matmul FLOP/s on random data."""
    if device.type == "cpu":
        n = 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def build_pair(config: PretrainedConfig, device: torch.device, dtype: torch.dtype,
               seed: int = 0, model_cls=AutoModelForCausalLM, **llm_kwargs) -> tuple[torch.nn.Module, LLM]:
    """A transformers model (`model_cls`) with random weights and an intarsia LLM holding
    the same weights (loaded from the transformers model's state dict, no files)."""
    torch.manual_seed(seed)
    with torch.device(device):
        hf = model_cls.from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        for param in hf.parameters():
            if param.dim() > 1:
                param.normal_(0, 1 / math.sqrt(param.shape[-1]))
    folder = Path(tempfile.mkdtemp(prefix="intarsia-bench-"))
    config.architectures = [type(hf).__name__]
    config.save_pretrained(folder)
    train_tokenizer(512).save_pretrained(folder)
    # Both models live on the device: leave transformers room for its own KV cache.
    llm_kwargs.setdefault("gpu_memory_utilization", 0.6)
    llm = LLM(str(folder), dtype=dtype, device=str(device), load_format="dummy", **llm_kwargs)
    llm.engine.runner.model.load_weights(hf.state_dict().items())
    return hf, llm


def fixed_workload(n: int, input_len: int, output_len: int, vocab: int, seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    return [Request([rng.randrange(3, vocab) for _ in range(input_len)], output_len) for _ in range(n)]


def sharegpt_like_workload(n: int, vocab: int, seed: int = 0, mean_in: float = 200,
                           mean_out: float = 180, max_len: int = 2048) -> list[Request]:
    """Lognormal prompt/output lengths (sigma 0.9 / 0.8, as skewed as ShareGPT's) with the
    given means; ShareGPT itself averages about 200 in / 180 out."""
    rng = random.Random(seed)
    mu_in, mu_out = math.log(mean_in) - 0.9**2 / 2, math.log(mean_out) - 0.8**2 / 2
    requests = []
    for _ in range(n):
        input_len = min(max(int(rng.lognormvariate(mu_in, 0.9)), 4), max_len // 2)
        output_len = min(max(int(rng.lognormvariate(mu_out, 0.8)), 4), max_len // 2)
        requests.append(Request([rng.randrange(3, vocab) for _ in range(input_len)], output_len))
    return requests


def describe(workload: list[Request]) -> str:
    ins = sum(len(r.prompt_ids) for r in workload) / len(workload)
    outs = sum(r.output_len for r in workload) / len(workload)
    return f"{len(workload)} requests, mean {ins:.0f} in / {outs:.0f} out"


@dataclass
class Result:
    name: str
    seconds: float
    requests: int
    output_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def run_intarsia(llm: LLM, workload: list[Request], name: str = "intarsia") -> Result:
    prompts = [{"prompt_token_ids": r.prompt_ids} for r in workload]
    params = [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True) for r in workload]
    device = llm.config.device
    retries = 0
    if device.type == "cuda":
        # Hand back what transformers' runs left in the allocator's cache: were the cache
        # flushed mid-run to fit an allocation, that flush would synchronise the device.
        torch.cuda.empty_cache()
        retries = torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
    sync(device)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    sync(device)
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        retries = torch.cuda.memory_stats(device).get("num_alloc_retries", 0) - retries
        if retries:
            print(f"  ({name}: the CUDA allocator flushed its cache {retries} times during the run)")
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert produced == sum(r.output_len for r in workload)
    return Result(name, elapsed, len(workload), produced)


def run_hf_static(model: torch.nn.Module, workload: list[Request], batch_size: int,
                  name: str = "transformers generate") -> Result:
    """Static batching: left-padded batches in arrival order, each decoding until its
    longest request is done; only the tokens requests asked for are counted."""
    device = next(model.parameters()).device
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(workload), batch_size):
        batch = workload[i:i + batch_size]
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(batch):
            ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[row, width - len(r.prompt_ids):] = 1
        new = max(r.output_len for r in batch)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0)
    sync(device)
    return Result(name, time.perf_counter() - start, len(workload), sum(r.output_len for r in workload))


def run_hf_generate_batch(model: torch.nn.Module, workload: list[Request],
                          name: str = "transformers generate_batch") -> Result | None:
    """transformers' own continuous batching (all requests get the longest output length,
    only requested tokens are counted); None where this transformers lacks it."""
    if not hasattr(model, "generate_batch"):
        return None
    device = next(model.parameters()).device
    new = max(r.output_len for r in workload)
    config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=-1,
                              pad_token_id=0)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate_batch(inputs=[r.prompt_ids for r in workload], generation_config=config,
                             progress_bar=False)
    sync(device)
    return Result(name, time.perf_counter() - start, len(workload), sum(r.output_len for r in workload))


def print_table(title: str, results: list[Result], baseline: Result | None = None) -> None:
    print(f"\n{title}")
    print(f"{'engine':<30}{'seconds':>10}{'req/s':>10}{'out tok/s':>12}{'ratio':>8}")
    for r in results:
        ratio = f"{r.tokens_per_s / baseline.tokens_per_s:.2f}x" if baseline else ""
        print(f"{r.name:<30}{r.seconds:>10.2f}{r.requests_per_s:>10.2f}{r.tokens_per_s:>12.1f}{ratio:>8}")
