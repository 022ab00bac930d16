"""LLaVA-1.5: a CLIP (or SigLIP) vision tower, a two-layer MLP projector and a
text family from this package (Llama, Mistral, Qwen2, ...)."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

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

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, C, H, W] -> projected patch features [images, tokens, hidden]."""
        features = self.vision_tower(pixel_values, self.config.vision_feature_layer)
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]  # drop the class token
        return self.multi_modal_projector(features)

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        return list(self.image_features(self.item_tensor(items, "pixel_values")))
