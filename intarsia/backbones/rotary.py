"""Rotary position embeddings with every scaling scheme transformers knows.

The inverse frequencies come from transformers' own `ROPE_INIT_FUNCTIONS`, so each
scaling type (linear, dynamic, yarn, longrope, llama3, ...) follows the reference
formula. They are baked into one cos/sin table indexed by position.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from intarsia import kernels


def _default_inv_freq(base: float, rotary_dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


class RotaryEmbedding(nn.Module):
    def __init__(self, cos_sin_cache: torch.Tensor, head_dim: int, is_neox: bool) -> None:
        super().__init__()
        self.register_buffer("cos_sin_cache", cos_sin_cache, persistent=False)
        self.head_dim, self.is_neox = head_dim, is_neox

    @classmethod
    def from_config(cls, config: PretrainedConfig, head_dim: int, max_positions: int,
                    is_neox: bool = True, rotary_dim: int | None = None) -> RotaryEmbedding:
        """Build the table for positions `[0, max_positions)` from `config.rope_parameters`;
        `rotary_dim` overrides the rotated width that `partial_rotary_factor` implies.

        Length-dependent schemes (dynamic NTK, longrope) are applied per position:
        position p uses the frequencies transformers uses for a sequence of p + 1
        tokens, which is what incremental decoding in transformers computes.
        """
        params = dict(config.rope_parameters or {})
        rope_type = params.get("rope_type", "default")
        rotary_dim = rotary_dim or int(head_dim * params.get("partial_rotary_factor",
                                               getattr(config, "partial_rotary_factor", 1.0)))
        positions = torch.arange(max_positions, dtype=torch.float32)
        if rope_type == "default":
            inv_freq = _default_inv_freq(params["rope_theta"], rotary_dim).expand(max_positions, -1)
            scaling = 1.0
        elif rope_type in ROPE_INIT_FUNCTIONS:
            init = ROPE_INIT_FUNCTIONS[rope_type]
            inv_freq, scaling = init(config, "cpu")
            inv_freq = inv_freq.float().expand(max_positions, -1).clone()
            original = params.get("original_max_position_embeddings", config.max_position_embeddings)
            if rope_type == "dynamic":
                factor, dim = params["factor"], rotary_dim
                seq_len = torch.clamp(positions + 1, min=config.max_position_embeddings)
                base = params["rope_theta"] * (
                    (factor * seq_len / config.max_position_embeddings) - (factor - 1)
                ) ** (dim / (dim - 2))
                exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
                inv_freq = 1.0 / (base[:, None] ** exponent[None, :])
            elif rope_type == "longrope" and max_positions > original:
                long_inv_freq, _ = init(config, "cpu", seq_len=original + 1)
                inv_freq[original:] = long_inv_freq.float()
            if "short_mscale" in params:  # PhiMoE: its own cos/sin scales within and beyond `original`
                scaling = torch.where(positions < original, params["short_mscale"],
                                      params["long_mscale"])[:, None]
        else:
            raise ValueError(f"unsupported rope type {rope_type!r}; known: default, "
                             f"{', '.join(ROPE_INIT_FUNCTIONS)}")
        freqs = positions[:, None] * inv_freq
        cache = torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1)
        return cls(cache, head_dim, is_neox)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(each token's row in a cos|sin table, that table)."""
        return positions, self.cos_sin_cache

    def forward(self, positions: torch.Tensor, q: torch.Tensor,
                k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k: [tokens, heads * head_dim] (views are fine) -> rotated, same shape."""
        num_tokens = q.shape[0]
        q3 = q.view(num_tokens, -1, self.head_dim)
        k3 = k.view(num_tokens, -1, self.head_dim)
        rows, table = self.lookup(positions)
        q3, k3 = kernels.rotary_embedding(rows, q3, k3, table, self.is_neox)
        return q3.reshape(num_tokens, -1), k3.reshape(num_tokens, -1)

    def rotate_and_cache(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         slot_mapping: torch.Tensor) -> torch.Tensor:
        """q, k, v: [tokens, heads, head_dim]. Rotates q (returned) and k, and stores the
        rotated keys and the values at their cache slots, in one kernel."""
        rows, table = self.lookup(positions)
        return kernels.rotary_and_write_kv(rows, q, k, v, table, self.is_neox, k_cache, v_cache,
                                           slot_mapping)
