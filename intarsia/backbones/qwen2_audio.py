"""Qwen2-Audio: Whisper's encoder with average pooling, a linear projector and a Qwen2
decoder; each clip's `<|AUDIO|>` placeholder expands to its pooled frame count."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PretrainedConfig

from intarsia.backbones.decoder import WeightMap
from intarsia.backbones.multimodal import LANGUAGE_MODEL_RENAMES, MultiModalCausalLM
from intarsia.encoders.projectors import LinearProjector
from intarsia.encoders.whisper import WHISPER_RENAMES, WhisperEncoder, with_zero_key_bias
from intarsia.engine.registry import register
from intarsia.processors.multimodal import MultiModalItem, MultiModalProcessor


class Qwen2AudioProcessor(MultiModalProcessor):
    modalities = ("audio",)

    def placeholder_prompt(self, modality: str) -> str:
        hf = self.hf_processor
        return f"{hf.audio_bos_token}{hf.audio_token}{hf.audio_eos_token}"


QWEN2_AUDIO_WEIGHT_MAP = WeightMap(renames=(
    *LANGUAGE_MODEL_RENAMES,
    (r"^model\.(audio_tower|multi_modal_projector)\.", r"\1."),
    *WHISPER_RENAMES,
))


@register("Qwen2AudioForConditionalGeneration", processor=Qwen2AudioProcessor)
class Qwen2AudioForConditionalGeneration(MultiModalCausalLM):
    weight_map = QWEN2_AUDIO_WEIGHT_MAP

    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        super().__init__(config, max_positions)
        self.audio_tower = WhisperEncoder(config.audio_config, pool=2)
        self.multi_modal_projector = LinearProjector(config.audio_config.d_model, self.args.hidden_size)

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        num_frames = [int(item.data["feature_attention_mask"].sum()) for item in items]
        clips = self.audio_tower(self.item_tensor(items, "input_features"), num_frames)
        return [self.multi_modal_projector(clip) for clip in clips]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(with_zero_key_bias(weights, "audio_tower."))
