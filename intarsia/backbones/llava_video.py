"""LLaVA-NeXT-Video and LLaVA-OneVision: LLaVA-NeXT's any-resolution images plus
videos, each frame encoded as one base view whose patch features are pooled 2x2.

LLaVA-NeXT-Video pools the vision features (average, max or a strided conv) before
the projector; LLaVA-OneVision (SigLIP tower) projects first, pools bilinearly and
closes each video with image_newline, and caps an image's tile grid at
`anyres_max_N` base views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from intarsia.backbones.decoder import WeightMap
from intarsia.backbones.llava import LLAVA_RENAMES, LLAVA_WEIGHT_MAP, LlavaNextForConditionalGeneration
from intarsia.engine.registry import register
from intarsia.processors.multimodal import MultiModalItem, MultiModalProcessor


class LlavaVideoProcessor(MultiModalProcessor):
    modalities = ("image", "video")


class LlavaNextWithVideo(LlavaNextForConditionalGeneration):
    """LLaVA-NeXT images; a video's placeholder rows are its frames' pooled features
    in frame order."""

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """[frames, C, H, W] -> pooled, projected features [frames, tokens, hidden]."""
        raise NotImplementedError

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        if modality != "video":
            return super().encode(modality, items)
        videos = [item.data["pixel_values_videos"][0] for item in items]  # each [frames, C, H, W]
        features = self.frame_features(torch.cat(videos).to(self.device, self.dtype))
        return [f.flatten(0, 1) for f in features.split([len(v) for v in videos])]

    def feature_map(self, features: torch.Tensor) -> torch.Tensor:
        """[frames, side * side, dim] -> [frames, dim, side, side]"""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        return features.view(features.shape[0], side, side, -1).permute(0, 3, 1, 2)


class SpatialPool(nn.Module):
    """LLaVA-NeXT-Video's `vision_resampler`: each frame's patch map pooled by `stride`."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        mode, stride = config.spatial_pool_mode, config.spatial_pool_stride
        dim = config.vision_config.hidden_size
        if mode == "average":
            self.pool = nn.AvgPool2d(stride, stride)
        elif mode == "max":
            self.pool = nn.MaxPool2d(stride, stride)
        elif mode == "conv":
            out = getattr(config, "spatial_pool_out_channels", dim)
            self.pool = nn.Conv2d(dim, out, stride, stride)
        else:
            raise ValueError(f"unknown spatial_pool_mode {mode!r}; expected average, max or conv")

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """[frames, dim, side, side] -> [frames, tokens, dim]"""
        return self.pool(feature_map).flatten(2).transpose(1, 2)


@register("LlavaNextVideoForConditionalGeneration", processor=LlavaVideoProcessor)
class LlavaNextVideoForConditionalGeneration(LlavaNextWithVideo):
    weight_map = WeightMap(renames=((r"^model\.vision_resampler\.", "vision_resampler."), *LLAVA_RENAMES),
                           ignore=LLAVA_WEIGHT_MAP.ignore)

    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        super().__init__(config, max_positions)
        self.vision_resampler = SpatialPool(config)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_resampler(self.feature_map(self.vision_features(frames)))
        return self.multi_modal_projector(pooled)


@register("LlavaOnevisionForConditionalGeneration", processor=LlavaVideoProcessor)
class LlavaOnevisionForConditionalGeneration(LlavaNextWithVideo):
    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        super().__init__(config, max_positions)
        aspect = config.vision_aspect_ratio
        if not aspect.startswith("anyres_max_") or not aspect.removeprefix("anyres_max_").isdigit():
            raise ValueError(f"unsupported vision_aspect_ratio {aspect!r}; expected 'anyres_max_<N>'")
        self.max_base_views = int(aspect.removeprefix("anyres_max_"))

    def resize_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """Scale the grid down bilinearly when its area exceeds `anyres_max_N` base views
        by more than 10%."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        _, height, width = grid.shape
        ratio = math.sqrt(height * width / (self.max_base_views * side ** 2))
        if ratio <= 1.1:
            return grid
        return F.interpolate(grid[None], [int(height // ratio), int(width // ratio)], mode="bilinear")[0]

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        feature_map = self.feature_map(self.image_features(frames))
        halved = [math.ceil(side / 2) for side in feature_map.shape[2:]]
        pooled = F.interpolate(feature_map, halved, mode="bilinear")
        return pooled.flatten(2).transpose(1, 2)

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        outputs = super().encode(modality, items)
        if modality != "video":
            return outputs
        return [torch.cat((video, self.image_newline[None])) for video in outputs]
