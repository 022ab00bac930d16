"""Qwen2-VL's vision transformer: native-resolution patches with 2-D rotary
positions, attention within each image / video frame, and a patch merger that
folds each `merge x merge` window into one language-model token."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from intarsia.backbones.layers import LayerNorm, Linear, default_weight_loader
from intarsia.encoders.projectors import MLPProjector
from intarsia.encoders.transformer import ENCODER_LAYER_RENAMES, EncoderLayer
from intarsia.transfer import device_tensor

# Checkpoint names (`visual.*`) -> this module's names.
QWEN2_VL_VISION_RENAMES = (
    (r"\.blocks\.(\d+)\.norm1\.", r".blocks.\1.layer_norm1."),
    (r"\.blocks\.(\d+)\.norm2\.", r".blocks.\1.layer_norm2."),
    (r"\.attn\.qkv\.", ".self_attn.qkv_proj."),
    (r"\.attn\.proj\.", ".self_attn.out_proj."),
    (r"\.merger\.mlp\.0\.", ".merger.mlp.linear_1."),
    (r"\.merger\.mlp\.2\.", ".merger.mlp.linear_2."),
    *ENCODER_LAYER_RENAMES,
)


class PatchEmbed(nn.Module):
    """The Conv3d over (temporal, patch, patch) cubes, computed as the matmul it is."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = Linear(in_dim, embed_dim)
        # The checkpoint stores the conv kernel [embed, C, T, P, P].
        self.proj.weight.weight_loader = lambda p, w: default_weight_loader(p, w.reshape(p.shape))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj(patches.to(self.proj.weight.dtype))


class PatchMerger(nn.Module):
    def __init__(self, context_dim: int, out_dim: int, merge: int) -> None:
        super().__init__()
        self.merged_dim = context_dim * merge ** 2
        self.ln_q = LayerNorm(context_dim, 1e-6)
        self.mlp = MLPProjector(self.merged_dim, out_dim, "gelu", hidden_dim=self.merged_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.merged_dim))


def vision_positions(grid_thw: list[list[int]], merge: int) -> torch.Tensor:
    """(row, column) of every patch [patches, 2], patches ordered window by window."""
    out = []
    for t, h, w in grid_thw:
        rows = torch.arange(h)[:, None].expand(h, w)
        cols = torch.arange(w)[None, :].expand(h, w)
        windows = (h // merge, merge, w // merge, merge)
        pos = torch.stack([rows.reshape(windows).transpose(1, 2).flatten(),
                           cols.reshape(windows).transpose(1, 2).flatten()], dim=-1)
        out.append(pos.repeat(t, 1))
    return torch.cat(out)


class Qwen2VisionTransformer(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        dim, heads = config.embed_dim, config.num_heads
        self.merge = config.spatial_merge_size
        in_dim = config.in_channels * config.temporal_patch_size * config.patch_size ** 2
        self.patch_embed = PatchEmbed(in_dim, dim)
        head_dim = dim // heads
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        quarter = head_dim // 2
        inv_freq = 1.0 / (theta ** (torch.arange(0, quarter, 2, dtype=torch.float) / quarter))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.blocks = nn.ModuleList(
            EncoderLayer(dim, heads, int(dim * config.mlp_ratio), config.hidden_act, 1e-6)
            for _ in range(config.depth))
        self.merger = PatchMerger(dim, config.hidden_size, self.merge)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Flattened patches [patches, C*T*P*P] of the images/videos in `grid_thw`
        ([items, 3], best on the host: it is read there) -> merged tokens
        [patches / merge^2, hidden], in item order."""
        grid = grid_thw.tolist()
        positions = device_tensor(vision_positions(grid, self.merge), self.inv_freq.device)
        freqs = (positions[..., None].float() * self.inv_freq).flatten(1)  # [patches, head_dim/2]
        rotary = (torch.arange(len(freqs), device=freqs.device), torch.cat((freqs.cos(), freqs.sin()), -1))
        lengths = [h * w for t, h, w in grid for _ in range(t)]  # attention within each frame
        x = self.patch_embed(pixel_values)
        for block in self.blocks:
            x = block(x, lengths, rotary)
        return self.merger(x)
