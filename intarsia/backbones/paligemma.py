"""PaliGemma (and PaliGemma 2): a SigLIP tower and one linear projector over a Gemma
(Gemma 2) decoder that reads its prompt as a prefix-LM: the images and the prompt
attend to each other bidirectionally, generated tokens causally.

The prompt is laid out as transformers' processor does it: the image placeholders,
then <bos>, the text and a newline; the whole prompt is the bidirectional prefix.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import PretrainedConfig

from intarsia.backbones.context import ForwardContext
from intarsia.backbones.llava import LLAVA_WEIGHT_MAP
from intarsia.backbones.multimodal import MultiModalCausalLM
from intarsia.encoders.projectors import LinearProjector
from intarsia.encoders.vit import VisionTransformer
from intarsia.engine.registry import register
from intarsia.processors.multimodal import (
    MultiModalInputs,
    MultiModalItem,
    MultiModalProcessor,
    _as_list,
)
from intarsia.processors.text import ProcessedPrompt, TextProcessor


class PaliGemmaProcessor(MultiModalProcessor):
    modalities = ("image",)

    def layout(self, text: str, num_images: int) -> str:
        """transformers' PaliGemma prompt: placeholders (prepended if missing), <bos>
        after the last one, the text, and a closing newline."""
        image = self.placeholder_tokens["image"]
        if num_images and image not in text:
            text = image * num_images + text
        at = text.rfind(image) + len(image) if image in text else 0
        return text[:at] + self.tokenizer.bos_token + text[at:] + "\n"

    def _prompt_token_ids(self, prompt: dict, media_items: dict[str, list]) -> list[int]:
        num_images = len(media_items.get("image", []))
        if "prompt_token_ids" in prompt:  # taken as laid out; missing placeholders go first
            ids = TextProcessor.process(self, {"prompt_token_ids": prompt["prompt_token_ids"]}, {}).token_ids
            image_id = self.placeholder_ids["image"]
            return ids if image_id in ids else [image_id] * num_images + ids
        text = prompt.get("prompt")
        if not isinstance(text, str):
            raise ValueError(f"a prompt must be a string or a dict with 'prompt' or "
                             f"'prompt_token_ids', got {type(text).__name__}")
        return self.tokenize(self.layout(text, num_images), add_special_tokens=False)

    def process(self, prompt: dict, mm_data: dict[str, Any]) -> ProcessedPrompt:
        if any(_as_list(value, modality) for modality, value in mm_data.items()):
            return super().process(prompt, mm_data)
        token_ids = self._prompt_token_ids(prompt, {})  # text only: still a prefix-LM prompt
        return ProcessedPrompt(prompt.get("prompt"), token_ids, self.finalize(token_ids, []))

    def finalize(self, token_ids: list[int], items: list[MultiModalItem]) -> MultiModalInputs:
        return MultiModalInputs(items, prefix_len=len(token_ids))


@register("PaliGemmaForConditionalGeneration", processor=PaliGemmaProcessor)
class PaliGemmaForConditionalGeneration(MultiModalCausalLM):
    weight_map = LLAVA_WEIGHT_MAP
    prefix_lm = True  # the model runner passes each prompt's prefix to the attention kernels

    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        # transformers marks the decoder bidirectional; it is so over the prompt prefix only,
        # which `prefix_lm` hands to the attention kernels: the decoder itself is causal.
        config = copy.copy(config)
        config.text_config = copy.copy(config.text_config)
        config.text_config.use_bidirectional_attention = False
        super().__init__(config, max_positions + 1)  # positions count from 1 (see forward)
        vision = config.vision_config
        self.vision_tower = VisionTransformer(vision)
        self.multi_modal_projector = LinearProjector(vision.hidden_size, vision.projection_dim)

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        # Inlaid as they are: as in transformers, only the text rows carry Gemma's
        # sqrt(hidden) embedding scale.
        features = self.vision_tower(self.item_tensor(items, "pixel_values"))
        return list(self.multi_modal_projector(features))

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        return super().forward(positions + 1, inputs_embeds, ctx)  # transformers' 1-based positions
