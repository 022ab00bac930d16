"""Engine settings resolved from the `LLM(...)` arguments and the checkpoint's config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from intarsia.engine.loader import resolve_model_path
from intarsia.engine.pooler import PoolerConfig, resolve_pooler_config
from intarsia.engine.registry import ModelEntry, registry, resolve

_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16}


def _resolve_dtype(dtype: str | torch.dtype, config: PretrainedConfig, device: torch.device):
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        wanted = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(wanted, str):
            wanted = _DTYPES.get(wanted, torch.float32)
        wanted = wanted or torch.float32
        # Half precision on the CPU is slow and poorly supported: compute in float32 there.
        return wanted if device.type != "cpu" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _text_config(config: PretrainedConfig) -> PretrainedConfig:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass
class EngineConfig:
    model_path: Path
    hf_config: PretrainedConfig
    architecture: str
    entry: ModelEntry
    task: str
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    enable_prefix_caching: bool
    num_kv_blocks: int | None  # None: sized from memory at start-up
    gpu_memory_utilization: float
    enforce_eager: bool
    load_format: str
    seed: int
    limit_mm_per_prompt: dict[str, int]
    # Worker processes preprocessing multimodal prompts; 0: threads of this process.
    mm_preprocess_processes: int = 0
    pooler_config: PoolerConfig | None = None  # set for the pooling tasks

    @classmethod
    def create(cls, model: str, dtype: str | torch.dtype = "auto", device: str | None = None,
               task: str = "auto", max_model_len: int | None = None, max_num_seqs: int = 256,
               block_size: int = 16, enable_prefix_caching: bool = True,
               max_num_batched_tokens: int | None = None, num_kv_blocks: int | None = None,
               gpu_memory_utilization: float = 0.9, enforce_eager: bool = False,
               load_format: str = "auto", seed: int = 0,
               limit_mm_per_prompt: dict[str, int] | None = None,
               hf_config: PretrainedConfig | None = None,
               pooler_config: PoolerConfig | dict | None = None,
               mm_preprocess_processes: int | None = None) -> EngineConfig:
        path = resolve_model_path(model) if hf_config is None else Path(model)
        if hf_config is None:
            if not (path / "config.json").exists():
                raise FileNotFoundError(f"no config.json in {path}")
            registry()  # declarations register the configs transformers lacks (phi3_v)
            try:
                hf_config = AutoConfig.from_pretrained(path)
            except (ValueError, OSError) as e:
                raise ValueError(f"cannot read the model config in {path}: {e}") from e
        architecture, entry = resolve(getattr(hf_config, "architectures", None))
        if task == "auto":
            task = entry.task
        if task not in ("generate", "embed", "classify", "reward"):
            raise ValueError(f"unknown task {task!r}; use generate, embed, classify, reward or auto")
        # A generation model can also embed (pooling its last hidden states); a pooling
        # model runs only the task its head was trained for.
        supported = (entry.task, "embed") if entry.task == "generate" else (entry.task,)
        if task not in supported:
            raise ValueError(f"{architecture} cannot run task {task!r}; it supports {', '.join(supported)}")
        if task == "generate" and pooler_config is not None:
            raise ValueError("pooler_config applies to the pooling tasks (embed, classify, reward), "
                             "not to generate")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        text_config = _text_config(hf_config)
        limit = getattr(text_config, "max_position_embeddings", None) or 2048
        max_model_len = max_model_len or limit
        if block_size < 1 or max_num_seqs < 1 or max_model_len < 1:
            raise ValueError("block_size, max_num_seqs and max_model_len must be positive")
        if load_format not in ("auto", "safetensors", "dummy"):
            raise ValueError(f"unknown load_format {load_format!r}; use auto, safetensors or dummy")
        budget = max_num_batched_tokens or max(2048 if dev.type == "cpu" else 8192, block_size)
        if mm_preprocess_processes is None:  # processes where the GPU computes and the CPU feeds it
            cores = os.cpu_count() or 1
            mm_preprocess_processes = min(8, cores // 2) if entry.multimodal and dev.type == "cuda" else 0
        if mm_preprocess_processes < 0:
            raise ValueError(f"mm_preprocess_processes must be >= 0, got {mm_preprocess_processes}")
        return cls(
            model_path=path, hf_config=hf_config, architecture=architecture, entry=entry,
            task=task, dtype=_resolve_dtype(dtype, text_config, dev), device=dev,
            max_model_len=max_model_len, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=budget, block_size=block_size,
            enable_prefix_caching=enable_prefix_caching, num_kv_blocks=num_kv_blocks,
            gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
            load_format=load_format, seed=seed, limit_mm_per_prompt=limit_mm_per_prompt or {},
            mm_preprocess_processes=mm_preprocess_processes if entry.multimodal else 0,
            pooler_config=None if task == "generate" else resolve_pooler_config(
                task, entry.cls, path, pooler_config),
        )

    @property
    def text_config(self) -> PretrainedConfig:
        return _text_config(self.hf_config)
