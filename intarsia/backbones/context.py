"""What a model's forward pass needs besides token ids and positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intarsia.kernels import AttentionMetadata


@dataclass
class ForwardContext:
    attn: AttentionMetadata
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k_cache, v_cache)
