"""LLaVA-1.5: a CLIP (or SigLIP) vision tower, a two-layer MLP projector and a
text family from this package (Llama, Mistral, Qwen2, ...); LLaVA-NeXT adds
any-resolution tiles with an image_newline token closing each feature row."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from intarsia.backbones.decoder import WeightMap
from intarsia.backbones.multimodal import LANGUAGE_MODEL_RENAMES, MultiModalCausalLM
from intarsia.encoders.projectors import MLPProjector
from intarsia.encoders.transformer import ENCODER_LAYER_RENAMES
from intarsia.encoders.vit import VisionTransformer
from intarsia.engine.registry import register
from intarsia.processors.multimodal import MultiModalItem, MultiModalProcessor

LLAVA_RENAMES = (
    *LANGUAGE_MODEL_RENAMES,
    (r"^model\.(vision_tower|multi_modal_projector|image_newline)", r"\1"),
    (r"^vision_tower\.vision_model\.", "vision_tower."),  # a CLIPVisionModel checkpoint
    *ENCODER_LAYER_RENAMES,
)
LLAVA_WEIGHT_MAP = WeightMap(renames=LLAVA_RENAMES,
                             ignore=(*WeightMap().ignore, r"^vision_tower\.head\."))


class LlavaProcessor(MultiModalProcessor):
    modalities = ("image",)


@register("LlavaForConditionalGeneration", processor=LlavaProcessor)
class LlavaForConditionalGeneration(MultiModalCausalLM):
    weight_map = LLAVA_WEIGHT_MAP

    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        super().__init__(config, max_positions)
        vision = config.vision_config
        layers = config.vision_feature_layer
        num_layers = 1 if isinstance(layers, int) else len(layers)
        self.vision_tower = VisionTransformer(vision)
        self.multi_modal_projector = MLPProjector(
            vision.hidden_size * num_layers, self.args.hidden_size, config.projector_hidden_act,
            bias=getattr(config, "multimodal_projector_bias", True))

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, C, H, W] -> the selected vision-tower features [images, tokens, vision dim]."""
        features = self.vision_tower(pixel_values, self.config.vision_feature_layer)
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]  # drop the class token
        return features

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, C, H, W] -> projected patch features [images, tokens, hidden]."""
        return self.multi_modal_projector(self.vision_features(pixel_values))

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        return list(self.image_features(self.item_tensor(items, "pixel_values")))


@register("LlavaNextForConditionalGeneration", processor=LlavaProcessor)
class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-1.5 over a base view plus the tiles of the best-fitting grid resolution."""

    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        super().__init__(config, max_positions)
        self.image_newline = nn.Parameter(torch.empty(self.args.hidden_size), requires_grad=False)

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        vision = self.config.vision_config
        sizes = [item.data["image_sizes"][0].tolist() for item in items]
        counts = [image_size_to_num_patches(size, self.config.image_grid_pinpoints, vision.image_size)
                  for size in sizes]
        tiles = torch.cat([item.data["pixel_values"][0, :n] for item, n in zip(items, counts, strict=True)])
        features = self.image_features(tiles.to(self.device, self.dtype)).split(counts)
        return [self.pack(f, size) for f, size in zip(features, sizes, strict=True)]

    def pack(self, features: torch.Tensor, image_size: list[int]) -> torch.Tensor:
        """[tiles, tokens, hidden] of one image -> its placeholder rows: the base view,
        then the tiles stitched into one feature map, unpadded to the image's aspect
        ratio, each row closed by image_newline."""
        if features.shape[0] == 1:
            return torch.cat((features[0], self.image_newline[None]))
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        rows, cols = get_anyres_image_grid_shape(image_size, self.config.image_grid_pinpoints,
                                                 vision.image_size)
        grid = features[1:].view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3)
        grid = self.resize_grid(unpad_image(grid.flatten(1, 2).flatten(2, 3), image_size))  # [hidden, H, W]
        newline = self.image_newline[:, None, None].expand(*grid.shape[:-1], 1)
        grid = torch.cat((grid, newline), dim=-1).flatten(1, 2).transpose(0, 1)
        return torch.cat((features[0], grid))

    def resize_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """The unpadded tile grid [hidden, H, W] as packed: LLaVA-NeXT keeps it whole
        (LLaVA-OneVision caps its area)."""
        return grid
