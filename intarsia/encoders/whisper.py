"""The Whisper audio encoder: a two-conv front-end over log-mel frames (the second
halves the frame rate), learned positions and pre-norm encoder layers; Qwen2-Audio
average-pools pairs of frames before the final norm.

Feature extractors pad every clip to a fixed window; transformers masks the keys of
the padded frames. Here each clip runs over its valid frames only, which gives the
same rows: valid frames never attend to padded ones, and the rows kept after
pooling come from valid frames only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from intarsia.backbones.layers import LayerNorm
from intarsia.encoders.transformer import EncoderLayer

# Whisper's layer names -> the shared EncoderLayer's.
WHISPER_RENAMES = (
    (r"\.self_attn_layer_norm\.", ".layer_norm1."),
    (r"\.final_layer_norm\.", ".layer_norm2."),
    (r"\.layers\.(\d+)\.fc1\.", r".layers.\1.mlp.up_proj."),
    (r"\.layers\.(\d+)\.fc2\.", r".layers.\1.mlp.down_proj."),
)


def with_zero_key_bias(weights: Iterable[tuple[str, torch.Tensor]],
                       prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Whisper's k_proj has no bias; the fused qkv projection gets zeros for it."""
    for name, tensor in weights:
        yield name, tensor
        if name.endswith(".self_attn.k_proj.weight") and prefix in name:
            yield name.removesuffix("weight") + "bias", tensor.new_zeros(tensor.shape[0])


def conv_output_length(num_frames: int) -> int:
    """Frames after the stride-2 front-end conv (kernel 3, padding 1)."""
    return (num_frames - 1) // 2 + 1


class WhisperEncoder(nn.Module):
    """Whisper's encoder (`pool=1`) or Qwen2-Audio's (`pool=2`: frames averaged in pairs)."""

    def __init__(self, config: PretrainedConfig, pool: int = 1) -> None:
        super().__init__()
        dim = config.d_model
        self.pool = pool
        self.conv1 = nn.Conv1d(config.num_mel_bins, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, dim)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, config.encoder_attention_heads, config.encoder_ffn_dim,
                         config.activation_function, 1e-5)
            for _ in range(config.encoder_layers))
        self.layer_norm = LayerNorm(dim, 1e-5)

    def forward(self, features: torch.Tensor, num_frames: list[int]) -> list[torch.Tensor]:
        """Padded log-mel features [clips, mels, frames] with `num_frames` valid frames
        per clip -> one [tokens, dim] tensor per clip."""
        x = F.gelu(self.conv1(features.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [clips, frames / 2, dim]
        lengths = [conv_output_length(n) for n in num_frames]
        positions = self.embed_positions.weight
        x = torch.cat([x[i, :n] + positions[:n] for i, n in enumerate(lengths)])
        for layer in self.layers:
            x = layer(x, lengths)
        outputs = []
        for clip, n in zip(x.split(lengths), lengths, strict=True):
            kept = (n - self.pool) // self.pool + 1  # transformers' AvgPool1d, valid rows only
            pooled = clip[:kept * self.pool].view(kept, self.pool, -1).mean(1)
            outputs.append(self.layer_norm(pooled))
        return outputs
