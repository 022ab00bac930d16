"""Multimodal rotary embeddings (M-RoPE, Qwen2-VL): three position rows per token.

Vision tokens carry (temporal, height, width) positions, text tokens the same
position in all three rows. The rotary frequencies are split into
`mrope_section` chunks, chunk i rotated by position row i % 3. Per token, the
cos/sin row is assembled from the three positions, then the ordinary rotary
kernel applies it.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from intarsia.backbones.rotary import RotaryEmbedding


class MRotaryEmbedding(RotaryEmbedding):
    def __init__(self, cos_sin_cache: torch.Tensor, head_dim: int, is_neox: bool,
                 mrope_section: list[int]) -> None:
        super().__init__(cos_sin_cache, head_dim, is_neox)
        half = cos_sin_cache.shape[-1] // 2
        if sum(mrope_section) != half:
            raise ValueError(f"mrope_section {mrope_section} must sum to rotary_dim / 2 = {half}")
        rows = torch.cat([torch.full((n,), i % 3) for i, n in enumerate(mrope_section)])
        self.register_buffer("section_rows", torch.cat((rows, rows))[None, None], persistent=False)

    @classmethod
    def from_config(cls, config: PretrainedConfig, head_dim: int, max_positions: int,
                    is_neox: bool = True) -> MRotaryEmbedding:
        table = RotaryEmbedding.from_config(config, head_dim, max_positions, is_neox)
        section = config.rope_parameters.get("mrope_section", [16, 24, 24])  # transformers default
        return cls(table.cos_sin_cache, head_dim, is_neox, list(section))

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [3, tokens] (or [tokens] for text-only batches). Each token's
        cos|sin row is assembled from its three positions: a table of its own."""
        if positions.dim() == 1:
            return super().lookup(positions)
        num_tokens = positions.shape[1]
        per_row = self.cos_sin_cache[positions]  # [3, tokens, rotary_dim]
        table = per_row.gather(0, self.section_rows.expand(1, num_tokens, -1))[0]
        return torch.arange(num_tokens, device=positions.device), table
